//! `test-kbs`: the test broker as a program, for the demo.
//!
//! ```text
//! test-kbs [--trusted-ak FILE]... [--resource PATH=FILE]... [--pcr N=HEX]...
//!          [--ca-out FILE] [--port N] [--allow-warning]
//! ```
//!
//! It prints `test-kbs listening on https://127.0.0.1:PORT` once it accepts connections, logs
//! every decision to stderr and serves until it is killed.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context};
use test_kbs::{Broker, BrokerConfig};

const USAGE: &str = "usage: test-kbs [--trusted-ak FILE]... [--resource PATH=FILE]... \
[--pcr N=HEX]... [--ca-out FILE] [--port N] [--allow-warning]";

/// Writes the broker's decision lines to stderr.
struct StderrLogger;

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::Level::Info
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            let _ = writeln!(std::io::stderr(), "test-kbs: {}", record.args());
        }
    }

    fn flush(&self) {}
}

static LOGGER: StderrLogger = StderrLogger;

/// What the command line asked for.
struct Options {
    config: BrokerConfig,
    ca_out: Option<PathBuf>,
    port: u16,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> anyhow::Result<Options> {
    let mut options = Options {
        config: BrokerConfig::default(),
        ca_out: None,
        port: 0,
    };
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| anyhow!("{name} needs a value"));
        match arg.as_str() {
            "--trusted-ak" => {
                let file = value("--trusted-ak")?;
                let ak = std::fs::read_to_string(&file)
                    .with_context(|| format!("read trusted AK file {file}"))?;
                options.config.trusted_aks.push(ak.trim().to_string());
            }
            "--resource" => {
                let spec = value("--resource")?;
                let (path, file) = spec
                    .split_once('=')
                    .ok_or_else(|| anyhow!("--resource takes PATH=FILE, got {spec:?}"))?;
                let bytes =
                    std::fs::read(file).with_context(|| format!("read resource file {file}"))?;
                options.config.resources.insert(path.to_string(), bytes);
            }
            "--pcr" => {
                let spec = value("--pcr")?;
                let (index, hex) = spec
                    .split_once('=')
                    .ok_or_else(|| anyhow!("--pcr takes N=HEX, got {spec:?}"))?;
                let index: u8 = index
                    .parse()
                    .with_context(|| format!("PCR index {index:?}"))?;
                options
                    .config
                    .expected_pcrs
                    .insert(index, hex.to_ascii_lowercase());
            }
            "--ca-out" => options.ca_out = Some(PathBuf::from(value("--ca-out")?)),
            "--port" => {
                let port = value("--port")?;
                options.port = port.parse().with_context(|| format!("port {port:?}"))?;
            }
            "--allow-warning" => options.config.require_affirming = false,
            "--help" | "-h" => bail!("{USAGE}"),
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    Ok(options)
}

fn run() -> anyhow::Result<()> {
    let options = parse_args(std::env::args().skip(1))?;
    let broker = Broker::start_on_port(options.config, options.port)?;
    if let Some(path) = &options.ca_out {
        std::fs::write(path, broker.ca_pem())
            .with_context(|| format!("write CA certificate to {}", path.display()))?;
    }
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "test-kbs listening on {}", broker.url()).context("write to stdout")?;
    stdout.flush().context("flush stdout")?;
    drop(stdout);
    // The broker serves on its own threads; this one only keeps the process (and the broker)
    // alive until a signal ends it.
    loop {
        std::thread::park();
    }
}

fn main() {
    // Only fails if a logger is already set, which cannot happen this early.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(log::LevelFilter::Info);
    if let Err(error) = run() {
        let mut stderr = std::io::stderr().lock();
        let _ = writeln!(stderr, "error: {error}");
        for cause in error.chain().skip(1) {
            let _ = writeln!(stderr, "caused by: {cause}");
        }
        std::process::exit(1);
    }
}
