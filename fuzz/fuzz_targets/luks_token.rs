#![no_main]
// `cryptsetup luksDump --dump-json-metadata` output, as written by whoever wrote the header.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = attest_unlock::clevis::find_trustee_token(data);
});
