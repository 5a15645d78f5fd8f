//! A throwaway certificate authority and the broker's TLS server configuration.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::ServerConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// The TLS material of one broker instance.
pub(crate) struct TlsMaterial {
    /// The CA certificate the client must trust, PEM encoded.
    pub ca_pem: String,
    /// The rustls configuration serving the leaf certificate.
    pub server_config: Arc<ServerConfig>,
}

/// Makes a fresh CA and a server certificate it signed.
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

    let leaf_key = KeyPair::generate().context("generate server key")?;
    let mut leaf_params =
        CertificateParams::new(vec!["localhost".to_string()]).context("server parameters")?;
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "test-kbs");
    for ip in [Ipv4Addr::LOCALHOST, Ipv4Addr::new(10, 0, 2, 2)] {
        leaf_params
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(ip)));
    }
    leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let leaf_cert = leaf_params
        .signed_by(&leaf_key, &ca_cert, &ca_key)
        .context("sign server certificate")?;

    let chain: Vec<CertificateDer<'static>> = vec![leaf_cert.der().clone()];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));

    // The ring provider is chosen explicitly: the process-wide default provider is ambiguous
    // when another crate in the test binary enables aws-lc-rs, and ring is what the agent uses.
    let server_config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .context("TLS server certificate")?;

    Ok(TlsMaterial {
        ca_pem: ca_cert.pem(),
        server_config: Arc::new(server_config),
    })
}
