//! Runs every measurement, then prints the table and writes docs/benchmarks.md and
//! docs/benchmarks.svg. A measurement that fails is reported as not measured (with why); the
//! others still run.

use std::fmt::Write as _;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use test_kbs::Admission;

use super::akcost::{self, AkCost};
use super::measure::{self, Binary, Boot, Initramfs, Keyslot, Memory, TimeToKey};
use super::plot;
use super::stats::{self, bytes, show, storm_metrics, summarize, StormMetrics};
use super::storm;
use super::trustee_storm;
use crate::{cargo, root, step};

struct Options {
    runs: usize,
    keyslot_runs: usize,
    boots: usize,
    storm_runs: usize,
    storm_nodes: Vec<usize>,
    /// Overrides the per-size default service time.
    service_ms: Option<u64>,
    write: bool,
    storm_only: bool,
    real_storm_only: bool,
}

fn parse(args: &[String]) -> Result<Options> {
    let mut o = Options {
        runs: 10,
        keyslot_runs: 5,
        boots: 3,
        storm_runs: 2,
        storm_nodes: vec![100, 1000],
        service_ms: None,
        write: true,
        storm_only: false,
        real_storm_only: false,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| -> Result<String> {
            it.next()
                .cloned()
                .with_context(|| format!("{name} takes a value\n{}", super::USAGE))
        };
        let num = |v: String, name: &str| -> Result<usize> {
            v.parse()
                .with_context(|| format!("{name} takes a number, not {v:?}"))
        };
        match a.as_str() {
            "--runs" => o.runs = num(value(a)?, a)?.max(1),
            "--keyslot-runs" => o.keyslot_runs = num(value(a)?, a)?.max(1),
            "--boots" => o.boots = num(value(a)?, a)?,
            "--storm-runs" => o.storm_runs = num(value(a)?, a)?.max(1),
            "--service-ms" => o.service_ms = Some(num(value(a)?, a)? as u64),
            "--storm-nodes" => {
                o.storm_nodes = value(a)?
                    .split(',')
                    .map(|s| num(s.trim().to_owned(), "--storm-nodes"))
                    .collect::<Result<Vec<_>>>()?;
            }
            "--quick" => {
                o.runs = 3;
                o.keyslot_runs = 2;
                o.boots = 0;
                o.storm_runs = 1;
            }
            "--no-write" => o.write = false,
            "--storm-only" => {
                o.storm_only = true;
                o.write = false;
            }
            "--real-storm-only" => {
                o.real_storm_only = true;
                o.write = false;
            }
            "--help" | "-h" => {
                eprintln!("{}", super::USAGE);
                std::process::exit(0);
            }
            other => bail!("bench: unknown argument {other:?}\n{}", super::USAGE),
        }
    }
    Ok(o)
}

/// The broker's limit for a storm of `n` nodes: C = 4 and 100 ms up to 100 nodes, C = 10 and
/// 250 ms beyond (so that the ideal, tens of seconds, stays well above what two cores need for
/// the nodes' own TLS and signing; the broker, not the CPU, is the bottleneck).
fn limit_for(n: usize, service_ms: Option<u64>) -> Admission {
    let small = n <= 100;
    Admission {
        max_in_flight: if small { 4 } else { 10 },
        service_ms: service_ms.unwrap_or(if small { 100 } else { 250 }),
        retry_after: false,
    }
}

type Measured<T> = std::result::Result<T, String>;

fn measured<T>(what: &str, r: Result<T>) -> Measured<T> {
    r.map_err(|e| {
        let msg = format!("{e:#}");
        eprintln!("bench: {what}: NOT MEASURED: {msg}");
        msg
    })
}

struct Machine {
    nproc: usize,
    cpu: String,
    memory: String,
    kernel: String,
    os: String,
    load_start: String,
    load_end: String,
    versions: Vec<(String, String)>,
}

fn first_line(cmd: &mut Command) -> String {
    cmd.output()
        .ok()
        .map(|o| {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_owned()
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "?".to_owned())
}

fn deb_version(pkg: &str) -> String {
    first_line(Command::new("dpkg-query").args(["-W", "-f=${Version}", pkg]))
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn machine() -> Machine {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_else(|| "?".into());
    let memory = Command::new("free")
        .arg("-h")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .find(|l| l.starts_with("Mem:"))
                .map(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    format!(
                        "{} total, {} available",
                        f.get(1).unwrap_or(&"?"),
                        f.get(6).unwrap_or(&"?")
                    )
                })
        })
        .unwrap_or_else(|| "?".into());
    let os = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("PRETTY_NAME=")
                    .map(|v| v.trim_matches('"').to_owned())
            })
        })
        .unwrap_or_else(|| "?".into());
    let versions = vec![
        (
            "rustc".into(),
            first_line(Command::new("rustc").arg("--version")),
        ),
        (
            "cryptsetup".into(),
            first_line(Command::new("cryptsetup").arg("--version")),
        ),
        ("clevis".into(), deb_version("clevis")),
        ("clevis-dracut".into(), deb_version("clevis-dracut")),
        ("tang".into(), deb_version("tang")),
        ("jose".into(), deb_version("jose")),
        ("swtpm".into(), deb_version("swtpm")),
        ("dracut".into(), deb_version("dracut-core")),
        ("socat".into(), deb_version("socat")),
    ];
    Machine {
        nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu,
        memory,
        kernel: first_line(Command::new("uname").arg("-r")),
        os,
        load_start: loadavg(),
        load_end: String::new(),
        versions,
    }
}

struct Storm {
    /// One node alone against an idle broker: its whole session (ms, median).
    alone_ms: f64,
    /// The idle broker's time per attestation (verification, token, ms, median).
    idle_hold_ms: f64,
    runs: Vec<storm::Run>,
}

struct Results {
    machine: Machine,
    options: Options,
    ttk: Measured<TimeToKey>,
    ak: Measured<AkCost>,
    keyslot: Measured<Keyslot>,
    memory: Measured<Memory>,
    binary: Measured<Binary>,
    initramfs: Measured<Initramfs>,
    storm: Measured<Storm>,
    real_storm: Measured<Vec<trustee_storm::Run>>,
    boot: Measured<Boot>,
    elapsed: Duration,
}

pub(super) fn run(args: &[String]) -> Result<()> {
    let options = parse(args)?;
    if options.real_storm_only {
        step("bench: 6b. boot storm against the real Trustee KBS");
        real_storm_all(&options)?;
        return Ok(());
    }
    if options.storm_only {
        step("bench: 6. boot storm");
        let storm = storm_all(&options)?;
        for n in storm_sizes(&storm) {
            for v in storm::ours() {
                let (ok, ours, baselines) = storm_target(&storm, n, v.key);
                eprintln!(
                    "bench: storm N={n} {}: {ours}; baselines: {baselines}; target {}",
                    v.key,
                    verdict(ok)
                );
            }
        }
        return Ok(());
    }
    let started = Instant::now();
    let machine = machine();
    step("bench: building attest-unlock and the test broker (release, the shipped profile)");
    crate::run(cargo().args([
        "build",
        "--release",
        "-p",
        "attest-unlock",
        "-p",
        "test-kbs",
    ]))?;
    let work = root().join("target/bench/run");
    if work.exists() {
        std::fs::remove_dir_all(&work).with_context(|| format!("remove {}", work.display()))?;
    }
    std::fs::create_dir_all(&work)?;

    step("bench: swtpm + test broker + LUKS2 image (argon2id slot 0, PBKDF2-1000 slot 1) + tang");
    let world = measured("setup", measure::World::new(&work));
    let (ttk, ak, keyslot, memory) = match &world {
        Ok(w) => {
            step(&format!(
                "bench: 1. time to key, {} runs each, interleaved",
                options.runs
            ));
            let ttk = measured("time to key", measure::time_to_key(w, options.runs));
            step(&format!(
                "bench: 1b. the AK in the evidence step: created vs kept, swtpm and a {} ms CreatePrimary, {} runs each",
                akcost::SLOW_CREATE_PRIMARY_MS,
                options.runs
            ));
            let ak = measured("AK cost", akcost::ak_cost(w, options.runs));
            step(&format!(
                "bench: 2. keyslot open, {} runs each, interleaved",
                options.keyslot_runs
            ));
            let keyslot = measured("keyslot", measure::keyslot(w, options.keyslot_runs));
            step("bench: 4. peak RSS (GNU time)");
            let memory = measured("memory", measure::memory(w, options.runs.min(5)));
            (ttk, ak, keyslot, memory)
        }
        Err(e) => (
            Err(format!("setup failed: {e}")),
            Err(format!("setup failed: {e}")),
            Err(format!("setup failed: {e}")),
            Err(format!("setup failed: {e}")),
        ),
    };
    drop(world);

    step("bench: 3. size: the binary, its libraries, the initramfs bytes");
    let binary = measured(
        "binary",
        measure::binary(&root().join("target/release/attest-unlock")),
    );
    let initramfs = measured("initramfs", measure::initramfs(&work));

    step("bench: 6. boot storm");
    let storm = measured("boot storm", storm_all(&options));
    step("bench: 6b. boot storm against the real Trustee KBS");
    let real_storm = measured("boot storm vs Trustee", real_storm_all(&options));

    let boot = if options.boots == 0 {
        Err("skipped (--boots 0)".to_owned())
    } else {
        step(&format!(
            "bench: 5. boot: cargo xtask e2e --measure {}",
            options.boots
        ));
        measured("boot", measure::boot(options.boots, &work.join("e2e.log")))
    };

    let mut machine = machine;
    machine.load_end = loadavg();
    let results = Results {
        machine,
        options,
        ttk,
        ak,
        keyslot,
        memory,
        binary,
        initramfs,
        storm,
        real_storm,
        boot,
        elapsed: started.elapsed(),
    };
    let (head, rows) = summary_rows(&results);
    step("bench: results (medians, min-max in parentheses)");
    eprintln!("{}", stats::text_table(&head, &rows));
    for line in storm_lines(&results) {
        eprintln!("{line}");
    }
    if results.options.write {
        let docs = root().join("docs");
        std::fs::write(docs.join("benchmarks.md"), markdown(&results, &head, &rows))?;
        std::fs::write(docs.join("benchmarks.svg"), figure(&results))?;
        eprintln!("bench: wrote docs/benchmarks.md and docs/benchmarks.svg");
    }
    eprintln!("bench: total {:.0} s", results.elapsed.as_secs_f64());
    Ok(())
}

/// The storm against the real KBS, once per size (it has no admission limit to vary).
fn real_storm_all(o: &Options) -> Result<Vec<trustee_storm::Run>> {
    let mut runs = Vec::new();
    for &n in &o.storm_nodes {
        let run = trustee_storm::run(n, Duration::from_secs(300))?;
        let m = storm_metrics(&run.nodes, run.requests, run.ideal);
        eprintln!(
            "bench: storm vs Trustee N={n}: {}/{n} unlocked, last {}, ideal {:.2}s ({:.1} ms CPU per session, {:.1} ms logged, in the storm {:.1} ms, nodes {:.1} ms CPU, cores {:.0}% busy, CPU floor {:.2}s, {} workers), {:.2} requests/node, errors {:?}",
            m.unlocked,
            m.last.map_or("-".into(), |l| format!("{l:.2}s")),
            run.ideal,
            run.cpu_ms,
            run.service_ms,
            run.storm_cpu_ms,
            run.node_cpu_ms,
            run.cpu_busy() * 100.0,
            run.cpu_floor,
            run.workers,
            m.requests_per_node,
            run.errors
        );
        runs.push(run);
    }
    Ok(runs)
}

fn storm_all(o: &Options) -> Result<Storm> {
    let signer = storm::signer()?;
    let (alone_ms, idle_hold_ms) = storm::calibrate(&signer)?;
    eprintln!(
        "bench: storm: one node alone against an idle broker: {alone_ms:.1} ms per session, \
         {idle_hold_ms:.1} ms of it attestation in the broker"
    );
    let mut runs = Vec::new();
    for &n in &o.storm_nodes {
        let limit = limit_for(n, o.service_ms);
        let est = storm::ideal(n, limit, idle_hold_ms);
        let deadline = Duration::from_secs_f64((est * 8.0).max(60.0));
        for r in 0..o.storm_runs {
            for v in storm::VARIANTS {
                let run = storm::run(&signer, v, n, limit, idle_hold_ms, deadline)?;
                let m = metrics(&run);
                eprintln!(
                    "bench: storm N={n} C={} S={}ms run {}/{} {}: {}/{} unlocked, last {}, ideal {:.1}s, {:.2} requests/node, {} x 503, {:.1}s",
                    limit.max_in_flight,
                    limit.service_ms,
                    r + 1,
                    o.storm_runs,
                    v.label,
                    m.unlocked,
                    m.nodes,
                    m.last.map_or("-".into(), |l| format!("{l:.1}s")),
                    run.ideal,
                    m.requests_per_node,
                    run.stats.attest_rejected,
                    run.wall
                );
                runs.push(run);
            }
        }
    }
    Ok(Storm {
        alone_ms,
        idle_hold_ms,
        runs,
    })
}

fn metrics(run: &storm::Run) -> StormMetrics {
    storm_metrics(&run.nodes, run.stats.requests(), run.ideal)
}

fn verdict(ok: Option<bool>) -> String {
    match ok {
        Some(true) => "met".into(),
        Some(false) => "**missed**".into(),
        None => "not measured".into(),
    }
}

fn med(v: &[f64]) -> Option<f64> {
    summarize(v).map(|s| s.median)
}

/// One storm size's summary per variant: (variant key, label, metrics of each run).
fn storm_groups(s: &Storm, n: usize) -> Vec<(storm::Variant, Vec<StormMetrics>, Vec<f64>)> {
    storm::VARIANTS
        .iter()
        .map(|v| {
            let runs: Vec<&storm::Run> = s
                .runs
                .iter()
                .filter(|r| r.variant.key == v.key && r.nodes.len() == n)
                .collect();
            (
                *v,
                runs.iter().map(|r| metrics(r)).collect(),
                runs.iter().map(|r| r.ideal).collect(),
            )
        })
        .collect()
}

fn storm_sizes(s: &Storm) -> Vec<usize> {
    let mut sizes: Vec<usize> = s.runs.iter().map(|r| r.nodes.len()).collect();
    sizes.sort_unstable();
    sizes.dedup();
    sizes
}

/// Whether the storm target holds for size `n` and our variant `key`: ours within 1.3x ideal
/// with <= 1.5 extra requests per node (medians over runs), and each baseline worse (fewer
/// nodes unlocked, or a larger ratio, or more requests).
fn storm_target(s: &Storm, n: usize, key: &str) -> (Option<bool>, String, String) {
    let groups = storm_groups(s, n);
    let Some((_, ours, _)) = groups.iter().find(|(v, _, _)| v.key == key) else {
        return (None, "-".into(), "-".into());
    };
    let ratios: Vec<f64> = ours
        .iter()
        .map(|m| m.ratio.unwrap_or(f64::INFINITY))
        .collect();
    let extra: Vec<f64> = ours.iter().map(|m| m.extra_requests_per_node).collect();
    let (Some(r), Some(x)) = (med(&ratios), med(&extra)) else {
        return (None, "-".into(), "-".into());
    };
    let all = ours.iter().all(|m| m.unlocked == m.nodes);
    let ours_ok = all && r <= 1.3 && x <= 1.5;
    let baselines_worse = groups
        .iter()
        .filter(|(v, _, _)| v.policy != storm::Policy::Ours)
        .all(|(_, b, _)| {
            b.iter().all(|m| {
                m.unlocked < m.nodes
                    || m.ratio.unwrap_or(f64::INFINITY) > r
                    || m.extra_requests_per_node > x
            })
        });
    let ours_text = format!(
        "{}/{} unlocked, {:.2}x ideal, +{:.2} req/node",
        ours.iter().map(|m| m.unlocked).min().unwrap_or(0),
        n,
        r,
        x
    );
    let base_text = groups
        .iter()
        .filter(|(v, _, _)| v.policy != storm::Policy::Ours)
        .map(|(v, b, _)| {
            let unlocked = b.iter().map(|m| m.unlocked).min().unwrap_or(0);
            let ratio = med(&b
                .iter()
                .map(|m| m.ratio.unwrap_or(f64::INFINITY))
                .collect::<Vec<_>>());
            let ratio = match ratio {
                Some(r) if r.is_finite() => format!("{r:.2}x"),
                _ => "never all".into(),
            };
            format!("{}: {unlocked}/{n}, {ratio}", v.key)
        })
        .collect::<Vec<_>>()
        .join("; ");
    (Some(ours_ok && baselines_worse), ours_text, base_text)
}

const HEAD: [&str; 6] = [
    "measure",
    "attest-unlock",
    "baseline",
    "ratio",
    "target",
    "verdict",
];

fn summary_rows(r: &Results) -> ([&'static str; 6], Vec<Vec<String>>) {
    let mut rows: Vec<Vec<String>> = Vec::new();
    time_to_key_rows(&mut rows, r);
    ak_rows(&mut rows, r);
    keyslot_rows(&mut rows, r);
    size_rows(&mut rows, r);
    memory_rows(&mut rows, r);
    boot_rows(&mut rows, r);
    storm_rows_summary(&mut rows, r);
    real_storm_rows_summary(&mut rows, r);
    (HEAD, rows)
}

/// A summary row for a measurement that failed: its first words.
fn not_measured(e: &str) -> Vec<String> {
    vec![
        format!("not measured: {}", first_words(e)),
        "-".into(),
        "-".into(),
    ]
}

/// Summary rows of section 1. time to key.
fn time_to_key_rows(rows: &mut Vec<Vec<String>>, r: &Results) {
    match &r.ttk {
        Ok(t) => {
            let ratio = med(&t.ours_key).zip(med(&t.clevis)).map(|(a, b)| a / b);
            rows.push(vec![
                "time to key, ms (ours: unlock wall minus keyslot check)".into(),
                show(&t.ours_key, 1),
                format!("clevis decrypt + tang: {}", show(&t.clevis, 1)),
                ratio.map_or("-".into(), |x| format!("{x:.2}x")),
                "<= 0.35x".into(),
                verdict(ratio.map(|x| x <= 0.35)),
            ]);
            rows.push(vec![
                "unlock --verify-only wall, ms (incl. keyslot check)".into(),
                show(&t.ours_wall, 1),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
            ]);
        }
        Err(e) => {
            let mut row = vec!["time to key, ms".into()];
            row.extend(not_measured(e));
            row.extend(["<= 0.35x".into(), verdict(None)]);
            rows.push(row);
        }
    }
}

/// Summary rows of section 1b: the evidence step with the AK created vs kept.
fn ak_rows(rows: &mut Vec<Vec<String>>, r: &Results) {
    match &r.ak {
        Ok(a) => {
            for (label, kept, created) in [
                (
                    "evidence step, ms, AK kept (swtpm)",
                    &a.cached_swtpm,
                    &a.created_swtpm,
                ),
                (
                    "evidence step, ms, AK kept (CreatePrimary +2 s, a discrete TPM)",
                    &a.cached_slow,
                    &a.created_slow,
                ),
            ] {
                let ratio = med(kept).zip(med(created)).map(|(k, c)| k / c);
                rows.push(vec![
                    label.into(),
                    show(kept, 1),
                    format!("AK created each boot: {}", show(created, 1)),
                    ratio.map_or("-".into(), |x| format!("{x:.2}x")),
                    "-".into(),
                    "-".into(),
                ]);
            }
        }
        Err(e) => {
            let mut row = vec!["evidence step, AK kept vs created".into()];
            row.extend(not_measured(e));
            row.extend(["-".into(), "-".into()]);
            rows.push(row);
        }
    }
}

/// Summary rows of section 2. keyslot.
fn keyslot_rows(rows: &mut Vec<Vec<String>>, r: &Results) {
    match &r.keyslot {
        Ok(k) => {
            let m = med(&k.pbkdf2_named);
            rows.push(vec![
                format!(
                    "keyslot open, ms (our PBKDF2-1000 slot named; default luksFormat, digest {} iter.)",
                    k.digest_iterations.0
                ),
                show(&k.pbkdf2_named, 1),
                format!("argon2id slot: {}", show(&k.argon2_named, 0)),
                med(&k.pbkdf2_named)
                    .zip(med(&k.argon2_named))
                    .map_or("-".into(), |(a, b)| format!("{:.3}x", a / b)),
                "<= 10 ms".into(),
                verdict(m.map(|x| x <= 10.0)),
            ]);
            let f = med(&k.pbkdf2_fast_digest);
            rows.push(vec![
                format!(
                    "keyslot open, ms (same slot; volume formatted with forced 1000 iter., digest {} iter.)",
                    k.digest_iterations.1
                ),
                show(&k.pbkdf2_fast_digest, 1),
                "-".into(),
                "-".into(),
                "<= 10 ms".into(),
                verdict(f.map(|x| x <= 10.0)),
            ]);
            rows.push(vec![
                "keyslot open, ms (our key, slot not named: argon2id slot tried first)".into(),
                show(&k.ours_unnamed, 0),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
            ]);
        }
        Err(e) => {
            let mut row = vec!["keyslot open, ms".into()];
            row.extend(not_measured(e));
            row.extend(["<= 10 ms".into(), verdict(None)]);
            rows.push(row);
        }
    }
}

/// Summary rows of section 3. size.
fn size_rows(rows: &mut Vec<Vec<String>>, r: &Results) {
    match &r.binary {
        Ok(b) => {
            let libs: u64 = b.libs.iter().map(|l| l.2).sum();
            rows.push(vec![
                format!(
                    "binary, stripped{}",
                    if b.stripped == Some(false) {
                        " (NOT stripped)"
                    } else {
                        ""
                    }
                ),
                format!("{} ({} B)", bytes(b.bytes), b.bytes),
                format!("+ {} shared libs, {}", b.libs.len(), bytes(libs)),
                "-".into(),
                "<= 4 MiB".into(),
                verdict(Some(b.bytes <= 4 << 20 && b.stripped != Some(false))),
            ]);
        }
        Err(e) => {
            let mut row = vec!["binary, stripped".into()];
            row.extend(not_measured(e));
            row.extend(["<= 4 MiB".into(), verdict(None)]);
            rows.push(row);
        }
    }
    match &r.initramfs {
        Ok(i) => {
            let ours = i.ours.raw.saturating_sub(i.base.raw);
            let clevis = i.clevis.raw.saturating_sub(i.base.raw);
            let ratio = ours as f64 / clevis.max(1) as f64;
            rows.push(vec![
                "initramfs bytes added by the dracut module (uncompressed)".into(),
                bytes(ours),
                format!("clevis + pin-tang + pin-tpm2: {}", bytes(clevis)),
                format!("{ratio:.2}x"),
                "<= 0.5x".into(),
                verdict(Some(ratio <= 0.5)),
            ]);
            let oz = i.ours.zstd.saturating_sub(i.base.zstd);
            let cz = i.clevis.zstd.saturating_sub(i.base.zstd);
            rows.push(vec![
                "initramfs bytes added (zstd -19)".into(),
                bytes(oz),
                bytes(cz),
                format!("{:.2}x", oz as f64 / cz.max(1) as f64),
                "-".into(),
                "-".into(),
            ]);
        }
        Err(e) => {
            let mut row = vec!["initramfs bytes added".into()];
            row.extend(not_measured(e));
            row.extend(["<= 0.5x".into(), verdict(None)]);
            rows.push(row);
        }
    }
}

/// Summary rows of section 4. memory.
fn memory_rows(rows: &mut Vec<Vec<String>>, r: &Results) {
    match &r.memory {
        Ok(m) => {
            let mib = |v: &[f64]| v.iter().map(|k| k / 1024.0).collect::<Vec<f64>>();
            let a = med(&m.agent_kib);
            rows.push(vec![
                "peak RSS, MiB (agent process)".into(),
                show(&mib(&m.agent_kib), 1),
                format!("clevis decrypt: {}", show(&mib(&m.clevis_kib), 1)),
                a.zip(med(&m.clevis_kib))
                    .map_or("-".into(), |(a, b)| format!("{:.2}x", a / b)),
                "<= 16 MiB".into(),
                verdict(a.map(|k| k <= 16.0 * 1024.0)),
            ]);
            rows.push(vec![
                "peak RSS, MiB (unlock incl. cryptsetup child: the larger)".into(),
                show(&mib(&m.unlock_kib), 1),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
            ]);
        }
        Err(e) => {
            let mut row = vec!["peak RSS".into()];
            row.extend(not_measured(e));
            row.extend(["<= 16 MiB".into(), verdict(None)]);
            rows.push(row);
        }
    }
}

/// Summary rows of section 5. boot.
fn boot_rows(rows: &mut Vec<Vec<String>>, r: &Results) {
    match &r.boot {
        Ok(b) => {
            let over = med(&b.attested)
                .zip(med(&b.baseline))
                .map(|(a, k)| (a - k) / k);
            rows.push(vec![
                "boot to root (QEMU TCG), s".into(),
                show(&b.attested, 1),
                format!("key file: {}", show(&b.baseline, 1)),
                over.map_or("-".into(), |o| format!("{:+.1}%", o * 100.0)),
                "<= +10%".into(),
                verdict(over.map(|o| o <= 0.10)),
            ]);
        }
        Err(e) => rows.push(vec![
            "boot to root (QEMU TCG), s".into(),
            format!("not measured yet: {}", first_words(e)),
            "-".into(),
            "-".into(),
            "<= +10%".into(),
            verdict(None),
        ]),
    }
}

/// Summary rows of section 6. storm.
fn storm_rows_summary(rows: &mut Vec<Vec<String>>, r: &Results) {
    match &r.storm {
        Ok(s) => {
            for n in storm_sizes(s) {
                for v in storm::ours() {
                    let broker = if v.retry_after {
                        "503 with Retry-After"
                    } else {
                        "bare 503"
                    };
                    let (ok, ours, base) = storm_target(s, n, v.key);
                    rows.push(vec![
                        {
                            let l = limit_for(n, r.options.service_ms);
                            format!(
                                "boot storm N={n} (C={}, {} ms, {broker})",
                                l.max_in_flight, l.service_ms
                            )
                        },
                        ours,
                        base,
                        "-".into(),
                        "<= 1.3x ideal, <= +1.5 req/node, baselines worse".into(),
                        verdict(ok),
                    ]);
                }
            }
        }
        Err(e) => {
            let mut row = vec!["boot storm".into()];
            row.extend(not_measured(e));
            row.extend(["<= 1.3x ideal".into(), verdict(None)]);
            rows.push(row);
        }
    }
}

/// What the nodes of a storm against the real KBS saw other than success (`3 x HTTP 401,
/// ...`), if anything.
fn real_storm_errors(run: &trustee_storm::Run) -> Option<String> {
    (!run.errors.is_empty()).then(|| {
        run.errors
            .iter()
            .map(|(k, n)| format!("{n} x {k}"))
            .collect::<Vec<_>>()
            .join(", ")
    })
}

/// Summary rows of section 6b: the storm against the real Trustee KBS.
fn real_storm_rows_summary(rows: &mut Vec<Vec<String>>, r: &Results) {
    match &r.real_storm {
        Ok(runs) => {
            for run in runs {
                let m = storm_metrics(&run.nodes, run.requests, run.ideal);
                let errors = real_storm_errors(run).unwrap_or_else(|| "no errors".into());
                let ok = m
                    .ratio
                    .map(|x| x <= 1.3 && m.extra_requests_per_node <= 1.5);
                rows.push(vec![
                    format!(
                        "boot storm vs the real Trustee KBS, N={} ({:.1} ms CPU/session, {} workers)",
                        m.nodes, run.cpu_ms, run.workers
                    ),
                    format!(
                        "{}/{} unlocked, {}, +{:.2} req/node, {errors}{}",
                        m.unlocked,
                        m.nodes,
                        m.ratio
                            .map_or("never all".into(), |x| format!("{x:.2}x ideal")),
                        m.extra_requests_per_node,
                        floor_ratio(run, m.last)
                            .map_or(String::new(), |x| format!("; {x:.2}x this machine's CPU floor")),
                    ),
                    "-".into(),
                    "-".into(),
                    "<= 1.3x ideal, <= +1.5 req/node".into(),
                    verdict(ok),
                ]);
            }
        }
        Err(e) => {
            let mut row = vec!["boot storm vs the real Trustee KBS".into()];
            row.extend(not_measured(e));
            row.extend(["<= 1.3x ideal".into(), verdict(None)]);
            rows.push(row);
        }
    }
}

fn first_words(e: &str) -> String {
    let one = e.lines().next().unwrap_or("").trim();
    if one.chars().count() > 100 {
        format!("{}...", one.chars().take(100).collect::<String>())
    } else {
        one.to_owned()
    }
}

fn storm_rows(r: &Results) -> Vec<Vec<String>> {
    let Ok(s) = &r.storm else {
        return Vec::new();
    };
    let mut rows = Vec::new();
    for n in storm_sizes(s) {
        for (v, ms, ideals) in storm_groups(s, n) {
            let runs: Vec<&storm::Run> = s
                .runs
                .iter()
                .filter(|x| x.variant.key == v.key && x.nodes.len() == n)
                .collect();
            let Some(limit) = runs.first().map(|x| x.limit) else {
                continue;
            };
            let last: Vec<f64> = ms.iter().filter_map(|m| m.last).collect();
            let ratios: Vec<f64> = ms.iter().filter_map(|m| m.ratio).collect();
            let median_done: Vec<f64> = ms.iter().filter_map(|m| m.median).collect();
            rows.push(vec![
                n.to_string(),
                format!(
                    "{} / {} ms (slot {})",
                    limit.max_in_flight,
                    limit.service_ms,
                    show(&runs.iter().map(|x| x.mean_hold_ms).collect::<Vec<_>>(), 0)
                ),
                v.label.to_owned(),
                ms.iter()
                    .map(|m| format!("{}/{}", m.unlocked, m.nodes))
                    .collect::<Vec<_>>()
                    .join(", "),
                show(&median_done, 1),
                show(&last, 1),
                show(&ideals, 1),
                if ratios.len() == ms.len() {
                    show(&ratios, 2)
                } else {
                    "never all".into()
                },
                show(
                    &ms.iter().map(|m| m.sessions_per_node).collect::<Vec<_>>(),
                    2,
                ),
                show(
                    &ms.iter().map(|m| m.requests_per_node).collect::<Vec<_>>(),
                    2,
                ),
                show(
                    &runs
                        .iter()
                        .map(|x| x.stats.attest_rejected as f64)
                        .collect::<Vec<_>>(),
                    0,
                ),
            ]);
        }
    }
    rows
}

const STORM_HEAD: [&str; 11] = [
    "N",
    "C / service (mean slot, ms)",
    "policy",
    "unlocked (per run)",
    "median node, s",
    "all unlocked at, s",
    "ideal, s",
    "/ ideal",
    "attempts/node",
    "HTTP requests/node",
    "503s",
];

fn storm_lines(r: &Results) -> Vec<String> {
    let rows = storm_rows(r);
    if rows.is_empty() {
        return Vec::new();
    }
    vec![
        String::new(),
        "boot storm (medians over runs, min-max in parentheses):".to_owned(),
        stats::text_table(&STORM_HEAD, &rows),
    ]
}

fn step_medians(t: &TimeToKey) -> Vec<(String, f64)> {
    let mut names: Vec<String> = Vec::new();
    for run in &t.steps {
        for (k, _) in run {
            if k != "total" && !names.contains(k) {
                names.push(k.clone());
            }
        }
    }
    names
        .into_iter()
        .map(|k| {
            let v: Vec<f64> = t
                .steps
                .iter()
                .filter_map(|run| run.iter().find(|(n, _)| *n == k).map(|(_, v)| *v))
                .collect();
            let m = med(&v).unwrap_or(0.0);
            (k, m)
        })
        .collect()
}

fn figure(r: &Results) -> String {
    let breakdown = r.ttk.as_ref().ok().map(|t| plot::Breakdown {
        steps: step_medians(t),
        ours_wall: med(&t.ours_wall).unwrap_or(0.0),
        ours_key: med(&t.ours_key).unwrap_or(0.0),
        baseline_label: "clevis decrypt (tang)".into(),
        baseline_wall: med(&t.clevis).unwrap_or(0.0),
    });
    let mut panels = Vec::new();
    if let Ok(s) = &r.storm {
        for n in storm_sizes(s) {
            let mut curves = Vec::new();
            let mut ideal = 0.0;
            for (v, color, dashed) in [
                ("ours", "#1f77b4", false),
                ("ours-no-hint", "#2ca02c", false),
                ("fixed-1s-x5", "#d62728", false),
                ("fixed-5s-x3", "#ff7f0e", false),
            ] {
                // The run with the median finish time of this variant (the first run if odd
                // counts make it ambiguous).
                let mut runs: Vec<&storm::Run> = s
                    .runs
                    .iter()
                    .filter(|x| x.variant.key == v && x.nodes.len() == n)
                    .collect();
                runs.sort_by(|a, b| {
                    let key = |x: &storm::Run| metrics(x).last.unwrap_or(f64::INFINITY);
                    key(a).total_cmp(&key(b))
                });
                if let Some(run) = runs.get(runs.len().saturating_sub(1) / 2) {
                    ideal = if v == "ours" { run.ideal } else { ideal };
                    let m = metrics(run);
                    let label = match m.last {
                        Some(last) if m.unlocked == m.nodes => {
                            format!("{}: all by {last:.1} s", run.variant.label)
                        }
                        _ => format!(
                            "{}: {}/{} unlocked, the rest gave up",
                            run.variant.label, m.unlocked, m.nodes
                        ),
                    };
                    curves.push(plot::Curve {
                        label,
                        color,
                        points: stats::completion_curve(&run.nodes),
                        dashed,
                        steps: true,
                    });
                }
            }
            curves.push(plot::Curve {
                label: format!("ideal: N x (service + idle attestation) / C = {ideal:.1} s"),
                color: "#555",
                points: vec![(0.0, 0.0), (ideal, 1.0)],
                dashed: true,
                steps: false,
            });
            panels.push(plot::StormPanel {
                title: {
                    let l = limit_for(n, r.options.service_ms);
                    format!(
                        "Boot storm: {n} nodes, C = {}, service {} ms",
                        l.max_in_flight, l.service_ms
                    )
                },
                curves,
            });
        }
    }
    plot::svg(breakdown.as_ref(), &panels)
}

fn markdown(r: &Results, head: &[&str], rows: &[Vec<String>]) -> String {
    let mut s = String::new();
    intro_section(&mut s, r, head, rows);
    machine_section(&mut s, r);
    time_to_key_section(&mut s, r);
    ak_section(&mut s, r);
    keyslot_section(&mut s, r);
    size_section(&mut s, r);
    memory_section(&mut s, r);
    boot_section(&mut s, r);
    storm_section(&mut s, r);
    real_storm_section(&mut s, r);
    reproduce_section(&mut s);
    s
}

/// The title, the summary table and the targets.
fn intro_section(s: &mut String, r: &Results, head: &[&str], rows: &[Vec<String>]) {
    let _ = writeln!(s, "# Benchmarks\n");
    let _ = writeln!(
        s,
        "Written by `cargo xtask bench` (issue 7): attest-unlock against clevis/tang and against its \
         own baselines, on one machine, in one run. Timings on shared machines are noisy: every \
         figure is a **median (min-max)** over the runs, A/B runs are interleaved, and a target that \
         was missed is reported as missed. Regenerate with `cargo xtask bench` (about {} minutes \
         here, most of it the QEMU boots).\n",
        r.elapsed.as_secs().div_ceil(60)
    );
    let _ = writeln!(
        s,
        "![time-to-key breakdown and boot-storm completion](benchmarks.svg)\n"
    );
    let _ = writeln!(s, "## Summary and targets\n");
    s.push_str(&stats::markdown_table(head, rows));
    let _ = writeln!(s);
}

/// The machine the run was on.
fn machine_section(s: &mut String, r: &Results) {
    let m = &r.machine;
    let o = &r.options;
    let _ = writeln!(s, "## Machine\n");
    let _ = writeln!(
        s,
        "- {} CPUs (`nproc`), {}\n- memory (`free -h`): {}\n- kernel {}, {}\n- load average {} at the start, {} at the end (other jobs shared the machine)",
        m.nproc, m.cpu, m.memory, m.kernel, m.os, m.load_start, m.load_end
    );
    for (k, v) in &m.versions {
        let _ = writeln!(s, "- {k}: {v}");
    }
    let _ = writeln!(
        s,
        "- runs: {} time-to-key and {} memory runs per side, {} keyslot runs per case, {} boots per kind, {} storm runs per policy and size\n",
        o.runs,
        o.runs.min(5),
        o.keyslot_runs,
        o.boots,
        o.storm_runs
    );

    // 1
}

/// Section 1: time to key.
fn time_to_key_section(s: &mut String, r: &Results) {
    let _ = writeln!(s, "## 1. Time to key\n");
    match &r.ttk {
        Ok(t) => {
            let _ = writeln!(
                s,
                "Ours: `attest-unlock unlock --verify-only --kernel-cmdline /dev/null --config unlock.toml` \
                 (release build; a swtpm on 127.0.0.1 over TCP; the test broker `target/release/test-kbs` in \
                 its own process: TLS, RCAR auth, TPM quote bound to the nonce and an ephemeral P-256 key, \
                 attestation, JWE resource, post-release PCR extend, then `cryptsetup open --test-passphrase \
                 --key-slot 1` of the LUKS2 image). Time to key = the process's wall clock minus its `unlock` \
                 step (the keyslot check), so both sides end with the key in memory.\n\n\
                 Baseline: `clevis decrypt < key.jwe` of a {}-byte JWE made by `clevis encrypt tang \
                 '{{\"url\":\"{}\"}}' -y`, tang served by `socat TCP-LISTEN:PORT,bind=127.0.0.1,fork,reuseaddr \
                 EXEC:\"/usr/libexec/tangd DB\"` (one tangd per connection, as `tangd.socket` does; keys by \
                 `tangd-keygen`). Tang does no attestation at all: this is the bar for network-bound disk-key \
                 release. One untimed warm-up each; then {} runs each, alternating which goes first.\n",
                t.jwe_bytes, t.tang_url, t.ours_wall.len()
            );
            let mut steps: Vec<Vec<String>> = step_medians(t)
                .into_iter()
                .map(|(k, _)| {
                    let v: Vec<f64> = t
                        .steps
                        .iter()
                        .filter_map(|run| run.iter().find(|(n, _)| *n == k).map(|(_, v)| *v))
                        .collect();
                    vec![k, show(&v, 1)]
                })
                .collect();
            let totals: Vec<f64> = t
                .steps
                .iter()
                .filter_map(|run| run.iter().find(|(n, _)| n == "total").map(|(_, v)| *v))
                .collect();
            steps.push(vec!["total (in-process)".into(), show(&totals, 1)]);
            steps.push(vec!["process wall clock".into(), show(&t.ours_wall, 1)]);
            steps.push(vec![
                "wall minus unlock (time to key)".into(),
                show(&t.ours_key, 1),
            ]);
            steps.push(vec![
                "clevis decrypt + tang, wall".into(),
                show(&t.clevis, 1),
            ]);
            let _ = writeln!(s, "Our steps from the verdict line (ms):\n");
            s.push_str(&stats::markdown_table(
                &["step", "median (min-max), ms"],
                &steps,
            ));
            let _ = writeln!(s);
        }
        Err(e) => {
            let _ = writeln!(s, "Not measured: {e}\n");
        }
    }

    // 2
}

/// Section 1b: the AK's cost in the evidence step.
fn ak_section(s: &mut String, r: &Results) {
    let _ = writeln!(
        s,
        "## 1b. The attestation key: created on every boot vs kept\n"
    );
    match &r.ak {
        Ok(a) => {
            let _ = writeln!(
                s,
                "The evidence step of the same `unlock --verify-only` (from its verdict line), with the derived \
                 AK created by `CreatePrimary` on every run (`--set tpm.ak_cache_handle=0`: what every boot paid \
                 before the AK was kept) and loaded from its persistent handle 0x81010020 (the default; one \
                 untimed run first creates it). On the swtpm, and through a TCTI proxy in the bench that holds \
                 each `CreatePrimary` response back by {} ms: a discrete TPM's RSA-2048 key generation takes \
                 seconds (it varies by chip and by the primes drawn), which swtpm does not show. The proxy \
                 adds nothing to other commands beyond its own forwarding.\n",
                akcost::SLOW_CREATE_PRIMARY_MS
            );
            s.push_str(&stats::markdown_table(
                &["TPM", "AK created each boot, ms", "AK kept, ms"],
                &[
                    vec![
                        "swtpm".into(),
                        show(&a.created_swtpm, 1),
                        show(&a.cached_swtpm, 1),
                    ],
                    vec![
                        format!(
                            "swtpm, CreatePrimary +{} ms",
                            akcost::SLOW_CREATE_PRIMARY_MS
                        ),
                        show(&a.created_slow, 1),
                        show(&a.cached_slow, 1),
                    ],
                ],
            ));
            let _ = writeln!(s);
        }
        Err(e) => {
            let _ = writeln!(s, "Not measured: {e}\n");
        }
    }
}

/// Section 2: keyslot open.
fn keyslot_section(s: &mut String, r: &Results) {
    let _ = writeln!(s, "## 2. Keyslot open\n");
    match &r.keyslot {
        Ok(k) => {
            let _ = writeln!(
                s,
                "`cryptsetup open --test-passphrase [--key-slot N] --key-file=- root.img` with the \
                 passphrase on stdin (wall clock of the whole cryptsetup process), on a 32 MiB LUKS2 image: \
                 slot 0 made by a default `luksFormat` ({}), slot 1 by `luksAddKey --pbkdf pbkdf2 \
                 --pbkdf-force-iterations 1000` (what the pin's `clevis luks bind` makes and what the agent \
                 opens with `--key-slot`). {} runs each, interleaved.\n\n\
                 Whatever the slot, cryptsetup then checks the recovered volume key against the volume's \
                 digest: PBKDF2-SHA256 with an iteration count that `luksFormat` benchmarks once for the \
                 whole volume ({} here). That check, not our slot's 1000 iterations, is most of the time; \
                 the second volume is the same but formatted with `--pbkdf pbkdf2 --pbkdf-force-iterations \
                 1000` (digest {} iterations, as the demo and e2e images are), to show the slot's own cost.\n",
                k.argon2,
                k.pbkdf2_named.len(),
                k.digest_iterations.0,
                k.digest_iterations.1
            );
            s.push_str(&stats::markdown_table(
                &["case", "median (min-max), ms"],
                &[
                    vec![
                        "our key, `--key-slot 1` (PBKDF2-1000)".into(),
                        show(&k.pbkdf2_named, 1),
                    ],
                    vec![
                        "recovery passphrase, `--key-slot 0` (argon2id)".into(),
                        show(&k.argon2_named, 0),
                    ],
                    vec![
                        "our key, no `--key-slot` (argon2id slot tried first)".into(),
                        show(&k.ours_unnamed, 0),
                    ],
                ],
            ));
            let _ = writeln!(
                s,
                "\nNot naming the slot costs one argon2id derivation (the slot-0 trial) before slot 1 \
                 is tried: the reason the agent and the token always name the keyslot.\n"
            );
        }
        Err(e) => {
            let _ = writeln!(s, "Not measured: {e}\n");
        }
    }

    // 3
}

/// Section 3: size.
fn size_section(s: &mut String, r: &Results) {
    let _ = writeln!(s, "## 3. Size\n");
    match &r.binary {
        Ok(b) => {
            let _ = writeln!(
                s,
                "`target/release/attest-unlock` (profile `release`: opt-level {}, LTO, one codegen unit, \
                 panic=abort, strip): **{} ({} bytes)**{}. Shared libraries (`ldd`; sizes of the files \
                 the links resolve to):\n",
                b.opt_level,
                bytes(b.bytes),
                b.bytes,
                match b.stripped {
                    Some(true) => ", stripped",
                    Some(false) => ", NOT stripped",
                    None => "",
                }
            );
            let mut rows: Vec<Vec<String>> = b
                .libs
                .iter()
                .map(|(n, p, sz)| vec![format!("`{n}`"), format!("`{p}`"), bytes(*sz)])
                .collect();
            rows.push(vec![
                "total".into(),
                String::new(),
                bytes(b.libs.iter().map(|l| l.2).sum()),
            ]);
            s.push_str(&stats::markdown_table(&["library", "file", "bytes"], &rows));
            let _ = writeln!(s);
        }
        Err(e) => {
            let _ = writeln!(s, "Binary not measured: {e}\n");
        }
    }
    match &r.initramfs {
        Ok(i) => {
            let _ = writeln!(
                s,
                "Initramfs: three images from the same dracut (a copy of `/usr/lib/dracut` holding our \
                 `90attest-unlock` and Debian's `clevis-dracut` modules), no kernel modules, no host \
                 configuration, uncompressed, then each compressed with `zstd -19`:\n\n    {}\n\n\
                 The base set is the e2e initramfs's without ours. What a module adds is the image's size \
                 minus the base image's.\n",
                i.command
            );
            let rows: Vec<Vec<String>> = [&i.base, &i.ours, &i.clevis]
                .iter()
                .map(|img| {
                    vec![
                        img.name.to_owned(),
                        img.files.len().to_string(),
                        bytes(img.raw),
                        bytes(img.zstd),
                        if img.name == "base" {
                            "-".into()
                        } else {
                            format!(
                                "+{} files, +{} (+{} zstd)",
                                measure::added(&i.base, img).len(),
                                bytes(img.raw.saturating_sub(i.base.raw)),
                                bytes(img.zstd.saturating_sub(i.base.zstd))
                            )
                        },
                    ]
                })
                .collect();
            s.push_str(&stats::markdown_table(
                &[
                    "image",
                    "entries",
                    "uncompressed",
                    "zstd -19",
                    "added to base",
                ],
                &rows,
            ));
            for img in [&i.ours, &i.clevis] {
                let add = measure::added(&i.base, img);
                let top: Vec<String> = add
                    .iter()
                    .filter(|(_, sz)| *sz > 0)
                    .take(8)
                    .map(|(n, sz)| format!("`{n}` {}", bytes(*sz)))
                    .collect();
                let _ = writeln!(
                    s,
                    "\nLargest files `{}` adds ({} entries in all): {}.",
                    img.name,
                    add.len(),
                    top.join(", ")
                );
            }
            let _ = writeln!(s);
        }
        Err(e) => {
            let _ = writeln!(s, "Initramfs not measured: {e}\n");
        }
    }

    // 4
}

/// Section 4: memory.
fn memory_section(s: &mut String, r: &Results) {
    let _ = writeln!(s, "## 4. Memory\n");
    match &r.memory {
        Ok(mem) => {
            let mib = |v: &[f64]| v.iter().map(|k| k / 1024.0).collect::<Vec<f64>>();
            let _ = writeln!(
                s,
                "Peak RSS by GNU time (`/usr/bin/time -f %M`, the kernel's `ru_maxrss`: the largest single \
                 process of the tree, not a sum). The agent alone is measured on a secrets-only `unlock` (no \
                 disk, so no cryptsetup child); the full `unlock --verify-only` reports the larger of the \
                 agent and cryptsetup.\n"
            );
            s.push_str(&stats::markdown_table(
                &["run", "peak RSS, MiB"],
                &[
                    vec![
                        "attest-unlock unlock (secrets only: the agent)".into(),
                        show(&mib(&mem.agent_kib), 1),
                    ],
                    vec![
                        "attest-unlock unlock --verify-only (with cryptsetup)".into(),
                        show(&mib(&mem.unlock_kib), 1),
                    ],
                    vec![
                        "clevis decrypt (bash, jose, curl)".into(),
                        show(&mib(&mem.clevis_kib), 1),
                    ],
                ],
            ));
            let _ = writeln!(s);
        }
        Err(e) => {
            let _ = writeln!(s, "Not measured: {e}\n");
        }
    }

    // 5
}

/// Section 5: boot.
fn boot_section(s: &mut String, r: &Results) {
    let o = &r.options;
    let _ = writeln!(s, "## 5. Boot\n");
    match &r.boot {
        Ok(b) => {
            let _ = writeln!(
                s,
                "`cargo xtask e2e --measure {}`: QEMU (TCG, no KVM) boots of the real dracut initramfs to \
                 the real root, seconds from QEMU start to the root's marker line: attested (OVMF, vTPM, \
                 the broker on the host) vs the same image opened by systemd-cryptsetup with a key file \
                 in the initramfs (`rd.attest_unlock.disable`).\n",
                o.boots
            );
            if let (Some(a), Some(k)) = (summarize(&b.attested), summarize(&b.baseline)) {
                let overlap = a.min <= k.max && k.min <= a.max;
                let _ = writeln!(
                    s,
                    "Attestation's overhead: {:+.1}% of the key-file boot (medians){}\n",
                    (a.median - k.median) / k.median * 100.0,
                    if overlap {
                        "; the two ranges overlap, so at this number of boots under TCG the \
                         difference is within the noise"
                    } else {
                        ""
                    }
                );
            }
            s.push_str(&stats::markdown_table(
                &["boot", "runs, s", "median (min-max), s"],
                &[
                    vec![
                        "attested".into(),
                        b.attested
                            .iter()
                            .map(|v| format!("{v:.1}"))
                            .collect::<Vec<_>>()
                            .join(", "),
                        show(&b.attested, 1),
                    ],
                    vec![
                        "key file".into(),
                        b.baseline
                            .iter()
                            .map(|v| format!("{v:.1}"))
                            .collect::<Vec<_>>()
                            .join(", "),
                        show(&b.baseline, 1),
                    ],
                ],
            ));
            let _ = writeln!(s);
        }
        Err(e) => {
            let _ = writeln!(s, "Not measured yet: {e}\n");
        }
    }

    // 6
}

/// Section 6: boot storm.
fn storm_section(s: &mut String, r: &Results) {
    let _ = writeln!(s, "## 6. Boot storm\n");
    match &r.storm {
        Ok(st) => {
            let _ = writeln!(
                s,
                "N simulated nodes (threads of the bench, started together by a barrier) against one \
                 in-process test broker on 127.0.0.1 that admits at most C attestations at once and \
                 answers any other `POST /kbs/v0/attest` with 503 at once (the `admission` knob of \
                 `tests/kbs`, test-only); an admitted attestation holds its slot for a fixed service time \
                 plus the real verification. Each node runs the agent's real code, \
                 `attest_unlock::flow::release` (rustls client, KBS session, retry loop) with an evidence \
                 source of simulated SEV-SNP hardware (`test_kbs::sim`; the broker verifies the report \
                 signature, the VCEK chain and the binding for real), so the broker is the bottleneck. \
                 One node alone against an idle broker takes {:.1} ms per session here, {:.1} ms of it \
                 the broker's attestation (the slot time without a service time).\n\n\
                 - **ours** (`release` with the default `[retry]`): a refused node keeps its session and \
                 resends the same attestation in it at its next try (one request, no new auth or \
                 evidence: the nonce and its key are unchanged), and waits as the broker asks with \
                 `Retry-After`: the whole seconds it says, plus up to one second of jitter, capped at \
                 30 s. Without it, exponential backoff from 250 ms, full jitter, 30 s cap, no round \
                 limit. One connection is reused across tries. Two brokers: **with Retry-After**, the \
                 admission knob's calendar books each refusal the next free share of capacity (the \
                 shortest slot so far / C: the broker's best case, as a mean would carry the slow \
                 first seconds of a storm into every booking) and tells it the whole seconds until \
                 then (what a load shedder that knows its capacity can say); a node refused again is \
                 booked anew at the end; **bare 503**, no hint at all (the broker of the baselines);\n\
                 - **fixed 1 s x 5 tries** and **fixed 5 s x 3 rounds**: what the anchors do, as loops in \
                 the bench around single-attempt sessions (`retry.max_rounds = 1`, a new connection each \
                 try); a node that used up its tries gives up (at boot: the emergency shell).\n\n\
                 *Ideal* = N x (service time + the idle broker's {:.1} ms) / C: the broker busy from the \
                 first instant to the last with no wasted attempt. The *mean slot* column is what an \
                 admitted attestation actually held its slot in the run: more than the idle figure, \
                 because the simulated nodes share this machine's {} CPUs with the broker (their TLS \
                 handshakes and P-384 signatures, retries included, slow its verification) - a cost real \
                 nodes would not put on a real broker's CPU, counted here against every policy. *HTTP \
                 requests/node* counts every request the broker saw (auth, attest, 503s, resource); a \
                 clean session is 3, so the target's \"extra requests\" is requests/node - 3. Nodes \
                 of every policy are the same threads, the same client and the same broker; only the \
                 retry policy (and the broker's hint) differs.\n",
                st.alone_ms,
                st.idle_hold_ms,
                st.idle_hold_ms,
                r.machine.nproc
            );
            s.push_str(&stats::markdown_table(&STORM_HEAD, &storm_rows(r)));
            let _ = writeln!(s);
            storm_limits(s, st, r);
        }
        Err(e) => {
            let _ = writeln!(s, "Not measured: {e}\n");
        }
    }
}

/// What bounds the storm figures whatever the client does, from the run's own numbers.
fn storm_limits(s: &mut String, st: &Storm, r: &Results) {
    let _ = writeln!(
        s,
        "What no retry policy changes, per size: the first wave (all N at once, C admitted) costs \
         every refused node one request before any policy acts; with a bare 503 a node learns \
         nothing of N, so the wait that spreads 100 nodes (ideal a few seconds) is far too short \
         for 1,000 (tens of seconds) and the other way round; `Retry-After` has whole seconds, \
         coarse beside a short storm's ideal.\n"
    );
    for n in storm_sizes(st) {
        let l = limit_for(n, r.options.service_ms);
        let ideal = storm::ideal(n, l, st.idle_hold_ms);
        let _ = writeln!(
            s,
            "- N={n}: the first wave alone is +{:.2} requests/node ({} of {n} refused); one \
             second of Retry-After resolution is {:.0}% of the ideal {ideal:.1} s.",
            n.saturating_sub(l.max_in_flight) as f64 / n as f64,
            n.saturating_sub(l.max_in_flight),
            100.0 / ideal
        );
    }
    let _ = writeln!(s);
}

/// The time to the last release over the storm's CPU floor on this machine.
fn floor_ratio(run: &trustee_storm::Run, last: Option<f64>) -> Option<f64> {
    last.filter(|_| run.cpu_floor > 0.0)
        .map(|l| l / run.cpu_floor)
}

/// Section 6b: the storm against the real Trustee KBS.
fn real_storm_section(s: &mut String, r: &Results) {
    let _ = writeln!(s, "## 6b. Boot storm against the real Trustee KBS\n");
    match &r.real_storm {
        Ok(runs) => {
            let _ = writeln!(
                s,
                "The same N threads, each running `attest_unlock::flow::release` with the default \
                 `[retry]`, against the real Trustee KBS 78962cd (`../shared/tools/`, started by \
                 `test_kbs::trustee` with the config its PROVENANCE.md records) on 127.0.0.1. \
                 Their evidence is Trustee's `sample` TEE, which its KBS always builds: its verifier \
                 checks that the report data is the binding of the nonce and the node's key. The real \
                 KBS does not verify simulated SNP (the chain must reach AMD's roots), and one swtpm \
                 would serialise every quote, so the broker, not the nodes' hardware, is measured. \
                 Trustee does not answer 503: its actix workers (one per core) queue the requests. \
                 *Ideal* = N x the KBS's own cost of a session / its workers, that cost being the KBS \
                 process's CPU time per session (all threads, `/proc/PID/stat`; one node alone, 100 \
                 sessions): its TLS handshake, HTTP, JSON, the verifier and the JWE. The time its \
                 access log gives a session's three requests is shown beside it: it leaves out the TLS \
                 handshake and the reading of each request, so it understates the KBS's cost. The nodes \
                 share this machine's {} CPUs with the KBS (their TLS handshakes, P-256 keys, JWE: \
                 *nodes' CPU ms/session*, this process's CPU time in the storm per session), which the \
                 ratio counts against them. *CPU floor* is the KBS's and the nodes' CPU time in the \
                 storm over the cores: the least time this machine could take for that work, which no \
                 retry policy shortens; *last / floor* near 1 says the storm was bound by this \
                 machine's CPUs, not by waiting (with no extra request made, nothing was waited on). \
                 *Cores busy* is the same CPU time over (cores x the window it is read over, from \
                 spawning the node threads to the last one ending). *Errors* are the KBS's non-200 \
                 answers and the nodes' final failures.\n",
                r.machine.nproc
            );
            let rows: Vec<Vec<String>> = runs
                .iter()
                .map(|run| {
                    let m = storm_metrics(&run.nodes, run.requests, run.ideal);
                    let errors = real_storm_errors(run).unwrap_or_else(|| "none".into());
                    vec![
                        m.nodes.to_string(),
                        format!("{}/{}", m.unlocked, m.nodes),
                        format!("{:.1}", run.cpu_ms),
                        format!("{:.1}", run.service_ms),
                        format!("{:.1}", run.storm_cpu_ms),
                        format!("{:.1}", run.node_cpu_ms),
                        format!("{:.0}%", run.cpu_busy() * 100.0),
                        format!("{:.2}", run.ideal),
                        format!("{:.2}", run.cpu_floor),
                        m.last.map_or("-".into(), |l| format!("{l:.2}")),
                        m.ratio.map_or("never all".into(), |x| format!("{x:.2}x")),
                        floor_ratio(run, m.last).map_or("-".into(), |x| format!("{x:.2}x")),
                        format!("{:.2}", m.requests_per_node),
                        errors,
                    ]
                })
                .collect();
            s.push_str(&stats::markdown_table(
                &[
                    "N",
                    "unlocked",
                    "KBS CPU ms/session",
                    "KBS access-log ms/session",
                    "KBS CPU ms/session in the storm",
                    "nodes' CPU ms/session",
                    "cores busy",
                    "ideal, s",
                    "CPU floor, s",
                    "last, s",
                    "last / ideal",
                    "last / floor",
                    "HTTP requests/node",
                    "errors",
                ],
                &rows,
            ));
            let _ = writeln!(s);
        }
        Err(e) => {
            let _ = writeln!(s, "Not measured: {e}\n");
        }
    }
}

/// How to reproduce.
fn reproduce_section(s: &mut String) {
    let _ = writeln!(s, "## How to reproduce\n");
    let _ = writeln!(
        s,
        "As root on Debian 12 with a Rust toolchain: `cargo xtask bench` (installs tang, socat, time, \
         clevis-dracut, clevis-tpm2, zstd, cpio, file on top of `cargo xtask setup`'s packages, builds \
         the shipped release binary and an optimized bench runner in `target/bench/build`). Options: \
         `--runs N`, `--keyslot-runs N`, `--boots N` (0 skips the QEMU boots), `--storm-runs N`, \
         `--storm-nodes 100,1000`, `--service-ms MS`, `--quick`, `--no-write`, `--storm-only` \
         (section 6 alone, written nowhere), `--real-storm-only` (section 6b alone, written nowhere). Work files (configs, \
         images, logs) stay in `target/bench/run/`."
    );
}
