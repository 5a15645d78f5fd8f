//! What evidence is: the source trait the flow depends on, platform detection, and the
//! binding of evidence to a broker session.

pub mod azure;
pub mod binding;
pub mod gcp;
pub mod snp;
pub mod tdx;
pub mod tpm;

use std::path::{Path, PathBuf};

use kbs_types::Tee;

use crate::config::{Config, Platform};
use crate::hw::imds::ImdsError;
use crate::hw::nv::{AZURE_HCL_REPORT, GCE_AK_TEMPLATE_ECC, GCE_AK_TEMPLATE_RSA};
use crate::hw::tpm::{Tpm, TpmError};
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
    /// A device or firmware file could not be used.
    #[error("cannot {action} {}: {source}", path.display())]
    Device {
        /// What was tried (`open`, `read`, ...).
        action: &'static str,
        /// The device or file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A report, quote, certificate or log from the hardware or the cloud is malformed.
    #[error("{what}: {why}")]
    Malformed {
        /// What it is.
        what: &'static str,
        /// What is wrong.
        why: String,
    },
    /// What the hardware or the cloud returned is well-formed but not what was asked for or
    /// not bound to what it must be (report data, the AK of an HCL report, ...).
    #[error("{what}: {why}")]
    Mismatch {
        /// What it is.
        what: &'static str,
        /// What does not match.
        why: String,
    },
    /// The platform lacks what this evidence needs (a device answers with an error, an AK
    /// template or NV index is missing).
    #[error("{0}")]
    Unavailable(String),
    /// A release or the trust anchors cannot be recorded where the config requires it.
    #[error("{0}")]
    Unrecorded(String),
    /// The evidence could not be encoded.
    #[error("cannot encode evidence: {0}")]
    Encode(String),
    /// The init-data sent does not match what the launch bound (SNP HOST_DATA, TDX
    /// MRCONFIGID): the broker would refuse the evidence.
    #[error(
        "the init-data does not match what this VM was launched with: {field} is {found}, the \
         init-data gives {expected}; the host launched it with other init-data (or none)"
    )]
    InitDataMismatch {
        /// The field.
        field: &'static str,
        /// What the report holds, hex.
        found: String,
        /// What the configured init-data gives, hex.
        expected: String,
    },
    /// Init-data is configured, but PCR 8 already holds other measurements, so it cannot hold
    /// exactly the one extend of the init-data digest a Trustee TPM verifier requires.
    #[error(
        "init-data cannot be bound on this TPM: PCR 8 is {value}, not zero (GRUB measures its \
         commands there); boot without GRUB (UKI / systemd-boot), or drop init_data and bind \
         the node through the trust anchors in PCR 15 (docs/deploying.md)"
    )]
    InitDataPcrInUse {
        /// The PCR's SHA-256 value, hex.
        value: String,
    },
    /// Azure IMDS failed (VCEK or TD quote).
    #[error(transparent)]
    Imds(#[from] ImdsError),
    /// The hardware report did not pick up the data just written within the time allowed
    /// (Azure: the paravisor did not refresh the HCL report).
    #[error(
        "the report in vTPM NV {index:#010x} did not carry our user data after {waited_ms} ms \
         ({reads} reads; last seen: {last}); is the paravisor refreshing it? (azure.poll_timeout_ms)"
    )]
    NotFresh {
        /// The NV index read.
        index: u32,
        /// How long we waited.
        waited_ms: u64,
        /// How many times it was read.
        reads: u32,
        /// What the last read showed.
        last: String,
    },
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

    /// Extend the measurement register(s) this source's evidence covers with `event` (a TPM:
    /// PCR `pcr` in every active bank; TDX: RTMR 3): the trust anchors before the first
    /// network byte, and the post-release event after a release.
    fn measure(&mut self, pcr: u32, event: &[u8]) -> Result<Recorded, EvidenceError>;

    /// The init-data digest the launch bound, as the last report this source produced shows
    /// it (SNP HOST_DATA, TDX MRCONFIGID); `None` for a source without one.
    fn launch_init_data(&self) -> Option<LaunchInitData> {
        None
    }

    /// Make ready what the evidence needs besides the nonce (a TPM connection with the AK
    /// loaded: a key generation when it is created), so it runs while the broker's
    /// challenge is on its way. `collect` works without it.
    fn prepare(&mut self) -> Result<(), EvidenceError> {
        Ok(())
    }

    /// Release what [`EvidenceSource::prepare`] holds (a TPM simulator serves one connection
    /// at a time, and the release measurement opens its own).
    fn unprepare(&mut self) {}

    /// The SHA-256 values of TPM PCRs 0-23 (one read), where the evidence has a TPM (`None`
    /// otherwise).
    fn pcrs_sha256(&mut self) -> Result<Option<[[u8; 32]; 24]>, EvidenceError> {
        Ok(None)
    }

    /// The SHA-256 value of TPM PCR `pcr` (`None` without a TPM).
    fn pcr_sha256(&mut self, pcr: u32) -> Result<Option<[u8; 32]>, EvidenceError> {
        Ok(self
            .pcrs_sha256()?
            .and_then(|p| usize::try_from(pcr).ok().and_then(|i| p.get(i).copied())))
    }
}

/// Finds the platform a node attests as and opens its evidence source: the hardware
/// ([`Hardware`]), or fakes in the flow's fast tests.
pub trait Platforms {
    /// The platform found and its evidence source.
    fn detect(&self, config: &Config)
        -> Result<(Platform, Box<dyn EvidenceSource>), EvidenceError>;
}

/// The node's own devices and files, under `root` (`/`, or a test root).
pub struct Hardware<'a> {
    /// Where the device and firmware paths are looked up.
    pub root: &'a Path,
}

impl Platforms for Hardware<'_> {
    fn detect(
        &self,
        config: &Config,
    ) -> Result<(Platform, Box<dyn EvidenceSource>), EvidenceError> {
        let detected = detect(config, self.root)?;
        log::info!(
            "platform {} ({})",
            detected.platform.as_str(),
            detected.detail
        );
        Ok((detected.platform, source_for(&detected, config, self.root)))
    }
}

/// The register a TEE's launch binds the init-data digest into, with its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaunchInitData {
    /// SEV-SNP HOST_DATA (32 bytes, set by the host at launch).
    SnpHostData([u8; 32]),
    /// TDX MRCONFIGID (48 bytes, set by the host at launch).
    TdxMrConfigId([u8; 48]),
}

impl LaunchInitData {
    /// The field's name, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            LaunchInitData::SnpHostData(_) => "SNP HOST_DATA",
            LaunchInitData::TdxMrConfigId(_) => "TDX MRCONFIGID",
        }
    }

    /// The field's bytes.
    pub fn bytes(&self) -> &[u8] {
        match self {
            LaunchInitData::SnpHostData(b) => b,
            LaunchInitData::TdxMrConfigId(b) => b,
        }
    }
}

/// What a measurement reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// These registers were extended (e.g. `PCR 15 (sha1, sha256)`).
    Registers(String),
    /// This platform has no register to extend, and why.
    Unavailable(String),
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
    /// How TDX quotes are obtained, when the platform is TDX.
    pub tdx_backend: Option<TdxBackendKind>,
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

/// The TDX quote interface found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TdxBackendKind {
    /// configfs-tsm.
    Tsm,
    /// The quote generation service over vsock first, configfs-tsm as the fallback (absent
    /// on kernels before 6.7, which the detail says).
    Qgs,
}

/// What detection asks the TPM: which NV indices exist and what they hold. The production
/// implementation opens the configured TPM lazily; tests substitute their own.
pub(crate) trait NvProbe {
    /// Whether `index` is defined. `Ok(None)`: the TPM cannot be asked at all (not opened).
    fn defined(&mut self, index: u32) -> Result<Option<bool>, EvidenceError>;
    /// The content of `index`.
    fn read(&mut self, index: u32) -> Result<Vec<u8>, EvidenceError>;
    /// Why the TPM could not be asked, when it could not.
    fn unavailable(&self) -> Option<String>;
}

/// An [`NvProbe`] on the TPM named by a TCTI string, opened on first use and closed when the
/// probe is dropped (a swtpm serves one connection at a time).
pub(crate) struct TctiProbe {
    tcti: String,
    tpm: Option<Tpm>,
    failed: Option<String>,
}

impl TctiProbe {
    /// A probe of the TPM at `tcti`.
    pub(crate) fn new(tcti: &str) -> TctiProbe {
        TctiProbe {
            tcti: tcti.to_owned(),
            tpm: None,
            failed: None,
        }
    }

    fn tpm(&mut self) -> Option<&mut Tpm> {
        if self.tpm.is_none() && self.failed.is_none() {
            match Tpm::open(&self.tcti) {
                Ok(t) => self.tpm = Some(t),
                Err(e) => {
                    log::debug!("detect: cannot open the TPM to look at its NV indices: {e}");
                    self.failed = Some(e.to_string());
                }
            }
        }
        self.tpm.as_mut()
    }
}

impl NvProbe for TctiProbe {
    fn defined(&mut self, index: u32) -> Result<Option<bool>, EvidenceError> {
        match self.tpm() {
            Some(t) => Ok(Some(t.nv_defined(index)?)),
            None => Ok(None),
        }
    }

    fn read(&mut self, index: u32) -> Result<Vec<u8>, EvidenceError> {
        match self.tpm() {
            Some(t) => Ok(t.nv_read(index)?),
            None => Err(EvidenceError::Unavailable(format!(
                "cannot read TPM NV {index:#010x}: {}",
                self.failed.as_deref().unwrap_or("TPM not open")
            ))),
        }
    }

    fn unavailable(&self) -> Option<String> {
        self.failed.clone()
    }
}

/// Find the platform to use. `root` prefixes every path looked at (`/` in production, a
/// temporary directory in tests).
///
/// Order, strongest evidence first, each step only when the configured platform allows it:
///
/// 1. configfs-tsm whose provider is SNP or TDX (bare-metal or cloud SNP/TDX guests, Linux
///    6.7 or later): a hardware report over our own report data. For TDX with the guest
///    device and `tee.qgs_port` set, quotes are asked of the quote generation service over
///    vsock first, configfs-tsm being the fallback. The TDX guest device alone (kernels
///    before 6.7) is TDX through the quote generation service only;
/// 2. the Azure HCL report in vTPM NV 0x01400001 (its header says SNP or TDX): the hardware
///    report is reached through the paravisor. Before `/dev/sev-guest`, because on an Azure
///    CVM a guest-visible SNP device would report at the guest's VMPL, not the paravisor's
///    VMPL-0 report that binds the vTPM;
/// 3. `/dev/sev-guest` (SNP on kernels before 6.7);
/// 4. the GCE AK template in vTPM NV 0x01c10001 (RSA) or 0x01c10003 (ECC): SEV-ES and
///    Shielded VMs, a vTPM quote by a Google-certified AK. After the SNP device, because GCE
///    SNP VMs have the same NV indices and their hardware report is stronger evidence;
/// 5. the TPM.
///
/// `auto` takes the first found, so a hardware report always wins over a vTPM quote alone. A
/// configured platform that is absent is an error: there is no fallback to a weaker source
/// unless the config names that weaker platform.
pub fn detect(config: &Config, root: &Path) -> Result<Detected, EvidenceError> {
    detect_with(config, root, &mut TctiProbe::new(&config.tpm.tcti))
}

/// [`detect`] with the vTPM's NV indices read through `probe`.
pub(crate) fn detect_with(
    config: &Config,
    root: &Path,
    probe: &mut dyn NvProbe,
) -> Result<Detected, EvidenceError> {
    let tcti = &config.tpm.tcti;
    let tpm_present = match tcti.strip_prefix("device:") {
        Some(dev) => rooted(root, dev).exists(),
        // swtpm, mssim, tabrmd: configured explicitly, so taken as present; opening it
        // will say clearly if it is not.
        None => true,
    };
    let tsm_root = rooted_path(root, &config.tee.tsm_root);
    let sev_guest = rooted_path(root, &config.tee.sev_guest);
    let tdx_guest = rooted_path(root, &config.tee.tdx_guest);
    // The direct path to the TDX quote service: the guest device for the TDREPORT, a port.
    let qgs = (config.tee.qgs_port != 0 && tdx_guest.exists()).then(|| {
        format!(
            "quote generation service at vsock {}:{} with {}",
            crate::hw::qgs::HOST_CID,
            config.tee.qgs_port,
            tdx_guest.display()
        )
    });
    let wanted = config.platform;
    let wants = |platforms: &[Platform]| wanted == Platform::Auto || platforms.contains(&wanted);
    let mut checked = Vec::new();
    let found = |platform, detail: String, snp_backend| Detected {
        platform,
        detail,
        snp_backend,
        tdx_backend: None,
        tpm_present,
    };
    let tdx = |detail: String, backend| Detected {
        tdx_backend: Some(backend),
        ..found(Platform::Tdx, detail, None)
    };

    // 1. configfs-tsm.
    if wants(&[Platform::Snp, Platform::Tdx]) && tsm_root.is_dir() {
        let provider = match crate::hw::tsm::provider(&tsm_root) {
            Ok(p) => Some(p),
            // The directory exists but no TSM driver is registered (seen on Azure CVMs): no
            // provider, not a failure.
            Err(TsmError::Io { op, source, .. })
                if op == "create entry"
                    && matches!(source.raw_os_error(), Some(ENODEV | ENXIO)) =>
            {
                None
            }
            Err(e) => return Err(e.into()),
        };
        checked.push(format!(
            "configfs-tsm at {} ({})",
            tsm_root.display(),
            provider
                .as_deref()
                .map(|p| format!("provider {p}"))
                .unwrap_or_else(|| "no provider".to_owned())
        ));
        match (wanted, provider.as_deref()) {
            (Platform::Auto | Platform::Snp, Some("sev_guest")) => {
                return Ok(found(
                    Platform::Snp,
                    format!("configfs-tsm {}", tsm_root.display()),
                    Some(SnpBackendKind::Tsm),
                ))
            }
            (Platform::Auto | Platform::Tdx, Some("tdx_guest")) => {
                return Ok(match &qgs {
                    Some(direct) => tdx(
                        format!(
                            "{direct}, configfs-tsm {} as the fallback",
                            tsm_root.display()
                        ),
                        TdxBackendKind::Qgs,
                    ),
                    None => tdx(
                        format!("configfs-tsm {}", tsm_root.display()),
                        TdxBackendKind::Tsm,
                    ),
                })
            }
            (Platform::Auto, Some(other)) => {
                return Err(EvidenceError::NoPlatform {
                    wanted: format!("supported (configfs-tsm provider {other:?} is not)"),
                    checked: checked.join(", "),
                })
            }
            _ => {}
        }
    } else if wants(&[Platform::Snp, Platform::Tdx]) {
        checked.push(format!("configfs-tsm at {}", tsm_root.display()));
    }

    // 1b. The TDX guest device without configfs-tsm (kernels before 6.7): the quote service
    // directly.
    if wants(&[Platform::Tdx]) {
        if let Some(direct) = qgs {
            return Ok(tdx(
                format!("{direct} (no configfs-tsm)"),
                TdxBackendKind::Qgs,
            ));
        }
        checked.push(format!(
            "{}{}",
            tdx_guest.display(),
            if config.tee.qgs_port == 0 {
                " (tee.qgs_port = 0)"
            } else {
                ""
            }
        ));
    }

    // 2. The Azure HCL report.
    if wants(&[Platform::AzSnpVtpm, Platform::AzTdxVtpm]) && tpm_present {
        match probe.defined(AZURE_HCL_REPORT)? {
            Some(true) => {
                let bytes = probe.read(AZURE_HCL_REPORT)?;
                let report = crate::formats::hcl::parse_hcl_report(&bytes).map_err(|e| {
                    EvidenceError::Malformed {
                        what: "HCL report",
                        why: format!("vTPM NV {AZURE_HCL_REPORT:#010x} holds none usable: {e}"),
                    }
                })?;
                let platform = azure::AzureKind::of(&report).platform();
                checked.push(format!(
                    "vTPM NV {AZURE_HCL_REPORT:#010x} (HCL report, {})",
                    platform.as_str()
                ));
                if wanted == Platform::Auto || wanted == platform {
                    return Ok(found(
                        platform,
                        format!("vTPM {tcti}, HCL report in NV {AZURE_HCL_REPORT:#010x}"),
                        None,
                    ));
                }
            }
            Some(false) => checked.push(format!("vTPM NV {AZURE_HCL_REPORT:#010x} (absent)")),
            None => checked.push(format!(
                "vTPM NV {AZURE_HCL_REPORT:#010x} (TPM not readable: {})",
                probe.unavailable().unwrap_or_default()
            )),
        }
    }

    // 3. /dev/sev-guest.
    if wants(&[Platform::Snp]) {
        if sev_guest.exists() {
            return Ok(found(
                Platform::Snp,
                sev_guest.display().to_string(),
                Some(SnpBackendKind::SevGuest),
            ));
        }
        checked.push(sev_guest.display().to_string());
    }

    // 4. The GCE AK template.
    if wants(&[Platform::GcpVtpm]) && tpm_present {
        let mut any = false;
        let mut unreadable = false;
        for index in [GCE_AK_TEMPLATE_RSA, GCE_AK_TEMPLATE_ECC] {
            match probe.defined(index)? {
                Some(true) => any = true,
                Some(false) => {}
                None => unreadable = true,
            }
        }
        if any {
            return Ok(found(
                Platform::GcpVtpm,
                format!("vTPM {tcti}, GCE AK template in NV"),
                None,
            ));
        }
        checked.push(if unreadable {
            format!(
                "GCE AK template in vTPM NV (TPM not readable: {})",
                probe.unavailable().unwrap_or_default()
            )
        } else {
            format!("GCE AK template in vTPM NV {GCE_AK_TEMPLATE_RSA:#010x}/{GCE_AK_TEMPLATE_ECC:#010x} (absent)")
        });
    }

    // 5. The TPM.
    if wants(&[Platform::Tpm]) && tpm_present {
        return Ok(found(Platform::Tpm, tcti.clone(), None));
    }
    checked.push(format!("TPM at {tcti}"));
    Err(EvidenceError::NoPlatform {
        wanted: wanted.as_str().to_owned(),
        checked: checked.join(", "),
    })
}

/// `ENODEV` and `ENXIO` (Linux): what `mkdir` in configfs-tsm returns without a provider.
const ENODEV: i32 = 19;
const ENXIO: i32 = 6;

/// Join an absolute path under `root`.
pub(crate) fn rooted(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

fn rooted_path(root: &Path, path: &Path) -> PathBuf {
    rooted(root, &path.to_string_lossy())
}

/// A TEE's evidence with the TPM's as additional evidence.
pub(crate) struct Composite {
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

    fn prepare(&mut self) -> Result<(), EvidenceError> {
        self.primary.prepare()?;
        self.tpm.prepare()
    }

    fn unprepare(&mut self) {
        self.primary.unprepare();
        self.tpm.unprepare();
    }

    fn additional(&mut self) -> Option<&mut dyn EvidenceSource> {
        Some(&mut self.tpm)
    }

    fn measure(&mut self, pcr: u32, event: &[u8]) -> Result<Recorded, EvidenceError> {
        // Every register the evidence covers: the TEE's (RTMR 3 on TDX) and the vTPM's PCR.
        let tee = self.primary.measure(pcr, event)?;
        let tpm = self.tpm.measure(pcr, event)?;
        Ok(match (tee, tpm) {
            (Recorded::Registers(a), Recorded::Registers(b)) => {
                Recorded::Registers(format!("{a} and {b}"))
            }
            (Recorded::Unavailable(_), r) | (r, Recorded::Unavailable(_)) => r,
        })
    }

    fn pcrs_sha256(&mut self) -> Result<Option<[[u8; 32]; 24]>, EvidenceError> {
        self.tpm.pcrs_sha256()
    }

    fn launch_init_data(&self) -> Option<LaunchInitData> {
        self.primary.launch_init_data()
    }
}

/// Build the evidence source for what was detected.
pub(crate) fn source_for(
    detected: &Detected,
    config: &Config,
    root: &Path,
) -> Box<dyn EvidenceSource> {
    let tpm = || {
        tpm::TpmSource::new(
            config.tpm.clone(),
            rooted(root, &config.tpm.event_log.to_string_lossy()),
        )
    };
    let primary: Box<dyn EvidenceSource> = match detected.platform {
        Platform::Auto | Platform::Tpm => return Box::new(tpm()),
        // The vTPM quote is part of these platforms' own evidence, bound to the hardware
        // report through the HCL runtime claims: no composite.
        Platform::AzSnpVtpm | Platform::AzTdxVtpm => {
            let kind = if detected.platform == Platform::AzSnpVtpm {
                azure::AzureKind::Snp
            } else {
                azure::AzureKind::Tdx
            };
            return Box::new(azure::AzureSource::new(
                kind,
                config.azure.clone(),
                config.tpm.tcti.clone(),
                &config.timeouts,
            ));
        }
        Platform::GcpVtpm => {
            return Box::new(gcp::GcpSource::new(
                config.tpm.clone(),
                rooted(root, &config.tpm.event_log.to_string_lossy()),
            ))
        }
        Platform::Snp => {
            let backend = match detected.snp_backend {
                Some(SnpBackendKind::SevGuest) => {
                    snp::SnpBackend::SevGuest(rooted_path(root, &config.tee.sev_guest))
                }
                _ => snp::SnpBackend::Tsm(rooted_path(root, &config.tee.tsm_root)),
            };
            Box::new(snp::SnpSource::new(backend, config.tee.vmpl))
        }
        Platform::Tdx => {
            let qgs = (detected.tdx_backend == Some(TdxBackendKind::Qgs)).then(|| {
                crate::hw::qgs::QgsClient::vsock(
                    rooted_path(root, &config.tee.tdx_guest),
                    config.tee.qgs_port,
                    config.timeouts.request(),
                )
            });
            Box::new(tdx::TdxSource::new(
                rooted_path(root, &config.tee.tsm_root),
                rooted_path(root, &config.tee.ccel),
                rooted_path(root, &config.tee.rtmr),
                qgs,
            ))
        }
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

    /// A vTPM whose NV indices the test chooses.
    struct FakeNv {
        indices: std::collections::BTreeMap<u32, Vec<u8>>,
        open: bool,
    }

    impl NvProbe for FakeNv {
        fn defined(&mut self, index: u32) -> Result<Option<bool>, EvidenceError> {
            Ok(self.open.then(|| self.indices.contains_key(&index)))
        }
        fn read(&mut self, index: u32) -> Result<Vec<u8>, EvidenceError> {
            self.indices
                .get(&index)
                .cloned()
                .ok_or_else(|| EvidenceError::Unavailable("absent".into()))
        }
        fn unavailable(&self) -> Option<String> {
            (!self.open).then(|| "no TPM".to_owned())
        }
    }

    fn hcl(path: &str) -> Vec<u8> {
        test_kbs::testdata(&format!("azure/{path}"))
    }

    fn world(sev_guest: bool) -> (tempfile::TempDir, Config) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("dev")).unwrap();
        std::fs::write(dir.path().join("dev/tpmrm0"), b"").unwrap();
        if sev_guest {
            std::fs::write(dir.path().join("dev/sev-guest"), b"").unwrap();
        }
        (dir, Config::default())
    }

    fn nv(entries: &[(u32, Vec<u8>)]) -> FakeNv {
        FakeNv {
            indices: entries.iter().cloned().collect(),
            open: true,
        }
    }

    #[test]
    fn detection_order_azure_then_sev_guest_then_gce_then_tpm() {
        let snp_hcl = hcl("trustee-az-snp/hcl-report.bin");
        let tdx_hcl = hcl("trustee-az-tdx/hcl-report.bin");
        let gce = (GCE_AK_TEMPLATE_RSA, vec![0u8; 8]);

        // The Azure HCL report wins over a guest-visible /dev/sev-guest.
        let (dir, c) = world(true);
        let d = detect_with(&c, dir.path(), &mut nv(&[(AZURE_HCL_REPORT, snp_hcl)])).unwrap();
        assert_eq!(d.platform, Platform::AzSnpVtpm);
        let d = detect_with(&c, dir.path(), &mut nv(&[(AZURE_HCL_REPORT, tdx_hcl)])).unwrap();
        assert_eq!(d.platform, Platform::AzTdxVtpm);

        // /dev/sev-guest wins over the GCE AK (GCE SNP VMs have both).
        let d = detect_with(&c, dir.path(), &mut nv(std::slice::from_ref(&gce))).unwrap();
        assert_eq!(d.platform, Platform::Snp);
        let (dir, c) = world(false);
        let d = detect_with(&c, dir.path(), &mut nv(std::slice::from_ref(&gce))).unwrap();
        assert_eq!(d.platform, Platform::GcpVtpm);
        let d = detect_with(&c, dir.path(), &mut nv(&[(GCE_AK_TEMPLATE_ECC, vec![1])])).unwrap();
        assert_eq!(d.platform, Platform::GcpVtpm);

        // Nothing cloud-specific: the TPM; a TPM that cannot be asked is still the TPM (it
        // will say why when the evidence is collected).
        let d = detect_with(&c, dir.path(), &mut nv(&[])).unwrap();
        assert_eq!(d.platform, Platform::Tpm);
        let mut closed = nv(&[]);
        closed.open = false;
        assert_eq!(
            detect_with(&c, dir.path(), &mut closed).unwrap().platform,
            Platform::Tpm
        );
    }

    #[test]
    fn named_cloud_platforms_never_fall_back() {
        let (dir, mut c) = world(false);
        let snp_hcl = hcl("trustee-az-snp/hcl-report.bin");
        c.platform = Platform::AzTdxVtpm;
        let e = detect_with(
            &c,
            dir.path(),
            &mut nv(&[(AZURE_HCL_REPORT, snp_hcl.clone())]),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("no az-tdx-vtpm platform found"),
            "{e}"
        );
        assert!(e.to_string().contains("az-snp-vtpm"), "{e}");
        c.platform = Platform::GcpVtpm;
        let e = detect_with(&c, dir.path(), &mut nv(&[(AZURE_HCL_REPORT, snp_hcl)])).unwrap_err();
        assert!(e.to_string().contains("no gcp-vtpm platform found"), "{e}");
        c.platform = Platform::AzSnpVtpm;
        let mut closed = nv(&[]);
        closed.open = false;
        let e = detect_with(&c, dir.path(), &mut closed).unwrap_err();
        assert!(e.to_string().contains("TPM not readable"), "{e}");
        // A broken HCL report is an error, not a reason to try something weaker.
        c.platform = Platform::Auto;
        let e =
            detect_with(&c, dir.path(), &mut nv(&[(AZURE_HCL_REPORT, vec![0; 64])])).unwrap_err();
        assert!(
            e.to_string()
                .contains("HCL report: vTPM NV 0x01400001 holds none usable"),
            "{e}"
        );
    }

    /// The TDX guest device without configfs-tsm (kernels before 6.7) is TDX through the
    /// quote generation service, chosen and said at detection; with `tee.qgs_port = 0` it is
    /// not, and a configured `tdx` then says why.
    #[test]
    fn the_tdx_guest_device_alone_is_tdx_through_the_quote_service() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("dev")).unwrap();
        std::fs::write(dir.path().join("dev/tdx_guest"), b"").unwrap();
        let mut config = Config::default();
        let d = detect_with(&config, dir.path(), &mut nv(&[])).unwrap();
        assert_eq!(d.platform, Platform::Tdx);
        assert_eq!(d.tdx_backend, Some(TdxBackendKind::Qgs));
        assert!(
            d.detail
                .starts_with("quote generation service at vsock 2:4050 with ")
                && d.detail.ends_with("/dev/tdx_guest (no configfs-tsm)"),
            "{}",
            d.detail
        );
        config.tee.qgs_port = 0;
        let e = detect_with(&config, dir.path(), &mut nv(&[])).unwrap_err();
        assert!(
            e.to_string().contains("tdx_guest (tee.qgs_port = 0)"),
            "{e}"
        );
        config.platform = Platform::Tdx;
        let e = detect_with(&config, dir.path(), &mut nv(&[])).unwrap_err();
        assert!(
            e.to_string().starts_with("no tdx platform found")
                && e.to_string().contains("tdx_guest (tee.qgs_port = 0)"),
            "{e}"
        );
    }
}
