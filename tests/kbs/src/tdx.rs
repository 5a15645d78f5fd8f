//! Intel TDX evidence: `{"cc_eventlog": <std base64 CCEL> | null, "quote": <std base64>}`.
//!
//! Verification (a failure is an attestation error, 401), for real quotes and for the
//! simulated ones of [`crate::sim::TdxSigner`] alike:
//!
//! - the quote is v4 or v5 (TD report body TD10 or TD15), ECDSA-256 attestation key, TDX TEE
//!   type, Intel's QE vendor ID;
//! - its ECDSA P-256/SHA-256 signature over header and body verifies with the attestation key
//!   the quote carries;
//! - that key is bound to the Quoting Enclave: the QE report's REPORTDATA is
//!   SHA-256(attestation key || QE authentication data) followed by 32 zero bytes;
//! - the QE report is signed by the PCK certificate of the quote's certification data, whose
//!   chain ends in a configured trusted root (Intel's SGX Root CA for real quotes), every
//!   certificate valid at the verification time;
//! - REPORTDATA is the binding digest zero-padded to 64 bytes;
//! - the CCEL, when sent, replays (SHA-384, CC MR index 1-4 -> RTMR0-3) to the quote's RTMRs.
//!
//! Not checked (these need Intel's collateral, which a real Trustee fetches from a PCCS): the
//! TCB level of the platform and of the QE (TCB info, QE identity), and revocation (CRLs). The
//! unit tests check the real quote that comes with collateral through `dcap-qvl` as well.
//!
//! Appraisal (a failure gives `ear.status` `warning`): MRTD, RTMRs and the debug attribute
//! against [`TdxPolicy`].

use std::collections::BTreeMap;
use std::time::SystemTime;

use anyhow::{ensure, Context};
use base64::{engine::general_purpose::STANDARD, Engine};
use serde::Deserialize;
use serde_json::Value;

use crate::x509;

/// What the broker trusts and expects of TDX evidence. The default trusts nothing.
#[derive(Clone, Default)]
pub struct TdxPolicy {
    /// DER of the roots a PCK chain must end in: Intel's SGX Root CA for real quotes, the
    /// simulated root of [`crate::sim::TdxSigner`] in tests.
    pub trusted_roots: Vec<Vec<u8>>,
    /// The expected MRTD (96 hex digits); `None` accepts any.
    pub expected_mr_td: Option<String>,
    /// Expected RTMR values by index (0-3), 96 hex digits each.
    pub expected_rtmrs: BTreeMap<u8, String>,
    /// Whether a debuggable TD (TD_ATTRIBUTES.DEBUG) may still be `affirming`.
    pub allow_debug: bool,
    /// The time at which certificates must be valid; `None` means now.
    pub verification_time: Option<SystemTime>,
}

/// Certificates are shown by count, not as bytes.
impl std::fmt::Debug for TdxPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TdxPolicy")
            .field(
                "trusted_roots",
                &format!("<{} certificates>", self.trusted_roots.len()),
            )
            .field("expected_mr_td", &self.expected_mr_td)
            .field("expected_rtmrs", &self.expected_rtmrs)
            .field("allow_debug", &self.allow_debug)
            .field("verification_time", &self.verification_time)
            .finish()
    }
}

pub(crate) use attest_verify::tdx::{replay_ccel, Replay, VerifiedQuote};

/// Verifies a quote with the policy's trusted roots at its verification time.
pub(crate) fn verify_quote(bytes: &[u8], policy: &TdxPolicy) -> anyhow::Result<VerifiedQuote> {
    let roots = policy
        .trusted_roots
        .iter()
        .map(|der| x509::from_der(der).context("configured TDX trusted root"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let at = policy.verification_time.unwrap_or_else(SystemTime::now);
    attest_verify::tdx::verify_quote(bytes, &roots, at)
}

/// The `tdx` evidence as Trustee's verifier reads it.
#[derive(Deserialize)]
struct TdxEvidence {
    cc_eventlog: Option<String>,
    quote: String,
}

/// The outcome of TDX verification and appraisal.
#[derive(Debug)]
pub(crate) struct TdxAppraisal {
    pub reasons: Vec<String>,
    pub claims: Value,
    pub summary: String,
}

/// Verifies and appraises `tdx` evidence that must carry `expected_report_data`.
pub(crate) fn appraise(
    evidence: &Value,
    expected_report_data: &[u8; 64],
    policy: &TdxPolicy,
) -> anyhow::Result<TdxAppraisal> {
    let evidence = TdxEvidence::deserialize(evidence)
        .context("primary_evidence is not tdx evidence (cc_eventlog, quote)")?;
    let quote = STANDARD
        .decode(&evidence.quote)
        .context("quote is not standard base64")?;
    let verified = verify_quote(&quote, policy)?;
    let body = &verified.body;
    ensure!(
        &body.report_data == expected_report_data,
        "TDX REPORTDATA {} is not the binding digest zero-padded to 64 bytes {}",
        hex::encode(body.report_data),
        hex::encode(expected_report_data)
    );
    let replay = match &evidence.cc_eventlog {
        Some(b64) => {
            let log = STANDARD
                .decode(b64)
                .context("cc_eventlog is not standard base64")?;
            let replay = replay_ccel(&log).context("cc_eventlog")?;
            for (i, (replayed, quoted)) in replay.rtmrs.iter().zip(&body.rtmrs).enumerate() {
                ensure!(
                    replayed == quoted,
                    "the CCEL replays RTMR{i} to {} but the quote has {}",
                    hex::encode(replayed),
                    hex::encode(quoted)
                );
            }
            Some(replay)
        }
        None => None,
    };

    Ok(appraise_verified(&verified, replay.as_ref(), policy))
}

/// Appraises a verified quote (and its CCEL replay, when there was one) against the policy's
/// expectations (MRTD, RTMRs, debug).
pub(crate) fn appraise_verified(
    verified: &VerifiedQuote,
    replay: Option<&Replay>,
    policy: &TdxPolicy,
) -> TdxAppraisal {
    let body = &verified.body;
    let mut reasons = Vec::new();
    if let Some(expected) = &policy.expected_mr_td {
        let actual = hex::encode(body.mr_td);
        if actual != expected.to_ascii_lowercase() {
            reasons.push(format!("TDX MRTD is {actual} but {expected} is expected"));
        }
    }
    for (index, expected) in &policy.expected_rtmrs {
        let actual = hex::encode(body.rtmrs[usize::from(*index)]);
        if actual != expected.to_ascii_lowercase() {
            reasons.push(format!(
                "TDX RTMR{index} is {actual} but {expected} is expected"
            ));
        }
    }
    if body.debug() && !policy.allow_debug {
        reasons.push("TDX TD_ATTRIBUTES has DEBUG set".to_string());
    }
    let claims = serde_json::json!({
        "quote_version": verified.version,
        "mr_td": hex::encode(body.mr_td),
        "mr_seam": hex::encode(body.mr_seam),
        "mr_config_id": hex::encode(body.mr_config_id),
        "rtmr0": hex::encode(body.rtmrs[0]),
        "rtmr1": hex::encode(body.rtmrs[1]),
        "rtmr2": hex::encode(body.rtmrs[2]),
        "rtmr3": hex::encode(body.rtmrs[3]),
        "td_attributes": hex::encode(body.td_attributes),
        "xfam": hex::encode(body.xfam),
        "tee_tcb_svn": hex::encode(body.tee_tcb_svn),
        "ccel_replayed": replay.is_some(),
    });
    let summary = format!(
        "tdx quote v{} from {} (MRTD {}, {})",
        verified.version,
        verified.pck,
        &hex::encode(body.mr_td)[..16],
        match replay {
            Some(r) => format!("CCEL replayed, {} extends", r.extends),
            None => "no CCEL".to_string(),
        }
    );
    TdxAppraisal {
        reasons,
        claims,
        summary,
    }
}

/// Validates a policy when the broker starts.
pub(crate) fn validate(policy: &TdxPolicy) -> anyhow::Result<()> {
    for der in &policy.trusted_roots {
        x509::from_der(der).context("tdx trusted root")?;
    }
    let hex96 = |v: &str| v.len() == 96 && v.bytes().all(|b| b.is_ascii_hexdigit());
    if let Some(m) = &policy.expected_mr_td {
        ensure!(hex96(m), "tdx expected_mr_td {m:?} is not 96 hex digits");
    }
    for (index, value) in &policy.expected_rtmrs {
        ensure!(*index < 4, "tdx expected RTMR index {index} is not 0-3");
        ensure!(
            hex96(value),
            "tdx expected RTMR{index} {value:?} is not 96 hex digits"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{TdxQuoteParams, TdxSigner};
    use std::time::{Duration, UNIX_EPOCH};

    use crate::testdata;

    fn date(y: i32, m: u8, d: u8) -> SystemTime {
        let secs = rcgen::date_time_ymd(y, m, d).unix_timestamp();
        UNIX_EPOCH + Duration::from_secs(secs as u64)
    }

    fn intel_policy(at: SystemTime) -> TdxPolicy {
        TdxPolicy {
            trusted_roots: vec![testdata("tdx/dcap-qvl/TrustedRootCA.der")],
            verification_time: Some(at),
            ..TdxPolicy::default()
        }
    }

    /// Every real quote in testdata, with a time inside its PCK chain's validity.
    const REAL_QUOTES: [&str; 7] = [
        "tdx/go-tdx-guest/tdx_prod_quote_SPR_E4.dat",
        "tdx/trustee/tdx_quote_4.dat",
        "tdx/trustee/tdx_quote_5.dat",
        "tdx/trustee/tdx_quote_6.dat",
        "tdx/dcap-qvl/tdx_quote",
        "tdx/dcap-qvl/tdx_quote_outdated",
        "azure/trustee-az-tdx/td-quote.bin",
    ];

    #[test]
    fn real_quotes_verify_to_the_intel_root() {
        // Inside every PCK chain's validity (the newest PCK certificate is from 2026-01-23).
        let policy = intel_policy(date(2026, 3, 1));
        for path in REAL_QUOTES {
            let quote = testdata(path);
            let verified =
                verify_quote(&quote, &policy).unwrap_or_else(|e| panic!("{path}: {e:#}"));
            assert!(verified.pck.contains("Intel SGX PCK Certificate"), "{path}");
        }
        // Fields against PROVENANCE.md.
        let v = verify_quote(&testdata(REAL_QUOTES[0]), &policy).unwrap();
        assert_eq!(v.version, 4);
        assert_eq!(
            hex::encode(v.body.mr_td),
            "6363b8043668a3ad953278e10389574d326c6749fb78aa810ecd9336923db86f22fc00b8dcd404bc10d5e119d7215cbb"
        );
        assert_eq!(
            hex::encode(v.body.rtmrs[2]),
            "8652f0caaba7e215ea442dc36a4499d8fec3362f3a0b2ca151cbe4b3e6466fe59c7368b3c2287fc7c3bf5c924eb4424e"
        );
        let v5 = verify_quote(&testdata(REAL_QUOTES[2]), &policy).unwrap();
        assert_eq!(v5.version, 5);
        assert_eq!(
            hex::encode(v5.body.report_data),
            "6d6ab13b046cff606ac0074be13981b07b6325dba10b5facc96febf551c0c3be2b75f92fe1f88f4bb996969ad0174b4b7a70261b7b85c844f4b33a4674fd049f"
        );
        let debug = verify_quote(&testdata(REAL_QUOTES[1]), &policy).unwrap();
        assert!(debug.body.debug(), "tdx_quote_4 is a debug TD");
    }

    #[test]
    fn mutated_real_quotes_and_wrong_roots_fail() {
        let good = testdata("tdx/dcap-qvl/tdx_quote");
        let policy = intel_policy(date(2025, 7, 1));
        let sig_data = 48 + 584 + 4;
        let qe_report = sig_data + 64 + 64 + 6;
        for (at, why) in [
            (48 + 520, "quote signature"),                 // REPORTDATA
            (48 + 136, "quote signature"),                 // MRTD
            (sig_data + 64, "attestation key"),            // attestation key
            (qe_report + 10, "QE report signature"),       // QE report body
            (qe_report + 384 + 10, "QE report signature"), // QE report signature
            (qe_report + 384 + 64 + 2, "bind"),            // QE authentication data
        ] {
            let mut bad = good.clone();
            bad[at] ^= 0x01;
            let e = verify_quote(&bad, &policy).unwrap_err();
            assert!(format!("{e:#}").contains(why), "byte {at}: {e:#}");
        }
        for cut in [10, 48 + 100, sig_data + 10, good.len() - 2000] {
            assert!(verify_quote(&good[..cut], &policy).is_err(), "cut at {cut}");
        }
        let sim = TdxSigner::new().unwrap();
        let wrong_root = TdxPolicy {
            trusted_roots: vec![sim.root_der().to_vec()],
            ..policy
        };
        assert!(verify_quote(&good, &wrong_root).is_err());
        let e = verify_quote(&good, &intel_policy(date(2060, 1, 1))).unwrap_err();
        assert!(format!("{e:#}").contains("expired"), "{e:#}");
    }

    /// The independent checker: Phala's dcap-qvl verifies the quote that comes with Intel
    /// collateral (TCB info, QE identity, CRLs) end to end at a time inside the collateral's
    /// validity, and parses the same fields as the broker. The "outdated" quote's platform TCB
    /// matches no level of its TCB info, which dcap-qvl refuses (the fixture's source only
    /// shows it passing with a forced TCB override).
    #[test]
    fn dcap_qvl_agrees_on_the_real_quotes_with_collateral() {
        let raw = testdata("tdx/dcap-qvl/tdx_quote");
        let collateral: dcap_qvl::QuoteCollateralV3 =
            serde_json::from_slice(&testdata("tdx/dcap-qvl/tdx_quote_collateral.json")).unwrap();
        // Inside 2025-06-19T10:32:27Z .. 2025-07-19T10:16:03Z, where all collateral is valid.
        let at = date(2025, 7, 1);
        let secs = at.duration_since(UNIX_EPOCH).unwrap().as_secs();
        let report = dcap_qvl::verify::verify(&raw, &collateral, secs).unwrap();
        assert_eq!(report.status, "UpToDate");
        assert!(report.advisory_ids.is_empty());
        let ours = verify_quote(&raw, &intel_policy(at)).unwrap();
        let theirs = dcap_qvl::quote::Quote::parse(&raw).unwrap();
        let td = theirs.report.as_td10().unwrap();
        assert_eq!(td.report_data, ours.body.report_data);
        assert_eq!(td.mr_td, ours.body.mr_td);
        assert_eq!(td.rt_mr0, ours.body.rtmrs[0]);
        // One flipped bit in the body and dcap-qvl refuses it too.
        let mut bad = raw;
        bad[48 + 136] ^= 1;
        assert!(dcap_qvl::verify::verify(&bad, &collateral, secs).is_err());

        let outdated = testdata("tdx/dcap-qvl/tdx_quote_outdated");
        let collateral: dcap_qvl::QuoteCollateralV3 =
            serde_json::from_slice(&testdata("tdx/dcap-qvl/tdx_quote_outdated_collateral.json"))
                .unwrap();
        let at = date(2026, 3, 1);
        let secs = at.duration_since(UNIX_EPOCH).unwrap().as_secs();
        let e = dcap_qvl::verify::verify(&outdated, &collateral, secs).unwrap_err();
        assert!(format!("{e:#}").contains("No matching TCB level"), "{e:#}");
        // Its signatures and PCK chain are fine: only the TCB appraisal refuses it.
        verify_quote(&outdated, &intel_policy(at)).unwrap();
    }

    /// RTMRs stated in PROVENANCE.md (trustee's `test_rtmr_integrity`, go-eventlog).
    const OVMF_RTMRS: [&str; 3] = [
        "8566f998798db09443b244c62de9a3041fb02e2e6936c4396d784bba2e90177329ec5aba3bb484404f2ab9cc90abe193",
        "775b9f6bfe99f8a31396f0d0218e67ffa796d3b96ccf961cbb0deba48c79c00f082cda1a5567c1c16305f1fc210c13c6",
        "94eaf7a7bf398ed8d888c91057ae0261802e4f3df084213a76ca7f0b5055ac9d2241de43cd58d9e8b49c503bbf25f34a",
    ];

    #[test]
    fn real_ccels_replay_to_the_stated_rtmrs() {
        for (path, expected) in [
            ("tdx/ccel/trustee-ovmf/CCEL_data_ovmf", OVMF_RTMRS),
            (
                "tdx/ccel/trustee-grub/CCEL_data_grub",
                [
                    "cec0a104f691f60da2387fea3c2de00c4ac035e2bb479ff02edcce69039d9e9907f0b3e55031da3dc7038f423adebd79",
                    "6c289e0c62182d41ebe97bdbc9872d10998a08eaa86adcdc684001a363207ee72942c7522cdf00a4bbc3d784bed7b670",
                    "08919d017ba0e52cd6d966351c7de16fe76c1d3d3d3da4554239e4c7d16cb8b82a94e7eaea3a0e6e18eb690b999fd31e",
                ],
            ),
            (
                "tdx/ccel/trustee-tdshim/CCEL_data",
                [
                    "2dc712306a963eadb894ad47dbaa17df44814151555aee11cbb843becca88950ffd079664902e6f22c66f7c8213543f4",
                    "0fa3be56af61208bbd179dc7b124988eb929319154663c539d6f46445ecac2fec287075047ff7bd1922829fec28cd3cf",
                    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
                ],
            ),
        ] {
            let replay = replay_ccel(&testdata(path)).unwrap_or_else(|e| panic!("{path}: {e:#}"));
            for (i, want) in expected.iter().enumerate() {
                assert_eq!(hex::encode(replay.rtmrs[i]), *want, "{path} RTMR{i}");
            }
            assert_eq!(replay.rtmrs[3], [0; 48], "{path} RTMR3");
        }
        let intel = replay_ccel(&testdata("tdx/ccel/intel-test/CCEL_unpadded.data.bin")).unwrap();
        assert_eq!(
            hex::encode(intel.rtmrs[0]),
            "8083cd6898cc52a90231cdf9c0532bf9513c40465c6f71e56cbe32ee2c11a9dfc030297ca3ca0f62477d6d1f610d3fdb"
        );
        let cos = replay_ccel(&testdata(
            "tdx/ccel/gce-cos113-dupe-separator/cos-113-intel-tdx-dupe-separator-unpadded.bin",
        ))
        .unwrap();
        for (i, (head, tail)) in [
            ("a4de2df2", "752d"),
            ("0ee9366c", "4e20"),
            ("4969684d", "e7c1"),
        ]
        .iter()
        .enumerate()
        {
            let got = hex::encode(cos.rtmrs[i]);
            assert!(
                got.starts_with(head) && got.ends_with(tail),
                "RTMR{i} {got}"
            );
        }
        // Malformed logs are errors, never panics.
        let ovmf = testdata("tdx/ccel/trustee-ovmf/CCEL_data_ovmf");
        for cut in [0, 10, 40, 100, 2000] {
            let _ = replay_ccel(&ovmf[..cut]);
        }
        assert!(replay_ccel(&ovmf[..2000]).is_err());
    }

    fn sim_evidence(signer: &TdxSigner, params: &TdxQuoteParams, data: &[u8; 64]) -> Value {
        let mut ccel = testdata("tdx/ccel/trustee-ovmf/CCEL_data_ovmf");
        ccel.truncate(2120);
        ccel.extend_from_slice(&[0xFF; 8]);
        serde_json::json!({
            "cc_eventlog": STANDARD.encode(ccel),
            "quote": STANDARD.encode(signer.quote(params, data)),
        })
    }

    fn ovmf_params() -> TdxQuoteParams {
        let mut params = TdxQuoteParams::default();
        for (i, rtmr) in OVMF_RTMRS.iter().enumerate() {
            params.rtmrs[i].copy_from_slice(&hex::decode(rtmr).unwrap());
        }
        params
    }

    #[test]
    fn simulated_quotes_verify_and_are_appraised() {
        let signer = TdxSigner::new().unwrap();
        let data = [0x22u8; 64];
        let params = ovmf_params();
        let quote = signer.quote(&params, &data);
        // dcap-qvl parses the simulated layout to the same fields.
        let theirs = dcap_qvl::quote::Quote::parse(&quote).unwrap();
        let td = theirs.report.as_td10().unwrap();
        assert_eq!(td.report_data, data);
        assert_eq!(td.rt_mr1, params.rtmrs[1]);
        assert_eq!(theirs.header.version, 4);

        let policy = TdxPolicy {
            trusted_roots: vec![signer.root_der().to_vec()],
            ..TdxPolicy::default()
        };
        let evidence = sim_evidence(&signer, &params, &data);
        let ok = appraise(&evidence, &data, &policy).unwrap();
        assert!(ok.reasons.is_empty(), "{:?}", ok.reasons);
        assert_eq!(ok.claims["ccel_replayed"], true);

        let e = appraise(&evidence, &[0x23; 64], &policy).unwrap_err();
        assert!(format!("{e:#}").contains("REPORTDATA"), "{e:#}");
        // A CCEL that does not replay to the quoted RTMRs.
        let mut other = params.clone();
        other.rtmrs[1] = [1; 48];
        let e = appraise(&sim_evidence(&signer, &other, &data), &data, &policy).unwrap_err();
        assert!(format!("{e:#}").contains("RTMR1"), "{e:#}");
        // Without a CCEL nothing is replayed, and expectations still apply.
        let mut no_log = evidence.clone();
        no_log["cc_eventlog"] = Value::Null;
        let strict = TdxPolicy {
            expected_mr_td: Some("ab".repeat(48)),
            expected_rtmrs: [(2, OVMF_RTMRS[2].to_string())].into(),
            ..policy.clone()
        };
        let warned = appraise(&no_log, &data, &strict).unwrap();
        assert_eq!(warned.reasons.len(), 1, "{:?}", warned.reasons);
        assert!(warned.reasons[0].contains("MRTD"));
        let debug = TdxQuoteParams {
            td_attributes: [1, 0, 0, 0x10, 0, 0, 0, 0],
            ..params
        };
        let warned = appraise(&sim_evidence(&signer, &debug, &data), &data, &policy).unwrap();
        assert!(warned.reasons[0].contains("DEBUG"), "{:?}", warned.reasons);
        // Another platform's root is not trusted.
        let other = TdxSigner::new().unwrap();
        let foreign = TdxPolicy {
            trusted_roots: vec![other.root_der().to_vec()],
            ..TdxPolicy::default()
        };
        assert!(appraise(&evidence, &data, &foreign).is_err());
    }
}
