//! Azure confidential VM evidence (`az-snp-vtpm`, `az-tdx-vtpm`), as Trustee's
//! `az_snp_vtpm` / `az_tdx_vtpm` verifiers read it:
//! `{"version": 1|2, "tpm_quote": {"signature": <hex raw RSASSA>, "message": <hex
//! TPMS_ATTEST>, "pcrs": [24 hex]}, "hcl_report": <base64url>, "vcek": <base64url DER>}` or
//! `..., "td_quote": <base64url>}`.
//!
//! Verification (a failure is an attestation error, 401), the chain from the hardware root to
//! the session:
//!
//! - the hardware report: the SNP report in the HCL report verifies with the VCEK, which
//!   chains to a trusted ARK ([`crate::SnpPolicy`]), at VMPL 0 (the paravisor's); or the TD
//!   quote verifies to a trusted Intel root ([`crate::TdxPolicy`]) and carries the HCL
//!   report's TDREPORT data;
//! - its report data starts with SHA-256 of the HCL runtime claims;
//! - the claims' `HCLAkPub` signed the vTPM quote (RSASSA-PKCS1-v1_5 / SHA-256);
//! - the quote selects sha256:0-23, its PCR digest matches the PCR values sent, and its
//!   qualifying data is the whole 48-byte binding digest (Trustee compares the quote nonce
//!   with the report data, not a prefix);
//! - `version: 2`: the claims' `user-data` is the binding digest zero-padded to 64 bytes,
//!   so the hardware report itself is of this session. `version: 1` (the boot-time report)
//!   is accepted only when [`AzurePolicy::allow_boot_report`] says so.
//!
//! The AK needs no entry in `trusted_aks`: the hardware report vouches for it. Appraisal
//! (`warning` on failure): the SNP/TDX policy's expectations and the expected PCRs.
//!
//! The HCL report is parsed here from its documented offsets, independently of the agent.

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, ensure, Context};
use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use kbs_types::Tee;
use serde::Deserialize;
use serde_json::Value;
use sev::firmware::host::{CertTableEntry, CertType};
use sha2::{Digest, Sha256};

use crate::snp::{SnpPolicy, REPORT_LEN};
use crate::tdx::TdxPolicy;

/// What the broker accepts of Azure evidence beyond the SNP/TDX policies.
#[derive(Clone, Debug, Default)]
pub struct AzurePolicy {
    /// Accept `version: 1` evidence: the boot-time HCL report, whose hardware report is not
    /// bound to the session (only the vTPM quote is). Off by default.
    pub allow_boot_report: bool,
}

/// base64url with or without padding (serde_with's `Base64<UrlSafe>` writes it padded).
const URL_SAFE_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

const HCL_SIGNATURE: &[u8; 4] = b"HCLA";
const HW_SLOT_AT: usize = 32;
const REQUEST_AT: usize = HW_SLOT_AT + REPORT_LEN;
const VAR_DATA_AT: usize = REQUEST_AT + 20;
const REPORT_TYPE_SNP: u32 = 2;
const REPORT_TYPE_TDX: u32 = 4;
const TD_REPORT_DATA: std::ops::Range<usize> = 128..192;

#[derive(Deserialize)]
struct Evidence {
    version: u32,
    tpm_quote: Quote,
    hcl_report: String,
    vcek: Option<String>,
    td_quote: Option<String>,
}

#[derive(Deserialize)]
struct Quote {
    signature: String,
    message: String,
    pcrs: Vec<String>,
}

/// The parts of an HCL report the broker uses.
pub(crate) struct Hcl<'a> {
    pub report_type: u32,
    /// The 1184-byte hardware report slot.
    pub hw_slot: &'a [u8],
    /// The runtime claims as bytes (what the hardware report data hashes).
    pub var_data: &'a [u8],
    pub claims: Value,
}

/// Reads an HCL report (header "HCLA", hardware slot at 32, IGVM request data at 1216 with
/// the report type at +8, hash type at +12, claims size at +16, claims at 1236).
pub(crate) fn parse_hcl(bytes: &[u8]) -> anyhow::Result<Hcl<'_>> {
    ensure!(
        bytes.len() >= VAR_DATA_AT,
        "HCL report is {} bytes, shorter than its fixed part",
        bytes.len()
    );
    ensure!(
        &bytes[..4] == HCL_SIGNATURE,
        "HCL report signature is not HCLA"
    );
    let u32_at = |at: usize| {
        let mut b = [0u8; 4];
        b.copy_from_slice(&bytes[at..at + 4]);
        u32::from_le_bytes(b)
    };
    let report_type = u32_at(REQUEST_AT + 8);
    let hash_type = u32_at(REQUEST_AT + 12);
    ensure!(
        hash_type == 1,
        "HCL runtime claims are hashed with type {hash_type}; only SHA-256 (1) is supported"
    );
    let var_len = usize::try_from(u32_at(REQUEST_AT + 16))?;
    let var_data = VAR_DATA_AT
        .checked_add(var_len)
        .and_then(|end| bytes.get(VAR_DATA_AT..end))
        .ok_or_else(|| anyhow!("HCL runtime claims run past the report"))?;
    let claims = serde_json::from_slice(var_data).context("HCL runtime claims are not JSON")?;
    Ok(Hcl {
        report_type,
        hw_slot: &bytes[HW_SLOT_AT..REQUEST_AT],
        var_data,
        claims,
    })
}

pub(crate) use attest_verify::tpm::hcl_ak;

/// A verified and appraised Azure attestation.
#[derive(Debug)]
pub(crate) struct AzureAppraisal {
    pub reasons: Vec<String>,
    /// PCR0-23 of the vTPM quote, lowercase hex.
    pub pcrs: Vec<String>,
    pub claims: Value,
    pub summary: String,
}

/// What one Azure attestation is checked against.
pub(crate) struct AzureInput<'a> {
    pub tee: Tee,
    pub evidence: &'a Value,
    /// What the quote's qualifying data must be: the 48-byte binding digest in a session.
    pub nonce: &'a [u8],
    pub expected_pcrs: &'a BTreeMap<u8, Vec<[u8; 32]>>,
    pub snp: &'a SnpPolicy,
    pub tdx: &'a TdxPolicy,
    pub azure: &'a AzurePolicy,
}

/// Verifies and appraises `az-snp-vtpm` / `az-tdx-vtpm` evidence.
pub(crate) fn appraise(input: &AzureInput<'_>) -> anyhow::Result<AzureAppraisal> {
    let evidence = Evidence::deserialize(input.evidence)
        .context("primary_evidence is not Azure vTPM evidence (version, tpm_quote, hcl_report)")?;
    ensure!(
        matches!(evidence.version, 1 | 2),
        "Azure evidence version {} is not 1 or 2",
        evidence.version
    );
    let hcl_bytes = URL_SAFE_LENIENT
        .decode(&evidence.hcl_report)
        .context("hcl_report is not base64url")?;
    let hcl = parse_hcl(&hcl_bytes)?;

    // The vTPM quote, by the AK the runtime claims name.
    let ak = hcl_ak(&hcl.claims)?;
    let signature =
        hex::decode(&evidence.tpm_quote.signature).context("tpm_quote.signature is not hex")?;
    let message =
        hex::decode(&evidence.tpm_quote.message).context("tpm_quote.message is not hex")?;
    attest_verify::tpm::verify_rsassa_sha256(&message, &signature, &ak).map_err(|_| {
        anyhow!("vTPM quote signature does not verify with the HCL report's HCLAkPub")
    })?;
    let pcrs = crate::evidence::check_quote(
        &message,
        &evidence.tpm_quote.pcrs,
        input.nonce,
        "the binding digest",
    )?;

    // The hardware report, bound to the claims.
    let claims_hash = Sha256::digest(hcl.var_data);
    let (mut reasons, mut claims, hw_summary) = match input.tee {
        Tee::AzSnpVtpm => {
            ensure!(
                hcl.report_type == REPORT_TYPE_SNP,
                "the HCL report holds hardware report type {}, not SNP (2)",
                hcl.report_type
            );
            let vcek = URL_SAFE_LENIENT
                .decode(evidence.vcek.as_deref().ok_or_else(|| anyhow!("no vcek"))?)
                .context("vcek is not base64url")?;
            let raw: [u8; REPORT_LEN] =
                hcl.hw_slot.try_into().context("HCL hardware report slot")?;
            let verified = crate::snp::verify_report(
                &raw,
                &[CertTableEntry::new(CertType::VCEK, vcek)],
                input.snp,
            )?;
            ensure!(
                verified.report.vmpl == 0,
                "the SNP report is from VMPL {}, not the paravisor's VMPL 0",
                verified.report.vmpl
            );
            ensure!(
                verified.report.report_data[..32] == claims_hash[..],
                "SNP REPORT_DATA {} does not start with SHA-256 of the HCL runtime claims {}",
                hex::encode(&verified.report.report_data[..32]),
                hex::encode(claims_hash)
            );
            let a = crate::snp::appraise_verified(&verified, input.snp);
            (a.reasons, a.claims, a.summary)
        }
        Tee::AzTdxVtpm => {
            ensure!(
                hcl.report_type == REPORT_TYPE_TDX,
                "the HCL report holds hardware report type {}, not TDX (4)",
                hcl.report_type
            );
            let quote = URL_SAFE_LENIENT
                .decode(
                    evidence
                        .td_quote
                        .as_deref()
                        .ok_or_else(|| anyhow!("no td_quote"))?,
                )
                .context("td_quote is not base64url")?;
            let verified = crate::tdx::verify_quote(&quote, input.tdx)?;
            ensure!(
                verified.body.report_data[..32] == claims_hash[..],
                "TD quote REPORTDATA {} does not start with SHA-256 of the HCL runtime claims {}",
                hex::encode(&verified.body.report_data[..32]),
                hex::encode(claims_hash)
            );
            ensure!(
                hcl.hw_slot[TD_REPORT_DATA] == verified.body.report_data[..],
                "the TD quote is not of the HCL report's TDREPORT (report data differs)"
            );
            let a = crate::tdx::appraise_verified(&verified, None, input.tdx);
            (a.reasons, a.claims, a.summary)
        }
        other => bail!("{} is not an Azure vTPM TEE", other.as_ref()),
    };

    // Freshness of the hardware report itself.
    let freshness = match evidence.version {
        2 => {
            let user_data = hcl
                .claims
                .get("user-data")
                .and_then(Value::as_str)
                .and_then(|h| hex::decode(h).ok())
                .ok_or_else(|| anyhow!("HCL runtime claims have no hex user-data"))?;
            let mut want = input.nonce.to_vec();
            want.resize(64, 0);
            ensure!(
                user_data == want,
                "HCL user-data {} is not the binding digest zero-padded to 64 bytes {} (a stale HCL report?)",
                hex::encode(&user_data),
                hex::encode(&want)
            );
            "fresh HCL report"
        }
        _ => {
            ensure!(
                input.azure.allow_boot_report,
                "evidence version 1 (the boot-time HCL report, not bound to this session) is not accepted (allow_boot_report is off)"
            );
            "boot-time HCL report"
        }
    };

    for (index, accepted) in input.expected_pcrs {
        let actual = &pcrs[usize::from(*index)];
        if !accepted.contains(actual) {
            reasons.push(crate::tee::pcr_mismatch(*index, actual, accepted));
        }
    }
    let pcrs: Vec<String> = pcrs.iter().map(hex::encode).collect();
    if let Value::Object(map) = &mut claims {
        map.insert("hcl".into(), Value::String(freshness.into()));
    }
    Ok(AzureAppraisal {
        reasons,
        pcrs,
        claims,
        summary: format!("{} ({freshness}) + vTPM quote by HCLAkPub", hw_summary),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use crate::testdata;

    fn json(path: &str) -> Value {
        serde_json::from_slice(&testdata(path)).unwrap()
    }

    fn pem_ders(path: &str) -> Vec<Vec<u8>> {
        use x509_cert::der::Encode;
        x509_cert::Certificate::load_pem_chain(&testdata(path))
            .unwrap()
            .iter()
            .map(|c| c.to_der().unwrap())
            .collect()
    }

    fn at(y: i32, m: u8, d: u8) -> SystemTime {
        let secs = rcgen::date_time_ymd(y, m, d).unix_timestamp();
        UNIX_EPOCH + Duration::from_secs(secs as u64)
    }

    fn milan(time: SystemTime) -> SnpPolicy {
        let chain = pem_ders("snp/amd-certs/milan_cert_chain_vcek.pem");
        SnpPolicy {
            trusted_arks: pem_ders("snp/amd-certs/milan_ark.pem"),
            intermediates: chain,
            verification_time: Some(time),
            ..SnpPolicy::default()
        }
    }

    fn input<'a>(
        tee: Tee,
        evidence: &'a Value,
        nonce: &'a [u8],
        snp: &'a SnpPolicy,
        tdx: &'a TdxPolicy,
        azure: &'a AzurePolicy,
        pcrs: &'a BTreeMap<u8, Vec<[u8; 32]>>,
    ) -> AzureInput<'a> {
        AzureInput {
            tee,
            evidence,
            nonce,
            expected_pcrs: pcrs,
            snp,
            tdx,
            azure,
        }
    }

    const V2_NONCE: &str = "982f5c6e45df0ed3f10b6f60b02f0c8390e281300f3805e2279c16168cd6ae9aa398f647caa2338748cd0fd9f5f819ef";

    #[test]
    fn real_azure_snp_v2_evidence_verifies_to_the_amd_root() {
        let ev = json("azure/trustee-az-snp/evidence-v2.json");
        let nonce = hex::decode(V2_NONCE).unwrap();
        let snp = milan(at(2025, 6, 1));
        let (tdx, az, pcrs) = (
            TdxPolicy::default(),
            AzurePolicy::default(),
            BTreeMap::new(),
        );
        let ok = appraise(&input(Tee::AzSnpVtpm, &ev, &nonce, &snp, &tdx, &az, &pcrs)).unwrap();
        assert!(ok.reasons.is_empty(), "{:?}", ok.reasons);
        assert_eq!(
            ok.pcrs[0],
            "84275b2f4312cd4fc6cbe6b152ad3c3683e513d9f1e23c34fca160c8cca7a6a7"
        );
        assert!(ok.summary.contains("fresh HCL report"), "{}", ok.summary);

        // Another nonce, another tee, a stale user-data, an untrusted ARK: all rejected.
        let mut other = nonce.clone();
        other[0] ^= 1;
        let e = appraise(&input(Tee::AzSnpVtpm, &ev, &other, &snp, &tdx, &az, &pcrs)).unwrap_err();
        assert!(format!("{e:#}").contains("qualifying data"), "{e:#}");
        assert!(appraise(&input(Tee::AzTdxVtpm, &ev, &nonce, &snp, &tdx, &az, &pcrs)).is_err());
        let genoa = SnpPolicy {
            trusted_arks: pem_ders("snp/amd-certs/genoa_ark.pem"),
            ..milan(at(2025, 6, 1))
        };
        let e = appraise(&input(
            Tee::AzSnpVtpm,
            &ev,
            &nonce,
            &genoa,
            &tdx,
            &az,
            &pcrs,
        ))
        .unwrap_err();
        assert!(
            format!("{e:#}").contains("chain") || format!("{e:#}").contains("root"),
            "{e:#}"
        );
        // Expected PCRs are appraised.
        let mut want = BTreeMap::new();
        want.insert(0u8, vec![[0u8; 32]]);
        let w = appraise(&input(Tee::AzSnpVtpm, &ev, &nonce, &snp, &tdx, &az, &want)).unwrap();
        assert!(
            w.reasons.iter().any(|r| r.contains("PCR0")),
            "{:?}",
            w.reasons
        );
    }

    #[test]
    fn real_azure_snp_boot_report_needs_the_policy_switch() {
        // trustee's first SNP set: HCL report + quote over "challenge" + VCEK PEM bundle.
        let quote = json("azure/trustee-az-snp/tpm-quote-v1.json");
        let vcek = pem_ders("azure/trustee-az-snp/vcek.pem").remove(0);
        let url = base64::engine::general_purpose::URL_SAFE;
        let ev = serde_json::json!({
            "version": 1,
            "tpm_quote": quote,
            "hcl_report": url.encode(testdata("azure/trustee-az-snp/hcl-report.bin")),
            "vcek": url.encode(vcek),
        });
        let snp = milan(at(2024, 6, 1));
        let (tdx, pcrs) = (TdxPolicy::default(), BTreeMap::new());
        let off = AzurePolicy::default();
        let e = appraise(&input(
            Tee::AzSnpVtpm,
            &ev,
            b"challenge",
            &snp,
            &tdx,
            &off,
            &pcrs,
        ))
        .unwrap_err();
        assert!(format!("{e:#}").contains("allow_boot_report"), "{e:#}");
        let on = AzurePolicy {
            allow_boot_report: true,
        };
        let ok = appraise(&input(
            Tee::AzSnpVtpm,
            &ev,
            b"challenge",
            &snp,
            &tdx,
            &on,
            &pcrs,
        ))
        .unwrap();
        assert!(ok.summary.contains("boot-time"), "{}", ok.summary);
        assert_eq!(
            ok.pcrs[0],
            "f3a7e99a5f819a034386bce753a48a73cfdaa0bea0ecfc124bedbf5a8c4799be"
        );
        // Trustee's corruption cases: the claims' hash no longer matches the SNP report.
        let mut bad = testdata("azure/trustee-az-snp/hcl-report.bin");
        bad[0x06e0] ^= 1;
        let mut ev2 = ev;
        ev2["hcl_report"] = Value::String(url.encode(&bad));
        let e = appraise(&input(
            Tee::AzSnpVtpm,
            &ev2,
            b"challenge",
            &snp,
            &tdx,
            &on,
            &pcrs,
        ))
        .unwrap_err();
        assert!(format!("{e:#}").contains("HCL runtime claims"), "{e:#}");
    }

    #[test]
    fn real_azure_snp_genoa_evidence_verifies_to_the_genoa_root() {
        // trustee's Genoa sample is in the v0 shape (byte arrays, PEM VCEK); re-shaped here.
        let v0 = json("azure/trustee-az-snp-genoa/evidence-genoa.json");
        let bytes = |v: &Value| -> Vec<u8> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|b| u8::try_from(b.as_u64().unwrap()).unwrap())
                .collect()
        };
        let url = base64::engine::general_purpose::URL_SAFE;
        let pcrs: Vec<String> = v0["quote"]["pcrs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| hex::encode(bytes(p)))
            .collect();
        let vcek = pem_ders("azure/trustee-az-snp-genoa/vcek-genoa.pem").remove(0);
        let ev = serde_json::json!({
            "version": 1,
            "tpm_quote": {
                "signature": hex::encode(bytes(&v0["quote"]["signature"])),
                "message": hex::encode(bytes(&v0["quote"]["message"])),
                "pcrs": pcrs,
            },
            "hcl_report": url.encode(bytes(&v0["report"])),
            "vcek": url.encode(vcek),
        });
        let nonce = hex::decode("0218488bae25d2509232bf676f1a66a30d7372add909109b36016ef136f2938ca05475f8b46094de6b64270ea35d950f").unwrap();
        let snp = SnpPolicy {
            trusted_arks: pem_ders("snp/amd-certs/genoa_ark.pem"),
            intermediates: pem_ders("snp/amd-certs/genoa_cert_chain_vcek.pem"),
            verification_time: Some(at(2025, 6, 1)),
            ..SnpPolicy::default()
        };
        let az = AzurePolicy {
            allow_boot_report: true,
        };
        let (tdx, want) = (TdxPolicy::default(), BTreeMap::new());
        let ok = appraise(&input(Tee::AzSnpVtpm, &ev, &nonce, &snp, &tdx, &az, &want)).unwrap();
        assert_eq!(
            ok.pcrs[0],
            "afd689d0bb1c5f36f023fbaf574135f555a28a10c1f6b938d2a25e70c7783338"
        );
    }

    #[test]
    fn real_azure_tdx_evidence_verifies_to_the_intel_root() {
        let ev = json("azure/trustee-az-tdx/evidence-v1.json");
        let tdx = TdxPolicy {
            trusted_roots: vec![testdata("tdx/dcap-qvl/TrustedRootCA.der")],
            verification_time: Some(at(2026, 3, 1)),
            ..TdxPolicy::default()
        };
        let (snp, pcrs) = (SnpPolicy::default(), BTreeMap::new());
        let az = AzurePolicy {
            allow_boot_report: true,
        };
        let ok = appraise(&input(
            Tee::AzTdxVtpm,
            &ev,
            b"challenge",
            &snp,
            &tdx,
            &az,
            &pcrs,
        ))
        .unwrap();
        assert_eq!(
            ok.pcrs[0],
            "782b20b10f55cc46e2142cc2145d548698073e5beb82752c8d7f9279f0d8a273"
        );
        assert_eq!(
            ok.claims["mr_td"],
            "024a32b070383331181619fa387cb4d55d1e38879f989933055ccad5bc2db795d1737b66205949d15469dc8c1ba7ab7b"
        );
        // Trustee's corruption case: one byte of the claims changes their hash.
        let url = base64::engine::general_purpose::URL_SAFE;
        let mut hcl = URL_SAFE_LENIENT
            .decode(ev["hcl_report"].as_str().unwrap())
            .unwrap();
        hcl[0x0880] ^= 1;
        let mut bad = ev;
        bad["hcl_report"] = Value::String(url.encode(&hcl));
        let e = appraise(&input(
            Tee::AzTdxVtpm,
            &bad,
            b"challenge",
            &snp,
            &tdx,
            &az,
            &pcrs,
        ))
        .unwrap_err();
        assert!(format!("{e:#}").contains("HCL runtime claims"), "{e:#}");
    }
}
