//! Intel TDX evidence in the shape Trustee's `tdx` verifier reads:
//! `{"cc_eventlog": <std base64 of the trimmed CCEL> | null, "quote": <std base64>}`.
//!
//! The quote comes from configfs-tsm (the host's quote generation service signs it); its
//! REPORTDATA is the 48-byte binding digest zero-padded to 64 bytes. The CCEL is trimmed the
//! way Trustee's guest side does it, so the broker replays exactly the same bytes.

use std::path::PathBuf;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use kbs_types::Tee;

use super::{EvidenceError, EvidenceSource, Recorded, ReportData};
use crate::config::Platform;
use crate::hw::tsm;

/// Appended after the trimmed log, as Trustee's guest side does.
const END_FLAG: [u8; 8] = [0xFF; 8];

/// Cut a CCEL area after its last event, where [`crate::formats::eventlog::parse_ccel`] says
/// the log ends (the one end rule `inspect` and the replay use too); a malformed log is an
/// error.
pub(crate) fn trim_ccel(ccel: &[u8]) -> Result<&[u8], EvidenceError> {
    let parsed =
        crate::formats::eventlog::parse_ccel(ccel).map_err(|e| EvidenceError::Malformed {
            what: "CCEL",
            why: e.to_string(),
        })?;
    ccel.get(..parsed.log_end)
        .ok_or_else(|| EvidenceError::Malformed {
            what: "CCEL",
            why: "ends past its data".into(),
        })
}

/// Encode a quote and a raw CCEL as Trustee's `tdx` evidence, after checking the quote
/// carries `data`.
pub fn encode(
    quote: &[u8],
    ccel: Option<&[u8]>,
    data: &[u8; 64],
) -> Result<serde_json::Value, EvidenceError> {
    // The quote parser locates REPORTDATA (v4 and v5 bodies): one place computes the offset.
    let (parsed, _) =
        crate::formats::tdx::parse_quote_prefix(quote).map_err(|e| EvidenceError::Malformed {
            what: "TDX quote",
            why: e.to_string(),
        })?;
    if parsed.body.report_data != *data {
        return Err(EvidenceError::Mismatch {
            what: "TDX quote",
            why: "carries other REPORTDATA than requested".into(),
        });
    }
    let eventlog = match ccel {
        Some(raw) => {
            let mut log = trim_ccel(raw)?.to_vec();
            log.extend_from_slice(&END_FLAG);
            Some(STANDARD.encode(log))
        }
        None => None,
    };
    Ok(serde_json::json!({
        "cc_eventlog": eventlog,
        "quote": STANDARD.encode(quote),
    }))
}

/// Evidence from a TDX guest.
pub(crate) struct TdxSource {
    tsm_root: PathBuf,
    ccel: PathBuf,
    rtmr: PathBuf,
    /// MRCONFIGID of the last quote produced.
    mr_config_id: Option<[u8; 48]>,
}

impl TdxSource {
    /// A source using the configfs-tsm tree at `tsm_root`, the CCEL at `ccel` and the RTMR
    /// attribute at `rtmr`.
    pub(crate) fn new(tsm_root: PathBuf, ccel: PathBuf, rtmr: PathBuf) -> TdxSource {
        TdxSource {
            tsm_root,
            ccel,
            rtmr,
            mr_config_id: None,
        }
    }
}

impl EvidenceSource for TdxSource {
    fn platform(&self) -> Platform {
        Platform::Tdx
    }

    fn tee(&self) -> Tee {
        Tee::Tdx
    }

    fn collect(&mut self, report_data: &ReportData) -> Result<serde_json::Value, EvidenceError> {
        let data = report_data.padded64();
        let r = tsm::report(&self.tsm_root, "tdx_guest", &data, None)?;
        let ccel = crate::hw::fw::read_log(&self.ccel).map_err(|source| EvidenceError::Device {
            action: "read",
            path: self.ccel.clone(),
            source,
        })?;
        self.mr_config_id = crate::formats::tdx::parse_quote(&r.outblob)
            .ok()
            .map(|q| q.body.mr_config_id);
        encode(&r.outblob, ccel.as_deref(), &data)
    }

    fn launch_init_data(&self) -> Option<super::LaunchInitData> {
        self.mr_config_id.map(super::LaunchInitData::TdxMrConfigId)
    }

    fn measure(&mut self, _pcr: u32, event: &[u8]) -> Result<Recorded, EvidenceError> {
        extend_rtmr(&self.rtmr, event)
    }
}

/// Extend the RTMR behind `attribute` with SHA-384(`event`): the kernel's attribute takes the
/// 48-byte digest and extends. Without the attribute (kernels before 6.16) the measurement
/// cannot be recorded; that is said, not hidden (with a vTPM the PCR is extended too).
pub(crate) fn extend_rtmr(
    attribute: &std::path::Path,
    event: &[u8],
) -> Result<Recorded, EvidenceError> {
    use sha2::{Digest, Sha384};
    if !attribute.exists() {
        return Ok(Recorded::Unavailable(format!(
            "TDX without {} (Linux >= 6.16) cannot extend RTMR 3",
            attribute.display()
        )));
    }
    let digest: [u8; 48] = Sha384::digest(event).into();
    crate::hw::fw::extend(attribute, &digest).map_err(|source| EvidenceError::Device {
        action: "extend RTMR 3 through",
        path: attribute.to_owned(),
        source,
    })?;
    Ok(Recorded::Registers("RTMR 3 (sha384)".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    use test_kbs::testdata;

    #[test]
    fn real_ccels_trim_to_their_events() {
        let dir = format!(
            "{}/../../shared/testdata/tdx/ccel",
            env!("CARGO_MANIFEST_DIR")
        );
        let mut n = 0;
        for entry in walk(std::path::Path::new(&dir)) {
            let raw = std::fs::read(&entry).unwrap();
            let trimmed = trim_ccel(&raw).unwrap_or_else(|e| panic!("{}: {e}", entry.display()));
            assert!(
                trimmed.len() > 28 && trimmed.len() <= raw.len(),
                "{}",
                entry.display()
            );
            n += 1;
        }
        assert!(n > 0);
    }

    fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else if p.extension().is_none() || p.extension().is_some_and(|x| x == "bin") {
                out.push(p);
            }
        }
        out
    }

    #[test]
    fn rtmr_extension_writes_the_sha384_of_the_event() {
        use sha2::{Digest, Sha384};
        let dir = tempfile::tempdir().unwrap();
        let attr = dir.path().join("rtmr3:sha384");
        // Absent attribute: not an error (older kernels), nothing written.
        extend_rtmr(&attr, b"e").unwrap();
        assert!(!attr.exists());
        std::fs::write(&attr, b"").unwrap();
        extend_rtmr(&attr, b"attest-unlock:secrets-released:v1").unwrap();
        assert_eq!(
            std::fs::read(&attr).unwrap(),
            Sha384::digest(b"attest-unlock:secrets-released:v1").to_vec()
        );
    }

    /// The evidence is cut where the parser (`inspect`, the broker-side replay) says the log
    /// ends: one end rule. A record header with the event type 0xFFFFFFFF ends the log.
    #[test]
    fn the_ccel_is_cut_where_the_parser_says_it_ends() {
        let dir = format!(
            "{}/../../shared/testdata/tdx/ccel",
            env!("CARGO_MANIFEST_DIR")
        );
        for entry in walk(std::path::Path::new(&dir)) {
            let raw = std::fs::read(&entry).unwrap();
            let end = crate::formats::eventlog::parse_ccel(&raw).unwrap().log_end;
            assert_eq!(trim_ccel(&raw).unwrap().len(), end, "{}", entry.display());
            let mut odd_end = raw[..end].to_vec();
            odd_end.extend_from_slice(&[0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
            odd_end.resize(end + 64, 0xff);
            assert_eq!(
                trim_ccel(&odd_end).unwrap().len(),
                end,
                "{}",
                entry.display()
            );
        }
    }

    #[test]
    fn malformed_ccel_is_typed() {
        assert!(trim_ccel(&[]).is_err());
        assert!(trim_ccel(&[0u8; 20]).is_err());
        let mut no_marker = vec![0u8; 32];
        no_marker[4] = 1; // not EV_NO_ACTION; then 4 bytes that are neither marker...
        no_marker.extend_from_slice(&[1, 0, 0, 0, 1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
        assert!(trim_ccel(&no_marker).is_err());
    }

    #[test]
    fn quote_report_data_is_checked() {
        for path in [
            "tdx/trustee/tdx_quote_4.dat",
            "tdx/trustee/tdx_quote_5.dat",
            "tdx/dcap-qvl/tdx_quote",
            "tdx/go-tdx-guest/tdx_prod_quote_SPR_E4.dat",
        ] {
            let quote = testdata(path);
            let rd = crate::formats::tdx::parse_quote_prefix(&quote)
                .unwrap()
                .0
                .body
                .report_data;
            assert!(encode(&quote, None, &rd).is_ok(), "{path}");
            assert!(encode(&quote, None, &[0u8; 64]).is_err(), "{path}");
        }
    }
}
