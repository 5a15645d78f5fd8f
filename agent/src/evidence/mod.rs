//! What evidence is: the source trait the flow depends on, platform detection, and the
//! binding of evidence to a broker session.

pub mod binding;
pub mod snp;
pub mod tdx;
pub mod tpm;

use std::path::{Path, PathBuf};

use kbs_types::Tee;

use crate::config::{Config, Platform};
use crate::hw::tpm::TpmError;
use crate::hw::tsm::TsmError;
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
    /// configfs-tsm failed.
    #[error(transparent)]
    Tsm(#[from] TsmError),
    /// The TEE (SNP/TDX) failed or returned something unusable.
    #[error("{0}")]
    Tee(String),
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

    /// A second device whose evidence goes into `additional_evidence` (the vTPM beside a
    /// TEE), if any.
    fn additional(&mut self) -> Option<&mut dyn EvidenceSource> {
        None
    }

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
    /// Human-readable detail (the interface used).
    pub detail: String,
    /// How SNP reports are obtained, when the platform is SNP.
    pub snp_backend: Option<SnpBackendKind>,
    /// Whether a TPM is present beside the TEE (for composite evidence).
    pub tpm_present: bool,
}

/// The SNP report interface found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnpBackendKind {
    /// configfs-tsm.
    Tsm,
    /// `/dev/sev-guest`.
    SevGuest,
}

/// Find the platform to use. `root` prefixes every path looked at (`/` in production, a
/// temporary directory in tests).
///
/// Order: configfs-tsm (its provider says SNP or TDX), then `/dev/sev-guest` (SNP on kernels
/// before 6.7), then the TPM. `auto` takes the first found, so a TEE always wins over a bare
/// TPM. A configured platform that is absent is an error: there is no fallback to a weaker
/// source unless the config names that weaker platform.
pub fn detect(config: &Config, root: &Path) -> Result<Detected, EvidenceError> {
    let tcti = &config.tpm.tcti;
    let tpm_present = match tcti.strip_prefix("device:") {
        Some(dev) => rooted(root, dev).exists(),
        // swtpm, mssim, tabrmd: configured explicitly, so taken as present; opening it
        // will say clearly if it is not.
        None => true,
    };
    let tsm_root = rooted_path(root, &config.tee.tsm_root);
    let sev_guest = rooted_path(root, &config.tee.sev_guest);
    let wants_tee = matches!(
        config.platform,
        Platform::Auto | Platform::Snp | Platform::Tdx
    );
    let provider = if wants_tee && tsm_root.is_dir() {
        match crate::hw::tsm::provider(&tsm_root) {
            Ok(p) => Some(p),
            Err(e) => return Err(e.into()),
        }
    } else {
        None
    };
    let tee = |platform, detail: String, snp_backend| Detected {
        platform,
        detail,
        snp_backend,
        tpm_present,
    };
    let checked = format!(
        "configfs-tsm at {}{}, {}, TPM at {tcti}",
        tsm_root.display(),
        provider
            .as_deref()
            .map(|p| format!(" (provider {p})"))
            .unwrap_or_default(),
        sev_guest.display()
    );
    let found = match (config.platform, provider.as_deref()) {
        (Platform::Auto | Platform::Snp, Some("sev_guest")) => Some(tee(
            Platform::Snp,
            format!("configfs-tsm {}", tsm_root.display()),
            Some(SnpBackendKind::Tsm),
        )),
        (Platform::Auto | Platform::Tdx, Some("tdx_guest")) => Some(tee(
            Platform::Tdx,
            format!("configfs-tsm {}", tsm_root.display()),
            None,
        )),
        (Platform::Auto | Platform::Snp, _) if sev_guest.exists() => Some(tee(
            Platform::Snp,
            sev_guest.display().to_string(),
            Some(SnpBackendKind::SevGuest),
        )),
        (Platform::Auto, Some(other)) => {
            return Err(EvidenceError::NoPlatform {
                wanted: format!("supported (configfs-tsm provider {other:?} is not)"),
                checked,
            })
        }
        (Platform::Auto | Platform::Tpm, _) if tpm_present => Some(Detected {
            platform: Platform::Tpm,
            detail: tcti.clone(),
            snp_backend: None,
            tpm_present,
        }),
        _ => None,
    };
    found.ok_or_else(|| EvidenceError::NoPlatform {
        wanted: config.platform.as_str().to_owned(),
        checked,
    })
}

/// Join an absolute path under `root`.
pub fn rooted(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

fn rooted_path(root: &Path, path: &Path) -> PathBuf {
    rooted(root, &path.to_string_lossy())
}

/// A TEE's evidence with the TPM's as additional evidence.
pub struct Composite {
    primary: Box<dyn EvidenceSource>,
    tpm: tpm::TpmSource,
}

impl EvidenceSource for Composite {
    fn platform(&self) -> Platform {
        self.primary.platform()
    }

    fn tee(&self) -> Tee {
        self.primary.tee()
    }

    fn collect(&mut self, report_data: &ReportData) -> Result<serde_json::Value, EvidenceError> {
        self.primary.collect(report_data)
    }

    fn additional(&mut self) -> Option<&mut dyn EvidenceSource> {
        Some(&mut self.tpm)
    }

    fn measure_release(&mut self, pcr: u32, event: &[u8]) -> Result<(), EvidenceError> {
        self.tpm.measure_release(pcr, event)
    }
}

/// Build the evidence source for what was detected.
pub fn source_for(detected: &Detected, config: &Config, root: &Path) -> Box<dyn EvidenceSource> {
    let tpm = || {
        tpm::TpmSource::new(
            config.tpm.clone(),
            rooted(root, &config.tpm.event_log.to_string_lossy()),
        )
    };
    let primary: Box<dyn EvidenceSource> = match detected.platform {
        Platform::Auto | Platform::Tpm => return Box::new(tpm()),
        Platform::Snp => {
            let backend = match detected.snp_backend {
                Some(SnpBackendKind::SevGuest) => snp::SnpBackend::SevGuest,
                _ => snp::SnpBackend::Tsm(rooted_path(root, &config.tee.tsm_root)),
            };
            Box::new(snp::SnpSource::new(backend, config.tee.vmpl))
        }
        Platform::Tdx => Box::new(tdx::TdxSource::new(
            rooted_path(root, &config.tee.tsm_root),
            rooted_path(root, &config.tee.ccel),
        )),
    };
    if config.tee.composite && detected.tpm_present {
        Box::new(Composite {
            primary,
            tpm: tpm(),
        })
    } else {
        primary
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
