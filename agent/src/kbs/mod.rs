//! The Trustee KBS protocol 0.4.0 client (RCAR: request, challenge, attestation, response).
//!
//! One `KbsClient` per broker holds one HTTP agent, so the TLS connection is reused across
//! `auth`, `attest` and every resource GET of a session. Only the CA named in the config is
//! trusted; no proxy is used; redirects are refused (a redirect would carry the session
//! cookie elsewhere). Replies are read with a size cap, so a hostile broker cannot make the
//! agent allocate without bound.

pub mod jwe;
pub mod key;

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use kbs_types::{Attestation, Challenge, ErrorInformation, Request, Tee};
use serde::de::DeserializeOwned;
use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig};

use crate::class::ErrorClass;
use crate::config::{Broker, Timeouts};
use crate::net::{agent, transport_message};

/// The protocol version we speak; Trustee accepts exactly this.
pub(crate) const PROTOCOL_VERSION: &str = "0.4.0";

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "kbs-session-id";

/// Largest reply body we read. Challenges, tokens and wrapped secrets are a few KiB.
pub(crate) const MAX_REPLY_BYTES: u64 = 1 << 20;

/// A broker conversation failure. Variants differ in what the retry policy does with them.
#[derive(Debug, thiserror::Error)]
pub enum KbsError {
    /// The broker settings cannot be used (e.g. the CA PEM holds no certificate).
    #[error("broker {broker}: {message}")]
    Config {
        /// Broker URL.
        broker: String,
        /// What is wrong.
        message: String,
    },
    /// Connect, TLS, or I/O failure, or a timeout.
    #[error("broker {broker}: {step}: {message}")]
    Transport {
        /// Broker URL.
        broker: String,
        /// Which call.
        step: &'static str,
        /// The transport's message.
        message: String,
    },
    /// The broker answered 5xx, or 429 (it, or its ingress, sheds load).
    #[error("broker {broker}: {step}: HTTP {status}: broker unavailable{}", retry_after.map_or(String::new(), |d| format!(" (it asks to retry after {}s)", d.as_secs())))]
    Unavailable {
        /// Broker URL.
        broker: String,
        /// Which call.
        step: &'static str,
        /// The status.
        status: u16,
        /// The reply's `Retry-After`, when it held delta-seconds ([`retry_after`]).
        retry_after: Option<Duration>,
    },
    /// The broker refused (401/403): attestation failed or the policy denied the resource.
    #[error("broker {broker}: {step}: denied ({kind}): {detail}")]
    Denied {
        /// Broker URL.
        broker: String,
        /// Which call.
        step: &'static str,
        /// The last path component of the error `type` (`PolicyDeny`, `TokenNotFound`...).
        kind: String,
        /// The broker's `detail`.
        detail: String,
    },
    /// The broker does not speak protocol 0.4.0.
    #[error("broker {broker}: protocol version mismatch: {detail}")]
    ProtocolMismatch {
        /// Broker URL.
        broker: String,
        /// The broker's words.
        detail: String,
    },
    /// The reply does not come from a KBS: a redirect, an HTML page, a 404 or 401 without a
    /// KBS error body. An ingress, proxy or captive portal answers like this while a broker is
    /// rolled out or moved, so it is retried like a 5xx.
    #[error("broker {broker}: {step}: {message}: not a KBS reply (an ingress, proxy or captive portal in front of the broker?)")]
    NotKbs {
        /// Broker URL.
        broker: String,
        /// Which call.
        step: &'static str,
        /// What came back.
        message: String,
    },
    /// The reply is malformed or breaks the protocol.
    #[error("broker {broker}: {step}: bad reply: {message}")]
    BadReply {
        /// Broker URL.
        broker: String,
        /// Which call.
        step: &'static str,
        /// What is wrong.
        message: String,
    },
}

impl KbsError {
    /// The wait the broker asked for with `Retry-After`, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            KbsError::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The class of this failure.
    pub fn class(&self) -> ErrorClass {
        match self {
            KbsError::Config { .. } => ErrorClass::Config,
            KbsError::Transport { .. } => ErrorClass::Transport,
            KbsError::Unavailable { .. } | KbsError::NotKbs { .. } => ErrorClass::BrokerUnavailable,
            KbsError::Denied { .. } => ErrorClass::BrokerDenied,
            KbsError::ProtocolMismatch { .. } => ErrorClass::ProtocolMismatch,
            KbsError::BadReply { .. } => ErrorClass::BadReply,
        }
    }
}

/// A session established by `auth`. The cookie is the attested session's bearer: neither
/// printed (`Debug` shows only that there is one) nor copied.
pub struct Session {
    /// The broker's challenge nonce, as received.
    pub nonce: String,
    cookie: zeroize::Zeroizing<String>,
}

impl Session {
    /// A session with this nonce and cookie (what `auth` returns; fakes make their own).
    pub fn new(nonce: String, cookie: String) -> Session {
        Session {
            nonce,
            cookie: zeroize::Zeroizing::new(cookie),
        }
    }

    /// The `Cookie` header value, wiped after use.
    fn header(&self) -> zeroize::Zeroizing<String> {
        zeroize::Zeroizing::new(format!("{SESSION_COOKIE}={}", *self.cookie))
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("nonce", &self.nonce)
            .field("cookie", &"<redacted>")
            .finish()
    }
}

/// What the flow needs of one broker: the seam at the network, so the flow's ordering rules
/// are tested in milliseconds with a fake (the real parts stay the outer ring of tests).
pub trait BrokerClient: Sync {
    /// The broker URL, for messages.
    fn url(&self) -> &str;
    /// `POST /kbs/v0/auth`: open a session and get the challenge nonce.
    fn auth(&self, tee: Tee) -> Result<Session, KbsError>;
    /// `POST /kbs/v0/attest`: send the evidence; returns the attestation token.
    fn attest(&self, session: &Session, attestation: &Attestation) -> Result<String, KbsError>;
    /// `GET` one resource: the raw JWE body.
    fn resource(&self, session: &Session, path: &str) -> Result<Vec<u8>, KbsError>;
}

/// A client for one broker.
pub(crate) struct KbsClient {
    agent: ureq::Agent,
    base: String,
}

impl KbsClient {
    /// Build a client trusting only the broker's configured CA.
    pub(crate) fn new(
        broker: &Broker,
        ca_pem: Option<&str>,
        timeouts: &Timeouts,
    ) -> Result<KbsClient, KbsError> {
        let base = broker.url.trim_end_matches('/').to_owned();
        let agent = http_agent(&base, ca_pem, timeouts)?;
        Ok(KbsClient { agent, base })
    }

    fn encode<T: serde::Serialize>(&self, step: &'static str, v: &T) -> Result<Vec<u8>, KbsError> {
        serde_json::to_vec(v).map_err(|e| KbsError::Config {
            broker: self.base.clone(),
            message: format!("{step}: cannot encode request: {e}"),
        })
    }

    fn read_json<T: DeserializeOwned>(
        &self,
        step: &'static str,
        resp: ureq::http::Response<ureq::Body>,
    ) -> Result<T, KbsError> {
        let body = self.read_ok(step, resp)?;
        serde_json::from_slice(&body).map_err(|e| self.bad(step, format!("invalid JSON: {e}")))
    }

    /// Read a reply: the body when 200, a classified error otherwise.
    fn read_ok(
        &self,
        step: &'static str,
        mut resp: ureq::http::Response<ureq::Body>,
    ) -> Result<Vec<u8>, KbsError> {
        let status = resp.status().as_u16();
        let hint = resp
            .headers()
            .get("retry-after")
            .and_then(|v| retry_after(v.as_bytes()));
        let body = resp
            .body_mut()
            .with_config()
            .limit(MAX_REPLY_BYTES)
            .read_to_vec()
            .map_err(|e| match e {
                ureq::Error::BodyExceedsLimit(_) => {
                    self.bad(step, format!("reply larger than {MAX_REPLY_BYTES} bytes"))
                }
                e => self.transport(step, e),
            })?;
        classify_reply(&self.base, step, status, hint, body)
    }

    fn transport(&self, step: &'static str, e: ureq::Error) -> KbsError {
        KbsError::Transport {
            broker: self.base.clone(),
            step,
            message: one_line(&transport_message(&e)),
        }
    }

    fn bad(&self, step: &'static str, message: String) -> KbsError {
        KbsError::BadReply {
            broker: self.base.clone(),
            step,
            message,
        }
    }
}

impl BrokerClient for KbsClient {
    /// The broker URL, for messages.
    fn url(&self) -> &str {
        &self.base
    }

    /// `POST /kbs/v0/auth`: open a session and get the challenge nonce.
    fn auth(&self, tee: Tee) -> Result<Session, KbsError> {
        let step = "auth";
        let req = Request {
            version: PROTOCOL_VERSION.to_owned(),
            tee,
            extra_params: serde_json::Value::Object(serde_json::Map::new()),
        };
        let resp = self
            .agent
            .post(format!("{}/kbs/v0/auth", self.base))
            .header("Content-Type", "application/json")
            .send(self.encode(step, &req)?)
            .map_err(|e| self.transport(step, e))?;
        let cookie = session_cookie(&resp);
        // Status first: an error reply carries no cookie, and its detail is what matters.
        let challenge: Challenge = self.read_json(step, resp)?;
        let cookie =
            cookie.ok_or_else(|| self.bad(step, "no kbs-session-id cookie in reply".into()))?;
        let raw = STANDARD
            .decode(&challenge.nonce)
            .map_err(|_| self.bad(step, "nonce is not standard base64".into()))?;
        if raw.len() < 16 {
            return Err(self.bad(step, format!("nonce is {} bytes, fewer than 16", raw.len())));
        }
        Ok(Session::new(challenge.nonce, cookie))
    }

    /// `POST /kbs/v0/attest`: send the evidence; returns the attestation token (EAR JWT).
    fn attest(&self, session: &Session, attestation: &Attestation) -> Result<String, KbsError> {
        let step = "attest";
        let resp = self
            .agent
            .post(format!("{}/kbs/v0/attest", self.base))
            .header("Content-Type", "application/json")
            .header("Cookie", session.header().as_str())
            .send(self.encode(step, attestation)?)
            .map_err(|e| self.transport(step, e))?;
        if let Some(c) = session_cookie(&resp) {
            if c != *session.cookie {
                return Err(self.bad(step, "broker changed the session cookie mid-session".into()));
            }
        }
        // The reply holds the attestation token: its bytes are wiped once parsed.
        #[derive(serde::Deserialize, zeroize::Zeroize, zeroize::ZeroizeOnDrop)]
        struct TokenReply {
            token: String,
        }
        let body = zeroize::Zeroizing::new(self.read_ok(step, resp)?);
        let mut reply: TokenReply = serde_json::from_slice(&body)
            .map_err(|e| self.bad(step, format!("invalid JSON: {e}")))?;
        Ok(std::mem::take(&mut reply.token))
    }

    /// `GET /kbs/v0/resource/<path>` (or `/kbs/v0/provisioner/<path>` for a
    /// `kbs+provisioner:///` reference): the raw JWE body of one resource.
    fn resource(&self, session: &Session, path: &str) -> Result<Vec<u8>, KbsError> {
        let step = "resource";
        let url = match crate::config::provisioner_path(path) {
            Some(inner) => format!("{}/kbs/v0/provisioner/{inner}", self.base),
            None => format!("{}/kbs/v0/resource/{path}", self.base),
        };
        let resp = self
            .agent
            .get(url)
            .header("Cookie", session.header().as_str())
            .call()
            .map_err(|e| self.transport(step, e))?;
        self.read_ok(step, resp)
    }
}

/// An HTTP agent for `url` trusting only `ca_pem`: no proxy, no redirects, bounded timeouts.
fn http_agent(
    url: &str,
    ca_pem: Option<&str>,
    timeouts: &Timeouts,
) -> Result<ureq::Agent, KbsError> {
    let config_err = |message: String| KbsError::Config {
        broker: url.to_owned(),
        message,
    };
    let mut roots: Vec<Certificate<'static>> = Vec::new();
    if let Some(pem) = ca_pem {
        for item in ureq::tls::parse_pem(pem.as_bytes()) {
            match item {
                Ok(PemItem::Certificate(c)) => roots.push(c),
                Ok(_) => {}
                Err(e) => return Err(config_err(format!("ca_cert is not valid PEM: {e}"))),
            }
        }
        if roots.is_empty() {
            return Err(config_err("ca_cert holds no certificate".to_owned()));
        }
    }
    let tls = TlsConfig::builder()
        .root_certs(RootCerts::Specific(Arc::new(roots)))
        .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .build();
    Ok(agent(tls, url.starts_with("https://"), timeouts))
}

/// Register this node's AK at first boot: `PUT <url>` with
/// `{"attestation_key": <PEM>, "uuid": <uuid>}`, as the trusted-execution-clusters
/// registration server expects; any 2xx is success.
pub(crate) fn register_ak(
    url: &str,
    ca_pem: Option<&str>,
    timeouts: &Timeouts,
    ak_pem: &str,
    uuid: &str,
) -> Result<(), KbsError> {
    let step = "register-ak";
    let agent = http_agent(url, ca_pem, timeouts)?;
    let body = serde_json::json!({"attestation_key": ak_pem, "uuid": uuid});
    let mut resp = agent
        .put(url)
        .header("Content-Type", "application/json")
        .send(body.to_string())
        .map_err(|e| KbsError::Transport {
            broker: url.to_owned(),
            step,
            message: one_line(&transport_message(&e)),
        })?;
    let status = resp.status().as_u16();
    if (200..300).contains(&status) {
        return Ok(());
    }
    let text = resp
        .body_mut()
        .with_config()
        .limit(4096)
        .read_to_string()
        .unwrap_or_default();
    match status {
        500..=599 => Err(KbsError::Unavailable {
            broker: url.to_owned(),
            step,
            status,
            retry_after: None,
        }),
        // The registration server refused this node (not allowed, or another AK is already
        // registered for its uuid): a decision the operator acts on, not a malformed reply.
        401 | 403 | 409 => Err(KbsError::Denied {
            broker: url.to_owned(),
            step,
            kind: format!("HTTP {status}"),
            detail: one_line(&text),
        }),
        _ => Err(KbsError::BadReply {
            broker: url.to_owned(),
            step,
            message: format!("HTTP {status}: {}", one_line(&text)),
        }),
    }
}

/// The wait a `Retry-After` header value asks for, when it is delta-seconds (RFC 9110, 10.2.3:
/// digits only). An HTTP-date is ignored (the initramfs clock is not trusted to compare it
/// with), and so is anything else; the retry loop caps what it honours at its own
/// `max_backoff_ms`, so a hostile broker cannot park the node.
pub fn retry_after(value: &[u8]) -> Option<Duration> {
    let digits = value.trim_ascii();
    if digits.is_empty() || digits.len() > 9 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let secs = digits
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    Some(Duration::from_secs(secs))
}

/// Classify a complete reply: the body when 200, a typed error otherwise (`retry_after`: the
/// reply's [`retry_after`], kept on a 5xx or 429). Pure, so it can be fuzzed; the broker's
/// words are cut to one bounded line before they reach a message.
pub fn classify_reply(
    broker: &str,
    step: &'static str,
    status: u16,
    retry_after: Option<Duration>,
    body: Vec<u8>,
) -> Result<Vec<u8>, KbsError> {
    let bad = |message: String| KbsError::BadReply {
        broker: broker.to_owned(),
        step,
        message,
    };
    let not_kbs = |message: String| KbsError::NotKbs {
        broker: broker.to_owned(),
        step,
        message,
    };
    // Every KBS reply body is JSON; a page of markup is something else answering.
    let markup = body
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'<');
    let kbs_error = || serde_json::from_slice::<ErrorInformation>(&body).ok();
    match status {
        200 if markup => Err(not_kbs("HTTP 200 with an HTML body".into())),
        200 => Ok(body),
        401 | 403 => {
            let info = kbs_error()
                .ok_or_else(|| not_kbs(format!("HTTP {status} without a KBS error body")))?;
            let kind = info
                .error_type
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_owned();
            if info.detail.contains("Protocol Version Mismatch") {
                return Err(KbsError::ProtocolMismatch {
                    broker: broker.to_owned(),
                    detail: crate::text::value(&one_line(&info.detail)),
                });
            }
            Err(KbsError::Denied {
                broker: broker.to_owned(),
                step,
                kind: crate::text::value(&one_line(&kind)),
                detail: crate::text::value(&one_line(&info.detail)),
            })
        }
        // A 429 is load shedding too (the broker's, or its ingress's rate limit): retried
        // like a 5xx, honouring its Retry-After.
        429 | 500..=599 => Err(KbsError::Unavailable {
            broker: broker.to_owned(),
            step,
            status,
            retry_after,
        }),
        300..=399 => Err(not_kbs(format!(
            "HTTP {status} redirect, not followed (the session cookie goes to the configured broker only)"
        ))),
        // Trustee answers 404 with its error body for an unknown path or plugin: a
        // configuration error no retry fixes. A bare 404 is an ingress without a backend.
        404 if kbs_error().is_some() => Err(bad(
            "HTTP 404: no such endpoint or resource path (check the broker URL and the resource path)"
                .into(),
        )),
        404 => Err(not_kbs("HTTP 404 without a KBS error body".into())),
        s => Err(bad(format!("unexpected HTTP {s}"))),
    }
}

/// The value of the `kbs-session-id` cookie set by a reply, if any.
fn session_cookie(resp: &ureq::http::Response<ureq::Body>) -> Option<String> {
    resp.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| {
            let first = v.split(';').next()?.trim();
            let (name, value) = first.split_once('=')?;
            (name.trim() == SESSION_COOKIE && !value.is_empty()).then(|| value.trim().to_owned())
        })
}

fn one_line(s: &str) -> String {
    let mut out: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if out.len() > 300 {
        let mut cut = 300;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_delta_seconds_only() {
        let secs = |v: &[u8]| retry_after(v).map(|d| d.as_secs());
        assert_eq!(secs(b"0"), Some(0));
        assert_eq!(secs(b" 12 "), Some(12));
        assert_eq!(secs(b"999999999"), Some(999_999_999));
        // An HTTP-date, a fraction, a sign, too many digits, nothing: no hint.
        for v in [
            &b"Wed, 21 Oct 2015 07:28:00 GMT"[..],
            b"1.5",
            b"-1",
            b"+1",
            b"1000000000",
            b"",
            b"  ",
        ] {
            assert_eq!(secs(v), None, "{:?}", String::from_utf8_lossy(v));
        }
    }

    #[test]
    fn load_shedding_replies_keep_the_hint() {
        let hint = Some(Duration::from_secs(3));
        for status in [429, 500, 503] {
            let e = classify_reply("https://b", "attest", status, hint, Vec::new()).unwrap_err();
            assert_eq!(e.class(), ErrorClass::BrokerUnavailable);
            assert_eq!(e.retry_after(), hint);
            assert!(e.to_string().contains("retry after 3s"), "{e}");
        }
        // Elsewhere a Retry-After means nothing.
        let e = classify_reply("https://b", "attest", 418, hint, Vec::new()).unwrap_err();
        assert_eq!(e.retry_after(), None);
    }
}
