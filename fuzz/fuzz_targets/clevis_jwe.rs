#![no_main]
// A compact clevis JWE (from stdin or the LUKS2 token) and the pin config in its header.
libfuzzer_sys::fuzz_target!(|text: &str| {
    let _ = attest_unlock::clevis::ClevisJwe::parse_compact(text);
    let mut layers = attest_unlock::config::Layers::default();
    if let Ok(()) = attest_unlock::clevis::PinConfig::parse(text).and_then(|c| c.add_to(&mut layers, None)) {
        let _ = layers.resolve();
    }
});
