#![no_main]
// A TCG PC-Client event log (legacy or crypto-agile), parsed and replayed, and the EFI
// variable read from every event's data, and the reference values predicted from it.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(log) = attest_unlock::formats::eventlog::parse_event_log(data) {
        let _ = log.replay();
        let _ = attest_unlock::refvalues::predict(
            &log,
            attest_unlock::formats::HashAlg::Sha256,
            &[0, 4, 7, 9],
            &[],
        );
        for e in &log.events {
            let _ = attest_unlock::formats::eventlog::efi_variable(&e.data);
        }
    }
    let _ = attest_unlock::formats::eventlog::efi_variable(data);
});
