#![no_main]
// A TCG PC-Client event log (legacy or crypto-agile), parsed and replayed.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = attest_unlock::formats::eventlog::parse_event_log(data).map(|log| log.replay());
});
