//! The boot storm: N simulated nodes start at once against one test broker that admits at
//! most C attestations at a time (503 beyond). Every node runs the agent's real
//! `attest_unlock::flow::release` (its real TLS client, KBS session and retry/backoff) with a
//! fast in-process evidence source: simulated SEV-SNP hardware from `test_kbs::sim`, whose
//! reports the broker verifies for real (VCEK signature, chain to the simulated ARK, binding).
//! So the broker's admission limit, not the nodes, is the bottleneck.
//!
//! A node of ours that is refused keeps its session and resends the attestation in it at the
//! next try, after the wait the broker asked for (`Retry-After`), or its exponential backoff
//! when the broker asks for none.
//!
//! The baselines are what the anchors do: a fixed interval between single-attempt sessions
//! (`retry.max_rounds = 1`), giving up after a fixed number of tries.

use std::collections::BTreeMap;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use attest_unlock::config::{Broker as BrokerEntry, Config, Measure, Platform, Retry};
use attest_unlock::evidence::{EvidenceError, EvidenceSource, Recorded, ReportData};
use kbs_types::Tee;
use test_kbs::sim::{SnpReportParams, SnpSigner, SIM_SNP_MEASUREMENT};
use test_kbs::{Admission, AdmissionStats, Broker, BrokerConfig, SnpPolicy};

use super::stats::Node;

/// The resource every storm node fetches, and what the broker holds there.
pub(super) const RESOURCE: &str = "default/storm-node/root";
pub(super) const SECRET: &[u8] = br#"{"key_type":"oct","key":"storm-disk-key"}"#;
/// Stack of a simulated node's thread: TLS, JSON and P-384 need little.
const NODE_STACK: usize = 512 * 1024;

/// How a node retries.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Policy {
    /// The agent's own policy (`release` with the default `[retry]`: exponential backoff from
    /// 250 ms, full jitter, 30 s cap, no round limit).
    Ours,
    /// `tries` single-attempt sessions `interval` apart, then give up.
    Fixed { interval: Duration, tries: u32 },
}

/// A retry policy under test, and whether the broker's 503s carry `Retry-After`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Variant {
    pub key: &'static str,
    pub label: &'static str,
    pub policy: Policy,
    pub retry_after: bool,
}

/// Ours (against a broker that sends `Retry-After`, and one that does not) and the two
/// baselines, in the order they are run and shown.
pub(super) const VARIANTS: [Variant; 4] = [
    Variant {
        key: "ours",
        label: "attest-unlock, broker sends Retry-After",
        policy: Policy::Ours,
        retry_after: true,
    },
    Variant {
        key: "ours-no-hint",
        label: "attest-unlock, no Retry-After (exp. backoff, full jitter)",
        policy: Policy::Ours,
        retry_after: false,
    },
    Variant {
        key: "fixed-1s-x5",
        label: "fixed 1 s x 5 tries",
        policy: Policy::Fixed {
            interval: Duration::from_secs(1),
            tries: 5,
        },
        retry_after: false,
    },
    Variant {
        key: "fixed-5s-x3",
        label: "fixed 5 s x 3 rounds",
        policy: Policy::Fixed {
            interval: Duration::from_secs(5),
            tries: 3,
        },
        retry_after: false,
    },
];

/// One storm run.
#[derive(Debug, Clone)]
pub(super) struct Run {
    pub variant: Variant,
    pub nodes: Vec<Node>,
    pub stats: AdmissionStats,
    pub limit: Admission,
    /// N x (service time + the broker's time per attestation when idle) / C, in seconds: the
    /// broker saturated from the first instant to the last, every attestation admitted at the
    /// first try, and no contention for the CPU.
    pub ideal: f64,
    /// Mean time an admitted attestation held its slot in this run (service time +
    /// verification, which slows when the simulated nodes load the CPU), ms.
    pub mean_hold_ms: f64,
    /// Until the last node finished or gave up, s.
    pub wall: f64,
}

/// Our variants (the agent's own policy), against a broker with and without `Retry-After`.
pub(super) fn ours() -> impl Iterator<Item = &'static Variant> {
    VARIANTS.iter().filter(|v| v.policy == Policy::Ours)
}

/// N x (service time + the broker's time per attestation when idle) / C, in seconds: the
/// ideal of a storm of `n` nodes (see [`Run::ideal`]).
pub(super) fn ideal(n: usize, limit: Admission, idle_hold_ms: f64) -> f64 {
    n as f64 * (limit.service_ms as f64 + idle_hold_ms) / 1e3 / limit.max_in_flight as f64
}

/// Simulated SNP hardware as an evidence source (the bench's only one; nothing of it is in
/// the agent).
struct SimSnp {
    signer: Arc<SnpSigner>,
}

impl EvidenceSource for SimSnp {
    fn platform(&self) -> Platform {
        Platform::Snp
    }

    fn tee(&self) -> Tee {
        Tee::Snp
    }

    fn collect(&mut self, report_data: &ReportData) -> Result<serde_json::Value, EvidenceError> {
        let data = report_data.padded64();
        let report = self.signer.report(&SnpReportParams::default(), &data);
        attest_unlock::evidence::snp::encode(&report, Some(self.signer.cert_table()), &data)
    }

    fn measure(&mut self, _pcr: u32, _event: &[u8]) -> Result<Recorded, EvidenceError> {
        Ok(Recorded::Unavailable("a simulated SNP node".into()))
    }
}

/// A storm node's release of [`RESOURCE`]: the trust anchors first (switched off in the node
/// configs, as the storms' evidence has no register), then the agent's own retry loop.
pub(super) fn release(
    config: &Config,
    source: &mut dyn EvidenceSource,
) -> Result<attest_unlock::flow::Released, attest_unlock::flow::Failure> {
    let failure = |error| {
        attest_unlock::flow::Failure::at(attest_unlock::flow::Step::Anchors, None, 0, error)
    };
    let init_data =
        attest_unlock::flow::init_data_for(config, &[RESOURCE]).map_err(|e| failure(e.into()))?;
    let anchors = attest_unlock::flow::trust_anchors(config, &[RESOURCE], init_data.as_deref())
        .map_err(failure)?;
    let measured =
        attest_unlock::flow::measure_anchors(config, source, &anchors).map_err(failure)?;
    attest_unlock::flow::release(config, source, &[RESOURCE], init_data.as_deref(), &measured)
}

/// Runs `node` in `n` threads started together (a barrier): each node's finish time, from
/// the common start, and its sessions; and the seconds until the last thread ended.
pub(super) fn start_together<F>(n: usize, node: F) -> Result<(Vec<Node>, f64)>
where
    F: Fn() -> (Option<Instant>, u32) + Send + Sync + 'static,
{
    let node = Arc::new(node);
    let barrier = Arc::new(Barrier::new(n + 1));
    let mut threads = Vec::with_capacity(n);
    for i in 0..n {
        let (node, barrier) = (Arc::clone(&node), Arc::clone(&barrier));
        let spawned = std::thread::Builder::new()
            .name(format!("node-{i}"))
            .stack_size(NODE_STACK)
            .spawn(move || {
                barrier.wait();
                node()
            });
        match spawned {
            Ok(t) => threads.push(t),
            Err(e) => {
                // The threads already spawned wait on the barrier forever: let them go, with
                // nothing to measure.
                bail!("cannot spawn node thread {i}: {e}");
            }
        }
    }
    barrier.wait();
    let start = Instant::now();
    let mut nodes = Vec::with_capacity(n);
    for t in threads {
        let (done, sessions) = t
            .join()
            .map_err(|_| anyhow::anyhow!("a node thread panicked"))?;
        nodes.push(Node {
            done: done.map(|at| at.saturating_duration_since(start).as_secs_f64()),
            sessions,
        });
    }
    Ok((nodes, start.elapsed().as_secs_f64()))
}

/// The simulated chip every node uses (one chain is enough: the broker's cost per
/// attestation does not depend on which chip signed).
pub(super) fn signer() -> Result<Arc<SnpSigner>> {
    Ok(Arc::new(SnpSigner::new()?))
}

fn broker(signer: &SnpSigner, limit: Option<Admission>) -> Result<Broker> {
    let mut resources = BTreeMap::new();
    resources.insert(RESOURCE.to_owned(), SECRET.to_vec());
    Broker::start(BrokerConfig {
        resources,
        snp: SnpPolicy {
            trusted_arks: vec![signer.ark_der().to_vec()],
            expected_measurement: Some(hex_encode(&SIM_SNP_MEASUREMENT)),
            ..SnpPolicy::default()
        },
        admission: limit,
        ..BrokerConfig::default()
    })
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn node_config(broker: &Broker, policy: Policy, deadline: Duration) -> Config {
    Config {
        brokers: vec![BrokerEntry {
            url: broker.url(),
            ca_cert: Some(broker.ca_pem()),
        }],
        platform: Platform::Snp,
        measure: Measure {
            enabled: false,
            ..Measure::default()
        },
        retry: Retry {
            deadline_ms: Some(u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX)),
            max_rounds: match policy {
                Policy::Ours => None,
                Policy::Fixed { .. } => Some(1),
            },
            ..Retry::default()
        },
        ..Config::default()
    }
}

/// One node's life: `(finished at, sessions)`; `None` when it gave up.
fn node(config: &Config, signer: Arc<SnpSigner>, policy: Policy) -> (Option<Instant>, u32) {
    let mut source = SimSnp { signer };
    let check = |r: &attest_unlock::flow::Released| r.resources.holds(RESOURCE, SECRET);
    match policy {
        Policy::Ours => match release(config, &mut source) {
            Ok(r) if check(&r) => (Some(Instant::now()), r.attempts),
            Ok(r) => (None, r.attempts),
            Err(f) => (None, f.attempts),
        },
        Policy::Fixed { interval, tries } => {
            let mut sessions = 0;
            for i in 0..tries {
                match release(config, &mut source) {
                    Ok(r) => {
                        sessions += r.attempts;
                        return (check(&r).then(Instant::now), sessions);
                    }
                    Err(f) => sessions += f.attempts,
                }
                if i + 1 < tries {
                    std::thread::sleep(interval);
                }
            }
            (None, sessions)
        }
    }
}

/// Runs one storm of `n` nodes with `variant`'s policy against a broker limited by `limit`
/// whose idle time per attestation is `idle_hold_ms` (see [`calibrate`]); a node of ours gives
/// up after `deadline` (so a broken run still ends).
pub(super) fn run(
    signer: &Arc<SnpSigner>,
    variant: Variant,
    n: usize,
    limit: Admission,
    idle_hold_ms: f64,
    deadline: Duration,
) -> Result<Run> {
    let broker = broker(
        signer,
        Some(Admission {
            retry_after: variant.retry_after,
            ..limit
        }),
    )?;
    let config = node_config(&broker, variant.policy, deadline);
    let policy = variant.policy;
    let signer = Arc::clone(signer);
    let (nodes, wall) = start_together(n, move || node(&config, Arc::clone(&signer), policy))?;
    let stats = broker.admission_stats();
    drop(broker);
    let mean_hold_ms = if stats.attest_admitted > 0 {
        stats.busy.as_secs_f64() * 1e3 / stats.attest_admitted as f64
    } else {
        limit.service_ms as f64
    };
    let ideal = ideal(n, limit, idle_hold_ms);
    Ok(Run {
        variant,
        nodes,
        stats,
        limit,
        ideal,
        mean_hold_ms,
        wall,
    })
}

/// What one node alone costs against an idle broker, five times: (the node's whole session,
/// the broker's time per attestation), medians in ms. The second is the broker's capacity
/// beside the service time: the ideal of a storm is N x (service + this) / C.
pub(super) fn calibrate(signer: &Arc<SnpSigner>) -> Result<(f64, f64)> {
    let broker = broker(
        signer,
        Some(Admission {
            max_in_flight: 1,
            service_ms: 0,
            retry_after: false,
        }),
    )?;
    let config = node_config(&broker, Policy::Ours, Duration::from_secs(30));
    let mut session = Vec::new();
    let mut hold = Vec::new();
    for _ in 0..5 {
        let mut source = SimSnp {
            signer: Arc::clone(signer),
        };
        let before = broker.admission_stats().busy;
        let t = Instant::now();
        release(&config, &mut source)
            .map_err(|f| anyhow::anyhow!("{f}"))
            .context("a single storm node against an idle broker failed")?;
        session.push(t.elapsed().as_secs_f64() * 1e3);
        hold.push((broker.admission_stats().busy - before).as_secs_f64() * 1e3);
    }
    let med = |v: &[f64]| super::stats::summarize(v).map(|s| s.median);
    med(&session).zip(med(&hold)).context("no samples")
}
