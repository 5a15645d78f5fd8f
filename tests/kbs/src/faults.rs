//! Fault injection: knobs that make the broker misbehave in one precise way, for the agent's
//! fault-matrix tests. With [`Faults::default`] nothing is injected and the broker is the
//! Trustee-compatible one; every fault applied is recorded in [`crate::Broker::log`] as a line
//! starting with `fault:`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use rand_core::OsRng;
use serde_json::Value;

use crate::api::Kbs;
use crate::http::{Action, Request, Response};

/// Longest injected delay; a longer `delay_ms_for` is cut to this, so a test cannot hang.
pub const MAX_DELAY: Duration = Duration::from_secs(30);

/// One of the three KBS endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /kbs/v0/auth`.
    Auth,
    /// `POST /kbs/v0/attest`.
    Attest,
    /// `GET /kbs/v0/resource/...`.
    Resource,
}

impl Endpoint {
    fn of(request: &Request) -> Option<Endpoint> {
        match (request.method.as_str(), request.path.as_str()) {
            ("POST", "/kbs/v0/auth") => Some(Endpoint::Auth),
            ("POST", "/kbs/v0/attest") => Some(Endpoint::Attest),
            ("GET", p) if p.starts_with("/kbs/v0/resource/") => Some(Endpoint::Resource),
            _ => None,
        }
    }
}

/// How to break the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reset {
    /// Read the request, then close the connection without any reply (and without a TLS
    /// close_notify).
    BeforeReply,
    /// Send the head and the first half of the body, then close the connection.
    HalfReply,
}

/// How to spoil a released resource's JWE (applied to `200` resource replies only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JweFault {
    /// Encrypt the resource to a fresh key that is not the session's `tee-pubkey`.
    EncryptToOtherKey,
    /// Flip one bit of the ciphertext.
    FlipCiphertext,
    /// Flip one bit of the GCM tag.
    FlipTag,
    /// Flip one bit of the IV.
    FlipIv,
    /// Add a member (`"kid":"altered"`) to the protected header, which changes the GCM AAD.
    AlterProtected,
    /// Replace the protected header's `alg`.
    Alg(String),
    /// Replace the protected header's `enc`.
    Enc(String),
    /// Serve the body this broker served for the same path to the previous session (a genuine
    /// JWE, encrypted to that session's key). Without a previous one, the genuine body.
    ReplayPrevious,
}

/// How to break TLS; applies to connections accepted after the fault is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFault {
    /// A server certificate from the right CA that expired in 2001.
    Expired,
    /// A server certificate from the right CA whose only SAN is `wrong.example`.
    WrongName,
    /// Accept the TCP connection, then say nothing: the TLS handshake never completes (the
    /// connection is held until the client closes it, for at most [`MAX_DELAY`]).
    Silent,
    /// No TLS at all: plain HTTP. A TLS ClientHello gets `400 Bad Request` in clear text, as
    /// an HTTP server answers bytes that are not a request line.
    PlainHttp,
}

/// Fault knobs. The default injects nothing. Knobs that name an [`Endpoint`] apply to every
/// request to it, in every session, until changed with [`crate::Broker::set_faults`].
///
/// Order per request: `delay_ms_for`, then `reset_connection_on` with [`Reset::BeforeReply`]
/// (no handler runs), `status_for` (no handler runs), `oversize_for` (no handler runs); else the
/// real handler, then the changes to its reply (`drop_cookie`, `bad_nonce`,
/// `change_cookie_on_attest`, `jwe`, `body_for` on a `200`), then [`Reset::HalfReply`] or
/// `drip_ms_for`.
#[derive(Clone, Default)]
pub struct Faults {
    /// Answer this endpoint with this status. The body is the given raw text, or a Trustee
    /// error body `{"type":".../errors/InjectedFault","detail":"injected fault"}`.
    pub status_for: Option<(Endpoint, u16, Option<String>)>,
    /// Replace the body of a `200` reply from this endpoint with these bytes.
    pub body_for: Option<(Endpoint, Vec<u8>)>,
    /// Answer this endpoint `200` with a body of this many bytes (the start of a JSON object,
    /// then filler), streamed without holding it in memory; see
    /// [`crate::Broker::bytes_streamed`].
    pub oversize_for: Option<(Endpoint, u64)>,
    /// Wait this long before answering this endpoint (at most [`MAX_DELAY`]; cut short when
    /// the broker is dropped).
    pub delay_ms_for: Option<(Endpoint, u64)>,
    /// Send the reply of this endpoint one byte at a time, with this many milliseconds between
    /// bytes (a slow drip; at most [`MAX_DELAY`] in all).
    pub drip_ms_for: Option<(Endpoint, u64)>,
    /// Break the connection at this endpoint.
    pub reset_connection_on: Option<(Endpoint, Reset)>,
    /// Send no `Set-Cookie` with the auth challenge.
    pub drop_cookie: bool,
    /// Send a different `kbs-session-id` cookie with the attest reply.
    pub change_cookie_on_attest: bool,
    /// Replace the challenge nonce with this string.
    pub bad_nonce: Option<String>,
    /// Spoil released JWEs.
    pub jwe: Option<JweFault>,
    /// Break TLS for new connections.
    pub tls: Option<TlsFault>,
}

/// Shows the sizes of replacement bodies, not the bytes (they may be megabytes).
impl std::fmt::Debug for Faults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Faults")
            .field("status_for", &self.status_for)
            .field(
                "body_for",
                &self
                    .body_for
                    .as_ref()
                    .map(|(e, b)| (e, format!("<{} bytes>", b.len()))),
            )
            .field("oversize_for", &self.oversize_for)
            .field("delay_ms_for", &self.delay_ms_for)
            .field("drip_ms_for", &self.drip_ms_for)
            .field("reset_connection_on", &self.reset_connection_on)
            .field("drop_cookie", &self.drop_cookie)
            .field("change_cookie_on_attest", &self.change_cookie_on_attest)
            .field("bad_nonce", &self.bad_nonce)
            .field("jwe", &self.jwe)
            .field("tls", &self.tls)
            .finish()
    }
}

/// Locks `mutex`, poisoned or not (the data is counters and knobs, sound whatever panicked).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The broker's fault state: the current knobs and what they need to remember.
pub(crate) struct FaultState {
    current: Mutex<Arc<Faults>>,
    /// The plaintexts, for [`JweFault::EncryptToOtherKey`].
    resources: BTreeMap<String, Vec<u8>>,
    /// The last genuine `200` body per resource path, for [`JweFault::ReplayPrevious`].
    served: Mutex<HashMap<String, Vec<u8>>>,
    /// Bytes written by [`Faults::oversize_for`] replies.
    streamed: Arc<AtomicU64>,
}

impl FaultState {
    pub(crate) fn new(faults: Faults, resources: BTreeMap<String, Vec<u8>>) -> FaultState {
        FaultState {
            current: Mutex::new(Arc::new(faults)),
            resources,
            served: Mutex::new(HashMap::new()),
            streamed: Arc::new(AtomicU64::new(0)),
        }
    }

    pub(crate) fn set(&self, faults: Faults) {
        *lock(&self.current) = Arc::new(faults);
    }

    pub(crate) fn current(&self) -> Arc<Faults> {
        Arc::clone(&lock(&self.current))
    }

    pub(crate) fn streamed(&self) -> u64 {
        self.streamed.load(Ordering::SeqCst)
    }

    /// Handles one request with the current faults applied.
    pub(crate) fn handle(&self, kbs: &Kbs, request: &Request, stopping: &AtomicBool) -> Action {
        let faults = self.current();
        let Some(endpoint) = Endpoint::of(request) else {
            return Action::Reply(kbs.handle(request));
        };
        let note = |what: String| kbs.record(format!("fault: {endpoint:?}: {what}"));

        if let Some((_, ms)) = faults.delay_ms_for.filter(|(e, _)| *e == endpoint) {
            let delay = Duration::from_millis(ms).min(MAX_DELAY);
            note(format!("delaying the reply by {} ms", delay.as_millis()));
            let until = Instant::now() + delay;
            while Instant::now() < until && !stopping.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(10).min(until - Instant::now()));
            }
        }
        let reset = faults
            .reset_connection_on
            .filter(|(e, _)| *e == endpoint)
            .map(|(_, r)| r);
        if reset == Some(Reset::BeforeReply) {
            note("closing the connection without a reply".into());
            return Action::Drop;
        }
        if let Some((_, status, body)) = faults.status_for.as_ref().filter(|s| s.0 == endpoint) {
            note(format!("answering HTTP {status}"));
            let body = body.as_ref().map_or_else(
                || {
                    serde_json::json!({
                        "type": format!("{}InjectedFault", crate::api::ERROR_TYPE_PREFIX),
                        "detail": "injected fault",
                    })
                    .to_string()
                    .into_bytes()
                },
                |b| b.clone().into_bytes(),
            );
            return Action::Reply(Response {
                status: *status,
                body,
                set_cookie: None,
                retry_after: None,
            });
        }
        if let Some((_, len)) = faults.oversize_for.filter(|(e, _)| *e == endpoint) {
            note(format!("streaming a {len}-byte reply"));
            return Action::Stream {
                len,
                sent: Arc::clone(&self.streamed),
            };
        }

        let mut response = kbs.handle(request);
        if response.status == 200 {
            match endpoint {
                Endpoint::Auth => {
                    if faults.drop_cookie && response.set_cookie.take().is_some() {
                        note("dropped the session cookie".into());
                    }
                    if let Some(nonce) = &faults.bad_nonce {
                        if let Ok(mut challenge) = serde_json::from_slice::<Value>(&response.body) {
                            challenge["nonce"] = Value::String(nonce.clone());
                            response.body = challenge.to_string().into_bytes();
                            note("replaced the nonce".into());
                        }
                    }
                }
                Endpoint::Attest => {
                    if faults.change_cookie_on_attest {
                        response.set_cookie = Some(format!(
                            "kbs-session-id={}",
                            hex::encode(rand_bytes::<16>())
                        ));
                        note("changed the session cookie".into());
                    }
                }
                Endpoint::Resource => {
                    let path = request
                        .path
                        .strip_prefix("/kbs/v0/resource/")
                        .unwrap_or_default()
                        .to_string();
                    let previous = lock(&self.served).insert(path.clone(), response.body.clone());
                    if let Some(fault) = &faults.jwe {
                        match self.spoil(fault, &path, &response.body, previous) {
                            Ok(body) => {
                                response.body = body;
                                note(format!("JWE of {path}: {fault:?}"));
                            }
                            Err(e) => note(format!("JWE of {path}: {fault:?} not applied: {e:#}")),
                        }
                    }
                }
            }
            if let Some((_, body)) = faults.body_for.as_ref().filter(|b| b.0 == endpoint) {
                note(format!("replaced the body ({} bytes)", body.len()));
                response.body = body.clone();
            }
        }
        if reset == Some(Reset::HalfReply) {
            note("closing the connection after half the reply".into());
            let half = response.body.len() / 2;
            return Action::Truncated(response, half);
        }
        if let Some((_, ms)) = faults.drip_ms_for.filter(|(e, _)| *e == endpoint) {
            note(format!("dripping the reply, one byte every {ms} ms"));
            return Action::Drip(response, Duration::from_millis(ms));
        }
        Action::Reply(response)
    }

    /// The spoiled version of a genuine JWE body.
    fn spoil(
        &self,
        fault: &JweFault,
        path: &str,
        body: &[u8],
        previous: Option<Vec<u8>>,
    ) -> anyhow::Result<Vec<u8>> {
        let mut jwe: Value = serde_json::from_slice(body)?;
        let flip = |jwe: &mut Value, member: &str| -> anyhow::Result<()> {
            let text = jwe[member]
                .as_str()
                .ok_or_else(|| anyhow::anyhow!("no {member}"))?;
            let mut bytes = URL_SAFE_NO_PAD.decode(text)?;
            let first = bytes
                .first_mut()
                .ok_or_else(|| anyhow::anyhow!("{member} is empty"))?;
            *first ^= 1;
            jwe[member] = Value::String(URL_SAFE_NO_PAD.encode(bytes));
            Ok(())
        };
        let set_header = |jwe: &mut Value, member: &str, value: &str| -> anyhow::Result<()> {
            let text = jwe["protected"]
                .as_str()
                .ok_or_else(|| anyhow::anyhow!("no protected"))?;
            let mut header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(text)?)?;
            header[member] = Value::String(value.to_string());
            jwe["protected"] = Value::String(URL_SAFE_NO_PAD.encode(header.to_string()));
            Ok(())
        };
        match fault {
            JweFault::EncryptToOtherKey => {
                let plaintext = self
                    .resources
                    .get(path)
                    .ok_or_else(|| anyhow::anyhow!("no resource {path}"))?;
                let other = p256::SecretKey::random(&mut OsRng);
                let point = other.public_key().to_encoded_point(false);
                let (Some(x), Some(y)) = (point.x(), point.y()) else {
                    anyhow::bail!("no affine coordinates");
                };
                let jwk = serde_json::json!({
                    "kty": "EC",
                    "crv": "P-256",
                    "alg": crate::jwe::ALG,
                    "x": URL_SAFE_NO_PAD.encode(x),
                    "y": URL_SAFE_NO_PAD.encode(y),
                });
                return Ok(serde_json::to_vec(&crate::jwe::encrypt(&jwk, plaintext)?)?);
            }
            JweFault::FlipCiphertext => flip(&mut jwe, "ciphertext")?,
            JweFault::FlipTag => flip(&mut jwe, "tag")?,
            JweFault::FlipIv => flip(&mut jwe, "iv")?,
            JweFault::AlterProtected => set_header(&mut jwe, "kid", "altered")?,
            JweFault::Alg(alg) => set_header(&mut jwe, "alg", alg)?,
            JweFault::Enc(enc) => set_header(&mut jwe, "enc", enc)?,
            JweFault::ReplayPrevious => {
                return previous.ok_or_else(|| anyhow::anyhow!("no previous session's body"));
            }
        }
        Ok(serde_json::to_vec(&jwe)?)
    }
}

fn rand_bytes<const N: usize>() -> [u8; N] {
    use rand_core::RngCore;
    let mut out = [0_u8; N];
    OsRng.fill_bytes(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn genuine() -> (FaultState, Vec<u8>) {
        let secret = p256::SecretKey::random(&mut OsRng);
        let point = secret.public_key().to_encoded_point(false);
        let jwk = serde_json::json!({
            "kty": "EC", "crv": "P-256", "alg": crate::jwe::ALG,
            "x": URL_SAFE_NO_PAD.encode(point.x().unwrap()),
            "y": URL_SAFE_NO_PAD.encode(point.y().unwrap()),
        });
        let resources = BTreeMap::from([("a/b/c".to_string(), b"secret".to_vec())]);
        let body = serde_json::to_vec(&crate::jwe::encrypt(&jwk, b"secret").unwrap()).unwrap();
        (FaultState::new(Faults::default(), resources), body)
    }

    fn member(body: &[u8], name: &str) -> Vec<u8> {
        let jwe: Value = serde_json::from_slice(body).unwrap();
        URL_SAFE_NO_PAD.decode(jwe[name].as_str().unwrap()).unwrap()
    }

    fn header(body: &[u8]) -> Value {
        serde_json::from_slice(&member(body, "protected")).unwrap()
    }

    #[test]
    fn each_bit_flip_changes_exactly_its_member_by_one_bit() {
        let (state, body) = genuine();
        for (fault, name) in [
            (JweFault::FlipCiphertext, "ciphertext"),
            (JweFault::FlipTag, "tag"),
            (JweFault::FlipIv, "iv"),
        ] {
            let spoiled = state.spoil(&fault, "a/b/c", &body, None).unwrap();
            for other in ["protected", "encrypted_key", "iv", "ciphertext", "tag"] {
                let (a, b) = (member(&body, other), member(&spoiled, other));
                if other == name {
                    let diff: u32 = a.iter().zip(&b).map(|(x, y)| (x ^ y).count_ones()).sum();
                    assert_eq!((diff, a.len()), (1, b.len()), "{name}");
                } else {
                    assert_eq!(a, b, "{fault:?} must leave {other} alone");
                }
            }
        }
    }

    #[test]
    fn header_faults_change_the_protected_header() {
        let (state, body) = genuine();
        let altered = state
            .spoil(&JweFault::AlterProtected, "a/b/c", &body, None)
            .unwrap();
        assert_eq!(header(&altered)["kid"], "altered");
        assert_eq!(header(&altered)["epk"], header(&body)["epk"]);
        let alg = state
            .spoil(&JweFault::Alg("RSA-OAEP".into()), "a/b/c", &body, None)
            .unwrap();
        assert_eq!(header(&alg)["alg"], "RSA-OAEP");
        let enc = state
            .spoil(&JweFault::Enc("A128GCM".into()), "a/b/c", &body, None)
            .unwrap();
        assert_eq!(header(&enc)["enc"], "A128GCM");
    }

    #[test]
    fn other_key_and_replay_serve_genuine_jwes_for_another_key() {
        let (state, body) = genuine();
        let other = state
            .spoil(&JweFault::EncryptToOtherKey, "a/b/c", &body, None)
            .unwrap();
        assert_ne!(header(&other)["epk"], header(&body)["epk"]);
        assert_eq!(header(&other)["alg"], crate::jwe::ALG);
        let earlier = b"the previous session's body".to_vec();
        let replayed = state
            .spoil(
                &JweFault::ReplayPrevious,
                "a/b/c",
                &body,
                Some(earlier.clone()),
            )
            .unwrap();
        assert_eq!(replayed, earlier);
        assert!(state
            .spoil(&JweFault::ReplayPrevious, "a/b/c", &body, None)
            .is_err());
    }
}
