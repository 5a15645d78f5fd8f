#![no_main]
// An Azure HCL report (vTPM NV index 0x01400001): header, hardware report, runtime claims.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = attest_unlock::formats::hcl::parse_hcl_report(data).map(|r| r.var_data_hash_matches());
});
