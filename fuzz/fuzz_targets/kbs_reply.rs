#![no_main]
// Any status, Retry-After header value and body a broker may send.
libfuzzer_sys::fuzz_target!(|input: (u16, Vec<u8>, Vec<u8>)| {
    let hint = attest_unlock::kbs::retry_after(&input.1);
    if let Some(d) = hint {
        // Delta-seconds of at most nine digits: never an overflow, never a date.
        assert!(d.as_secs() < 1_000_000_000);
    }
    let _ = attest_unlock::kbs::classify_reply("https://b", "auth", input.0, hint, input.2);
});
