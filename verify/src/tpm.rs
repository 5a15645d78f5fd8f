//! TPM 2.0 quotes: a `TPMS_ATTEST` of type quote, signed by an attestation key (RSASSA-PKCS1
//! v1.5 with SHA-256, what Trustee, the GCE and Azure vTPMs and our agent use), its PCR
//! selection and PCR digest, and its qualifying data (the nonce).
//!
//! The structures are unmarshalled with tss-esapi's own parsers, so none of this shares code
//! with the agent that marshalled them.

use anyhow::{anyhow, bail, ensure, Context};
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;
use rsa::pkcs1v15::{Signature as RsaPkcs1Signature, VerifyingKey};
use rsa::pkcs8::DecodePublicKey;
use rsa::signature::Verifier;
use rsa::traits::PublicKeyParts;
use rsa::{BigUint, RsaPublicKey};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::structure_tags::AttestationType;
use tss_esapi::structures::{Attest, AttestInfo, Public, Signature};
use tss_esapi::traits::UnMarshall;

use crate::x509;

/// A quote's attested content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quote {
    /// The selected PCRs per bank: (bank name, PCR indices ascending).
    pub banks: Vec<(String, Vec<u8>)>,
    /// The PCR digest: the signing scheme's hash over the selected PCR values in order.
    pub pcr_digest: Vec<u8>,
    /// The qualifying data (extraData): the verifier's nonce.
    pub extra_data: Vec<u8>,
    /// The TPM's firmware version.
    pub firmware_version: u64,
}

/// The name Trustee and tpm2-tools use for a bank.
pub fn bank_name(alg: HashingAlgorithm) -> String {
    match alg {
        HashingAlgorithm::Sha1 => "sha1".into(),
        HashingAlgorithm::Sha256 => "sha256".into(),
        HashingAlgorithm::Sha384 => "sha384".into(),
        HashingAlgorithm::Sha512 => "sha512".into(),
        HashingAlgorithm::Sm3_256 => "sm3_256".into(),
        other => format!("{other:?}").to_ascii_lowercase(),
    }
}

/// Unmarshals a `TPMS_ATTEST` that must be a quote.
pub fn parse_quote(message: &[u8]) -> anyhow::Result<Quote> {
    let attest = Attest::unmarshall(message).map_err(|e| anyhow!("not a TPMS_ATTEST: {e}"))?;
    ensure!(
        attest.attestation_type() == AttestationType::Quote,
        "the TPMS_ATTEST attests {:?}, not a quote",
        attest.attestation_type()
    );
    let AttestInfo::Quote { info } = attest.attested() else {
        bail!("the TPMS_ATTEST carries no quote information");
    };
    let banks = info
        .pcr_selection()
        .get_selections()
        .iter()
        .map(|s| {
            let mut pcrs: Vec<u8> = s
                .selected()
                .into_iter()
                // Each slot converts to its bit in the selection mask.
                .map(|slot| u32::from(slot).trailing_zeros() as u8)
                .collect();
            pcrs.sort_unstable();
            (bank_name(s.hashing_algorithm()), pcrs)
        })
        .collect();
    Ok(Quote {
        banks,
        pcr_digest: info.pcr_digest().value().to_vec(),
        extra_data: attest.extra_data().value().to_vec(),
        firmware_version: attest.firmware_version(),
    })
}

/// Checks the quote's PCR digest against PCR values in selection order (SHA-256, the hash of
/// the RSASSA-SHA256 signing scheme).
pub fn check_pcr_digest<T: AsRef<[u8]>>(quote: &Quote, values: &[T]) -> anyhow::Result<()> {
    let mut hasher = Sha256::new();
    for v in values {
        hasher.update(v.as_ref());
    }
    let digest = hasher.finalize();
    ensure!(
        quote.pcr_digest == digest[..],
        "quote PCR digest {} does not match SHA-256 of the supplied PCR values {}",
        hex::encode(&quote.pcr_digest),
        hex::encode(digest)
    );
    Ok(())
}

/// Checks the quote's qualifying data; `what` names the expectation in the message.
pub fn check_extra_data(quote: &Quote, expected: &[u8], what: &str) -> anyhow::Result<()> {
    ensure!(
        quote.extra_data == expected,
        "quote qualifying data {} is not {what} {}",
        hex::encode(&quote.extra_data),
        hex::encode(expected)
    );
    Ok(())
}

/// Checks a raw RSASSA-PKCS1-v1_5/SHA-256 signature over `message`.
pub fn verify_rsassa_sha256(
    message: &[u8],
    signature: &[u8],
    ak: &RsaPublicKey,
) -> anyhow::Result<()> {
    let signature = RsaPkcs1Signature::try_from(signature).context("RSASSA signature bytes")?;
    VerifyingKey::<Sha256>::new(ak.clone())
        .verify(message, &signature)
        .map_err(|_| {
            anyhow!(
                "quote signature does not verify with the AK (RSA-{} PKCS#1 v1.5 SHA-256)",
                ak.size() * 8
            )
        })
}

/// Checks a `TPMT_SIGNATURE` (RSASSA with SHA-256) over `message`.
pub fn verify_signature(message: &[u8], signature: &[u8], ak: &RsaPublicKey) -> anyhow::Result<()> {
    let signature =
        Signature::unmarshall(signature).map_err(|e| anyhow!("not a TPMT_SIGNATURE: {e}"))?;
    let Signature::RsaSsa(rsa_signature) = signature else {
        bail!(
            "the signature uses {:?}, only RSASSA is accepted",
            signature.algorithm()
        );
    };
    ensure!(
        rsa_signature.hashing_algorithm() == HashingAlgorithm::Sha256,
        "the signature hashes with {:?}, not SHA-256",
        rsa_signature.hashing_algorithm()
    );
    verify_rsassa_sha256(message, rsa_signature.signature().value(), ak)
}

/// An RSA attestation key from what an operator has: a PEM or DER SubjectPublicKeyInfo, an
/// X.509 certificate (DER or PEM), or a `TPMT_PUBLIC` / `TPM2B_PUBLIC` (as `tpm2_readpublic
/// -f tpmt` or `tpm2_createak` write them).
pub fn ak_key(bytes: &[u8]) -> anyhow::Result<RsaPublicKey> {
    if let Ok(text) = std::str::from_utf8(bytes) {
        if text.contains("-----BEGIN PUBLIC KEY-----") {
            return RsaPublicKey::from_public_key_pem(text.trim())
                .map_err(|e| anyhow!("not an RSA public key: {e}"));
        }
        if text.contains("-----BEGIN CERTIFICATE-----") {
            let chain = x509::pem_chain(bytes)?;
            return x509::rsa_key(&chain[0]);
        }
    }
    if let Ok(key) = RsaPublicKey::from_public_key_der(bytes) {
        return Ok(key);
    }
    if let Ok(cert) = x509::from_der(bytes) {
        return x509::rsa_key(&cert);
    }
    let public = Public::unmarshall(bytes).or_else(|_| {
        // A TPM2B_PUBLIC: a big-endian u16 size, then the TPMT_PUBLIC.
        let size = bytes
            .get(..2)
            .map(|s| usize::from(u16::from_be_bytes([s[0], s[1]])));
        match size {
            Some(n) if n + 2 == bytes.len() => Public::unmarshall(&bytes[2..]),
            _ => Public::unmarshall(&[]),
        }
    });
    match public {
        Ok(Public::Rsa {
            parameters, unique, ..
        }) => {
            let exponent = match parameters.exponent().value() {
                0 => 65537,
                e => e,
            };
            RsaPublicKey::new(
                BigUint::from_bytes_be(unique.value()),
                BigUint::from(exponent),
            )
            .map_err(|e| anyhow!("the TPMT_PUBLIC's RSA key is invalid: {e}"))
        }
        Ok(_) => bail!("the TPMT_PUBLIC is not an RSA key"),
        Err(_) => bail!(
            "not an RSA public key (PEM or DER SubjectPublicKeyInfo, certificate, TPMT_PUBLIC \
             or TPM2B_PUBLIC)"
        ),
    }
}

/// Base64url with or without padding (Azure's runtime claims use either).
const URL_SAFE_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The vTPM attestation key in an Azure HCL report's runtime claims: the RSA JWK with `kid`
/// "HCLAkPub" (trusted as far as the hardware report that binds the claims).
pub fn hcl_ak(claims: &Value) -> anyhow::Result<RsaPublicKey> {
    let jwk = claims
        .get("keys")
        .and_then(Value::as_array)
        .and_then(|keys| {
            keys.iter()
                .find(|k| k.get("kid").and_then(Value::as_str) == Some("HCLAkPub"))
        })
        .ok_or_else(|| anyhow!("HCL runtime claims have no HCLAkPub"))?;
    ensure!(
        jwk.get("kty").and_then(Value::as_str) == Some("RSA"),
        "HCLAkPub is not an RSA key"
    );
    let field = |k: &str| -> anyhow::Result<BigUint> {
        let text = jwk
            .get(k)
            .and_then(Value::as_str)
            .ok_or_else(|| anyhow!("HCLAkPub has no {k}"))?;
        let bytes = URL_SAFE_LENIENT
            .decode(text)
            .with_context(|| format!("HCLAkPub {k} is not base64url"))?;
        Ok(BigUint::from_bytes_be(&bytes))
    };
    RsaPublicKey::new(field("n")?, field("e")?).context("HCLAkPub is not a valid RSA key")
}
