#![no_main]
// Any status and body a broker may send.
libfuzzer_sys::fuzz_target!(|input: (u16, Vec<u8>)| {
    let _ = attest_unlock::kbs::classify_reply("https://b", "auth", input.0, input.1);
});
