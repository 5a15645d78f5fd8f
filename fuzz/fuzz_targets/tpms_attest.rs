#![no_main]
// A TPM quote: TPMS_ATTEST and TPMT_SIGNATURE.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = attest_unlock::formats::tpm::parse_tpms_attest(data);
    let _ = attest_unlock::formats::tpm::parse_tpmt_signature(data);
});
