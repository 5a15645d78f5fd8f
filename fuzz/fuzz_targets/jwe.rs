#![no_main]
// A JWE body from the broker, decrypted with a fixed session key.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ =
        attest_unlock::kbs::jwe::decrypt(data, &attest_unlock::kbs::key::EphemeralKey::generate());
});
