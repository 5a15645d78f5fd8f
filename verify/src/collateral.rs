//! Intel's collateral for a TDX quote: the TCB info and the QE identity (each signed by Intel's
//! TCB signing key, whose certificate chains to the SGX Root CA) and the CRLs, as the
//! operator fetched them from a PCCS or Intel's PCS, in the `QuoteCollateralV3` JSON form
//! (`tcb_info`, `tcb_info_signature`, `tcb_info_issuer_chain`, `qe_identity`,
//! `qe_identity_signature`, `qe_identity_issuer_chain`, `root_ca_crl`, `pck_crl`).
//!
//! [`evaluate`] gives the quote's TCB status the way Intel's Quote Verification Library does:
//! the first TCB level (highest first) that the PCK certificate's CPU SVN components and PCE
//! SVN and the TD report's TEE_TCB_SVN all meet, converged with the TDX module's level and the
//! QE identity's level; a TD 1.5 report's current TCB too.

use std::time::SystemTime;

use anyhow::{anyhow, bail, ensure, Context};
use p256::ecdsa::signature::Verifier;
use serde_json::Value;
use x509_cert::crl::CertificateList;
use x509_cert::Certificate;

use crate::check::Checks;
use crate::tdx::VerifiedQuote;
use crate::x509;

/// The collateral, parsed; the signed JSON bodies are kept as the exact bytes Intel signed.
#[derive(Clone, Debug)]
pub struct Collateral {
    tcb_info: String,
    tcb_info_signature: Vec<u8>,
    tcb_info_chain: Vec<Certificate>,
    qe_identity: String,
    qe_identity_signature: Vec<u8>,
    qe_identity_chain: Vec<Certificate>,
    /// The CRLs the collateral carries (Intel's root CA CRL, the PCK CRL).
    pub crls: Vec<CertificateList>,
}

/// Parses the `QuoteCollateralV3` JSON.
pub fn parse(bytes: &[u8]) -> anyhow::Result<Collateral> {
    let v: Value = serde_json::from_slice(bytes).context("collateral is not JSON")?;
    let text = |k: &str| -> anyhow::Result<String> {
        v.get(k)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| anyhow!("collateral has no {k}"))
    };
    // Signatures and CRLs are hex, or (as some tools write them) arrays of bytes.
    let bytes_of = |k: &str| -> anyhow::Result<Vec<u8>> {
        match v.get(k) {
            Some(Value::String(h)) => hex::decode(h).with_context(|| format!("collateral {k}")),
            Some(Value::Array(list)) => list
                .iter()
                .map(|b| {
                    b.as_u64()
                        .and_then(|b| u8::try_from(b).ok())
                        .ok_or_else(|| anyhow!("collateral {k} is not bytes"))
                })
                .collect(),
            _ => bail!("collateral has no {k}"),
        }
    };
    let mut crls = Vec::new();
    for k in ["root_ca_crl", "pck_crl"] {
        if v.get(k).is_some() {
            crls.extend(
                x509::parse_crls(&bytes_of(k)?).with_context(|| format!("collateral {k}"))?,
            );
        }
    }
    Ok(Collateral {
        tcb_info: text("tcb_info")?,
        tcb_info_signature: bytes_of("tcb_info_signature")?,
        tcb_info_chain: x509::pem_chain(text("tcb_info_issuer_chain")?.as_bytes())
            .context("collateral tcb_info_issuer_chain")?,
        qe_identity: text("qe_identity")?,
        qe_identity_signature: bytes_of("qe_identity_signature")?,
        qe_identity_chain: x509::pem_chain(text("qe_identity_issuer_chain")?.as_bytes())
            .context("collateral qe_identity_issuer_chain")?,
        crls,
    })
}

/// An RFC 3339 UTC time (`2025-06-19T10:16:03Z`), as Intel's collateral writes them.
pub fn parse_time(s: &str) -> anyhow::Result<SystemTime> {
    crate::time::parse(s).ok_or_else(|| anyhow!("{s:?} is not an RFC 3339 UTC time"))
}

/// What a PCK certificate's SGX extension says about the platform.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PckTcb {
    /// FMSPC (family-model-stepping-platform-customSKU).
    pub fmspc: Vec<u8>,
    /// PCE-ID.
    pub pce_id: Vec<u8>,
    /// SGX TCB components 1-16 (the CPU SVN).
    pub cpu_svn: [u8; 16],
    /// PCE SVN.
    pub pce_svn: u16,
}

/// Reads the PCK certificate's SGX extension.
pub fn pck_tcb(pck: &Certificate) -> anyhow::Result<PckTcb> {
    let v = crate::certs::describe(pck);
    let sgx = v
        .get("intel_sgx")
        .ok_or_else(|| anyhow!("{} has no SGX extension", x509::subject(pck)))?;
    let hex_field = |k: &str| -> anyhow::Result<Vec<u8>> {
        sgx.get(k)
            .and_then(Value::as_str)
            .and_then(|h| hex::decode(h).ok())
            .ok_or_else(|| anyhow!("the PCK certificate's SGX extension has no {k}"))
    };
    let tcb = sgx
        .get("TCB")
        .ok_or_else(|| anyhow!("the PCK certificate's SGX extension has no TCB"))?;
    let mut cpu_svn = [0u8; 16];
    for (i, svn) in cpu_svn.iter_mut().enumerate() {
        *svn = tcb
            .get(format!("SGXTCBComp{:02}SVN", i + 1))
            .and_then(Value::as_u64)
            .and_then(|v| u8::try_from(v).ok())
            .ok_or_else(|| anyhow!("the PCK certificate's TCB has no component {}", i + 1))?;
    }
    let pce_svn = tcb
        .get("PCESVN")
        .and_then(Value::as_u64)
        .and_then(|v| u16::try_from(v).ok())
        .ok_or_else(|| anyhow!("the PCK certificate's TCB has no PCESVN"))?;
    Ok(PckTcb {
        fmspc: hex_field("FMSPC")?,
        pce_id: hex_field("PCE-ID")?,
        cpu_svn,
        pce_svn,
    })
}

/// A TCB status, as Intel's TCB info and QE identity write them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcbStatus {
    /// Everything current.
    UpToDate,
    /// Current, but software hardening is needed.
    SWHardeningNeeded,
    /// Current, but the platform configuration needs attention.
    ConfigurationNeeded,
    /// Both of the above.
    ConfigurationAndSWHardeningNeeded,
    /// A newer TCB exists.
    OutOfDate,
    /// Out of date, and the configuration needs attention.
    OutOfDateConfigurationNeeded,
    /// The TCB is revoked.
    Revoked,
    /// TD 1.5: launched out of date, current TCB up to date after a module update.
    TDRelaunchAdvised,
    /// The same, with configuration needed.
    TDRelaunchAdvisedConfigurationNeeded,
}

impl TcbStatus {
    fn parse(s: &str) -> anyhow::Result<TcbStatus> {
        use TcbStatus::*;
        Ok(match s {
            "UpToDate" => UpToDate,
            "SWHardeningNeeded" => SWHardeningNeeded,
            "ConfigurationNeeded" => ConfigurationNeeded,
            "ConfigurationAndSWHardeningNeeded" => ConfigurationAndSWHardeningNeeded,
            "OutOfDate" => OutOfDate,
            "OutOfDateConfigurationNeeded" => OutOfDateConfigurationNeeded,
            "Revoked" => Revoked,
            other => bail!("unknown TCB status {other:?}"),
        })
    }

    /// Intel's name for it.
    pub fn name(self) -> &'static str {
        use TcbStatus::*;
        match self {
            UpToDate => "UpToDate",
            SWHardeningNeeded => "SWHardeningNeeded",
            ConfigurationNeeded => "ConfigurationNeeded",
            ConfigurationAndSWHardeningNeeded => "ConfigurationAndSWHardeningNeeded",
            OutOfDate => "OutOfDate",
            OutOfDateConfigurationNeeded => "OutOfDateConfigurationNeeded",
            Revoked => "Revoked",
            TDRelaunchAdvised => "TDRelaunchAdvised",
            TDRelaunchAdvisedConfigurationNeeded => "TDRelaunchAdvisedConfigurationNeeded",
        }
    }

    /// The platform status with a component's (QE, TDX module): only an out-of-date or revoked
    /// component lowers it (Intel QVL's convergence).
    fn converge(self, component: TcbStatus) -> TcbStatus {
        use TcbStatus::*;
        match (component, self) {
            (Revoked, _) => Revoked,
            (OutOfDate, UpToDate | SWHardeningNeeded) => OutOfDate,
            (OutOfDate, ConfigurationNeeded | ConfigurationAndSWHardeningNeeded) => {
                OutOfDateConfigurationNeeded
            }
            _ => self,
        }
    }

    /// A TD 1.5's launch status with its current one.
    fn relaunch(self, current: TcbStatus) -> TcbStatus {
        use TcbStatus::*;
        let config = |s| {
            matches!(
                s,
                ConfigurationNeeded
                    | OutOfDateConfigurationNeeded
                    | ConfigurationAndSWHardeningNeeded
                    | TDRelaunchAdvisedConfigurationNeeded
            )
        };
        match (self, current) {
            (
                OutOfDate | OutOfDateConfigurationNeeded,
                UpToDate
                | SWHardeningNeeded
                | ConfigurationNeeded
                | ConfigurationAndSWHardeningNeeded,
            ) => {
                if config(self) || config(current) {
                    TDRelaunchAdvisedConfigurationNeeded
                } else {
                    TDRelaunchAdvised
                }
            }
            _ => self,
        }
    }
}

/// The outcome of [`evaluate`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcbVerdict {
    /// The converged status.
    pub status: TcbStatus,
    /// Intel security advisories of the matched levels.
    pub advisory_ids: Vec<String>,
}

/// One TCB level: its SVNs, status, advisories.
#[derive(Clone, Debug)]
struct Level {
    sgx: Vec<u8>,
    tdx: Vec<u8>,
    pce_svn: u16,
    status: TcbStatus,
    advisories: Vec<String>,
}

fn svns(v: &Value, key: &str) -> anyhow::Result<Vec<u8>> {
    match v.get(key) {
        None => Ok(Vec::new()),
        Some(Value::Array(list)) => list
            .iter()
            .map(|c| {
                c.get("svn")
                    .and_then(Value::as_u64)
                    .and_then(|s| u8::try_from(s).ok())
                    .ok_or_else(|| anyhow!("{key} has a component without an SVN"))
            })
            .collect(),
        Some(_) => bail!("{key} is not a list"),
    }
}

fn advisories(level: &Value) -> Vec<String> {
    level
        .get("advisoryIDs")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

fn status_of(level: &Value) -> anyhow::Result<TcbStatus> {
    TcbStatus::parse(
        level
            .get("tcbStatus")
            .and_then(Value::as_str)
            .ok_or_else(|| anyhow!("a TCB level has no tcbStatus"))?,
    )
}

fn levels(tcb_info: &Value) -> anyhow::Result<Vec<Level>> {
    let mut out = Vec::new();
    for level in tcb_info
        .get("tcbLevels")
        .and_then(Value::as_array)
        .ok_or_else(|| anyhow!("TCB info has no tcbLevels"))?
    {
        let tcb = level
            .get("tcb")
            .ok_or_else(|| anyhow!("a TCB level has no tcb"))?;
        out.push(Level {
            sgx: svns(tcb, "sgxtcbcomponents")?,
            tdx: svns(tcb, "tdxtcbcomponents")?,
            pce_svn: tcb
                .get("pcesvn")
                .and_then(Value::as_u64)
                .and_then(|v| u16::try_from(v).ok())
                .ok_or_else(|| anyhow!("a TCB level has no pcesvn"))?,
            status: status_of(level)?,
            advisories: advisories(level),
        });
    }
    // Highest first, as Intel orders them (and as QVL re-sorts them).
    out.sort_by(|a, b| {
        b.sgx
            .cmp(&a.sgx)
            .then_with(|| b.pce_svn.cmp(&a.pce_svn))
            .then_with(|| b.tdx.cmp(&a.tdx))
    });
    Ok(out)
}

/// The first level the platform meets: every SGX component and the PCE SVN of the PCK
/// certificate, and every TDX component of TEE_TCB_SVN (its first two bytes are the module's
/// and judged by the module identity when byte 1 is set).
fn platform_level<'a>(
    levels: &'a [Level],
    pck: &PckTcb,
    tee_tcb_svn: &[u8; 16],
) -> anyhow::Result<&'a Level> {
    let skip = if tee_tcb_svn[1] > 0 { 2 } else { 0 };
    levels
        .iter()
        .find(|l| {
            l.sgx.len() == 16
                && l.tdx.len() == 16
                && pck
                    .cpu_svn
                    .iter()
                    .zip(&l.sgx)
                    .all(|(have, need)| have >= need)
                && pck.pce_svn >= l.pce_svn
                && tee_tcb_svn
                    .iter()
                    .zip(&l.tdx)
                    .skip(skip)
                    .all(|(have, need)| have >= need)
        })
        .ok_or_else(|| {
            anyhow!(
                "no TCB level matches the platform (CPU SVN {}, PCE SVN {}, TEE_TCB_SVN {})",
                hex::encode(pck.cpu_svn),
                pck.pce_svn,
                hex::encode(tee_tcb_svn)
            )
        })
}

/// The TDX module identity for TEE_TCB_SVN's module version (byte 1), if it has one.
fn module_identity<'a>(
    tcb_info: &'a Value,
    tee_tcb_svn: &[u8; 16],
) -> anyhow::Result<Option<&'a Value>> {
    if tee_tcb_svn[1] == 0 {
        return Ok(None);
    }
    let wanted = format!("TDX_{:02X}", tee_tcb_svn[1]);
    tcb_info
        .get("tdxModuleIdentities")
        .and_then(Value::as_array)
        .and_then(|ids| {
            ids.iter().find(|id| {
                id.get("id")
                    .and_then(Value::as_str)
                    .is_some_and(|i| i.eq_ignore_ascii_case(&wanted))
            })
        })
        .map(Some)
        .ok_or_else(|| anyhow!("the TCB info has no TDX module identity {wanted}"))
}

fn hex_array<const N: usize>(v: &Value, key: &str) -> anyhow::Result<[u8; N]> {
    let bytes = v
        .get(key)
        .and_then(Value::as_str)
        .and_then(|h| hex::decode(h).ok())
        .ok_or_else(|| anyhow!("{key} is missing or not hex"))?;
    <[u8; N]>::try_from(bytes.as_slice()).map_err(|_| anyhow!("{key} is not {N} bytes"))
}

/// Masked comparison: the masked bits equal the expected ones.
fn masked_equal(actual: &[u8], expected: &[u8], mask: &[u8]) -> bool {
    actual
        .iter()
        .zip(expected)
        .zip(mask)
        .all(|((a, e), m)| a & m == e & m)
}

/// The TCB status of one TEE_TCB_SVN: the platform level converged with the module's.
fn tdx_status(
    tcb_info: &Value,
    levels: &[Level],
    pck: &PckTcb,
    tee_tcb_svn: &[u8; 16],
) -> anyhow::Result<(TcbStatus, Vec<String>)> {
    let level = platform_level(levels, pck, tee_tcb_svn)?;
    let mut status = level.status;
    let mut found = level.advisories.clone();
    if let Some(identity) = module_identity(tcb_info, tee_tcb_svn)? {
        let module_levels = identity
            .get("tcbLevels")
            .and_then(Value::as_array)
            .ok_or_else(|| anyhow!("the TDX module identity has no tcbLevels"))?;
        let matched = module_levels
            .iter()
            .find(|l| {
                l.get("tcb")
                    .and_then(|t| t.get("isvsvn"))
                    .and_then(Value::as_u64)
                    .is_some_and(|need| u64::from(tee_tcb_svn[0]) >= need)
            })
            .ok_or_else(|| {
                anyhow!(
                    "the TDX module SVN {} is below every module TCB level",
                    tee_tcb_svn[0]
                )
            })?;
        status = status.converge(status_of(matched)?);
        for a in advisories(matched) {
            if !found.contains(&a) {
                found.push(a);
            }
        }
    }
    Ok((status, found))
}

/// Checks a signed collateral body: its issuer chain to `roots` at `at`, the ECDSA P-256
/// signature (r || s) over the body's exact bytes, and its issue/next-update window.
fn check_signed(
    what: &str,
    body: &str,
    signature: &[u8],
    chain: &[Certificate],
    roots: &[Certificate],
    crls: &[CertificateList],
    at: SystemTime,
) -> anyhow::Result<(Value, String)> {
    let signer = chain
        .first()
        .ok_or_else(|| anyhow!("{what}: empty issuer chain"))?;
    let path = x509::verify_path_certs(signer, &chain[1..], roots, at)
        .with_context(|| format!("{what} issuer chain"))?;
    x509::check_revocation(&path, crls, at).with_context(|| format!("{what} issuer chain"))?;
    let signature = p256::ecdsa::Signature::from_slice(signature)
        .map_err(|e| anyhow!("{what} signature: {e}"))?;
    x509::p256_key(signer)?
        .verify(body.as_bytes(), &signature)
        .map_err(|_| {
            anyhow!(
                "the {what} signature does not verify with {}",
                x509::subject(signer)
            )
        })?;
    let v: Value = serde_json::from_str(body).with_context(|| format!("{what} is not JSON"))?;
    let issued = parse_time(
        v.get("issueDate")
            .and_then(Value::as_str)
            .unwrap_or_default(),
    )?;
    let next = parse_time(
        v.get("nextUpdate")
            .and_then(Value::as_str)
            .unwrap_or_default(),
    )?;
    ensure!(
        at >= issued,
        "the {what} is not valid before its issue date {}",
        v["issueDate"]
    );
    ensure!(
        at <= next,
        "the {what} expired at its next update {}",
        v["nextUpdate"]
    );
    let detail = format!(
        "signed by {}, current ({} to {})",
        x509::subject(signer),
        v["issueDate"],
        v["nextUpdate"]
    );
    Ok((v, detail))
}

/// Runs the collateral checks of a verified quote into `checks`: `tcb_info` and
/// `qe_identity` (signed, current, for this platform and QE), `qe_identity_match` (the QE
/// report against the identity), `tdx_module` (the SEAM signer and attributes), and
/// `tcb_status` (passes only when the converged status is UpToDate). Returns the verdict
/// when it could be computed.
pub fn evaluate(
    quote: &VerifiedQuote,
    collateral: &Collateral,
    roots: &[Certificate],
    crls: &[CertificateList],
    at: SystemTime,
    checks: &mut Checks,
) -> Option<TcbVerdict> {
    let pck = quote.chain.first()?;
    let pck_tcb = checks.run("pck_tcb", || {
        let t = pck_tcb(pck)?;
        let detail = format!(
            "FMSPC {}, PCE SVN {}, CPU SVN {}",
            hex::encode(&t.fmspc),
            t.pce_svn,
            hex::encode(t.cpu_svn)
        );
        Ok((t, detail))
    })?;
    let tcb_info = checks.run("tcb_info", || {
        let (v, detail) = check_signed(
            "TCB info",
            &collateral.tcb_info,
            &collateral.tcb_info_signature,
            &collateral.tcb_info_chain,
            roots,
            crls,
            at,
        )?;
        ensure!(
            v.get("id").and_then(Value::as_str) == Some("TDX"),
            "the TCB info is not TDX's (id {})",
            v["id"]
        );
        ensure!(
            v.get("version")
                .and_then(Value::as_u64)
                .is_some_and(|n| n >= 3),
            "the TCB info version {} is not 3 or later",
            v["version"]
        );
        let fmspc = v
            .get("fmspc")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_ascii_lowercase();
        ensure!(
            fmspc == hex::encode(&pck_tcb.fmspc),
            "the TCB info is for FMSPC {fmspc}, the PCK certificate's is {}",
            hex::encode(&pck_tcb.fmspc)
        );
        let pce_id = v
            .get("pceId")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_ascii_lowercase();
        ensure!(
            pce_id == hex::encode(&pck_tcb.pce_id),
            "the TCB info is for PCE-ID {pce_id}, the PCK certificate's is {}",
            hex::encode(&pck_tcb.pce_id)
        );
        Ok((v, detail))
    });
    let qe_identity = checks.run("qe_identity", || {
        let (v, detail) = check_signed(
            "QE identity",
            &collateral.qe_identity,
            &collateral.qe_identity_signature,
            &collateral.qe_identity_chain,
            roots,
            crls,
            at,
        )?;
        ensure!(
            v.get("id").and_then(Value::as_str) == Some("TD_QE"),
            "the QE identity is not the TD QE's (id {})",
            v["id"]
        );
        Ok((v, detail))
    });
    let qe = quote.qe_report.as_slice();
    let qe_status = qe_identity.as_ref().and_then(|id| {
        checks.run("qe_identity_match", || {
            ensure!(qe.len() == 384, "the QE report is {} bytes", qe.len());
            let mrsigner: [u8; 32] = hex_array(id, "mrsigner")?;
            ensure!(
                qe[128..160] == mrsigner,
                "the QE's MRSIGNER {} is not {}",
                hex::encode(&qe[128..160]),
                hex::encode(mrsigner)
            );
            let prod = u16::from_le_bytes([qe[256], qe[257]]);
            let want = id
                .get("isvprodid")
                .and_then(Value::as_u64)
                .unwrap_or(u64::MAX);
            ensure!(
                u64::from(prod) == want,
                "the QE's ISVPRODID {prod} is not {want}"
            );
            let misc: [u8; 4] = hex_array(id, "miscselect")?;
            let misc_mask: [u8; 4] = hex_array(id, "miscselectMask")?;
            ensure!(
                masked_equal(&qe[16..20], &misc, &misc_mask),
                "the QE's MISCSELECT {} does not match {} under mask {}",
                hex::encode(&qe[16..20]),
                hex::encode(misc),
                hex::encode(misc_mask)
            );
            let attrs: [u8; 16] = hex_array(id, "attributes")?;
            let attrs_mask: [u8; 16] = hex_array(id, "attributesMask")?;
            ensure!(
                masked_equal(&qe[48..64], &attrs, &attrs_mask),
                "the QE's ATTRIBUTES {} do not match {} under mask {}",
                hex::encode(&qe[48..64]),
                hex::encode(attrs),
                hex::encode(attrs_mask)
            );
            let isvsvn = u16::from_le_bytes([qe[258], qe[259]]);
            let level = id
                .get("tcbLevels")
                .and_then(Value::as_array)
                .and_then(|levels| {
                    levels.iter().find(|l| {
                        l.get("tcb")
                            .and_then(|t| t.get("isvsvn"))
                            .and_then(Value::as_u64)
                            .is_some_and(|need| u64::from(isvsvn) >= need)
                    })
                })
                .ok_or_else(|| anyhow!("the QE's ISVSVN {isvsvn} is below every QE TCB level"))?;
            let status = status_of(level)?;
            Ok((
                (status, advisories(level)),
                format!(
                    "the QE (ISVSVN {isvsvn}) is the identity's, TCB level {}",
                    status.name()
                ),
            ))
        })
    });
    let tcb_info = tcb_info?;
    checks.run("tdx_module", || {
        let base = tcb_info
            .get("tdxModule")
            .ok_or_else(|| anyhow!("the TCB info has no tdxModule"))?;
        let identity = module_identity(&tcb_info, &quote.body.tee_tcb_svn)?.unwrap_or(base);
        let mrsigner: [u8; 48] = hex_array(identity, "mrsigner")?;
        ensure!(
            quote.body.mr_signer_seam == mrsigner,
            "the TDX module's MRSIGNERSEAM {} is not {}",
            hex::encode(quote.body.mr_signer_seam),
            hex::encode(mrsigner)
        );
        let attrs: [u8; 8] = hex_array(identity, "attributes")?;
        let mask: [u8; 8] = hex_array(identity, "attributesMask")?;
        let actual = quote.body.seam_attributes;
        ensure!(
            masked_equal(&actual, &attrs, &mask),
            "the TDX module's SEAMATTRIBUTES {} do not match {}",
            hex::encode(actual),
            hex::encode(attrs)
        );
        ensure!(
            actual.iter().zip(mask).all(|(a, m)| a & !m == 0),
            "the TDX module's SEAMATTRIBUTES {} set bits outside the mask {}",
            hex::encode(actual),
            hex::encode(mask)
        );
        Ok((
            (),
            format!(
                "signer and attributes of module {}",
                identity.get("id").and_then(Value::as_str).unwrap_or("TDX")
            ),
        ))
    })?;
    let (qe_level, qe_advisories) = qe_status?;
    let verdict = checks.run("tcb_level", || {
        let levels = levels(&tcb_info)?;
        let (platform, mut advisories) =
            tdx_status(&tcb_info, &levels, &pck_tcb, &quote.body.tee_tcb_svn)?;
        let mut status = platform.converge(qe_level);
        for a in &qe_advisories {
            if !advisories.contains(a) {
                advisories.push(a.clone());
            }
        }
        let mut current_note = String::new();
        if let Some(svn2) = &quote.tee_tcb_svn2 {
            let (current, _) = tdx_status(&tcb_info, &levels, &pck_tcb, svn2)
                .context("the current TCB (TEE_TCB_SVN2)")?;
            let current = current.converge(qe_level);
            ensure!(current != TcbStatus::Revoked, "the current TCB is revoked");
            status = status.relaunch(current);
            current_note = format!(", current TCB {}", current.name());
        }
        let detail = format!(
            "platform {}, QE {}{current_note}",
            platform.name(),
            qe_level.name()
        );
        Ok((
            TcbVerdict {
                status,
                advisory_ids: advisories,
            },
            detail,
        ))
    })?;
    let summary = if verdict.advisory_ids.is_empty() {
        verdict.status.name().to_string()
    } else {
        format!(
            "{} ({})",
            verdict.status.name(),
            verdict.advisory_ids.join(", ")
        )
    };
    if verdict.status == TcbStatus::UpToDate {
        checks.pass("tcb_status", summary);
    } else {
        checks.fail("tcb_status", format!("TCB status {summary}, not UpToDate"));
    }
    Some(verdict)
}
