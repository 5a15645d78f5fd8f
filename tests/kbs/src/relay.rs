//! A relaying broker: the attacker's broker in the middle, for the hostile-disk tests.
//!
//! An attacker who writes the disk can name their own broker in the LUKS2 token. This broker
//! forwards `auth`, `attest` and every resource request to the real broker (so the node's
//! genuine evidence is appraised there and the real secrets are released, encrypted to the
//! node's key, which the node itself then decrypts), except the paths it serves itself: the
//! key of the attacker's disk, encrypted to the node's key taken from the relayed `attest`.
//! The agent must never let this succeed: it ignores the token's brokers when measured ones
//! exist, and otherwise measures the brokers it uses so the real broker refuses the evidence.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, PoisonError};

use anyhow::{anyhow, Context};
use serde_json::Value;

use crate::api::Kbs;
use crate::http::{Request, Response};

/// Where to relay to and what to serve locally.
#[derive(Clone)]
pub struct RelayConfig {
    /// The real broker's base URL.
    pub upstream_url: String,
    /// The real broker's CA (PEM).
    pub upstream_ca_pem: String,
    /// Resources this broker serves itself (path to plaintext), encrypted to the session key.
    pub own: BTreeMap<String, Vec<u8>>,
}

impl std::fmt::Debug for RelayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayConfig")
            .field("upstream_url", &self.upstream_url)
            .field("own", &self.own.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// The relay's state: the upstream client and the node key of each session (by cookie).
pub(crate) struct Relay {
    config: RelayConfig,
    agent: ureq::Agent,
    keys: Mutex<HashMap<String, Value>>,
}

impl Relay {
    pub(crate) fn new(config: RelayConfig) -> anyhow::Result<Relay> {
        let agent = crate::https_client(&config.upstream_ca_pem).context("upstream CA")?;
        Ok(Relay {
            config,
            agent,
            keys: Mutex::new(HashMap::new()),
        })
    }

    /// Answer one request: relayed, or served from [`RelayConfig::own`]; what it did goes to
    /// the broker's log.
    pub(crate) fn handle(&self, kbs: &Kbs, request: &Request) -> Response {
        match self.try_handle(kbs, request) {
            Ok(r) => r,
            Err(e) => {
                kbs.record(format!("relay: error: {e:#}"));
                Response::json(502, &serde_json::json!({"detail": format!("relay: {e}")}))
            }
        }
    }

    fn try_handle(&self, kbs: &Kbs, request: &Request) -> anyhow::Result<Response> {
        let cookie = request
            .header_values("cookie")
            .flat_map(|h| h.split(';'))
            .filter_map(|p| p.trim().split_once('='))
            .find(|(n, _)| *n == "kbs-session-id")
            .map(|(_, v)| v.trim().to_owned());
        if request.path == "/kbs/v0/attest" {
            let body: Value = serde_json::from_slice(&request.body).context("attest body")?;
            let key = body["runtime-data"]["tee-pubkey"].clone();
            if let Some(c) = &cookie {
                self.keys
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(c.clone(), key);
            }
        }
        if let Some(path) = request.path.strip_prefix("/kbs/v0/resource/") {
            if let Some(plain) = self.config.own.get(path) {
                let keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
                let key = cookie
                    .as_ref()
                    .and_then(|c| keys.get(c))
                    .ok_or_else(|| anyhow!("no relayed attest for this session"))?;
                let jwe = crate::jwe::encrypt(key, plain)?;
                kbs.record(format!("relay: served its own {path}"));
                return Ok(Response {
                    status: 200,
                    body: serde_json::to_vec(&jwe)?,
                    set_cookie: None,
                    retry_after: None,
                });
            }
        }
        let url = format!(
            "{}{}",
            self.config.upstream_url.trim_end_matches('/'),
            request.path
        );
        let cookie_header = cookie.map(|c| format!("kbs-session-id={c}"));
        let mut response = if request.method == "GET" {
            let mut r = self.agent.get(&url);
            if let Some(c) = &cookie_header {
                r = r.header("Cookie", c);
            }
            r.call()
        } else {
            let mut r = self
                .agent
                .post(&url)
                .header("Content-Type", "application/json");
            if let Some(c) = &cookie_header {
                r = r.header("Cookie", c);
            }
            r.send(&request.body[..])
        }
        .map_err(|e| anyhow!("upstream {url}: {e}"))?;
        let status = response.status().as_u16();
        let set_cookie = response
            .headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = response
            .body_mut()
            .with_config()
            .limit(1 << 20)
            .read_to_vec()
            .map_err(|e| anyhow!("upstream body: {e}"))?;
        kbs.record(format!(
            "relay: {} {} -> {status}",
            request.method, request.path
        ));
        Ok(Response {
            status,
            body,
            set_cookie,
            retry_after: None,
        })
    }
}
