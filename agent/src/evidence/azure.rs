//! Azure confidential VMs (`az-snp-vtpm`, `az-tdx-vtpm`): the hardware report is reached
//! through the vTPM, in the shape Trustee's `az_snp_vtpm` / `az_tdx_vtpm` verifiers read:
//!
//! ```text
//! {"version": 2,
//!  "tpm_quote": {"signature": <hex raw RSASSA signature>, "message": <hex TPMS_ATTEST>,
//!                "pcrs": [24 x hex SHA-256]},
//!  "hcl_report": <base64url (padded) of NV 0x01400001>,
//!  "vcek": <base64url DER>            (SNP)
//!  "td_quote": <base64url TD quote>}  (TDX)
//! ```
//!
//! The chain a broker checks: the SNP report (VCEK -> AMD) or TD quote (PCK -> Intel) carries
//! SHA-256 of the HCL runtime claims in its report data; the claims carry the vTPM AK
//! (`HCLAkPub`) and our user data; the AK signs the quote, whose qualifying data is the
//! 48-byte binding digest.
//!
//! Freshness: the binding digest, zero-padded to 64 bytes, is written to NV 0x01400002; the
//! paravisor (HCL) then puts it in the `user-data` claim of a new report in NV 0x01400001.
//! The public tools sleep a fixed 3 s before reading; we re-read with short growing pauses
//! until the report carries our user data, bounded by `azure.poll_timeout_ms`.
//! `azure.insecure_boot_report` skips this and sends the boot-time report (`version: 1`).

use std::time::{Duration, Instant};

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, URL_SAFE};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use kbs_types::Tee;
use rsa::pkcs8::EncodePublicKey;
use rsa::{BigUint, RsaPublicKey};

use super::tpm::{extend_pcr, read_pcrs};
use super::{EvidenceError, EvidenceSource, Recorded, ReportData};
use crate::config::{Azure, Platform, Timeouts};
use crate::formats::hcl::{self, HclReport, HwReport};
use crate::formats::tpm::{parse_tpmt_signature, TpmtSignature};
use crate::hw::imds::Imds;
use crate::hw::nv::{AZURE_HCL_REPORT, AZURE_USER_DATA};
use crate::hw::tpm::{AkSource, Quote, Tpm};

/// The persistent handle of the AK Azure's vTPM provisions (its public key is `HCLAkPub`).
pub(crate) const AZURE_AK_HANDLE: u32 = 0x8100_0003;

/// Evidence version with a fresh HCL report carrying our user data.
pub(crate) const VERSION_FRESH: u32 = 2;
/// Evidence version with the boot-time HCL report (binding through the quote only).
pub(crate) const VERSION_BOOT: u32 = 1;

/// IMDS: the VCEK and its chain (THIM).
pub(crate) const THIM_PATH: &str = "/metadata/THIM/amd/certification";
/// IMDS: TD report in, TD quote out.
pub(crate) const TD_QUOTE_PATH: &str = "/acc/tdquote";

/// The size of a TDREPORT at the start of the HCL report's hardware slot.
const TD_REPORT_SIZE: usize = 1024;

/// The first pause between reads of the HCL report; it doubles up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(1);
/// The longest pause between reads.
const MAX_PAUSE: Duration = Duration::from_millis(50);

/// base64url that decodes with or without padding (IMDS and Trustee's serde_with differ).
const URL_SAFE_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Which hardware is behind the paravisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AzureKind {
    /// AMD SEV-SNP: the HCL report holds an SNP report.
    Snp,
    /// Intel TDX: the HCL report holds a TDREPORT.
    Tdx,
}

impl AzureKind {
    /// The kind of an HCL report's hardware report.
    pub(crate) fn of(report: &HclReport) -> AzureKind {
        match report.hw_report {
            HwReport::Snp(_) => AzureKind::Snp,
            HwReport::Tdx(_) => AzureKind::Tdx,
        }
    }

    /// The platform.
    pub(crate) fn platform(self) -> Platform {
        match self {
            AzureKind::Snp => Platform::AzSnpVtpm,
            AzureKind::Tdx => Platform::AzTdxVtpm,
        }
    }
}

/// The second hardware item of the evidence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endorsement {
    /// SNP: the VCEK (DER).
    Vcek(Vec<u8>),
    /// TDX: the TD quote.
    TdQuote(Vec<u8>),
}

/// Evidence from an Azure confidential VM.
pub(crate) struct AzureSource {
    kind: AzureKind,
    config: Azure,
    tcti: String,
    imds: Imds,
}

impl AzureSource {
    /// A source for `kind` using the vTPM at `tcti` and IMDS as configured.
    pub(crate) fn new(
        kind: AzureKind,
        config: Azure,
        tcti: String,
        timeouts: &Timeouts,
    ) -> AzureSource {
        let imds = Imds::new(&config.imds_url, timeouts);
        AzureSource {
            kind,
            config,
            tcti,
            imds,
        }
    }

    fn endorsement(&self, hcl_bytes: &[u8], hcl: &HclReport) -> Result<Endorsement, EvidenceError> {
        match self.kind {
            AzureKind::Snp => Ok(Endorsement::Vcek(parse_thim_reply(
                &self.imds.get(THIM_PATH)?,
            )?)),
            AzureKind::Tdx => {
                let td_report = hcl_bytes
                    .get(hcl::HEADER_SIZE..hcl::HEADER_SIZE + TD_REPORT_SIZE)
                    .ok_or_else(|| EvidenceError::Malformed {
                        what: "HCL report",
                        why: "no TDREPORT".into(),
                    })?;
                let reply = self
                    .imds
                    .post_json(TD_QUOTE_PATH, &td_quote_request(td_report))?;
                let quote = parse_td_quote_reply(&reply)?;
                check_td_quote(&quote, hcl)?;
                Ok(Endorsement::TdQuote(quote))
            }
        }
    }
}

impl EvidenceSource for AzureSource {
    fn platform(&self) -> Platform {
        self.kind.platform()
    }

    fn tee(&self) -> Tee {
        match self.kind {
            AzureKind::Snp => Tee::AzSnpVtpm,
            AzureKind::Tdx => Tee::AzTdxVtpm,
        }
    }

    fn collect(&mut self, report_data: &ReportData) -> Result<serde_json::Value, EvidenceError> {
        let mut tpm = Tpm::open(&self.tcti)?;
        let (version, hcl_bytes, hcl) = if self.config.insecure_boot_report {
            log::warn!(
                "azure.insecure_boot_report is set: sending the boot-time HCL report, not bound to this session"
            );
            let bytes = tpm.nv_read(AZURE_HCL_REPORT)?;
            let hcl = parse(&bytes)?;
            (VERSION_BOOT, bytes, hcl)
        } else {
            let user_data = report_data.padded64();
            tpm.nv_write(AZURE_USER_DATA, &user_data)?;
            let (bytes, hcl) = poll_fresh_report(
                || Ok(tpm.nv_read(AZURE_HCL_REPORT)?),
                &user_data,
                self.config.poll_timeout(),
            )?;
            (VERSION_FRESH, bytes, hcl)
        };
        if AzureKind::of(&hcl) != self.kind {
            return Err(EvidenceError::Mismatch {
                what: "HCL report",
                why: format!(
                    "holds a {:?} report, not {:?}",
                    AzureKind::of(&hcl),
                    self.kind
                ),
            });
        }
        if !hcl.var_data_hash_matches() {
            return Err(EvidenceError::Mismatch {
                what: "HCL report",
                why: "its hardware report data is not the hash of its runtime claims".into(),
            });
        }
        let (quote, ak) = tpm.quote_by(&AkSource::Persistent(AZURE_AK_HANDLE), &report_data.0)?;
        // The broker would reject a quote by another key with a generic error; say here.
        match hcl_ak_spki(&hcl) {
            Some(spki) if spki == ak.spki_der => {}
            Some(_) => {
                return Err(EvidenceError::Mismatch {
                    what: "HCL report",
                    why: format!("the AK at {AZURE_AK_HANDLE:#010x} is not its HCLAkPub"),
                })
            }
            None => {
                return Err(EvidenceError::Malformed {
                    what: "HCL report",
                    why: "its runtime claims hold no usable HCLAkPub".into(),
                })
            }
        }
        let endorsement = self.endorsement(&hcl_bytes, &hcl)?;
        encode(version, &quote, &hcl_bytes, &endorsement)
    }

    fn measure(&mut self, pcr: u32, event: &[u8]) -> Result<Recorded, EvidenceError> {
        extend_pcr(&self.tcti, pcr, event)
    }

    fn pcrs_sha256(&mut self) -> Result<Option<[[u8; 32]; 24]>, EvidenceError> {
        read_pcrs(&self.tcti)
    }
}

fn parse(bytes: &[u8]) -> Result<HclReport, EvidenceError> {
    hcl::parse_hcl_report(bytes).map_err(|e| EvidenceError::Malformed {
        what: "HCL report",
        why: format!("NV {AZURE_HCL_REPORT:#010x} holds none usable: {e}"),
    })
}

/// Whether the HCL report's `user-data` claim (hex, as the HCL writes it) is `want`.
pub fn user_data_is(report: &HclReport, want: &[u8; 64]) -> bool {
    report
        .user_data()
        .and_then(|h| hex::decode(h).ok())
        .is_some_and(|d| d == want)
}

/// Re-read the HCL report until it carries `user_data` (and its hardware report still binds
/// its claims: a read during the paravisor's rewrite may mix two reports), pausing 1 ms,
/// 2 ms, 4 ms ... up to 50 ms between reads, for at most `timeout`.
pub(crate) fn poll_fresh_report(
    mut read: impl FnMut() -> Result<Vec<u8>, EvidenceError>,
    user_data: &[u8; 64],
    timeout: Duration,
) -> Result<(Vec<u8>, HclReport), EvidenceError> {
    let start = Instant::now();
    let mut pause = FIRST_PAUSE;
    let mut reads = 0u32;
    loop {
        let bytes = read()?;
        reads += 1;
        let last = match hcl::parse_hcl_report(&bytes) {
            Ok(report) if user_data_is(&report, user_data) && report.var_data_hash_matches() => {
                log::debug!(
                    "HCL report carries our user data after {reads} reads, {:.1} ms",
                    start.elapsed().as_secs_f64() * 1e3
                );
                return Ok((bytes, report));
            }
            Ok(report) => match report.user_data() {
                Some(u) => format!("user-data {}", u.get(..16).unwrap_or(u)),
                None => "no user-data claim".to_owned(),
            },
            Err(e) => format!("unparsable: {e}"),
        };
        let elapsed = start.elapsed();
        if elapsed >= timeout {
            return Err(EvidenceError::NotFresh {
                index: AZURE_HCL_REPORT,
                waited_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
                reads,
                last,
            });
        }
        std::thread::sleep(pause.min(timeout - elapsed));
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

/// The DER SubjectPublicKeyInfo of the `HCLAkPub` JWK (RSA) in the runtime claims.
pub fn hcl_ak_spki(report: &HclReport) -> Option<Vec<u8>> {
    let jwk = report.ak_pub()?;
    if jwk.get("kty")?.as_str()? != "RSA" {
        return None;
    }
    let field = |k: &str| {
        jwk.get(k)
            .and_then(|v| v.as_str())
            .and_then(|s| URL_SAFE_LENIENT.decode(s).ok())
            .map(|b| BigUint::from_bytes_be(&b))
    };
    let key = RsaPublicKey::new(field("n")?, field("e")?).ok()?;
    Some(key.to_public_key_der().ok()?.into_vec())
}

/// The VCEK (DER) from a THIM reply: JSON with `vcekCert` (PEM) and `certificateChain`.
pub fn parse_thim_reply(reply: &[u8]) -> Result<Vec<u8>, EvidenceError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    #[derive(serde::Deserialize)]
    struct Thim {
        #[serde(rename = "vcekCert")]
        vcek_cert: String,
    }
    let thim: Thim = serde_json::from_slice(reply).map_err(|e| EvidenceError::Malformed {
        what: "IMDS THIM reply",
        why: format!("not JSON with vcekCert: {e}"),
    })?;
    let der = CertificateDer::from_pem_slice(thim.vcek_cert.as_bytes()).map_err(|e| {
        EvidenceError::Malformed {
            what: "IMDS THIM reply",
            why: format!("vcekCert is not a PEM certificate: {e}"),
        }
    })?;
    Ok(der.as_ref().to_vec())
}

/// The body of the TD quote request: `{"report": <base64url TDREPORT>}`.
pub(crate) fn td_quote_request(td_report: &[u8]) -> String {
    serde_json::json!({ "report": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(td_report) })
        .to_string()
}

/// The TD quote from an IMDS reply: `{"quote": <base64url>}`.
pub fn parse_td_quote_reply(reply: &[u8]) -> Result<Vec<u8>, EvidenceError> {
    #[derive(serde::Deserialize)]
    struct Reply {
        quote: String,
    }
    let r: Reply = serde_json::from_slice(reply).map_err(|e| EvidenceError::Malformed {
        what: "IMDS TD quote reply",
        why: format!("not JSON with a quote: {e}"),
    })?;
    let quote = URL_SAFE_LENIENT
        .decode(r.quote.trim())
        .map_err(|e| EvidenceError::Malformed {
            what: "IMDS TD quote",
            why: format!("not base64url: {e}"),
        })?;
    if quote.is_empty() {
        return Err(EvidenceError::Malformed {
            what: "IMDS TD quote",
            why: "empty".into(),
        });
    }
    Ok(quote)
}

/// The TD quote must be the quote of the HCL report's TDREPORT: same report data.
fn check_td_quote(quote: &[u8], report: &HclReport) -> Result<(), EvidenceError> {
    let parsed = crate::formats::tdx::parse_quote_prefix(quote)
        .map_err(|e| EvidenceError::Malformed {
            what: "IMDS TD quote",
            why: format!("does not parse: {e}"),
        })?
        .0;
    if &parsed.body.report_data != report.hw_report.report_data() {
        return Err(EvidenceError::Mismatch {
            what: "IMDS TD quote",
            why: "for another TDREPORT (report data differs)".into(),
        });
    }
    Ok(())
}

/// The raw RSASSA signature bytes of a marshalled `TPMT_SIGNATURE` (Trustee's Azure
/// verifiers take the bare signature, the `tpm` verifier the marshalled structure).
pub(crate) fn raw_rsassa(signature: &[u8]) -> Result<Vec<u8>, EvidenceError> {
    match parse_tpmt_signature(signature) {
        Ok(TpmtSignature::RsaSsa { signature, .. }) => Ok(signature),
        Ok(other) => Err(EvidenceError::Mismatch {
            what: "vTPM quote",
            why: format!("the AK signed with {}, not RSASSA", other.scheme()),
        }),
        Err(e) => Err(EvidenceError::Malformed {
            what: "vTPM quote signature",
            why: e.to_string(),
        }),
    }
}

/// Encode the evidence JSON (pure).
pub fn encode(
    version: u32,
    quote: &Quote,
    hcl_report: &[u8],
    endorsement: &Endorsement,
) -> Result<serde_json::Value, EvidenceError> {
    let mut v = serde_json::json!({
        "version": version,
        "tpm_quote": {
            "signature": hex::encode(raw_rsassa(&quote.signature)?),
            "message": hex::encode(&quote.message),
            "pcrs": quote.pcrs.iter().map(hex::encode).collect::<Vec<_>>(),
        },
        "hcl_report": URL_SAFE.encode(hcl_report),
    });
    let (key, value) = match endorsement {
        Endorsement::Vcek(der) => ("vcek", URL_SAFE.encode(der)),
        Endorsement::TdQuote(q) => ("td_quote", URL_SAFE.encode(q)),
    };
    if let Some(map) = v.as_object_mut() {
        map.insert(key.to_owned(), serde_json::Value::String(value));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    use test_kbs::testdata;

    #[test]
    fn real_hcl_reports_yield_their_ak() {
        // trustee's SNP set: the AK that verifies its quote (hcl-akpub.pem).
        let report =
            hcl::parse_hcl_report(&testdata("azure/trustee-az-snp/hcl-report.bin")).unwrap();
        let spki = hcl_ak_spki(&report).unwrap();
        let pem = String::from_utf8(testdata("azure/trustee-az-snp/hcl-akpub.pem")).unwrap();
        use rsa::pkcs8::DecodePublicKey;
        let want = RsaPublicKey::from_public_key_pem(&pem).unwrap();
        assert_eq!(spki, want.to_public_key_der().unwrap().into_vec());
        assert_eq!(AzureKind::of(&report), AzureKind::Snp);
        let tdx = hcl::parse_hcl_report(&testdata("azure/trustee-az-tdx/hcl-report.bin")).unwrap();
        assert_eq!(AzureKind::of(&tdx), AzureKind::Tdx);
        assert!(hcl_ak_spki(&tdx).is_some());
    }

    #[test]
    fn user_data_of_the_real_v2_evidence_is_its_report_data() {
        let ev: serde_json::Value =
            serde_json::from_slice(&testdata("azure/trustee-az-snp/evidence-v2.json")).unwrap();
        let hcl_bytes = URL_SAFE_LENIENT
            .decode(ev["hcl_report"].as_str().unwrap())
            .unwrap();
        let report = hcl::parse_hcl_report(&hcl_bytes).unwrap();
        let mut want = [0u8; 64];
        want[..48].copy_from_slice(
            &hex::decode("982f5c6e45df0ed3f10b6f60b02f0c8390e281300f3805e2279c16168cd6ae9aa398f647caa2338748cd0fd9f5f819ef").unwrap(),
        );
        assert!(user_data_is(&report, &want));
        want[0] ^= 1;
        assert!(!user_data_is(&report, &want));
        // The padded base64url of trustee's sample is what we produce.
        assert_eq!(
            URL_SAFE.encode(&hcl_bytes),
            ev["hcl_report"].as_str().unwrap()
        );
    }

    #[test]
    fn polling_returns_as_soon_as_the_report_is_fresh_and_gives_up_at_the_timeout() {
        let stale = testdata("azure/trustee-az-snp/hcl-report.bin");
        let ev: serde_json::Value =
            serde_json::from_slice(&testdata("azure/trustee-az-snp/evidence-v2.json")).unwrap();
        let fresh = URL_SAFE_LENIENT
            .decode(ev["hcl_report"].as_str().unwrap())
            .unwrap();
        let mut want = [0u8; 64];
        want[..48].copy_from_slice(&hex::decode("982f5c6e45df0ed3f10b6f60b02f0c8390e281300f3805e2279c16168cd6ae9aa398f647caa2338748cd0fd9f5f819ef").unwrap());

        // Fresh on the fourth read: returns then, after a few ms, not seconds.
        let mut n = 0;
        let start = Instant::now();
        let (bytes, _) = poll_fresh_report(
            || {
                n += 1;
                Ok(if n < 4 { stale.clone() } else { fresh.clone() })
            },
            &want,
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(bytes, fresh);
        assert_eq!(n, 4);
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{:?}",
            start.elapsed()
        );

        // Never fresh: a typed error after the timeout, naming what was seen.
        let start = Instant::now();
        let e =
            poll_fresh_report(|| Ok(stale.clone()), &want, Duration::from_millis(120)).unwrap_err();
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(120) && waited < Duration::from_secs(2));
        assert!(matches!(e, EvidenceError::NotFresh { .. }), "{e}");
        assert!(e.to_string().contains("0x01400001"), "{e}");
    }

    #[test]
    fn imds_replies_are_checked() {
        // A THIM-shaped reply around trustee's VCEK (the first of the PEM bundle).
        let pem = String::from_utf8(testdata("azure/trustee-az-snp/vcek.pem")).unwrap();
        let reply = serde_json::json!({"vcekCert": pem, "certificateChain": "", "tcbm": "x"});
        let der = parse_thim_reply(reply.to_string().as_bytes()).unwrap();
        let b64: String = pem
            .lines()
            .skip(1)
            .take_while(|l| !l.starts_with("-----END"))
            .collect();
        use base64::engine::general_purpose::STANDARD;
        assert_eq!(der, STANDARD.decode(b64).unwrap());
        assert!(parse_thim_reply(b"{}").is_err());
        assert!(parse_thim_reply(br#"{"vcekCert":"not pem"}"#).is_err());
        assert!(parse_td_quote_reply(br#"{"quote":"AQID"}"#).unwrap() == [1, 2, 3]);
        assert!(parse_td_quote_reply(br#"{"quote":"AQI="}"#).unwrap() == [1, 2]);
        assert!(parse_td_quote_reply(br#"{"quote":""}"#).is_err());
        assert!(parse_td_quote_reply(b"[]").is_err());
        let body: serde_json::Value = serde_json::from_str(&td_quote_request(&[0xfb; 4])).unwrap();
        assert_eq!(body["report"], "-_v7-w");
    }
}
