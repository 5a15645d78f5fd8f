//! The GCE AK certificate in `tpm` evidence: `"ak_cert": <standard base64 DER>` beside
//! `ak_public`, as the agent sends it on Google Cloud (Trustee's `tpm` verifier ignores the
//! member). When the broker has GCE roots configured ([`GcePolicy`]), an AK whose certificate
//! chains to one of them, and whose certified key is `ak_public`, is trusted without being
//! listed in `trusted_aks`: Google vouches that the key lives in the vTPM of a GCE VM.

use std::time::SystemTime;

use anyhow::{anyhow, ensure, Context};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::Value;

use crate::x509;

/// Which certificate authorities vouch for GCE attestation keys. The default trusts none.
#[derive(Clone, Default)]
pub struct GcePolicy {
    /// DER of the roots an AK certificate must chain to: Google's `tpm_ek_root` for real VMs,
    /// a test CA (see [`crate::sim_cloud::GceCa`]) in tests.
    pub trusted_roots: Vec<Vec<u8>>,
    /// Intermediate certificates (DER) between the roots and the AK certificates.
    pub intermediates: Vec<Vec<u8>>,
    /// The time at which certificates must be valid; `None` means now.
    pub verification_time: Option<SystemTime>,
}

/// Certificates are shown by count, not as bytes.
impl std::fmt::Debug for GcePolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GcePolicy")
            .field(
                "trusted_roots",
                &format!("<{} certificates>", self.trusted_roots.len()),
            )
            .field(
                "intermediates",
                &format!("<{} certificates>", self.intermediates.len()),
            )
            .field("verification_time", &self.verification_time)
            .finish()
    }
}

/// What the AK certificate of a `tpm` evidence says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AkCert {
    /// The evidence has no `ak_cert`.
    Absent,
    /// It has one, but the broker trusts no GCE root: not looked at.
    NoPolicy,
    /// It chains to a trusted root and certifies `ak_public`; the issuer's subject.
    Certified(String),
    /// It does not; why.
    Rejected(String),
}

/// Checks the `ak_cert` of `evidence` against `ak_spki` (the verified quote's AK) and
/// `policy`.
pub(crate) fn check_ak_cert(evidence: &Value, ak_spki: &[u8], policy: &GcePolicy) -> AkCert {
    let Some(b64) = evidence.get("ak_cert") else {
        return AkCert::Absent;
    };
    if policy.trusted_roots.is_empty() {
        return AkCert::NoPolicy;
    }
    match verify(b64, ak_spki, policy) {
        Ok(issuer) => AkCert::Certified(issuer),
        Err(e) => AkCert::Rejected(format!("{e:#}")),
    }
}

fn verify(b64: &Value, ak_spki: &[u8], policy: &GcePolicy) -> anyhow::Result<String> {
    let der = STANDARD
        .decode(
            b64.as_str()
                .ok_or_else(|| anyhow!("ak_cert is not a string"))?,
        )
        .context("ak_cert is not standard base64")?;
    let cert = x509::from_der(&der).context("ak_cert")?;
    ensure!(
        x509::spki_der(&cert)? == ak_spki,
        "ak_cert certifies another key than ak_public"
    );
    let parse = |ders: &[Vec<u8>], what: &str| -> anyhow::Result<Vec<_>> {
        ders.iter()
            .map(|d| x509::from_der(d).with_context(|| format!("configured GCE {what}")))
            .collect()
    };
    let roots = parse(&policy.trusted_roots, "root")?;
    let intermediates = parse(&policy.intermediates, "intermediate")?;
    let at = policy.verification_time.unwrap_or_else(SystemTime::now);
    x509::verify_path(&cert, &intermediates, &roots, at).context("AK certificate chain")?;
    Ok(cert.tbs_certificate.issuer.to_string())
}

/// Validates a policy when the broker starts.
pub(crate) fn validate(policy: &GcePolicy) -> anyhow::Result<()> {
    for der in policy.trusted_roots.iter().chain(&policy.intermediates) {
        x509::from_der(der).context("gce policy certificate")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evidence::verify_tpm;
    use std::time::{Duration, UNIX_EPOCH};

    const SET: &str = "tpm/quote/gce-cos-85-nonce9009";

    fn testdata(path: &str) -> Vec<u8> {
        crate::testdata(&format!("{SET}/{path}"))
    }

    /// The real GCE set in the agent's `tpm` evidence shape: the AK as SPKI (from its
    /// TPMT_PUBLIC), the SHA-256 quote and signature, the PCRs, the AK certificate.
    fn real_evidence() -> (Value, Vec<u8>) {
        use rsa::pkcs8::EncodePublicKey;
        use tss_esapi::structures::Public;
        use tss_esapi::traits::UnMarshall;
        let public = Public::unmarshall(&testdata("ak_pub.tpmt_public.bin")).unwrap();
        let Public::Rsa { unique, .. } = public else {
            panic!("GCE AK is RSA")
        };
        let key = rsa::RsaPublicKey::new(
            rsa::BigUint::from_bytes_be(unique.value()),
            rsa::BigUint::from(65_537u32),
        )
        .unwrap();
        let spki = key.to_public_key_der().unwrap().into_vec();
        let pcrs: Value = serde_json::from_slice(&testdata("pcrs.json")).unwrap();
        let sha256: Vec<String> = (0..24)
            .map(|i| {
                pcrs["pcrs"]["sha256"][i.to_string()]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        let evidence = serde_json::json!({
            "tpm_quote": {
                "signature": STANDARD.encode(testdata("quote_sha256.tpmt_signature.bin")),
                "message": STANDARD.encode(testdata("quote_sha256.tpms_attest.bin")),
                "pcrs": sha256,
            },
            "ak_public": STANDARD.encode(&spki),
            "ak_cert": STANDARD.encode(testdata("ak_cert.der")),
            "event_log": STANDARD.encode(testdata("event_log.bin")),
        });
        (evidence, spki)
    }

    fn google(at: SystemTime) -> GcePolicy {
        GcePolicy {
            trusted_roots: vec![testdata("gce_tpm_ek_root_1.cer")],
            intermediates: vec![testdata("gce_tpm_ek_intermediate_2.crt")],
            verification_time: Some(at),
        }
    }

    #[test]
    fn real_gce_quote_verifies_and_its_ak_chains_to_googles_root() {
        let (evidence, spki) = real_evidence();
        let quote = verify_tpm(&evidence, &[0x90, 0x09]).unwrap();
        assert_eq!(quote.ak_spki, spki);
        assert_eq!(
            hex::encode(quote.pcrs[0]),
            "0f35c214608d93c7a6e68ae7359b4a8be5a0e99eea9107ece427c4dea4e439cf"
        );
        assert!(verify_tpm(&evidence, &[0x90, 0x0a]).is_err());

        let at = UNIX_EPOCH + Duration::from_secs(1_750_000_000); // 2025-06
        match check_ak_cert(&evidence, &quote.ak_spki, &google(at)) {
            AkCert::Certified(issuer) => assert!(issuer.contains("tpm_ek_v1_cloud_host-signer")),
            other => panic!("{other:?}"),
        }
        // Another key, another root, before the certificate's time: rejected.
        assert!(matches!(
            check_ak_cert(&evidence, &[0x30, 0], &google(at)),
            AkCert::Rejected(_)
        ));
        let ca = crate::sim_cloud::GceCa::new().unwrap();
        let other = GcePolicy {
            trusted_roots: vec![ca.root_der()],
            ..google(at)
        };
        assert!(matches!(
            check_ak_cert(&evidence, &spki, &other),
            AkCert::Rejected(_)
        ));
        let early = UNIX_EPOCH + Duration::from_secs(1_600_000_000); // 2020-09
        assert!(matches!(
            check_ak_cert(&evidence, &spki, &google(early)),
            AkCert::Rejected(_)
        ));
        assert_eq!(
            check_ak_cert(&evidence, &spki, &GcePolicy::default()),
            AkCert::NoPolicy
        );
    }

    #[test]
    fn simulated_gce_ca_certifies_a_foreign_rsa_key() {
        let (_, spki) = real_evidence();
        let ca = crate::sim_cloud::GceCa::new().unwrap();
        let cert = ca.issue_ak_cert(&spki).unwrap();
        let evidence = serde_json::json!({"ak_cert": STANDARD.encode(cert)});
        let policy = GcePolicy {
            trusted_roots: vec![ca.root_der()],
            intermediates: vec![ca.intermediate_der()],
            verification_time: None,
        };
        assert!(matches!(
            check_ak_cert(&evidence, &spki, &policy),
            AkCert::Certified(_)
        ));
    }
}
