//! Subcommands and their execution. `main` only parses, sets up logging and reports.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use clap::{Parser, Subcommand};
use kbs_types::TeePubKey;

use crate::config::{self, Config, ConfigError, Layers};
use crate::error::Error;
use crate::evidence::Platforms as _;
use crate::evidence::{self, binding};
use crate::flow::{self, Options};
use crate::hw::tpm::Tpm;
use crate::kbs::key::EphemeralKey;
use crate::luks::Cryptsetup;

/// Attest this node to a key broker and unlock its LUKS2 root volume.
#[derive(Debug, Parser)]
#[command(
    name = "attest-unlock",
    version,
    about,
    long_about = None,
    after_help = "Configuration layers, lowest first: built-in defaults < rd.luks.* < the config file < the LUKS2 token < rd.attest_unlock.* on the kernel command line < --set. The LUKS2 token may only name what to fetch (disk_key, disk_key_format, luks.keyslot, secrets, token_path, init_data.body, retry.max_rounds); brokers, CAs, insecure_*, measure.* and TPM/TEE settings come only from the config file, the kernel command line or --set. The log names the layer of every security-relevant value."
)]
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
        /// On failure, write a short explanation here (the initramfs unit shows it in the
        /// emergency shell).
        #[arg(long, value_name = "PATH")]
        failure_report: Option<PathBuf>,
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
    /// Print the PCR values (SHA-256 bank) to register at the broker: this boot's, replayed
    /// from the event log and compared with the TPM, and with `--replace` the next boot's
    /// after an update, with the events that make each value and the Trustee reference-value
    /// message that registers both.
    ReferenceValues {
        /// The TCG event log. Default: this node's (`tpm.event_log`), which must replay to the
        /// TPM's registers.
        #[arg(long, value_name = "PATH")]
        event_log: Option<PathBuf>,
        /// The PCRs the broker checks.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "4,7,14",
            value_name = "N,N.."
        )]
        pcrs: Vec<u32>,
        /// A file this boot measured and the file the update replaces it with (repeatable): an
        /// EFI application (shim, GRUB, systemd-boot, a UKI, the kernel) by its Authenticode
        /// digest, anything measured whole (the initrd, a GRUB-loaded file) by its digest.
        #[arg(long, num_args = 2, value_names = ["CURRENT", "NEXT"])]
        replace: Vec<PathBuf>,
        /// Do not compare the log with the TPM (a log copied off its node).
        #[arg(long)]
        offline: bool,
        /// A readable summary instead of JSON.
        #[arg(long)]
        text: bool,
    },
    /// Move the volume to a new disk key at the broker: attest once, fetch the current and the
    /// new key, add a keyslot for the new one, point the token (clevis `trustee`, or ours for
    /// a `disk_key` config) at it, remove the old keyslot. Every step leaves a token naming a
    /// keyslot that opens; a rerun finishes a rotation that was stopped.
    Rotate {
        /// The new key's resource path at the broker (`repository/type/tag`).
        #[arg(long, value_name = "PATH")]
        to: String,
    },
    /// Print the trust-anchor event this node measures before contacting a broker (brokers,
    /// CA fingerprints, resources, init-data) and the register values to require at the
    /// broker: the reference value that makes a relayed attestation fail.
    Anchors {
        /// The pin config (JSON, as in the Ignition config's `clevis.custom.config`), for a
        /// node bound with the clevis pin; a path or the JSON itself.
        #[arg(long, value_name = "JSON|PATH")]
        pin_config: Option<String>,
        /// Also print what `rotate --to PATH` measures when run on this node after its boot's
        /// unlock (the boot's anchors and the post-release event came first): the value the
        /// broker must accept for the rotation.
        #[arg(long, value_name = "PATH")]
        rotate_to: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

impl Cli {
    /// The host this command line describes: its config file, kernel command line and
    /// `--set` overrides.
    pub fn host(&self) -> config::Host {
        match &self.config {
            Some(p) => config::Host {
                config_path: p.clone(),
                config_required: true,
                cmdline_path: self.kernel_cmdline.clone(),
                set: self.set.clone(),
                root: self.root.clone(),
            },
            None => config::Host {
                cmdline_path: self.kernel_cmdline.clone(),
                set: self.set.clone(),
                root: self.root.clone(),
                ..config::Host::default()
            },
        }
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
    let layers = cli.host().layers()?;
    let config = layers.clone().resolve()?;
    if config.verbose && cli.verbose == 0 {
        log::set_max_level(log::LevelFilter::Debug);
    }
    if !matches!(cli.command, Command::Unlock { .. }) {
        config.log_settings();
    }
    match &cli.command {
        Command::Unlock {
            verify_only,
            failure_report,
        } => Ok(unlock(
            layers,
            config,
            &cli.root,
            *verify_only,
            failure_report.as_deref(),
        )),
        Command::Anchors {
            pin_config,
            rotate_to,
            json,
        } => {
            anchors(
                layers,
                pin_config.as_deref(),
                rotate_to.as_deref(),
                *json,
                out,
            )?;
            Ok(Outcome::Success)
        }
        Command::ReferenceValues {
            event_log,
            pcrs,
            replace,
            offline,
            text,
        } => {
            let log = match event_log {
                Some(p) => p.clone(),
                None => evidence::rooted(&cli.root, &config.tpm.event_log.to_string_lossy()),
            };
            let request = crate::refvalues::Request {
                log: &log,
                pcrs,
                replace,
                tpm: (!offline).then_some(config.tpm.tcti.as_str()),
                kbs: config.brokers.first().map(|b| b.url.as_str()),
            };
            let report = request.run()?;
            if *text {
                write_out(out, report.text().trim_end());
            } else {
                let json = serde_json::to_string_pretty(&report.json())
                    .map_err(|e| evidence::EvidenceError::Encode(e.to_string()))?;
                write_out(out, &json);
            }
            Ok(Outcome::Success)
        }
        Command::Rotate { to } => {
            let done =
                crate::rotate::rotate(layers, config, &cli.root, to, &Cryptsetup::default())?;
            write_out(out, &done.to_string());
            Ok(Outcome::Success)
        }
        Command::Detect => {
            let d = evidence::detect(&config, &cli.root)?;
            write_out(out, &format!("{} ({})", d.platform.as_str(), d.detail));
            Ok(Outcome::Success)
        }
        Command::Ak => {
            let mut tpm = Tpm::open(&config.tpm.tcti).map_err(evidence::EvidenceError::from)?;
            let ak = tpm
                .ak_public(&config.tpm)
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
            let (_, mut source) = evidence::Hardware { root: &cli.root }.detect(&config)?;
            let (ev, additional) = flow::collect(source.as_mut(), nonce, &tee_pubkey)?;
            let rd = binding::report_data(nonce, &tee_pubkey, &additional)
                .map_err(|e| evidence::EvidenceError::Encode(e.to_string()))?;
            let doc = serde_json::json!({
                "tee": source.tee(),
                "runtime-data": { "nonce": nonce, "tee-pubkey": tee_pubkey },
                "report-data": hex::encode(rd.0),
                "tee-evidence": { "primary_evidence": ev, "additional_evidence": additional },
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

/// What the verdict and the failure report need to know about a failed run.
struct FailureContext<'a> {
    platform: &'a str,
    step: &'a str,
    broker: Option<&'a str>,
    device: Option<String>,
    attempts: u32,
}

fn unlock(
    layers: Layers,
    config: Config,
    root: &Path,
    verify_only: bool,
    report: Option<&Path>,
) -> Outcome {
    let start = Instant::now();
    if config.disable {
        log::warn!("disabled (rd.attest_unlock.disable): nothing attested, nothing unlocked");
        return Outcome::Success;
    }
    let report = report
        .map(Path::to_path_buf)
        .or_else(|| config.failure_report.clone());
    let allow_persistent = config.insecure_allow_persistent_secrets;
    let cryptsetup = Cryptsetup::default();
    let device = config.luks.as_ref().map(|l| l.device.display().to_string());
    let node = flow::Node {
        volume: &cryptsetup,
        platforms: &evidence::Hardware { root },
        brokers: None,
    };
    match flow::unlock(layers, config, &node, &Options { verify_only }) {
        Ok(report) => {
            let line = crate::verdict::ok(&crate::verdict::Facts {
                platform: report.platform.map(crate::config::Platform::as_str),
                broker: Some(&report.broker),
                volume: Some(report.volume),
                secrets: Some(report.secrets),
                attempts: Some(report.attempts),
                timings: Some(report.timings.to_string()),
                total: Some(start.elapsed()),
                ..crate::verdict::Facts::default()
            });
            log::info!("{line}");
            Outcome::Success
        }
        Err(f) => {
            let ctx = FailureContext {
                platform: f.platform.map_or("-", crate::config::Platform::as_str),
                step: f.step.as_str(),
                broker: f.broker.as_deref(),
                device,
                attempts: f.attempts,
            };
            verdict_failed(&ctx, start, &f.error);
            if let Some(path) = &report {
                write_failure_report(
                    path,
                    &ctx,
                    &f.error,
                    f.hint.as_deref().map(String::as_str),
                    allow_persistent,
                );
            }
            Outcome::Failed
        }
    }
}

/// `attest-unlock anchors`: the trust-anchor event for this config (and pin config) and the
/// register values a broker must require.
fn anchors(
    mut layers: Layers,
    pin_config: Option<&str>,
    rotate_to: Option<&str>,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), Error> {
    let pin = match pin_config {
        None => None,
        Some(arg) => {
            let text = if arg.trim_start().starts_with('{') {
                arg.to_owned()
            } else {
                config::read_capped(Path::new(arg))?
            };
            let mut pin = crate::clevis::PinConfig::parse(&text)?;
            // As encrypt stores it: the init-data document made from the JSON map.
            if let Some(i) = &pin.initdata {
                pin.initdata = Some(crate::clevis::initdata_document(i)?);
            }
            pin.add_to(&mut layers, config::system_ca_bundle())?;
            Some(pin)
        }
    };
    let config = layers.resolve()?;
    let disk = pin
        .as_ref()
        .map(|p| p.path.as_str())
        .or(config.disk_key.as_deref());
    let paths = flow::resource_paths(&config, disk);
    let init_data = flow::init_data_for(&config, &paths)?;
    let anchors = flow::trust_anchors(&config, &paths, init_data.as_deref())?;
    let pcr = config.measure.pcr;
    let values = anchors.register_values(pcr);
    // The rotation on the booted node: its own event after the boot's and the release.
    let rotation = match (rotate_to, disk) {
        (None, _) => None,
        (Some(_), None) => {
            return Err(ConfigError::Invalid(
                "--rotate-to needs the disk key's current path (disk_key, or --pin-config)".into(),
            )
            .into())
        }
        (Some(to), Some(current)) => {
            config::validate_resource_path(to)?;
            let paths = crate::rotate::fetched(current, to, None);
            let init_data = flow::init_data_for(&config, &paths)?;
            let event = flow::trust_anchors(&config, &paths, init_data.as_deref())?;
            let values = event.register_values_after(pcr, &[anchors.event(), flow::RELEASE_EVENT]);
            Some((event, values))
        }
    };
    let map = |values: &[(String, String)]| -> serde_json::Map<String, serde_json::Value> {
        values
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect()
    };
    if json {
        let mut doc = serde_json::json!({
            "event": anchors.text(),
            "brokers_from": config.provenance.of("brokers").as_str(),
            "measured": config.measure.enabled,
            "registers": map(&values),
        });
        if let Some((event, values)) = &rotation {
            doc["rotation"] = serde_json::json!({"event": event.text(), "registers": map(values)});
        }
        let text = serde_json::to_string_pretty(&doc)
            .map_err(|e| evidence::EvidenceError::Encode(e.to_string()))?;
        write_out(out, &text);
        return Ok(());
    }
    let mut text =
        String::from("# the trust-anchor event (extended before the first network byte)\n");
    text.push_str(anchors.text());
    text.push_str(&format!(
        "# brokers from the {}{}\n# register values after this event as the only extend from zero:\n",
        config.provenance.of("brokers"),
        if config.measure.enabled { "" } else { " (measure.enabled = false: NOT measured)" }
    ));
    for (register, value) in &values {
        text.push_str(&format!("{register} {value}\n"));
    }
    let sha256 = |values: &[(String, String)]| {
        values
            .iter()
            .find(|(r, _)| r == &format!("pcr{pcr:02}:sha256"))
            .map(|(_, v)| v.clone())
    };
    if let Some(v) = sha256(&values) {
        text.push_str(&format!(
            "# Trustee: kbs-client config set-sample-reference-value tpm_pcr{pcr:02} {v}\n# and require it in the attestation policy (see docs/deploying.md)\n"
        ));
    }
    if let Some((event, values)) = &rotation {
        text.push_str("# `rotate` on this node after its boot's unlock extends, after the boot's event and the post-release event:\n");
        text.push_str(event.text());
        text.push_str("# register values then (accept them for the rotation's paths only):\n");
        for (register, value) in values {
            text.push_str(&format!("{register} {value}\n"));
        }
    }
    write_out(out, text.trim_end());
    Ok(())
}

/// What to check, per error class: the first thing an on-call engineer should look at.
fn hint(class: crate::ErrorClass) -> &'static str {
    use crate::ErrorClass as C;
    match class {
        C::Config => "the attest-unlock config / pin config / kernel arguments (rd.attest_unlock.*)",
        C::Evidence => "that the TPM/TEE is present and enabled for this VM (ls /dev/tpmrm0)",
        C::Transport => "network (ip a), the broker URL, and that the broker's certificate is signed by the configured CA",
        C::BrokerUnavailable => "the broker's health; it answered 5xx",
        C::BrokerDenied => "the broker's log for this session: is this node's AK in trusted_aks, do its PCRs match the reference values, does the resource policy allow it",
        C::ProtocolMismatch => "the broker's version: it must speak KBS protocol 0.4.0",
        C::BadReply => "the broker's version and the resource's format",
        C::Jwe => "the broker: the secret was not encrypted to this boot's key",
        C::Luks => "the LUKS2 header (cryptsetup luksDump): the trustee token and its keyslot",
        C::Deliver => "the secret destinations: they must be on tmpfs and writable",
    }
}

fn write_failure_report(
    path: &Path,
    ctx: &FailureContext<'_>,
    error: &Error,
    since: Option<&str>,
    allow_persistent: bool,
) {
    let mut text = format!(
        "attest-unlock: boot stopped: the root disk was NOT unlocked and no secret was written.\n\
         \x20 device:   {}\n\
         \x20 broker:   {}\n\
         \x20 step:     {} (attempts {})\n\
         \x20 class:    {}\n\
         \x20 reason:   {}\n\
         \x20 check:    {}\n\
         \x20 journal:  journalctl -u attest-unlock.service\n",
        ctx.device.as_deref().map_or("-".into(), crate::text::value),
        ctx.broker.map_or("-".into(), crate::text::value),
        ctx.step,
        ctx.attempts,
        error.class(),
        crate::error::chain(error),
        hint(error.class()),
    );
    if let Some(h) = since {
        text.push_str(&format!(
            "\x20 since:    {h} (a hint from the LUKS2 header, which the host can write)\n"
        ));
    }
    if let Err(e) = crate::deliver::write_run_file(path, text.as_bytes(), false, allow_persistent) {
        log::warn!("cannot write the failure report: {e}");
    }
}

fn verdict_failed(ctx: &FailureContext<'_>, start: Instant, error: &Error) {
    let line = crate::verdict::failed(
        &crate::verdict::Facts {
            platform: Some(ctx.platform),
            step: Some(ctx.step),
            broker: ctx.broker,
            device: ctx.device.as_deref(),
            attempts: Some(ctx.attempts),
            total: Some(start.elapsed()),
            ..crate::verdict::Facts::default()
        },
        error,
    );
    log::error!("{line}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kbs::KbsError;

    /// The explainer for several faults: one short block naming device, broker, step, class,
    /// reason and the next thing to check.
    #[test]
    fn failure_report_renders_for_several_faults() {
        let broker = "https://kbs.example:8080";
        let cases: Vec<(Error, &str, &str)> = vec![
            (
                KbsError::Transport {
                    broker: broker.into(),
                    step: "auth",
                    message: "connection refused (broker not listening?)".into(),
                }
                .into(),
                "transport",
                "network",
            ),
            (
                KbsError::Denied {
                    broker: broker.into(),
                    step: "resource",
                    kind: "PolicyDeny".into(),
                    detail: "Access denied by policy".into(),
                }
                .into(),
                "broker-denied",
                "trusted_aks",
            ),
            (
                crate::luks::LuksError::KeyRejected {
                    device: "/dev/vda4".into(),
                    slot: " keyslot 1".into(),
                }
                .into(),
                "luks",
                "luksDump",
            ),
            (
                crate::evidence::EvidenceError::NoPlatform {
                    wanted: "snp".into(),
                    checked: "configfs-tsm at /sys/kernel/config/tsm/report".into(),
                }
                .into(),
                "evidence",
                "TPM/TEE",
            ),
        ];
        // The report is written to tmpfs only.
        let dir = tempfile::tempdir_in("/dev/shm").unwrap();
        for (i, (error, class, hint_word)) in cases.iter().enumerate() {
            let path = dir.path().join(format!("failure-{i}"));
            let ctx = FailureContext {
                platform: "tpm",
                step: "fetch",
                broker: Some(broker),
                device: Some("/dev/disk/by-uuid/abcd".into()),
                attempts: 3,
            };
            write_failure_report(&path, &ctx, error, None, false);
            let text = std::fs::read_to_string(&path).unwrap();
            let lines: Vec<&str> = text.lines().collect();
            assert!(
                lines[0].starts_with("attest-unlock: boot stopped"),
                "{text}"
            );
            assert!(lines.len() <= 8, "one short block: {text}");
            assert!(text.contains(&format!("class:    {class}\n")), "{text}");
            assert!(
                text.contains("/dev/disk/by-uuid/abcd") && text.contains(broker),
                "{text}"
            );
            assert!(text.contains("(attempts 3)"), "{text}");
            let check = lines
                .iter()
                .find(|l| l.trim_start().starts_with("check:"))
                .unwrap();
            assert!(check.contains(hint_word), "{class}: {check}");
        }
    }
}
