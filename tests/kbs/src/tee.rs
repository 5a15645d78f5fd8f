//! Verification and appraisal of one attestation: the primary evidence for the session's TEE
//! type and, for SNP and TDX, a TPM quote in `additional_evidence` (composite evidence).
//!
//! Binding, as Trustee does it: the primary evidence carries the SHA-384 digest of the runtime
//! data including the exact `additional_evidence` string; a device in `additional_evidence`
//! carries the digest of the runtime data *without* the `additional-evidence` key (its evidence
//! is already covered by the primary binding). A TPM quote carries the first 32 bytes.
//!
//! The appraisal is `affirming` only when every part is: for the TPM, the AK is trusted and the
//! expected PCRs match; for SNP/TDX, the policy's expectations hold. When the broker has TPM
//! expectations (trusted AKs or PCRs) and a TEE session sends no TPM quote, that is a reason for
//! `warning` too, so dropping the TPM part cannot skip its policy.

use std::collections::{BTreeMap, HashMap};

use anyhow::{bail, ensure, Context};
use kbs_types::Tee;
use serde_json::Value;

use crate::azure::AzurePolicy;
use crate::evidence::{binding_digest, verify_tpm};
use crate::gce::{AkCert, GcePolicy};
use crate::snp::SnpPolicy;
use crate::tdx::TdxPolicy;

pub(crate) use attest_verify::binding::device_binding_digest;

/// What one attestation must be checked against.
pub(crate) struct Input<'a> {
    pub tee: Tee,
    pub primary: &'a Value,
    pub additional: &'a str,
    pub nonce: &'a str,
    pub tee_pubkey: &'a Value,
    pub trusted_aks: &'a [Vec<u8>],
    pub expected_pcrs: &'a BTreeMap<u8, Vec<[u8; 32]>>,
    pub snp: &'a SnpPolicy,
    pub tdx: &'a TdxPolicy,
    pub azure: &'a AzurePolicy,
    pub gce: &'a GcePolicy,
}

/// A verified attestation and its appraisal.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// Why the appraisal is not `affirming` (empty when it is).
    pub reasons: Vec<String>,
    /// PCR0-23 of the TPM quote as lowercase hex (empty without a TPM quote).
    pub pcrs: Vec<String>,
    /// Whether the TPM's AK is trusted (false without a TPM quote).
    pub ak_trusted: bool,
    /// The TEE's claims for the token: (tee name, claims).
    pub tee_claims: Option<(&'static str, Value)>,
    /// What was verified, for the log.
    pub summary: String,
}

/// Checks a TPM quote against the binding and appraises it like Trustee's default policy.
fn tpm_part(
    evidence: &Value,
    extra_data: &[u8],
    input: &Input<'_>,
    outcome: &mut Outcome,
) -> anyhow::Result<()> {
    let quote = verify_tpm(evidence, extra_data)?;
    // A GCE AK certificate that chains to a trusted GCE root vouches for the AK too.
    let cert = crate::gce::check_ak_cert(evidence, &quote.ak_spki, input.gce);
    outcome.ak_trusted =
        input.trusted_aks.contains(&quote.ak_spki) || matches!(cert, AkCert::Certified(_));
    if !outcome.ak_trusted {
        outcome.reasons.push("AK not in trusted_aks".to_string());
        if let AkCert::Rejected(why) = &cert {
            outcome
                .reasons
                .push(format!("AK certificate rejected: {why}"));
        }
    }
    if let AkCert::Certified(issuer) = &cert {
        outcome.summary = format!(" (AK certified by {issuer})");
    }
    for (index, accepted) in input.expected_pcrs {
        let actual = &quote.pcrs[usize::from(*index)];
        if !accepted.contains(actual) {
            outcome.reasons.push(pcr_mismatch(*index, actual, accepted));
        }
    }
    outcome.pcrs = quote.pcrs.iter().map(hex::encode).collect();
    Ok(())
}

/// Why a PCR does not pass: its value and the values a reference list accepts.
pub(crate) fn pcr_mismatch(index: u8, actual: &[u8; 32], accepted: &[[u8; 32]]) -> String {
    let accepted: Vec<String> = accepted.iter().map(hex::encode).collect();
    match accepted.as_slice() {
        [one] => format!(
            "PCR{index} is {} but {one} is expected",
            hex::encode(actual)
        ),
        _ => format!(
            "PCR{index} is {} but one of [{}] is expected",
            hex::encode(actual),
            accepted.join(", ")
        ),
    }
}

/// Verifies and appraises one attestation. An error is a verification failure (the broker
/// answers 401); reasons in the outcome only lower the appraisal to `warning`.
pub(crate) fn verify(input: &Input<'_>) -> anyhow::Result<Outcome> {
    let mut outcome = Outcome::default();
    let devices: HashMap<Tee, Value> = if input.additional.is_empty() {
        HashMap::new()
    } else {
        serde_json::from_str(input.additional)
            .context("additional_evidence is not a JSON map of TEE to evidence")?
    };
    let digest = binding_digest(input.additional, input.nonce, input.tee_pubkey)?;
    let mut padded = [0u8; 64];
    padded[..48].copy_from_slice(&digest);

    match input.tee {
        Tee::Tpm => {
            if !devices.is_empty() {
                let names: Vec<&str> = devices.keys().map(|t| t.as_ref()).collect();
                bail!(
                    "test-kbs cannot verify additional evidence ({}) beside a TPM quote",
                    names.join(", ")
                );
            }
            tpm_part(input.primary, &digest[..32], input, &mut outcome)
                .context("verify TEE evidence failed")?;
            outcome.summary = format!("tpm quote{}", outcome.summary);
            return Ok(outcome);
        }
        Tee::AzSnpVtpm | Tee::AzTdxVtpm => {
            ensure!(
                devices.is_empty(),
                "Azure vTPM evidence carries its own vTPM quote; additional evidence is not expected"
            );
            let az = crate::azure::appraise(&crate::azure::AzureInput {
                tee: input.tee,
                evidence: input.primary,
                nonce: &digest,
                expected_pcrs: input.expected_pcrs,
                snp: input.snp,
                tdx: input.tdx,
                azure: input.azure,
            })
            .context("verify Azure vTPM evidence failed")?;
            outcome.reasons = az.reasons;
            outcome.pcrs = az.pcrs;
            // The hardware report vouches for the AK; trusted_aks is for bare TPMs.
            outcome.ak_trusted = true;
            let name = if input.tee == Tee::AzSnpVtpm {
                "az-snp-vtpm"
            } else {
                "az-tdx-vtpm"
            };
            outcome.tee_claims = Some((name, az.claims));
            outcome.summary = az.summary;
            return Ok(outcome);
        }
        Tee::Snp => {
            let snp = crate::snp::appraise(input.primary, &padded, input.snp)
                .context("verify SNP evidence failed")?;
            outcome.reasons.extend(snp.reasons);
            outcome.tee_claims = Some(("snp", snp.claims));
            outcome.summary = snp.summary;
        }
        Tee::Tdx => {
            let tdx = crate::tdx::appraise(input.primary, &padded, input.tdx)
                .context("verify TDX evidence failed")?;
            outcome.reasons.extend(tdx.reasons);
            outcome.tee_claims = Some(("tdx", tdx.claims));
            outcome.summary = tdx.summary;
        }
        other => bail!("test-kbs cannot verify {} evidence", other.as_ref()),
    }

    let unknown: Vec<&str> = devices
        .keys()
        .filter(|t| **t != Tee::Tpm)
        .map(|t| t.as_ref())
        .collect();
    ensure!(
        unknown.is_empty(),
        "test-kbs cannot verify additional evidence ({})",
        unknown.join(", ")
    );
    match devices.get(&Tee::Tpm) {
        Some(tpm) => {
            let device_digest = device_binding_digest(input.nonce, input.tee_pubkey)?;
            tpm_part(tpm, &device_digest[..32], input, &mut outcome)
                .context("verify additional tpm evidence failed")?;
            outcome.summary.push_str(" + tpm quote");
        }
        None if !input.trusted_aks.is_empty() || !input.expected_pcrs.is_empty() => {
            outcome
                .reasons
                .push("no TPM quote in additional_evidence, but TPM policy is configured".into());
        }
        None => {}
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha384};

    /// `printf '%s' '{"nonce":"bm9uY2U=","tee-pubkey":{"alg":"ECDH-ES+A256KW","crv":"P-256","kty":"EC","x":"eA","y":"eQ"}}' | sha384sum`
    #[test]
    fn device_digest_omits_the_additional_evidence_key() {
        let key = serde_json::json!({
            "kty": "EC", "y": "eQ", "x": "eA", "crv": "P-256", "alg": "ECDH-ES+A256KW"
        });
        let d = device_binding_digest("bm9uY2U=", &key).unwrap();
        let canonical = r#"{"nonce":"bm9uY2U=","tee-pubkey":{"alg":"ECDH-ES+A256KW","crv":"P-256","kty":"EC","x":"eA","y":"eQ"}}"#;
        assert_eq!(d, <[u8; 48]>::from(Sha384::digest(canonical)));
        assert_ne!(d, binding_digest("", "bm9uY2U=", &key).unwrap());
    }
}
