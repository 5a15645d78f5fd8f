//! The `attest-unlock` binary: logging, arguments, run, error chain, exit code.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Mutex;

use attest_unlock::cli::{self, Cli, Outcome};
use clap::Parser;

/// Writes log records to stderr and, in the initramfs, to the kernel log so they reach the
/// console and the journal even before journald runs.
struct Logger {
    level: log::LevelFilter,
    kmsg: Option<Mutex<std::fs::File>>,
}

impl log::Log for Logger {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        // Libraries (tss-esapi logs every context close at info) speak only when it matters,
        // unless -vv asks for everything.
        let ours = m.target().starts_with("attest_unlock");
        let level = if ours || self.level >= log::LevelFilter::Trace {
            self.level
        } else {
            self.level.min(log::LevelFilter::Warn)
        };
        m.level() <= level
    }

    fn log(&self, r: &log::Record<'_>) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let line = match r.level() {
            log::Level::Info => format!("attest-unlock: {}", r.args()),
            l => format!("attest-unlock: {}: {}", l.as_str().to_lowercase(), r.args()),
        };
        let _ = writeln!(std::io::stderr(), "{line}");
        if let Some(kmsg) = &self.kmsg {
            // kmsg priorities: 3 err, 4 warning, 6 info, 7 debug.
            let prio = match r.level() {
                log::Level::Error => 3,
                log::Level::Warn => 4,
                log::Level::Info => 6,
                _ => 7,
            };
            if let Ok(mut f) = kmsg.lock() {
                let _ = writeln!(f, "<{prio}>{line}");
            }
        }
    }

    fn flush(&self) {}
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => log::LevelFilter::Info,
        1 => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    };
    // Only in the initramfs: on a running system the journal already captures stderr.
    let kmsg = std::path::Path::new("/etc/initrd-release")
        .exists()
        .then(|| {
            std::fs::OpenOptions::new()
                .write(true)
                .open("/dev/kmsg")
                .ok()
        })
        .flatten()
        .map(Mutex::new);
    let _ = log::set_boxed_logger(Box::new(Logger { level, kmsg }));
    log::set_max_level(level);

    let mut stdout = std::io::stdout().lock();
    match cli::run(&cli, &mut stdout) {
        Ok(Outcome::Success) => ExitCode::SUCCESS,
        Ok(Outcome::Failed) => ExitCode::from(1),
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "attest-unlock: error: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                let _ = writeln!(std::io::stderr(), "  caused by: {s}");
                source = s.source();
            }
            let _ = writeln!(
                std::io::stderr(),
                "attest-unlock: verdict=failed class={} reason=\"{}\"",
                e.class(),
                attest_unlock::error::chain(&e)
            );
            ExitCode::from(if e.class() == attest_unlock::ErrorClass::Config {
                2
            } else {
                1
            })
        }
    }
}
