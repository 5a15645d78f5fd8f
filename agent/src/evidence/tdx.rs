//! Intel TDX evidence in the shape Trustee's `tdx` verifier reads:
//! `{"cc_eventlog": <std base64 of the trimmed CCEL> | null, "quote": <std base64>}`.
//!
//! The quote is signed by the host's quote generation service (QGS). It is asked directly over
//! vsock when detection found the TDX guest device ([`crate::hw::qgs`]: milliseconds), else
//! through configfs-tsm, whose driver polls for it once a second; configfs-tsm is also the
//! fallback when the direct path fails. Its REPORTDATA is the 48-byte binding digest
//! zero-padded to 64 bytes. The CCEL is trimmed the way Trustee's guest side does it, so the
//! broker replays exactly the same bytes.

use std::path::PathBuf;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use kbs_types::Tee;

use super::{EvidenceError, EvidenceSource, Recorded, ReportData};
use crate::config::Platform;
use crate::hw::qgs::QgsClient;
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
    /// The direct path to the quote generation service, when detection chose it.
    qgs: Option<QgsClient>,
    /// Why the direct path could not be prepared for this session (its quote then comes
    /// from configfs-tsm).
    qgs_failed: Option<String>,
}

impl TdxSource {
    /// A source using the configfs-tsm tree at `tsm_root`, the CCEL at `ccel` and the RTMR
    /// attribute at `rtmr`; with `qgs`, quotes are asked of the service directly first.
    pub(crate) fn new(
        tsm_root: PathBuf,
        ccel: PathBuf,
        rtmr: PathBuf,
        qgs: Option<QgsClient>,
    ) -> TdxSource {
        TdxSource {
            tsm_root,
            ccel,
            rtmr,
            mr_config_id: None,
            qgs,
            qgs_failed: None,
        }
    }

    /// A quote over `data`: from the service directly when that path is chosen and works,
    /// else from configfs-tsm. A failure of the direct path is logged and said again if the
    /// fallback fails too.
    fn quote(&mut self, data: &[u8; 64]) -> Result<Vec<u8>, EvidenceError> {
        let direct = match (&mut self.qgs, self.qgs_failed.take()) {
            (Some(_), Some(why)) => Some(why),
            (Some(qgs), None) => match qgs.quote(data) {
                Ok(quote) => {
                    log::debug!("TDX quote from {}", qgs.what());
                    return Ok(quote);
                }
                Err(e) => Some(e.to_string()),
            },
            (None, _) => None,
        };
        if let Some(why) = &direct {
            log::warn!("TDX quote: {why}; asking configfs-tsm instead");
        }
        match tsm::report(&self.tsm_root, "tdx_guest", data, None) {
            Ok(r) => Ok(r.outblob),
            Err(e) => Err(match direct {
                Some(why) => EvidenceError::Unavailable(format!("TDX quote: {why}; and then {e}")),
                None => e.into(),
            }),
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

    fn prepare(&mut self) -> Result<(), EvidenceError> {
        // The connection is opened while the broker's challenge is on its way; a failure
        // only sends this session's quote to configfs-tsm.
        if let Some(qgs) = &mut self.qgs {
            self.qgs_failed = qgs.connect().err().map(|e| e.to_string());
        }
        Ok(())
    }

    fn unprepare(&mut self) {
        if let Some(qgs) = &mut self.qgs {
            qgs.disconnect();
        }
        self.qgs_failed = None;
    }

    fn collect(&mut self, report_data: &ReportData) -> Result<serde_json::Value, EvidenceError> {
        let data = report_data.padded64();
        let quote = self.quote(&data)?;
        let ccel = crate::hw::fw::read_log(&self.ccel).map_err(|source| EvidenceError::Device {
            action: "read",
            path: self.ccel.clone(),
            source,
        })?;
        self.mr_config_id = crate::formats::tdx::parse_quote(&quote)
            .ok()
            .map(|q| q.body.mr_config_id);
        encode(&quote, ccel.as_deref(), &data)
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

    use crate::hw::qgs::QgsError;
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

    /// How the fake quote generation service behaves on a connection.
    #[derive(Clone, Copy, Debug)]
    enum Qgs {
        /// Answers with a quote of the TDREPORT it was sent.
        Answers,
        /// Answers with this error code.
        Refuses(u32),
        /// Answers with a quote over other report data.
        OtherReportData,
        /// Reads the request and says nothing.
        Silent,
        /// Sends its answer one byte every 20 ms.
        Trickles,
        /// Closes the connection after the length prefix.
        HangsUp,
        /// Cannot be connected to.
        Absent,
    }

    /// The fake service's counters.
    #[derive(Default)]
    struct Seen {
        connects: usize,
        requests: usize,
    }

    /// A client of a fake service behaving as `qgs` over a socket pair, with TDREPORTs of
    /// the simulated TDX module and quotes by `signer`: only the device and the vsock are
    /// replaced, the framing and checks are the agent's.
    fn client(
        signer: std::sync::Arc<test_kbs::sim::TdxSigner>,
        qgs: Qgs,
        seen: std::sync::Arc<std::sync::Mutex<Seen>>,
    ) -> QgsClient {
        use std::io::{Read, Write};
        use test_kbs::sim::TdxQuoteParams;
        use test_kbs::sim_cloud::{qgs_answer, td_report};
        let connect = move || -> Result<Box<dyn crate::hw::qgs::Stream>, QgsError> {
            seen.lock().unwrap().connects += 1;
            if let Qgs::Absent = qgs {
                return Err(QgsError::Io {
                    action: "connect to",
                    what: "the fake".into(),
                    source: std::io::ErrorKind::ConnectionRefused.into(),
                });
            }
            let (ours, mut theirs) = std::os::unix::net::UnixStream::pair().unwrap();
            // As `connect_vsock` bounds each read.
            ours.set_read_timeout(Some(std::time::Duration::from_millis(300)))
                .unwrap();
            let signer = signer.clone();
            let seen = seen.clone();
            std::thread::spawn(move || {
                let mut prefix = [0u8; 4];
                if theirs.read_exact(&mut prefix).is_err() {
                    return; // connected ahead, then dropped
                }
                let mut request = prefix.to_vec();
                request.resize(4 + u32::from_be_bytes(prefix) as usize, 0);
                theirs.read_exact(&mut request[4..]).unwrap();
                seen.lock().unwrap().requests += 1;
                let answer = match qgs {
                    Qgs::Refuses(code) => qgs_answer(&signer, &request, code),
                    Qgs::OtherReportData => {
                        request[4 + 24 + 128] ^= 1; // REPORTDATA[0] of the TDREPORT
                        qgs_answer(&signer, &request, 0)
                    }
                    _ => qgs_answer(&signer, &request, 0),
                }
                .unwrap();
                match qgs {
                    Qgs::Silent => std::thread::sleep(std::time::Duration::from_secs(2)),
                    Qgs::Trickles => {
                        for b in answer {
                            if theirs.write_all(&[b]).is_err() {
                                return;
                            }
                            std::thread::sleep(std::time::Duration::from_millis(20));
                        }
                    }
                    Qgs::HangsUp => {
                        let _ = theirs.write_all(&answer[..4]);
                    }
                    _ => theirs.write_all(&answer).unwrap(),
                }
            });
            Ok(Box::new(ours))
        };
        QgsClient::new(
            "the fake QGS".into(),
            Box::new(connect),
            Box::new(|data| Ok(td_report(&TdxQuoteParams::default(), data))),
            std::time::Duration::from_millis(500),
        )
    }

    fn source(qgs: Qgs) -> (TdxSource, std::sync::Arc<std::sync::Mutex<Seen>>, Vec<u8>) {
        let signer = test_kbs::sim::TdxSigner::new().unwrap();
        let root = signer.root_der().to_vec();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Seen::default()));
        let qgs = client(std::sync::Arc::new(signer), qgs, seen.clone());
        let source = TdxSource::new(
            "/nonexistent/tsm".into(),
            "/nonexistent/ccel".into(),
            "/nonexistent/rtmr".into(),
            Some(qgs),
        );
        (source, seen, root)
    }

    fn report_data() -> ReportData {
        ReportData([0x3c; 48])
    }

    /// The direct path: the connection is opened in `prepare` (while `auth` runs), the
    /// quote is the service's over our REPORTDATA, and it verifies to the platform's root.
    #[test]
    fn the_quote_comes_from_the_service_and_verifies() {
        let (mut source, seen, root) = source(Qgs::Answers);
        source.prepare().unwrap();
        assert_eq!(seen.lock().unwrap().connects, 1);
        let rd = report_data();
        let evidence = source.collect(&rd).unwrap();
        source.unprepare();
        let seen = seen.lock().unwrap();
        assert_eq!((seen.connects, seen.requests), (1, 1));
        let quote = STANDARD
            .decode(evidence["quote"].as_str().unwrap())
            .unwrap();
        let roots = [attest_verify::x509::from_der(&root).unwrap()];
        let verified =
            attest_verify::tdx::verify_quote(&quote, &roots, std::time::SystemTime::now()).unwrap();
        assert_eq!(verified.body.report_data, rd.padded64());
        assert_eq!(
            source.launch_init_data(),
            Some(super::super::LaunchInitData::TdxMrConfigId([0; 48]))
        );
    }

    /// Whatever the service does wrong, the quote is then asked of configfs-tsm (absent
    /// here), and the error names both: no crash, no hang past the timeout.
    #[test]
    fn a_failing_service_falls_back_to_configfs_tsm() {
        for (qgs, says) in [
            (Qgs::Refuses(0x0001_2000), "answered error 0x00012000"),
            (Qgs::OtherReportData, "other REPORTDATA than asked"),
            (
                Qgs::Silent,
                "cannot read the reply length from the fake QGS",
            ),
            (Qgs::Trickles, "the reply took too long"),
            (Qgs::HangsUp, "the connection ended after 0 of"),
            (Qgs::Absent, "cannot connect to the fake"),
        ] {
            let (mut source, _, _) = source(qgs);
            let start = std::time::Instant::now();
            let e = source.collect(&report_data()).unwrap_err().to_string();
            assert!(
                start.elapsed() < std::time::Duration::from_secs(2),
                "{qgs:?}"
            );
            assert!(e.contains(says), "{qgs:?}: {e}");
            assert!(
                e.contains("configfs-tsm is not available at /nonexistent/tsm"),
                "{qgs:?}: {e}"
            );
        }
    }

    /// A connection that cannot be opened in `prepare` sends this session's quote straight
    /// to configfs-tsm (no second connect); the next session tries the service again.
    #[test]
    fn a_service_not_reached_in_prepare_is_not_asked_again_this_session() {
        let (mut source, seen, _) = source(Qgs::Absent);
        source.prepare().unwrap();
        let e = source.collect(&report_data()).unwrap_err().to_string();
        assert!(e.contains("cannot connect to the fake"), "{e}");
        assert_eq!(seen.lock().unwrap().connects, 1);
        source.unprepare();
        source.prepare().unwrap();
        assert_eq!(seen.lock().unwrap().connects, 2);
    }
}
