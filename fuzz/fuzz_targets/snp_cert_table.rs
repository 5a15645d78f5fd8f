#![no_main]
// The SNP certificate table the host puts in configfs-tsm's auxblob.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = attest_unlock::evidence::snp::parse_cert_table(data);
});
