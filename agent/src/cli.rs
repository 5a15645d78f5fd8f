//! Subcommands and their execution. `main` only parses, sets up logging and reports.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use clap::{Parser, Subcommand};
use kbs_types::TeePubKey;

use crate::config::{self, Config, ConfigError, Layers, DEFAULT_CONFIG_PATH};
use crate::error::Error;
use crate::evidence::{self, binding};
use crate::flow::{self, Options};
use crate::hw::tpm::Tpm;
use crate::kbs::key::EphemeralKey;
use crate::luks::Cryptsetup;

/// Attest this node to a key broker and unlock its LUKS2 root volume.
#[derive(Debug, Parser)]
#[command(name = "attest-unlock", version, about, long_about = None)]
pub struct Cli {
    /// Config file (TOML). Default: /etc/attest-unlock/config.toml when it exists.
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Override a config key (dotted, e.g. `tpm.tcti=swtpm:port=2321`); highest precedence.
    #[arg(long = "set", global = true, value_name = "KEY=VALUE")]
    pub set: Vec<String>,

    /// Kernel command line to read `rd.attest_unlock.*` keys from.
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        default_value = "/proc/cmdline"
    )]
    pub kernel_cmdline: PathBuf,

    /// Root under which /dev, /sys and the event log are looked up (for tests and chroots).
    #[arg(
        long,
        global = true,
        value_name = "DIR",
        default_value = "/",
        hide = true
    )]
    pub root: PathBuf,

    /// More log output (-v debug, -vv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Attest, fetch the disk key and secrets, unlock the volume, deliver the secrets.
    Unlock {
        /// Only check that the key opens the keyslot (`cryptsetup open --test-passphrase`);
        /// activate nothing.
        #[arg(long)]
        verify_only: bool,
    },
    /// Print the evidence JSON this node would send for a nonce (debugging, reference values).
    Evidence {
        /// The broker's nonce (standard base64), as in the auth challenge.
        #[arg(long)]
        nonce: String,
        /// The tee-pubkey JWK to bind (JSON); default: a fresh ephemeral key.
        #[arg(long, value_name = "JWK")]
        pubkey: Option<String>,
    },
    /// Print the platform this node would attest as.
    Detect,
    /// Print the attestation key's public key (for the broker's trusted AK list).
    Ak,
}

impl Cli {
    /// Build the configuration from every layer, in precedence order.
    pub fn load_config(&self) -> Result<Config, ConfigError> {
        let file = match &self.config {
            Some(p) => config::read_file_layer(p, true)?,
            None => config::read_file_layer(Path::new(DEFAULT_CONFIG_PATH), false)?,
        };
        let cmdline = match std::fs::read_to_string(&self.kernel_cmdline) {
            Ok(text) => Some(config::parse_cmdline(&text)?),
            // No /proc (a chroot, a test): no kernel layer.
            Err(_) => None,
        };
        let cli = config::parse_overrides(self.set.iter().map(String::as_str), "--set")?;
        let layers = Layers {
            file,
            // The LUKS2 token layer is filled by the token reader of the boot integration.
            luks_token: None,
            cmdline,
            cli,
        };
        let config = layers.resolve()?;
        if config.insecure_allow_persistent_secrets {
            log::warn!(
                "insecure_allow_persistent_secrets is set: secrets may land on a persistent disk"
            );
        }
        if config.insecure_allow_http {
            log::warn!("insecure_allow_http is set: http:// brokers are allowed");
        }
        Ok(config)
    }
}

/// How a run ended, for the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Done.
    Success,
    /// Failed; the verdict line says why.
    Failed,
}

/// Run a parsed command line. Output for the user goes to `out`; logs go through `log`.
pub fn run(cli: &Cli, out: &mut dyn Write) -> Result<Outcome, Error> {
    let config = cli.load_config()?;
    match &cli.command {
        Command::Unlock { verify_only } => Ok(unlock(cli, &config, *verify_only)),
        Command::Detect => {
            let d = evidence::detect(&config, &cli.root)?;
            write_out(out, &format!("{} ({})", d.platform.as_str(), d.detail));
            Ok(Outcome::Success)
        }
        Command::Ak => {
            let mut tpm = Tpm::open(&config.tpm.tcti).map_err(evidence::EvidenceError::from)?;
            let ak = tpm
                .ak_public(config.tpm.ak_handle)
                .map_err(evidence::EvidenceError::from)?;
            write_out(
                out,
                &format!(
                    "ak_public: {}\n{}",
                    STANDARD.encode(&ak.spki_der),
                    ak.pem.trim_end()
                ),
            );
            Ok(Outcome::Success)
        }
        Command::Evidence { nonce, pubkey } => {
            let key;
            let tee_pubkey: TeePubKey = match pubkey {
                Some(jwk) => serde_json::from_str(jwk).map_err(|e| {
                    ConfigError::Invalid(format!("--pubkey is not a tee-pubkey JWK: {e}"))
                })?,
                None => {
                    key = EphemeralKey::generate();
                    key.tee_pubkey()
                }
            };
            let detected = evidence::detect(&config, &cli.root)?;
            let mut source = evidence::source_for(&detected, &config, &cli.root);
            let rd = binding::report_data(nonce, &tee_pubkey, "")
                .map_err(|e| evidence::EvidenceError::Encode(e.to_string()))?;
            let ev = source.collect(&rd)?;
            let doc = serde_json::json!({
                "tee": source.tee(),
                "runtime-data": { "nonce": nonce, "tee-pubkey": tee_pubkey },
                "report-data": hex::encode(rd.0),
                "tee-evidence": { "primary_evidence": ev, "additional_evidence": "" },
            });
            let text = serde_json::to_string_pretty(&doc)
                .map_err(|e| evidence::EvidenceError::Encode(e.to_string()))?;
            write_out(out, &text);
            Ok(Outcome::Success)
        }
    }
}

fn write_out(out: &mut dyn Write, text: &str) {
    // A closed stdout (e.g. `| head`) is not worth failing over.
    let _ = writeln!(out, "{text}");
}

fn unlock(cli: &Cli, config: &Config, verify_only: bool) -> Outcome {
    let start = Instant::now();
    let detect_start = Instant::now();
    let detected = match evidence::detect(config, &cli.root) {
        Ok(d) => d,
        Err(e) => {
            verdict_failed("none", "detect", None, 0, start, &Error::from(e));
            return Outcome::Failed;
        }
    };
    let detect_time = detect_start.elapsed();
    log::info!(
        "platform {} ({})",
        detected.platform.as_str(),
        detected.detail
    );
    let mut source = evidence::source_for(&detected, config, &cli.root);
    let opts = Options { verify_only };
    match flow::run(config, source.as_mut(), &Cryptsetup::default(), &opts) {
        Ok(mut report) => {
            report
                .timings
                .0
                .insert(0, (flow::Step::Detect, detect_time));
            log::info!(
                "verdict=ok platform={} broker={} volume={} secrets={} attempts={} {} total={:.1}ms",
                detected.platform.as_str(),
                report.broker,
                report.volume,
                report.secrets,
                report.attempts,
                report.timings,
                start.elapsed().as_secs_f64() * 1e3
            );
            Outcome::Success
        }
        Err(f) => {
            verdict_failed(
                detected.platform.as_str(),
                f.step.as_str(),
                f.broker.as_deref(),
                f.attempts,
                start,
                &f.error,
            );
            Outcome::Failed
        }
    }
}

fn verdict_failed(
    platform: &str,
    step: &str,
    broker: Option<&str>,
    attempts: u32,
    start: Instant,
    error: &Error,
) {
    log::error!(
        "verdict=failed platform={platform} step={step} class={} broker={} attempts={attempts} total={:.1}ms reason=\"{}\" (nothing unlocked, no secret written)",
        error.class(),
        broker.unwrap_or("-"),
        start.elapsed().as_secs_f64() * 1e3,
        crate::error::chain(error),
    );
}
