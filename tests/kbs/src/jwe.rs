//! Resource encryption to the TEE key: flattened JWE JSON with `ECDH-ES+A256KW` and `A256GCM`,
//! byte for byte in the shape Trustee's KBS produces.

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use aes_kw::KekAes256;
use anyhow::{anyhow, bail, Context};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use p256::elliptic_curve::sec1::{FromEncodedPoint, ToEncodedPoint};
use p256::{EncodedPoint, PublicKey};
use rand_core::{OsRng, RngCore};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The key management algorithm, and the Concat KDF AlgorithmID.
pub(crate) const ALG: &str = "ECDH-ES+A256KW";
/// The content encryption algorithm.
pub(crate) const ENC: &str = "A256GCM";

/// The protected header. Field order matters only for byte-compatibility with Trustee, which
/// serialises `alg`, `enc`, then `epk` with its members sorted.
#[derive(Serialize)]
struct ProtectedHeader<'a> {
    alg: &'a str,
    enc: &'a str,
    epk: EphemeralKey,
}

#[derive(Serialize)]
struct EphemeralKey {
    crv: &'static str,
    kty: &'static str,
    x: String,
    y: String,
}

/// The flattened JWE JSON serialisation the KBS returns for a resource.
#[derive(Serialize)]
pub(crate) struct FlattenedJwe {
    protected: String,
    encrypted_key: String,
    iv: String,
    ciphertext: String,
    tag: String,
}

/// Reads an EC P-256 `ECDH-ES+A256KW` JWK; every other key is refused with a reason the client
/// can show, because this broker (unlike Trustee) does not implement RSA or P-521.
pub(crate) fn p256_public_key(jwk: &Value) -> anyhow::Result<PublicKey> {
    let member = |name: &str| jwk.get(name).and_then(Value::as_str);
    match (member("kty"), member("crv"), member("alg")) {
        (Some("EC"), Some("P-256"), Some(ALG)) => {}
        (kty, crv, alg) => bail!(
            "tee-pubkey kty={} crv={} alg={} is not supported by test-kbs \
             (only EC P-256 with {ALG})",
            kty.unwrap_or("none"),
            crv.unwrap_or("none"),
            alg.unwrap_or("none")
        ),
    }
    let coordinate = |name: &str| -> anyhow::Result<[u8; 32]> {
        let encoded = member(name).ok_or_else(|| anyhow!("tee-pubkey has no {name}"))?;
        URL_SAFE_NO_PAD
            .decode(encoded)
            .ok()
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or_else(|| anyhow!("tee-pubkey {name} is not 32 bytes of base64url"))
    };
    let (x, y) = (coordinate("x")?, coordinate("y")?);
    let point = EncodedPoint::from_affine_coordinates(&x.into(), &y.into(), false);
    Option::from(PublicKey::from_encoded_point(&point))
        .ok_or_else(|| anyhow!("tee-pubkey is not a point on P-256"))
}

/// Concat KDF (RFC 7518 section 4.6.2, NIST SP 800-56A) for a 256-bit key with SHA-256, an
/// AlgorithmID of [`ALG`] and empty PartyUInfo/PartyVInfo: one hash round is enough.
pub(crate) fn concat_kdf(shared_secret: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(1_u32.to_be_bytes());
    hasher.update(shared_secret);
    hasher.update((ALG.len() as u32).to_be_bytes());
    hasher.update(ALG.as_bytes());
    hasher.update(0_u32.to_be_bytes());
    hasher.update(0_u32.to_be_bytes());
    hasher.update(256_u32.to_be_bytes());
    hasher.finalize().into()
}

/// Encrypts `plaintext` to the TEE key with a fresh ephemeral key, CEK and IV.
pub(crate) fn encrypt(tee_pubkey: &Value, plaintext: &[u8]) -> anyhow::Result<FlattenedJwe> {
    let recipient = p256_public_key(tee_pubkey)?;

    let ephemeral = p256::ecdh::EphemeralSecret::random(&mut OsRng);
    let shared = ephemeral.diffie_hellman(&recipient);
    let kek = KekAes256::new(&concat_kdf(shared.raw_secret_bytes()).into());

    let mut cek = [0_u8; 32];
    OsRng.fill_bytes(&mut cek);
    let encrypted_key = kek
        .wrap_vec(&cek)
        .map_err(|e| anyhow!("AES key wrap: {e}"))?;

    let epk_point = ephemeral.public_key().to_encoded_point(false);
    let (Some(epk_x), Some(epk_y)) = (epk_point.x(), epk_point.y()) else {
        bail!("ephemeral public key has no affine coordinates");
    };
    let header = ProtectedHeader {
        alg: ALG,
        enc: ENC,
        epk: EphemeralKey {
            crv: "P-256",
            kty: "EC",
            x: URL_SAFE_NO_PAD.encode(epk_x),
            y: URL_SAFE_NO_PAD.encode(epk_y),
        },
    };
    let protected = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header)?);

    let mut iv = [0_u8; 12];
    OsRng.fill_bytes(&mut iv);
    let cipher = Aes256Gcm::new_from_slice(&cek).context("content encryption key")?;
    let mut ciphertext = plaintext.to_vec();
    // The AAD is the ASCII of the encoded protected header (RFC 7516 section 5.1, step 14).
    let tag = cipher
        .encrypt_in_place_detached(&Nonce::from(iv), protected.as_bytes(), &mut ciphertext)
        .map_err(|_| anyhow!("AES-GCM encryption failed"))?;

    Ok(FlattenedJwe {
        protected,
        encrypted_key: URL_SAFE_NO_PAD.encode(encrypted_key),
        iv: URL_SAFE_NO_PAD.encode(iv),
        ciphertext: URL_SAFE_NO_PAD.encode(&ciphertext),
        tag: URL_SAFE_NO_PAD.encode(tag),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::SecretKey;

    /// A TEE key pair and its public JWK.
    fn tee_key() -> (SecretKey, Value) {
        let secret = SecretKey::random(&mut OsRng);
        let point = secret.public_key().to_encoded_point(false);
        let jwk = serde_json::json!({
            "kty": "EC",
            "crv": "P-256",
            "alg": ALG,
            "x": URL_SAFE_NO_PAD.encode(point.x().unwrap()),
            "y": URL_SAFE_NO_PAD.encode(point.y().unwrap()),
        });
        (secret, jwk)
    }

    /// Decrypts step by step as a client would, with the KDF spelled out again rather than
    /// calling [`concat_kdf`], so a mistake in one is not mirrored in the other.
    fn decrypt(secret: &SecretKey, jwe: &Value) -> Result<Vec<u8>, aes_gcm::Error> {
        let field = |name: &str| URL_SAFE_NO_PAD.decode(jwe[name].as_str().unwrap()).unwrap();
        let protected_b64 = jwe["protected"].as_str().unwrap();
        let header: Value = serde_json::from_slice(&field("protected")).unwrap();
        assert_eq!(header["alg"], "ECDH-ES+A256KW");
        assert_eq!(header["enc"], "A256GCM");
        assert_eq!(header["epk"]["kty"], "EC");
        assert_eq!(header["epk"]["crv"], "P-256");

        let epk_x = URL_SAFE_NO_PAD
            .decode(header["epk"]["x"].as_str().unwrap())
            .unwrap();
        let epk_y = URL_SAFE_NO_PAD
            .decode(header["epk"]["y"].as_str().unwrap())
            .unwrap();
        let mut sec1 = vec![4_u8];
        sec1.extend_from_slice(&epk_x);
        sec1.extend_from_slice(&epk_y);
        let epk = PublicKey::from_sec1_bytes(&sec1).unwrap();
        let z = p256::ecdh::diffie_hellman(secret.to_nonzero_scalar(), epk.as_affine());

        let mut kdf_input = Vec::new();
        kdf_input.extend_from_slice(&[0, 0, 0, 1]);
        kdf_input.extend_from_slice(z.raw_secret_bytes());
        kdf_input.extend_from_slice(&[0, 0, 0, 14]);
        kdf_input.extend_from_slice(b"ECDH-ES+A256KW");
        kdf_input.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
        let kek: [u8; 32] = Sha256::digest(&kdf_input).into();

        let cek = KekAes256::new(&kek.into())
            .unwrap_vec(&field("encrypted_key"))
            .unwrap();
        assert_eq!(cek.len(), 32);
        let iv: [u8; 12] = field("iv").try_into().unwrap();
        let tag: [u8; 16] = field("tag").try_into().unwrap();
        let mut buffer = field("ciphertext");
        Aes256Gcm::new_from_slice(&cek)
            .unwrap()
            .decrypt_in_place_detached(
                &Nonce::from(iv),
                protected_b64.as_bytes(),
                &mut buffer,
                &aes_gcm::Tag::from(tag),
            )
            .map(|()| buffer)
    }

    #[test]
    fn jwe_decrypts_with_an_independent_implementation() {
        let (secret, jwk) = tee_key();
        for plaintext in [&b""[..], b"x", b"a disk key of some length \x00\xff"] {
            let jwe = serde_json::to_value(encrypt(&jwk, plaintext).unwrap()).unwrap();
            assert_eq!(decrypt(&secret, &jwe).unwrap(), plaintext);
        }
    }

    #[test]
    fn jwe_json_has_trustee_member_order() {
        let (_, jwk) = tee_key();
        let text = serde_json::to_string(&encrypt(&jwk, b"s").unwrap()).unwrap();
        let order: Vec<usize> = ["protected", "encrypted_key", "iv", "ciphertext", "tag"]
            .iter()
            .map(|name| text.find(&format!("\"{name}\"")).unwrap())
            .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{text}");
        let protected = serde_json::from_str::<Value>(&text).unwrap()["protected"]
            .as_str()
            .unwrap()
            .to_string();
        let header = String::from_utf8(URL_SAFE_NO_PAD.decode(protected).unwrap()).unwrap();
        assert!(
            header.starts_with(
                r#"{"alg":"ECDH-ES+A256KW","enc":"A256GCM","epk":{"crv":"P-256","kty":"EC","x":""#
            ),
            "{header}"
        );
    }

    #[test]
    fn tampered_aad_fails_to_decrypt() {
        let (secret, jwk) = tee_key();
        let mut jwe = serde_json::to_value(encrypt(&jwk, b"secret").unwrap()).unwrap();
        let tag = jwe["tag"].as_str().unwrap().to_string();
        let mut tag_bytes = URL_SAFE_NO_PAD.decode(tag).unwrap();
        tag_bytes[0] ^= 1;
        jwe["tag"] = Value::String(URL_SAFE_NO_PAD.encode(tag_bytes));
        assert!(decrypt(&secret, &jwe).is_err());
    }

    #[test]
    fn unsupported_keys_are_refused_clearly() {
        for jwk in [
            serde_json::json!({"kty": "RSA", "alg": "RSA-OAEP-256", "n": "AQAB", "e": "AQAB"}),
            serde_json::json!({"kty": "EC", "crv": "P-384", "alg": ALG, "x": "", "y": ""}),
            serde_json::json!({"kty": "EC", "crv": "P-256", "x": "", "y": ""}),
        ] {
            let err = encrypt(&jwk, b"s").err().unwrap().to_string();
            assert!(err.contains("not supported by test-kbs"), "{err}");
        }
        let (_, mut jwk) = tee_key();
        jwk["x"] = Value::String(URL_SAFE_NO_PAD.encode([7_u8; 32]));
        assert!(encrypt(&jwk, b"s").is_err());
    }
}
