#![no_main]
// A config file (or a LUKS token's settings): parse, merge, validate.
libfuzzer_sys::fuzz_target!(|text: &str| {
    let _ = attest_unlock::config::parse_table(text, "fuzz").and_then(|t| {
        attest_unlock::config::Layers {
            file: Some(("fuzz".into(), t)),
            ..Default::default()
        }
        .resolve()
    });
});
