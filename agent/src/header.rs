//! The LUKS2 header's metadata as the unlock and the key rotation read it (pure, untrusted:
//! whoever holds the disk writes it).
//!
//! Two key tokens name where a keyslot's passphrase comes from:
//! - the clevis `trustee` token, as `clevis luks bind` writes it:
//!   `{"type":"clevis","keyslots":["1"],"jwe":{"protected","iv","ciphertext","tag"}}`;
//! - our native token, for a node whose measured config names the disk key:
//!   `{"type":"attest-unlock","keyslots":["2"],"disk_key":"default/node1/root-2"}`.
//!
//! A rotation in progress adds a record of the keyslot it is retiring and where that slot's
//! passphrase came from (`retire`; in the clevis token under `attest-unlock-retire`, a key
//! clevis ignores). The record is a hint only: a slot is removed only when the passphrase the
//! broker's key gives opens it.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::clevis::{ClevisError, ClevisJwe};

/// The type of our native token.
pub(crate) const NATIVE_TYPE: &str = "attest-unlock";
/// The member of a clevis token that holds a rotation's retire record.
pub(crate) const CLEVIS_RETIRE: &str = "attest-unlock-retire";
/// The type of the token that records the PCRs of the last successful unlock (no keyslot).
pub(crate) const PCRS_TYPE: &str = "attest-unlock-pcrs";
/// The PCRs recorded: the firmware's, the boot chain's and the OS's; not IMA's (10: its order
/// differs between boots), ours (15), nor the debug and application ones.
pub(crate) const RECORDED_PCRS: [u32; 14] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14];
/// LUKS2 has keyslots 0 to 31.
pub(crate) const MAX_KEYSLOTS: u32 = 32;

/// A keyslot's key derivation, as the header states it (copied to the slot a rotation adds,
/// so the new slot costs what the old one did).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Kdf {
    /// PBKDF2 with this hash and iteration count.
    Pbkdf2 {
        /// `sha256`, ...
        hash: String,
        /// Iterations.
        iterations: u32,
    },
    /// Argon2i or Argon2id.
    Argon2 {
        /// `argon2i` or `argon2id`.
        kind: String,
        /// Iterations.
        time: u32,
        /// Memory in KiB.
        memory: u32,
        /// Threads.
        cpus: u32,
    },
}

/// Where a keyslot's passphrase comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum KeySource {
    /// A clevis `trustee` JWE (compact form) of the passphrase, under the key at its
    /// config's `path`.
    Clevis(Box<ClevisJwe>, String),
    /// The resource at this path is the passphrase.
    Native(String),
}

impl KeySource {
    /// The resource path the broker releases for it.
    pub fn path(&self) -> &str {
        match self {
            KeySource::Clevis(jwe, _) => &jwe.config.path,
            KeySource::Native(p) => p,
        }
    }
}

/// A key token of the header.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyToken {
    /// The token id.
    pub id: u32,
    /// The keyslot it opens.
    pub keyslot: u32,
    /// Where that keyslot's passphrase comes from.
    pub source: KeySource,
    /// A rotation's keyslot to remove, and where its passphrase came from.
    pub retire: Option<Retire>,
}

/// A rotation's record of the keyslot it retires.
#[derive(Debug, Clone, PartialEq)]
pub struct Retire {
    /// The old keyslot.
    pub keyslot: u32,
    /// Where its passphrase came from.
    pub source: KeySource,
}

/// The parsed metadata: active keyslots with their KDF, and the tokens.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Header {
    /// Active keyslots (any KDF we do not know is `None`).
    pub(crate) keyslots: BTreeMap<u32, Option<Kdf>>,
    tokens: BTreeMap<u32, Map<String, Value>>,
}

fn token_err(m: impl Into<String>) -> ClevisError {
    ClevisError::Token(m.into())
}

/// A keyslot number as LUKS2 writes it (a decimal string) or as a number.
fn slot_number(v: &Value) -> Option<u32> {
    let n = match v {
        Value::String(s) => s.parse().ok()?,
        Value::Number(n) => u32::try_from(n.as_u64()?).ok()?,
        _ => return None,
    };
    (n < MAX_KEYSLOTS).then_some(n)
}

fn kdf(slot: &Value) -> Option<Kdf> {
    let k = slot.get("kdf")?;
    let num = |key: &str| {
        k.get(key)
            .and_then(Value::as_u64)
            .and_then(|n| u32::try_from(n).ok())
    };
    let kind = k.get("type")?.as_str()?;
    match kind {
        "pbkdf2" => Some(Kdf::Pbkdf2 {
            hash: k.get("hash")?.as_str()?.to_owned(),
            iterations: num("iterations")?,
        }),
        "argon2i" | "argon2id" => Some(Kdf::Argon2 {
            kind: kind.to_owned(),
            time: num("time")?,
            memory: num("memory")?,
            cpus: num("cpus")?,
        }),
        _ => None,
    }
}

impl Header {
    /// Parse `cryptsetup luksDump --dump-json-metadata` output.
    pub fn parse(metadata: &[u8]) -> Result<Header, ClevisError> {
        let meta: Value =
            serde_json::from_slice(metadata).map_err(|e| token_err(format!("metadata: {e}")))?;
        let tokens = meta
            .get("tokens")
            .and_then(Value::as_object)
            .ok_or_else(|| token_err("metadata has no tokens object"))?;
        let mut header = Header::default();
        for (id, token) in tokens {
            let (Ok(id), Some(token)) = (id.parse::<u32>(), token.as_object()) else {
                return Err(token_err(format!(
                    "token {:?} is not a numbered object",
                    id
                )));
            };
            header.tokens.insert(id, token.clone());
        }
        if let Some(slots) = meta.get("keyslots").and_then(Value::as_object) {
            for (id, slot) in slots {
                if let Some(n) = slot_number(&Value::String(id.clone())) {
                    header.keyslots.insert(n, kdf(slot));
                }
            }
        }
        Ok(header)
    }

    /// The lowest keyslot number not in use.
    pub(crate) fn free_keyslot(&self) -> Option<u32> {
        (0..MAX_KEYSLOTS).find(|n| !self.keyslots.contains_key(n))
    }

    /// The lowest token id not in use.
    pub(crate) fn free_token_id(&self) -> u32 {
        (0..).find(|n| !self.tokens.contains_key(n)).unwrap_or(0)
    }

    /// The first clevis `trustee` token (tokens of other pins are skipped).
    pub fn trustee_token(&self) -> Result<KeyToken, ClevisError> {
        let mut seen = Vec::new();
        for (id, token) in &self.tokens {
            if token.get("type").and_then(Value::as_str) != Some("clevis") {
                continue;
            }
            match clevis_token(*id, token) {
                Ok(t) => return Ok(t),
                Err(e) => seen.push(format!("token {id}: {e}")),
            }
        }
        Err(token_err(if seen.is_empty() {
            "no clevis trustee token".into()
        } else {
            format!("no usable clevis trustee token ({})", seen.join("; "))
        }))
    }

    /// Our native token, if the header has one (two are an error: which one is meant is not
    /// ours to guess).
    pub fn native_token(&self) -> Result<Option<KeyToken>, ClevisError> {
        let mut found = None;
        for (id, token) in &self.tokens {
            if token.get("type").and_then(Value::as_str) != Some(NATIVE_TYPE) {
                continue;
            }
            if found.is_some() {
                return Err(token_err(format!(
                    "more than one {NATIVE_TYPE} token (token {id} is another)"
                )));
            }
            let keyslot = first_keyslot(*id, token)?;
            let path = native_path(*id, token.get("disk_key"))?;
            let retire = match token.get("retire") {
                None | Some(Value::Null) => None,
                Some(r) => Some(Retire {
                    keyslot: r
                        .get("keyslot")
                        .and_then(slot_number)
                        .ok_or_else(|| token_err(format!("token {id}: retire names no keyslot")))?,
                    source: KeySource::Native(native_path(*id, r.get("disk_key"))?),
                }),
            };
            found = Some(KeyToken {
                id: *id,
                keyslot,
                source: KeySource::Native(path),
                retire,
            });
        }
        Ok(found)
    }
}

fn first_keyslot(id: u32, token: &Map<String, Value>) -> Result<u32, ClevisError> {
    token
        .get("keyslots")
        .and_then(Value::as_array)
        .and_then(|k| k.first())
        .and_then(slot_number)
        .ok_or_else(|| token_err(format!("token {id} names no keyslot")))
}

fn native_path(id: u32, v: Option<&Value>) -> Result<String, ClevisError> {
    match v.and_then(Value::as_str) {
        Some(p) if !p.is_empty() => Ok(p.to_owned()),
        _ => Err(token_err(format!(
            "token {id}: disk_key is not a resource path"
        ))),
    }
}

/// A clevis JWE in the header's JSON form, back in compact form.
fn compact(jwe: &Value) -> String {
    let s = |k: &str| jwe.get(k).and_then(Value::as_str).unwrap_or_default();
    format!(
        "{}.{}.{}.{}.{}",
        s("protected"),
        s("encrypted_key"),
        s("iv"),
        s("ciphertext"),
        s("tag")
    )
}

fn clevis_source(jwe: &str) -> Result<KeySource, ClevisError> {
    let parsed = ClevisJwe::parse_compact(jwe)?;
    Ok(KeySource::Clevis(Box::new(parsed), jwe.to_owned()))
}

fn clevis_token(id: u32, token: &Map<String, Value>) -> Result<KeyToken, ClevisError> {
    let jwe = token
        .get("jwe")
        .ok_or_else(|| token_err("clevis token without jwe"))?;
    let source = clevis_source(&compact(jwe))?;
    let keyslot = first_keyslot(id, token)?;
    let retire = match token.get(CLEVIS_RETIRE) {
        None | Some(Value::Null) => None,
        Some(r) => Some(Retire {
            keyslot: r
                .get("keyslot")
                .and_then(slot_number)
                .ok_or_else(|| token_err(format!("{CLEVIS_RETIRE} names no keyslot")))?,
            source: clevis_source(r.get("jwe").and_then(Value::as_str).unwrap_or_default())?,
        }),
    };
    Ok(KeyToken {
        id,
        keyslot,
        source,
        retire,
    })
}

/// The record of the last successful unlock: token id and the SHA-256 value of each recorded
/// PCR. The host writes the header: this is a hint for the explainer, never a trust input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcrRecord {
    /// Its token id.
    pub id: u32,
    /// SHA-256 values by PCR.
    pub sha256: BTreeMap<u32, [u8; 32]>,
}

impl Header {
    /// The PCR record, if one parses (anything malformed is no record: a hint only).
    pub fn pcr_record(&self) -> Option<PcrRecord> {
        let (id, token) = self
            .tokens
            .iter()
            .find(|(_, t)| t.get("type").and_then(Value::as_str) == Some(PCRS_TYPE))?;
        let mut sha256 = BTreeMap::new();
        for (pcr, v) in token.get("sha256")?.as_object()? {
            let pcr: u32 = pcr.parse().ok().filter(|p| RECORDED_PCRS.contains(p))?;
            let bytes: [u8; 32] = hex::decode(v.as_str()?).ok()?.try_into().ok()?;
            sha256.insert(pcr, bytes);
        }
        Some(PcrRecord { id: *id, sha256 })
    }
}

impl PcrRecord {
    /// The record's token for `pcrs` (the TPM's SHA-256 bank).
    pub(crate) fn token_json(pcrs: &[[u8; 32]; 24]) -> Value {
        let values: Map<String, Value> = RECORDED_PCRS
            .iter()
            .filter_map(|p| {
                let v = pcrs.get(usize::try_from(*p).ok()?)?;
                Some((p.to_string(), Value::String(hex::encode(v))))
            })
            .collect();
        serde_json::json!({"type": PCRS_TYPE, "keyslots": [], "sha256": values})
    }

    /// Whether the record holds exactly these values.
    pub(crate) fn matches(&self, pcrs: &[[u8; 32]; 24]) -> bool {
        self.changed(pcrs).is_empty() && RECORDED_PCRS.iter().all(|p| self.sha256.contains_key(p))
    }

    /// The recorded PCRs whose value differs now.
    pub(crate) fn changed(&self, pcrs: &[[u8; 32]; 24]) -> Vec<u32> {
        self.sha256
            .iter()
            .filter(|(p, v)| {
                usize::try_from(**p)
                    .ok()
                    .and_then(|i| pcrs.get(i))
                    .is_some_and(|now| now != *v)
            })
            .map(|(p, _)| *p)
            .collect()
    }
}

/// The token's JSON as `cryptsetup token import` takes it.
pub(crate) fn token_json(keyslot: u32, source: &KeySource, retire: Option<&Retire>) -> Value {
    let slots = Value::Array(vec![Value::String(keyslot.to_string())]);
    match source {
        KeySource::Clevis(_, jwe) => {
            let parts: Vec<&str> = jwe.split('.').collect();
            let part = |i: usize| Value::String(parts.get(i).copied().unwrap_or("").to_owned());
            let mut t = serde_json::json!({
                "type": "clevis",
                "keyslots": slots,
                "jwe": {"protected": part(0), "iv": part(2), "ciphertext": part(3), "tag": part(4)},
            });
            if let Some(Retire {
                keyslot,
                source: KeySource::Clevis(_, old),
            }) = retire
            {
                t[CLEVIS_RETIRE] = serde_json::json!({"keyslot": keyslot.to_string(), "jwe": old});
            }
            t
        }
        KeySource::Native(path) => {
            let mut t = serde_json::json!({
                "type": NATIVE_TYPE,
                "keyslots": slots,
                "disk_key": path,
            });
            if let Some(Retire {
                keyslot,
                source: KeySource::Native(old),
            }) = retire
            {
                t["retire"] = serde_json::json!({"keyslot": keyslot.to_string(), "disk_key": old});
            }
            t
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_token_round_trips_with_its_retire_record() {
        let retire = Retire {
            keyslot: 1,
            source: KeySource::Native("default/n/root".into()),
        };
        let t = token_json(
            2,
            &KeySource::Native("default/n/root-2".into()),
            Some(&retire),
        );
        let meta = serde_json::json!({"keyslots": {"0": {}, "2": {"kdf": {"type": "pbkdf2", "hash": "sha256", "iterations": 1000}}}, "tokens": {"3": t}});
        let h = Header::parse(meta.to_string().as_bytes()).unwrap();
        let n = h.native_token().unwrap().unwrap();
        assert_eq!((n.id, n.keyslot), (3, 2));
        assert_eq!(n.source.path(), "default/n/root-2");
        assert_eq!(n.retire, Some(retire));
        assert_eq!(h.free_keyslot(), Some(1));
        assert_eq!(h.free_token_id(), 0);
        assert_eq!(
            h.keyslots[&2],
            Some(Kdf::Pbkdf2 {
                hash: "sha256".into(),
                iterations: 1000
            })
        );
        assert!(h.trustee_token().is_err());
    }

    #[test]
    fn refuses_what_names_no_slot_or_path_and_two_native_tokens() {
        for token in [
            serde_json::json!({"type": NATIVE_TYPE, "keyslots": [], "disk_key": "a"}),
            serde_json::json!({"type": NATIVE_TYPE, "keyslots": ["32"], "disk_key": "a"}),
            serde_json::json!({"type": NATIVE_TYPE, "keyslots": ["1"], "disk_key": ""}),
            serde_json::json!({"type": NATIVE_TYPE, "keyslots": ["1"], "disk_key": "a", "retire": {"keyslot": "x"}}),
        ] {
            let meta = serde_json::json!({"keyslots": {}, "tokens": {"0": token}});
            let h = Header::parse(meta.to_string().as_bytes()).unwrap();
            assert!(h.native_token().is_err(), "{meta}");
        }
        let t = serde_json::json!({"type": NATIVE_TYPE, "keyslots": ["1"], "disk_key": "a"});
        let meta = serde_json::json!({"keyslots": {}, "tokens": {"0": t, "1": t}});
        let h = Header::parse(meta.to_string().as_bytes()).unwrap();
        assert!(h.native_token().is_err());
        let none = serde_json::json!({"keyslots": {}, "tokens": {}});
        let h = Header::parse(none.to_string().as_bytes()).unwrap();
        assert_eq!(h.native_token().unwrap(), None);
        assert!(Header::parse(b"garbage").is_err());
        assert!(Header::parse(br#"{"tokens":{"x":{}}}"#).is_err());
    }

    #[test]
    fn finds_the_trustee_token_and_keeps_the_jwe_through_a_rotation_record() {
        let key = crate::clevis::PinKey::from_resource(
            br#"{"key_type":"oct","key":"0123456789abcdef0123456789abcdef"}"#,
        )
        .unwrap();
        let config = serde_json::json!({"pin": "trustee", "servers": [], "path": "default/n/root"});
        let jwe = crate::clevis::encrypt(&key, config.clone(), b"p").unwrap();
        let old = crate::clevis::encrypt(&key, config, b"old").unwrap();
        let source = clevis_source(&jwe).unwrap();
        let retire = Retire {
            keyslot: 1,
            source: clevis_source(&old).unwrap(),
        };
        let meta = serde_json::json!({"keyslots":{}, "tokens":{
            "0":{"type":"systemd-tpm2","keyslots":["2"]},
            "1": token_json(3, &source, Some(&retire)),
        }});
        let h = Header::parse(meta.to_string().as_bytes()).unwrap();
        let t = h.trustee_token().unwrap();
        assert_eq!((t.id, t.keyslot), (1, 3));
        assert_eq!(t.source, source);
        assert_eq!(t.retire, Some(retire));
        assert_eq!(h.native_token().unwrap(), None);
        let none = serde_json::json!({"tokens":{}});
        let h = Header::parse(none.to_string().as_bytes()).unwrap();
        assert!(h.trustee_token().is_err());
    }

    #[test]
    fn the_pcr_record_says_what_changed_and_ignores_what_does_not_parse() {
        let mut pcrs = [[0u8; 32]; 24];
        pcrs[4] = [4; 32];
        let token = PcrRecord::token_json(&pcrs);
        let meta = serde_json::json!({"keyslots": {}, "tokens": {"5": token}});
        let h = Header::parse(meta.to_string().as_bytes()).unwrap();
        let r = h.pcr_record().unwrap();
        assert_eq!((r.id, r.sha256.len()), (5, 14));
        assert!(r.matches(&pcrs));
        pcrs[4] = [5; 32];
        pcrs[9] = [9; 32];
        pcrs[15] = [1; 32];
        assert_eq!(r.changed(&pcrs), [4, 9]);
        assert!(!r.matches(&pcrs));
        for bad in [
            serde_json::json!({"type": PCRS_TYPE, "keyslots": [], "sha256": {"4": "zz"}}),
            serde_json::json!({"type": PCRS_TYPE, "keyslots": [], "sha256": {"15": "00".repeat(32)}}),
            serde_json::json!({"type": PCRS_TYPE, "keyslots": [], "sha256": []}),
            serde_json::json!({"type": PCRS_TYPE, "keyslots": []}),
        ] {
            let meta = serde_json::json!({"keyslots": {}, "tokens": {"0": bad}});
            let h = Header::parse(meta.to_string().as_bytes()).unwrap();
            assert_eq!(h.pcr_record(), None, "{meta}");
        }
    }
}
