//! The boot storm against the real Trustee KBS (78962cd, `test_kbs::trustee`): N nodes start
//! at once, each running the agent's real `attest_unlock::flow::release` (its TLS client,
//! KBS session and retry/backoff). Their evidence is Trustee's `sample` TEE (the verifier that
//! KBS always builds: it checks that the evidence's report data is the binding of the nonce
//! and the node's key, and nothing else), made in-process, so that the broker, not the nodes'
//! hardware, is what is measured: a swtpm would serialise every quote, and simulated SNP
//! reports do not chain to AMD's roots, which the real KBS checks.
//!
//! Trustee does not shed load with 503 as our admission model does: its actix workers (one
//! per core) queue the requests. The ideal is N x the KBS's own cost of a session / its
//! workers: every worker busy from the first instant, every session the first. That cost is
//! the KBS process's CPU time per session (all its threads, from `/proc/PID/stat`) with one
//! node alone: its TLS handshake, HTTP, JSON, verification and JWE. The time its access log
//! gives each request is shown too; it leaves out the TLS handshake and the reading of the
//! request. The nodes share this machine's cores with the KBS (their TLS, keys and JWE, whose
//! CPU time is shown), so the ratio is an upper bound of what separate machines would see.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use attest_unlock::config::{Broker as BrokerEntry, Config, Measure, Platform, Retry};
use attest_unlock::evidence::{EvidenceError, EvidenceSource, Recorded, ReportData};
use base64::Engine;
use kbs_types::Tee;
use test_kbs::trustee::Trustee;

use super::stats::Node;
use super::storm::{start_together, RESOURCE, SECRET};

/// Sessions of the lone node that measures the KBS's own cost per session (enough for the
/// kernel's 10 ms CPU-time ticks to be a small part of the total).
const CALIBRATE_SESSIONS: u32 = 100;

/// One storm against the real KBS.
#[derive(Debug, Clone)]
pub(super) struct Run {
    pub nodes: Vec<Node>,
    /// N x the KBS's CPU time per session / its workers, s.
    pub ideal: f64,
    /// The KBS's CPU time per session (one node alone), ms.
    pub cpu_ms: f64,
    /// The time the KBS's access log gives a session's requests (auth, attest, resource), ms.
    pub service_ms: f64,
    /// The nodes' CPU time per session in the storm (this process: their TLS, keys, JWE), ms.
    pub node_cpu_ms: f64,
    /// The KBS's CPU time per session in the storm, ms.
    pub storm_cpu_ms: f64,
    /// The KBS's and the nodes' CPU time in the storm / this machine's cores, s: the least
    /// time these cores could take for the work the storm did (the nodes share the KBS's
    /// cores here; in a cluster they do not).
    pub cpu_floor: f64,
    /// The window the CPU time is read over, s: from spawning the node threads to the last
    /// one ending.
    pub window: f64,
    /// Its workers (actix: one per core of this machine).
    pub workers: usize,
    /// What the nodes saw other than success: the KBS's non-200 answers by status, and the
    /// class of each node's final failure, with counts.
    pub errors: Vec<(String, usize)>,
    /// Requests the KBS logged (auth, attest, resource), or 3 per session if it logged none.
    pub requests: u64,
}

impl Run {
    /// The share of the machine's cores the KBS and the nodes kept busy over the window their
    /// CPU time is read over (1.0: every core, all the time: the storm is CPU-bound).
    pub(super) fn cpu_busy(&self) -> f64 {
        if self.window > 0.0 {
            self.cpu_floor / self.window
        } else {
            0.0
        }
    }
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

/// The KBS's own cost per session with one node alone, `CALIBRATE_SESSIONS` sessions one
/// after another: (its CPU time, the time actix logged for the requests), s per session.
fn calibrate(kbs: &Trustee, config: &Config, ticks: f64) -> Result<(f64, f64)> {
    let before = request_times(&kbs.log()).len();
    let cpu_before = cpu_seconds(kbs.pid(), ticks)?;
    let mut sessions = 0;
    for _ in 0..CALIBRATE_SESSIONS {
        let r = release(config).map_err(|f| anyhow::anyhow!("calibration release failed: {f}"))?;
        sessions += r.attempts;
    }
    let cpu = cpu_seconds(kbs.pid(), ticks)? - cpu_before;
    let times = request_times(&kbs.log());
    let spent: f64 = times.get(before..).unwrap_or_default().iter().sum();
    if sessions == 0 || spent <= 0.0 || cpu <= 0.0 {
        bail!("the KBS logged no request times (its actix access log), or used no CPU");
    }
    Ok((cpu / f64::from(sessions), spent / f64::from(sessions)))
}

/// CPU time (user + system, all threads) of process `pid` so far, s: fields 14 and 15 of
/// `/proc/PID/stat`, in clock ticks (`ticks` per second, [`clock_ticks`]).
fn cpu_seconds(pid: u32, ticks: f64) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The fields after the command name, which is in parentheses and may hold spaces: the
    // state (field 3) first.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |n: usize| -> Result<f64> {
        Ok(fields
            .get(n - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .with_context(|| format!("/proc/{pid}/stat field {n}"))? as f64)
    };
    Ok((field(14)? + field(15)?) / ticks)
}

/// The kernel's clock ticks per second (`getconf CLK_TCK`).
fn clock_ticks() -> Result<f64> {
    let out = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|t| *t > 0.0)
        .context("getconf CLK_TCK")
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
    let ticks = clock_ticks()?;
    let (cpu, service) = calibrate(&kbs, &config, ticks)?;
    let workers = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let node_errors = Arc::clone(&errors);
    // The CPU time is read from before the node threads are spawned: the window the cores'
    // share is taken over starts there too, not at the barrier.
    let window = Instant::now();
    let self_before = cpu_seconds(std::process::id(), ticks)?;
    let kbs_before = cpu_seconds(kbs.pid(), ticks)?;
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
    let node_cpu = cpu_seconds(std::process::id(), ticks)? - self_before;
    let kbs_cpu = cpu_seconds(kbs.pid(), ticks)? - kbs_before;
    let window = window.elapsed().as_secs_f64();
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
        ideal: n as f64 * cpu / workers as f64,
        cpu_ms: cpu * 1e3,
        service_ms: service * 1e3,
        node_cpu_ms: node_cpu * 1e3 / sessions.max(1) as f64,
        storm_cpu_ms: kbs_cpu * 1e3 / sessions.max(1) as f64,
        cpu_floor: (node_cpu + kbs_cpu) / workers as f64,
        window,
        workers,
        nodes,
        errors: by_class.into_iter().collect(),
        requests,
    })
}
