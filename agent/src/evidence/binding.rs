//! The binding of evidence to one broker session: pure code, no I/O.
//!
//! Trustee's KBS recomputes `SHA-384(JCS({"additional-evidence": A, "nonce": N,
//! "tee-pubkey": K}))` (JCS = RFC 8785 canonical JSON) and requires it in the hardware report
//! data; a TPM quote carries its first 32 bytes as qualifying data. Binding the ephemeral
//! public key this way is what makes a released secret useless to anyone but this boot.

use kbs_types::TeePubKey;
use sha2::{Digest, Sha384};

/// The 48-byte binding digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportData(pub [u8; 48]);

impl ReportData {
    /// The digest zero-padded to the 64 bytes of SNP REPORT_DATA / TDX REPORTDATA.
    pub fn padded64(&self) -> [u8; 64] {
        let mut out = [0u8; 64];
        out[..48].copy_from_slice(&self.0);
        out
    }

    /// The first 32 bytes, which a TPM quote carries as qualifying data.
    pub(crate) fn tpm_qualifying_data(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(&self.0[..32]);
        out
    }
}

/// Compute the binding digest. `additional_evidence` is the exact string sent in
/// `tee-evidence.additional_evidence` (`""` when there is none).
pub fn report_data(
    nonce: &str,
    tee_pubkey: &TeePubKey,
    additional_evidence: &str,
) -> Result<ReportData, serde_json::Error> {
    let value = serde_json::json!({
        "additional-evidence": additional_evidence,
        "nonce": nonce,
        "tee-pubkey": tee_pubkey,
    });
    let canonical = serde_json_canonicalizer::to_vec(&value)?;
    Ok(ReportData(Sha384::digest(&canonical).into()))
}

/// The binding digest of an additional device's evidence: the same hash computed without the
/// `additional-evidence` key (that evidence is itself part of the primary binding).
pub(crate) fn device_report_data(
    nonce: &str,
    tee_pubkey: &TeePubKey,
) -> Result<ReportData, serde_json::Error> {
    let value = serde_json::json!({
        "nonce": nonce,
        "tee-pubkey": tee_pubkey,
    });
    let canonical = serde_json_canonicalizer::to_vec(&value)?;
    Ok(ReportData(Sha384::digest(&canonical).into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A vector computed by hand: the canonical JSON below was written out by hand (keys in
    /// code-point order, no whitespace) and hashed with `sha384sum`:
    ///
    /// ```text
    /// printf '%s' '{"additional-evidence":"","nonce":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=","tee-pubkey":{"alg":"ECDH-ES+A256KW","crv":"P-256","kty":"EC","x":"xx","y":"yy"}}' | sha384sum
    /// ```
    #[test]
    fn matches_hand_computed_vector() {
        let key = TeePubKey::EC {
            crv: "P-256".into(),
            alg: "ECDH-ES+A256KW".into(),
            x: "xx".into(),
            y: "yy".into(),
        };
        let nonce = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
        let rd = report_data(nonce, &key, "").unwrap();
        assert_eq!(hex::encode(rd.0), HAND_VECTOR);
        assert_eq!(&rd.padded64()[48..], &[0u8; 16]);
        assert_eq!(rd.tpm_qualifying_data(), rd.0[..32]);
        // The additional evidence is part of the binding.
        assert_ne!(report_data(nonce, &key, "{}").unwrap(), rd);
    }

    const HAND_VECTOR: &str = "858cb253457985bbebc39c0db75536c469d5dcc08cdb5f3408f1b90b0fb3fa92f1f1ed75646e15e6e754741e41453757";
}
