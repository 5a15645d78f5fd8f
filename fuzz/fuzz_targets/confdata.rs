#![no_main]
// Trustee's provisioner confdata, as released by the broker.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = attest_unlock::formats::confdata::luks_key(data, "root");
});
