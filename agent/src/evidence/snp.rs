//! AMD SEV-SNP evidence in the shape Trustee's `snp` verifier deserializes:
//! `{"attestation_report": <sev 7.1 AttestationReport serde form>, "cert_chain": [...] | null}`.
//!
//! The report comes from configfs-tsm (Linux >= 6.7) or, on older kernels, from the
//! `/dev/sev-guest` extended-report ioctl through the `sev` crate. Its REPORT_DATA is the
//! 48-byte binding digest zero-padded to 64 bytes.

use std::path::PathBuf;

use kbs_types::Tee;
use sev::firmware::guest::AttestationReport;
use sev::firmware::host::CertTableEntry;
use sev::parser::ByteParser;

use super::{EvidenceError, EvidenceSource, ReportData};
use crate::config::Platform;
use crate::hw::tsm;

/// Where SNP reports come from.
#[derive(Debug, Clone)]
pub enum SnpBackend {
    /// configfs-tsm, at this report directory.
    Tsm(PathBuf),
    /// The `/dev/sev-guest` ioctl.
    SevGuest,
}

/// Evidence from an SEV-SNP guest.
pub struct SnpSource {
    backend: SnpBackend,
    vmpl: u32,
}

impl SnpSource {
    /// A source using `backend` at `vmpl`.
    pub fn new(backend: SnpBackend, vmpl: u32) -> SnpSource {
        SnpSource { backend, vmpl }
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
                    Some(mut aux) => Some(
                        CertTableEntry::vec_bytes_to_cert_table(&mut aux).map_err(|e| {
                            EvidenceError::Tee(format!("SNP certificate table (auxblob): {e}"))
                        })?,
                    ),
                    None => None,
                };
                Ok((r.outblob, certs))
            }
            SnpBackend::SevGuest => {
                let mut fw = sev::firmware::guest::Firmware::open()
                    .map_err(|e| EvidenceError::Tee(format!("cannot open /dev/sev-guest: {e}")))?;
                fw.get_ext_report(None, Some(*data), Some(self.vmpl))
                    .map_err(|e| EvidenceError::Tee(format!("SNP extended report: {e}")))
            }
        }
    }
}

/// Encode a raw report and certificate table as Trustee's `snp` evidence, after checking that
/// the report carries `data` (a report for other data would be rejected by the broker with a
/// generic error; better to say here what went wrong).
pub fn encode(
    report: &[u8],
    certs: Option<Vec<CertTableEntry>>,
    data: &[u8; 64],
) -> Result<serde_json::Value, EvidenceError> {
    let parsed = AttestationReport::from_bytes(report)
        .map_err(|e| EvidenceError::Tee(format!("SNP report does not parse: {e}")))?;
    if parsed.report_data.as_slice() != data.as_slice() {
        return Err(EvidenceError::Tee(
            "SNP report carries other REPORT_DATA than requested".into(),
        ));
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
        encode(&report, certs, &data)
    }

    fn measure_release(&mut self, _pcr: u32, _event: &[u8]) -> Result<(), EvidenceError> {
        // SNP has no runtime-extendable measurement register; with a vTPM the composite
        // source extends its PCR instead.
        log::warn!("SNP without a TPM: no register to record the post-release measurement");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn testdata(path: &str) -> Vec<u8> {
        std::fs::read(format!(
            "{}/../../shared/testdata/{path}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    }

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

    #[test]
    fn garbage_report_is_a_typed_error() {
        assert!(encode(&[0u8; 10], None, &[0u8; 64]).is_err());
    }
}
