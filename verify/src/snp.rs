//! AMD SEV-SNP attestation reports: the signed fields (at the offsets of AMD's SEV-SNP ABI
//! specification, table "ATTESTATION_REPORT Structure"), the ECDSA P-384/SHA-384 signature over
//! bytes `[0, 0x2A0)`, and the VCEK/VLEK that signed it: its hwID and TCB extensions against the
//! report, and its chain through an ASK/ASVK to a trusted ARK.
//!
//! Only bytes the signature covers are ever read into [`SnpReport`].

use std::time::SystemTime;

use anyhow::{anyhow, bail, ensure, Context};
use p384::ecdsa::signature::Verifier;
use x509_cert::Certificate;

use crate::check::Checks;
use crate::x509;

/// Size of an SNP attestation report.
pub const REPORT_LEN: usize = 1184;
/// The signature covers bytes `[0, SIGNED_LEN)`.
pub const SIGNED_LEN: usize = 0x2A0;

/// A TCB version as the report's TCB fields hold it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnpTcb {
    /// PSP bootloader SVN.
    pub bootloader: u8,
    /// PSP OS (TEE) SVN.
    pub tee: u8,
    /// SNP firmware SVN.
    pub snp: u8,
    /// Microcode patch level.
    pub microcode: u8,
}

impl std::fmt::Display for SnpTcb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "bl{}/tee{}/snp{}/ucode{}",
            self.bootloader, self.tee, self.snp, self.microcode
        )
    }
}

impl SnpTcb {
    /// Whether every component is at least `min`'s.
    pub fn at_least(&self, min: &SnpTcb) -> bool {
        self.bootloader >= min.bootloader
            && self.tee >= min.tee
            && self.snp >= min.snp
            && self.microcode >= min.microcode
    }
}

/// The report fields a verifier looks at, read from the signed bytes.
#[derive(Clone, Debug)]
pub struct SnpReport {
    /// VERSION (2-5).
    pub version: u32,
    /// The guest POLICY.
    pub policy: u64,
    /// The VMPL the report was requested at.
    pub vmpl: u32,
    /// SIGNATURE_ALGO (1 = ECDSA P-384 with SHA-384).
    pub sig_algo: u32,
    /// 0 = VCEK, 1 = VLEK, 7 = none (KEY_INFO bits 4:2).
    pub signing_key: u32,
    /// REPORT_DATA, the guest's 64 bytes.
    pub report_data: [u8; 64],
    /// MEASUREMENT, the launch digest.
    pub measurement: [u8; 48],
    /// HOST_DATA.
    pub host_data: [u8; 32],
    /// REPORTED_TCB.
    pub reported_tcb: SnpTcb,
    /// CHIP_ID (zero when masked, 8 bytes on Turin).
    pub chip_id: [u8; 64],
    /// Whether the report is from Turin (its TCB layout differs).
    pub turin: bool,
}

fn array<const N: usize>(raw: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&raw[at..at + N]);
    out
}

fn u32_at(raw: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(array(raw, at))
}

impl SnpReport {
    /// Reads a report's fields (ABI spec table "ATTESTATION_REPORT Structure").
    pub fn parse(raw: &[u8; REPORT_LEN]) -> anyhow::Result<SnpReport> {
        let version = u32_at(raw, 0x00);
        ensure!(
            (2..=5).contains(&version),
            "SNP report version {version} is not 2-5"
        );
        let chip_id: [u8; 64] = array(raw, 0x1A0);
        // Turin encodes TCB versions differently (an FMC field first). From version 3 the
        // report says its CPU family; a version 2 report from Turin has an 8-byte chip ID.
        let turin = if version >= 3 {
            raw[0x188] == 0x1A
        } else {
            chip_id[8..].iter().all(|b| *b == 0) && chip_id[..8].iter().any(|b| *b != 0)
        };
        let tcb: [u8; 8] = array(raw, 0x180);
        let reported_tcb = if turin {
            SnpTcb {
                bootloader: tcb[1],
                tee: tcb[2],
                snp: tcb[3],
                microcode: tcb[7],
            }
        } else {
            SnpTcb {
                bootloader: tcb[0],
                tee: tcb[1],
                snp: tcb[6],
                microcode: tcb[7],
            }
        };
        Ok(SnpReport {
            version,
            policy: u64::from_le_bytes(array(raw, 0x08)),
            vmpl: u32_at(raw, 0x30),
            sig_algo: u32_at(raw, 0x34),
            signing_key: (u32_at(raw, 0x48) >> 2) & 0x7,
            report_data: array(raw, 0x50),
            measurement: array(raw, 0x90),
            host_data: array(raw, 0xC0),
            reported_tcb,
            chip_id,
            turin,
        })
    }

    /// "VCEK" or "VLEK", as KEY_INFO says.
    pub fn signer_kind(&self) -> &'static str {
        if self.signing_key == 1 {
            "VLEK"
        } else {
            "VCEK"
        }
    }

    /// Whether the guest policy allows a debugger (policy bit 19).
    pub fn debug_allowed(&self) -> bool {
        self.policy & (1 << 19) != 0
    }
}

/// The report's signature as a P-384 ECDSA signature: r and s are little-endian in 72-byte
/// fields, of which only the low 48 bytes may be non-zero.
fn report_signature(raw: &[u8; REPORT_LEN]) -> anyhow::Result<p384::ecdsa::Signature> {
    let component = |at: usize| -> anyhow::Result<[u8; 48]> {
        let field = &raw[at..at + 72];
        ensure!(
            field[48..].iter().all(|b| *b == 0),
            "SNP signature component is wider than 384 bits"
        );
        let mut be = [0u8; 48];
        for (i, b) in field[..48].iter().rev().enumerate() {
            be[i] = *b;
        }
        Ok(be)
    };
    let r = component(SIGNED_LEN)?;
    let s = component(SIGNED_LEN + 72)?;
    p384::ecdsa::Signature::from_scalars(r, s)
        .map_err(|e| anyhow!("SNP signature is not a valid P-384 signature: {e}"))
}

/// Checks the report's signature with `vek` (a VCEK or VLEK certificate).
pub fn verify_report_signature(raw: &[u8; REPORT_LEN], vek: &Certificate) -> anyhow::Result<()> {
    let key = x509::p384_key(vek)?;
    let signature = report_signature(raw)?;
    key.verify(&raw[..SIGNED_LEN], &signature).map_err(|_| {
        anyhow!(
            "SNP report signature does not verify with {}",
            x509::subject(vek)
        )
    })
}

/// AMD's VCEK extensions (VCEK specification, "VCEK certificate extensions").
const EXT_BL_SPL: &str = "1.3.6.1.4.1.3704.1.3.1";
const EXT_TEE_SPL: &str = "1.3.6.1.4.1.3704.1.3.2";
const EXT_SNP_SPL: &str = "1.3.6.1.4.1.3704.1.3.3";
const EXT_UCODE_SPL: &str = "1.3.6.1.4.1.3704.1.3.8";
const EXT_HW_ID: &str = "1.3.6.1.4.1.3704.1.4";

/// The value of a DER INTEGER extension that holds an SPL (0-255).
fn spl(cert: &Certificate, oid: &str) -> anyhow::Result<Option<u8>> {
    let Some(der) = x509::extension(cert, oid) else {
        return Ok(None);
    };
    let value = match der {
        [0x02, 0x01, v] => *v,
        [0x02, 0x02, 0x00, v] if *v >= 0x80 => *v,
        _ => bail!(
            "{}: extension {oid} is not a small INTEGER",
            x509::subject(cert)
        ),
    };
    Ok(Some(value))
}

/// Checks that a VCEK was issued for this chip and the TCB the report claims, as Trustee does:
/// hwID equals CHIP_ID (its first 8 bytes on Turin), and the SPL extensions equal the reported
/// TCB. A VLEK carries no hwID; a report with a masked chip ID is not compared.
pub fn check_vek_matches_report(vek: &Certificate, report: &SnpReport) -> anyhow::Result<()> {
    if let Some(hw_id) = x509::extension(vek, EXT_HW_ID) {
        if report.chip_id.iter().any(|b| *b != 0) {
            let expected: &[u8] = if report.turin {
                &report.chip_id[..8]
            } else {
                &report.chip_id
            };
            ensure!(
                hw_id == expected,
                "the VCEK's hwID {} is not the report's CHIP_ID {}",
                hex::encode(hw_id),
                hex::encode(expected)
            );
        }
    }
    let tcb = report.reported_tcb;
    for (oid, name, value) in [
        (EXT_BL_SPL, "bootloader", tcb.bootloader),
        (EXT_TEE_SPL, "tee", tcb.tee),
        (EXT_SNP_SPL, "snp", tcb.snp),
        (EXT_UCODE_SPL, "microcode", tcb.microcode),
    ] {
        if let Some(cert_value) = spl(vek, oid)? {
            ensure!(
                cert_value == value,
                "the VCEK is for {name} SPL {cert_value}, the report's reported TCB has {value}"
            );
        }
    }
    Ok(())
}

/// A report whose signature and certificate chain verified.
#[derive(Clone, Debug)]
pub struct VerifiedSnp {
    /// The report's signed fields.
    pub report: SnpReport,
    /// Which key signed: the VEK certificate's subject.
    pub signer: String,
    /// The verified chain: the VEK first, the ARK last.
    pub chain: Vec<Certificate>,
}

/// Runs every check of a raw report into `checks`: `report` (it parses, ECDSA P-384,
/// signed by a VCEK or VLEK), `signature` (one of `veks` signed it), `vek_matches_report`
/// (that key's hwID and TCB extensions are the report's), `vek_chain` (the key chains through
/// `intermediates` to one of `roots`, every certificate valid at `at`). Does not look at
/// REPORT_DATA. Returns the report when every check passed.
pub fn verify_steps(
    raw: &[u8; REPORT_LEN],
    veks: &[Certificate],
    intermediates: &[Certificate],
    roots: &[Certificate],
    at: SystemTime,
    checks: &mut Checks,
) -> Option<VerifiedSnp> {
    let report = checks.run("report", || {
        let report = SnpReport::parse(raw)?;
        ensure!(
            report.sig_algo == 1,
            "SNP report signature algorithm {} is not ECDSA P-384 with SHA-384 (1)",
            report.sig_algo
        );
        ensure!(
            report.signing_key <= 1,
            "SNP report is not signed by a VCEK or VLEK (KEY_INFO signing key {})",
            report.signing_key
        );
        let detail = format!(
            "SNP report v{}, signed by its {}",
            report.version,
            report.signer_kind()
        );
        Ok((report, detail))
    })?;
    let vek = checks.run("signature", || {
        ensure!(
            !veks.is_empty(),
            "no {} certificate to verify with",
            report.signer_kind()
        );
        let mut last_error = None;
        for vek in veks {
            match verify_report_signature(raw, vek) {
                Ok(()) => {
                    let detail = format!("signed by {}", x509::subject(vek));
                    return Ok((vek, detail));
                }
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow!("no VCEK/VLEK to verify with")))
    })?;
    let matches = checks
        .run("vek_matches_report", || {
            check_vek_matches_report(vek, &report)?;
            Ok((
                (),
                format!(
                    "hwID and TCB extensions agree with the report (reported TCB {})",
                    report.reported_tcb
                ),
            ))
        })
        .is_some();
    let chain = checks.run("vek_chain", || {
        let path = x509::verify_path_certs(vek, intermediates, roots, at)
            .context("VCEK/VLEK certificate chain")?;
        let root = path.last().map(x509::subject).unwrap_or_default();
        Ok((path, format!("{} chains to {root}", x509::subject(vek))))
    })?;
    matches.then(|| VerifiedSnp {
        report,
        signer: x509::subject(vek),
        chain,
    })
}

/// Verifies a raw report ([`verify_steps`]); the first failure is the error. Does not look at
/// REPORT_DATA.
pub fn verify_report(
    raw: &[u8; REPORT_LEN],
    veks: &[Certificate],
    intermediates: &[Certificate],
    roots: &[Certificate],
    at: SystemTime,
) -> anyhow::Result<VerifiedSnp> {
    let mut checks = Checks::new();
    match verify_steps(raw, veks, intermediates, roots, at, &mut checks) {
        Some(verified) => Ok(verified),
        None => Err(checks
            .first_failure()
            .unwrap_or_else(|| anyhow!("SNP report did not verify"))),
    }
}
