//! `attest-unlock rotate --to PATH`: move the volume to a new key at the broker, with a token
//! that names a working keyslot at every instant.
//!
//! One attestation fetches every key the rotation needs before the first header write, so a
//! broker that fails changes nothing. Then four writes, each atomic in cryptsetup:
//! 1. add a keyslot for the new passphrase (authorised by the old one, which opens the old
//!    slot);
//! 2. rewrite the token: the new keyslot and key, with a record of the old keyslot to retire;
//! 3. remove the old keyslot (cryptsetup requires the new passphrase to open a remaining one);
//! 4. rewrite the token without the record.
//!
//! A run stopped between two writes is finished by the next. Before step 2 the token still
//! names the old keyslot, and the new passphrase comes out the same again (for a native token
//! it is the broker's value; for a clevis token it is derived from the new key and the old
//! token), so the slot step 1 added is found rather than added twice. After step 2 the record
//! names the slot to retire; the header is untrusted, so that slot is removed only when the
//! old key opens it.

use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::clevis::{self, PinKey};
use crate::config::{Config, ConfigError, Layers};
use crate::error::Error;
use crate::flow;
use crate::header::{token_json, Header, KeySource, Retire};
use crate::luks::{LuksError, Rekey};

/// What a rotation did, for the operator.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Done {
    /// The keyslot the token names now.
    pub(crate) keyslot: u32,
    /// The key's path at the broker now.
    pub(crate) path: String,
    /// Keyslots added.
    pub(crate) added: Vec<u32>,
    /// Keyslots removed.
    pub(crate) removed: Vec<u32>,
}

impl std::fmt::Display for Done {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let slots = |v: &[u32]| {
            if v.is_empty() {
                "none".to_owned()
            } else {
                v.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
            }
        };
        write!(
            f,
            "rotated: keyslot={} path={} added={} removed={}",
            self.keyslot,
            crate::text::value(&self.path),
            slots(&self.added),
            slots(&self.removed)
        )
    }
}

/// The passphrase a clevis rebinding puts in the new keyslot: derived from the new key and the
/// token it replaces, so that a rerun after a stop makes the same one (and finds the slot it
/// added). Printable (base64url of 32 bytes), as clevis makes its own.
fn derived_passphrase(new_key: &PinKey, old_jwe: &str) -> Zeroizing<Vec<u8>> {
    let mut h = Sha256::new();
    h.update(b"attest-unlock:rotate:v1\0");
    h.update(new_key.as_bytes());
    h.update(Sha256::digest(old_jwe.as_bytes()));
    let mut digest = h.finalize();
    let out = Zeroizing::new(URL_SAFE_NO_PAD.encode(digest).into_bytes());
    zeroize::Zeroize::zeroize(&mut digest[..]);
    out
}

/// The clevis header of the new binding: the old one with `path` replaced (flat, as the
/// upstream pin reads it, and nested under `trustee`, as clevis lists it).
fn with_path(mut header: serde_json::Value, path: &str) -> serde_json::Value {
    let p = serde_json::Value::String(path.to_owned());
    if header.get("path").is_some() || header.get(clevis::PIN).is_none() {
        header["path"] = p.clone();
    }
    if let Some(nested) = header.get_mut(clevis::PIN).filter(|n| n.is_object()) {
        nested["path"] = p;
    }
    header
}

/// What a rotation fetches, in order (the trust-anchor event names them so): the current key,
/// the new one, and a stopped rotation's old key.
pub(crate) fn fetched<'a>(current: &'a str, to: &'a str, retired: Option<&'a str>) -> Vec<&'a str> {
    let mut paths = vec![current];
    for p in [Some(to), retired].into_iter().flatten() {
        if !paths.contains(&p) {
            paths.push(p);
        }
    }
    paths
}

/// Refuse a rotation whose result the next boot would not follow: the token the rotation
/// writes is the LUKS-token layer, and the kernel command line and `--set` beat it, so a
/// keyslot (or, natively, a disk key) named there would still be used after the old slot is
/// gone. Found by resolving `layers` with a probe token and seeing whether its values win.
fn overridden_above_the_token(layers: &Layers, native: bool) -> Result<(), Error> {
    const PROBE_SLOT: u32 = crate::header::MAX_KEYSLOTS - 1;
    const PROBE_PATH: &str = "probe/attest-unlock/rotate";
    let probe = crate::header::KeyToken {
        id: 0,
        keyslot: PROBE_SLOT,
        source: KeySource::Native(PROBE_PATH.to_owned()),
        retire: None,
    };
    let resolved = flow::with_token(layers.clone(), &probe)?;
    let mut above = Vec::new();
    if resolved.luks.as_ref().and_then(|l| l.keyslot) != Some(PROBE_SLOT) {
        above.push("luks.keyslot");
    }
    if native && resolved.disk_key.as_deref() != Some(PROBE_PATH) {
        above.push("disk_key");
    }
    if above.is_empty() {
        return Ok(());
    }
    Err(ConfigError::Invalid(format!(
        "{} is set on the kernel command line or with --set, above the LUKS2 token: the next boot would not follow the rotation; remove it first",
        above.join(" and ")
    ))
    .into())
}

/// Rotate the volume `config` names to the key at `to`. `layers` are those `config` was
/// resolved from (the token adds its layer).
pub(crate) fn rotate(
    layers: Layers,
    config: Config,
    root: &Path,
    to: &str,
    volume: &dyn Rekey,
) -> Result<Done, Error> {
    crate::config::validate_resource_path(to)?;
    let Some(luks) = config.luks.clone() else {
        return Err(ConfigError::Invalid(
            "rotate needs the volume: luks.device (or rd.luks.uuid=)".into(),
        )
        .into());
    };
    let device = luks.device.clone();
    overridden_above_the_token(&layers, config.disk_key.is_some())?;
    let token = flow::key_token(&config, volume)?;
    let (config, current, keyslot, token_id, retire) = match token {
        Some(t) => {
            // What the boot would use: a native token's path and keyslot lose to the kernel
            // command line and `--set`.
            let config = flow::with_token(layers, &t)?;
            let keyslot = config.luks.as_ref().and_then(|l| l.keyslot);
            let Some(current) = flow::key_source(&config, t.source) else {
                return Err(ConfigError::Invalid("no disk key to rotate".into()).into());
            };
            (config, current, keyslot, Some(t.id), t.retire)
        }
        None => {
            let Some(path) = config.disk_key.clone() else {
                return Err(ConfigError::Invalid("no disk key to rotate".into()).into());
            };
            (config, KeySource::Native(path), luks.keyslot, None, None)
        }
    };
    if current.path() == to && retire.is_none() {
        log::info!(
            "{}: the token already names {}: nothing to do",
            device.display(),
            crate::text::value(to)
        );
        return Ok(Done {
            keyslot: keyslot.unwrap_or_default(),
            path: to.to_owned(),
            ..Done::default()
        });
    }

    // Every key, in one attestation, before the first write.
    let paths = fetched(current.path(), to, retire.as_ref().map(|r| r.source.path()));
    // On a booted node the register already holds the boot's anchors and the post-release
    // event; a rerun after a refusal must not extend it again.
    let boot_paths = flow::resource_paths(&config, Some(current.path()));
    let boot_init = flow::init_data_for(&config, &boot_paths)?;
    let boot = flow::trust_anchors(&config, &boot_paths, boot_init.as_deref())?;
    let mut prepared = flow::prepare(&config, root, &paths, &[boot.event(), flow::RELEASE_EVENT])?;
    let released = prepared.fetch(&config, &paths)?;
    log::info!(
        "attested to {} ({} sessions): {} keys released",
        crate::text::value(&released.broker),
        released.attempts,
        paths.len()
    );
    let resources = released.resources;
    let raw = |path: &str| -> Result<Zeroizing<Vec<u8>>, Error> {
        resources.cloned(path).ok_or_else(|| Error::KeyFormat {
            resource: path.to_owned(),
            message: "not among the resources the broker released".into(),
        })
    };
    let passphrase = |source: &KeySource, raw: Zeroizing<Vec<u8>>| {
        flow::passphrase_for(source, raw, config.disk_key_format)
    };
    let current_pass = passphrase(&current, raw(current.path())?)?;
    let slots = Slots {
        volume,
        device: &device,
    };
    let mut done = Done::default();

    // A rotation stopped after its token rewrite: finish it.
    let current_slot = match keyslot {
        Some(s) => s,
        None => slots.find(&current_pass, None)?.ok_or_else(|| {
            LuksError::NotRotating(format!(
                "no keyslot of {} opens with the key at {}",
                device.display(),
                crate::text::value(current.path())
            ))
        })?,
    };
    slots.check(current_slot, &current_pass, current.path())?;
    let token_id = match token_id {
        Some(id) => id,
        None => slots.header()?.free_token_id(),
    };
    if let Some(r) = retire {
        let old_pass = passphrase(&r.source, raw(r.source.path())?)?;
        slots.retire(&r, current_slot, &old_pass, &current_pass, &mut done)?;
        slots.write(token_id, current_slot, &current, None)?;
        if current.path() == to {
            done.keyslot = current_slot;
            done.path = to.to_owned();
            return Ok(done);
        }
    }

    // The new binding.
    let (next, next_pass) = match &current {
        KeySource::Native(_) => {
            let next = KeySource::Native(to.to_owned());
            let pass = passphrase(&next, raw(to)?)?;
            (next, pass)
        }
        KeySource::Clevis(jwe, compact) => {
            let key = PinKey::from_released(to, &raw(to)?)?;
            let pass = derived_passphrase(&key, compact);
            let next_jwe = clevis::encrypt(&key, with_path(jwe.clevis.clone(), to), &pass)?;
            let parsed = clevis::ClevisJwe::parse_compact(&next_jwe)?;
            (KeySource::Clevis(Box::new(parsed), next_jwe), pass)
        }
    };
    if volume
        .test_key(&device, Some(current_slot), &next_pass)
        .is_ok()
    {
        // The new key is the old passphrase (the same value at another path): repoint only.
        slots.write(token_id, current_slot, &next, None)?;
        done.keyslot = current_slot;
        done.path = to.to_owned();
        return Ok(done);
    }
    let header = slots.header()?;
    let kdf = header.keyslots.get(&current_slot).cloned().flatten();
    let next_slot = match slots.find(&next_pass, Some(current_slot))? {
        Some(s) => {
            log::info!("keyslot {s} already holds the new key (an earlier run added it)");
            s
        }
        None => {
            let s = header
                .free_keyslot()
                .ok_or_else(|| LuksError::NoFreeKeyslot(device.clone()))?;
            volume.add_key(
                &device,
                current_slot,
                &current_pass,
                s,
                &next_pass,
                kdf.as_ref(),
            )?;
            log::info!("step 1/4: added keyslot {s} for {}", crate::text::value(to));
            done.added.push(s);
            s
        }
    };
    let record = Retire {
        keyslot: current_slot,
        source: current,
    };
    slots.write(token_id, next_slot, &next, Some(&record))?;
    log::info!(
        "step 2/4: token {token_id} names keyslot {next_slot} ({}), keyslot {current_slot} to retire",
        crate::text::value(to)
    );
    slots.retire(&record, next_slot, &current_pass, &next_pass, &mut done)?;
    slots.write(token_id, next_slot, &next, None)?;
    log::info!("step 4/4: token {token_id} done");
    done.keyslot = next_slot;
    done.path = to.to_owned();
    Ok(done)
}

/// The volume's keyslots, as the rotation tests and changes them.
struct Slots<'a> {
    volume: &'a dyn Rekey,
    device: &'a Path,
}

impl Slots<'_> {
    fn header(&self) -> Result<Header, Error> {
        Ok(Header::parse(&self.volume.metadata(self.device)?)?)
    }

    /// The first active keyslot (not `except`) that `pass` opens.
    fn find(&self, pass: &[u8], except: Option<u32>) -> Result<Option<u32>, Error> {
        let header = self.header()?;
        for slot in header.keyslots.keys().copied() {
            if Some(slot) == except {
                continue;
            }
            match self.volume.test_key(self.device, Some(slot), pass) {
                Ok(()) => return Ok(Some(slot)),
                Err(LuksError::KeyRejected { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(None)
    }

    /// `pass` (the key at `path`) must open `slot`.
    fn check(&self, slot: u32, pass: &[u8], path: &str) -> Result<(), Error> {
        match self.volume.test_key(self.device, Some(slot), pass) {
            Ok(()) => Ok(()),
            Err(LuksError::KeyRejected { .. }) => Err(LuksError::NotRotating(format!(
                "keyslot {slot} of {} does not open with the key at {}",
                self.device.display(),
                crate::text::value(path)
            ))
            .into()),
            Err(e) => Err(e.into()),
        }
    }

    /// Remove the record's keyslot if the old passphrase opens it (the record is the header's
    /// word, a hint); `remaining` opens `keep`.
    fn retire(
        &self,
        record: &Retire,
        keep: u32,
        old_pass: &[u8],
        remaining: &[u8],
        done: &mut Done,
    ) -> Result<(), Error> {
        let slot = record.keyslot;
        let active = self.header()?.keyslots.contains_key(&slot);
        if slot == keep || !active {
            log::info!("step 3/4: keyslot {slot} is already gone");
            return Ok(());
        }
        match self.volume.test_key(self.device, Some(slot), old_pass) {
            Ok(()) => {
                self.volume.kill_slot(self.device, slot, remaining)?;
                log::info!("step 3/4: removed keyslot {slot}");
                done.removed.push(slot);
            }
            Err(LuksError::KeyRejected { .. }) => log::warn!(
                "the token's record names keyslot {slot}, which the old key does not open: left as it is"
            ),
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }

    fn write(
        &self,
        id: u32,
        keyslot: u32,
        source: &KeySource,
        retire: Option<&Retire>,
    ) -> Result<(), Error> {
        let json = token_json(keyslot, source, retire).to_string();
        Ok(self.volume.write_token(self.device, id, &json)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_derived_passphrase_is_stable_printable_and_bound_to_both_inputs() {
        let k = |c: char| {
            PinKey::from_resource(
                format!(
                    r#"{{"key_type":"oct","key":"{}"}}"#,
                    c.to_string().repeat(32)
                )
                .as_bytes(),
            )
            .unwrap()
        };
        let a = derived_passphrase(&k('a'), "jwe1");
        assert_eq!(a, derived_passphrase(&k('a'), "jwe1"));
        assert_ne!(a, derived_passphrase(&k('b'), "jwe1"));
        assert_ne!(a, derived_passphrase(&k('a'), "jwe2"));
        assert_eq!(a.len(), 43);
        assert!(a
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_'));
    }

    #[test]
    fn the_new_header_names_the_new_path_flat_and_nested() {
        let h = serde_json::json!({"pin": "trustee", "path": "a", "servers": [], "trustee": {"path": "a", "servers": []}});
        let n = with_path(h, "b");
        assert_eq!(
            (n["path"].as_str(), n["trustee"]["path"].as_str()),
            (Some("b"), Some("b"))
        );
        let nested_only = serde_json::json!({"pin": "trustee", "trustee": {"path": "a"}});
        let n = with_path(nested_only, "b");
        assert_eq!(
            (n.get("path"), n["trustee"]["path"].as_str()),
            (None, Some("b"))
        );
    }
}
