//! AMD SEV-SNP evidence in the shape Trustee's `snp` verifier deserializes:
//! `{"attestation_report": <sev 7.1 AttestationReport serde form>, "cert_chain": [...] | null}`.
//!
//! The report comes from configfs-tsm (Linux >= 6.7) or, on older kernels, from the
//! `/dev/sev-guest` extended-report ioctl through the `sev` crate. Its REPORT_DATA is the
//! 48-byte binding digest zero-padded to 64 bytes.

use std::path::{Path, PathBuf};

use kbs_types::Tee;
use sev::firmware::guest::AttestationReport;
use sev::firmware::host::{CertTableEntry, CertType};
use sev::parser::ByteParser;

use super::{EvidenceError, EvidenceSource, Recorded, ReportData};
use crate::config::Platform;
use crate::hw::tsm;

/// Where SNP reports come from.
#[derive(Debug, Clone)]
pub(crate) enum SnpBackend {
    /// configfs-tsm, at this report directory.
    Tsm(PathBuf),
    /// The `/dev/sev-guest` ioctl, with the device detection found (under `--root`).
    SevGuest(PathBuf),
}

/// The device the sev crate's guest firmware handle opens.
const SEV_GUEST: &str = "/dev/sev-guest";

/// Evidence from an SEV-SNP guest.
pub(crate) struct SnpSource {
    backend: SnpBackend,
    vmpl: u32,
    /// HOST_DATA of the last report produced.
    host_data: Option<[u8; 32]>,
}

impl SnpSource {
    /// A source using `backend` at `vmpl`.
    pub(crate) fn new(backend: SnpBackend, vmpl: u32) -> SnpSource {
        SnpSource {
            backend,
            vmpl,
            host_data: None,
        }
    }

    fn raw(
        &mut self,
        data: &[u8; 64],
    ) -> Result<(Vec<u8>, Option<Vec<CertTableEntry>>), EvidenceError> {
        match &self.backend {
            SnpBackend::Tsm(root) => {
                // privlevel is only written when it is not the default, so a kernel without
                // the attribute still serves VMPL 0.
                let level = (self.vmpl != 0).then_some(self.vmpl);
                let r = tsm::report(root, "sev_guest", data, level)?;
                let certs = match r.auxblob {
                    Some(aux) => Some(parse_cert_table(&aux)?),
                    None => None,
                };
                Ok((r.outblob, certs))
            }
            SnpBackend::SevGuest(device) => {
                // The sev crate opens /dev/sev-guest by that name only: a device found
                // elsewhere (a test root, a configured path) cannot be reached through it.
                if device != Path::new(SEV_GUEST) {
                    return Err(EvidenceError::Unavailable(format!(
                        "{}: the sev-guest ioctl (kernels before 6.7) goes through {SEV_GUEST} only; use configfs-tsm",
                        device.display()
                    )));
                }
                let mut fw = sev::firmware::guest::Firmware::open().map_err(|source| {
                    EvidenceError::Device {
                        action: "open",
                        path: PathBuf::from(SEV_GUEST),
                        source,
                    }
                })?;
                // The plain report, not the extended one: the sev crate parses the host's
                // certificate table of an extended report without bounds checks, and the host
                // is untrusted. Without a cert_chain the broker uses its configured VCEK or
                // fetches it from AMD's KDS by chip id and TCB.
                let report = fw
                    .get_report(None, Some(*data), Some(self.vmpl))
                    .map_err(|e| EvidenceError::Unavailable(format!("SNP report: {e}")))?;
                Ok((report, None))
            }
        }
    }
}

/// Parse the host's certificate table (configfs-tsm `auxblob`): 24-byte entries
/// `{GUID, offset u32 LE, length u32 LE}` ended by an all-zero entry, offsets from the start of
/// the table. The host is untrusted: every entry is bounds-checked (the sev crate's own parser
/// follows the offsets unchecked).
pub fn parse_cert_table(table: &[u8]) -> Result<Vec<CertTableEntry>, EvidenceError> {
    let bad = |why: String| EvidenceError::Malformed {
        what: "SNP certificate table (auxblob)",
        why,
    };
    let mut entries = Vec::new();
    for raw in table.chunks_exact(24) {
        if raw.iter().all(|b| *b == 0) {
            return Ok(entries);
        }
        let field = |at: usize| -> usize {
            let mut b = [0u8; 4];
            b.copy_from_slice(raw.get(at..at + 4).unwrap_or(&[0; 4]));
            u32::from_le_bytes(b) as usize
        };
        let cert_type = CertType::from_bytes(raw.get(..16).unwrap_or_default())
            .map_err(|e| bad(e.to_string()))?;
        let (offset, length) = (field(16), field(20));
        let data = offset
            .checked_add(length)
            .and_then(|end| table.get(offset..end))
            .ok_or_else(|| {
                bad(format!(
                    "{cert_type:?} at {offset}+{length} is outside the {} bytes",
                    table.len()
                ))
            })?;
        entries.push(CertTableEntry::new(cert_type, data.to_vec()));
        if entries.len() > 64 {
            return Err(bad("more than 64 entries".into()));
        }
    }
    Err(bad("no terminating all-zero entry".into()))
}

/// Encode a raw report and certificate table as Trustee's `snp` evidence, after checking that
/// the report carries `data` (a report for other data would be rejected by the broker with a
/// generic error; better to say here what went wrong).
pub fn encode(
    report: &[u8],
    certs: Option<Vec<CertTableEntry>>,
    data: &[u8; 64],
) -> Result<serde_json::Value, EvidenceError> {
    let parsed = AttestationReport::from_bytes(report).map_err(|e| EvidenceError::Malformed {
        what: "SNP report",
        why: format!("does not parse: {e}"),
    })?;
    if parsed.report_data.as_slice() != data.as_slice() {
        return Err(EvidenceError::Mismatch {
            what: "SNP report",
            why: "carries other REPORT_DATA than requested".into(),
        });
    }
    Ok(serde_json::json!({
        "attestation_report": parsed,
        "cert_chain": certs,
    }))
}

impl EvidenceSource for SnpSource {
    fn platform(&self) -> Platform {
        Platform::Snp
    }

    fn tee(&self) -> Tee {
        Tee::Snp
    }

    fn collect(&mut self, report_data: &ReportData) -> Result<serde_json::Value, EvidenceError> {
        let data = report_data.padded64();
        let (report, certs) = self.raw(&data)?;
        self.host_data = crate::formats::snp::parse_report(&report)
            .ok()
            .map(|r| r.host_data);
        encode(&report, certs, &data)
    }

    fn launch_init_data(&self) -> Option<super::LaunchInitData> {
        self.host_data.map(super::LaunchInitData::SnpHostData)
    }

    fn measure(&mut self, _pcr: u32, _event: &[u8]) -> Result<Recorded, EvidenceError> {
        // SNP has no runtime-extendable measurement register; with a vTPM the composite
        // source extends its PCR instead.
        Ok(Recorded::Unavailable(
            "SNP without a TPM has no runtime measurement register".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use test_kbs::testdata;

    #[test]
    fn real_reports_round_trip_through_the_serde_form() {
        for path in [
            "snp/milan-virtee-sev/report_milan.bin",
            "snp/milan-trustee/test-report.bin",
            "snp/genoa-azure/report_genoa.bin",
        ] {
            let bytes = testdata(path);
            let parsed = AttestationReport::from_bytes(&bytes).unwrap();
            let data: [u8; 64] = parsed.report_data.as_slice().try_into().unwrap();
            let v = encode(&bytes, None, &data).unwrap();
            let back: AttestationReport =
                serde_json::from_value(v["attestation_report"].clone()).unwrap();
            assert_eq!(back, parsed, "{path}");
            assert!(v["cert_chain"].is_null());
            assert!(
                encode(&bytes, None, &[0u8; 64]).is_err(),
                "{path}: other report data"
            );
        }
    }

    /// Detection found the sev-guest device under the test root (`--root`); the sev crate can
    /// open only the host's `/dev/sev-guest`, so the source says so instead of asking the
    /// host's device for a report.
    #[test]
    fn a_sev_guest_device_under_another_root_is_not_the_hosts() {
        let dir = tempfile::tempdir().unwrap();
        let device = dir.path().join("dev/sev-guest");
        let mut source = SnpSource::new(SnpBackend::SevGuest(device.clone()), 0);
        let e = source.raw(&[0; 64]).unwrap_err().to_string();
        assert!(
            e.contains(&device.display().to_string()) && e.contains("/dev/sev-guest"),
            "{e}"
        );
    }

    #[test]
    fn cert_table_is_bounds_checked() {
        let vcek = testdata("snp/milan-virtee-sev/vcek_milan.der");
        let table = CertTableEntry::cert_table_to_vec_bytes(&[CertTableEntry::new(
            CertType::VCEK,
            vcek.clone(),
        )])
        .unwrap();
        let parsed = parse_cert_table(&table).unwrap();
        assert_eq!(parsed, vec![CertTableEntry::new(CertType::VCEK, vcek)]);
        // An offset past the end, a missing terminator, garbage: typed errors, no reads out of
        // bounds.
        let mut past = table.clone();
        past[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse_cert_table(&past).is_err());
        assert!(parse_cert_table(&table[..24]).is_err());
        assert!(parse_cert_table(&[0xAB; 100]).is_err());
        assert_eq!(parse_cert_table(&[0u8; 24]).unwrap(), vec![]);
    }

    #[test]
    fn garbage_report_is_a_typed_error() {
        assert!(encode(&[0u8; 10], None, &[0u8; 64]).is_err());
    }
}
