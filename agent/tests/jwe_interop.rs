//! JWEs made by an independent JOSE implementation (Python jwcrypto, installed by
//! `cargo xtask setup`) for the agent's ephemeral key decrypt; altered or unsupported ones
//! are rejected with the right typed error.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::process::{Command, Stdio};

use attest_unlock::kbs::jwe::{decrypt, JweError};
use attest_unlock::kbs::key::EphemeralKey;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::Value;

const SCRIPT: &str = r#"
import json, sys
from jwcrypto import jwe, jwk
req = json.load(sys.stdin)
key = jwk.JWK(**req["jwk"]) if req["jwk"] else jwk.JWK.generate(kty="EC", crv="P-256")
t = jwe.JWE(req["payload"].encode(), protected=json.dumps({"alg": req["alg"], "enc": req["enc"]}))
t.add_recipient(key)
print(t.serialize())
"#;

/// Encrypt `payload` with jwcrypto to `key` (or to a fresh unrelated key when `None`).
fn jwcrypto(key: Option<&EphemeralKey>, payload: &str, alg: &str, enc: &str) -> Value {
    let jwk = key.map(|k| {
        let mut v = serde_json::to_value(k.tee_pubkey()).unwrap();
        v.as_object_mut().unwrap().remove("alg");
        v
    });
    let req = serde_json::json!({"jwk": jwk, "payload": payload, "alg": alg, "enc": enc});
    let mut child = Command::new("python3")
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 with jwcrypto (cargo xtask setup)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(req.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "jwcrypto failed");
    serde_json::from_slice(&out.stdout).unwrap()
}

fn bytes(v: &Value) -> Vec<u8> {
    v.to_string().into_bytes()
}

/// Flip one bit of a base64url member.
fn flip(v: &mut Value, member: &str) {
    let raw = URL_SAFE_NO_PAD.decode(v[member].as_str().unwrap()).unwrap();
    let mut raw = raw;
    raw[0] ^= 1;
    v[member] = Value::String(URL_SAFE_NO_PAD.encode(raw));
}

#[test]
fn jwcrypto_jwe_decrypts() {
    let key = EphemeralKey::generate();
    let jwe = jwcrypto(Some(&key), "the disk key", "ECDH-ES+A256KW", "A256GCM");
    let keys: Vec<&str> = jwe
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert!(
        keys.contains(&"protected") && keys.contains(&"encrypted_key"),
        "{keys:?}"
    );
    assert_eq!(&**decrypt(&bytes(&jwe), &key).unwrap(), b"the disk key");
}

#[test]
fn tampering_is_rejected() {
    let key = EphemeralKey::generate();
    let good = jwcrypto(Some(&key), "secret", "ECDH-ES+A256KW", "A256GCM");
    for (member, want) in [
        ("tag", JweError::Decrypt),
        ("ciphertext", JweError::Decrypt),
        ("iv", JweError::Decrypt),
        ("encrypted_key", JweError::KeyUnwrap),
    ] {
        let mut v = good.clone();
        flip(&mut v, member);
        assert_eq!(decrypt(&bytes(&v), &key).unwrap_err(), want, "{member}");
    }
    // The protected header is authenticated as received: re-encoding the same header with
    // other whitespace changes the AAD and must fail.
    let mut v = good;
    let header = URL_SAFE_NO_PAD
        .decode(v["protected"].as_str().unwrap())
        .unwrap();
    let mut spaced = header;
    spaced.push(b' ');
    v["protected"] = Value::String(URL_SAFE_NO_PAD.encode(spaced));
    assert_eq!(decrypt(&bytes(&v), &key).unwrap_err(), JweError::Decrypt);
}

#[test]
fn wrong_key_unsupported_and_truncated_are_typed() {
    let key = EphemeralKey::generate();
    let other = jwcrypto(None, "secret", "ECDH-ES+A256KW", "A256GCM");
    assert_eq!(
        decrypt(&bytes(&other), &key).unwrap_err(),
        JweError::KeyUnwrap
    );

    let direct = jwcrypto(Some(&key), "secret", "ECDH-ES", "A256GCM");
    assert_eq!(
        decrypt(&bytes(&direct), &key).unwrap_err(),
        JweError::UnsupportedAlg("ECDH-ES".into())
    );
    let enc = jwcrypto(Some(&key), "secret", "ECDH-ES+A256KW", "A128GCM");
    assert_eq!(
        decrypt(&bytes(&enc), &key).unwrap_err(),
        JweError::UnsupportedEnc("A128GCM".into())
    );

    let good = jwcrypto(Some(&key), "secret", "ECDH-ES+A256KW", "A256GCM");
    for member in ["iv", "tag", "encrypted_key"] {
        let mut v = good.clone();
        let s = v[member].as_str().unwrap();
        v[member] = Value::String(s[..s.len() / 2].to_owned());
        assert!(
            matches!(
                decrypt(&bytes(&v), &key).unwrap_err(),
                JweError::Malformed(_) | JweError::Base64(_)
            ),
            "{member}"
        );
    }
    let mut v = good;
    v.as_object_mut().unwrap().remove("tag");
    assert!(matches!(
        decrypt(&bytes(&v), &key).unwrap_err(),
        JweError::Malformed(_)
    ));
}
