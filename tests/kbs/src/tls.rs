//! A throwaway certificate authority and the broker's TLS server configuration.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use anyhow::Context;
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::ServerConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// The TLS material of one broker instance.
pub(crate) struct TlsMaterial {
    /// The CA certificate the client must trust, PEM encoded.
    pub ca_pem: String,
    /// The rustls configuration serving the leaf certificate.
    pub server_config: Arc<ServerConfig>,
    /// The same, with a certificate from the same CA that expired in 2001 (fault knob).
    pub expired: Arc<ServerConfig>,
    /// The same, with a certificate from the same CA for `wrong.example` only (fault knob).
    pub wrong_name: Arc<ServerConfig>,
}

/// Makes a fresh CA and a server certificate it signed (plus the faulty variants).
///
/// The server certificate names `127.0.0.1` and `localhost` for tests on the host and
/// `10.0.2.2`, which is the host as a QEMU guest on user-mode networking sees it, so one broker
/// serves both.
pub(crate) fn make_tls_material() -> anyhow::Result<TlsMaterial> {
    let ca_key = KeyPair::generate().context("generate CA key")?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).context("CA parameters")?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "test-kbs throwaway CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).context("self-sign CA")?;

    let good = vec![
        SanType::DnsName("localhost".try_into().context("SAN localhost")?),
        SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        SanType::IpAddress(IpAddr::V4(Ipv4Addr::new(10, 0, 2, 2))),
    ];
    let server_config = leaf_config(&ca_cert, &ca_key, good.clone(), false)?;
    let expired = leaf_config(&ca_cert, &ca_key, good, true)?;
    let wrong = vec![SanType::DnsName(
        "wrong.example".try_into().context("SAN wrong.example")?,
    )];
    let wrong_name = leaf_config(&ca_cert, &ca_key, wrong, false)?;

    Ok(TlsMaterial {
        ca_pem: ca_cert.pem(),
        server_config,
        expired,
        wrong_name,
    })
}

/// A rustls server configuration with a fresh leaf certificate for `names` signed by the CA;
/// `expired` makes it valid only in 2000.
fn leaf_config(
    ca_cert: &Certificate,
    ca_key: &KeyPair,
    names: Vec<SanType>,
    expired: bool,
) -> anyhow::Result<Arc<ServerConfig>> {
    let leaf_key = KeyPair::generate().context("generate server key")?;
    let mut leaf_params = CertificateParams::default();
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "test-kbs");
    leaf_params.subject_alt_names = names;
    leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    if expired {
        leaf_params.not_before = rcgen::date_time_ymd(2000, 1, 1);
        leaf_params.not_after = rcgen::date_time_ymd(2001, 1, 1);
    }
    let leaf_cert = leaf_params
        .signed_by(&leaf_key, ca_cert, ca_key)
        .context("sign server certificate")?;

    let chain: Vec<CertificateDer<'static>> = vec![leaf_cert.der().clone()];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));

    // The ring provider is chosen explicitly: the process-wide default provider is ambiguous
    // when another crate in the test binary enables aws-lc-rs, and ring is what the agent uses.
    let config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .context("TLS server certificate")?;
    Ok(Arc::new(config))
}
