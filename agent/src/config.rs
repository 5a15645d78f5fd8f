//! The one typed configuration and the sources it is layered from.
//!
//! Precedence, lowest first (house style rule 8):
//!
//! 1. built-in defaults (the `Default`/`serde(default)` values below),
//! 2. the volume named by the standard `rd.luks.uuid=` / `rd.luks.name=` kernel arguments,
//! 3. the TOML file in the initramfs (`/etc/attest-unlock/config.toml` or `--config`),
//! 4. the LUKS2 token of the device (the trustee pin config and our extension in it),
//! 5. the kernel command line, `rd.attest_unlock.KEY=VALUE` with a dotted KEY,
//! 6. the command line, `--set KEY=VALUE` and the dedicated flags.
//!
//! Every layer is a TOML table; tables merge key by key, any other value (arrays included)
//! is replaced whole by the higher layer. Only after merging is the result deserialized into
//! [`Config`], with `deny_unknown_fields`, so a typo in any layer is an error that names the key.
//!
//! **Who may set what.** The LUKS2 header is written by whoever holds the disk (in a
//! confidential VM, the host), so the token layer may only name *what* to fetch: the keys in
//! `TOKEN_KEYS`. Trust anchors (brokers and their CAs), every `insecure_*`, the measurement,
//! the TPM/TEE interfaces come only from measured layers: the initramfs file, the kernel
//! command line (measured by the boot; `trust_kernel_cmdline = false` in the file restricts it
//! to `UNMEASURED_CMDLINE_KEYS` where it is not) and `--set`. A token that sets anything else
//! is an error. The pin's own `servers` are used only when no measured layer names a broker
//! (a pure clevis drop-in), and then only with the trust-anchor measurement on, so a broker
//! that checks that register refuses evidence relayed by a broker the node was pointed at.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::{Table, Value};

/// Where the config file lives in the initramfs when `--config` is not given.
pub(crate) const DEFAULT_CONFIG_PATH: &str = "/etc/attest-unlock/config.toml";

/// Where a CA bundle is looked for when a server's `cert` is empty (the upstream pin then
/// trusts the system roots).
pub(crate) const SYSTEM_CA_BUNDLES: &[&str] = &[
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/certs/ca-certificates.crt",
];

/// The system CA bundle, used for a pin server whose `cert` is empty (the upstream pin trusts
/// the system roots then), if one of [`SYSTEM_CA_BUNDLES`] exists.
pub(crate) fn system_ca_bundle() -> Option<&'static str> {
    SYSTEM_CA_BUNDLES
        .iter()
        .copied()
        .find(|p| Path::new(p).exists())
}

/// The kernel command line prefix of our keys.
pub(crate) const CMDLINE_PREFIX: &str = "rd.attest_unlock.";

/// A configuration problem: found before anything is contacted or opened.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A layer is not valid TOML.
    #[error("invalid TOML in {origin}: {message}")]
    Syntax {
        /// Which layer (a file path, "kernel command line", "--set").
        origin: String,
        /// The parser's message.
        message: String,
    },
    /// The merged layers do not form a valid configuration.
    #[error("invalid configuration: {0}")]
    Invalid(String),
    /// An unmeasured layer (the LUKS2 token, or an unmeasured kernel command line) tried to
    /// set a key only measured layers may set.
    #[error("the {layer} may not set `{key}`: brokers, CAs, insecure_*, measurement and TPM/TEE settings come only from the initramfs config or the kernel command line (see docs/configuration.md)")]
    Forbidden {
        /// The layer.
        layer: &'static str,
        /// The dotted key.
        key: String,
    },
    /// A file is larger than any sane config, CA bundle or init-data document.
    #[error("{path} is larger than {limit} bytes")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The cap.
        limit: u64,
    },
    /// A CA certificate could not be loaded.
    #[error("cannot read CA certificate {path}: {source}")]
    CaCert {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Which evidence source to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Platform {
    /// Detect the platform; fail if none is found.
    #[default]
    Auto,
    /// A TPM 2.0 (discrete, firmware or virtual) without a TEE report.
    Tpm,
    /// AMD SEV-SNP (configfs-tsm or /dev/sev-guest).
    Snp,
    /// Intel TDX (configfs-tsm).
    Tdx,
    /// Azure SEV-SNP confidential VM: vTPM quote + HCL report (SNP report) + VCEK from IMDS.
    AzSnpVtpm,
    /// Azure TDX confidential VM: vTPM quote + HCL report + TD quote from IMDS.
    AzTdxVtpm,
    /// Google Cloud SEV-ES / Shielded VM: vTPM quote by the GCE AK, with its certificate.
    GcpVtpm,
}

impl Platform {
    /// The name used in config, logs and the verdict line.
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Auto => "auto",
            Platform::Tpm => "tpm",
            Platform::Snp => "snp",
            Platform::Tdx => "tdx",
            Platform::AzSnpVtpm => "az-snp-vtpm",
            Platform::AzTdxVtpm => "az-tdx-vtpm",
            Platform::GcpVtpm => "gcp-vtpm",
        }
    }
}

/// One key broker (a Trustee KBS).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Broker {
    /// Base URL, e.g. `https://kbs.example:8080`; the `/kbs/v0/...` paths are appended.
    pub url: String,
    /// The CA certificate(s) that sign the broker's TLS certificate: inline PEM, or a path
    /// to a PEM file. Only these roots are trusted; the system store never is.
    pub ca_cert: Option<String>,
}

impl Broker {
    /// The CA certificates as PEM text (reading the file when `ca_cert` is a path).
    pub fn ca_pem(&self) -> Result<Option<String>, ConfigError> {
        match &self.ca_cert {
            None => Ok(None),
            Some(v) if v.trim_start().starts_with("-----BEGIN") => Ok(Some(v.clone())),
            Some(path) => read_capped(Path::new(path)).map(Some).map_err(|e| match e {
                ConfigError::Read { path, source } => ConfigError::CaCert { path, source },
                e => e,
            }),
        }
    }

    /// The SHA-256 of each certificate's DER in `ca_cert`, in order (what
    /// `openssl x509 -noout -fingerprint -sha256` prints for one certificate): the CA's part of
    /// the measured trust anchors. Empty without a CA (an `http://` broker).
    pub(crate) fn ca_fingerprints(&self) -> Result<Vec<[u8; 32]>, ConfigError> {
        use sha2::{Digest, Sha256};
        let Some(pem) = self.ca_pem()? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for item in ureq::tls::parse_pem(pem.as_bytes()) {
            match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => out.push(Sha256::digest(c.der()).into()),
                Ok(_) => {}
                Err(e) => {
                    return Err(ConfigError::Invalid(format!(
                        "broker {}: ca_cert is not valid PEM: {e}",
                        crate::text::value(&self.url)
                    )))
                }
            }
        }
        if out.is_empty() {
            return Err(ConfigError::Invalid(format!(
                "broker {}: ca_cert holds no certificate",
                crate::text::value(&self.url)
            )));
        }
        Ok(out)
    }
}

/// The most any file the config names is read: config files, CA bundles and init-data
/// documents are kilobytes; a path to `/dev/zero` must not grow memory without bound.
pub(crate) const MAX_FILE_BYTES: u64 = 1 << 20;

/// Read a UTF-8 file of at most [`MAX_FILE_BYTES`].
pub(crate) fn read_capped(path: &Path) -> Result<String, ConfigError> {
    use std::io::Read;
    let read_err = |source| ConfigError::Read {
        path: path.to_owned(),
        source,
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes))
        .map_err(read_err)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(ConfigError::TooLarge {
            path: path.to_owned(),
            limit: MAX_FILE_BYTES,
        });
    }
    String::from_utf8(bytes).map_err(|_| {
        read_err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not UTF-8 text",
        ))
    })
}

/// How the disk key resource's bytes become the LUKS passphrase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum KeyFormat {
    /// `{"key_type":"oct","key":"..."}` (the trusted-execution-clusters operator's layout)
    /// when the resource is such a JSON object, raw bytes otherwise.
    #[default]
    Auto,
    /// The operator's JSON layout; anything else is an error.
    OperatorJson,
    /// The resource bytes are the passphrase.
    Raw,
    /// Trustee's provisioner confdata (TOML): the text of `io.cryptsetup.key.text.<tag>`.
    /// What `auto` uses for a `kbs+provisioner:///` reference.
    Confdata,
}

/// The LUKS2 volume to open.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Luks {
    /// The block device or image file holding the LUKS2 header.
    pub device: PathBuf,
    /// The device-mapper name to activate under (e.g. `root`).
    #[serde(default = "default_luks_name")]
    pub name: String,
    /// The keyslot the broker key opens. Naming it skips cryptsetup's trial of every slot,
    /// which costs seconds when an argon2 slot comes first. A trustee LUKS2 token names it.
    pub keyslot: Option<u32>,
    /// How long to wait for the device node to appear (udev in early boot), in milliseconds.
    #[serde(default = "default_device_timeout")]
    pub device_timeout_ms: u64,
}

fn default_device_timeout() -> u64 {
    90_000
}

fn default_luks_name() -> String {
    "root".to_owned()
}

/// A secret to fetch and write to a file.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Secret {
    /// Resource path at the broker, `repo/type/tag`.
    pub resource: String,
    /// Destination file. Its filesystem must be tmpfs/ramfs unless
    /// `insecure_allow_persistent_secrets` is set.
    pub path: PathBuf,
    /// File mode, as an integer (`0o600`) or an octal string (`"0600"`).
    #[serde(default = "default_mode", deserialize_with = "deserialize_mode")]
    pub mode: u32,
}

fn default_mode() -> u32 {
    0o600
}

fn deserialize_mode<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Mode {
        Int(u32),
        Str(String),
    }
    let mode = match Mode::deserialize(d)? {
        Mode::Int(m) => m,
        Mode::Str(s) => u32::from_str_radix(s.trim_start_matches("0o"), 8)
            .map_err(|_| serde::de::Error::custom(format!("mode {s:?} is not octal")))?,
    };
    if mode & !0o777 != 0 || mode & 0o077 != 0 {
        return Err(serde::de::Error::custom(format!(
            "mode {mode:o} must grant nothing to group or others (e.g. 0600 or 0400)"
        )));
    }
    Ok(mode)
}

/// The persistent handle the derived AK is kept at: in the TCG registry's range for
/// endorsement-hierarchy primary keys, clear of the EK handles (0x81010001, 0x81010002).
pub const DEFAULT_AK_CACHE_HANDLE: u32 = 0x8101_0020;

/// TPM access.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Tpm {
    /// TCTI configuration string, as tpm2-tools takes it (`device:/dev/tpmrm0`,
    /// `swtpm:host=127.0.0.1,port=2321`).
    pub tcti: String,
    /// A persistent AK handle (e.g. `0x81010002`, as Trustee's guest side uses). Without it
    /// the AK is a primary key in the endorsement hierarchy made from a fixed template, which
    /// is the same key on every boot of this TPM and needs no NV write.
    pub ak_handle: Option<u32>,
    /// Where the derived AK is kept after its first creation (0: nowhere, create it on every
    /// boot). A key found there is used only if it is exactly the derived primary.
    pub ak_cache_handle: u32,
    /// The TCG event log, sent with the quote when the file exists.
    pub event_log: PathBuf,
}

impl Default for Tpm {
    fn default() -> Self {
        Tpm {
            tcti: "device:/dev/tpmrm0".to_owned(),
            ak_handle: None,
            ak_cache_handle: DEFAULT_AK_CACHE_HANDLE,
            event_log: PathBuf::from("/sys/kernel/security/tpm0/binary_bios_measurements"),
        }
    }
}

/// TEE interfaces.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Tee {
    /// The configfs-tsm report directory.
    pub tsm_root: PathBuf,
    /// The SEV guest device (kernels without configfs-tsm).
    pub sev_guest: PathBuf,
    /// The SNP VMPL to request (0 unless the guest runs under an SVSM at a higher level).
    pub vmpl: u32,
    /// The TDX CCEL event log.
    pub ccel: PathBuf,
    /// With a TEE and a TPM both present, add the TPM quote as additional evidence, bound to
    /// the TEE report.
    pub composite: bool,
    /// The TDX RTMR the post-release measurement extends when there is no TPM (Linux >= 6.16
    /// exposes RTMR3 as a writable sysfs attribute taking a SHA-384 digest).
    pub rtmr: PathBuf,
    /// The TDX guest device, whose TDREPORT the quote generation service signs on the direct
    /// path.
    pub tdx_guest: PathBuf,
    /// The host's vsock port of the TDX quote generation service (QGS). With the TDX guest
    /// device present, quotes are asked of the service directly (milliseconds) instead of
    /// through configfs-tsm (about a second), which stays the fallback. 0: configfs-tsm only.
    pub qgs_port: u32,
}

impl Default for Tee {
    fn default() -> Self {
        Tee {
            tsm_root: PathBuf::from("/sys/kernel/config/tsm/report"),
            sev_guest: PathBuf::from("/dev/sev-guest"),
            vmpl: 0,
            ccel: PathBuf::from("/sys/firmware/acpi/tables/data/CCEL"),
            composite: true,
            rtmr: PathBuf::from("/sys/class/misc/tdx_guest/measurements/rtmr3:sha384"),
            tdx_guest: PathBuf::from("/dev/tdx_guest"),
            qgs_port: 4050,
        }
    }
}

/// Azure confidential VMs (`az-snp-vtpm`, `az-tdx-vtpm`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Azure {
    /// The Instance Metadata Service base URL (VCEK for SNP, TD quote for TDX). Azure's
    /// link-local address in production; tests point it at a fake on loopback.
    pub imds_url: String,
    /// How long to wait for the HCL report to carry the user data just written, in
    /// milliseconds. The report is re-read with short, growing pauses until it does (the
    /// public tools sleep a fixed 3 s instead).
    pub poll_timeout_ms: u64,
    /// Use the HCL report made at boot instead of writing the binding digest as its user data
    /// and waiting for a fresh one: the hardware report is then not bound to this session,
    /// only the vTPM quote is (evidence `version: 1`). Only for brokers whose policy accepts
    /// that; logged at warn.
    pub insecure_boot_report: bool,
}

impl Default for Azure {
    fn default() -> Self {
        Azure {
            imds_url: "http://169.254.169.254".to_owned(),
            poll_timeout_ms: 10_000,
            insecure_boot_report: false,
        }
    }
}

impl Azure {
    /// The user-data poll timeout.
    pub(crate) fn poll_timeout(&self) -> Duration {
        Duration::from_millis(self.poll_timeout_ms)
    }
}

/// Network timeouts.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// Per TCP+TLS connect, in milliseconds.
    pub connect_ms: u64,
    /// Per request (send and receive the whole reply), in milliseconds.
    pub request_ms: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect_ms: 5_000,
            request_ms: 30_000,
        }
    }
}

impl Timeouts {
    /// The connect timeout.
    pub fn connect(&self) -> Duration {
        Duration::from_millis(self.connect_ms)
    }
    /// The per-request timeout.
    pub fn request(&self) -> Duration {
        Duration::from_millis(self.request_ms)
    }
}

/// How often and how patiently to retry.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Retry {
    /// Rounds over all brokers before giving up; absent means keep trying (as Ignition does:
    /// a node whose broker is down waits for it rather than dropping to the emergency shell).
    pub max_rounds: Option<u32>,
    /// First backoff, in milliseconds; it doubles each round, with full jitter.
    pub initial_backoff_ms: u64,
    /// Backoff cap, in milliseconds.
    pub max_backoff_ms: u64,
    /// Give up once this much time has passed since the first attempt, in milliseconds
    /// (checked before each backoff). Absent: no deadline, as with `max_rounds`.
    pub deadline_ms: Option<u64>,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            max_rounds: None,
            initial_backoff_ms: 250,
            max_backoff_ms: 30_000,
            deadline_ms: None,
        }
    }
}

/// Post-release measurement.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Measure {
    /// Extend a PCR once secrets are released (on by default).
    pub enabled: bool,
    /// The SHA-256 PCR to extend (15, as systemd's volume-key measurement uses).
    pub pcr: u32,
    /// Append a line per measurement here (tmpfs), for verifiers replaying the PCR.
    pub log: PathBuf,
}

impl Default for Measure {
    fn default() -> Self {
        Measure {
            enabled: true,
            pcr: 15,
            log: PathBuf::from("/run/attest-unlock/measurements.log"),
        }
    }
}

/// Init-data sent with the attestation (hashed by the broker against HOST_DATA, MRCONFIGID or
/// PCR8).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct InitData {
    /// Inline TOML body.
    pub body: Option<String>,
    /// Or a file holding it.
    pub path: Option<PathBuf>,
}

/// The whole configuration of one run.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Evidence source.
    #[serde(default)]
    pub platform: Platform,
    /// Brokers, tried in order each round.
    #[serde(default)]
    pub brokers: Vec<Broker>,
    /// Resource path of the disk key, `repo/type/tag`.
    pub disk_key: Option<String>,
    /// How the disk key resource becomes the passphrase.
    #[serde(default)]
    pub disk_key_format: KeyFormat,
    /// The volume to open.
    pub luks: Option<Luks>,
    /// Other secrets to deliver.
    #[serde(default)]
    pub secrets: Vec<Secret>,
    /// TPM access.
    #[serde(default)]
    pub tpm: Tpm,
    /// TEE interfaces.
    #[serde(default)]
    pub tee: Tee,
    /// Azure confidential VMs.
    #[serde(default)]
    pub azure: Azure,
    /// Network timeouts.
    #[serde(default)]
    pub timeouts: Timeouts,
    /// Retry policy.
    #[serde(default)]
    pub retry: Retry,
    /// Post-release measurement.
    #[serde(default)]
    pub measure: Measure,
    /// Optional init-data.
    pub init_data: Option<InitData>,
    /// Where to write the broker's attestation token (EAR JWT), mode 0600, for later boot
    /// components. Same filesystem rule as secrets.
    pub token_path: Option<PathBuf>,
    /// Allow secret destinations on a persistent filesystem. Logged at warn.
    #[serde(default)]
    pub insecure_allow_persistent_secrets: bool,
    /// Allow `http://` broker URLs (no TLS). Logged at warn; tests of the fail-closed path only.
    #[serde(default)]
    pub insecure_allow_http: bool,
    /// Replace the URL of every broker (the operator's boot-time switch, usually given as
    /// `rd.attest_unlock.servers_url_override=URL`, e.g. when the broker moved). The CA stays
    /// as configured.
    pub servers_url_override: Option<String>,
    /// Write a short explanation of a failed unlock here (for the emergency shell).
    pub failure_report: Option<PathBuf>,
    /// Do nothing (`rd.attest_unlock.disable`: recover with a passphrase or key file).
    #[serde(default)]
    pub disable: bool,
    /// Debug logging (`rd.attest_unlock.verbose`).
    #[serde(default)]
    pub verbose: bool,
    /// Whether the boot measures the kernel command line (GRUB into PCR 8, systemd-stub into
    /// PCR 12, TDX into RTMR 2, SNP measured direct boot), so that it may set trust anchors.
    /// Set `false` in the initramfs file where it is not: the command line may then only set
    /// the keys of `UNMEASURED_CMDLINE_KEYS`.
    #[serde(default = "yes")]
    pub trust_kernel_cmdline: bool,
    /// Which layer set each security-relevant value (filled by [`Layers::resolve`]).
    #[serde(skip)]
    pub provenance: Provenance,
}

fn yes() -> bool {
    true
}

/// A configuration layer, lowest precedence first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum Layer {
    /// The built-in default.
    #[default]
    Default,
    /// `rd.luks.uuid=` / `rd.luks.name=` on the kernel command line.
    RdLuks,
    /// The config file in the initramfs.
    File,
    /// The LUKS2 token (the trustee pin config in the header).
    Token,
    /// `rd.attest_unlock.*` on the kernel command line.
    Cmdline,
    /// `--set` and the dedicated flags.
    Cli,
}

impl Layer {
    /// The layer's name in logs and errors.
    pub fn as_str(self) -> &'static str {
        match self {
            Layer::Default => "built-in default",
            Layer::RdLuks => "rd.luks.* kernel arguments",
            Layer::File => "initramfs config file",
            Layer::Token => "LUKS2 token",
            Layer::Cmdline => "kernel command line",
            Layer::Cli => "--set command line",
        }
    }
}

impl std::fmt::Display for Layer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The keys (dotted; a table's children included) the LUKS2 token may set: what to fetch and
/// where it goes, never whom to trust. The pin's `servers` are handled apart (see the module).
pub(crate) const TOKEN_KEYS: &[&str] = &[
    "disk_key",
    "disk_key_format",
    "luks.keyslot",
    "secrets",
    "token_path",
    "init_data.body",
    "retry.max_rounds",
];

/// The keys an unmeasured kernel command line (`trust_kernel_cmdline = false`) may set.
pub(crate) const UNMEASURED_CMDLINE_KEYS: &[&str] = &[
    "disable",
    "verbose",
    "retry",
    "timeouts",
    "luks.device_timeout_ms",
];

/// The boolean keys, which the kernel command line may give as a bare word
/// (`rd.attest_unlock.disable`) or as `=1`/`=0`/`=yes`/`=no`.
pub(crate) const BOOL_KEYS: &[&str] = &[
    "disable",
    "verbose",
    "insecure_allow_http",
    "insecure_allow_persistent_secrets",
    "measure.enabled",
    "tee.composite",
    "azure.insecure_boot_report",
    "trust_kernel_cmdline",
];

/// The security-relevant keys whose layer is recorded and logged.
pub(crate) const TRACKED_KEYS: &[&str] = &[
    "brokers",
    "servers_url_override",
    "insecure_allow_http",
    "insecure_allow_persistent_secrets",
    "azure.insecure_boot_report",
    "azure.imds_url",
    "measure.enabled",
    "measure.pcr",
    "measure.log",
    "tee.composite",
    "tpm.tcti",
    "tpm.ak_handle",
    "platform",
    "trust_kernel_cmdline",
];

/// Which layer set each of the `TRACKED_KEYS`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Provenance(BTreeMap<&'static str, Layer>);

impl Provenance {
    /// The layer that set `key` (the default when none did).
    pub fn of(&self, key: &str) -> Layer {
        self.0.get(key).copied().unwrap_or_default()
    }

    /// Whether the brokers came from the LUKS2 token (a clevis drop-in with no measured
    /// broker config).
    pub(crate) fn brokers_from_token(&self) -> bool {
        self.of("brokers") == Layer::Token
    }
}

/// The layers a configuration is built from, each optional, in precedence order.
#[derive(Debug, Default, Clone)]
pub struct Layers {
    /// The volume from `rd.luks.uuid=` / `rd.luks.name=` ([`luks_from_cmdline`]).
    pub rd_luks: Option<Table>,
    /// The config file, with its path for messages.
    pub file: Option<(String, Table)>,
    /// The LUKS2 token's settings (only `TOKEN_KEYS`).
    pub luks_token: Option<Table>,
    /// The brokers the LUKS2 token names (the pin's `servers`): used only when no measured
    /// layer names one.
    pub token_brokers: Option<Vec<Broker>>,
    /// `rd.attest_unlock.*` from the kernel command line.
    pub cmdline: Option<Table>,
    /// `--set` and dedicated CLI flags.
    pub cli: Table,
}

impl Layers {
    /// Check what each layer may set, merge the layers in precedence order and produce the
    /// typed config with the [`Provenance`] of its security-relevant values. Logs nothing:
    /// the caller logs [`Config::log_settings`] once for the config it uses.
    pub fn resolve(self) -> Result<Config, ConfigError> {
        if let Some(t) = &self.luks_token {
            check_allowed(t, TOKEN_KEYS, Layer::Token)?;
        }
        let trust_cmdline = [self.file.as_ref().map(|(_, t)| t), Some(&self.cli)]
            .into_iter()
            .flatten()
            .filter_map(|t| t.get("trust_kernel_cmdline"))
            .next_back()
            .map_or(Ok(true), |v| {
                v.as_bool().ok_or_else(|| {
                    ConfigError::Invalid("trust_kernel_cmdline must be true or false".into())
                })
            })?;
        if let Some(t) = &self.cmdline {
            if t.contains_key("trust_kernel_cmdline") {
                return Err(ConfigError::Forbidden {
                    layer: Layer::Cmdline.as_str(),
                    key: "trust_kernel_cmdline".into(),
                });
            }
            if !trust_cmdline {
                check_allowed(t, UNMEASURED_CMDLINE_KEYS, Layer::Cmdline)?;
            }
        }
        let ordered: [(Layer, Option<&Table>); 5] = [
            (Layer::RdLuks, self.rd_luks.as_ref()),
            (Layer::File, self.file.as_ref().map(|(_, t)| t)),
            (Layer::Token, self.luks_token.as_ref()),
            (Layer::Cmdline, self.cmdline.as_ref()),
            (Layer::Cli, Some(&self.cli)),
        ];
        let mut merged = Table::new();
        for (_, t) in &ordered {
            if let Some(t) = t {
                merge(&mut merged, (*t).clone());
            }
        }
        let mut provenance = Provenance::default();
        for key in TRACKED_KEYS {
            let path: Vec<&str> = key.split('.').collect();
            if let Some((layer, _)) = ordered
                .iter()
                .rev()
                .find(|(_, t)| t.is_some_and(|t| lookup(t, &path).is_some()))
            {
                provenance.0.insert(key, *layer);
            }
        }
        let measured_brokers = merged
            .get("brokers")
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty());
        let mut config = Config::deserialize(Value::Table(merged))
            .map_err(|e| ConfigError::Invalid(crate::text::value(&one_line(&e.to_string()))))?;
        if !measured_brokers {
            if let Some(brokers) = self.token_brokers {
                if !brokers.is_empty() {
                    config.brokers = brokers;
                    provenance.0.insert("brokers", Layer::Token);
                }
            }
        }
        if let Some(url) = &config.servers_url_override {
            for b in &mut config.brokers {
                b.url.clone_from(url);
            }
        }
        config.provenance = provenance;
        config.validate()?;
        Ok(config)
    }
}

/// The value at a dotted path of a table.
fn lookup<'a>(table: &'a Table, path: &[&str]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    let v = table.get(*first)?;
    if rest.is_empty() {
        return Some(v);
    }
    lookup(v.as_table()?, rest)
}

/// Refuse any key of `table` that is not one of `allowed` (dotted; an allowed key admits its
/// children, and a table is walked into when an allowed key lies below it).
fn check_allowed(table: &Table, allowed: &[&str], layer: Layer) -> Result<(), ConfigError> {
    fn walk(
        table: &Table,
        prefix: &str,
        allowed: &[&str],
        layer: Layer,
    ) -> Result<(), ConfigError> {
        for (k, v) in table {
            let key = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            if allowed.iter().any(|a| *a == key) {
                continue;
            }
            let below = format!("{key}.");
            match v {
                Value::Table(t) if allowed.iter().any(|a| a.starts_with(&below)) => {
                    walk(t, &key, allowed, layer)?;
                }
                _ => {
                    return Err(ConfigError::Forbidden {
                        layer: layer.as_str(),
                        key: crate::text::value(&key),
                    })
                }
            }
        }
        Ok(())
    }
    walk(table, "", allowed, layer)
}

/// Where a run reads its measured configuration from: the one injectable host both the CLI
/// and the clevis pin resolve through (tests point it at their own files).
#[derive(Debug, Clone)]
pub struct Host {
    /// The config file; `required` when named explicitly (`--config`, `$ATTEST_UNLOCK_CONFIG`).
    pub config_path: PathBuf,
    /// Whether a missing config file is an error.
    pub config_required: bool,
    /// The kernel command line file (`/proc/cmdline`).
    pub cmdline_path: PathBuf,
    /// `--set KEY=VALUE` overrides.
    pub set: Vec<String>,
    /// Where device and firmware paths are looked up (`--root`, `$ATTEST_UNLOCK_ROOT` for the
    /// pin): `/`, or a test root.
    pub root: PathBuf,
}

impl Default for Host {
    fn default() -> Self {
        Host {
            config_path: PathBuf::from(DEFAULT_CONFIG_PATH),
            config_required: false,
            cmdline_path: PathBuf::from("/proc/cmdline"),
            set: Vec::new(),
            root: PathBuf::from("/"),
        }
    }
}

impl Host {
    /// The kernel command line ("" when it cannot be read: a chroot, a test), at most
    /// [`MAX_FILE_BYTES`].
    pub fn cmdline(&self) -> String {
        read_capped(&self.cmdline_path).unwrap_or_default()
    }

    /// The measured layers (file, kernel command line with `rd.luks.*`, `--set`); the LUKS2
    /// token's layer is added once the token is read.
    pub fn layers(&self) -> Result<Layers, ConfigError> {
        let cmdline = self.cmdline();
        Ok(Layers {
            rd_luks: luks_from_cmdline(&cmdline),
            file: read_file_layer(&self.config_path, self.config_required)?,
            luks_token: None,
            token_brokers: None,
            cmdline: Some(parse_cmdline(&cmdline)?),
            cli: parse_overrides(self.set.iter().map(String::as_str), "--set")?,
        })
    }
}

/// Read the config file (at most [`MAX_FILE_BYTES`]); a missing file at the default path is
/// an empty layer.
pub(crate) fn read_file_layer(
    path: &Path,
    required: bool,
) -> Result<Option<(String, Table)>, ConfigError> {
    match read_capped(path) {
        Ok(text) => Ok(Some((
            path.display().to_string(),
            parse_table(&text, &path.display().to_string())?,
        ))),
        Err(ConfigError::Read { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound && !required =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Parse a TOML document into a table.
pub fn parse_table(text: &str, origin: &str) -> Result<Table, ConfigError> {
    text.parse::<Table>().map_err(|e| ConfigError::Syntax {
        origin: origin.to_owned(),
        message: crate::text::value(&one_line(e.message())),
    })
}

/// Parse `KEY=VALUE` overrides (from `--set` or the kernel command line) into a table.
///
/// KEY is dotted (`tpm.tcti`). VALUE is taken as a TOML value when it parses as one
/// (`true`, `3`, `"quoted"`, `[...]`), and as a plain string otherwise, so
/// `tpm.tcti=swtpm:port=2321` needs no quoting. A boolean key ([`BOOL_KEYS`]) also takes
/// `1`/`0`/`yes`/`no`/`on`/`off`.
pub(crate) fn parse_overrides<'a>(
    items: impl IntoIterator<Item = &'a str>,
    origin: &str,
) -> Result<Table, ConfigError> {
    let mut table = Table::new();
    for item in items {
        let Some((key, raw)) = item.split_once('=') else {
            return Err(ConfigError::Syntax {
                origin: origin.to_owned(),
                message: format!("{} is not KEY=VALUE", crate::text::value(item)),
            });
        };
        let mut value = format!("v = {raw}")
            .parse::<Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| Value::String(raw.to_owned()));
        if BOOL_KEYS.contains(&key) {
            value = coerce_bool(value);
        }
        let path: Vec<&str> = key.split('.').collect();
        if path.iter().any(|p| p.is_empty()) {
            return Err(ConfigError::Syntax {
                origin: origin.to_owned(),
                message: format!("{} is not a dotted key", crate::text::value(key)),
            });
        }
        insert_dotted(&mut table, &path, value, origin)?;
    }
    Ok(table)
}

/// `1`/`0`, `yes`/`no`, `on`/`off` as booleans (the kernel command line's usual spellings);
/// anything else unchanged, for the deserializer to judge.
fn coerce_bool(v: Value) -> Value {
    match &v {
        Value::Integer(1) => Value::Boolean(true),
        Value::Integer(0) => Value::Boolean(false),
        Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "yes" | "on" | "true" => Value::Boolean(true),
            "no" | "off" | "false" => Value::Boolean(false),
            _ => v,
        },
        _ => v,
    }
}

/// Pick our keys out of a kernel command line. Unrelated words are ignored; quoting follows
/// the kernel's rule (double quotes group a word). A bare `rd.attest_unlock.KEY` means
/// `KEY=true` (the documented switches `rd.attest_unlock.disable` and `.verbose`).
pub fn parse_cmdline(cmdline: &str) -> Result<Table, ConfigError> {
    let words = split_cmdline(cmdline);
    let ours: Vec<String> = words
        .iter()
        .filter_map(|w| w.strip_prefix(CMDLINE_PREFIX))
        .map(|w| {
            if w.contains('=') {
                w.to_owned()
            } else {
                format!("{w}=true")
            }
        })
        .collect();
    parse_overrides(ours.iter().map(String::as_str), "kernel command line")
}

/// The LUKS volume named by the standard dracut/systemd kernel arguments, as a config layer
/// (`luks.device`, `luks.name`): `rd.luks.name=UUID=NAME` or `rd.luks.uuid=[luks-]UUID`
/// (activated as `luks-UUID`, the name systemd-cryptsetup would give it). The first one wins;
/// the name is checked like any other ([`Config`] validation refuses option-like names).
pub fn luks_from_cmdline(cmdline: &str) -> Option<Table> {
    for w in split_cmdline(cmdline) {
        let (uuid, name) = if let Some(v) = w.strip_prefix("rd.luks.name=") {
            let (uuid, name) = v.split_once('=')?;
            (uuid.trim_start_matches("UUID=").to_owned(), name.to_owned())
        } else if let Some(v) = w.strip_prefix("rd.luks.uuid=") {
            let uuid = v
                .trim_start_matches("UUID=")
                .trim_start_matches("luks-")
                .to_owned();
            let name = format!("luks-{uuid}");
            (uuid, name)
        } else {
            continue;
        };
        if uuid.is_empty() || !uuid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
            continue;
        }
        let mut luks = Table::new();
        luks.insert(
            "device".into(),
            Value::String(format!("/dev/disk/by-uuid/{uuid}")),
        );
        luks.insert("name".into(), Value::String(name));
        let mut t = Table::new();
        t.insert("luks".into(), Value::Table(luks));
        return Some(t);
    }
    None
}

fn split_cmdline(cmdline: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in cmdline.chars() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    words
}

fn insert_dotted(
    table: &mut Table,
    path: &[&str],
    value: Value,
    origin: &str,
) -> Result<(), ConfigError> {
    match path {
        [] => Ok(()),
        [last] => {
            table.insert((*last).to_owned(), value);
            Ok(())
        }
        [first, rest @ ..] => {
            let entry = table
                .entry((*first).to_owned())
                .or_insert_with(|| Value::Table(Table::new()));
            match entry {
                Value::Table(t) => insert_dotted(t, rest, value, origin),
                _ => Err(ConfigError::Syntax {
                    origin: origin.to_owned(),
                    message: format!("{first} is not a table"),
                }),
            }
        }
    }
}

/// Merge `over` into `base`: tables recursively, everything else replaced.
pub fn merge(base: &mut Table, over: Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(Value::Table(b)), Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

impl Config {
    /// Checks that need the whole config.
    fn validate(&self) -> Result<(), ConfigError> {
        for b in &self.brokers {
            let https = b.url.starts_with("https://");
            let http_ok = self.insecure_allow_http && b.url.starts_with("http://");
            if !(https || http_ok) {
                return Err(ConfigError::Invalid(format!(
                    "broker url '{}' must start with https://",
                    crate::text::value(&b.url)
                )));
            }
            if b.url.len() > 2048 || b.url.chars().any(|c| c.is_control() || c == ' ') {
                return Err(ConfigError::Invalid(format!(
                    "broker url '{}' is not a URL",
                    crate::text::value(&b.url)
                )));
            }
            if https && b.ca_cert.is_none() {
                return Err(ConfigError::Invalid(format!(
                    "broker {} has no ca_cert: the system trust store is never used",
                    crate::text::value(&b.url)
                )));
            }
        }
        if let Some(luks) = &self.luks {
            validate_volume(luks)?;
        }
        if self.timeouts.connect_ms == 0 || self.timeouts.request_ms == 0 {
            return Err(ConfigError::Invalid(
                "timeouts.connect_ms and timeouts.request_ms must be at least 1 ms (0 would fail every call)".to_owned(),
            ));
        }
        if self.retry.deadline_ms == Some(0) {
            return Err(ConfigError::Invalid(
                "retry.deadline_ms must be at least 1 ms".to_owned(),
            ));
        }
        let mut seen = BTreeMap::new();
        for s in &self.secrets {
            validate_resource_path(&s.resource)?;
            if seen.insert(s.path.clone(), ()).is_some() {
                return Err(ConfigError::Invalid(format!(
                    "two secrets write to {}",
                    s.path.display()
                )));
            }
            if !s.path.is_absolute() {
                return Err(ConfigError::Invalid(format!(
                    "secret destination {} must be an absolute path",
                    s.path.display()
                )));
            }
        }
        if let Some(k) = &self.disk_key {
            validate_resource_path(k)?;
        }
        if let Some(i) = &self.init_data {
            if i.body.is_some() == i.path.is_some() {
                return Err(ConfigError::Invalid(
                    "init_data needs exactly one of body and path".to_owned(),
                ));
            }
        }
        if self.tee.vmpl > 3 {
            return Err(ConfigError::Invalid(format!(
                "tee.vmpl {} is not a VMPL (0-3)",
                self.tee.vmpl
            )));
        }
        let imds = &self.azure.imds_url;
        if !(imds.starts_with("http://") || imds.starts_with("https://")) {
            return Err(ConfigError::Invalid(format!(
                "azure.imds_url {imds:?} must start with http:// (or https://)"
            )));
        }
        if self.azure.poll_timeout_ms == 0 {
            return Err(ConfigError::Invalid(
                "azure.poll_timeout_ms must be at least 1 ms".to_owned(),
            ));
        }
        if self.measure.pcr > 23 {
            return Err(ConfigError::Invalid(format!(
                "measure.pcr {} is not a PCR (0-23)",
                self.measure.pcr
            )));
        }
        if self.retry.initial_backoff_ms == 0 || self.retry.max_backoff_ms == 0 {
            return Err(ConfigError::Invalid(
                "retry backoff must be at least 1 ms".to_owned(),
            ));
        }
        Ok(())
    }

    /// Log where the trust anchors come from, and every weakening setting with the layer that
    /// set it, at warn. Called once per run for the config in use.
    pub(crate) fn log_settings(&self) {
        let from = |key: &str| self.provenance.of(key);
        if !self.brokers.is_empty() {
            let urls: Vec<String> = self
                .brokers
                .iter()
                .map(|b| crate::text::value(&b.url))
                .collect();
            if from("brokers") == Layer::Token {
                for b in &self.brokers {
                    if let Some(bundle) = b
                        .ca_cert
                        .as_deref()
                        .filter(|c| SYSTEM_CA_BUNDLES.contains(c))
                    {
                        log::warn!(
                            "broker {} has an empty cert in the LUKS2 token: trusting the system CA bundle {bundle} (its certificates are part of the measured trust anchors)",
                            crate::text::value(&b.url)
                        );
                    }
                }
            }
            match from("brokers") {
                Layer::Token => log::warn!(
                    "brokers {} come from the LUKS2 token, which anyone with the disk can write: they are measured into the trust-anchor register before any contact, and only a broker policy that checks it refuses a relayed attestation (put the brokers in the initramfs config to pin them)",
                    urls.join(", ")
                ),
                layer @ (Layer::Cmdline | Layer::Cli) => log::warn!(
                    "brokers (URL and CA) replaced by the {layer}: {}",
                    urls.join(", ")
                ),
                layer => log::info!("brokers from the {layer}: {}", urls.join(", ")),
            }
        }
        let mut weak: Vec<(&str, String)> = Vec::new();
        if let Some(url) = &self.servers_url_override {
            weak.push((
                "servers_url_override",
                format!("every broker URL replaced by {}", crate::text::value(url)),
            ));
        }
        if self.insecure_allow_http {
            weak.push((
                "insecure_allow_http",
                "http:// brokers and AK registration allowed (no TLS)".into(),
            ));
        }
        if self.insecure_allow_persistent_secrets {
            weak.push((
                "insecure_allow_persistent_secrets",
                "secrets may land on a persistent disk".into(),
            ));
        }
        if self.azure.insecure_boot_report {
            weak.push((
                "azure.insecure_boot_report",
                "the HCL report is not bound to this session".into(),
            ));
        }
        if !self.measure.enabled {
            weak.push((
                "measure.enabled",
                "false: neither the trust anchors nor the release are measured".into(),
            ));
        }
        if self.measure.pcr != Measure::default().pcr {
            weak.push((
                "measure.pcr",
                format!(
                    "{} instead of {}: the broker's reference value must name it",
                    self.measure.pcr,
                    Measure::default().pcr
                ),
            ));
        }
        if !self.tee.composite {
            weak.push((
                "tee.composite",
                "false: the TPM's boot measurements are not sent beside the TEE report".into(),
            ));
        }
        if !self.trust_kernel_cmdline {
            log::info!(
                "trust_kernel_cmdline = false: the kernel command line may only set {}",
                UNMEASURED_CMDLINE_KEYS.join(", ")
            );
        }
        for (key, what) in weak {
            log::warn!("{key} (set by the {}): {what}", from(key));
        }
    }

    /// Checks needed before `unlock` (other subcommands need less).
    pub(crate) fn validate_for_unlock(&self, has_disk_key: bool) -> Result<(), ConfigError> {
        if self.brokers.is_empty() {
            return Err(ConfigError::Invalid("no broker configured".to_owned()));
        }
        if !has_disk_key && self.secrets.is_empty() {
            return Err(ConfigError::Invalid(
                "nothing to do: no disk key (disk_key or a trustee LUKS2 token) and no secrets"
                    .to_owned(),
            ));
        }
        if has_disk_key && self.luks.is_none() {
            return Err(ConfigError::Invalid(
                "a disk key needs a [luks] device (or rd.luks.uuid= on the kernel command line)"
                    .to_owned(),
            ));
        }
        Ok(())
    }

    /// The init-data body, if configured.
    pub(crate) fn init_data_body(&self) -> Result<Option<String>, ConfigError> {
        match &self.init_data {
            None => Ok(None),
            Some(InitData { body: Some(b), .. }) => Ok(Some(b.clone())),
            Some(InitData {
                path: Some(p),
                body: None,
            }) => read_capped(p).map(Some),
            Some(_) => Err(ConfigError::Invalid(
                "init_data needs exactly one of body and path".to_owned(),
            )),
        }
    }
}

/// Check the volume settings that reach cryptsetup's argv: the device must be an absolute
/// path and the name a device-mapper name that cannot be taken for an option
/// (`luks.name=--test-passphrase` would turn `open` into a test that activates nothing).
pub(crate) fn validate_volume(luks: &Luks) -> Result<(), ConfigError> {
    let name = &luks.name;
    let name_ok = !name.is_empty()
        && name.len() <= 127
        && !name.starts_with(['-', '.'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:+".contains(&b));
    if !name_ok {
        return Err(ConfigError::Invalid(format!(
            "luks.name '{}' is not a device-mapper name ([A-Za-z0-9_.:+-], not starting with - or ., at most 127 bytes)",
            crate::text::value(name)
        )));
    }
    let device = luks.device.as_os_str().as_encoded_bytes();
    let device_ok = luks.device.is_absolute()
        && device.len() <= 4096
        && !device.iter().any(|b| b.is_ascii_control());
    if !device_ok {
        return Err(ConfigError::Invalid(format!(
            "luks.device '{}' must be an absolute path",
            crate::text::value(&luks.device.to_string_lossy())
        )));
    }
    Ok(())
}

/// The scheme of a resource that Trustee's provisioner plugin serves
/// (`kbs+provisioner:///default/<uuid>/root`, fetched from `/kbs/v0/provisioner/...`).
pub(crate) const PROVISIONER_SCHEME: &str = "kbs+provisioner:///";

/// The `repo/type/tag` of a provisioner reference, if `p` is one.
pub(crate) fn provisioner_path(p: &str) -> Option<&str> {
    p.strip_prefix(PROVISIONER_SCHEME)
}

/// Check a resource path has the `repo/type/tag` shape (plain, or after
/// `PROVISIONER_SCHEME`) the KBS serves, with no empty
/// component, no `..` and only URL-safe characters, so it can be put in a URL as is.
pub fn validate_resource_path(p: &str) -> Result<(), ConfigError> {
    let parts: Vec<&str> = provisioner_path(p).unwrap_or(p).split('/').collect();
    let ok = parts.len() == 3
        && parts.iter().all(|c| {
            !c.is_empty()
                && *c != "."
                && *c != ".."
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        });
    if ok {
        Ok(())
    } else {
        Err(ConfigError::Invalid(format!(
            "resource path '{}' must be repo/type/tag of [A-Za-z0-9._-]",
            crate::text::value(p)
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
platform = "tpm"
disk_key = "default/node1/root"
[[brokers]]
url = "https://127.0.0.1:8080"
ca_cert = "-----BEGIN CERTIFICATE-----\n..."
[luks]
device = "/dev/vda4"
keyslot = 1
[[secrets]]
resource = "default/node1/kubelet"
path = "/run/kubelet/bootstrap.kubeconfig"
mode = "0400"
[tpm]
tcti = "device:/dev/tpmrm0"
"#;

    fn layers() -> Layers {
        Layers {
            file: Some(("test".into(), parse_table(FILE, "test").unwrap())),
            ..Layers::default()
        }
    }

    #[test]
    fn file_layer_parses() {
        let c = layers().resolve().unwrap();
        assert_eq!(c.platform, Platform::Tpm);
        assert_eq!(c.secrets[0].mode, 0o400);
        assert_eq!(c.luks.as_ref().unwrap().name, "root");
        assert_eq!(c.timeouts, Timeouts::default());
        c.validate_for_unlock(true).unwrap();
    }

    #[test]
    fn precedence_file_token_cmdline_cli() {
        let mut l = layers();
        l.luks_token =
            Some(parse_overrides(["luks.keyslot=2", "retry.max_rounds=1"], "t").unwrap());
        l.cmdline = Some(
            parse_cmdline(r#"quiet rd.attest_unlock.retry.max_rounds=7 rd.attest_unlock.tpm.tcti="swtpm:port=1 x" root=x"#)
                .unwrap(),
        );
        l.cli = parse_overrides(["tpm.tcti=swtpm:port=2321"], "--set").unwrap();
        let c = l.resolve().unwrap();
        assert_eq!(c.luks.unwrap().keyslot, Some(2), "token beats file");
        assert_eq!(c.retry.max_rounds, Some(7), "cmdline beats token");
        assert_eq!(c.tpm.tcti, "swtpm:port=2321", "cli beats cmdline");
    }

    fn rd_luks(cmdline: &str) -> Option<Luks> {
        let t = luks_from_cmdline(cmdline)?;
        Layers {
            rd_luks: Some(t),
            ..Layers::default()
        }
        .resolve()
        .ok()?
        .luks
    }

    #[test]
    fn luks_volume_from_standard_kernel_arguments() {
        let l = rd_luks("ro rd.luks.uuid=luks-0123-abcd rd.luks.uuid=ffff").unwrap();
        assert_eq!(l.device, PathBuf::from("/dev/disk/by-uuid/0123-abcd"));
        assert_eq!(l.name, "luks-0123-abcd");
        let l = rd_luks("rd.luks.name=0123-abcd=root").unwrap();
        assert_eq!(
            (l.name.as_str(), l.device.to_str()),
            ("root", Some("/dev/disk/by-uuid/0123-abcd"))
        );
        assert!(luks_from_cmdline("rd.luks.uuid=../../etc root=x").is_none());
        // The file's [luks] wins key by key over the kernel arguments.
        let mut l = layers();
        l.rd_luks = luks_from_cmdline("rd.luks.name=0123-abcd=other");
        let c = l.resolve().unwrap().luks.unwrap();
        assert_eq!(c.device, PathBuf::from("/dev/vda4"));
    }

    /// `luks.name` reaches cryptsetup's argv: an option-like name is refused from every layer
    /// (`rd.luks.name=UUID=--test-passphrase` made `open` a mere test that activated nothing).
    #[test]
    fn option_like_volume_names_are_refused() {
        let e = Layers {
            rd_luks: luks_from_cmdline("rd.luks.name=0123-abcd=--test-passphrase"),
            ..Layers::default()
        }
        .resolve()
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("luks.name") && e.contains("--test-passphrase"),
            "{e}"
        );
        for bad in ["luks.name=\"-x\"", "luks.name=\"a/b\"", "luks.name=\"\""] {
            let mut l = layers();
            l.cli = parse_overrides([bad], "--set").unwrap();
            assert!(l.resolve().is_err(), "{bad}");
        }
        let mut l = layers();
        l.cli = parse_overrides(["luks.device=\"--dev\""], "--set").unwrap();
        assert!(l.resolve().unwrap_err().to_string().contains("absolute"));
    }

    fn token(items: &[&str]) -> Option<Table> {
        Some(parse_overrides(items.iter().copied(), "token").unwrap())
    }

    #[test]
    fn the_token_may_name_what_to_fetch_only() {
        let mut l = layers();
        l.luks_token = token(&[
            "luks.keyslot=3",
            "secrets=[{resource=\"a/b/c\",path=\"/run/x\"}]",
            "token_path=\"/run/t\"",
            "init_data.body=\"x\"",
            "retry.max_rounds=2",
            "disk_key_format=\"raw\"",
        ]);
        let c = l.resolve().unwrap();
        assert_eq!(c.luks.unwrap().keyslot, Some(3));
        for forbidden in [
            "brokers=[{url=\"https://evil:1\",ca_cert=\"x\"}]",
            "insecure_allow_http=true",
            "insecure_allow_persistent_secrets=true",
            "measure.enabled=false",
            "measure.pcr=23",
            "servers_url_override=\"https://evil\"",
            "tpm.tcti=\"swtpm:host=evil\"",
            "luks.name=\"x\"",
            "luks.device=\"/dev/evil\"",
            "init_data.path=\"/dev/zero\"",
            "failure_report=\"/etc/shadow\"",
            "azure.imds_url=\"http://evil\"",
            "trust_kernel_cmdline=false",
            "platform=\"tpm\"",
        ] {
            let mut l = layers();
            l.luks_token = token(&[forbidden]);
            let e = l.resolve().unwrap_err();
            assert!(
                matches!(
                    e,
                    ConfigError::Forbidden {
                        layer: "LUKS2 token",
                        ..
                    }
                ),
                "{forbidden}: {e}"
            );
        }
    }

    fn evil_brokers() -> Option<Vec<Broker>> {
        Some(vec![Broker {
            url: "https://evil.example".into(),
            ca_cert: Some("-----BEGIN CERTIFICATE-----\nevil".into()),
        }])
    }

    #[test]
    fn token_brokers_only_without_measured_brokers() {
        let mut l = layers();
        l.token_brokers = evil_brokers();
        let c = l.resolve().unwrap();
        assert_eq!(
            c.brokers[0].url, "https://127.0.0.1:8080",
            "the file's broker wins"
        );
        assert_eq!(c.provenance.of("brokers"), Layer::File);

        let l = Layers {
            token_brokers: evil_brokers(),
            ..Layers::default()
        };
        let c = l.resolve().unwrap();
        assert_eq!(c.brokers[0].url, "https://evil.example");
        assert!(c.provenance.brokers_from_token());
    }

    #[test]
    fn an_unmeasured_kernel_command_line_may_not_set_anchors() {
        let mut l = layers();
        l.cli = parse_overrides(["trust_kernel_cmdline=false"], "--set").unwrap();
        l.cmdline = Some(
            parse_cmdline("rd.attest_unlock.verbose rd.attest_unlock.retry.max_rounds=3").unwrap(),
        );
        assert!(l.clone().resolve().unwrap().verbose);
        l.cmdline = Some(parse_cmdline("rd.attest_unlock.measure.enabled=0").unwrap());
        assert!(matches!(
            l.resolve().unwrap_err(),
            ConfigError::Forbidden {
                layer: "kernel command line",
                ..
            }
        ));
        // The command line cannot vouch for itself.
        let mut l = layers();
        l.cmdline = Some(parse_cmdline("rd.attest_unlock.trust_kernel_cmdline=1").unwrap());
        assert!(l.resolve().is_err());
    }

    #[test]
    fn provenance_names_the_layer_of_each_weakening() {
        let mut l = layers();
        l.cmdline = Some(
            parse_cmdline("rd.attest_unlock.measure.enabled=false rd.attest_unlock.measure.pcr=23")
                .unwrap(),
        );
        l.cli = parse_overrides(["insecure_allow_http=yes"], "--set").unwrap();
        let c = l.resolve().unwrap();
        assert!(!c.measure.enabled && c.insecure_allow_http);
        assert_eq!(c.provenance.of("measure.enabled"), Layer::Cmdline);
        assert_eq!(c.provenance.of("measure.pcr"), Layer::Cmdline);
        assert_eq!(c.provenance.of("insecure_allow_http"), Layer::Cli);
        assert_eq!(c.provenance.of("brokers"), Layer::File);
        assert_eq!(c.provenance.of("tpm.tcti"), Layer::File);
        assert_eq!(c.provenance.of("servers_url_override"), Layer::Default);
    }

    /// The documented switches work as bare words and as `=1`/`=0`.
    #[test]
    fn bare_and_numeric_boolean_switches() {
        for (cmdline, disable, verbose) in [
            ("rd.attest_unlock.disable", true, false),
            ("rd.attest_unlock.verbose", false, true),
            (
                "rd.attest_unlock.disable=1 rd.attest_unlock.verbose=0",
                true,
                false,
            ),
            (
                "rd.attest_unlock.disable=yes rd.attest_unlock.verbose=on",
                true,
                true,
            ),
        ] {
            let c = Layers {
                cmdline: Some(parse_cmdline(cmdline).unwrap()),
                ..Layers::default()
            }
            .resolve()
            .unwrap();
            assert_eq!((c.disable, c.verbose), (disable, verbose), "{cmdline}");
        }
    }

    #[test]
    fn zero_timeouts_are_refused() {
        for k in [
            "timeouts.connect_ms=0",
            "timeouts.request_ms=0",
            "retry.deadline_ms=0",
        ] {
            let mut l = layers();
            l.cli = parse_overrides([k], "--set").unwrap();
            let e = l.resolve().unwrap_err().to_string();
            assert!(e.contains("at least 1 ms"), "{k}: {e}");
        }
    }

    #[test]
    fn huge_and_hostile_values_are_cut_in_messages() {
        let big = format!(
            "brokers=[{{url=\"http://{}\x1b[2J\"}}]",
            "a".repeat(100_000)
        );
        let l = Layers {
            cli: parse_overrides([big.as_str()], "--set").unwrap(),
            ..Layers::default()
        };
        let e = l.resolve().unwrap_err().to_string();
        assert!(e.len() < 600, "{} bytes", e.len());
        assert!(!e.contains('\x1b'), "{e}");
    }

    #[test]
    fn files_are_read_with_a_cap() {
        let e = read_capped(Path::new("/dev/zero")).unwrap_err();
        assert!(matches!(e, ConfigError::TooLarge { .. }), "{e}");
        let e = read_file_layer(Path::new("/dev/zero"), true).unwrap_err();
        assert!(matches!(e, ConfigError::TooLarge { .. }), "{e}");
    }

    #[test]
    fn servers_url_override_replaces_every_broker_url() {
        let mut l = layers();
        l.cmdline = Some(
            parse_cmdline("rd.attest_unlock.servers_url_override=https://10.0.2.2:9").unwrap(),
        );
        let c = l.resolve().unwrap();
        assert!(c.brokers.iter().all(|b| b.url == "https://10.0.2.2:9"));
    }

    #[test]
    fn unknown_key_is_named() {
        let mut l = layers();
        l.cli = parse_overrides(["tpm.tctl=x"], "--set").unwrap();
        let e = l.resolve().unwrap_err().to_string();
        assert!(e.contains("tctl"), "{e}");
    }

    #[test]
    fn rejects_weak_modes_http_and_bad_paths() {
        for (k, frag) in [
            (
                "secrets=[{resource=\"a/b/c\",path=\"/run/x\",mode=\"0644\"}]",
                "group or others",
            ),
            ("brokers=[{url=\"http://127.0.0.1:1\"}]", "https://"),
            ("brokers=[{url=\"https://127.0.0.1:1\"}]", "ca_cert"),
            ("disk_key=\"a/../c\"", "repo/type/tag"),
            ("secrets=[{resource=\"a/b/c\",path=\"rel\"}]", "absolute"),
        ] {
            let l = Layers {
                cli: parse_overrides([k], "--set").unwrap(),
                ..Layers::default()
            };
            let e = l.resolve().unwrap_err().to_string();
            assert!(e.contains(frag), "{k}: {e}");
        }
    }

    #[test]
    fn override_syntax_errors_are_typed() {
        assert!(parse_overrides(["novalue"], "--set").is_err());
        assert!(parse_overrides(["a..b=1"], "--set").is_err());
        assert!(parse_overrides(["a=1", "a.b=2"], "--set").is_err());
    }
}
