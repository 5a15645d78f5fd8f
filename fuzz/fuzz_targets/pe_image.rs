#![no_main]
// A PE/COFF image (an EFI application an update replaces): its Authenticode ranges and digest.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(a) = attest_unlock::formats::pe::authenticode(data) {
        let _ = a.digest(data, attest_unlock::formats::HashAlg::Sha256);
    }
});
