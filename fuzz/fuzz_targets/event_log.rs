#![no_main]
// A TCG PC-Client event log (legacy or crypto-agile), parsed and replayed, and the EFI
// variable read from every event's data.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(log) = attest_unlock::formats::eventlog::parse_event_log(data) {
        let _ = log.replay();
        for e in &log.events {
            let _ = attest_unlock::formats::eventlog::efi_variable(&e.data);
        }
    }
    let _ = attest_unlock::formats::eventlog::efi_variable(data);
});
