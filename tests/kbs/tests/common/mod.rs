//! Helpers shared by the integration tests: a client configured like the agent's and a TEE key
//! that decrypts released resources independently of the broker.

// Each test binary uses a different subset of these helpers, and all of them are test code.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::SecretKey;
use rand_core::OsRng;
use serde_json::{json, Value};
use sha2::{Digest, Sha256, Sha384};
use test_kbs::Broker;

/// The prefix of every error `type`.
pub(crate) const ERRORS: &str = "https://github.com/confidential-containers/kbs/errors/";

/// An HTTP client set up like the agent's: ureq with rustls, trusting only the broker's CA, and
/// the session cookie carried by hand.
pub(crate) struct Client {
    pub agent: ureq::Agent,
    pub base: String,
    pub cookie: Option<String>,
}

impl Client {
    pub(crate) fn new(broker: &Broker) -> Client {
        let agent = test_kbs::https_client(&broker.ca_pem()).unwrap();
        Client {
            agent,
            base: broker.url(),
            cookie: None,
        }
    }

    pub(crate) fn finish(
        mut response: ureq::http::Response<ureq::Body>,
    ) -> (u16, Value, Option<String>) {
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string());
        assert_eq!(content_type.as_deref(), Some("application/json"));
        let set_cookie = response
            .headers()
            .get("set-cookie")
            .map(|v| v.to_str().unwrap().to_string());
        let body = response.body_mut().read_to_string().unwrap();
        (status, serde_json::from_str(&body).unwrap(), set_cookie)
    }

    pub(crate) fn post(&mut self, path: &str, body: &Value) -> (u16, Value) {
        let mut request = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("Content-Type", "application/json");
        if let Some(cookie) = &self.cookie {
            request = request.header("Cookie", cookie);
        }
        let (status, body, set_cookie) = Client::finish(request.send(body.to_string()).unwrap());
        if let Some(set_cookie) = set_cookie {
            self.cookie = Some(set_cookie.split(';').next().unwrap().to_string());
        }
        (status, body)
    }

    pub(crate) fn auth(&mut self, version: &str, tee: &str) -> (u16, Value) {
        self.post(
            "/kbs/v0/auth",
            &json!({"version": version, "tee": tee, "extra-params": ""}),
        )
    }

    pub(crate) fn get(&self, path: &str, bearer: Option<&str>) -> (u16, Value) {
        let mut request = self.agent.get(format!("{}{path}", self.base));
        if let Some(cookie) = &self.cookie {
            request = request.header("Cookie", cookie);
        }
        if let Some(token) = bearer {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        let (status, body, _) = Client::finish(request.call().unwrap());
        (status, body)
    }
}

/// The TEE's ephemeral key pair and its public JWK.
pub(crate) struct TeeKey {
    pub secret: SecretKey,
    pub jwk: Value,
}

impl TeeKey {
    pub(crate) fn new() -> TeeKey {
        let secret = SecretKey::random(&mut OsRng);
        let point = secret.public_key().to_encoded_point(false);
        let jwk = json!({
            "kty": "EC",
            "crv": "P-256",
            "alg": "ECDH-ES+A256KW",
            "x": URL_SAFE_NO_PAD.encode(point.x().unwrap()),
            "y": URL_SAFE_NO_PAD.encode(point.y().unwrap()),
        });
        TeeKey { secret, jwk }
    }

    /// The binding digest with the canonical JSON written out by hand (members sorted, no
    /// whitespace), independent of any JCS library.
    pub(crate) fn binding_digest(&self, nonce: &str) -> [u8; 48] {
        let canonical = format!(
            r#"{{"additional-evidence":"","nonce":"{nonce}","tee-pubkey":{{"alg":"{}","crv":"{}","kty":"EC","x":"{}","y":"{}"}}}}"#,
            self.jwk["alg"].as_str().unwrap(),
            self.jwk["crv"].as_str().unwrap(),
            self.jwk["x"].as_str().unwrap(),
            self.jwk["y"].as_str().unwrap()
        );
        Sha384::digest(canonical).into()
    }

    /// Decrypts a flattened JWE the way a client does.
    pub(crate) fn decrypt(&self, jwe: &Value) -> Vec<u8> {
        use aes_gcm::aead::AeadInPlace;
        use aes_gcm::KeyInit;
        let field = |name: &str| URL_SAFE_NO_PAD.decode(jwe[name].as_str().unwrap()).unwrap();
        let header: Value = serde_json::from_slice(&field("protected")).unwrap();
        assert_eq!(header["alg"], "ECDH-ES+A256KW");
        assert_eq!(header["enc"], "A256GCM");
        let mut sec1 = vec![4_u8];
        for coordinate in ["x", "y"] {
            sec1.extend(
                URL_SAFE_NO_PAD
                    .decode(header["epk"][coordinate].as_str().unwrap())
                    .unwrap(),
            );
        }
        let epk = p256::PublicKey::from_sec1_bytes(&sec1).unwrap();
        let z = p256::ecdh::diffie_hellman(self.secret.to_nonzero_scalar(), epk.as_affine());
        let mut kdf = Sha256::new();
        kdf.update([0, 0, 0, 1]);
        kdf.update(z.raw_secret_bytes());
        kdf.update([0, 0, 0, 14]);
        kdf.update(b"ECDH-ES+A256KW");
        kdf.update([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
        let kek: [u8; 32] = kdf.finalize().into();
        let cek = aes_kw::KekAes256::new(&kek.into())
            .unwrap_vec(&field("encrypted_key"))
            .unwrap();
        let iv: [u8; 12] = field("iv").try_into().unwrap();
        let tag: [u8; 16] = field("tag").try_into().unwrap();
        let mut buffer = field("ciphertext");
        aes_gcm::Aes256Gcm::new_from_slice(&cek)
            .unwrap()
            .decrypt_in_place_detached(
                &iv.into(),
                jwe["protected"].as_str().unwrap().as_bytes(),
                &mut buffer,
                &tag.into(),
            )
            .unwrap();
        buffer
    }
}

pub(crate) fn assert_error(response: &(u16, Value), status: u16, variant: &str) {
    assert_eq!(response.0, status, "{}", response.1);
    assert_eq!(
        response.1["type"],
        format!("{ERRORS}{variant}"),
        "{}",
        response.1
    );
}
