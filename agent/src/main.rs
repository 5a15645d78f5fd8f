//! The `attest-unlock` binary: logging, arguments, run, error chain, exit code.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Mutex;

use attest_unlock::cli::{self, Cli, Outcome};
use clap::Parser;

/// The longest log line written, in characters.
const MAX_LINE: usize = 4096;

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
        // The level can be raised after start (rd.attest_unlock.verbose), so read it live.
        let max = log::max_level().max(self.level);
        let ours = m.target().starts_with("attest_unlock");
        let level = if ours || max >= log::LevelFilter::Trace {
            max
        } else {
            max.min(log::LevelFilter::Warn)
        };
        m.level() <= level
    }

    fn log(&self, r: &log::Record<'_>) {
        if !self.enabled(r.metadata()) {
            return;
        }
        // Whatever a message carries (a broker's words, a token's URL), the console gets one
        // bounded line without control bytes: no cursor moves, no forged lines.
        let message = attest_unlock::text::console(&r.args().to_string(), MAX_LINE);
        let line = match r.level() {
            log::Level::Info => format!("attest-unlock: {message}"),
            l => format!("attest-unlock: {}: {message}", l.as_str().to_lowercase()),
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
                // One write per record: /dev/kmsg turns every write() into its own record.
                let _ = f.write_all(format!("<{prio}>{line}\n").as_bytes());
            }
        }
    }

    fn flush(&self) {}
}

fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => log::LevelFilter::Info,
        1 => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    };
    // Only in the initramfs, and only when not run by systemd (which already sends stderr to
    // the journal and the console: writing both would print every line twice).
    let under_systemd = std::env::var_os("JOURNAL_STREAM").is_some();
    let kmsg = (std::path::Path::new("/etc/initrd-release").exists() && !under_systemd)
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
}

/// Print the error chain; `verdict`: also the verdict line (the boot's commands, `unlock` and
/// the pin, not the offline tools).
fn report(e: &attest_unlock::Error, verdict: bool) -> ExitCode {
    let message = e.to_string();
    let _ = writeln!(
        std::io::stderr(),
        "attest-unlock: error: {}",
        attest_unlock::text::console(&message, MAX_LINE)
    );
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        // Most of our errors already embed their cause; print only what is new.
        let text = s.to_string();
        if !message.contains(&text) {
            let _ = writeln!(
                std::io::stderr(),
                "  caused by: {}",
                attest_unlock::text::console(&text, MAX_LINE)
            );
        }
        source = s.source();
    }
    if verdict {
        let line = attest_unlock::verdict::failed(&attest_unlock::verdict::Facts::default(), e);
        let _ = writeln!(
            std::io::stderr(),
            "attest-unlock: {}",
            attest_unlock::text::console(&line, MAX_LINE)
        );
    }
    ExitCode::from(if e.class() == attest_unlock::ErrorClass::Config {
        2
    } else {
        1
    })
}

/// clevis runs pins by name: `clevis-encrypt-trustee CONFIG` and `clevis-decrypt-trustee`.
fn pin_mode(argv0: &str) -> Option<ExitCode> {
    let name = std::path::Path::new(argv0).file_name()?.to_str()?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut stdout = std::io::stdout().lock();
    let result = match name {
        "clevis-encrypt-trustee" => {
            init_logging(0);
            match args.first().map(String::as_str) {
                Some("--summary") => {
                    let _ = writeln!(
                        stdout,
                        "Encrypts using a Trustee key broker after attestation (attest-unlock)"
                    );
                    return Some(ExitCode::SUCCESS);
                }
                Some(config) if !config.starts_with('-') => {
                    attest_unlock::pin::encrypt(config, &mut stdout)
                }
                _ => {
                    let _ = writeln!(
                        std::io::stderr(),
                        "Usage: clevis encrypt trustee CONFIG < PLAINTEXT > JWE\n\n\
                         CONFIG: {{\"servers\":[{{\"url\":...,\"cert\":...}}],\"path\":\"repo/type/tag\",\
                         \"initdata\":...,\"num_retries\":N|\"infinity\",\"attestation_key\":...}}"
                    );
                    return Some(ExitCode::from(2));
                }
            }
        }
        "clevis-decrypt-trustee" => {
            init_logging(0);
            attest_unlock::pin::decrypt(&mut stdout)
        }
        _ => return None,
    };
    Some(match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => report(&e, true),
    })
}

fn main() -> ExitCode {
    if let Some(code) = std::env::args().next().as_deref().and_then(pin_mode) {
        return code;
    }
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let mut stdout = std::io::stdout().lock();
    match cli::run(&cli, &mut stdout) {
        Ok(Outcome::Success) => ExitCode::SUCCESS,
        Ok(Outcome::Failed) => ExitCode::from(1),
        Err(e) => report(&e, matches!(cli.command, cli::Command::Unlock { .. })),
    }
}
