//! The one verdict line, for `unlock`, the clevis pin and `main`: `verdict=ok ...` or
//! `verdict=failed ...`, its fields always in the same order and spelling, so an operator (or a
//! log query: `journalctl -b | grep verdict=`) reads every entry point the same way. Values
//! from outside (a broker URL, a device path, a reason) are escaped and cut.

use std::fmt::Write;
use std::time::Duration;

use crate::error::Error;

/// What a run did to the LUKS volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Volume {
    /// No volume to open (secrets only).
    None,
    /// The key was checked against the keyslot (`--verify-only`); nothing activated.
    Verified,
    /// The volume was activated.
    Opened,
}

impl Volume {
    /// The word in the verdict.
    pub fn as_str(self) -> &'static str {
        match self {
            Volume::None => "none",
            Volume::Verified => "verified",
            Volume::Opened => "opened",
        }
    }
}

/// The facts a verdict line carries; absent ones are left out (the pin has no volume).
#[derive(Debug, Default, Clone)]
pub struct Facts<'a> {
    /// The platform attested as.
    pub platform: Option<&'a str>,
    /// The step that failed.
    pub step: Option<&'a str>,
    /// The broker of the last (or successful) session.
    pub broker: Option<&'a str>,
    /// The LUKS device.
    pub device: Option<&'a str>,
    /// What was done to the volume.
    pub volume: Option<Volume>,
    /// Secrets delivered.
    pub secrets: Option<usize>,
    /// Broker sessions tried.
    pub attempts: Option<u32>,
    /// Per-step timings, already formatted (`auth=2.0ms evidence=...`).
    pub timings: Option<String>,
    /// Elapsed since the start.
    pub total: Option<Duration>,
}

fn push(out: &mut String, key: &str, value: &str) {
    let _ = write!(out, " {key}={value}");
}

/// `verdict=ok ...`.
pub fn ok(f: &Facts<'_>) -> String {
    let mut out = String::from("verdict=ok");
    if let Some(p) = f.platform {
        push(&mut out, "platform", p);
    }
    if let Some(b) = f.broker {
        push(&mut out, "broker", &crate::text::value(b));
    }
    if let Some(v) = f.volume {
        push(&mut out, "volume", v.as_str());
    }
    if let Some(s) = f.secrets {
        push(&mut out, "secrets", &s.to_string());
    }
    if let Some(a) = f.attempts {
        push(&mut out, "attempts", &a.to_string());
    }
    if let Some(t) = &f.timings {
        out.push(' ');
        out.push_str(t);
    }
    if let Some(t) = f.total {
        push(
            &mut out,
            "total",
            &format!("{:.1}ms", t.as_secs_f64() * 1e3),
        );
    }
    out
}

/// `verdict=failed ... class=... reason="..." (nothing unlocked, no secret written)`.
pub fn failed(f: &Facts<'_>, error: &Error) -> String {
    let mut out = String::from("verdict=failed");
    if let Some(p) = f.platform {
        push(&mut out, "platform", p);
    }
    if let Some(s) = f.step {
        push(&mut out, "step", s);
    }
    push(&mut out, "class", error.class().as_str());
    if f.platform.is_some() {
        // `unlock`'s failures name broker and device even when there was none, as `-`.
        push(
            &mut out,
            "broker",
            &f.broker.map_or("-".into(), crate::text::value),
        );
        push(
            &mut out,
            "device",
            &f.device.map_or("-".into(), crate::text::value),
        );
    }
    if let Some(a) = f.attempts {
        push(&mut out, "attempts", &a.to_string());
    }
    if let Some(t) = f.total {
        push(
            &mut out,
            "total",
            &format!("{:.1}ms", t.as_secs_f64() * 1e3),
        );
    }
    let _ = write!(out, " reason=\"{}\"", crate::error::chain(error));
    if f.platform.is_some() {
        out.push_str(" (nothing unlocked, no secret written)");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_keep_their_order_and_escape_outside_values() {
        let line = ok(&Facts {
            platform: Some("tpm"),
            broker: Some("https://k\u{1b}[2J"),
            volume: Some(Volume::Verified),
            secrets: Some(1),
            attempts: Some(1),
            timings: Some("auth=1.0ms".into()),
            total: Some(Duration::from_millis(5)),
            ..Facts::default()
        });
        assert_eq!(
            line,
            "verdict=ok platform=tpm broker=https://k\\x1b[2J volume=verified secrets=1 attempts=1 auth=1.0ms total=5.0ms"
        );
        let e: Error = crate::config::ConfigError::Invalid("bad \"x\"".into()).into();
        let line = failed(
            &Facts {
                platform: Some("-"),
                step: Some("config"),
                attempts: Some(0),
                total: Some(Duration::from_millis(1)),
                ..Facts::default()
            },
            &e,
        );
        assert_eq!(
            line,
            "verdict=failed platform=- step=config class=config broker=- device=- attempts=0 total=1.0ms reason=\"invalid configuration: bad 'x'\" (nothing unlocked, no secret written)"
        );
        assert_eq!(
            failed(&Facts::default(), &e),
            "verdict=failed class=config reason=\"invalid configuration: bad 'x'\""
        );
    }
}
