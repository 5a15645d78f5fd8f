//! What evidence is: the source trait the flow depends on, platform detection, and the
//! binding of evidence to a broker session.

pub mod binding;
pub mod tpm;

use std::path::{Path, PathBuf};

use kbs_types::Tee;

use crate::config::{Config, Platform};
use crate::hw::tpm::TpmError;
pub use binding::ReportData;

/// Evidence could not be produced. Never retried: a missing or failing TPM/TEE does not get
/// better by asking the broker again, and falling back to weaker evidence is not allowed.
#[derive(Debug, thiserror::Error)]
pub enum EvidenceError {
    /// No supported platform was found (or the configured one is absent).
    #[error("no {wanted} platform found (checked: {checked})")]
    NoPlatform {
        /// What was looked for.
        wanted: String,
        /// What was checked, for the operator.
        checked: String,
    },
    /// The TPM failed.
    #[error(transparent)]
    Tpm(#[from] TpmError),
    /// The evidence could not be encoded.
    #[error("cannot encode evidence: {0}")]
    Encode(String),
}

/// One source of evidence for one TEE type.
pub trait EvidenceSource {
    /// The platform this source serves.
    fn platform(&self) -> Platform;
    /// The KBS `tee` value for the auth request.
    fn tee(&self) -> Tee;
    /// Produce the primary evidence JSON, bound to `report_data`.
    fn collect(&mut self, report_data: &ReportData) -> Result<serde_json::Value, EvidenceError>;

    /// Record in a measurement register that secrets were released (post-release
    /// measurement), so evidence taken later in this boot cannot pass for a pre-unlock state.
    /// `event` is the documented event; the register is the source's choice of the config's.
    fn measure_release(&mut self, pcr: u32, event: &[u8]) -> Result<(), EvidenceError>;
}

/// What detection found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detected {
    /// The platform.
    pub platform: Platform,
    /// Human-readable detail (the device or TCTI used).
    pub detail: String,
}

/// Find the platform to use. `root` prefixes every path looked at (`/` in production, a
/// temporary directory in tests).
///
/// Order: TEE interfaces first (when their support lands), then the TPM. A configured
/// platform that is absent is an error; there is no fallback to a weaker source.
pub fn detect(config: &Config, root: &Path) -> Result<Detected, EvidenceError> {
    let tcti = &config.tpm.tcti;
    let tpm_present = match tcti.strip_prefix("device:") {
        Some(dev) => rooted(root, dev).exists(),
        // swtpm, mssim, tabrmd: configured explicitly, so taken as present; opening it
        // will say clearly if it is not.
        None => true,
    };
    match config.platform {
        Platform::Auto | Platform::Tpm if tpm_present => Ok(Detected {
            platform: Platform::Tpm,
            detail: tcti.clone(),
        }),
        wanted => Err(EvidenceError::NoPlatform {
            wanted: wanted.as_str().to_owned(),
            checked: format!("TPM at {tcti}"),
        }),
    }
}

/// Join an absolute path under `root`.
pub fn rooted(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

/// Build the evidence source for what was detected.
pub fn source_for(detected: &Detected, config: &Config, root: &Path) -> Box<dyn EvidenceSource> {
    match detected.platform {
        Platform::Auto | Platform::Tpm => Box::new(tpm::TpmSource::new(
            config.tpm.clone(),
            rooted(root, &config.tpm.event_log.to_string_lossy()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_tpm_device_is_no_platform() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::default();
        let e = detect(&config, dir.path()).unwrap_err();
        assert!(e.to_string().contains("/dev/tpmrm0"), "{e}");
        std::fs::create_dir(dir.path().join("dev")).unwrap();
        std::fs::write(dir.path().join("dev/tpmrm0"), b"").unwrap();
        assert_eq!(detect(&config, dir.path()).unwrap().platform, Platform::Tpm);
    }
}
