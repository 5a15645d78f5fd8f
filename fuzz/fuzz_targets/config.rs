#![no_main]
// A config file (or a LUKS token's settings): parse, merge, validate.
libfuzzer_sys::fuzz_target!(|text: &str| {
    let _ = attest_unlock::config::parse_table(text, "fuzz").and_then(|t| {
        attest_unlock::config::Layers {
            file: Some(("fuzz".into(), t.clone())),
            ..Default::default()
        }
        .resolve()?;
        // The same bytes as a LUKS2 token's settings: refused or resolved, never a crash.
        attest_unlock::config::Layers {
            luks_token: Some(t),
            ..Default::default()
        }
        .resolve()
    });
});
