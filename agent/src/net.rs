//! The one HTTP client setup every network peer of the agent shares (the broker, the AK
//! registration server, the cloud metadata service): no proxy, no redirects, bounded
//! timeouts, transport failures in one line. A leaf below `kbs` and `hw`.

use ureq::tls::TlsConfig;

use crate::config::Timeouts;

/// The options every HTTP client of the agent shares: no proxy (the initramfs has none to
/// honour, and an environment proxy must not see the session), no redirects, status codes as
/// replies, bounded timeouts.
pub(crate) fn agent(tls: TlsConfig, https_only: bool, timeouts: &Timeouts) -> ureq::Agent {
    ureq::Agent::config_builder()
        .tls_config(tls)
        .https_only(https_only)
        .proxy(None)
        .max_redirects(0)
        .http_status_as_error(false)
        .timeout_connect(Some(timeouts.connect()))
        .timeout_per_call(Some(timeouts.request()))
        .user_agent(concat!("attest-unlock/", env!("CARGO_PKG_VERSION")))
        .build()
        .new_agent()
}

/// A transport failure in one line, naming TLS when TLS is the cause.
pub(crate) fn transport_message(e: &ureq::Error) -> String {
    match e {
        ureq::Error::Io(io) => match io.kind() {
            std::io::ErrorKind::ConnectionRefused => {
                "connection refused (broker not listening?)".to_owned()
            }
            _ => {
                // rustls errors reach us wrapped in io::Error; name TLS explicitly.
                let inner = io.get_ref().map(|i| i.to_string()).unwrap_or_default();
                if inner.is_empty() {
                    io.to_string()
                } else {
                    format!("TLS/IO: {inner}")
                }
            }
        },
        ureq::Error::Rustls(t) => format!("TLS: {t}"),
        ureq::Error::Timeout(t) => format!("timed out ({t})"),
        e => e.to_string(),
    }
}
