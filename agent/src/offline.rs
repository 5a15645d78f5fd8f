//! `attest-inspect`, the operator's offline tool: decode attestation artefacts (`inspect`) and,
//! with `--verify`, check their signatures and certificate chains against pinned vendor roots
//! (`attest_verify`, the code the test broker decides with).
//!
//! A separate binary: nothing here is reachable from `attest-unlock`'s `main`, so verification,
//! certificate parsing and rendering never ship in the initramfs.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use attest_verify::check::Checks;
use attest_verify::roots::{self, Roots};
use attest_verify::tdx::VerifiedQuote;
use attest_verify::x509_cert::crl::CertificateList;
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
    /// Check signatures, chains and bindings: an SNP report (alone or in an HCL report)
    /// against the VCEK/VLEK given beside it and AMD's pinned ARK/ASK/ASVK; a TDX quote against
    /// its PCK chain and Intel's pinned SGX Root CA, and a CCEL beside it against its RTMRs; a
    /// TPM quote against --signature, --ak, --extra-data and --pcrs, and an event log beside
    /// it against those PCRs; REPORT_DATA against --nonce and --tee-pubkey; a certificate
    /// against the pinned roots. Without it, nothing is verified: the fields are shown as the
    /// file states them. Exit code 1 when a check fails.
    #[arg(long)]
    pub verify: bool,
    /// The time certificates must be valid at: `YYYY-MM-DD`, `YYYY-MM-DDTHH:MM:SSZ` or Unix
    /// seconds. Default: now.
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub at: Option<SystemTime>,
    /// A root certificate (DER or PEM) to trust besides the pinned vendor roots (repeatable).
    #[arg(long, value_name = "FILE")]
    pub root: Vec<PathBuf>,
    /// A certificate revocation list (DER or PEM; repeatable): AMD's KDS `crl`, Intel's
    /// root and PCK CRLs. Each verified chain is checked against the CRLs of its issuers: the
    /// CRL signed by the issuer, current at `--at`, not listing the certificate.
    #[arg(long, value_name = "FILE")]
    pub crl: Vec<PathBuf>,
    /// Intel's collateral for a TDX quote (`QuoteCollateralV3` JSON, the form dcap-qvl
    /// reads and writes: TCB info, QE identity, their signatures and issuer chains, the root
    /// and PCK CRLs): the quote's TCB status, UpToDate or the reason it is not.
    #[arg(long, value_name = "FILE")]
    pub collateral: Option<PathBuf>,
    /// The `TPMT_SIGNATURE` of the TPM quote (`TPMS_ATTEST`) given (it has no magic number to
    /// be detected by).
    #[arg(long, value_name = "FILE")]
    pub signature: Option<PathBuf>,
    /// The attestation key a TPM quote must be signed by: PEM or DER public key, certificate,
    /// `TPMT_PUBLIC` or `TPM2B_PUBLIC`.
    #[arg(long, value_name = "FILE")]
    pub ak: Option<PathBuf>,
    /// The qualifying data a TPM quote must carry (the verifier's nonce), in hex.
    #[arg(long, value_name = "HEX")]
    pub extra_data: Option<String>,
    /// The PCR values the TPM quote covers (JSON: a list of hex values in selection order, as
    /// Trustee's `tpm_quote.pcrs`, or `{"sha256": {"0": hex, ...}}`, optionally under
    /// `"pcrs"`): checked against the quote's PCR digest and, with an event log given, against
    /// its replay.
    #[arg(long, value_name = "FILE")]
    pub pcrs: Option<PathBuf>,
    /// The KBS nonce (as the broker sent it) the evidence must be bound to, with
    /// `--tee-pubkey`: REPORT_DATA (SNP, TDX, HCL) must be the binding digest, a TPM quote's
    /// qualifying data its first 32 bytes.
    #[arg(long, value_name = "B64", requires = "tee_pubkey")]
    pub nonce: Option<String>,
    /// The session's TEE public key (JWK JSON, exactly as sent) for `--nonce`.
    #[arg(long, value_name = "JWK", requires = "nonce")]
    pub tee_pubkey: Option<String>,
}

/// Parses `--at`.
fn parse_time(s: &str) -> Result<SystemTime, String> {
    attest_verify::time::parse(s)
        .ok_or_else(|| format!("{s:?} is not YYYY-MM-DD, YYYY-MM-DDTHH:MM:SSZ or Unix seconds"))
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
    let context = Context::read(cli)?;
    let results = verify(&inputs, Roots::from_certs(extra), at, &context)?;
    // Nothing checked is not verified.
    let passed = !results.is_empty() && results.iter().all(|(_, _, checks)| checks.all_passed());
    if cli.text {
        let mut text = String::new();
        for (name, kind, checks) in &results {
            text.push_str(&format!("{name} ({kind}):\n"));
            for c in checks.iter() {
                // Each line made printable on its own: a reason may quote hostile bytes.
                let line = match &c.outcome {
                    Ok(detail) => format!("  pass  {}: {detail}", c.name),
                    Err(reason) => format!("  FAIL  {}: {reason}", c.name),
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
        let _ = write!(out, "{text}");
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
    context: &Context,
) -> Result<Vec<(String, Kind, Checks)>, Error> {
    let mut given = Vec::new();
    for input in inputs.iter().filter(|i| i.kind == Kind::Certificate) {
        given.extend(certificates(input)?);
    }
    let only_certificates = inputs.iter().all(|i| i.kind == Kind::Certificate);
    let amd = with(roots::amd(), &extra, &given);
    let intel = with(roots::intel(), &extra, &[]);
    let env = Env {
        given: &given,
        extra: &extra,
        amd: &amd,
        intel: &intel,
        at,
        context,
    };
    let ccels: Vec<&Input> = inputs.iter().filter(|i| i.kind == Kind::Ccel).collect();
    let td_quote = inputs
        .iter()
        .find(|i| i.kind == Kind::TdxQuote)
        .map(|i| i.bytes.as_slice());
    let mut results = Vec::new();
    for input in inputs {
        let mut checks = Checks::new();
        match input.kind {
            Kind::SnpReport => snp_checks(
                &input.bytes,
                &given,
                &amd,
                context.binding.as_ref(),
                &env,
                &mut checks,
            ),
            Kind::HclReport => {
                hcl_checks(&input.bytes, &given, &amd, &env, &mut checks);
                td_quote_of_hcl(&input.bytes, td_quote, &mut checks);
            }
            Kind::TdxQuote => {
                tdx_quote_checks(
                    &input.bytes,
                    context.binding.as_ref(),
                    &ccels,
                    &env,
                    &mut checks,
                );
            }
            Kind::Certificate if only_certificates => {
                // Both vendors' roots: a certificate alone may be either's.
                let all = with(intel.clone(), &amd, &[]);
                for cert in certificates(input)? {
                    certificate_checks(&cert, &all, at, context, &mut checks);
                }
            }
            // Collateral of the report beside it.
            Kind::Certificate => continue,
            Kind::TpmsAttest => tpm_checks(&input.bytes, inputs, context, &mut checks),
            Kind::Evidence => evidence_checks(&input.bytes, &env, &mut checks),
            Kind::TpmtSignature => checks.fail(
                "tpm.signature",
                "a signature alone: give the TPMS_ATTEST it signs, with --signature FILE",
            ),
            // Checked against the quote beside it (the quote's checks say so).
            Kind::EventLog if inputs.iter().any(|i| i.kind == Kind::TpmsAttest) => continue,
            Kind::Ccel if inputs.iter().any(|i| i.kind == Kind::TdxQuote) => continue,
            Kind::EventLog | Kind::Ccel => checks.fail(
                "signature",
                "an event log is not signed; give the quote it replays to beside it",
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

/// An SNP report: signature with one of the P-384 certificates in `given`, chain through
/// `amd`, revocation when CRLs are given, and REPORT_DATA against `binding` when there is one.
fn snp_checks(
    bytes: &[u8],
    given: &[Certificate],
    amd: &Roots,
    binding: Option<&Result<[u8; 48], String>>,
    env: &Env<'_>,
    checks: &mut Checks,
) {
    let (at, context) = (env.at, env.context);
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
    let verified = snp::verify_steps(raw, &veks, &amd.intermediates, &amd.anchors, at, &mut inner);
    if veks.is_empty() {
        inner.add_hint("signature", &kds_hint(raw));
    }
    checks.extend_prefixed("snp", inner);
    if let Some(v) = verified {
        context.revocation("snp.revocation", &v.chain, at, checks);
    }
    if let (Some(binding), Ok(report)) = (binding, snp::SnpReport::parse(raw)) {
        report_data_check("snp.report_data", &report.report_data, binding, checks);
    }
}

/// A TDX quote: verified against Intel's roots (and `--root`), revocation and Intel's
/// collateral when given, REPORTDATA against `binding` when there is one, and each of `ccels`
/// replayed against its RTMRs.
fn tdx_quote_checks(
    bytes: &[u8],
    binding: Option<&Result<[u8; 48], String>>,
    ccels: &[&Input],
    env: &Env<'_>,
    checks: &mut Checks,
) -> Option<VerifiedQuote> {
    let (at, context) = (env.at, env.context);
    let mut inner = Checks::new();
    let quote = tdx::verify_steps(bytes, &env.intel.anchors, at, &mut inner);
    checks.extend_prefixed("tdx", inner);
    let q = quote?;
    context.revocation("tdx.revocation", &q.chain, at, checks);
    if let Some(c) = &context.collateral {
        let mut inner = Checks::new();
        attest_verify::collateral::evaluate(
            &q,
            c,
            &env.intel.anchors,
            &context.crls,
            at,
            &mut inner,
        );
        checks.extend_prefixed("tdx", inner);
    }
    if let Some(binding) = binding {
        report_data_check("tdx.report_data", &q.body.report_data, binding, checks);
    }
    ccel_cross_check(ccels, &q.body.rtmrs, checks);
    Some(q)
}

fn hcl_checks(
    bytes: &[u8],
    given: &[Certificate],
    amd: &Roots,
    env: &Env<'_>,
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
            // Its REPORT_DATA is the runtime claims' hash, checked below, not the KBS binding.
            snp_checks(slot, given, amd, None, env, checks);
        }
        // MACed, not signed: vouched for by the TD quote made from it (td_quote_of_hcl).
        hcl::HwReport::Tdx(_) => {}
    }
    match binding {
        Ok(d) => checks.pass("hcl.var_data_binding", d),
        Err(r) => checks.fail("hcl.var_data_binding", r),
    }
}

fn certificate_checks(
    cert: &Certificate,
    roots: &Roots,
    at: SystemTime,
    context: &Context,
    checks: &mut Checks,
) {
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
    match x509::verify_path_certs(cert, &roots.intermediates, &roots.anchors, at) {
        Ok(path) => {
            let root = path.last().map(x509::subject).unwrap_or_default();
            checks.pass(&name, format!("chains to {root}, valid at the time"));
            let name = format!("revocation[{}]", x509::subject(cert));
            context.revocation(&name, &path, at, checks);
        }
        Err(e) => checks.fail(&name, format!("{e:#}")),
    }
}

/// What the operator gave besides the files: the TPM quote's signature and AK, the expected
/// qualifying data, PCR values, and the KBS binding inputs.
struct Context {
    /// `--nonce` and `--tee-pubkey`, as given.
    nonce: Option<String>,
    tee_pubkey: Option<Value>,
    crls: Vec<CertificateList>,
    collateral: Option<attest_verify::collateral::Collateral>,
    signature: Option<Vec<u8>>,
    ak: Option<Result<rsa::RsaPublicKey, String>>,
    extra_data: Option<Vec<u8>>,
    pcrs: Option<Value>,
    binding: Option<Result<[u8; 48], String>>,
}

impl Context {
    fn read(cli: &Cli) -> Result<Context, Error> {
        let file = |p: &Path| -> Result<Vec<u8>, Error> {
            crate::hw::fw::read_input(p, MAX_INPUT).map_err(|source| Error::Input {
                file: p.display().to_string(),
                source,
            })
        };
        let invalid = |what: &str, why: String| Error::Format {
            file: what.to_string(),
            source: crate::formats::FormatError::invalid("option", why),
        };
        let mut crls = Vec::new();
        for p in &cli.crl {
            crls.extend(
                x509::parse_crls(&file(p)?)
                    .map_err(|e| invalid(&p.display().to_string(), format!("{e:#}")))?,
            );
        }
        let collateral = match cli.collateral.as_deref() {
            Some(p) => {
                let c = attest_verify::collateral::parse(&file(p)?)
                    .map_err(|e| invalid(&p.display().to_string(), format!("{e:#}")))?;
                // Its CRLs count as given.
                crls.extend(c.crls.iter().cloned());
                Some(c)
            }
            None => None,
        };
        let signature = cli.signature.as_deref().map(file).transpose()?;
        let ak = match cli.ak.as_deref() {
            Some(p) => Some(attest_verify::tpm::ak_key(&file(p)?).map_err(|e| format!("{e:#}"))),
            None => None,
        };
        let extra_data = match &cli.extra_data {
            Some(h) => Some(
                hex::decode(h.trim())
                    .map_err(|e| invalid("--extra-data", format!("not hex: {e}")))?,
            ),
            None => None,
        };
        let pcrs = match cli.pcrs.as_deref() {
            Some(p) => Some(
                serde_json::from_slice(&file(p)?)
                    .map_err(|e| invalid("--pcrs", format!("not JSON: {e}")))?,
            ),
            None => None,
        };
        let binding = match (&cli.nonce, &cli.tee_pubkey) {
            (Some(nonce), Some(jwk)) => Some(
                serde_json::from_str::<Value>(jwk)
                    .map_err(|e| format!("--tee-pubkey is not JSON: {e}"))
                    .and_then(|key| {
                        attest_verify::binding::binding_digest("", nonce, &key)
                            .map_err(|e| format!("{e:#}"))
                    }),
            ),
            _ => None,
        };
        Ok(Context {
            nonce: cli.nonce.clone(),
            tee_pubkey: cli
                .tee_pubkey
                .as_deref()
                .and_then(|k| serde_json::from_str(k).ok()),
            crls,
            collateral,
            signature,
            ak,
            extra_data,
            pcrs,
            binding,
        })
    }

    /// With `--crl`: no certificate of a verified chain is revoked.
    fn revocation(&self, name: &str, chain: &[Certificate], at: SystemTime, checks: &mut Checks) {
        if self.crls.is_empty() {
            return;
        }
        match x509::check_revocation(chain, &self.crls, at) {
            Ok(checked) if checked.is_empty() => checks.fail(
                name,
                "no CRL given is of an issuer in this chain (give the issuers' CRLs)",
            ),
            Ok(checked) => checks.pass(name, format!("not revoked: {}", checked.join("; "))),
            Err(e) => checks.fail(name, format!("{e:#}")),
        }
    }
}

/// REPORT_DATA must be `binding` zero-padded to 64 bytes.
fn report_data_check(
    name: &str,
    report_data: &[u8],
    binding: &Result<[u8; 48], String>,
    checks: &mut Checks,
) {
    match binding {
        Err(e) => checks.fail(name, e.clone()),
        Ok(digest) => {
            let mut expected = [0u8; 64];
            expected[..48].copy_from_slice(digest);
            if report_data == expected {
                checks.pass(name, "the binding digest of the nonce and the TEE key");
            } else {
                checks.fail(
                    name,
                    format!(
                        "REPORT_DATA {} is not the binding digest of the nonce and the TEE key \
                         {} (zero-padded)",
                        hex::encode(report_data),
                        hex::encode(digest)
                    ),
                );
            }
        }
    }
}

/// The PCR values of `bank` in `selected` order from a PCR JSON (`--pcrs`, or the evidence's
/// `tpm_quote.pcrs`): a list in selection order, or banks of `{"index": hex}`.
fn pcr_values(v: &Value, bank: &str, selected: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let v = v.get("pcrs").unwrap_or(v);
    let hexes: Vec<Option<&str>> = match v {
        Value::Array(list) => list.iter().map(Value::as_str).collect(),
        Value::Object(banks) => {
            let Some(Value::Object(bank_values)) = banks.get(bank) else {
                return Err(format!("the PCR values have no {bank} bank"));
            };
            selected
                .iter()
                .map(|i| bank_values.get(&i.to_string()).and_then(Value::as_str))
                .collect()
        }
        _ => return Err("the PCR values are neither a list nor an object of banks".into()),
    };
    if hexes.len() != selected.len() {
        return Err(format!(
            "{} PCR values, the quote selects {}",
            hexes.len(),
            selected.len()
        ));
    }
    hexes
        .into_iter()
        .zip(selected)
        .map(|(h, i)| {
            h.and_then(|h| hex::decode(h).ok())
                .ok_or_else(|| format!("PCR {i} is missing or not hex"))
        })
        .collect()
}

/// Qualifying data a quote must carry: (check name, the bytes or why there are none, what
/// they are).
type Expected = (&'static str, Result<Vec<u8>, String>, &'static str);

/// What a TPM quote is checked with.
struct TpmParts<'a> {
    message: &'a [u8],
    signature: Option<Vec<u8>>,
    ak: Option<Result<rsa::RsaPublicKey, String>>,
    /// Whose AK it is, for the detail.
    whose: String,
    /// Qualifying data the quote must carry: (check name, bytes, what they are).
    expected: Vec<Expected>,
    pcrs: Option<Value>,
    logs: Vec<&'a Input>,
}

/// A TPM quote from files: `--signature`, `--ak` (or an HCL report beside it), `--extra-data`,
/// `--nonce`/`--tee-pubkey`, `--pcrs`, and the event logs beside it.
fn tpm_checks(message: &[u8], inputs: &[Input], context: &Context, checks: &mut Checks) {
    // Composite evidence: without --ak, the AK an HCL report beside the quote vouches for.
    let hcl_ak = inputs
        .iter()
        .find(|i| i.kind == Kind::HclReport)
        .and_then(|i| hcl::parse_hcl_report(&i.bytes).ok())
        .map(|h| attest_verify::tpm::hcl_ak(&h.runtime_claims).map_err(|e| format!("{e:#}")));
    let (ak, whose) = match (&context.ak, hcl_ak) {
        (Some(ak), _) => (Some(ak.clone()), "the AK given (--ak)"),
        (None, Some(ak)) => (Some(ak), "the HCL report's HCLAkPub"),
        (None, None) => (None, ""),
    };
    let mut expected = Vec::new();
    if let Some(e) = &context.extra_data {
        expected.push(("tpm.extra_data", Ok(e.clone()), "the --extra-data"));
    }
    if let Some(binding) = &context.binding {
        expected.push((
            "tpm.binding",
            binding.clone().map(|d| d[..32].to_vec()),
            "the first 32 bytes of the binding digest",
        ));
    }
    tpm_core(
        TpmParts {
            message,
            signature: context.signature.clone(),
            ak,
            whose: whose.to_string(),
            expected,
            pcrs: context.pcrs.clone(),
            logs: inputs.iter().filter(|i| i.kind == Kind::EventLog).collect(),
        },
        checks,
    );
}

/// A TPM quote: signature with the AK, qualifying data, PCR digest against the values given,
/// and the event logs replayed against those values.
fn tpm_core(parts: TpmParts<'_>, checks: &mut Checks) {
    let message = parts.message;
    let quote = match attest_verify::tpm::parse_quote(message) {
        Ok(q) => {
            let banks: Vec<String> = q
                .banks
                .iter()
                .map(|(b, p)| format!("{b}:{}", pcr_list(p)))
                .collect();
            checks.pass("tpm.quote", format!("a quote of {}", banks.join(" ")));
            q
        }
        Err(e) => {
            checks.fail("tpm.quote", format!("{e:#}"));
            return;
        }
    };
    let whose = &parts.whose;
    match (&parts.signature, &parts.ak) {
        (Some(sig), Some(Ok(ak))) => match tpm_signature(message, sig, ak) {
            Ok(()) => checks.pass(
                "tpm.signature",
                format!("signed by {whose} (RSASSA SHA-256)"),
            ),
            Err(e) => checks.fail("tpm.signature", e),
        },
        (_, Some(Err(e))) => checks.fail("tpm.signature", format!("the AK: {e}")),
        (None, _) => checks.fail("tpm.signature", "no signature given (--signature FILE)"),
        (_, None) => checks.fail(
            "tpm.signature",
            "no attestation key given (--ak FILE, or the HCL report that carries it)",
        ),
    }
    for (name, bytes, what) in &parts.expected {
        let outcome = bytes.clone().and_then(|b| {
            attest_verify::tpm::check_extra_data(&quote, &b, what).map_err(|e| format!("{e:#}"))
        });
        match outcome {
            Ok(()) => checks.pass(name, format!("the qualifying data is {what}")),
            Err(e) => checks.fail(name, e),
        }
    }
    let [(bank, selected)] = quote.banks.as_slice() else {
        if parts.pcrs.is_some() {
            checks.fail(
                "tpm.pcr_digest",
                "the quote selects several banks; give one bank's quote",
            );
        }
        return;
    };
    // The values: given, or replayed from the log when the log covers every selected PCR.
    let values = match &parts.pcrs {
        Some(v) => Some(pcr_values(v, bank, selected)),
        None => parts
            .logs
            .first()
            .map(|log| replayed_values(log, bank, selected)),
    };
    let Some(values) = values else {
        return;
    };
    let values = match values {
        Ok(v) => v,
        Err(e) => {
            checks.fail("tpm.pcr_digest", e);
            return;
        }
    };
    match attest_verify::tpm::check_pcr_digest(&quote, &values) {
        Ok(()) => checks.pass(
            "tpm.pcr_digest",
            format!("the digest of the {} PCR values", selected.len()),
        ),
        Err(e) => checks.fail("tpm.pcr_digest", format!("{e:#}")),
    }
    for log in parts.logs {
        event_log_cross_check(log, bank, selected, &values, checks);
    }
}

/// `0-9,11` for a PCR list.
fn pcr_list(pcrs: &[u8]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < pcrs.len() {
        let start = pcrs[i];
        let mut end = start;
        while i + 1 < pcrs.len() && pcrs[i + 1] == end + 1 {
            i += 1;
            end = pcrs[i];
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    out.join(",")
}

fn parse_log(log: &Input) -> Result<crate::formats::eventlog::EventLog, String> {
    crate::formats::eventlog::parse_event_log(&log.bytes).map_err(|e| format!("{}: {e}", log.name))
}

fn bank_replay(
    log: &Input,
    bank: &str,
) -> Result<std::collections::BTreeMap<u32, Vec<u8>>, String> {
    let parsed = parse_log(log)?;
    let replay = parsed
        .replay()
        .into_iter()
        .find(|b| b.alg.name() == bank && b.replayed)
        .ok_or_else(|| format!("{} has no {bank} bank to replay", log.name))?;
    Ok(replay.pcrs)
}

/// The selected PCRs' values from the log's replay, when the log extends every one of them.
fn replayed_values(log: &Input, bank: &str, selected: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let pcrs = bank_replay(log, bank)?;
    selected
        .iter()
        .map(|i| {
            pcrs.get(&u32::from(*i)).cloned().ok_or_else(|| {
                format!(
                    "the quote covers PCR {i}, which {} does not extend: give the PCR values \
                     (--pcrs)",
                    log.name
                )
            })
        })
        .collect()
}

/// Every PCR the log extends (and the quote covers) replays to the value given.
fn event_log_cross_check(
    log: &Input,
    bank: &str,
    selected: &[u8],
    values: &[Vec<u8>],
    checks: &mut Checks,
) {
    let name = "tpm.event_log";
    let pcrs = match bank_replay(log, bank) {
        Ok(p) => p,
        Err(e) => {
            checks.fail(name, e);
            return;
        }
    };
    let mut compared = Vec::new();
    for (index, value) in selected.iter().zip(values) {
        let Some(replayed) = pcrs.get(&u32::from(*index)) else {
            continue;
        };
        if replayed != value {
            checks.fail(
                name,
                format!(
                    "{} replays {bank} PCR {index} to {}, the quoted value is {}",
                    log.name,
                    hex::encode(replayed),
                    hex::encode(value)
                ),
            );
            return;
        }
        compared.push(*index);
    }
    if compared.is_empty() {
        checks.fail(
            name,
            format!("{} extends none of the quoted PCRs", log.name),
        );
    } else {
        checks.pass(
            name,
            format!(
                "{} replays {bank} PCRs {} to the quoted values",
                log.name,
                pcr_list(&compared)
            ),
        );
    }
}

/// A CCEL beside a TDX quote replays to the quote's RTMRs.
fn ccel_cross_check(ccels: &[&Input], rtmrs: &[[u8; 48]; 4], checks: &mut Checks) {
    for log in ccels {
        let name = "tdx.ccel";
        match tdx::replay_ccel(&log.bytes) {
            Err(e) => checks.fail(name, format!("{}: {e:#}", log.name)),
            Ok(replay) => {
                let differ: Vec<String> = (0..4)
                    .filter(|i| replay.rtmrs[*i] != rtmrs[*i])
                    .map(|i| {
                        format!(
                            "RTMR{i} replays to {} but the quote has {}",
                            hex::encode(replay.rtmrs[i]),
                            hex::encode(rtmrs[i])
                        )
                    })
                    .collect();
                if differ.is_empty() {
                    checks.pass(
                        name,
                        format!(
                            "{} replays to the quote's RTMR0-3 ({} extends)",
                            log.name, replay.extends
                        ),
                    );
                } else {
                    checks.fail(name, format!("{}: {}", log.name, differ.join("; ")));
                }
            }
        }
    }
}

/// A `TPMT_SIGNATURE`, or the bare RSASSA signature Azure's vTPM evidence carries (exactly the
/// modulus size, which no `TPMT_SIGNATURE` of that key can be).
fn tpm_signature(message: &[u8], sig: &[u8], ak: &rsa::RsaPublicKey) -> Result<(), String> {
    use rsa::traits::PublicKeyParts;
    let outcome = if sig.len() == ak.size() {
        attest_verify::tpm::verify_rsassa_sha256(message, sig, ak)
    } else {
        attest_verify::tpm::verify_signature(message, sig, ak)
    };
    outcome.map_err(|e| format!("{e:#}"))
}

/// What every check of an evidence document needs besides the document.
struct Env<'a> {
    given: &'a [Certificate],
    extra: &'a Roots,
    amd: &'a Roots,
    intel: &'a Roots,
    at: SystemTime,
    context: &'a Context,
}

/// Standard or URL-safe base64, padded or not (Trustee's evidence uses both).
fn b64(v: &Value, what: &str) -> Result<Vec<u8>, String> {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    use base64::Engine;
    let text = v
        .as_str()
        .ok_or_else(|| format!("{what} is missing or not a string"))?;
    STANDARD
        .decode(text)
        .or_else(|_| URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')))
        .map_err(|e| format!("{what} is not base64: {e}"))
}

/// An evidence document (`attest-unlock evidence`): the binding recomputed from its runtime
/// data (or `--nonce`/`--tee-pubkey`, the broker's), then the primary evidence by its TEE and
/// the additional evidence (a vTPM quote beside a TEE report) checked as the files would be.
fn evidence_checks(bytes: &[u8], env: &Env<'_>, checks: &mut Checks) {
    let Some(doc) = inspect::evidence_document(bytes) else {
        checks.fail("evidence", "not a JSON object with tee-evidence");
        return;
    };
    let tee = doc.get("tee").and_then(Value::as_str).unwrap_or_default();
    let runtime = &doc["runtime-data"];
    let primary = &doc["tee-evidence"]["primary_evidence"];
    let additional = match &doc["tee-evidence"]["additional_evidence"] {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    // The broker's nonce and key when given: the document's own only prove it consistent.
    let (nonce, key) = match (&env.context.nonce, &env.context.tee_pubkey) {
        (Some(n), Some(k)) => (n.clone(), k.clone()),
        _ => (
            runtime["nonce"].as_str().unwrap_or_default().to_string(),
            runtime["tee-pubkey"].clone(),
        ),
    };
    let digest = attest_verify::binding::binding_digest(&additional, &nonce, &key)
        .map_err(|e| format!("{e:#}"));
    checks.pass(
        "evidence",
        format!(
            "{tee} evidence for nonce {nonce}{}",
            if additional.is_empty() {
                ""
            } else {
                " with additional evidence"
            }
        ),
    );
    match tee {
        "tpm" => tpm_json(
            primary,
            digest.clone().map(|d| d[..32].to_vec()),
            "the first 32 bytes of the binding digest",
            env,
            checks,
        ),
        "snp" => snp_json(primary, &digest, env, checks),
        "tdx" => tdx_json(primary, &digest, env, checks),
        "az-snp-vtpm" | "az-tdx-vtpm" => azure_json(primary, tee, &digest, env, checks),
        other => checks.fail(
            "evidence",
            format!("TEE {other:?} is not one this tool verifies"),
        ),
    }
    if !additional.is_empty() {
        let devices: Value = match serde_json::from_str(&additional) {
            Ok(v) => v,
            Err(e) => {
                checks.fail(
                    "additional",
                    format!("additional_evidence is not JSON: {e}"),
                );
                return;
            }
        };
        let device_digest = attest_verify::binding::device_binding_digest(&nonce, &key)
            .map_err(|e| format!("{e:#}"));
        match devices.get("tpm") {
            Some(tpm) => tpm_json(
                tpm,
                device_digest.map(|d| d[..32].to_vec()),
                "the first 32 bytes of the device binding digest",
                env,
                checks,
            ),
            None => checks.fail(
                "additional",
                format!(
                    "additional evidence of {} is not one this tool verifies",
                    additional
                ),
            ),
        }
    }
}

/// Trustee's `tpm` evidence: the quote (base64), its PCRs, the AK it carries (`--ak` pins one,
/// an `ak_cert` chaining to a trusted root vouches for it), its event log.
fn tpm_json(
    ev: &Value,
    expected: Result<Vec<u8>, String>,
    what: &'static str,
    env: &Env<'_>,
    checks: &mut Checks,
) {
    let message = match b64(&ev["tpm_quote"]["message"], "tpm_quote.message") {
        Ok(m) => m,
        Err(e) => {
            checks.fail("tpm.quote", e);
            return;
        }
    };
    let carried = b64(&ev["ak_public"], "ak_public")
        .and_then(|der| attest_verify::tpm::ak_key(&der).map_err(|e| format!("ak_public: {e:#}")));
    let (ak, whose) = match &env.context.ak {
        Some(ak) => (Some(ak.clone()), "the AK given (--ak)".to_string()),
        None => (
            Some(carried.clone()),
            "the AK the evidence carries".to_string(),
        ),
    };
    // Is the AK vouched for: pinned with --ak, or certified by a trusted root?
    match (&env.context.ak, ev.get("ak_cert")) {
        (Some(_), _) => {}
        (None, Some(cert)) => {
            let outcome = b64(cert, "ak_cert").and_then(|der| {
                let cert = x509::from_der(&der).map_err(|e| format!("ak_cert: {e:#}"))?;
                let key = x509::rsa_key(&cert).map_err(|e| format!("{e:#}"))?;
                if carried.as_ref().ok() != Some(&key) {
                    return Err("ak_cert certifies another key than ak_public".into());
                }
                // The operator's roots (--root) and the certificates given beside.
                let roots = with(Roots::default(), env.extra, env.given);
                x509::verify_path(&cert, &roots.intermediates, &roots.anchors, env.at)
                    .map_err(|e| format!("ak_cert: {e:#} (give its root with --root and its intermediate beside)"))
            });
            match outcome {
                Ok(root) => checks.pass("tpm.ak_trusted", format!("ak_cert chains to {root}")),
                Err(e) => checks.fail("tpm.ak_trusted", e),
            }
        }
        (None, None) => checks.fail(
            "tpm.ak_trusted",
            "the AK is the evidence's own claim: give the registered AK with --ak",
        ),
    }
    let log_input = ev
        .get("event_log")
        .and_then(|l| b64(l, "event_log").ok())
        .map(|bytes| Input {
            name: "event_log".into(),
            kind: Kind::EventLog,
            bytes,
        });
    tpm_core(
        TpmParts {
            message: &message,
            signature: b64(&ev["tpm_quote"]["signature"], "tpm_quote.signature").ok(),
            ak,
            whose,
            expected: vec![("tpm.binding", expected, what)],
            pcrs: ev["tpm_quote"].get("pcrs").cloned(),
            logs: log_input.iter().collect(),
        },
        checks,
    );
}

/// Trustee's `snp` evidence: the report in the sev crate's serde form, the certificate table.
fn snp_json(ev: &Value, digest: &Result<[u8; 48], String>, env: &Env<'_>, checks: &mut Checks) {
    use sev::firmware::guest::AttestationReport;
    use sev::firmware::host::{CertTableEntry, CertType};
    use sev::parser::ByteParser;
    let raw = serde_json::from_value::<AttestationReport>(ev["attestation_report"].clone())
        .map_err(|e| format!("attestation_report: {e}"))
        .and_then(|r| {
            r.to_bytes()
                .map_err(|e| format!("attestation_report does not encode: {e}"))
        });
    let raw = match raw {
        Ok(r) => r,
        Err(e) => {
            checks.fail("snp.report", e);
            return;
        }
    };
    let mut given = env.given.to_vec();
    if let Ok(table) =
        serde_json::from_value::<Option<Vec<CertTableEntry>>>(ev["cert_chain"].clone())
    {
        for entry in table.unwrap_or_default() {
            if matches!(
                entry.cert_type,
                CertType::VCEK | CertType::VLEK | CertType::ASK
            ) {
                if let Ok(cert) = x509::from_der(&entry.data) {
                    given.push(cert);
                }
            }
        }
    }
    let amd = with(env.amd.clone(), &Roots::default(), &given);
    snp_checks(&raw, &given, &amd, Some(digest), env, checks);
}

/// Trustee's `tdx` evidence: the quote and the CCEL, base64.
fn tdx_json(ev: &Value, digest: &Result<[u8; 48], String>, env: &Env<'_>, checks: &mut Checks) {
    let quote = match b64(&ev["quote"], "quote") {
        Ok(q) => q,
        Err(e) => {
            checks.fail("tdx.quote", e);
            return;
        }
    };
    let ccel = match ev.get("cc_eventlog").filter(|l| !l.is_null()) {
        Some(log) => match b64(log, "cc_eventlog") {
            Ok(bytes) => Some(Input {
                name: "cc_eventlog".into(),
                kind: Kind::Ccel,
                bytes,
            }),
            Err(e) => {
                checks.fail("tdx.ccel", e);
                None
            }
        },
        None => None,
    };
    let ccels: Vec<&Input> = ccel.iter().collect();
    tdx_quote_checks(&quote, Some(digest), &ccels, env, checks);
}

/// Trustee's `az-snp-vtpm` / `az-tdx-vtpm` evidence: the HCL report (its SNP report and VCEK,
/// or its TD quote), the vTPM quote (hex) signed by the HCL's AK over the whole binding digest.
fn azure_json(
    ev: &Value,
    tee: &str,
    digest: &Result<[u8; 48], String>,
    env: &Env<'_>,
    checks: &mut Checks,
) {
    let hcl_bytes = match b64(&ev["hcl_report"], "hcl_report") {
        Ok(b) => b,
        Err(e) => {
            checks.fail("hcl.report", e);
            return;
        }
    };
    let mut given = env.given.to_vec();
    if let Some(vcek) = ev.get("vcek") {
        match b64(vcek, "vcek")
            .and_then(|der| x509::from_der(&der).map_err(|e| format!("vcek: {e:#}")))
        {
            Ok(cert) => given.push(cert),
            Err(e) => checks.fail("snp.vek", e),
        }
    }
    let amd = with(env.amd.clone(), &Roots::default(), &given);
    hcl_checks(&hcl_bytes, &given, &amd, env, checks);
    if tee == "az-tdx-vtpm" {
        match b64(&ev["td_quote"], "td_quote") {
            Ok(quote) => {
                // Its REPORTDATA is the TDREPORT's (the runtime claims' hash), not the binding.
                tdx_quote_checks(&quote, None, &[], env, checks);
                td_quote_of_hcl(&hcl_bytes, Some(&quote), checks);
            }
            Err(e) => checks.fail("tdx.quote", e),
        }
    }
    let ak = hcl::parse_hcl_report(&hcl_bytes)
        .map_err(|e| e.to_string())
        .and_then(|h| attest_verify::tpm::hcl_ak(&h.runtime_claims).map_err(|e| format!("{e:#}")));
    let hexed = |k: &str| {
        ev["tpm_quote"][k]
            .as_str()
            .and_then(|h| hex::decode(h).ok())
    };
    let Some(message) = hexed("message") else {
        checks.fail("tpm.quote", "tpm_quote.message is missing or not hex");
        return;
    };
    tpm_core(
        TpmParts {
            message: &message,
            signature: hexed("signature"),
            ak: Some(ak),
            whose: "the HCL report's HCLAkPub".into(),
            expected: vec![(
                "tpm.binding",
                digest.clone().map(|d| d.to_vec()),
                "the binding digest",
            )],
            pcrs: ev["tpm_quote"].get("pcrs").cloned(),
            logs: Vec::new(),
        },
        checks,
    );
}

/// An Azure TDX HCL report's TDREPORT is MACed, not signed: the TD quote given beside it (itself
/// verified as a file) must carry its REPORTDATA and MRTD.
fn td_quote_of_hcl(bytes: &[u8], td_quote: Option<&[u8]>, checks: &mut Checks) {
    let Ok(report) = hcl::parse_hcl_report(bytes) else {
        return;
    };
    let hcl::HwReport::Tdx(td) = &report.hw_report else {
        return;
    };
    let quote = td_quote.and_then(|b| tdx::Quote::parse(b).ok());
    match quote {
        None => checks.fail(
            "tdx.report",
            "a TDREPORT is MACed, not signed: give the TD quote made from it beside it",
        ),
        Some(q) if q.body.report_data == td.report_data && q.body.mr_td == td.mr_td => checks.pass(
            "tdx.report",
            "the TD quote given beside carries this TDREPORT's REPORTDATA and MRTD",
        ),
        Some(_) => checks.fail(
            "tdx.report",
            "the TD quote given beside was made from another TDREPORT (REPORTDATA or MRTD differ)",
        ),
    }
}

/// Where AMD's KDS publishes the VCEK of the chip and TCB a report names (VCEK specification,
/// "VCEK certificate"): the product from the report's CPUID (version 3 and later), the chip ID
/// (its first 8 bytes on Turin) and the reported TCB's SPLs.
fn kds_hint(raw: &[u8; snp::REPORT_LEN]) -> String {
    let Ok(report) = snp::SnpReport::parse(raw) else {
        return String::new();
    };
    if report.signing_key != 0 || report.chip_id.iter().all(|b| *b == 0) {
        return " (give the VCEK/VLEK beside the report)".into();
    }
    let product = match (report.version >= 3, raw[0x188], raw[0x189]) {
        (true, 0x19, 0x00..=0x0F) => "Milan",
        (true, 0x19, 0x10..=0x1F) => "Genoa",
        (true, 0x1A, _) => "Turin",
        _ => "{Milan|Genoa}",
    };
    let hwid = if report.turin {
        hex::encode(&report.chip_id[..8])
    } else {
        hex::encode(report.chip_id)
    };
    let t = report.reported_tcb;
    let fmc = if report.turin {
        format!("fmcSPL={}&", raw[0x180])
    } else {
        String::new()
    };
    format!(
        " (give it beside the report; AMD publishes it at https://kdsintf.amd.com/vcek/v1/\
         {product}/{hwid}?{fmc}blSPL={}&teeSPL={}&snpSPL={}&ucodeSPL={})",
        t.bootloader, t.tee, t.snp, t.microcode
    )
}
