#![no_main]
// An SEV-SNP attestation report (from /dev/sev-guest, configfs-tsm or an HCL report).
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = attest_unlock::formats::snp::parse_report(data);
});
