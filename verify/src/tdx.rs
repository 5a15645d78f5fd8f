//! Intel TDX quotes (v4 and v5, TD report bodies TD10 and TD15) and the CCEL.
//!
//! [`verify_quote`] checks, for real quotes and for simulated ones alike:
//!
//! - the quote is v4 or v5, ECDSA-256 attestation key, TDX TEE type, Intel's QE vendor ID;
//! - its ECDSA P-256/SHA-256 signature over header and body verifies with the attestation key
//!   the quote carries;
//! - that key is bound to the Quoting Enclave: the QE report's REPORTDATA is
//!   SHA-256(attestation key || QE authentication data) followed by 32 zero bytes;
//! - the QE report is signed by the PCK certificate of the quote's certification data, whose
//!   chain ends in a trusted root (Intel's SGX Root CA for real quotes), every certificate valid
//!   at the verification time.
//!
//! Not checked (these need Intel's collateral from a PCCS): the TCB level of the platform and
//! of the QE (TCB info, QE identity), and revocation (CRLs).
//!
//! [`replay_ccel`] replays a CCEL to the four RTMRs.

use std::collections::BTreeMap;
use std::time::SystemTime;

use anyhow::{anyhow, bail, ensure, Context};
use p256::ecdsa::signature::Verifier;
use sha2::{Digest, Sha256, Sha384};
use x509_cert::Certificate;

use crate::check::Checks;
use crate::x509;

/// Intel's Quoting Enclave vendor ID.
pub const INTEL_QE_VENDOR_ID: [u8; 16] = [
    0x93, 0x9a, 0x72, 0x33, 0xf7, 0x9c, 0x4c, 0xa9, 0x94, 0x0a, 0x0d, 0xb3, 0x95, 0x7f, 0x06, 0x07,
];

const TD10_BODY_LEN: usize = 584;
const TD15_BODY_LEN: usize = 648;
const QE_REPORT_LEN: usize = 384;
/// Offset of REPORTDATA in an SGX report body (the QE report).
const QE_REPORT_DATA_AT: usize = 320;

/// The TD report body fields the broker looks at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TdReport {
    /// TEE_TCB_SVN.
    pub tee_tcb_svn: [u8; 16],
    /// MRSEAM, the TDX module's measurement.
    pub mr_seam: [u8; 48],
    /// MRSIGNERSEAM, the TDX module signer (zero for Intel's modules).
    pub mr_signer_seam: [u8; 48],
    /// SEAMATTRIBUTES.
    pub seam_attributes: [u8; 8],
    /// TD_ATTRIBUTES.
    pub td_attributes: [u8; 8],
    /// XFAM.
    pub xfam: [u8; 8],
    /// MRTD, the TD's build-time measurement.
    pub mr_td: [u8; 48],
    /// MRCONFIGID.
    pub mr_config_id: [u8; 48],
    /// RTMR0-3.
    pub rtmrs: [[u8; 48]; 4],
    /// REPORTDATA, the guest's 64 bytes.
    pub report_data: [u8; 64],
}

impl TdReport {
    fn parse(body: &[u8]) -> TdReport {
        let a48 = |at: usize| -> [u8; 48] {
            let mut out = [0u8; 48];
            out.copy_from_slice(&body[at..at + 48]);
            out
        };
        let mut tee_tcb_svn = [0u8; 16];
        tee_tcb_svn.copy_from_slice(&body[0..16]);
        let mut td_attributes = [0u8; 8];
        td_attributes.copy_from_slice(&body[120..128]);
        let mut xfam = [0u8; 8];
        xfam.copy_from_slice(&body[128..136]);
        let mut report_data = [0u8; 64];
        report_data.copy_from_slice(&body[520..584]);
        let mut seam_attributes = [0u8; 8];
        seam_attributes.copy_from_slice(&body[112..120]);
        TdReport {
            tee_tcb_svn,
            mr_seam: a48(16),
            mr_signer_seam: a48(64),
            seam_attributes,
            td_attributes,
            xfam,
            mr_td: a48(136),
            mr_config_id: a48(184),
            rtmrs: [a48(328), a48(376), a48(424), a48(472)],
            report_data,
        }
    }

    /// TD_ATTRIBUTES.DEBUG (bit 0).
    pub fn debug(&self) -> bool {
        self.td_attributes[0] & 1 != 0
    }
}

/// A parsed quote; slices borrow the quote bytes.
pub struct Quote<'a> {
    /// The quote version (4 or 5).
    pub version: u16,
    /// The TD report body (its TD10 part).
    pub body: TdReport,
    /// TEE_TCB_SVN2 of a TD 1.5 body (the current TCB after a TD-preserving update).
    pub tee_tcb_svn2: Option<[u8; 16]>,
    /// Header and body: what the attestation key signs.
    signed: &'a [u8],
    signature: &'a [u8],
    attestation_key: &'a [u8],
    /// The QE's SGX report body (384 bytes), signed by the PCK key.
    pub qe_report: &'a [u8],
    qe_report_signature: &'a [u8],
    qe_auth_data: &'a [u8],
    pck_chain_pem: &'a [u8],
}

/// A bounds-checked reader over the quote.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> anyhow::Result<&'a [u8]> {
        let end = self
            .at
            .checked_add(n)
            .filter(|end| *end <= self.bytes.len())
            .ok_or_else(|| anyhow!("TDX quote truncated in {what}"))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }
    fn u16(&mut self, what: &str) -> anyhow::Result<u16> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self, what: &str) -> anyhow::Result<u32> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

impl<'a> Quote<'a> {
    /// Parses a v4/v5 TDX quote (Intel TDX DCAP Quote Generation Library and Quote Verification
    /// Library API, appendix "Quote format"). Bytes after the signature data are ignored, as
    /// Intel's verifier does.
    pub fn parse(bytes: &'a [u8]) -> anyhow::Result<Quote<'a>> {
        let mut c = Cursor { bytes, at: 0 };
        let version = c.u16("header")?;
        let att_key_type = c.u16("header")?;
        let tee_type = c.u32("header")?;
        c.take(4, "header")?; // QE SVN and PCE SVN (v4) or reserved
        let qe_vendor_id = c.take(16, "header")?;
        c.take(20, "header")?; // user data
        ensure!(
            att_key_type == 2,
            "TDX quote attestation key type {att_key_type} is not ECDSA-256-with-P-256 (2)"
        );
        ensure!(
            tee_type == 0x81,
            "TDX quote TEE type {tee_type:#x} is not TDX (0x81)"
        );
        ensure!(
            qe_vendor_id == INTEL_QE_VENDOR_ID,
            "TDX quote QE vendor ID {} is not Intel's",
            hex::encode(qe_vendor_id)
        );
        let body = match version {
            4 => c.take(TD10_BODY_LEN, "TD report body")?,
            5 => {
                let body_type = c.u16("body descriptor")?;
                let size = c.u32("body descriptor")? as usize;
                let expected = match body_type {
                    2 => TD10_BODY_LEN,
                    3 => TD15_BODY_LEN,
                    other => bail!("TDX quote v5 body type {other} is not a TD report (2 or 3)"),
                };
                ensure!(
                    size == expected,
                    "TDX quote v5 body type {body_type} has size {size}, expected {expected}"
                );
                c.take(size, "TD report body")?
            }
            other => bail!("TDX quote version {other} is not 4 or 5"),
        };
        let signed = &bytes[..c.at];
        let sig_data_len = c.u32("signature data length")? as usize;
        let sig_data = c.take(sig_data_len, "signature data")?;
        let mut s = Cursor {
            bytes: sig_data,
            at: 0,
        };
        let signature = s.take(64, "quote signature")?;
        let attestation_key = s.take(64, "attestation key")?;
        let cert_type = s.u16("certification data type")?;
        ensure!(
            cert_type == 6,
            "TDX quote certification data type {cert_type} is not a QE report (6)"
        );
        let qe_len = s.u32("certification data size")? as usize;
        let qe_data = s.take(qe_len, "QE report certification data")?;
        let mut q = Cursor {
            bytes: qe_data,
            at: 0,
        };
        let qe_report = q.take(QE_REPORT_LEN, "QE report")?;
        let qe_report_signature = q.take(64, "QE report signature")?;
        let auth_len = q.u16("QE authentication data size")? as usize;
        let qe_auth_data = q.take(auth_len, "QE authentication data")?;
        let pck_type = q.u16("PCK certification data type")?;
        ensure!(
            pck_type == 5,
            "TDX quote QE certification data type {pck_type} is not a PCK chain (5)"
        );
        let pck_len = q.u32("PCK certification data size")? as usize;
        let pck_chain_pem = q.take(pck_len, "PCK certificate chain")?;
        Ok(Quote {
            version,
            body: TdReport::parse(&body[..TD10_BODY_LEN]),
            tee_tcb_svn2: body
                .get(TD10_BODY_LEN..TD10_BODY_LEN + 16)
                .and_then(|b| <[u8; 16]>::try_from(b).ok()),
            signed,
            signature,
            attestation_key,
            qe_report,
            qe_report_signature,
            qe_auth_data,
            pck_chain_pem,
        })
    }
}

/// An ECDSA P-256 signature given as r || s (32 bytes each, big-endian).
fn p256_signature(raw: &[u8]) -> anyhow::Result<p256::ecdsa::Signature> {
    p256::ecdsa::Signature::from_slice(raw).map_err(|e| anyhow!("invalid P-256 signature: {e}"))
}

/// A quote whose signatures and PCK chain verified.
#[derive(Debug)]
pub struct VerifiedQuote {
    /// The quote version (4 or 5).
    pub version: u16,
    /// The TD report body (its TD10 part).
    pub body: TdReport,
    /// TEE_TCB_SVN2 of a TD 1.5 body.
    pub tee_tcb_svn2: Option<[u8; 16]>,
    /// The QE's report body, which the PCK key signed.
    pub qe_report: Vec<u8>,
    /// The PCK leaf's subject.
    pub pck: String,
    /// The verified chain: the PCK leaf first, the root last.
    pub chain: Vec<Certificate>,
}

/// Runs every check of a quote into `checks`: `quote` (it parses), `signature` (the
/// attestation key signed header and body), `qe_binding` (the QE report binds that key),
/// `qe_report_signature` (the PCK certificate signed the QE report), `pck_chain` (the PCK
/// chain ends in one of `roots`, every certificate valid at `at`). Does not look at
/// REPORTDATA. Returns the quote when every check passed.
pub fn verify_steps(
    bytes: &[u8],
    roots: &[Certificate],
    at: SystemTime,
    checks: &mut Checks,
) -> Option<VerifiedQuote> {
    let quote = checks.run("quote", || {
        let q = Quote::parse(bytes)?;
        let detail = format!("TDX quote v{}, {} bytes", q.version, bytes.len());
        Ok((q, detail))
    })?;
    let signed = checks
        .run("signature", || {
            let mut sec1 = Vec::with_capacity(65);
            sec1.push(0x04);
            sec1.extend_from_slice(quote.attestation_key);
            let attestation_key = p256::ecdsa::VerifyingKey::from_sec1_bytes(&sec1)
                .map_err(|e| anyhow!("TDX attestation key is not a P-256 point: {e}"))?;
            attestation_key
                .verify(quote.signed, &p256_signature(quote.signature)?)
                .map_err(|_| {
                    anyhow!("TDX quote signature does not verify with its attestation key")
                })?;
            Ok((
                (),
                "header and body signed by the quote's attestation key".into(),
            ))
        })
        .is_some();
    let bound = checks
        .run("qe_binding", || {
            let mut hasher = Sha256::new();
            hasher.update(quote.attestation_key);
            hasher.update(quote.qe_auth_data);
            let binding = hasher.finalize();
            let qe_report_data = &quote.qe_report[QE_REPORT_DATA_AT..QE_REPORT_DATA_AT + 64];
            ensure!(
                qe_report_data[..32] == binding[..] && qe_report_data[32..].iter().all(|b| *b == 0),
                "the QE report does not bind the attestation key (REPORTDATA {} is not \
                 SHA-256(key || auth data) {})",
                hex::encode(qe_report_data),
                hex::encode(binding)
            );
            Ok((
                (),
                "the QE report's REPORTDATA is SHA-256(attestation key || QE auth data)".into(),
            ))
        })
        .is_some();
    let chain = checks.run("qe_report_signature", || {
        // Intel's QE ends the PEM text with a NUL.
        let pem_end = quote
            .pck_chain_pem
            .iter()
            .rposition(|b| *b != 0)
            .map_or(0, |i| i + 1);
        let chain =
            x509::pem_chain(&quote.pck_chain_pem[..pem_end]).context("PCK certificate chain")?;
        let pck = &chain[0];
        x509::p256_key(pck)?
            .verify(quote.qe_report, &p256_signature(quote.qe_report_signature)?)
            .map_err(|_| {
                anyhow!(
                    "the QE report signature does not verify with the PCK certificate {}",
                    x509::subject(pck)
                )
            })?;
        let detail = format!("signed by {}", x509::subject(pck));
        Ok((chain, detail))
    })?;
    let pck = &chain[0];
    let path = checks.run("pck_chain", || {
        let path = x509::verify_path_certs(pck, &chain[1..], roots, at)
            .context("PCK certificate chain")?;
        let root = path.last().map(x509::subject).unwrap_or_default();
        Ok((path, format!("{} chains to {root}", x509::subject(pck))))
    })?;
    (signed && bound).then(|| VerifiedQuote {
        version: quote.version,
        body: quote.body,
        tee_tcb_svn2: quote.tee_tcb_svn2,
        qe_report: quote.qe_report.to_vec(),
        pck: x509::subject(pck),
        chain: path,
    })
}

/// Verifies a quote's signature, its binding to the QE, the QE report's signature and the
/// PCK chain ([`verify_steps`]); the first failure is the error. Does not look at REPORTDATA.
pub fn verify_quote(
    bytes: &[u8],
    roots: &[Certificate],
    at: SystemTime,
) -> anyhow::Result<VerifiedQuote> {
    let mut checks = Checks::new();
    match verify_steps(bytes, roots, at, &mut checks) {
        Some(verified) => Ok(verified),
        None => Err(checks
            .first_failure()
            .unwrap_or_else(|| anyhow!("TDX quote did not verify"))),
    }
}

/// The result of replaying a CCEL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replay {
    /// The replayed RTMR0-3.
    pub rtmrs: [[u8; 48]; 4],
    /// Events that extended an RTMR.
    pub extends: usize,
}

/// TCG algorithm ID of SHA-384.
const TPM_ALG_SHA384: u16 = 0x000c;
/// EV_NO_ACTION: informational, never extended.
const EV_NO_ACTION: u32 = 0x3;

/// Replays a CCEL (TCG crypto-agile event log with CC MR indices): each event's SHA-384
/// digest extends RTMR[index - 1] for index 1-4; index 0 (MRTD) is measured by the TDX
/// module and not replayed. The log ends at its end, or at 8 bytes of 0xFF or zero (the
/// padding of the ACPI area, or the marker the guest side appends).
pub fn replay_ccel(log: &[u8]) -> anyhow::Result<Replay> {
    let mut c = Cursor { bytes: log, at: 0 };
    // The first event is in the SHA-1 format and must be the Spec ID event that lists the
    // digest sizes of the crypto-agile events.
    c.u32("first event")?;
    let first_type = c.u32("first event")?;
    ensure!(
        first_type == EV_NO_ACTION,
        "CCEL first event type {first_type:#x} is not EV_NO_ACTION (the Spec ID event)"
    );
    c.take(20, "first event")?;
    let spec_len = c.u32("Spec ID event")? as usize;
    let spec = c.take(spec_len, "Spec ID event")?;
    let mut s = Cursor { bytes: spec, at: 0 };
    let signature = s.take(16, "Spec ID signature")?;
    ensure!(
        signature == b"Spec ID Event03\0",
        "CCEL does not start with a crypto-agile Spec ID event"
    );
    s.take(8, "Spec ID event")?; // platform class, versions, uintn size
    let algorithms = s.u32("Spec ID algorithm count")?;
    ensure!(
        algorithms <= 16,
        "CCEL lists {algorithms} digest algorithms"
    );
    let mut sizes = BTreeMap::new();
    for _ in 0..algorithms {
        let id = s.u16("Spec ID algorithm")?;
        let size = s.u16("Spec ID algorithm")?;
        sizes.insert(id, usize::from(size));
    }
    ensure!(
        sizes.get(&TPM_ALG_SHA384) == Some(&48),
        "CCEL has no SHA-384 digests"
    );

    let mut rtmrs = [[0u8; 48]; 4];
    let mut extends = 0;
    loop {
        let rest = &log[c.at..];
        if rest.is_empty() {
            break;
        }
        if rest.len() >= 8 && (rest[..8].iter().all(|b| *b == 0xFF) || rest[..8] == [0u8; 8]) {
            break;
        }
        let index = c.u32("event")?;
        let event_type = c.u32("event")?;
        let count = c.u32("event digest count")?;
        ensure!(count <= 16, "CCEL event with {count} digests");
        let mut sha384 = None;
        for _ in 0..count {
            let alg = c.u16("event digest")?;
            let size = *sizes
                .get(&alg)
                .ok_or_else(|| anyhow!("CCEL event digest algorithm {alg:#x} is not listed"))?;
            let digest = c.take(size, "event digest")?;
            if alg == TPM_ALG_SHA384 {
                sha384 = Some(digest);
            }
        }
        let size = c.u32("event data size")? as usize;
        c.take(size, "event data")?;
        if event_type == EV_NO_ACTION || index == 0 {
            continue;
        }
        ensure!(
            (1..=4).contains(&index),
            "CCEL event for CC MR index {index}, which is not 0-4"
        );
        let digest = sha384.ok_or_else(|| anyhow!("CCEL event without a SHA-384 digest"))?;
        let rtmr = &mut rtmrs[index as usize - 1];
        let mut h = Sha384::new();
        h.update(&rtmr[..]);
        h.update(digest);
        rtmr.copy_from_slice(&h.finalize());
        extends += 1;
    }
    Ok(Replay { rtmrs, extends })
}
