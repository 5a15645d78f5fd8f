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
use crate::config::{self, Config, Layers, DEFAULT_CONFIG_PATH};
use crate::error::Error;
use crate::evidence;
use crate::flow::{self, Failure};

/// The environment variable naming the config file for the pin (clevis passes no options).
pub const CONFIG_ENV: &str = "ATTEST_UNLOCK_CONFIG";

/// Largest stdin we accept (a LUKS passphrase or a JWE of one).
const MAX_INPUT: u64 = 1 << 20;

fn layers(pin: &PinConfig) -> Result<Layers, Error> {
    let (path, required) = match std::env::var_os(CONFIG_ENV) {
        Some(p) => (PathBuf::from(p), true),
        None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
    };
    let bundle = system_ca_bundle();
    Ok(Layers {
        file: config::read_file_layer(&path, required)?,
        luks_token: Some(pin.to_layer(bundle)?),
        cmdline: Some(config::parse_cmdline(
            &std::fs::read_to_string("/proc/cmdline").unwrap_or_default(),
        )?),
        cli: toml::Table::new(),
    })
}

/// The system CA bundle, used for a pin server whose `cert` is empty (the upstream pin trusts
/// the system roots then).
pub(crate) fn system_ca_bundle() -> Option<&'static str> {
    clevis::SYSTEM_CA_BUNDLES
        .iter()
        .copied()
        .find(|p| Path::new(p).exists())
}

fn read_stdin() -> Result<Zeroizing<Vec<u8>>, Error> {
    let mut buf = Zeroizing::new(Vec::new());
    std::io::stdin()
        .take(MAX_INPUT)
        .read_to_end(&mut buf)
        .map_err(|e| clevis::ClevisError::Jwe(format!("cannot read stdin: {e}")))?;
    Ok(buf)
}

/// Attest and fetch the pin's key resource.
fn fetch_key(config: &Config, path: &str) -> Result<(PinKey, String), Error> {
    let detected = evidence::detect(config, Path::new("/"))?;
    let mut source = evidence::source_for(&detected, config, Path::new("/"));
    let released = flow::release(config, source.as_mut(), &[path]).map_err(
        |Failure {
             step,
             broker,
             error,
             ..
         }| {
            log::error!(
                "verdict=failed step={step} class={} broker={} reason=\"{}\"",
                error.class(),
                broker.as_deref().unwrap_or("-"),
                crate::error::chain(&error)
            );
            error
        },
    )?;
    let key = released
        .resources
        .first()
        .map(|r| PinKey::from_resource(r))
        .transpose()?
        .ok_or_else(|| clevis::ClevisError::Key("broker released nothing".into()))?;
    log::info!(
        "verdict=ok broker={} attempts={} {}",
        released.broker,
        released.attempts,
        released.timings
    );
    Ok((key, released.broker))
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
    let config = crate::cli::resolve(layers(&pin)?)?;

    if let Some(reg) = pin
        .attestation_key
        .as_ref()
        .and_then(|a| a.registration.as_ref())
    {
        register(&config, reg)?;
    }
    let (key, _) = fetch_key(&config, &pin.path)?;
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
        .ak_public(config.tpm.ak_handle)
        .map_err(evidence::EvidenceError::from)?;
    drop(tpm);
    let ca = if reg.cert.trim().is_empty() {
        clevis::SYSTEM_CA_BUNDLES
            .iter()
            .find_map(|p| std::fs::read_to_string(p).ok())
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
    let text = std::str::from_utf8(&input)
        .map_err(|_| clevis::ClevisError::Jwe("input is not UTF-8".into()))?;
    let jwe = ClevisJwe::parse_compact(text)?;
    let config = crate::cli::resolve(layers(&jwe.config)?)?;
    let (key, _) = fetch_key(&config, &jwe.config.path)?;
    let plaintext = jwe.decrypt(&key)?;
    out.write_all(&plaintext)
        .map_err(|e| clevis::ClevisError::Jwe(format!("cannot write stdout: {e}")))?;
    Ok(())
}
