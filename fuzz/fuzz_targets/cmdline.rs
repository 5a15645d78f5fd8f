#![no_main]
// The kernel command line.
libfuzzer_sys::fuzz_target!(|text: &str| {
    let _ = attest_unlock::config::parse_cmdline(text);
});
