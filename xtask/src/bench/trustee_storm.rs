//! The boot storm against the real Trustee KBS (78962cd, `test_kbs::trustee`): N nodes start
//! at once, each running the agent's real `attest_unlock::flow::release` (its TLS client,
//! KBS session and retry/backoff). Their evidence is Trustee's `sample` TEE (the verifier that
//! KBS always builds: it checks that the evidence's report data is the binding of the nonce
//! and the node's key, and nothing else), made in-process, so that the broker, not the nodes'
//! hardware, is what is measured: a swtpm would serialise every quote, and simulated SNP
//! reports do not chain to AMD's roots, which the real KBS checks.
//!
//! Trustee does not shed load with 503 as our admission model does: its actix workers (one
//! per core) queue the requests. The ideal is N x the KBS's own time per session, from its
//! access log with one node alone, / its workers: every worker busy from the first instant,
//! every session the first. The nodes share this machine's cores with the KBS (their TLS,
//! keys and JWE), so the ratio is an upper bound of what separate machines would see.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use attest_unlock::config::{Broker as BrokerEntry, Config, Measure, Platform, Retry};
use attest_unlock::evidence::{EvidenceError, EvidenceSource, Recorded, ReportData};
use base64::Engine;
use kbs_types::Tee;
use test_kbs::trustee::Trustee;

use super::stats::Node;
use super::storm::{start_together, RESOURCE, SECRET};

/// Sessions of the lone node that measures the KBS's own time per session.
const CALIBRATE_SESSIONS: u32 = 20;

/// One storm against the real KBS.
#[derive(Debug, Clone)]
pub(super) struct Run {
    pub nodes: Vec<Node>,
    /// N x the KBS's time per session / its workers, s.
    pub ideal: f64,
    /// The KBS's own time per session (auth, attest, resource), ms.
    pub service_ms: f64,
    /// Its workers (actix: one per core of this machine).
    pub workers: usize,
    /// What the nodes saw other than success: the KBS's non-200 answers by status, and the
    /// class of each node's final failure, with counts.
    pub errors: Vec<(String, usize)>,
    /// Requests the KBS logged (auth, attest, resource), or 3 per session if it logged none.
    pub requests: u64,
}

/// Trustee's sample TEE evidence: `{"svn","report_data"}`, the report data being the binding
/// digest (Trustee's sample verifier compares it with its own).
struct Sample;

impl EvidenceSource for Sample {
    fn platform(&self) -> Platform {
        Platform::Tpm
    }

    fn tee(&self) -> Tee {
        Tee::Sample
    }

    fn collect(&mut self, report_data: &ReportData) -> Result<serde_json::Value, EvidenceError> {
        Ok(serde_json::json!({
            "svn": "1",
            "report_data": base64::engine::general_purpose::STANDARD.encode(report_data.0),
        }))
    }

    fn measure(&mut self, _pcr: u32, _event: &[u8]) -> Result<Recorded, EvidenceError> {
        Ok(Recorded::Unavailable("a sample node".into()))
    }
}

fn node_config(kbs: &Trustee, deadline: Duration) -> Result<Config> {
    Ok(Config {
        brokers: vec![BrokerEntry {
            url: kbs.url(),
            ca_cert: Some(kbs.ca_pem()?),
        }],
        measure: Measure {
            enabled: false,
            ..Measure::default()
        },
        retry: Retry {
            deadline_ms: Some(u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX)),
            ..Retry::default()
        },
        ..Config::default()
    })
}

/// One node's release with sample evidence, and the agent's own retry loop.
fn release(config: &Config) -> Result<attest_unlock::flow::Released, attest_unlock::flow::Failure> {
    super::storm::release(config, &mut Sample)
}

/// A KBS serving the storm's resource to any node that attested.
fn kbs() -> Result<Trustee> {
    let kbs = Trustee::start(false)?;
    kbs.set_resource(RESOURCE, SECRET)?;
    let policy = kbs.dir().join("allow.rego");
    std::fs::write(
        &policy,
        // The sample TEE has no reference values to be affirmed by: release after any
        // successful attestation (the storm measures the broker's throughput, not appraisal).
        "package policy\ndefault allow := true\n",
    )?;
    kbs.admin(&[
        "set-resource-policy",
        "--policy-file",
        &policy.display().to_string(),
    ])?;
    Ok(kbs)
}

/// The KBS's own time per session, s: one node alone, `CALIBRATE_SESSIONS` sessions one
/// after another, the time actix logged for each of their requests (auth, attest, resource)
/// summed and divided by the sessions.
fn calibrate(kbs: &Trustee, config: &Config) -> Result<f64> {
    let before = request_times(&kbs.log()).len();
    let mut sessions = 0;
    for _ in 0..CALIBRATE_SESSIONS {
        let r = release(config).map_err(|f| anyhow::anyhow!("calibration release failed: {f}"))?;
        sessions += r.attempts;
    }
    let times = request_times(&kbs.log());
    let spent: f64 = times.get(before..).unwrap_or_default().iter().sum();
    if sessions == 0 || spent <= 0.0 {
        bail!("the KBS logged no request times (its actix access log)");
    }
    Ok(spent / f64::from(sessions))
}

/// The duration actix's access log gives each KBS request, s.
fn request_times(log: &str) -> Vec<f64> {
    log.lines()
        .filter(|l| l.contains("/kbs/v0/") && l.contains("HTTP/1.1\" "))
        .filter_map(|l| l.split_whitespace().last()?.parse().ok())
        .collect()
}

/// One storm of `n` nodes against a fresh KBS; a node gives up after `deadline`.
pub(super) fn run(n: usize, deadline: Duration) -> Result<Run> {
    let kbs = kbs()?;
    let config = Arc::new(node_config(&kbs, deadline)?);
    // Warm the KBS (its first TLS 1.3 handshakes are slower: PROVENANCE.md) with one node
    // that may not retry, so a KBS that refuses stops the bench at once, then measure.
    let mut once = (*config).clone();
    once.retry.max_rounds = Some(1);
    release(&once).map_err(|f| anyhow::anyhow!("a single release failed: {f}\n{}", kbs.log()))?;
    let service = calibrate(&kbs, &config)?;
    let workers = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let node_errors = Arc::clone(&errors);
    let (nodes, _) = start_together(n, move || match release(&config) {
        Ok(r) if r.resources.holds(RESOURCE, SECRET) => (Some(Instant::now()), r.attempts),
        Ok(r) => (None, r.attempts),
        Err(f) => {
            if let Ok(mut e) = node_errors.lock() {
                e.push(f.error.class().to_string());
            }
            (None, f.attempts)
        }
    })?;
    // What the KBS answered other than 200, from its own access log.
    let log = kbs.log();
    let logged = request_times(&log).len() as u64;
    let calibration = 3 * (1 + u64::from(CALIBRATE_SESSIONS));
    let sessions: u64 = nodes.iter().map(|x| u64::from(x.sessions)).sum();
    let requests = if logged > calibration {
        logged - calibration
    } else {
        3 * sessions
    };
    let mut by_class = std::collections::BTreeMap::<String, usize>::new();
    for e in errors.lock().map(|e| e.clone()).unwrap_or_default() {
        *by_class.entry(e).or_default() += 1;
    }
    for line in log.lines().filter(|l| l.contains("HTTP/1.1\" ")) {
        if let Some(status) = line
            .split("HTTP/1.1\" ")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .filter(|s| *s != "200")
        {
            *by_class.entry(format!("HTTP {status}")).or_default() += 1;
        }
    }
    Ok(Run {
        ideal: n as f64 * service / workers as f64,
        service_ms: service * 1e3,
        workers,
        nodes,
        errors: by_class.into_iter().collect(),
        requests,
    })
}
