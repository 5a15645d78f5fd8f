#![no_main]
// The kernel command line: our keys and the standard rd.luks.* volume, resolved together.
libfuzzer_sys::fuzz_target!(|text: &str| {
    let layers = attest_unlock::config::Layers {
        rd_luks: attest_unlock::config::luks_from_cmdline(text),
        cmdline: attest_unlock::config::parse_cmdline(text).ok(),
        ..Default::default()
    };
    let _ = layers.resolve();
});
