#![no_main]
// A reply of the host's TDX quote generation service: its length prefix, then the message.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some(prefix) = data.get(..4).and_then(|p| <[u8; 4]>::try_from(p).ok()) {
        let _ = attest_unlock::formats::qgs::message_length(prefix);
    }
    if let Ok(quote) = attest_unlock::formats::qgs::get_quote_response(data) {
        // Whatever it yields is a slice of the message, never more.
        assert!(quote.len() <= data.len());
    }
});
