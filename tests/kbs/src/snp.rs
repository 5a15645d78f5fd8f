//! AMD SEV-SNP evidence: `{"attestation_report": <sev serde form>, "cert_chain": [...] | null}`.
//!
//! Verification (a failure is an attestation error, 401): the report is re-encoded to its 1184
//! signed bytes, its ECDSA P-384/SHA-384 signature over bytes `[0, 0x2A0)` must verify with the
//! VCEK/VLEK from `cert_chain` (or a configured one), that key's certificate must chain through
//! an ASK/ASVK to a configured trusted ARK, its hwID/TCB extensions must match the report, and
//! REPORT_DATA must be the binding digest zero-padded to 64 bytes.
//!
//! Appraisal (a failure gives `ear.status` `warning`): measurement, minimum reported TCB, debug
//! policy, against [`SnpPolicy`].
//!
//! Report fields are read from the signed bytes at the offsets of AMD's SEV-SNP ABI
//! specification, not from the sev crate's struct, so only bytes the signature covers are ever
//! appraised.

use std::time::SystemTime;

use anyhow::{anyhow, bail, ensure, Context};
use p384::ecdsa::signature::Verifier;
use serde::Deserialize;
use serde_json::Value;
use sev::firmware::guest::AttestationReport;
use sev::firmware::host::{CertTableEntry, CertType};
use sev::parser::ByteParser;
use x509_cert::Certificate;

use crate::x509;

/// Size of an SNP attestation report.
pub(crate) const REPORT_LEN: usize = 1184;
/// The signature covers bytes `[0, SIGNED_LEN)`.
pub(crate) const SIGNED_LEN: usize = 0x2A0;

/// What the broker trusts and expects of SNP evidence. The default trusts nothing, so SNP
/// evidence fails verification until `trusted_arks` is set.
#[derive(Clone, Default)]
pub struct SnpPolicy {
    /// DER of the AMD root keys (ARK) a chain must end in. AMD's real ARKs for real hardware;
    /// the simulated chain's ARK (see [`crate::sim::SnpSigner`]) in tests. An ARK that the
    /// evidence's `cert_chain` carries is never trusted by itself.
    pub trusted_arks: Vec<Vec<u8>>,
    /// Intermediate certificates (ASK/ASVK, DER) the broker holds, as Trustee vendors AMD's;
    /// used besides those in `cert_chain`.
    pub intermediates: Vec<Vec<u8>>,
    /// VCEK/VLEK certificates (DER) used when the evidence carries none (Trustee would fetch
    /// the VCEK from AMD's KDS).
    pub endorsement_keys: Vec<Vec<u8>>,
    /// The expected launch measurement (96 hex digits); `None` accepts any.
    pub expected_measurement: Option<String>,
    /// The lowest acceptable reported TCB; `None` accepts any.
    pub min_tcb: Option<SnpTcb>,
    /// Whether a guest policy that allows debugging may still be `affirming`.
    pub allow_debug: bool,
    /// The time at which certificates must be valid; `None` means now. Tests with real,
    /// expired VLEKs pin it.
    pub verification_time: Option<SystemTime>,
}

/// Certificates are shown by count, not as bytes.
impl std::fmt::Debug for SnpPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let count = |v: &Vec<Vec<u8>>| format!("<{} certificates>", v.len());
        f.debug_struct("SnpPolicy")
            .field("trusted_arks", &count(&self.trusted_arks))
            .field("intermediates", &count(&self.intermediates))
            .field("endorsement_keys", &count(&self.endorsement_keys))
            .field("expected_measurement", &self.expected_measurement)
            .field("min_tcb", &self.min_tcb)
            .field("allow_debug", &self.allow_debug)
            .field("verification_time", &self.verification_time)
            .finish()
    }
}

/// A TCB version as the report's TCB fields hold it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnpTcb {
    /// PSP bootloader SVN.
    pub bootloader: u8,
    /// PSP OS (TEE) SVN.
    pub tee: u8,
    /// SNP firmware SVN.
    pub snp: u8,
    /// Microcode patch level.
    pub microcode: u8,
}

impl std::fmt::Display for SnpTcb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "bl{}/tee{}/snp{}/ucode{}",
            self.bootloader, self.tee, self.snp, self.microcode
        )
    }
}

impl SnpTcb {
    fn at_least(&self, min: &SnpTcb) -> bool {
        self.bootloader >= min.bootloader
            && self.tee >= min.tee
            && self.snp >= min.snp
            && self.microcode >= min.microcode
    }
}

/// The report fields the broker looks at, read from the signed bytes.
#[derive(Clone, Debug)]
pub(crate) struct SnpReport {
    pub version: u32,
    pub policy: u64,
    pub vmpl: u32,
    pub sig_algo: u32,
    /// 0 = VCEK, 1 = VLEK, 7 = none (KEY_INFO bits 4:2).
    pub signing_key: u32,
    pub report_data: [u8; 64],
    pub measurement: [u8; 48],
    pub host_data: [u8; 32],
    pub reported_tcb: SnpTcb,
    pub chip_id: [u8; 64],
    pub turin: bool,
}

fn array<const N: usize>(raw: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&raw[at..at + N]);
    out
}

fn u32_at(raw: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(array(raw, at))
}

impl SnpReport {
    /// Reads a report's fields (ABI spec table "ATTESTATION_REPORT Structure").
    pub(crate) fn parse(raw: &[u8; REPORT_LEN]) -> anyhow::Result<SnpReport> {
        let version = u32_at(raw, 0x00);
        ensure!(
            (2..=5).contains(&version),
            "SNP report version {version} is not 2-5"
        );
        let chip_id: [u8; 64] = array(raw, 0x1A0);
        // Turin encodes TCB versions differently (an FMC field first). From version 3 the
        // report says its CPU family; a version 2 report from Turin has an 8-byte chip ID.
        let turin = if version >= 3 {
            raw[0x188] == 0x1A
        } else {
            chip_id[8..].iter().all(|b| *b == 0) && chip_id[..8].iter().any(|b| *b != 0)
        };
        let tcb: [u8; 8] = array(raw, 0x180);
        let reported_tcb = if turin {
            SnpTcb {
                bootloader: tcb[1],
                tee: tcb[2],
                snp: tcb[3],
                microcode: tcb[7],
            }
        } else {
            SnpTcb {
                bootloader: tcb[0],
                tee: tcb[1],
                snp: tcb[6],
                microcode: tcb[7],
            }
        };
        Ok(SnpReport {
            version,
            policy: u64::from_le_bytes(array(raw, 0x08)),
            vmpl: u32_at(raw, 0x30),
            sig_algo: u32_at(raw, 0x34),
            signing_key: (u32_at(raw, 0x48) >> 2) & 0x7,
            report_data: array(raw, 0x50),
            measurement: array(raw, 0x90),
            host_data: array(raw, 0xC0),
            reported_tcb,
            chip_id,
            turin,
        })
    }

    /// Whether the guest policy allows a debugger (policy bit 19).
    pub(crate) fn debug_allowed(&self) -> bool {
        self.policy & (1 << 19) != 0
    }
}

/// The report's signature as a P-384 ECDSA signature: r and s are little-endian in 72-byte
/// fields, of which only the low 48 bytes may be non-zero.
fn report_signature(raw: &[u8; REPORT_LEN]) -> anyhow::Result<p384::ecdsa::Signature> {
    let component = |at: usize| -> anyhow::Result<[u8; 48]> {
        let field = &raw[at..at + 72];
        ensure!(
            field[48..].iter().all(|b| *b == 0),
            "SNP signature component is wider than 384 bits"
        );
        let mut be = [0u8; 48];
        for (i, b) in field[..48].iter().rev().enumerate() {
            be[i] = *b;
        }
        Ok(be)
    };
    let r = component(SIGNED_LEN)?;
    let s = component(SIGNED_LEN + 72)?;
    p384::ecdsa::Signature::from_scalars(r, s)
        .map_err(|e| anyhow!("SNP signature is not a valid P-384 signature: {e}"))
}

/// Checks the report's signature with `vek` (a VCEK or VLEK certificate).
pub(crate) fn verify_report_signature(
    raw: &[u8; REPORT_LEN],
    vek: &Certificate,
) -> anyhow::Result<()> {
    let key = x509::p384_key(vek)?;
    let signature = report_signature(raw)?;
    key.verify(&raw[..SIGNED_LEN], &signature).map_err(|_| {
        anyhow!(
            "SNP report signature does not verify with {}",
            x509::subject(vek)
        )
    })
}

/// AMD's VCEK extensions (VCEK specification, "VCEK certificate extensions").
const EXT_BL_SPL: &str = "1.3.6.1.4.1.3704.1.3.1";
const EXT_TEE_SPL: &str = "1.3.6.1.4.1.3704.1.3.2";
const EXT_SNP_SPL: &str = "1.3.6.1.4.1.3704.1.3.3";
const EXT_UCODE_SPL: &str = "1.3.6.1.4.1.3704.1.3.8";
const EXT_HW_ID: &str = "1.3.6.1.4.1.3704.1.4";

/// The value of a DER INTEGER extension that holds an SPL (0-255).
fn spl(cert: &Certificate, oid: &str) -> anyhow::Result<Option<u8>> {
    let Some(der) = x509::extension(cert, oid) else {
        return Ok(None);
    };
    let value = match der {
        [0x02, 0x01, v] => *v,
        [0x02, 0x02, 0x00, v] if *v >= 0x80 => *v,
        _ => bail!(
            "{}: extension {oid} is not a small INTEGER",
            x509::subject(cert)
        ),
    };
    Ok(Some(value))
}

/// Checks that a VCEK was issued for this chip and the TCB the report claims, as Trustee does:
/// hwID equals CHIP_ID (its first 8 bytes on Turin), and the SPL extensions equal the reported
/// TCB. A VLEK carries no hwID; a report with a masked chip ID is not compared.
fn check_vek_matches_report(vek: &Certificate, report: &SnpReport) -> anyhow::Result<()> {
    if let Some(hw_id) = x509::extension(vek, EXT_HW_ID) {
        if report.chip_id.iter().any(|b| *b != 0) {
            let expected: &[u8] = if report.turin {
                &report.chip_id[..8]
            } else {
                &report.chip_id
            };
            ensure!(
                hw_id == expected,
                "the VCEK's hwID {} is not the report's CHIP_ID {}",
                hex::encode(hw_id),
                hex::encode(expected)
            );
        }
    }
    let tcb = report.reported_tcb;
    for (oid, name, value) in [
        (EXT_BL_SPL, "bootloader", tcb.bootloader),
        (EXT_TEE_SPL, "tee", tcb.tee),
        (EXT_SNP_SPL, "snp", tcb.snp),
        (EXT_UCODE_SPL, "microcode", tcb.microcode),
    ] {
        if let Some(cert_value) = spl(vek, oid)? {
            ensure!(
                cert_value == value,
                "the VCEK is for {name} SPL {cert_value}, the report's reported TCB has {value}"
            );
        }
    }
    Ok(())
}

/// A report whose signature and certificate chain verified.
#[derive(Clone, Debug)]
pub(crate) struct VerifiedSnp {
    pub report: SnpReport,
    /// Which key signed: the VEK certificate's subject.
    pub signer: String,
}

/// Verifies a raw report against the certificates given (`cert_chain` of the evidence) and
/// those in `policy`. Does not look at REPORT_DATA.
pub(crate) fn verify_report(
    raw: &[u8; REPORT_LEN],
    certs: &[CertTableEntry],
    policy: &SnpPolicy,
) -> anyhow::Result<VerifiedSnp> {
    let report = SnpReport::parse(raw)?;
    ensure!(
        report.sig_algo == 1,
        "SNP report signature algorithm {} is not ECDSA P-384 with SHA-384 (1)",
        report.sig_algo
    );
    let at = policy.verification_time.unwrap_or_else(SystemTime::now);

    let parse_all = |ders: &[Vec<u8>], what: &str| -> anyhow::Result<Vec<Certificate>> {
        ders.iter()
            .map(|der| x509::from_der(der).with_context(|| format!("configured {what}")))
            .collect()
    };
    let roots = parse_all(&policy.trusted_arks, "trusted ARK")?;
    let mut intermediates = Vec::new();
    let mut veks = Vec::new();
    for entry in certs {
        let cert = || {
            x509::from_der(&entry.data)
                .with_context(|| format!("cert_chain entry {:?}", entry.cert_type))
        };
        match entry.cert_type {
            CertType::ASK => intermediates.push(cert()?),
            CertType::VCEK if report.signing_key == 0 => veks.push(cert()?),
            CertType::VLEK if report.signing_key == 1 => veks.push(cert()?),
            // The ARK in the evidence is not trusted; CRLs and others are not needed here.
            _ => {}
        }
    }
    intermediates.extend(parse_all(&policy.intermediates, "intermediate")?);
    if veks.is_empty() {
        veks = parse_all(&policy.endorsement_keys, "VCEK/VLEK")?;
    }
    ensure!(
        report.signing_key <= 1,
        "SNP report is not signed by a VCEK or VLEK (KEY_INFO signing key {})",
        report.signing_key
    );
    ensure!(
        !veks.is_empty(),
        "no {} certificate in cert_chain or the broker's configuration",
        if report.signing_key == 1 {
            "VLEK"
        } else {
            "VCEK"
        }
    );

    let mut last_error = None;
    for vek in &veks {
        let attempt = verify_report_signature(raw, vek)
            .and_then(|()| check_vek_matches_report(vek, &report))
            .and_then(|()| {
                x509::verify_path(vek, &intermediates, &roots, at)
                    .context("VCEK/VLEK certificate chain")
            });
        match attempt {
            Ok(()) => {
                return Ok(VerifiedSnp {
                    report,
                    signer: x509::subject(vek),
                })
            }
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or_else(|| anyhow!("no VCEK/VLEK to verify with")))
}

/// The `snp` evidence as Trustee's verifier deserializes it.
#[derive(Deserialize)]
struct SnpEvidence {
    attestation_report: AttestationReport,
    cert_chain: Option<Vec<CertTableEntry>>,
}

/// The outcome of SNP verification and appraisal.
#[derive(Debug)]
pub(crate) struct SnpAppraisal {
    /// Reasons the evidence is not `affirming` (empty when it is).
    pub reasons: Vec<String>,
    /// Claims for the token.
    pub claims: Value,
    /// A one-line summary for the log.
    pub summary: String,
}

/// Verifies and appraises `snp` evidence that must carry `expected_report_data`.
pub(crate) fn appraise(
    evidence: &Value,
    expected_report_data: &[u8; 64],
    policy: &SnpPolicy,
) -> anyhow::Result<SnpAppraisal> {
    let evidence = SnpEvidence::deserialize(evidence)
        .context("primary_evidence is not snp evidence (attestation_report, cert_chain)")?;
    let raw = evidence
        .attestation_report
        .to_bytes()
        .map_err(|e| anyhow!("attestation_report does not encode to a report: {e}"))?;
    let verified = verify_report(
        &raw,
        evidence.cert_chain.as_deref().unwrap_or_default(),
        policy,
    )?;
    let report = &verified.report;
    ensure!(
        &report.report_data == expected_report_data,
        "SNP REPORT_DATA {} is not the binding digest zero-padded to 64 bytes {}",
        hex::encode(report.report_data),
        hex::encode(expected_report_data)
    );
    Ok(appraise_verified(&verified, policy))
}

/// Appraises a verified report against the policy's expectations (measurement, TCB, debug).
pub(crate) fn appraise_verified(verified: &VerifiedSnp, policy: &SnpPolicy) -> SnpAppraisal {
    let report = &verified.report;
    let mut reasons = Vec::new();
    if let Some(expected) = &policy.expected_measurement {
        let expected = expected.to_ascii_lowercase();
        let actual = hex::encode(report.measurement);
        if actual != expected {
            reasons.push(format!(
                "SNP measurement is {actual} but {expected} is expected"
            ));
        }
    }
    if let Some(min) = &policy.min_tcb {
        if !report.reported_tcb.at_least(min) {
            reasons.push(format!(
                "SNP reported TCB {} is below the minimum {min}",
                report.reported_tcb
            ));
        }
    }
    if report.debug_allowed() && !policy.allow_debug {
        reasons.push(format!(
            "SNP guest policy {:#x} allows debugging",
            report.policy
        ));
    }
    let claims = serde_json::json!({
        "version": report.version,
        "measurement": hex::encode(report.measurement),
        "policy": format!("{:#x}", report.policy),
        "vmpl": report.vmpl,
        "host_data": hex::encode(report.host_data),
        "reported_tcb": report.reported_tcb.to_string(),
        "chip_id": hex::encode(report.chip_id),
        "signer": verified.signer,
    });
    let summary = format!(
        "snp report v{} signed by {} (measurement {})",
        report.version,
        verified.signer,
        &hex::encode(report.measurement)[..16]
    );
    SnpAppraisal {
        reasons,
        claims,
        summary,
    }
}

/// Validates a policy when the broker starts.
pub(crate) fn validate(policy: &SnpPolicy) -> anyhow::Result<()> {
    for der in policy
        .trusted_arks
        .iter()
        .chain(&policy.intermediates)
        .chain(&policy.endorsement_keys)
    {
        x509::from_der(der).context("snp policy certificate")?;
    }
    if let Some(m) = &policy.expected_measurement {
        ensure!(
            m.len() == 96 && m.bytes().all(|b| b.is_ascii_hexdigit()),
            "snp expected_measurement {m:?} is not 96 hex digits"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{SnpReportParams, SnpSigner};
    use std::time::{Duration, UNIX_EPOCH};
    use x509_cert::der::Encode;

    use crate::testdata;

    fn der(path: &str) -> Vec<u8> {
        let bytes = testdata(path);
        if bytes.starts_with(b"-----BEGIN") {
            x509::pem_chain(&bytes).unwrap()[0].to_der().unwrap()
        } else {
            bytes
        }
    }

    fn date(y: i32, m: u8, d: u8) -> SystemTime {
        let secs = rcgen::date_time_ymd(y, m, d).unix_timestamp();
        UNIX_EPOCH + Duration::from_secs(secs as u64)
    }

    fn raw(bytes: &[u8]) -> [u8; REPORT_LEN] {
        bytes.try_into().unwrap()
    }

    /// Every real report with its VCEK/VLEK and AMD's real (RSA-PSS) chain, at a pinned time.
    fn real_cases() -> Vec<(&'static str, &'static str, &'static str, &'static str)> {
        // (report, VCEK/VLEK, ARK, ASK/ASVK)
        vec![
            (
                "snp/milan-virtee-sev/report_milan.bin",
                "snp/milan-virtee-sev/vcek_milan.der",
                "snp/amd-certs/milan_ark.pem",
                "snp/amd-certs/milan_ask.pem",
            ),
            (
                "snp/milan-trustee/test-report.bin",
                "snp/milan-trustee/test-vcek.der",
                "snp/amd-certs/milan_ark.pem",
                "snp/amd-certs/milan_ask.pem",
            ),
            (
                "snp/milan-trustee/test-vlek-report.bin",
                "snp/milan-trustee/test-vlek.der",
                "snp/amd-certs/milan_ark.pem",
                "snp/amd-certs/milan_cert_chain_vlek.pem",
            ),
            (
                "snp/genoa-azure/report_genoa.bin",
                "snp/genoa-azure/vcek_genoa.pem",
                "snp/amd-certs/genoa_ark.pem",
                "snp/amd-certs/genoa_ask.pem",
            ),
        ]
    }

    fn real_policy(vek: &str, ark: &str, ask: &str) -> SnpPolicy {
        SnpPolicy {
            trusted_arks: vec![der(ark)],
            intermediates: vec![der(ask)],
            endorsement_keys: vec![der(vek)],
            // Inside every VCEK's and the AWS VLEK's validity (the VLEK expired 2025-12-10).
            verification_time: Some(date(2025, 6, 1)),
            ..SnpPolicy::default()
        }
    }

    #[test]
    fn real_reports_verify_with_their_vek_and_the_amd_chain() {
        for (report, vek, ark, ask) in real_cases() {
            let bytes = raw(&testdata(report));
            let policy = real_policy(vek, ark, ask);
            let verified =
                verify_report(&bytes, &[], &policy).unwrap_or_else(|e| panic!("{report}: {e:#}"));
            assert!(!verified.signer.is_empty());

            // The same bytes through the wire form (the sev crate's serde) re-encode exactly.
            let parsed = AttestationReport::from_bytes(&bytes).unwrap();
            let json = serde_json::to_value(parsed).unwrap();
            let back: AttestationReport = serde_json::from_value(json).unwrap();
            assert_eq!(back.to_bytes().unwrap(), bytes, "{report}");

            // Independent check: the sev crate's own (RSA-PSS chain + report) verification.
            use sev::certs::snp::{Certificate as SevCert, Chain, Verifiable};
            let chain = Chain {
                ca: sev::certs::snp::ca::Chain {
                    ark: SevCert::from_der(&der(ark)).unwrap(),
                    ask: SevCert::from_der(&der(ask)).unwrap(),
                },
                vek: SevCert::from_der(&der(vek)).unwrap(),
            };
            (&chain, &parsed)
                .verify()
                .unwrap_or_else(|e| panic!("sev crate on {report}: {e}"));
        }
    }

    #[test]
    fn real_report_fields_are_read_at_the_spec_offsets() {
        let milan =
            SnpReport::parse(&raw(&testdata("snp/milan-virtee-sev/report_milan.bin"))).unwrap();
        assert_eq!(milan.version, 2);
        assert_eq!(milan.policy, 0x30000);
        assert_eq!(
            hex::encode(milan.measurement),
            "7a1e5c266c0108dbc9bb94fa926951320940915d0aafb42464bd88b579ea158d3e1a0dc39b2c60bd95b9c480cd81841f"
        );
        assert_eq!(
            milan.reported_tcb,
            SnpTcb {
                bootloader: 3,
                tee: 0,
                snp: 8,
                microcode: 115
            }
        );
        let vlek =
            SnpReport::parse(&raw(&testdata("snp/milan-trustee/test-vlek-report.bin"))).unwrap();
        assert_eq!((vlek.version, vlek.vmpl, vlek.signing_key), (3, 1, 1));
        assert_eq!(vlek.reported_tcb.to_string(), "bl4/tee0/snp24/ucode217");
        let genoa = SnpReport::parse(&raw(&testdata("snp/genoa-azure/report_genoa.bin"))).unwrap();
        assert_eq!(genoa.reported_tcb.to_string(), "bl10/tee0/snp23/ucode84");
        assert_eq!(&genoa.report_data[32..], &[0u8; 32]);
    }

    #[test]
    fn mutated_real_reports_and_wrong_chains_fail() {
        let (report, vek, ark, ask) = real_cases()[0];
        let good = raw(&testdata(report));
        let policy = real_policy(vek, ark, ask);
        // virtee's own negative test flips bit 7 of byte 21; byte 384 is REPORTED_TCB (trustee's
        // negative test); 0x90 is MEASUREMENT; 0x2A0 is the signature.
        for (at, mask) in [(21, 0x80), (0x90, 0x01), (384, 0x01), (0x2A0, 0x01)] {
            let mut bad = good;
            bad[at] ^= mask;
            assert!(
                verify_report(&bad, &[], &policy).is_err(),
                "byte {at:#x} flipped must fail"
            );
        }
        // Another chip's VCEK.
        let mut other = policy.clone();
        other.endorsement_keys = vec![der("snp/milan-trustee/test-vcek.der")];
        assert!(verify_report(&good, &[], &other).is_err());
        // Genoa's ARK does not sign Milan's ASK.
        let mut other = policy.clone();
        other.trusted_arks = vec![der("snp/amd-certs/genoa_ark.pem")];
        let e = verify_report(&good, &[], &other).unwrap_err();
        assert!(format!("{e:#}").contains("chain"), "{e:#}");
        // No trusted ARK at all.
        let mut other = policy.clone();
        other.trusted_arks.clear();
        assert!(verify_report(&good, &[], &other).is_err());
        // An ARK sent in the evidence is not trusted by itself.
        let entries = vec![
            CertTableEntry::new(CertType::ARK, der(ark)),
            CertTableEntry::new(CertType::ASK, der(ask)),
            CertTableEntry::new(CertType::VCEK, der(vek)),
        ];
        let mut untrusting = policy;
        untrusting.trusted_arks = vec![der("snp/amd-certs/genoa_ark.pem")];
        untrusting.endorsement_keys.clear();
        assert!(verify_report(&good, &entries, &untrusting).is_err());
        let mut from_evidence = untrusting.clone();
        from_evidence.trusted_arks = vec![der(ark)];
        from_evidence.intermediates.clear();
        verify_report(&good, &entries, &from_evidence).unwrap();
        // Time: the AWS VLEK has expired.
        let (report, vek, ark, ask) = real_cases()[2];
        let mut expired = real_policy(vek, ark, ask);
        expired.verification_time = Some(date(2026, 6, 1));
        let e = verify_report(&raw(&testdata(report)), &[], &expired).unwrap_err();
        assert!(format!("{e:#}").contains("expired"), "{e:#}");
    }

    fn sim_policy(signer: &SnpSigner) -> SnpPolicy {
        SnpPolicy {
            trusted_arks: vec![signer.ark_der().to_vec()],
            ..SnpPolicy::default()
        }
    }

    fn sim_evidence(signer: &SnpSigner, params: &SnpReportParams, data: &[u8; 64]) -> Value {
        let report = signer.report(params, data);
        let parsed = AttestationReport::from_bytes(&report).unwrap();
        serde_json::json!({
            "attestation_report": parsed,
            "cert_chain": signer.cert_table(),
        })
    }

    #[test]
    fn simulated_reports_verify_and_are_appraised() {
        let signer = SnpSigner::new().unwrap();
        let data = [0x11u8; 64];
        let params = SnpReportParams::default();
        let report = raw(&signer.report(&params, &data));

        // The sev crate parses the simulated report and checks its signature with the VCEK.
        use sev::certs::snp::{Certificate as SevCert, Verifiable};
        let parsed = AttestationReport::from_bytes(&report).unwrap();
        assert_eq!(parsed.report_data, data);
        assert_eq!(parsed.measurement, params.measurement);
        assert_eq!(parsed.chip_id, signer.chip_id());
        let vcek = SevCert::from_der(signer.vcek_der()).unwrap();
        (&vcek, &parsed).verify().unwrap();
        // And the cert table survives the kernel format the agent parses.
        let mut aux = signer.auxblob().unwrap();
        assert_eq!(
            CertTableEntry::vec_bytes_to_cert_table(&mut aux).unwrap(),
            signer.cert_table()
        );

        let policy = sim_policy(&signer);
        let evidence = sim_evidence(&signer, &params, &data);
        let ok = appraise(&evidence, &data, &policy).unwrap();
        assert!(ok.reasons.is_empty(), "{:?}", ok.reasons);
        assert_eq!(ok.claims["measurement"], hex::encode(params.measurement));

        // Binding.
        let e = appraise(&evidence, &[0x12; 64], &policy).unwrap_err();
        assert!(format!("{e:#}").contains("REPORT_DATA"), "{e:#}");
        // Appraisal: measurement, TCB, debug.
        let strict = SnpPolicy {
            expected_measurement: Some("ab".repeat(48)),
            min_tcb: Some(SnpTcb {
                bootloader: 3,
                tee: 0,
                snp: 9,
                microcode: 0,
            }),
            ..policy.clone()
        };
        let debug = SnpReportParams {
            policy: 0x30000 | (1 << 19),
            ..params
        };
        let warned = appraise(&sim_evidence(&signer, &debug, &data), &data, &strict).unwrap();
        assert_eq!(warned.reasons.len(), 3, "{:?}", warned.reasons);
        // Another chip's chain, or a chain to an untrusted ARK, fails.
        let other = SnpSigner::new().unwrap();
        assert!(appraise(&evidence, &data, &sim_policy(&other)).is_err());
        let mut swapped = evidence.clone();
        swapped["cert_chain"] = serde_json::to_value(other.cert_table()).unwrap();
        assert!(appraise(&swapped, &data, &policy).is_err());
        // Without a cert chain the configured VCEK is used.
        let mut bare = evidence.clone();
        bare["cert_chain"] = Value::Null;
        assert!(appraise(&bare, &data, &policy).is_err());
        let configured = SnpPolicy {
            intermediates: vec![signer.ask_der().to_vec()],
            endorsement_keys: vec![signer.vcek_der().to_vec()],
            ..policy.clone()
        };
        appraise(&bare, &data, &configured).unwrap();
        // A tampered field in the wire form breaks the signature.
        let mut tampered = evidence;
        tampered["attestation_report"]["guest_svn"] = serde_json::json!(9);
        assert!(appraise(&tampered, &data, &policy).is_err());
    }
}
