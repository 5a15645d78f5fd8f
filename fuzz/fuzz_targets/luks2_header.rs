#![no_main]
// The start of a LUKS2 device, as written by whoever holds the disk: both header copies, their
// checksums, then the JSON metadata the unlock reads its tokens from.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = attest_unlock::formats::luks2::header_size(data);
    if let Ok(json) = attest_unlock::formats::luks2::metadata(data) {
        if let Ok(h) = attest_unlock::header::Header::parse(json) {
            let _ = h.trustee_token();
            let _ = h.native_token();
            let _ = h.pcr_record();
        }
    }
});
