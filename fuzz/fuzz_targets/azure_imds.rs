#![no_main]
// Azure IMDS replies (untrusted host): the THIM VCEK reply and the TD quote reply.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = attest_unlock::evidence::azure::parse_thim_reply(data);
    let _ = attest_unlock::evidence::azure::parse_td_quote_reply(data);
});
