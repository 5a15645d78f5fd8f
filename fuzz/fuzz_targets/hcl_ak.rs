#![no_main]
// The HCL runtime claims as the Azure source reads them: the HCLAkPub JWK and the user data.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = attest_unlock::formats::hcl::parse_hcl_report(data).map(|r| {
        (
            attest_unlock::evidence::azure::hcl_ak_spki(&r),
            attest_unlock::evidence::azure::user_data_is(&r, &[0; 64]),
        )
    });
});
