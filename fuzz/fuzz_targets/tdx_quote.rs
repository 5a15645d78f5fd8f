#![no_main]
// A TDX quote (v4/v5) with its nested certification data, and a TDREPORT.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = attest_unlock::formats::tdx::parse_quote_prefix(data);
    let _ = attest_unlock::formats::tdx::parse_td_report(data);
});
