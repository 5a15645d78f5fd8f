//! The attestation token: an ES256 JWT shaped like the EAR that Trustee's attestation service
//! issues, signed with a key the broker makes at start.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, ensure, Context};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use p256::ecdsa::signature::{Signer, Verifier};
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use rand_core::OsRng;
use serde_json::{json, Value};

/// How long a token is valid, as Trustee's default.
pub(crate) const TOKEN_LIFETIME_SECS: u64 = 300;

/// JSON pointer to the appraisal status inside the claims.
pub(crate) const STATUS_POINTER: &str = "/submods/cpu0/ear.status";
/// JSON pointer to the TEE public key inside the claims; Trustee's KBS reads it from the
/// same place in an EAR (`.../ear.veraison.annotated-evidence/runtime_data_claims/tee-pubkey`).
pub(crate) const TEE_PUBKEY_POINTER: &str =
    "/submods/cpu0/ear.veraison.annotated-evidence/runtime_data_claims/tee-pubkey";

/// What the broker appraised and wants to put into a token.
pub(crate) struct Appraisal<'a> {
    pub status: &'a str,
    pub tee_pubkey: &'a Value,
    pub nonce: &'a str,
    /// PCR0 to PCR23 as lowercase hex, reported as `tpm.pcrNN` claims like Trustee does.
    pub pcrs: &'a [String],
    pub ak_trusted: bool,
    /// The TEE's own claims (`snp` or `tdx`), put beside the `tpm` claims.
    pub tee_claims: Option<(&'a str, &'a Value)>,
}

/// Issues and verifies tokens with one ES256 key.
pub(crate) struct TokenIssuer {
    signing_key: SigningKey,
    verifying_key: VerifyingKey,
}

/// Seconds since the Unix epoch.
pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl TokenIssuer {
    /// Makes a fresh signing key.
    pub(crate) fn new() -> TokenIssuer {
        let signing_key = SigningKey::random(&mut OsRng);
        let verifying_key = *signing_key.verifying_key();
        TokenIssuer {
            signing_key,
            verifying_key,
        }
    }

    /// Issues a token for one appraisal.
    pub(crate) fn issue(&self, appraisal: &Appraisal<'_>) -> anyhow::Result<String> {
        let iat = now_secs();
        let mut tpm_claims = serde_json::Map::new();
        for (index, pcr) in appraisal.pcrs.iter().enumerate() {
            tpm_claims.insert(format!("pcr{index:02}"), Value::String(pcr.clone()));
        }
        let mut annotated = json!({
            "tpm": tpm_claims,
            "ak_trusted": appraisal.ak_trusted,
            "runtime_data_claims": {
                "nonce": appraisal.nonce,
                "tee-pubkey": appraisal.tee_pubkey,
            },
        });
        if let (Some((tee, tee_claims)), Some(map)) =
            (appraisal.tee_claims, annotated.as_object_mut())
        {
            map.insert(tee.to_string(), tee_claims.clone());
        }
        let claims = json!({
            "eat_profile": "tag:github.com,2023:veraison/ear",
            "iat": iat,
            "exp": iat + TOKEN_LIFETIME_SECS,
            "ear.verifier-id": {
                "developer": "https://confidentialcontainers.org",
                "build": concat!("test-kbs ", env!("CARGO_PKG_VERSION")),
            },
            "submods": {
                "cpu0": {
                    "ear.status": appraisal.status,
                    "ear.appraisal-policy-id": "default_cpu",
                    "ear.veraison.annotated-evidence": annotated,
                },
            },
        });
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256","typ":"JWT"}"#);
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims)?);
        let signing_input = format!("{header}.{payload}");
        let signature: Signature = self.signing_key.sign(signing_input.as_bytes());
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.to_bytes())
        ))
    }

    /// Verifies a token's ES256 signature and expiry and returns its claims.
    pub(crate) fn verify(&self, token: &str) -> anyhow::Result<Value> {
        let mut parts = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            bail!("token is not a JWS in compact form");
        };
        let header: Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(header_b64)
                .context("token header is not base64url")?,
        )
        .context("token header is not JSON")?;
        ensure!(
            header.get("alg").and_then(Value::as_str) == Some("ES256"),
            "token is not signed with ES256"
        );
        let signature = URL_SAFE_NO_PAD
            .decode(signature_b64)
            .context("token signature is not base64url")?;
        let signature = Signature::from_slice(&signature).context("token signature length")?;
        let signing_input = &token[..header_b64.len() + 1 + payload_b64.len()];
        self.verifying_key
            .verify(signing_input.as_bytes(), &signature)
            .map_err(|_| anyhow!("token signature does not verify with the broker key"))?;
        let claims: Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(payload_b64)
                .context("token claims are not base64url")?,
        )
        .context("token claims are not JSON")?;
        let exp = claims
            .get("exp")
            .and_then(Value::as_u64)
            .ok_or_else(|| anyhow!("token has no exp claim"))?;
        ensure!(exp > now_secs(), "token expired");
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(issuer: &TokenIssuer) -> String {
        issuer
            .issue(&Appraisal {
                status: "affirming",
                tee_pubkey: &json!({"kty": "EC", "crv": "P-256"}),
                nonce: "n",
                pcrs: &["00".repeat(32)],
                ak_trusted: true,
                tee_claims: None,
            })
            .unwrap()
    }

    #[test]
    fn issued_token_verifies_and_carries_claims() {
        let issuer = TokenIssuer::new();
        let claims = issuer.verify(&sample(&issuer)).unwrap();
        assert_eq!(claims.pointer(STATUS_POINTER), Some(&json!("affirming")));
        assert_eq!(
            claims.pointer(TEE_PUBKEY_POINTER),
            Some(&json!({"kty": "EC", "crv": "P-256"}))
        );
    }

    #[test]
    fn foreign_or_tampered_tokens_are_refused() {
        let issuer = TokenIssuer::new();
        let token = sample(&issuer);
        assert!(TokenIssuer::new().verify(&token).is_err());

        let parts: Vec<&str> = token.split('.').collect();
        let forged_claims = URL_SAFE_NO_PAD
            .encode(br#"{"exp":99999999999,"submods":{"cpu0":{"ear.status":"affirming"}}}"#);
        let forged = format!("{}.{}.{}", parts[0], forged_claims, parts[2]);
        assert!(issuer.verify(&forged).is_err());
        assert!(issuer.verify("a.b").is_err());
    }
}
