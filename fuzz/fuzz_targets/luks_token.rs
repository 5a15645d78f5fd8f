#![no_main]
// `cryptsetup luksDump --dump-json-metadata` output, as written by whoever wrote the header.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(h) = attest_unlock::header::Header::parse(data) {
        let _ = h.trustee_token();
        let _ = h.native_token();
        let _ = h.pcr_record();
    }
});
