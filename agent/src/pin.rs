//! `clevis-encrypt-trustee` and `clevis-decrypt-trustee`: the binary run under the pin's names.
//!
//! clevis runs `clevis-encrypt-trustee CONFIG` with the plaintext on stdin and expects a
//! compact JWE on stdout; `clevis-decrypt-trustee` gets the JWE on stdin and prints the
//! plaintext. Both attest to the pin's servers exactly as `unlock` does (same evidence, same
//! retry policy, same fail-closed rules). Settings that are not in the pin config (TPM access,
//! timeouts) come from the usual layers: the config file (`$ATTEST_UNLOCK_CONFIG` or
//! `/etc/attest-unlock/config.toml`), the pin config itself (the LUKS-token layer) and the
//! kernel command line.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use zeroize::Zeroizing;

use crate::clevis::{self, ClevisJwe, PinConfig, PinKey};
use crate::config::{Config, ConfigError, Host};
use crate::error::Error;
use crate::evidence;
use crate::flow;

/// The environment variable naming the config file for the pin (clevis passes no options).
pub(crate) const CONFIG_ENV: &str = "ATTEST_UNLOCK_CONFIG";

/// Largest stdin we accept (a LUKS passphrase or a JWE of one).
const MAX_INPUT: u64 = 1 << 20;

/// The environment variable naming the root device and firmware paths are looked up under
/// (what `--root` is for the CLI; tests point it at a fake system). Debug builds only.
pub(crate) const ROOT_ENV: &str = "ATTEST_UNLOCK_ROOT";

/// The pin's host: the root (`/`, or `$ATTEST_UNLOCK_ROOT` in a debug build), `/proc/cmdline`,
/// and the config file: in the initramfs (the root holds `/etc/initrd-release`) always the
/// initramfs's own, measured with it; on a booted system `$ATTEST_UNLOCK_CONFIG` (required
/// when set) or the default path.
fn host() -> Host {
    let mut host = Host::default();
    if let Some(root) = std::env::var_os(ROOT_ENV) {
        // A test hook only: the environment of a service can come from the unmeasured kernel
        // command line (`systemd.setenv=`), and the root decides which devices are the TEE.
        if cfg!(debug_assertions) {
            host.root = PathBuf::from(root);
        } else {
            log::warn!("{ROOT_ENV} is ignored in a release build (a test hook)");
        }
    }
    if let Some(p) = std::env::var_os(CONFIG_ENV) {
        if in_initramfs(&host.root) {
            // Ignition's disks stage runs the pin in the initramfs, where `systemd.setenv=` on
            // the unmeasured kernel command line reaches every unit's environment: a config
            // named there could replace the brokers and CAs the initramfs pins.
            log::warn!(
                "{CONFIG_ENV} is ignored in the initramfs: the config is {}",
                host.config_path.display()
            );
        } else {
            host.config_path = PathBuf::from(p);
            host.config_required = true;
        }
    }
    host
}

/// Whether `root` is an initramfs: systemd's marker file, part of the measured image.
fn in_initramfs(root: &Path) -> bool {
    root.join("etc/initrd-release").exists()
}

/// The config for a pin config: the measured layers, with the pin config as the LUKS2-token
/// layer (its servers used only when no measured layer names a broker).
fn resolve(host: &Host, pin: &PinConfig) -> Result<Config, Error> {
    let mut layers = host.layers()?;
    pin.add_to(&mut layers, crate::config::system_ca_bundle())?;
    let config = layers.resolve()?;
    config.log_settings();
    Ok(config)
}

fn read_stdin() -> Result<Zeroizing<Vec<u8>>, Error> {
    let mut buf = Zeroizing::new(Vec::new());
    std::io::stdin()
        .take(MAX_INPUT)
        .read_to_end(&mut buf)
        .map_err(|e| clevis::ClevisError::Jwe(format!("cannot read stdin: {e}")))?;
    Ok(buf)
}

/// Attest and fetch the pin's key resource. A failure is reported by `main` (one verdict).
fn fetch_key(config: &Config, prepared: &mut flow::Prepared, path: &str) -> Result<PinKey, Error> {
    let released = prepared.fetch(config, &[path])?;
    let mut resources = released.resources;
    let key = resources
        .take(path)
        .map(|r| PinKey::from_released(path, &r))
        .transpose()?
        .ok_or_else(|| clevis::ClevisError::Key("broker released nothing".into()))?;
    let line = crate::verdict::ok(&crate::verdict::Facts {
        broker: Some(&released.broker),
        attempts: Some(released.attempts),
        timings: Some(released.timings.to_string()),
        ..crate::verdict::Facts::default()
    });
    log::info!("{line}");
    Ok(key)
}

/// `clevis-encrypt-trustee CONFIG`.
pub fn encrypt(config_json: &str, out: &mut dyn Write) -> Result<(), Error> {
    let plaintext = read_stdin()?;
    let mut pin = PinConfig::parse(config_json)?;
    let mut clevis_header: serde_json::Value = serde_json::from_str(config_json)
        .map_err(|e| clevis::ClevisError::Config(e.to_string()))?;
    // The header carries the init-data document the broker will hash, not the JSON map.
    if let Some(i) = &pin.initdata {
        let doc = clevis::initdata_document(i)?;
        clevis_header["initdata"] = serde_json::Value::String(doc.clone());
        pin.initdata = Some(doc);
    }
    // The config flat beside `pin` (what the upstream pin reads) and nested under `trustee`
    // (clevis' convention, what `clevis luks list` shows).
    let nested = clevis_header.clone();
    clevis_header["pin"] = serde_json::Value::String(clevis::PIN.to_owned());
    clevis_header[clevis::PIN] = nested;
    let host = host();
    let config = resolve(&host, &pin)?;
    let mut prepared = flow::prepare(&config, &host.root, &[&pin.path], &[])?;
    if let Some(reg) = pin
        .attestation_key
        .as_ref()
        .and_then(|a| a.registration.as_ref())
    {
        register(&config, reg)?;
    }
    let key = fetch_key(&config, &mut prepared, &pin.path)?;
    let jwe = clevis::encrypt(&key, clevis_header, &plaintext)?;
    out.write_all(jwe.as_bytes())
        .map_err(|e| clevis::ClevisError::Jwe(format!("cannot write stdout: {e}")))?;
    Ok(())
}

/// Register the AK with the operator's registration server (first boot).
fn register(config: &Config, reg: &clevis::Registration) -> Result<(), Error> {
    let mut tpm =
        crate::hw::tpm::Tpm::open(&config.tpm.tcti).map_err(evidence::EvidenceError::from)?;
    let ak = tpm
        .ak_public(&config.tpm)
        .map_err(evidence::EvidenceError::from)?;
    drop(tpm);
    // A network attacker who swaps the AK in a trust-on-first-use registration owns the
    // node's identity: TLS is required unless a measured layer opted out.
    if reg.url.starts_with("http://") {
        if !config.insecure_allow_http {
            return Err(ConfigError::Invalid(format!(
                "AK registration url '{}' must start with https:// (insecure_allow_http allows http://, tests only)",
                crate::text::value(&reg.url)
            ))
            .into());
        }
        log::warn!(
            "registering the AK over plain HTTP at {} (insecure_allow_http, set by the {})",
            crate::text::value(&reg.url),
            config.provenance.of("insecure_allow_http")
        );
    } else if !reg.url.starts_with("https://") {
        return Err(ConfigError::Invalid(format!(
            "AK registration url '{}' must start with https://",
            crate::text::value(&reg.url)
        ))
        .into());
    }
    let ca = if reg.cert.trim().is_empty() {
        let bundle = crate::config::SYSTEM_CA_BUNDLES.iter().find_map(|p| {
            crate::config::read_capped(Path::new(p))
                .ok()
                .map(|c| (p, c))
        });
        if let Some((path, _)) = &bundle {
            log::warn!(
                "the AK registration has an empty cert: trusting the system CA bundle {path}"
            );
        }
        bundle.map(|(_, c)| c)
    } else {
        Some(reg.cert.clone())
    };
    crate::kbs::register_ak(
        &reg.url,
        ca.as_deref(),
        &config.timeouts,
        &ak.pem,
        &reg.uuid,
    )?;
    log::info!(
        "registered AK {} for node {} at {}",
        STANDARD.encode(&ak.spki_der),
        reg.uuid,
        reg.url
    );
    Ok(())
}

/// `clevis-decrypt-trustee`.
pub fn decrypt(out: &mut dyn Write) -> Result<(), Error> {
    let input = read_stdin()?;
    let text =
        std::str::from_utf8(&input).map_err(|_| clevis::ClevisError::Input("not UTF-8".into()))?;
    let jwe = ClevisJwe::parse_compact(text).map_err(|e| match e {
        clevis::ClevisError::Jwe(m) => clevis::ClevisError::Input(m),
        e => e,
    })?;
    let host = host();
    let config = resolve(&host, &jwe.config)?;
    let mut prepared = flow::prepare(&config, &host.root, &[&jwe.config.path], &[])?;
    let key = fetch_key(&config, &mut prepared, &jwe.config.path)?;
    let plaintext = jwe.decrypt(&key)?;
    out.write_all(&plaintext)
        .map_err(|e| clevis::ClevisError::Jwe(format!("cannot write stdout: {e}")))?;
    Ok(())
}
