#![no_main]
// The GCE AK certificate NV index: a DER certificate followed by padding.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = attest_unlock::evidence::gcp::der_prefix(data);
});
