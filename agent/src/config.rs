//! The one typed configuration and the sources it is layered from.
//!
//! Precedence, lowest first (house style rule 8):
//!
//! 1. built-in defaults (the `Default`/`serde(default)` values below),
//! 2. the TOML file in the initramfs (`/etc/attest-unlock/config.toml` or `--config`),
//! 3. the LUKS2 token of the device (a TOML table; the token reader fills this layer),
//! 4. the kernel command line, `rd.attest_unlock.KEY=VALUE` with a dotted KEY,
//! 5. the command line, `--set KEY=VALUE` and the dedicated flags.
//!
//! Every layer is a TOML table; tables merge key by key, any other value (arrays included)
//! is replaced whole by the higher layer. Only after merging is the result deserialized into
//! [`Config`], with `deny_unknown_fields`, so a typo in any layer is an error that names the key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::{Table, Value};

/// Where the config file lives in the initramfs when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/attest-unlock/config.toml";

/// The kernel command line prefix of our keys.
pub const CMDLINE_PREFIX: &str = "rd.attest_unlock.";

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
            Some(path) => {
                std::fs::read_to_string(path)
                    .map(Some)
                    .map_err(|source| ConfigError::CaCert {
                        path: PathBuf::from(path),
                        source,
                    })
            }
        }
    }
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
    /// The TCG event log, sent with the quote when the file exists.
    pub event_log: PathBuf,
}

impl Default for Tpm {
    fn default() -> Self {
        Tpm {
            tcti: "device:/dev/tpmrm0".to_owned(),
            ak_handle: None,
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
    pub fn poll_timeout(&self) -> Duration {
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
}

/// The layers a configuration is built from, each optional, in precedence order.
#[derive(Debug, Default, Clone)]
pub struct Layers {
    /// The config file, with its path for messages.
    pub file: Option<(String, Table)>,
    /// The LUKS2 token's settings.
    pub luks_token: Option<Table>,
    /// `rd.attest_unlock.*` from the kernel command line.
    pub cmdline: Option<Table>,
    /// `--set` and dedicated CLI flags.
    pub cli: Table,
}

impl Layers {
    /// Merge the layers in precedence order and produce the typed config.
    pub fn resolve(self) -> Result<Config, ConfigError> {
        let mut merged = Table::new();
        if let Some((_, t)) = self.file {
            merge(&mut merged, t);
        }
        if let Some(t) = self.luks_token {
            merge(&mut merged, t);
        }
        if let Some(t) = self.cmdline {
            merge(&mut merged, t);
        }
        merge(&mut merged, self.cli);
        let mut config = Config::deserialize(Value::Table(merged))
            .map_err(|e| ConfigError::Invalid(one_line(&e.to_string())))?;
        if let Some(url) = &config.servers_url_override {
            for b in &mut config.brokers {
                b.url.clone_from(url);
            }
        }
        config.validate()?;
        Ok(config)
    }
}

/// Read the config file; a missing file at the default path is an empty layer.
pub fn read_file_layer(
    path: &Path,
    required: bool,
) -> Result<Option<(String, Table)>, ConfigError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some((
            path.display().to_string(),
            parse_table(&text, &path.display().to_string())?,
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => Ok(None),
        Err(source) => Err(ConfigError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Parse a TOML document into a table.
pub fn parse_table(text: &str, origin: &str) -> Result<Table, ConfigError> {
    text.parse::<Table>().map_err(|e| ConfigError::Syntax {
        origin: origin.to_owned(),
        message: one_line(e.message()),
    })
}

/// Parse `KEY=VALUE` overrides (from `--set` or the kernel command line) into a table.
///
/// KEY is dotted (`tpm.tcti`). VALUE is taken as a TOML value when it parses as one
/// (`true`, `3`, `"quoted"`, `[...]`), and as a plain string otherwise, so
/// `tpm.tcti=swtpm:port=2321` needs no quoting.
pub fn parse_overrides<'a>(
    items: impl IntoIterator<Item = &'a str>,
    origin: &str,
) -> Result<Table, ConfigError> {
    let mut table = Table::new();
    for item in items {
        let Some((key, raw)) = item.split_once('=') else {
            return Err(ConfigError::Syntax {
                origin: origin.to_owned(),
                message: format!("{item:?} is not KEY=VALUE"),
            });
        };
        let value = format!("v = {raw}")
            .parse::<Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| Value::String(raw.to_owned()));
        let path: Vec<&str> = key.split('.').collect();
        if path.iter().any(|p| p.is_empty()) {
            return Err(ConfigError::Syntax {
                origin: origin.to_owned(),
                message: format!("{key:?} is not a dotted key"),
            });
        }
        insert_dotted(&mut table, &path, value, origin)?;
    }
    Ok(table)
}

/// Pick our keys out of a kernel command line. Unrelated words are ignored; quoting follows
/// the kernel's rule (double quotes group a word).
pub fn parse_cmdline(cmdline: &str) -> Result<Table, ConfigError> {
    let words = split_cmdline(cmdline);
    let ours: Vec<&str> = words
        .iter()
        .filter_map(|w| w.strip_prefix(CMDLINE_PREFIX))
        .collect();
    parse_overrides(ours, "kernel command line")
}

/// The LUKS volume named by the standard dracut/systemd kernel arguments: `rd.luks.name=UUID=NAME`
/// or `rd.luks.uuid=[luks-]UUID` (activated as `luks-UUID`, the name systemd-cryptsetup would
/// give it). The first one wins.
pub fn luks_from_cmdline(cmdline: &str) -> Option<Luks> {
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
        return Some(Luks {
            device: PathBuf::from(format!("/dev/disk/by-uuid/{uuid}")),
            name,
            keyslot: None,
            device_timeout_ms: default_device_timeout(),
        });
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
                    "broker url {:?} must start with https://",
                    b.url
                )));
            }
            if https && b.ca_cert.is_none() {
                return Err(ConfigError::Invalid(format!(
                    "broker {} has no ca_cert: the system trust store is never used",
                    b.url
                )));
            }
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

    /// Checks needed before `unlock` (other subcommands need less).
    pub fn validate_for_unlock(&self, has_disk_key: bool) -> Result<(), ConfigError> {
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
    pub fn init_data_body(&self) -> Result<Option<String>, ConfigError> {
        match &self.init_data {
            None => Ok(None),
            Some(InitData { body: Some(b), .. }) => Ok(Some(b.clone())),
            Some(InitData {
                path: Some(p),
                body: None,
            }) => std::fs::read_to_string(p)
                .map(Some)
                .map_err(|source| ConfigError::Read {
                    path: p.clone(),
                    source,
                }),
            Some(_) => Err(ConfigError::Invalid(
                "init_data needs exactly one of body and path".to_owned(),
            )),
        }
    }
}

/// Check a resource path has the `repo/type/tag` shape the KBS serves, with no empty
/// component, no `..` and only URL-safe characters, so it can be put in a URL as is.
pub fn validate_resource_path(p: &str) -> Result<(), ConfigError> {
    let parts: Vec<&str> = p.split('/').collect();
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
            "resource path {p:?} must be repo/type/tag of [A-Za-z0-9._-]"
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
        l.luks_token = Some(parse_overrides(["luks.keyslot=2", "tpm.ak_handle=1"], "t").unwrap());
        l.cmdline = Some(
            parse_cmdline(r#"quiet rd.attest_unlock.tpm.ak_handle=0x81010002 rd.attest_unlock.tpm.tcti="swtpm:port=1 x" root=x"#)
                .unwrap(),
        );
        l.cli = parse_overrides(["tpm.tcti=swtpm:port=2321"], "--set").unwrap();
        let c = l.resolve().unwrap();
        assert_eq!(c.luks.unwrap().keyslot, Some(2), "token beats file");
        assert_eq!(c.tpm.ak_handle, Some(0x81010002), "cmdline beats token");
        assert_eq!(c.tpm.tcti, "swtpm:port=2321", "cli beats cmdline");
    }

    #[test]
    fn luks_volume_from_standard_kernel_arguments() {
        let l = luks_from_cmdline("ro rd.luks.uuid=luks-0123-abcd rd.luks.uuid=ffff").unwrap();
        assert_eq!(l.device, PathBuf::from("/dev/disk/by-uuid/0123-abcd"));
        assert_eq!(l.name, "luks-0123-abcd");
        let l = luks_from_cmdline("rd.luks.name=0123-abcd=root").unwrap();
        assert_eq!(
            (l.name.as_str(), l.device.to_str()),
            ("root", Some("/dev/disk/by-uuid/0123-abcd"))
        );
        assert!(luks_from_cmdline("rd.luks.uuid=../../etc root=x").is_none());
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
