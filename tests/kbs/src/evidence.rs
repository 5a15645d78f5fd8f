//! Evidence checks: the runtime-data binding digest and real verification of TPM quotes.
//!
//! Nothing here is shared with the agent: the quote is unmarshalled by `attest_verify::tpm`
//! with tss-esapi's own `TPMS_ATTEST`/`TPMT_SIGNATURE` parsers and the signature checked with
//! the `rsa` crate, so a bug in the agent's marshalling or binding shows up as a rejected
//! attestation. The broker's own rule on top: exactly sha256:0-23.

use anyhow::{anyhow, bail, ensure, Context};
use base64::{engine::general_purpose::STANDARD, Engine};
use rsa::pkcs8::DecodePublicKey;
use rsa::RsaPublicKey;
use serde::Deserialize;
use serde_json::Value;

/// Number of PCRs a TPM quote must cover (PCR0 to PCR23 of the SHA-256 bank).
pub(crate) const PCR_COUNT: usize = 24;

pub(crate) use attest_verify::binding::binding_digest;

/// The `tpm` evidence a client sends as `primary_evidence`. Unknown members (an event log, for
/// example) are allowed, as Trustee allows them.
#[derive(Debug, Deserialize)]
struct TpmEvidence {
    tpm_quote: TpmQuote,
    ak_public: String,
}

#[derive(Debug, Deserialize)]
struct TpmQuote {
    signature: String,
    message: String,
    pcrs: Vec<String>,
}

/// A TPM quote that passed every cryptographic check.
#[derive(Debug, Clone)]
pub(crate) struct VerifiedQuote {
    /// The AK as DER SubjectPublicKeyInfo, decoded from `ak_public`.
    pub ak_spki: Vec<u8>,
    /// PCR0 to PCR23 of the SHA-256 bank, as the quote attests them.
    pub pcrs: Vec<[u8; 32]>,
}

/// Verifies `tpm` evidence: the quote must be signed by `ak_public` (RSASSA-PKCS1-v1_5 with
/// SHA-256), select exactly sha256:0-23, carry the digest of the supplied PCR values, and
/// carry `expected_extra_data` (the first 32 bytes of the binding digest) as qualifying data.
///
/// Whether the AK and the PCR values are *trusted* is appraisal, not verification, and is left
/// to the caller.
pub(crate) fn verify_tpm(
    primary_evidence: &Value,
    expected_extra_data: &[u8],
) -> anyhow::Result<VerifiedQuote> {
    let evidence = TpmEvidence::deserialize(primary_evidence)
        .context("primary_evidence is not TPM evidence (tpm_quote, ak_public)")?;

    let ak_spki = STANDARD
        .decode(&evidence.ak_public)
        .context("ak_public is not standard base64")?;
    let ak = RsaPublicKey::from_public_key_der(&ak_spki)
        .context("ak_public is not a DER SubjectPublicKeyInfo of an RSA key")?;

    let signature_bytes = STANDARD
        .decode(&evidence.tpm_quote.signature)
        .context("tpm_quote.signature is not standard base64")?;
    let message = STANDARD
        .decode(&evidence.tpm_quote.message)
        .context("tpm_quote.message is not standard base64")?;
    attest_verify::tpm::verify_signature(&message, &signature_bytes, &ak)
        .context("tpm_quote.signature (with ak_public)")?;

    // Only now, with the signature known good, is the message worth parsing: everything below
    // is attested by the AK.
    let pcrs = check_quote(
        &message,
        &evidence.tpm_quote.pcrs,
        expected_extra_data,
        "the first 32 bytes of the binding digest",
    )?;
    Ok(VerifiedQuote { ak_spki, pcrs })
}

/// Checks a signature-verified `TPMS_ATTEST`: a quote that selects exactly sha256:0-23, whose
/// PCR digest is SHA-256 of `pcr_values` (hex) and whose qualifying data is
/// `expected_extra_data` (`expected_what`, for the message). Returns the PCR values.
pub(crate) fn check_quote(
    message: &[u8],
    pcr_values: &[String],
    expected_extra_data: &[u8],
    expected_what: &str,
) -> anyhow::Result<Vec<[u8; 32]>> {
    let quote = attest_verify::tpm::parse_quote(message).context("tpm_quote.message")?;
    let [(bank, selected)] = quote.banks.as_slice() else {
        bail!(
            "quote selects {} PCR banks, expected only sha256:0-23",
            quote.banks.len()
        );
    };
    ensure!(
        bank == "sha256",
        "quote selects the {bank} bank, expected sha256"
    );
    ensure!(
        selected.len() == PCR_COUNT
            && selected
                .iter()
                .enumerate()
                .all(|(i, p)| usize::from(*p) == i),
        "quote selects PCRs {selected:?}, expected exactly sha256:0-23"
    );
    ensure!(
        pcr_values.len() == PCR_COUNT,
        "tpm_quote.pcrs has {} values, expected {PCR_COUNT}",
        pcr_values.len()
    );
    let mut pcrs = Vec::with_capacity(PCR_COUNT);
    for (index, value) in pcr_values.iter().enumerate() {
        let bytes: [u8; 32] = hex::decode(value)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| anyhow!("tpm_quote.pcrs[{index}] is not 64 hex digits"))?;
        pcrs.push(bytes);
    }
    attest_verify::tpm::check_pcr_digest(&quote, &pcrs)?;
    attest_verify::tpm::check_extra_data(&quote, expected_extra_data, expected_what)?;
    Ok(pcrs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha384};

    /// The digest of a fixed input, checked against a value computed outside Rust:
    /// `printf '%s' '{"additional-evidence":"","nonce":"bm9uY2U=","tee-pubkey":{"alg":"ECDH-ES+A256KW","crv":"P-256","kty":"EC","x":"eA","y":"eQ"}}' | sha384sum`.
    /// The input is written in a different member order to prove canonicalisation happens.
    #[test]
    fn binding_digest_matches_hand_computed_value() {
        let tee_pubkey = serde_json::json!({
            "kty": "EC", "y": "eQ", "x": "eA", "crv": "P-256", "alg": "ECDH-ES+A256KW"
        });
        let digest = binding_digest("", "bm9uY2U=", &tee_pubkey).unwrap();
        assert_eq!(hex::encode(digest), EXPECTED_DIGEST);

        let canonical = r#"{"additional-evidence":"","nonce":"bm9uY2U=","tee-pubkey":{"alg":"ECDH-ES+A256KW","crv":"P-256","kty":"EC","x":"eA","y":"eQ"}}"#;
        assert_eq!(hex::encode(Sha384::digest(canonical)), EXPECTED_DIGEST);
    }

    const EXPECTED_DIGEST: &str =
        "412a2cd46689a873a3606a62cc5dadd837d33a7dfe3706531ba537d4c21eb3dfb6a4639a2302472555aa3430cee0bc4e";

    #[test]
    fn binding_digest_depends_on_additional_evidence() {
        let key = serde_json::json!({"kty": "EC"});
        assert_ne!(
            binding_digest("", "n", &key).unwrap(),
            binding_digest("{}", "n", &key).unwrap()
        );
    }

    #[test]
    fn non_tpm_evidence_is_rejected() {
        let err = verify_tpm(&serde_json::json!({"quote": "x"}), &[0; 32]).unwrap_err();
        assert!(format!("{err:#}").contains("not TPM evidence"), "{err:#}");
    }
}
