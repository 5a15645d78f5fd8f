//! The KBS protocol's binding of evidence to a session: SHA-384 over the RFC 8785 canonical
//! JSON of the runtime data (the nonce, the TEE public key and, for composite evidence, the
//! additional evidence).

use anyhow::Context;
use serde_json::Value;
use sha2::{Digest, Sha384};

fn digest(runtime_data: &Value) -> anyhow::Result<[u8; 48]> {
    let canonical =
        serde_json_canonicalizer::to_vec(runtime_data).context("canonicalise runtime data")?;
    Ok(Sha384::digest(canonical).into())
}

/// The binding digest of the primary evidence: SHA-384(JCS({additional-evidence, nonce,
/// tee-pubkey})).
///
/// `tee_pubkey` is used exactly as received, so any member the client put in its JWK is part of
/// the digest, and the client must hash the same object it sends.
pub fn binding_digest(
    additional_evidence: &str,
    nonce: &str,
    tee_pubkey: &Value,
) -> anyhow::Result<[u8; 48]> {
    digest(&serde_json::json!({
        "additional-evidence": additional_evidence,
        "nonce": nonce,
        "tee-pubkey": tee_pubkey,
    }))
}

/// The digest an additional device's evidence (the vTPM quote of composite evidence) is bound
/// to: the runtime data without the `additional-evidence` key.
pub fn device_binding_digest(nonce: &str, tee_pubkey: &Value) -> anyhow::Result<[u8; 48]> {
    digest(&serde_json::json!({
        "nonce": nonce,
        "tee-pubkey": tee_pubkey,
    }))
}
