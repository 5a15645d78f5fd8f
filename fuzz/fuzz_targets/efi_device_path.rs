#![no_main]
// Event data from a firmware event log: device paths, image-load events, boot options.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = attest_unlock::formats::devpath::to_text(data);
    let _ = attest_unlock::formats::devpath::image_load(data);
    let _ = attest_unlock::formats::devpath::load_option(data);
});
