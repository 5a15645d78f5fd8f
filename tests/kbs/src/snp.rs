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

use anyhow::{anyhow, ensure, Context};
use serde::Deserialize;
use serde_json::Value;
use sev::firmware::guest::AttestationReport;
use sev::firmware::host::{CertTableEntry, CertType};
use sev::parser::ByteParser;
use x509_cert::Certificate;

use crate::x509;

pub(crate) use attest_verify::snp::{SnpReport, SnpTcb, VerifiedSnp, REPORT_LEN};

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

/// Verifies a raw report against the certificates given (`cert_chain` of the evidence) and
/// those in `policy`. Does not look at REPORT_DATA.
pub(crate) fn verify_report(
    raw: &[u8; REPORT_LEN],
    certs: &[CertTableEntry],
    policy: &SnpPolicy,
) -> anyhow::Result<VerifiedSnp> {
    let report = SnpReport::parse(raw)?;
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
        !veks.is_empty() || report.signing_key > 1,
        "no {} certificate in cert_chain or the broker's configuration",
        report.signer_kind()
    );
    attest_verify::snp::verify_report(raw, &veks, &intermediates, &roots, at)
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
