//! The KBS endpoints (`/kbs/v0/auth`, `/kbs/v0/attest`, `/kbs/v0/resource/...`), their
//! sessions, and the appraisal, with Trustee's status codes and error bodies.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, ensure, Context};
use base64::{engine::general_purpose::STANDARD, Engine};
use kbs_types::{Attestation, Challenge, ErrorInformation, Tee};
use rand_core::{OsRng, RngCore};
use serde_json::{json, Value};

use crate::evidence::PCR_COUNT;
use crate::http::{Request, Response};
use crate::token::{Appraisal, TokenIssuer, STATUS_POINTER, TEE_PUBKEY_POINTER};
use crate::BrokerConfig;

/// Prefix of the `type` member of every error body, as Trustee sends it.
pub(crate) const ERROR_TYPE_PREFIX: &str = "https://github.com/confidential-containers/kbs/errors/";
/// The session cookie name.
const SESSION_COOKIE: &str = "kbs-session-id";
/// How long a session lives, as Trustee's default.
const SESSION_LIFETIME: Duration = Duration::from_secs(300);
/// Trustee answers every attestation failure with this detail; the reason is only logged.
const ATTEST_FAILED: &str = "Attestation error: RCAR handshake Attest failed";

/// The configuration after validation, in the form the handlers compare against.
struct Policy {
    /// Behind a lock so [`Kbs::set_trusted_aks`] can change it while the broker runs.
    trusted_aks: Mutex<Vec<Vec<u8>>>,
    /// Behind a lock so [`Kbs::set_expected_pcrs`] can change it while the broker runs.
    expected_pcrs: Mutex<BTreeMap<u8, Vec<[u8; 32]>>>,
    resources: BTreeMap<String, Vec<u8>>,
    expected_version: String,
    require_affirming: bool,
    snp: crate::snp::SnpPolicy,
    tdx: crate::tdx::TdxPolicy,
    azure: crate::azure::AzurePolicy,
    gce: crate::gce::GcePolicy,
    /// [`BrokerConfig::registration`].
    registration: Option<String>,
    /// Node uuid to the AK (DER SubjectPublicKeyInfo) registered for it.
    registered: Mutex<HashMap<String, Vec<u8>>>,
}

impl Policy {
    fn new(config: BrokerConfig) -> anyhow::Result<Policy> {
        let trusted_aks = decode_aks(&config.trusted_aks)?;
        let expected_pcrs = decode_pcrs(
            &config
                .expected_pcrs
                .iter()
                .map(|(i, v)| (*i, vec![v.clone()]))
                .collect(),
        )?;
        for path in config.resources.keys() {
            ensure!(
                resource_path_is_valid(path),
                "resource path {path:?} is not repo/type/tag"
            );
        }
        crate::snp::validate(&config.snp)?;
        crate::tdx::validate(&config.tdx)?;
        crate::gce::validate(&config.gce)?;
        Ok(Policy {
            trusted_aks: Mutex::new(trusted_aks),
            expected_pcrs: Mutex::new(expected_pcrs),
            resources: config.resources,
            expected_version: config.expected_version,
            require_affirming: config.require_affirming,
            snp: config.snp,
            tdx: config.tdx,
            azure: config.azure,
            gce: config.gce,
            registration: config.registration,
            registered: Mutex::new(HashMap::new()),
        })
    }
}

/// Decodes trusted AKs given as standard base64 of their DER SubjectPublicKeyInfo.
fn decode_aks(aks: &[String]) -> anyhow::Result<Vec<Vec<u8>>> {
    aks.iter()
        .map(|ak| {
            STANDARD
                .decode(ak.trim())
                .with_context(|| format!("trusted AK {ak:?} is not standard base64"))
        })
        .collect()
}

/// The DER SubjectPublicKeyInfo inside a `-----BEGIN PUBLIC KEY-----` PEM block.
fn pem_public_key(pem: &str) -> Option<Vec<u8>> {
    let body = pem
        .trim()
        .strip_prefix("-----BEGIN PUBLIC KEY-----")?
        .strip_suffix("-----END PUBLIC KEY-----")?;
    let b64: String = body.split_whitespace().collect();
    STANDARD.decode(b64).ok().filter(|der| !der.is_empty())
}

/// One RCAR session, keyed by its cookie.
struct Session {
    tee: Tee,
    nonce: String,
    expires: SystemTime,
    /// Set once the session has attested; resource requests with the cookie use it.
    token: Option<String>,
}

/// Everything the endpoints share across connections.
pub(crate) struct Kbs {
    policy: Policy,
    issuer: TokenIssuer,
    sessions: Mutex<HashMap<String, Session>>,
    log: Mutex<Vec<String>>,
    released: Mutex<Vec<String>>,
}

/// Locks a mutex, ignoring poisoning: a panicking connection thread must not take the broker
/// down with it, and every critical section here leaves the data consistent.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A Trustee error response: `{"type":".../errors/<variant>","detail":...}`, serialised with
/// Trustee's own type so the member order matches too.
fn error(status: u16, variant: &str, detail: &str) -> Response {
    let info = ErrorInformation {
        error_type: format!("{ERROR_TYPE_PREFIX}{variant}"),
        detail: detail.to_string(),
    };
    Response {
        status,
        body: serde_json::to_vec(&info).unwrap_or_default(),
        set_cookie: None,
        retry_after: None,
    }
}

/// Whether `path` is `repo/type/tag` with plain, non-empty segments.
fn resource_path_is_valid(path: &str) -> bool {
    let segments: Vec<&str> = path.split('/').collect();
    segments.len() == 3
        && segments.iter().all(|s| {
            !s.is_empty()
                && *s != "."
                && *s != ".."
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        })
}

/// Formats a time as an HTTP date (RFC 1123), as cookies' `Expires` attribute needs.
pub(crate) fn http_date(time: SystemTime) -> String {
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = time
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm, for dates after 1970).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
        WEEKDAYS[(days % 7) as usize],
        day,
        MONTHS[(month - 1) as usize],
        year,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The value of the session cookie, if the request carries one.
fn session_cookie(request: &Request) -> Option<&str> {
    request
        .header_values("cookie")
        .flat_map(|header| header.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.trim())
}

/// The bearer token of an `Authorization` header, if any.
fn bearer_token(request: &Request) -> Option<&str> {
    let value = request.header("authorization")?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Shortens a session id for log lines, which is enough to follow one client.
fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

impl Kbs {
    /// Validates the configuration and makes the token key.
    pub(crate) fn new(config: BrokerConfig) -> anyhow::Result<Kbs> {
        Ok(Kbs {
            policy: Policy::new(config)?,
            issuer: TokenIssuer::new(),
            sessions: Mutex::new(HashMap::new()),
            log: Mutex::new(Vec::new()),
            released: Mutex::new(Vec::new()),
        })
    }

    /// The decision log so far.
    pub(crate) fn log_lines(&self) -> Vec<String> {
        lock(&self.log).clone()
    }

    /// The resource paths released so far.
    pub(crate) fn released(&self) -> Vec<String> {
        lock(&self.released).clone()
    }

    /// Replaces the trusted AKs for every later attestation; sessions that already attested
    /// keep their token. On an invalid AK nothing changes.
    pub(crate) fn set_trusted_aks(&self, aks: &[String]) -> anyhow::Result<()> {
        let decoded = decode_aks(aks)?;
        *lock(&self.policy.trusted_aks) = decoded;
        self.record(format!("policy: trusted_aks replaced ({} keys)", aks.len()));
        Ok(())
    }

    /// Replaces the reference PCR values for every later attestation. On an invalid value
    /// nothing changes.
    pub(crate) fn set_expected_pcrs(&self, pcrs: &BTreeMap<u8, Vec<String>>) -> anyhow::Result<()> {
        let decoded = decode_pcrs(pcrs)?;
        *lock(&self.policy.expected_pcrs) = decoded;
        self.record(format!(
            "policy: expected_pcrs replaced ({} PCRs)",
            pcrs.len()
        ));
        Ok(())
    }

    /// Records one decision, both in the in-memory log and through `log`.
    pub(crate) fn record(&self, line: String) {
        log::info!("{line}");
        lock(&self.log).push(line);
    }

    /// Routes one request the way Trustee's KBS does: the first path segment after `/kbs/v0`
    /// names the handler, and anything unknown is a 404.
    pub(crate) fn handle(&self, request: &Request) -> Response {
        if self.policy.registration.as_deref() == Some(request.path.as_str()) {
            return self.register(request);
        }
        let Some(rest) = request.path.strip_prefix("/kbs/v0/") else {
            return error(
                404,
                "InvalidRequestPath",
                &format!("Request path {} is invalid", request.path),
            );
        };
        let (plugin, tail) = rest.split_once('/').unwrap_or((rest, ""));
        match (plugin, request.method.as_str()) {
            ("auth", "POST") if tail.is_empty() => self.auth(request),
            ("attest", "POST") if tail.is_empty() => self.attest(request),
            ("resource", "GET") => self.resource(request, tail),
            _ => error(404, "PluginNotFound", &format!("Plugin {plugin} not found")),
        }
    }

    /// AK registration, trust on first use per node uuid (see [`BrokerConfig::registration`]).
    fn register(&self, request: &Request) -> Response {
        if request.method != "PUT" {
            return error(405, "InvalidRequest", "registration takes PUT");
        }
        let parsed = serde_json::from_slice::<Value>(&request.body)
            .ok()
            .and_then(|v| {
                let pem = v.get("attestation_key")?.as_str()?.to_owned();
                let uuid = v.get("uuid")?.as_str()?.to_owned();
                Some((pem, uuid))
            });
        let Some((pem, uuid)) = parsed else {
            self.record("registration: rejected: not {attestation_key, uuid}".into());
            return error(400, "InvalidRequest", "expected {attestation_key, uuid}");
        };
        let Some(der) = pem_public_key(&pem) else {
            self.record(format!(
                "registration: rejected for node {uuid}: not a PEM public key"
            ));
            return error(
                400,
                "InvalidRequest",
                "attestation_key is not a PEM public key",
            );
        };
        {
            let mut registered = lock(&self.policy.registered);
            if let Some(existing) = registered.get(&uuid) {
                if *existing != der {
                    drop(registered);
                    self.record(format!(
                        "registration: refused for node {uuid}: another AK is registered"
                    ));
                    return error(409, "InvalidRequest", "node already registered");
                }
            }
            registered.insert(uuid.clone(), der.clone());
        }
        let mut trusted = lock(&self.policy.trusted_aks);
        if !trusted.contains(&der) {
            trusted.push(der.clone());
        }
        drop(trusted);
        self.record(format!(
            "registration: AK {} registered for node {uuid}",
            STANDARD.encode(&der)
        ));
        Response::json(201, &json!({}))
    }

    fn auth(&self, request: &Request) -> Response {
        let parsed: kbs_types::Request = match serde_json::from_slice(&request.body) {
            Ok(parsed) => parsed,
            Err(e) => {
                self.record(format!("auth: rejected: cannot parse request: {e}"));
                return error(
                    401,
                    "AttestationError",
                    "Attestation error: RCAR handshake Auth failed: deserialize Request",
                );
            }
        };
        if parsed.version != self.policy.expected_version {
            let reason = format!(
                "KBS Client Protocol Version Mismatch: expect ={} while the request is {}",
                self.policy.expected_version, parsed.version
            );
            self.record(format!("auth: rejected: {reason}"));
            return error(
                401,
                "AttestationError",
                &format!("Attestation error: RCAR handshake Auth failed: {reason}"),
            );
        }

        let mut id_bytes = [0_u8; 16];
        OsRng.fill_bytes(&mut id_bytes);
        let id = hex::encode(id_bytes);
        let mut nonce_bytes = [0_u8; 32];
        OsRng.fill_bytes(&mut nonce_bytes);
        let nonce = STANDARD.encode(nonce_bytes);
        let expires = SystemTime::now() + SESSION_LIFETIME;

        let challenge = Challenge {
            nonce: nonce.clone(),
            extra_params: Value::String(String::new()),
        };
        let body = match serde_json::to_vec(&challenge) {
            Ok(body) => body,
            Err(e) => return error(500, "SerdeError", &e.to_string()),
        };
        {
            let mut sessions = lock(&self.sessions);
            let now = SystemTime::now();
            sessions.retain(|_, s| s.expires > now);
            sessions.insert(
                id.clone(),
                Session {
                    tee: parsed.tee,
                    nonce,
                    expires,
                    token: None,
                },
            );
        }
        self.record(format!(
            "auth: session {}: tee {}, protocol {}: challenge issued",
            short(&id),
            parsed.tee.as_ref(),
            parsed.version
        ));
        Response {
            status: 200,
            body,
            set_cookie: Some(format!(
                "{SESSION_COOKIE}={id}; Expires={}",
                http_date(expires)
            )),
            retry_after: None,
        }
    }

    fn attest(&self, request: &Request) -> Response {
        let session_id = session_cookie(request).unwrap_or_default().to_string();
        match self.try_attest(&session_id, &request.body) {
            Ok((token, expires)) => Response {
                status: 200,
                body: json!({ "token": token }).to_string().into_bytes(),
                set_cookie: Some(format!(
                    "{SESSION_COOKIE}={session_id}; Expires={}",
                    http_date(expires)
                )),
                retry_after: None,
            },
            Err(e) => {
                let who = if session_id.is_empty() {
                    "no session".to_string()
                } else {
                    format!("session {}", short(&session_id))
                };
                self.record(format!("attest: {who}: rejected: {e:#}"));
                error(401, "AttestationError", ATTEST_FAILED)
            }
        }
    }

    /// Verifies and appraises the evidence of one session; the error is the logged reason.
    fn try_attest(&self, session_id: &str, body: &[u8]) -> anyhow::Result<(String, SystemTime)> {
        ensure!(!session_id.is_empty(), "cookie not found");
        // The body is parsed twice: as Trustee's typed `Attestation` so that whatever Trustee
        // would refuse is refused here too, and as plain JSON so that `tee-pubkey` enters the
        // binding digest exactly as the client sent it.
        let attestation: Attestation =
            serde_json::from_slice(body).context("deserialize Attestation")?;
        let raw: Value = serde_json::from_slice(body).context("deserialize Attestation")?;
        let tee_pubkey = raw
            .pointer("/runtime-data/tee-pubkey")
            .cloned()
            .ok_or_else(|| anyhow!("runtime-data has no tee-pubkey"))?;
        // Trustee hashes its typed `TeePubKey` re-serialised, which drops members it does not
        // know. Hashing the key as received is only equivalent when there are none, so a key
        // with extra members is refused here as a real Trustee would (by digest mismatch) refuse
        // a client that hashed them.
        let typed_pubkey = serde_json::to_value(&attestation.runtime_data.tee_pubkey)?;
        if typed_pubkey != tee_pubkey {
            let extra: Vec<&str> = tee_pubkey
                .as_object()
                .map(|members| {
                    members
                        .keys()
                        .filter(|k| typed_pubkey.get(k.as_str()).is_none())
                        .map(String::as_str)
                        .collect()
                })
                .unwrap_or_default();
            bail!(
                "tee-pubkey has members Trustee drops before hashing ({}), so a real Trustee \
                 would compute a different binding digest",
                extra.join(", ")
            );
        }

        let (tee, nonce, expires) = {
            let sessions = lock(&self.sessions);
            let session = sessions
                .get(session_id)
                .ok_or_else(|| anyhow!("no session {} (unknown cookie)", short(session_id)))?;
            ensure!(session.expires > SystemTime::now(), "session expired");
            if let Some(token) = &session.token {
                // Trustee answers a repeated attest on an attested session with the same token.
                self.record(format!(
                    "attest: session {}: already attested, returning the earlier token",
                    short(session_id)
                ));
                return Ok((token.clone(), session.expires));
            }
            (session.tee, session.nonce.clone(), session.expires)
        };

        ensure!(
            attestation.runtime_data.nonce == nonce,
            "the nonce in the handshake session is different from the client side in KBS \
             protocol's Attestation message"
        );
        // TPM, SNP or TDX primary evidence, and a TPM quote beside a TEE report (src/tee.rs).
        let trusted_aks = lock(&self.policy.trusted_aks).clone();
        let expected_pcrs = lock(&self.policy.expected_pcrs).clone();
        let outcome = crate::tee::verify(&crate::tee::Input {
            tee,
            primary: &attestation.tee_evidence.primary_evidence,
            additional: &attestation.tee_evidence.additional_evidence,
            nonce: &nonce,
            tee_pubkey: &tee_pubkey,
            trusted_aks: &trusted_aks,
            expected_pcrs: &expected_pcrs,
            snp: &self.policy.snp,
            tdx: &self.policy.tdx,
            azure: &self.policy.azure,
            gce: &self.policy.gce,
        })?;
        let reasons = outcome.reasons;
        let ak_trusted = outcome.ak_trusted;
        let status = if reasons.is_empty() {
            "affirming"
        } else {
            "warning"
        };
        let token = self.issuer.issue(&Appraisal {
            status,
            tee_pubkey: &tee_pubkey,
            nonce: &nonce,
            pcrs: &outcome.pcrs,
            ak_trusted,
            tee_claims: outcome.tee_claims.as_ref().map(|(k, v)| (*k, v)),
        })?;

        {
            let mut sessions = lock(&self.sessions);
            let session = sessions
                .get_mut(session_id)
                .ok_or_else(|| anyhow!("session vanished during attestation"))?;
            session.token = Some(token.clone());
        }
        let init_data_note = if attestation.init_data.is_some() {
            " (init-data present, not checked against PCR8 by test-kbs)"
        } else {
            ""
        };
        if reasons.is_empty() {
            self.record(format!(
                "attest: session {}: evidence verified ({}), ear.status affirming{init_data_note}",
                short(session_id),
                outcome.summary
            ));
        } else {
            self.record(format!(
                "attest: session {}: evidence verified ({}), ear.status warning: {}{init_data_note}",
                short(session_id),
                outcome.summary,
                reasons.join("; ")
            ));
        }
        Ok((token, expires))
    }

    /// The token authorising a resource request: the attested session's, else the bearer's.
    fn request_token(&self, request: &Request) -> Option<(String, String)> {
        if let Some(id) = session_cookie(request) {
            let sessions = lock(&self.sessions);
            if let Some(session) = sessions.get(id) {
                if let (Some(token), true) = (&session.token, session.expires > SystemTime::now()) {
                    return Some((token.clone(), format!("session {}", short(id))));
                }
            }
        }
        bearer_token(request).map(|t| (t.to_string(), "bearer token".to_string()))
    }

    fn resource(&self, request: &Request, path: &str) -> Response {
        if !resource_path_is_valid(path) {
            self.record(format!("resource: {path:?}: invalid path"));
            return error(
                404,
                "InvalidRequestPath",
                &format!("Request path {} is invalid", request.path),
            );
        }
        let Some((token, who)) = self.request_token(request) else {
            self.record(format!(
                "resource: {path}: denied: no attested session and no bearer token"
            ));
            return error(401, "TokenNotFound", "Attestation Token not found");
        };
        let claims = match self.issuer.verify(&token) {
            Ok(claims) => claims,
            Err(e) => {
                self.record(format!("resource: {path}: denied ({who}): {e:#}"));
                return error(401, "TokenVerifierError", "Token Verifier error");
            }
        };
        let status = claims
            .pointer(STATUS_POINTER)
            .and_then(Value::as_str)
            .unwrap_or("none");
        if self.policy.require_affirming && status != "affirming" {
            self.record(format!(
                "resource: {path}: denied by policy ({who}): ear.status {status}, affirming required"
            ));
            return error(401, "PolicyDeny", "Access denied by policy");
        }
        let Some(plaintext) = self.policy.resources.get(path) else {
            self.record(format!("resource: {path}: not found ({who})"));
            return error(401, "PluginInternalError", "Plugin internal error");
        };
        let Some(tee_pubkey) = claims.pointer(TEE_PUBKEY_POINTER) else {
            self.record(format!(
                "resource: {path}: denied ({who}): token has no tee-pubkey"
            ));
            return error(401, "TokenVerifierError", "Token Verifier error");
        };
        let jwe = match crate::jwe::encrypt(tee_pubkey, plaintext) {
            Ok(jwe) => jwe,
            Err(e) => {
                self.record(format!("resource: {path}: cannot encrypt ({who}): {e:#}"));
                return error(401, "JweError", &format!("JWE failed: {e:#}"));
            }
        };
        let body = match serde_json::to_vec(&jwe) {
            Ok(body) => body,
            Err(e) => return error(500, "SerdeError", &e.to_string()),
        };
        lock(&self.released).push(path.to_string());
        self.record(format!(
            "resource: {path}: released ({who}, ear.status {status}, {} bytes)",
            plaintext.len()
        ));
        Response {
            status: 200,
            body,
            set_cookie: None,
            retry_after: None,
        }
    }
}

/// Reference PCR values: index (0-23) to the values accepted (as Trustee's reference values,
/// a list), each 64 lowercase hex digits.
fn decode_pcrs(pcrs: &BTreeMap<u8, Vec<String>>) -> anyhow::Result<BTreeMap<u8, Vec<[u8; 32]>>> {
    let mut out = BTreeMap::new();
    for (index, values) in pcrs {
        ensure!(
            usize::from(*index) < PCR_COUNT,
            "expected PCR index {index} is not 0-23"
        );
        let mut accepted = Vec::with_capacity(values.len());
        for value in values {
            let bytes: [u8; 32] = hex::decode(value)
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| anyhow!("expected PCR{index} {value:?} is not 64 hex digits"))?;
            accepted.push(bytes);
        }
        out.insert(*index, accepted);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates_are_rfc1123() {
        assert_eq!(http_date(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 GMT");
        let t = UNIX_EPOCH + Duration::from_secs(1_445_412_480);
        assert_eq!(http_date(t), "Wed, 21 Oct 2015 07:28:00 GMT");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(http_date(leap), "Tue, 29 Feb 2000 00:00:00 GMT");
    }

    #[test]
    fn resource_paths_are_three_plain_segments() {
        assert!(resource_path_is_valid("default/key/disk-1.bin"));
        for bad in ["a/b", "a/b/c/d", "a//c", "../b/c", "a/b/ c", "a/./c", ""] {
            assert!(!resource_path_is_valid(bad), "{bad}");
        }
    }

    #[test]
    fn cookies_and_bearers_are_found() {
        let request = Request {
            method: "GET".into(),
            path: "/".into(),
            headers: vec![
                ("cookie".into(), "a=b; kbs-session-id=abc ; c=d".into()),
                ("authorization".into(), "bearer t.o.k".into()),
            ],
            body: Vec::new(),
        };
        assert_eq!(session_cookie(&request), Some("abc"));
        assert_eq!(bearer_token(&request), Some("t.o.k"));
    }

    #[test]
    fn invalid_configuration_is_refused() {
        let mut config = BrokerConfig::default();
        config.expected_pcrs.insert(24, "00".repeat(32));
        assert!(Kbs::new(config).is_err());
        let mut config = BrokerConfig::default();
        config.expected_pcrs.insert(11, "zz".into());
        assert!(Kbs::new(config).is_err());
        let mut config = BrokerConfig::default();
        config.resources.insert("a/b".into(), Vec::new());
        assert!(Kbs::new(config).is_err());
        let config = BrokerConfig {
            trusted_aks: vec!["not base64!".into()],
            ..Default::default()
        };
        assert!(Kbs::new(config).is_err());
    }

    #[test]
    fn registration_trusts_the_first_ak_of_a_node_only() {
        let kbs = Kbs::new(BrokerConfig {
            registration: Some("/ak".into()),
            ..Default::default()
        })
        .unwrap();
        let put = |pem: &str, uuid: &str| {
            kbs.handle(&Request {
                method: "PUT".into(),
                path: "/ak".into(),
                headers: Vec::new(),
                body: json!({"attestation_key": pem, "uuid": uuid})
                    .to_string()
                    .into_bytes(),
            })
            .status
        };
        let pem = |der: &[u8]| {
            format!(
                "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
                STANDARD.encode(der)
            )
        };
        assert_eq!(put(&pem(b"ak-one"), "node-1"), 201);
        assert_eq!(
            put(&pem(b"ak-one"), "node-1"),
            201,
            "the same AK again is fine"
        );
        assert_eq!(
            put(&pem(b"ak-two"), "node-1"),
            409,
            "another AK for the node"
        );
        assert_eq!(put("not pem", "node-2"), 400);
        assert_eq!(*lock(&kbs.policy.trusted_aks), vec![b"ak-one".to_vec()]);
        // Without the option the path is not served.
        let plain = Kbs::new(BrokerConfig::default()).unwrap();
        let status = plain
            .handle(&Request {
                method: "PUT".into(),
                path: "/ak".into(),
                headers: Vec::new(),
                body: Vec::new(),
            })
            .status;
        assert_eq!(status, 404);
    }
}
