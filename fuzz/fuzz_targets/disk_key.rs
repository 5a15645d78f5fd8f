#![no_main]
// The disk key resource as released by the broker.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let raw = zeroize::Zeroizing::new(data.to_vec());
    let _ = attest_unlock::flow::disk_passphrase("kbs+provisioner:///default/n/root", raw.clone(), attest_unlock::config::KeyFormat::Auto);
    let _ = attest_unlock::flow::disk_passphrase("default/n/root", raw, attest_unlock::config::KeyFormat::Auto);
});
