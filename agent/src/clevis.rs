//! The clevis `trustee` pin: config, JWE and LUKS2 token formats (pure code, no I/O).
//!
//! Drop-in for latchset's `clevis-pin-trustee`: the same pin config JSON
//! (`{"servers":[{"url","cert"}],"path","initdata","num_retries","attestation_key"}`), the same
//! compact JWE (`dir` + `A256GCM`, the key being the 32 ASCII bytes of the `key` string of the
//! broker resource `{"key_type":"oct","key":...}`), and the same `clevis` protected header
//! (`{"pin":"trustee", ...config...}`), so existing Ignition configs and bound disks work.
//! Our own settings may ride along under the key `attest-unlock` (a hyphenated name that the
//! upstream pin, whose keys are snake_case, cannot clash with): it holds any part of our TOML
//! config (secrets to deliver, TPM settings...) and forms the LUKS-token layer of the config.

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce, Tag};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// The pin's name in the clevis header.
pub(crate) const PIN: &str = "trustee";

/// Our extension key inside the pin config.
pub(crate) const EXTENSION_KEY: &str = "attest-unlock";

/// A clevis/pin format problem.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClevisError {
    /// The pin config JSON is invalid.
    #[error("invalid trustee pin config: {0}")]
    Config(String),
    /// The JWE is not a compact `dir`/`A256GCM` JWE with a trustee clevis header.
    #[error("invalid clevis JWE: {0}")]
    Jwe(String),
    /// The broker's key resource is not `{"key_type":"oct","key":<32 characters>}`.
    #[error("key resource: {0}")]
    Key(String),
    /// Authentication failed: wrong key or altered JWE.
    #[error("clevis JWE authentication failed: wrong key from the broker, or the JWE was altered")]
    Decrypt,
    /// What `clevis-decrypt-trustee` got on its stdin is not a trustee clevis JWE (a usage
    /// error of the caller, not a LUKS problem).
    #[error("input: {0}")]
    Input(String),
    /// The LUKS2 header metadata has no usable trustee token.
    #[error("LUKS2 token: {0}")]
    Token(String),
}

/// One broker as the pin config names it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Server {
    /// Base URL.
    pub url: String,
    /// CA certificate PEM; empty means the system trust store.
    #[serde(default)]
    pub cert: String,
}

/// `num_retries`: a count or `"infinity"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NumRetries {
    /// Try this many rounds.
    Count(u32),
    /// Keep trying.
    Infinity,
}

impl<'de> Deserialize<'de> for NumRetries {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::String(s) if s == "infinity" => Ok(NumRetries::Infinity),
            Value::Number(n) => n
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .map(NumRetries::Count)
                .ok_or_else(|| serde::de::Error::custom("num_retries must be a count")),
            other => Err(serde::de::Error::custom(format!(
                "num_retries must be a number or \"infinity\", not {other}"
            ))),
        }
    }
}

/// The AK registration target (first boot).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Registration {
    /// Where to PUT `{"attestation_key": <PEM>, "uuid": ...}`.
    pub url: String,
    /// CA certificate PEM of that server.
    #[serde(default)]
    pub cert: String,
    /// The node's UUID.
    pub uuid: String,
}

/// The `attestation_key` member.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct AttestationKey {
    /// Register the AK at encrypt time.
    pub registration: Option<Registration>,
}

/// The pin's config, as given to `clevis encrypt trustee CONFIG` and as stored in the header.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct PinConfig {
    /// Brokers, tried in order.
    pub servers: Vec<Server>,
    /// Resource path of the key that encrypts the JWE.
    pub path: String,
    /// Init-data: at encrypt time a JSON object (string) of key/values, in the header the
    /// TOML document made from it.
    #[serde(default)]
    pub initdata: Option<String>,
    /// Retry rounds.
    #[serde(default)]
    pub num_retries: Option<NumRetries>,
    /// AK registration.
    #[serde(default)]
    pub attestation_key: Option<AttestationKey>,
    /// Our settings (any part of the TOML config, as JSON).
    #[serde(default, rename = "attest-unlock")]
    pub extension: Option<Value>,
}

impl PinConfig {
    /// Parse the pin config JSON.
    pub fn parse(json: &str) -> Result<PinConfig, ClevisError> {
        let c: PinConfig =
            serde_json::from_str(json).map_err(|e| ClevisError::Config(e.to_string()))?;
        if c.servers.is_empty() {
            return Err(ClevisError::Config("servers is empty".into()));
        }
        // The path is put into the resource URL sent with the attested session cookie.
        crate::config::validate_resource_path(&c.path)
            .map_err(|e| ClevisError::Config(e.to_string()))?;
        Ok(c)
    }

    /// The brokers the pin config names (its `servers`); a server with an empty `cert` gets
    /// the system CA bundle, as the upstream pin trusts the system roots then. They are used
    /// only when no measured layer names a broker (see [`crate::config`]).
    pub fn brokers(&self, system_bundle: Option<&str>) -> Vec<crate::config::Broker> {
        self.servers
            .iter()
            .map(|s| crate::config::Broker {
                url: s.url.clone(),
                ca_cert: if s.cert.trim().is_empty() {
                    system_bundle.map(str::to_owned)
                } else {
                    Some(s.cert.clone())
                },
            })
            .collect()
    }

    /// Add this pin config to `layers` as the LUKS2-token layer: what to fetch from
    /// [`PinConfig::to_layer`], the servers as the token's brokers.
    pub fn add_to(
        &self,
        layers: &mut crate::config::Layers,
        system_bundle: Option<&str>,
    ) -> Result<(), ClevisError> {
        layers.luks_token = Some(self.to_layer()?);
        layers.token_brokers = Some(self.brokers(system_bundle));
        Ok(())
    }

    /// The config as the LUKS2-token layer of our TOML config: `num_retries`, `initdata` and
    /// our extension. The layer may only name what to fetch ([`crate::config::TOKEN_KEYS`]);
    /// resolving refuses anything else.
    pub(crate) fn to_layer(&self) -> Result<toml::Table, ClevisError> {
        let mut t = toml::Table::new();
        match self.num_retries {
            Some(NumRetries::Count(n)) => {
                let mut r = toml::Table::new();
                r.insert(
                    "max_rounds".into(),
                    toml::Value::Integer(i64::from(n.max(1))),
                );
                t.insert("retry".into(), toml::Value::Table(r));
            }
            Some(NumRetries::Infinity) | None => {}
        }
        if let Some(body) = &self.initdata {
            let mut i = toml::Table::new();
            i.insert("body".into(), toml::Value::String(body.clone()));
            t.insert("init_data".into(), toml::Value::Table(i));
        }
        if let Some(ext) = &self.extension {
            let ext = toml::Value::try_from(ext).map_err(|e| {
                ClevisError::Config(format!("{EXTENSION_KEY} cannot be a config layer: {e}"))
            })?;
            match ext {
                toml::Value::Table(ext) => crate::config::merge(&mut t, ext),
                _ => {
                    return Err(ClevisError::Config(format!(
                        "{EXTENSION_KEY} must be an object"
                    )))
                }
            }
        }
        Ok(t)
    }
}

/// Make the header form of `initdata` from the encrypt-time config value, as the upstream pin
/// does: a JSON object of strings becomes the TOML init-data document
/// (`version = "0.1.0"`, `algorithm = "sha256"`, `[data]`); anything else is kept as given.
pub(crate) fn initdata_document(value: &str) -> Result<String, ClevisError> {
    let Ok(map) = serde_json::from_str::<std::collections::BTreeMap<String, String>>(value) else {
        return Ok(value.to_owned());
    };
    let mut data = toml::Table::new();
    for (k, v) in map {
        data.insert(k, toml::Value::String(v));
    }
    let mut doc = toml::Table::new();
    doc.insert("version".into(), toml::Value::String("0.1.0".into()));
    doc.insert("algorithm".into(), toml::Value::String("sha256".into()));
    doc.insert("data".into(), toml::Value::Table(data));
    toml::to_string(&doc).map_err(|e| ClevisError::Config(format!("initdata: {e}")))
}

/// The AES-256 key made from the broker's key resource.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct PinKey([u8; 32]);

impl PinKey {
    /// The pin key from what the broker released at `path`: the provisioner's confdata
    /// (`kbs+provisioner:///...`: the 32-character `io.cryptsetup.key.text.<tag>`), or the
    /// operator's `{"key_type":"oct","key":...}` resource.
    pub(crate) fn from_released(path: &str, released: &[u8]) -> Result<PinKey, ClevisError> {
        match crate::config::provisioner_path(path) {
            Some(inner) => {
                let volume = inner.rsplit('/').next().unwrap_or_default();
                let text = crate::formats::confdata::luks_key(released, volume)
                    .map_err(|e| ClevisError::Key(e.to_string()))?;
                let bytes: [u8; 32] = text[..].try_into().map_err(|_| {
                    ClevisError::Key(format!(
                        "the provisioned key is {} bytes, not 32 (the plugin's key_length)",
                        text.len()
                    ))
                })?;
                Ok(PinKey(bytes))
            }
            None => PinKey::from_resource(released),
        }
    }

    /// The key's bytes (to derive from; never printed).
    pub(crate) fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// `{"key_type":"oct","key":"<32 characters>"}` -> the 32 bytes of the string (the
    /// operator makes `key` as the standard base64 of 24 random bytes).
    pub fn from_resource(resource: &[u8]) -> Result<PinKey, ClevisError> {
        #[derive(Deserialize, Zeroize, ZeroizeOnDrop)]
        struct Oct {
            key_type: String,
            key: String,
        }
        let oct: Oct = serde_json::from_slice(resource)
            .map_err(|_| ClevisError::Key("not {\"key_type\":\"oct\",\"key\":...} JSON".into()))?;
        if oct.key_type != "oct" {
            return Err(ClevisError::Key(format!(
                "key_type {:?} is not \"oct\"",
                oct.key_type
            )));
        }
        let bytes: [u8; 32] = oct.key.as_bytes().try_into().map_err(|_| {
            ClevisError::Key(format!("key is {} bytes, A256GCM needs 32", oct.key.len()))
        })?;
        Ok(PinKey(bytes))
    }
}

/// Encrypt `plaintext` as a compact JWE (`dir`, `A256GCM`) with `clevis` in the protected
/// header.
pub fn encrypt(key: &PinKey, clevis: Value, plaintext: &[u8]) -> Result<String, ClevisError> {
    let header = serde_json::json!({"alg": "dir", "enc": "A256GCM", "clevis": clevis});
    let protected = URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(&header).map_err(|e| ClevisError::Jwe(e.to_string()))?);
    let mut iv = [0u8; 12];
    OsRng.fill_bytes(&mut iv);
    let mut buf = Zeroizing::new(plaintext.to_vec());
    let cipher = Aes256Gcm::new_from_slice(&key.0).map_err(|_| ClevisError::Decrypt)?;
    let tag = cipher
        .encrypt_in_place_detached(&Nonce::from(iv), protected.as_bytes(), &mut buf)
        .map_err(|_| ClevisError::Jwe("encryption failed".into()))?;
    Ok(format!(
        "{protected}..{}.{}.{}",
        URL_SAFE_NO_PAD.encode(iv),
        URL_SAFE_NO_PAD.encode(&*buf),
        URL_SAFE_NO_PAD.encode(tag)
    ))
}

/// A parsed compact clevis JWE (not yet decrypted).
#[derive(Debug, Clone, PartialEq)]
pub struct ClevisJwe {
    protected: String,
    iv: Vec<u8>,
    ciphertext: Vec<u8>,
    tag: Vec<u8>,
    /// The pin config from the `clevis` header member.
    pub config: PinConfig,
    /// The raw `clevis` header member (re-used when re-encrypting).
    pub clevis: Value,
}

fn b64(what: &str, s: &str) -> Result<Vec<u8>, ClevisError> {
    URL_SAFE_NO_PAD
        .decode(s.trim())
        .map_err(|_| ClevisError::Jwe(format!("{what} is not base64url")))
}

impl ClevisJwe {
    /// Parse a compact JWE made by this pin or the upstream one.
    pub fn parse_compact(jwe: &str) -> Result<ClevisJwe, ClevisError> {
        let parts: Vec<&str> = jwe.trim().split('.').collect();
        let [protected, encrypted_key, iv, ciphertext, tag] = parts[..] else {
            return Err(ClevisError::Jwe(format!(
                "compact JWE has {} parts, not 5",
                parts.len()
            )));
        };
        if !encrypted_key.is_empty() {
            return Err(ClevisError::Jwe(
                "alg dir has an empty encrypted key".into(),
            ));
        }
        let header: Map<String, Value> =
            serde_json::from_slice(&b64("protected header", protected)?)
                .map_err(|e| ClevisError::Jwe(format!("protected header: {e}")))?;
        let field = |k: &str| header.get(k).and_then(Value::as_str).unwrap_or_default();
        if field("alg") != "dir" {
            return Err(ClevisError::Jwe(format!(
                "alg {:?} is not \"dir\"",
                field("alg")
            )));
        }
        if field("enc") != "A256GCM" {
            return Err(ClevisError::Jwe(format!(
                "enc {:?} is not \"A256GCM\"",
                field("enc")
            )));
        }
        if header.contains_key("zip") || header.contains_key("crit") {
            return Err(ClevisError::Jwe("zip/crit are not supported".into()));
        }
        let clevis = header
            .get("clevis")
            .cloned()
            .ok_or_else(|| ClevisError::Jwe("no clevis header member".into()))?;
        if clevis.get("pin").and_then(Value::as_str) != Some(PIN) {
            return Err(ClevisError::Jwe(format!(
                "clevis pin is {}, not \"trustee\"",
                clevis.get("pin").unwrap_or(&Value::Null)
            )));
        }
        // The upstream pin puts its config flat beside `pin`; clevis' own convention (which
        // `clevis luks list` reads) nests it under the pin's name. We write both, and read
        // whichever is there.
        let source = match clevis.get(PIN) {
            Some(nested) if clevis.get("servers").is_none() => nested.clone(),
            _ => clevis.clone(),
        };
        let config: PinConfig = serde_json::from_value(source)
            .map_err(|e| ClevisError::Jwe(format!("clevis header: {e}")))?;
        Ok(ClevisJwe {
            protected: protected.to_owned(),
            iv: b64("iv", iv)?,
            ciphertext: b64("ciphertext", ciphertext)?,
            tag: b64("tag", tag)?,
            config,
            clevis,
        })
    }

    /// Decrypt with the key made from the broker's resource.
    pub fn decrypt(&self, key: &PinKey) -> Result<Zeroizing<Vec<u8>>, ClevisError> {
        let iv: [u8; 12] = self
            .iv
            .as_slice()
            .try_into()
            .map_err(|_| ClevisError::Jwe("iv is not 12 bytes".into()))?;
        let tag: [u8; 16] = self
            .tag
            .as_slice()
            .try_into()
            .map_err(|_| ClevisError::Jwe("tag is not 16 bytes".into()))?;
        let cipher = Aes256Gcm::new_from_slice(&key.0).map_err(|_| ClevisError::Decrypt)?;
        let mut buf = Zeroizing::new(self.ciphertext.clone());
        cipher
            .decrypt_in_place_detached(
                &Nonce::from(iv),
                self.protected.as_bytes(),
                &mut buf,
                &Tag::from(tag),
            )
            .map_err(|_| ClevisError::Decrypt)?;
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> PinKey {
        PinKey::from_resource(br#"{"key_type":"oct","key":"MDEyMzQ1Njc4OWFiY2RlZmdoaWprbG1u"}"#)
            .unwrap()
    }

    fn clevis() -> Value {
        serde_json::json!({"pin":"trustee","servers":[{"url":"https://kbs:8080","cert":""}],"path":"default/n/root","initdata":null})
    }

    #[test]
    fn round_trip_and_tamper() {
        let jwe = encrypt(&key(), clevis(), b"luks passphrase").unwrap();
        let parsed = ClevisJwe::parse_compact(&jwe).unwrap();
        assert_eq!(parsed.config.path, "default/n/root");
        assert_eq!(&**parsed.decrypt(&key()).unwrap(), b"luks passphrase");
        let other = PinKey::from_resource(
            br#"{"key_type":"oct","key":"ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"}"#,
        )
        .unwrap();
        assert_eq!(parsed.decrypt(&other).unwrap_err(), ClevisError::Decrypt);
        let mut parts: Vec<String> = jwe.split('.').map(str::to_owned).collect();
        parts[3] = URL_SAFE_NO_PAD.encode(b"xxxxxxxxxxxxxxx");
        let tampered = ClevisJwe::parse_compact(&parts.join(".")).unwrap();
        assert_eq!(tampered.decrypt(&key()).unwrap_err(), ClevisError::Decrypt);
    }

    #[test]
    fn rejects_other_pins_and_algs() {
        let h = |v: Value| {
            format!(
                "{}..AAAAAAAAAAAAAAAA.AA.AAAAAAAAAAAAAAAAAAAAAA",
                URL_SAFE_NO_PAD.encode(v.to_string())
            )
        };
        let tang = h(serde_json::json!({"alg":"dir","enc":"A256GCM","clevis":{"pin":"tang"}}));
        assert!(
            matches!(ClevisJwe::parse_compact(&tang), Err(ClevisError::Jwe(m)) if m.contains("tang"))
        );
        let ecdh = h(serde_json::json!({"alg":"ECDH-ES","enc":"A256GCM","clevis":clevis()}));
        assert!(
            matches!(ClevisJwe::parse_compact(&ecdh), Err(ClevisError::Jwe(m)) if m.contains("dir"))
        );
        assert!(ClevisJwe::parse_compact("a.b.c").is_err());
    }

    #[test]
    fn key_resource_must_be_32_byte_oct() {
        assert!(PinKey::from_resource(br#"{"key_type":"oct","key":"short"}"#).is_err());
        assert!(PinKey::from_resource(
            br#"{"key_type":"RSA","key":"MDEyMzQ1Njc4OWFiY2RlZmdoaWprbG1u"}"#
        )
        .is_err());
        assert!(PinKey::from_resource(b"raw").is_err());
    }

    #[test]
    fn config_layer_maps_servers_retries_and_extension() {
        let c = PinConfig::parse(r#"{"servers":[{"url":"https://a","cert":"-----BEGIN CERTIFICATE-----"},{"url":"https://b","cert":""}],
            "path":"default/n/root","initdata":null,"num_retries":"infinity","attestation_key":null,
            "attest-unlock":{"secrets":[{"resource":"default/n/kubelet","path":"/run/k","mode":"0600"}]}}"#).unwrap();
        let t = c.to_layer().unwrap();
        let brokers = c.brokers(Some("/etc/ssl/certs/ca-certificates.crt"));
        assert_eq!(
            brokers[1].ca_cert.as_deref(),
            Some("/etc/ssl/certs/ca-certificates.crt")
        );
        assert!(t.get("brokers").is_none(), "servers are not a layer key");
        assert!(t.get("retry").is_none());
        assert_eq!(t["secrets"].as_array().unwrap().len(), 1);
        let c = PinConfig::parse(
            r#"{"servers":[{"url":"https://a","cert":""}],"path":"a/b/c","num_retries":3}"#,
        )
        .unwrap();
        assert_eq!(
            c.to_layer().unwrap()["retry"]["max_rounds"].as_integer(),
            Some(3)
        );
        // The pin's path goes into the resource URL with the session cookie.
        for bad in ["../../x?y#z", "a/b", "a/b/c/d", "a/b/c?x"] {
            let json = format!(r#"{{"servers":[{{"url":"https://a"}}],"path":"{bad}"}}"#);
            assert!(PinConfig::parse(&json).is_err(), "{bad}");
        }
        assert!(PinConfig::parse(r#"{"servers":[],"path":"p"}"#).is_err());
        assert!(
            PinConfig::parse(r#"{"servers":[{"url":"u"}],"path":"p","num_retries":"many"}"#)
                .is_err()
        );
    }

    #[test]
    fn initdata_json_becomes_toml_document() {
        let doc = initdata_document(r#"{"uuid":"1234"}"#).unwrap();
        let t: toml::Table = doc.parse().unwrap();
        assert_eq!(t["version"].as_str(), Some("0.1.0"));
        assert_eq!(t["data"]["uuid"].as_str(), Some("1234"));
        assert_eq!(
            initdata_document("version = \"0.1.0\"").unwrap(),
            "version = \"0.1.0\""
        );
    }
}
