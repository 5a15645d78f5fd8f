#![no_main]
// What `attest-inspect --verify` parses from an operator's files: certificates (DER or PEM,
// with the AMD and Intel extensions decoded), a TDX quote through every check, an SNP report
// through every check with the fuzzed bytes also offered as its VCEK, a TPM quote and AK.
use std::time::UNIX_EPOCH;

use attest_verify::{certs, check::Checks, roots, snp, tdx, tpm};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let given = certs::parse_any(data).unwrap_or_default();
    for cert in &given {
        let _ = certs::describe(cert);
    }
    let at = UNIX_EPOCH + std::time::Duration::from_secs(1_750_000_000);
    let intel = roots::intel();
    let _ = tdx::verify_steps(data, &intel.anchors, at, &mut Checks::new());
    let _ = tdx::replay_ccel(data);
    // Intel's collateral (JSON, hex CRLs, PEM issuer chains) and CRLs alone.
    let _ = attest_verify::collateral::parse(data);
    let _ = attest_verify::x509::parse_crls(data);
    // A TPM quote, its signature and an AK in every form an operator may give.
    let _ = tpm::parse_quote(data);
    if let Ok(ak) = tpm::ak_key(data) {
        let _ = tpm::verify_signature(data, data, &ak);
    }
    if let Ok(raw) = <&[u8; snp::REPORT_LEN]>::try_from(data) {
        let amd = roots::amd();
        let _ = snp::verify_steps(
            raw,
            &given,
            &amd.intermediates,
            &amd.anchors,
            at,
            &mut Checks::new(),
        );
    }
});
