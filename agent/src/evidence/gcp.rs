//! Google Cloud SEV-ES and Shielded VMs (`gcp-vtpm`): no hardware report, but a vTPM whose
//! attestation key Google certifies.
//!
//! GCE stores the AK's creation template (a marshalled `TPMT_PUBLIC`) and the AK's X.509
//! certificate in vTPM NV: RSA at 0x01c10001 / 0x01c10000, ECC at 0x01c10003 / 0x01c10002.
//! Creating a primary key in the endorsement hierarchy from that template yields exactly the
//! key the certificate names (same TPM, same seed, same template), as go-tpm-tools does. The
//! evidence is Trustee's `tpm` shape with that key as `ak_public`, plus `ak_cert` (standard
//! base64 DER) so a broker can check it chains to Google's EK/AK CA instead of trusting the
//! key by pinning; Trustee's `tpm` verifier ignores the extra member. Only the RSA AK is used:
//! Trustee's verifier accepts RSASSA quotes only.

use std::path::PathBuf;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use kbs_types::Tee;

use super::tpm::TpmEvidence;
use super::tpm::{extend_pcr, read_pcrs};
use super::{EvidenceError, EvidenceSource, Recorded, ReportData};
use crate::config::{Platform, Tpm as TpmConfig};
use crate::hw::nv::{GCE_AK_CERT_RSA, GCE_AK_TEMPLATE_ECC, GCE_AK_TEMPLATE_RSA};
use crate::hw::tpm::{AkSource, Quoter, Tpm};

/// Evidence from a GCE vTPM.
pub(crate) struct GcpSource {
    config: TpmConfig,
    event_log: PathBuf,
    /// The AK made from its NV template, and its certificate, ready for the quote.
    prepared: Option<(Quoter, Option<Vec<u8>>)>,
}

impl GcpSource {
    /// A source using the vTPM of `config`; `event_log` is the (rooted) event log path.
    pub(crate) fn new(config: TpmConfig, event_log: PathBuf) -> GcpSource {
        GcpSource {
            config,
            event_log,
            prepared: None,
        }
    }

    /// The GCE AK (a primary made from its NV template: a key generation) and its
    /// certificate: what the quote needs besides the nonce.
    fn load(&self) -> Result<(Quoter, Option<Vec<u8>>), EvidenceError> {
        let mut tpm = Tpm::open(&self.config.tcti)?;
        if !tpm.nv_defined(GCE_AK_TEMPLATE_RSA)? {
            return Err(EvidenceError::Unavailable(
                if tpm.nv_defined(GCE_AK_TEMPLATE_ECC)? {
                    format!(
                        "this vTPM has only the GCE ECC AK (NV {GCE_AK_TEMPLATE_ECC:#010x}); Trustee's tpm verifier accepts RSASSA quotes only"
                    )
                } else {
                    format!("no GCE AK template in vTPM NV {GCE_AK_TEMPLATE_RSA:#010x}")
                },
            ));
        }
        let template = tpm.nv_read(GCE_AK_TEMPLATE_RSA)?;
        let cert = if tpm.nv_defined(GCE_AK_CERT_RSA)? {
            let raw = tpm.nv_read(GCE_AK_CERT_RSA)?;
            Some(der_prefix(&raw)?.to_vec())
        } else {
            log::warn!(
                "no GCE AK certificate in vTPM NV {GCE_AK_CERT_RSA:#010x}: the broker must trust the AK by its key"
            );
            None
        };
        Ok((Quoter::load(tpm, &AkSource::Template(template))?, cert))
    }
}

impl EvidenceSource for GcpSource {
    fn platform(&self) -> Platform {
        Platform::GcpVtpm
    }

    fn tee(&self) -> Tee {
        Tee::Tpm
    }

    fn prepare(&mut self) -> Result<(), EvidenceError> {
        self.prepared = None;
        self.prepared = Some(self.load()?);
        Ok(())
    }

    fn unprepare(&mut self) {
        self.prepared = None;
    }

    fn collect(&mut self, report_data: &ReportData) -> Result<serde_json::Value, EvidenceError> {
        let (quoter, cert) = match self.prepared.take() {
            Some(p) => p,
            None => self.load()?,
        };
        let (quote, ak) = quoter.quote_once(&report_data.tpm_qualifying_data())?;
        if let Some(cert) = &cert {
            // The certificate's SubjectPublicKeyInfo is the DER we encode (RSA, NULL
            // parameters); if it is not in there, the template did not make the certified key.
            if !cert.windows(ak.spki_der.len()).any(|w| w == ak.spki_der) {
                log::warn!("the GCE AK certificate does not name the AK made from the NV template");
            }
        }
        // The event log is optional evidence, as for the plain TPM.
        let log = crate::hw::fw::read_log(&self.event_log).ok().flatten();
        let mut evidence = TpmEvidence::new(&quote, &ak.spki_der, log.as_deref());
        evidence.ak_cert = cert.map(|c| STANDARD.encode(c));
        serde_json::to_value(evidence).map_err(|e| EvidenceError::Encode(e.to_string()))
    }

    fn measure(&mut self, pcr: u32, event: &[u8]) -> Result<Recorded, EvidenceError> {
        extend_pcr(&self.config.tcti, pcr, event)
    }

    fn pcrs_sha256(&mut self) -> Result<Option<[[u8; 32]; 24]>, EvidenceError> {
        read_pcrs(&self.config.tcti)
    }
}

/// The DER element at the start of `bytes` (an NV index is often larger than the certificate
/// it holds, the rest zero-filled). Pure: reads only the tag and length of the outer element.
pub fn der_prefix(bytes: &[u8]) -> Result<&[u8], EvidenceError> {
    let bad = |why: &str| EvidenceError::Malformed {
        what: "GCE AK certificate",
        why: why.to_owned(),
    };
    let (&tag, rest) = bytes.split_first().ok_or_else(|| bad("empty"))?;
    if tag != 0x30 {
        return Err(bad("not a DER SEQUENCE"));
    }
    let (&first, rest) = rest.split_first().ok_or_else(|| bad("truncated length"))?;
    let (len, header) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 3 {
            return Err(bad("unsupported DER length"));
        }
        let len_bytes = rest.get(..n).ok_or_else(|| bad("truncated length"))?;
        let len = len_bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, 2 + n)
    };
    let end = header
        .checked_add(len)
        .ok_or_else(|| bad("length overflow"))?;
    bytes.get(..end).ok_or_else(|| {
        bad(&format!(
            "DER length {len} runs past the {} bytes of the NV index",
            bytes.len()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_prefix_cuts_the_padding_of_the_real_gce_certificate() {
        let cert = test_kbs::testdata("tpm/quote/gce-cos-85-nonce9009/ak_cert.der");
        let mut padded = cert.clone();
        padded.extend_from_slice(&[0; 700]);
        assert_eq!(der_prefix(&padded).unwrap(), cert.as_slice());
        assert_eq!(der_prefix(&cert).unwrap(), cert.as_slice());
        assert!(der_prefix(&cert[..cert.len() - 1]).is_err());
        assert!(der_prefix(&[]).is_err());
        assert!(der_prefix(&[0x30]).is_err());
        assert!(der_prefix(&[0x30, 0x84, 1, 2, 3, 4]).is_err());
        assert!(der_prefix(&[0x02, 0x01, 0x00]).is_err());
        assert_eq!(der_prefix(&[0x30, 0x00, 0xff]).unwrap(), &[0x30, 0x00]);
    }
}
