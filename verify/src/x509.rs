//! The X.509 checks the SNP and TDX verifiers share: is one certificate signed by another, and
//! is it valid at a given time.
//!
//! Only the algorithms the vendors' chains use are accepted: ECDSA P-256/SHA-256 (Intel PCK
//! chains), ECDSA P-384/SHA-384 (the test broker's simulated AMD chain), RSASSA-PSS with
//! SHA-384 (AMD's real ARK -> ASK -> VCEK chains) and RSASSA-PKCS1-v1_5 with SHA-256 (Google's
//! GCE EK/AK CA). Anything else is refused, never skipped.

use std::time::SystemTime;

use anyhow::{anyhow, bail, ensure, Context};
use p256::ecdsa::signature::Verifier;
use x509_cert::crl::CertificateList;
use x509_cert::der::asn1::ObjectIdentifier;
use x509_cert::der::{Decode, Encode};
use x509_cert::Certificate;

const ECDSA_WITH_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
const ECDSA_WITH_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");
const RSASSA_PSS: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.10");
const SHA256_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11");
const SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.2");
const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const SECP256R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const SECP384R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");

/// Parses one DER certificate.
pub fn from_der(der: &[u8]) -> anyhow::Result<Certificate> {
    Certificate::from_der(der).map_err(|e| anyhow!("not a DER X.509 certificate: {e}"))
}

/// Parses a PEM chain (leaf first, as Intel's quote certification data and AMD's KDS send it).
pub fn pem_chain(pem: &[u8]) -> anyhow::Result<Vec<Certificate>> {
    let chain = Certificate::load_pem_chain(pem)
        .map_err(|e| anyhow!("not a PEM certificate chain: {e}"))?;
    ensure!(!chain.is_empty(), "empty PEM certificate chain");
    Ok(chain)
}

/// The common name of a certificate's subject, for messages.
pub fn subject(cert: &Certificate) -> String {
    cert.tbs_certificate.subject.to_string()
}

/// The raw subjectPublicKey bits (an uncompressed SEC1 point for EC keys).
pub fn public_key_bits(cert: &Certificate) -> &[u8] {
    cert.tbs_certificate
        .subject_public_key_info
        .subject_public_key
        .raw_bytes()
}

/// The named curve of an EC public key, if the certificate holds one.
fn ec_curve(cert: &Certificate) -> Option<ObjectIdentifier> {
    let spki = &cert.tbs_certificate.subject_public_key_info;
    if spki.algorithm.oid != EC_PUBLIC_KEY {
        return None;
    }
    spki.algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.decode_as::<ObjectIdentifier>().ok())
}

/// The P-384 public key of a certificate (an SNP VCEK/VLEK).
pub fn p384_key(cert: &Certificate) -> anyhow::Result<p384::ecdsa::VerifyingKey> {
    ensure!(
        ec_curve(cert) == Some(SECP384R1),
        "{} does not hold an ECDSA P-384 key",
        subject(cert)
    );
    p384::ecdsa::VerifyingKey::from_sec1_bytes(public_key_bits(cert))
        .map_err(|e| anyhow!("{}: invalid P-384 public key: {e}", subject(cert)))
}

/// The P-256 public key of a certificate (an Intel PCK certificate).
pub fn p256_key(cert: &Certificate) -> anyhow::Result<p256::ecdsa::VerifyingKey> {
    ensure!(
        ec_curve(cert) == Some(SECP256R1),
        "{} does not hold an ECDSA P-256 key",
        subject(cert)
    );
    p256::ecdsa::VerifyingKey::from_sec1_bytes(public_key_bits(cert))
        .map_err(|e| anyhow!("{}: invalid P-256 public key: {e}", subject(cert)))
}

/// A certificate's key, for people: `EC P-256`, `EC P-384`, `RSA-4096`, or its algorithm OID.
pub fn key_description(cert: &Certificate) -> String {
    match ec_curve(cert) {
        Some(c) if c == SECP256R1 => return "EC P-256".into(),
        Some(c) if c == SECP384R1 => return "EC P-384".into(),
        _ => {}
    }
    match rsa_key(cert) {
        Ok(key) => {
            use rsa::traits::PublicKeyParts;
            format!("RSA-{}", key.size() * 8)
        }
        Err(_) => cert
            .tbs_certificate
            .subject_public_key_info
            .algorithm
            .oid
            .to_string(),
    }
}

/// A signature algorithm's name (those this module verifies), or its OID.
pub fn algorithm_name(oid: &ObjectIdentifier) -> String {
    match *oid {
        ECDSA_WITH_SHA256 => "ecdsa-with-SHA256".into(),
        ECDSA_WITH_SHA384 => "ecdsa-with-SHA384".into(),
        RSASSA_PSS => "RSASSA-PSS".into(),
        SHA256_WITH_RSA => "sha256WithRSAEncryption".into(),
        other => other.to_string(),
    }
}

/// Checks that `issuer` signed `cert` (names chain and the signature verifies).
pub fn verify_signed_by(cert: &Certificate, issuer: &Certificate) -> anyhow::Result<()> {
    ensure!(
        cert.tbs_certificate.issuer == issuer.tbs_certificate.subject,
        "{} is issued by {}, not by {}",
        subject(cert),
        cert.tbs_certificate.issuer,
        subject(issuer)
    );
    let tbs = cert
        .tbs_certificate
        .to_der()
        .context("re-encode tbsCertificate")?;
    let who = || format!("{} is not signed by {}", subject(cert), subject(issuer));
    verify_signature(
        &tbs,
        &cert.signature_algorithm,
        &cert.signature,
        issuer,
        &who,
    )
}

/// Checks a signature `issuer`'s key made over `tbs` with `algorithm`; `who` says what is
/// not signed, for the messages.
fn verify_signature(
    tbs: &[u8],
    algorithm: &x509_cert::spki::AlgorithmIdentifierOwned,
    signature: &x509_cert::der::asn1::BitString,
    issuer: &Certificate,
    who: &dyn Fn() -> String,
) -> anyhow::Result<()> {
    let signature = signature
        .as_bytes()
        .ok_or_else(|| anyhow!("{}: signature is not whole bytes", who()))?;
    if algorithm.oid == ECDSA_WITH_SHA256 {
        let key = p256_key(issuer).with_context(who)?;
        let sig = p256::ecdsa::Signature::from_der(signature).with_context(who)?;
        key.verify(tbs, &sig).map_err(|_| anyhow!(who()))
    } else if algorithm.oid == ECDSA_WITH_SHA384 {
        let key = p384_key(issuer).with_context(who)?;
        let sig = p384::ecdsa::Signature::from_der(signature).with_context(who)?;
        key.verify(tbs, &sig).map_err(|_| anyhow!(who()))
    } else if algorithm.oid == RSASSA_PSS {
        let params = algorithm
            .parameters
            .as_ref()
            .ok_or_else(|| anyhow!("{}: RSASSA-PSS without parameters", who()))?
            .decode_as::<rsa::pkcs1::RsaPssParams<'_>>()
            .map_err(|e| anyhow!("{}: RSASSA-PSS parameters: {e}", who()))?;
        ensure!(
            params.hash.oid == SHA384,
            "{}: RSASSA-PSS with hash {}, only SHA-384 is accepted",
            who(),
            params.hash.oid
        );
        ensure!(
            params.salt_len == 48,
            "{}: RSASSA-PSS salt length {}, expected 48",
            who(),
            params.salt_len
        );
        let key = rsa_key(issuer)?;
        let sig = rsa::pss::Signature::try_from(signature).with_context(who)?;
        rsa::pss::VerifyingKey::<sha2::Sha384>::new(key)
            .verify(tbs, &sig)
            .map_err(|_| anyhow!(who()))
    } else if algorithm.oid == SHA256_WITH_RSA {
        let key = rsa_key(issuer)?;
        let sig = rsa::pkcs1v15::Signature::try_from(signature).with_context(who)?;
        rsa::pkcs1v15::VerifyingKey::<sha2::Sha256>::new(key)
            .verify(tbs, &sig)
            .map_err(|_| anyhow!(who()))
    } else {
        bail!(
            "{}: signature algorithm {} is not accepted",
            who(),
            algorithm.oid
        )
    }
}

/// Parses certificate revocation lists: one DER CRL, or a PEM file of one or more.
pub fn parse_crls(bytes: &[u8]) -> anyhow::Result<Vec<CertificateList>> {
    let text = std::str::from_utf8(bytes)
        .ok()
        .filter(|t| t.contains("-----BEGIN X509 CRL-----"));
    let Some(text) = text else {
        return Ok(vec![CertificateList::from_der(bytes).map_err(|e| {
            anyhow!("not a DER certificate revocation list: {e}")
        })?]);
    };
    let mut crls = Vec::new();
    for block in text.split_inclusive("-----END X509 CRL-----") {
        let Some(start) = block.find("-----BEGIN X509 CRL-----") else {
            continue;
        };
        let (_, der) = x509_cert::der::pem::decode_vec(&block.as_bytes()[start..])
            .map_err(|e| anyhow!("not a PEM certificate revocation list: {e}"))?;
        crls.push(
            CertificateList::from_der(&der)
                .map_err(|e| anyhow!("not a certificate revocation list: {e}"))?,
        );
    }
    Ok(crls)
}

/// Checks that `crl` is signed by `issuer` and current at `at`.
pub fn check_crl(
    crl: &CertificateList,
    issuer: &Certificate,
    at: SystemTime,
) -> anyhow::Result<()> {
    let tbs = &crl.tbs_cert_list;
    ensure!(
        tbs.issuer == issuer.tbs_certificate.subject,
        "the CRL of {} is not {}'s",
        tbs.issuer,
        subject(issuer)
    );
    let der = tbs.to_der().context("re-encode tbsCertList")?;
    let who = || {
        format!(
            "the CRL of {} is not signed by {}",
            tbs.issuer,
            subject(issuer)
        )
    };
    verify_signature(&der, &crl.signature_algorithm, &crl.signature, issuer, &who)?;
    ensure!(
        at >= tbs.this_update.to_system_time(),
        "the CRL of {} is not valid before {}",
        tbs.issuer,
        tbs.this_update
    );
    if let Some(next) = &tbs.next_update {
        ensure!(
            at <= next.to_system_time(),
            "the CRL of {} expired at {next} (its next update)",
            tbs.issuer
        );
    }
    Ok(())
}

/// Whether `crl` lists `cert` (same issuer, same serial number).
pub fn is_revoked(crl: &CertificateList, cert: &Certificate) -> bool {
    crl.tbs_cert_list.issuer == cert.tbs_certificate.issuer
        && crl
            .tbs_cert_list
            .revoked_certificates
            .iter()
            .flatten()
            .any(|r| r.serial_number == cert.tbs_certificate.serial_number)
}

/// Checks every certificate of `path` (leaf first, root last, as [`verify_path_certs`] gives
/// it) that one of `crls` covers: the CRL signed by the certificate's issuer, current at `at`,
/// and not listing it. Returns what was checked, one entry per certificate a CRL covers.
pub fn check_revocation(
    path: &[Certificate],
    crls: &[CertificateList],
    at: SystemTime,
) -> anyhow::Result<Vec<String>> {
    let mut checked = Vec::new();
    for pair in path.windows(2) {
        let (cert, issuer) = (&pair[0], &pair[1]);
        for crl in crls
            .iter()
            .filter(|c| c.tbs_cert_list.issuer == issuer.tbs_certificate.subject)
        {
            check_crl(crl, issuer, at)?;
            ensure!(
                !is_revoked(crl, cert),
                "{} (serial {}) is revoked by the CRL of {}",
                subject(cert),
                hex::encode(cert.tbs_certificate.serial_number.as_bytes()),
                subject(issuer)
            );
            checked.push(subject(cert));
        }
    }
    Ok(checked)
}

/// The RSA public key of a certificate.
pub fn rsa_key(cert: &Certificate) -> anyhow::Result<rsa::RsaPublicKey> {
    use rsa::pkcs8::DecodePublicKey;
    let spki = cert
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .context("re-encode the public key")?;
    rsa::RsaPublicKey::from_public_key_der(&spki)
        .map_err(|e| anyhow!("{}: not an RSA key: {e}", subject(cert)))
}

/// The DER SubjectPublicKeyInfo of a certificate.
pub fn spki_der(cert: &Certificate) -> anyhow::Result<Vec<u8>> {
    cert.tbs_certificate
        .subject_public_key_info
        .to_der()
        .context("re-encode the public key")
}

/// Checks that `cert` is valid at `at`.
pub fn check_validity(cert: &Certificate, at: SystemTime) -> anyhow::Result<()> {
    let validity = &cert.tbs_certificate.validity;
    let not_before = validity.not_before.to_system_time();
    let not_after = validity.not_after.to_system_time();
    ensure!(
        at >= not_before,
        "{} is not valid before {}",
        subject(cert),
        validity.not_before
    );
    ensure!(
        at <= not_after,
        "{} expired at {}",
        subject(cert),
        validity.not_after
    );
    Ok(())
}

/// The content of the extension `oid`, if present.
pub fn extension<'a>(cert: &'a Certificate, oid: &str) -> Option<&'a [u8]> {
    let oid = ObjectIdentifier::new(oid).ok()?;
    cert.tbs_certificate
        .extensions
        .as_ref()?
        .iter()
        .find(|e| e.extn_id == oid)
        .map(|e| e.extn_value.as_bytes())
}

/// The error for a self-signed certificate that is not among the trusted roots.
pub fn untrusted_root(cert: &Certificate) -> anyhow::Error {
    anyhow!("{} is self-signed but not a trusted root", subject(cert))
}

/// The longest chain of intermediates between a leaf and its root that is followed.
const MAX_INTERMEDIATES: usize = 4;

/// Checks that `leaf` chains to one of `trusted_roots` (each self-signed), through at most
/// four of `intermediates` (AMD and Intel chains have one, Google's GCE AK chain one); every
/// certificate must be valid at `at`. Returns the root's subject.
pub fn verify_path(
    leaf: &Certificate,
    intermediates: &[Certificate],
    trusted_roots: &[Certificate],
    at: SystemTime,
) -> anyhow::Result<String> {
    let path = verify_path_certs(leaf, intermediates, trusted_roots, at)?;
    Ok(path.last().map(subject).unwrap_or_default())
}

/// [`verify_path`], returning the path: the leaf first, the root last.
pub fn verify_path_certs(
    leaf: &Certificate,
    intermediates: &[Certificate],
    trusted_roots: &[Certificate],
    at: SystemTime,
) -> anyhow::Result<Vec<Certificate>> {
    ensure!(!trusted_roots.is_empty(), "no trusted root is configured");
    let mut path = path_from(leaf, intermediates, trusted_roots, at, MAX_INTERMEDIATES)?;
    path.insert(0, leaf.clone());
    Ok(path)
}

/// The rest of the path above `cert` (its issuer first, the root last).
fn path_from(
    cert: &Certificate,
    intermediates: &[Certificate],
    trusted_roots: &[Certificate],
    at: SystemTime,
    depth: usize,
) -> anyhow::Result<Vec<Certificate>> {
    check_validity(cert, at)?;
    let issuer = &cert.tbs_certificate.issuer;
    let mut last_error = None;
    for root in trusted_roots
        .iter()
        .filter(|r| &r.tbs_certificate.subject == issuer)
    {
        let ok = verify_signed_by(cert, root)
            .and_then(|()| verify_signed_by(root, root))
            .and_then(|()| check_validity(root, at));
        match ok {
            Ok(()) => return Ok(vec![root.clone()]),
            Err(e) => last_error = Some(e),
        }
    }
    if depth > 0 {
        for intermediate in intermediates.iter().filter(|i| {
            &i.tbs_certificate.subject == issuer
                && i.tbs_certificate.subject != i.tbs_certificate.issuer
        }) {
            let attempt = verify_signed_by(cert, intermediate).and_then(|()| {
                path_from(intermediate, intermediates, trusted_roots, at, depth - 1)
            });
            match attempt {
                Ok(mut rest) => {
                    rest.insert(0, intermediate.clone());
                    return Ok(rest);
                }
                Err(e) => last_error = Some(e),
            }
        }
    }
    Err(last_error.unwrap_or_else(|| {
        anyhow!(
            "{} is not issued by a trusted root or a known intermediate (issuer {issuer})",
            subject(cert)
        )
    }))
}
