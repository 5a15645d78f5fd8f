#![no_main]
// A TDX CCEL log area (with padding), parsed and replayed into RTMRs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = attest_unlock::formats::eventlog::parse_ccel(data).map(|log| log.rtmrs());
});
