#![no_main]
// A compact clevis JWE (from stdin or the LUKS2 token) and the pin config in its header.
libfuzzer_sys::fuzz_target!(|text: &str| {
    let _ = attest_unlock::clevis::ClevisJwe::parse_compact(text);
    let _ = attest_unlock::clevis::PinConfig::parse(text).map(|c| c.to_layer(None));
});
