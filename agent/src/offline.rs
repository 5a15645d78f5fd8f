//! `attest-inspect`, the operator's offline tool: decode attestation artefacts (`inspect`) and,
//! with `--verify`, check their signatures and certificate chains against pinned vendor roots
//! (`attest_verify`, the code the test broker decides with).
//!
//! A separate binary: nothing here is reachable from `attest-unlock`'s `main`, so verification,
//! certificate parsing and rendering never ship in the initramfs.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use attest_verify::check::Checks;
use attest_verify::roots::{self, Roots};
use attest_verify::x509_cert::{self, Certificate};
use attest_verify::{certs, snp, tdx, x509};
use clap::Parser;
use serde_json::{json, Value};

use crate::error::Error;
use crate::formats::hcl;
use crate::inspect::{self, Kind};

/// Largest file read (event logs are the largest artefacts, well under this).
const MAX_INPUT: u64 = 64 << 20;

/// `attest-inspect`: decode attestation artefacts offline and, with `--verify`, check them.
#[derive(Debug, Parser)]
#[command(
    name = "attest-inspect",
    version,
    about = "Decode attestation artefacts offline (SNP report, TDX quote, TCG or CCEL event log, \
             Azure HCL report, TPMS_ATTEST, TPMT_SIGNATURE, X.509 certificates) and, with \
             --verify, check their signatures and certificate chains"
)]
pub struct Cli {
    /// The files (`-`: standard input), each at most 64 MiB. Certificates (DER or PEM) given
    /// beside a report are its collateral (the VCEK/VLEK of an SNP report).
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// The kind of every file, when detection guesses wrong: snp_report, tdx_quote,
    /// hcl_report, tpms_attest, tpmt_signature, event_log, ccel or certificate.
    #[arg(long, value_name = "KIND")]
    pub kind: Option<Kind>,
    /// A readable table instead of JSON.
    #[arg(long)]
    pub text: bool,
    /// Check signatures and chains: an SNP report (alone or in an HCL report) against the
    /// VCEK/VLEK given beside it and AMD's pinned ARK/ASK/ASVK; a TDX quote against its PCK
    /// chain and Intel's pinned SGX Root CA; a certificate against the pinned roots. Without
    /// it, nothing is verified: the fields are shown as the file states them. Exit code 1 when
    /// a check fails.
    #[arg(long)]
    pub verify: bool,
    /// The time certificates must be valid at: `YYYY-MM-DD`, `YYYY-MM-DDTHH:MM:SSZ` or Unix
    /// seconds. Default: now.
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub at: Option<SystemTime>,
    /// A root certificate (DER or PEM) to trust besides the pinned vendor roots (repeatable).
    #[arg(long, value_name = "FILE")]
    pub root: Vec<PathBuf>,
}

/// Parses `--at`.
fn parse_time(s: &str) -> Result<SystemTime, String> {
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(UNIX_EPOCH + Duration::from_secs(secs));
    }
    let bad = || format!("{s:?} is not YYYY-MM-DD, YYYY-MM-DDTHH:MM:SSZ or Unix seconds");
    let (date, time) = match s.split_once('T') {
        Some((d, t)) => (d, t.strip_suffix('Z').ok_or_else(bad)?),
        None => (s, "00:00:00"),
    };
    let num = |v: Option<&str>| v.and_then(|v| v.parse::<u16>().ok()).ok_or_else(bad);
    let mut d = date.split('-');
    let mut t = time.split(':');
    let (y, mo, da) = (num(d.next())?, num(d.next())?, num(d.next())?);
    let (h, mi, se) = (num(t.next())?, num(t.next())?, num(t.next())?);
    if d.next().is_some() || t.next().is_some() {
        return Err(bad());
    }
    let small = |v: u16| u8::try_from(v).map_err(|_| bad());
    let dt =
        x509_cert::der::DateTime::new(y, small(mo)?, small(da)?, small(h)?, small(mi)?, small(se)?)
            .map_err(|_| bad())?;
    Ok(dt.to_system_time())
}

/// One input: its name for output, its kind, its bytes.
struct Input {
    name: String,
    kind: Kind,
    bytes: Vec<u8>,
}

fn read(file: &Path, kind: Option<Kind>) -> Result<Input, Error> {
    let name = file.display().to_string();
    let bytes = crate::hw::fw::read_input(file, MAX_INPUT).map_err(|source| Error::Input {
        file: name.clone(),
        source,
    })?;
    let kind = match kind {
        Some(k) => k,
        None => inspect::detect(&bytes).ok_or_else(|| Error::Format {
            file: name.clone(),
            source: inspect::unrecognised(bytes.len()),
        })?,
    };
    Ok(Input { name, kind, bytes })
}

/// What `run` found: `Success` when every check passed (or none was asked for).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Decoded (and, with `--verify`, every check passed).
    Success,
    /// A check failed.
    Failed,
}

/// Runs the tool; output goes to `out`.
pub fn run(cli: &Cli, out: &mut dyn Write) -> Result<Outcome, Error> {
    let inputs = cli
        .files
        .iter()
        .map(|f| read(f, cli.kind))
        .collect::<Result<Vec<_>, _>>()?;
    if !cli.verify {
        let mut values = Vec::new();
        for input in &inputs {
            let mut v = inspect::inspect(&input.bytes, Some(input.kind)).map_err(|source| {
                Error::Format {
                    file: input.name.clone(),
                    source,
                }
            })?;
            if inputs.len() > 1 {
                if let Value::Object(map) = &mut v {
                    map.insert("file".into(), json!(input.name));
                }
            }
            values.push(v);
        }
        let value = match <[Value; 1]>::try_from(values) {
            Ok([one]) => one,
            Err(many) => Value::Array(many),
        };
        print(out, &value, cli.text);
        return Ok(Outcome::Success);
    }

    let mut extra = Vec::new();
    for root in &cli.root {
        let input = read(root, Some(Kind::Certificate))?;
        extra.extend(certificates(&input)?);
    }
    let at = cli.at.unwrap_or_else(SystemTime::now);
    let results = verify(&inputs, Roots::from_certs(extra), at)?;
    let passed = results.iter().all(|(_, _, checks)| checks.all_passed());
    if cli.text {
        let mut text = String::new();
        for (name, kind, checks) in &results {
            text.push_str(&format!("{name} ({kind}):\n"));
            for c in checks.iter() {
                let line = match &c.outcome {
                    Ok(detail) => format!("  pass  {}: {detail}\n", c.name),
                    Err(reason) => format!("  FAIL  {}: {reason}\n", c.name),
                };
                text.push_str(&crate::text::console(&line, 4096));
                text.push('\n');
            }
        }
        text.push_str(if passed {
            "verified\n"
        } else {
            "NOT verified\n"
        });
        let _ = write!(out, "{}", text.replace("\n\n", "\n"));
    } else {
        let files: Vec<Value> = results
            .iter()
            .map(|(name, kind, checks)| {
                json!({"file": name, "kind": kind.name(), "checks": checks.to_json()})
            })
            .collect();
        let value = json!({
            "verified": passed,
            "at": humantime(at),
            "files": files,
        });
        print(out, &value, false);
    }
    Ok(if passed {
        Outcome::Success
    } else {
        Outcome::Failed
    })
}

fn humantime(at: SystemTime) -> String {
    x509_cert::der::DateTime::from_system_time(at)
        .map(|d| d.to_string())
        .unwrap_or_else(|_| format!("{:?}", at))
}

fn print(out: &mut dyn Write, value: &Value, text: bool) {
    let rendered = if text {
        inspect::render_text(value).trim_end().to_string()
    } else {
        serde_json::to_string_pretty(value).unwrap_or_default()
    };
    // A closed stdout (e.g. `| head`) is not worth failing over.
    let _ = writeln!(out, "{rendered}");
}

fn certificates(input: &Input) -> Result<Vec<Certificate>, Error> {
    certs::parse_any(&input.bytes).map_err(|e| Error::Format {
        file: input.name.clone(),
        source: crate::formats::FormatError::invalid("certificate", format!("{e:#}")),
    })
}

/// The checks of every input that carries a signature; certificates given beside a report are
/// its collateral, and are checked themselves when given alone.
fn verify(
    inputs: &[Input],
    extra: Roots,
    at: SystemTime,
) -> Result<Vec<(String, Kind, Checks)>, Error> {
    let mut given = Vec::new();
    for input in inputs.iter().filter(|i| i.kind == Kind::Certificate) {
        given.extend(certificates(input)?);
    }
    let only_certificates = inputs.iter().all(|i| i.kind == Kind::Certificate);
    let amd = with(roots::amd(), &extra, &given);
    let intel = with(roots::intel(), &extra, &[]);
    let mut results = Vec::new();
    for input in inputs {
        let mut checks = Checks::new();
        match input.kind {
            Kind::SnpReport => snp_checks(&input.bytes, &given, &amd, at, &mut checks),
            Kind::HclReport => hcl_checks(&input.bytes, &given, &amd, at, &mut checks),
            Kind::TdxQuote => {
                let mut inner = Checks::new();
                tdx::verify_steps(&input.bytes, &intel.anchors, at, &mut inner);
                checks.extend_prefixed("tdx", inner);
            }
            Kind::Certificate if only_certificates => {
                let all = with(with(roots::amd(), &roots::intel(), &[]), &extra, &given);
                for cert in certificates(input)? {
                    certificate_checks(&cert, &all, at, &mut checks);
                }
            }
            // Collateral of the report beside it.
            Kind::Certificate => continue,
            Kind::TpmsAttest | Kind::TpmtSignature => checks.fail(
                "tpm.signature",
                "TPM quote verification (against an AK and a nonce) is not implemented in \
                 this version; the fields are shown without --verify",
            ),
            Kind::EventLog | Kind::Ccel => checks.fail(
                "signature",
                "an event log is not signed; it is checked by replaying it against a quote",
            ),
        }
        results.push((input.name.clone(), input.kind, checks));
    }
    Ok(results)
}

/// `base` plus the operator's roots, plus `given` certificates as intermediates.
fn with(base: Roots, extra: &Roots, given: &[Certificate]) -> Roots {
    let mut roots = base;
    roots.anchors.extend(extra.anchors.iter().cloned());
    roots
        .intermediates
        .extend(extra.intermediates.iter().cloned());
    roots.intermediates.extend(
        given
            .iter()
            .filter(|c| c.tbs_certificate.subject != c.tbs_certificate.issuer)
            .cloned(),
    );
    roots
}

fn snp_checks(
    bytes: &[u8],
    given: &[Certificate],
    amd: &Roots,
    at: SystemTime,
    checks: &mut Checks,
) {
    let Ok(raw) = <&[u8; snp::REPORT_LEN]>::try_from(bytes) else {
        checks.fail(
            "snp.report",
            format!(
                "{} bytes, an SNP report is {}",
                bytes.len(),
                snp::REPORT_LEN
            ),
        );
        return;
    };
    // The VCEK/VLEK: the given certificates with a P-384 key (AMD's ASK and ARK are RSA).
    let veks: Vec<Certificate> = given
        .iter()
        .filter(|c| x509::p384_key(c).is_ok())
        .cloned()
        .collect();
    let mut inner = Checks::new();
    snp::verify_steps(raw, &veks, &amd.intermediates, &amd.anchors, at, &mut inner);
    checks.extend_prefixed("snp", inner);
}

fn hcl_checks(
    bytes: &[u8],
    given: &[Certificate],
    amd: &Roots,
    at: SystemTime,
    checks: &mut Checks,
) {
    let report = match hcl::parse_hcl_report(bytes) {
        Ok(r) => r,
        Err(e) => {
            checks.fail("hcl.report", e.to_string());
            return;
        }
    };
    let binding = if report.var_data_hash_matches() {
        Ok(format!(
            "REPORT_DATA starts with the {} of the variable data (runtime claims)",
            report.request.hash_type.name()
        ))
    } else {
        Err(format!(
            "REPORT_DATA {} does not start with the hash of the variable data {}",
            hex::encode(&report.hw_report.report_data()[..32]),
            hex::encode(report.var_data_hash())
        ))
    };
    match &report.hw_report {
        hcl::HwReport::Snp(_) => {
            let slot = &bytes[hcl::HEADER_SIZE..hcl::HEADER_SIZE + snp::REPORT_LEN];
            snp_checks(slot, given, amd, at, checks);
        }
        hcl::HwReport::Tdx(_) => checks.fail(
            "tdx.report",
            "a TDREPORT is MACed, not signed: it is verified through the TD quote made from it \
             (give the quote)",
        ),
    }
    match binding {
        Ok(d) => checks.pass("hcl.var_data_binding", d),
        Err(r) => checks.fail("hcl.var_data_binding", r),
    }
}

fn certificate_checks(cert: &Certificate, roots: &Roots, at: SystemTime, checks: &mut Checks) {
    use attest_verify::x509_cert::der::Encode;
    let name = format!("chain[{}]", x509::subject(cert));
    if cert.tbs_certificate.subject == cert.tbs_certificate.issuer {
        let der = cert.to_der().ok();
        let pinned = roots.anchors.iter().any(|r| r.to_der().ok() == der);
        let outcome = if pinned {
            x509::verify_signed_by(cert, cert)
                .and_then(|()| x509::check_validity(cert, at))
                .map(|()| "a trusted root, valid at the time".to_string())
        } else {
            Err(attest_verify::x509::untrusted_root(cert))
        };
        match outcome {
            Ok(d) => checks.pass(&name, d),
            Err(e) => checks.fail(&name, format!("{e:#}")),
        }
        return;
    }
    match x509::verify_path(cert, &roots.intermediates, &roots.anchors, at) {
        Ok(root) => checks.pass(&name, format!("chains to {root}, valid at the time")),
        Err(e) => checks.fail(&name, format!("{e:#}")),
    }
}
