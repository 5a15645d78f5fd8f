//! TPM evidence in the shape Trustee's `tpm` verifier reads.
//!
//! `{"tpm_quote":{"signature":<b64 TPMT_SIGNATURE>,"message":<b64 TPMS_ATTEST>,
//! "pcrs":[24 lowercase hex SHA-256]},"ak_public":<b64 DER SPKI>}` plus, when the firmware
//! exposes it, `"event_log":<b64>` (ignored by Trustee's verifier, used by reference-value
//! tooling), and on GCE `"ak_cert":<b64 DER>`, the AK's certificate from the vTPM (Trustee's
//! verifier ignores unknown members; a broker can check it chains to Google's EK/AK CA). The
//! quote's qualifying data is the first 32 bytes of the binding digest.

use std::path::PathBuf;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use kbs_types::Tee;
use serde::Serialize;

use super::{EvidenceError, EvidenceSource, Recorded, ReportData};
use crate::config::{Platform, Tpm as TpmConfig};
use crate::hw::tpm::{AkSource, Quote, Quoter, Tpm};

/// The `tpm_quote` member.
#[derive(Debug, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct TpmQuoteJson {
    /// Standard base64 of the marshalled TPMT_SIGNATURE.
    pub signature: String,
    /// Standard base64 of the marshalled TPMS_ATTEST.
    pub message: String,
    /// PCR 0-23 of the SHA-256 bank, lowercase hex.
    pub pcrs: Vec<String>,
}

/// The whole `tpm` evidence.
#[derive(Debug, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct TpmEvidence {
    /// The quote.
    pub tpm_quote: TpmQuoteJson,
    /// Standard base64 of the AK's DER SubjectPublicKeyInfo.
    pub ak_public: String,
    /// Standard base64 of the TCG event log, when present.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub event_log: Option<String>,
    /// Standard base64 of the AK's X.509 certificate (DER), when the platform has one (GCE).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub ak_cert: Option<String>,
}

impl TpmEvidence {
    /// Encode a quote.
    pub fn new(quote: &Quote, ak_spki_der: &[u8], event_log: Option<&[u8]>) -> TpmEvidence {
        TpmEvidence {
            tpm_quote: TpmQuoteJson {
                signature: STANDARD.encode(&quote.signature),
                message: STANDARD.encode(&quote.message),
                pcrs: quote.pcrs.iter().map(hex::encode).collect(),
            },
            ak_public: STANDARD.encode(ak_spki_der),
            event_log: event_log.map(|l| STANDARD.encode(l)),
            ak_cert: None,
        }
    }
}

/// Evidence from a TPM 2.0.
pub(crate) struct TpmSource {
    config: TpmConfig,
    event_log: PathBuf,
    /// The AK loaded, ready for the quote.
    prepared: Option<Quoter>,
}

impl TpmSource {
    /// A source using `config`; `event_log` is the (rooted) event log path.
    pub(crate) fn new(config: TpmConfig, event_log: PathBuf) -> TpmSource {
        TpmSource {
            config,
            event_log,
            prepared: None,
        }
    }

    fn load(&self) -> Result<Quoter, EvidenceError> {
        let tpm = Tpm::open(&self.config.tcti)?;
        Ok(Quoter::load(tpm, &AkSource::of(&self.config))?)
    }
}

impl EvidenceSource for TpmSource {
    fn platform(&self) -> Platform {
        Platform::Tpm
    }

    fn tee(&self) -> Tee {
        Tee::Tpm
    }

    fn prepare(&mut self) -> Result<(), EvidenceError> {
        // One connection at a time: the one held is closed before another is opened.
        self.prepared = None;
        self.prepared = Some(self.load()?);
        Ok(())
    }

    fn unprepare(&mut self) {
        self.prepared = None;
    }

    fn collect(&mut self, report_data: &ReportData) -> Result<serde_json::Value, EvidenceError> {
        let quoter = match self.prepared.take() {
            Some(q) => q,
            None => self.load()?,
        };
        let (quote, ak) = quoter.quote_once(&report_data.tpm_qualifying_data())?;
        // The event log is optional evidence: a kernel without securityfs or firmware
        // without a log still attests by its PCRs.
        let log = crate::hw::fw::read_log(&self.event_log).ok().flatten();
        let evidence = TpmEvidence::new(&quote, &ak.spki_der, log.as_deref());
        serde_json::to_value(evidence).map_err(|e| EvidenceError::Encode(e.to_string()))
    }

    fn measure(&mut self, pcr: u32, event: &[u8]) -> Result<Recorded, EvidenceError> {
        extend_pcr(&self.config.tcti, pcr, event)
    }

    fn pcrs_sha256(&mut self) -> Result<Option<[[u8; 32]; 24]>, EvidenceError> {
        read_pcrs(&self.config.tcti)
    }
}

/// Extend PCR `pcr` of the TPM at `tcti` with `event` in every active bank: the one
/// measurement-register implementation every TPM-backed source shares.
pub(crate) fn extend_pcr(tcti: &str, pcr: u32, event: &[u8]) -> Result<Recorded, EvidenceError> {
    let mut tpm = Tpm::open(tcti)?;
    let banks = tpm.extend_all_banks(pcr, event)?;
    let names: Vec<String> = banks.iter().map(|b| b.name()).collect();
    Ok(Recorded::Registers(format!(
        "PCR {pcr} ({})",
        names.join(", ")
    )))
}

/// The SHA-256 PCRs 0-23 of the TPM at `tcti`, in one read.
pub(crate) fn read_pcrs(tcti: &str) -> Result<Option<[[u8; 32]; 24]>, EvidenceError> {
    let mut tpm = Tpm::open(tcti)?;
    Ok(Some(tpm.pcrs_sha256()?))
}
