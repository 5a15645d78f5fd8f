//! Intel TDX quotes (versions 4 and 5, ECDSA P-256 attestation key) and the 1024-byte
//! TDREPORT, all little-endian.
//!
//! A quote is a 48-byte header, a TD report body (v4: always the 584-byte TDX 1.0 body; v5: a
//! 6-byte descriptor saying TDX 1.0 (type 2, 584 bytes) or TDX 1.5 (type 3, 648 bytes)), then
//! a `u32` length and the signature data: the ECDSA signature over header and body, the
//! attestation key, and certification data. Certification data type 6 wraps the quoting
//! enclave's report, its signature by the PCK, the QE authentication data and, nested, the
//! PCK certificate chain (type 5, PEM). Lengths are parsed and checked; signatures and
//! certificates are exposed as raw bytes for a verifier to check.

use super::reader::Reader;
use super::{check_max, FormatError};

const WHAT: &str = "TDX quote";
const WHAT_SIG: &str = "TDX quote signature data";
const WHAT_CERT: &str = "TDX quote certification data";
const WHAT_TDREPORT: &str = "TDREPORT";

/// The TEE type of TDX in the quote header (SGX is 0).
pub(crate) const TEE_TYPE_TDX: u32 = 0x81;
/// Attestation key type 2: ECDSA P-256 with SHA-256, the only type Intel's QE produces.
pub(crate) const ATT_KEY_TYPE_ECDSA_P256: u16 = 2;
/// The size of the quote header.
#[cfg(test)]
const HEADER_SIZE: usize = 48;
/// The size of a TDX 1.0 TD report body.
pub(crate) const BODY_SIZE_TD10: usize = 584;
/// The size of a TDX 1.5 TD report body.
pub(crate) const BODY_SIZE_TD15: usize = 648;
/// The size of an SGX enclave report (the QE report).
pub(crate) const ENCLAVE_REPORT_SIZE: usize = 384;
/// The largest signature data accepted. Real quotes carry about 4.3 KiB (most of it the PEM
/// chain); the cap only stops a forged length from describing a huge region.
pub(crate) const MAX_SIGNATURE_DATA: usize = 64 * 1024;

/// Certification data type 5: the PCK leaf, intermediate and root as concatenated PEM.
pub(crate) const CERT_TYPE_PCK_CHAIN: u16 = 5;
/// Certification data type 6: the QE report certification data.
pub(crate) const CERT_TYPE_QE_REPORT: u16 = 6;

/// A parsed TDX quote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TdxQuote {
    /// The 48-byte header.
    pub header: QuoteHeader,
    /// The body type: 2 for TDX 1.0, 3 for TDX 1.5 (v4 quotes are always 2).
    pub body_type: u16,
    /// The TD report body.
    pub body: TdQuoteBody,
    /// The header and body (and, for v5, the body descriptor): what the ECDSA signature
    /// covers.
    pub signed_bytes: Vec<u8>,
    /// The signature data after the body.
    pub signature: QuoteSignatureData,
}

/// The quote header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuoteHeader {
    /// 4 or 5.
    pub version: u16,
    /// 2 (ECDSA P-256).
    pub att_key_type: u16,
    /// 0x81 (TDX).
    pub tee_type: u32,
    /// Reserved bytes 8..12 (QE and PCE SVN in older quote versions).
    pub reserved: [u8; 4],
    /// The QE vendor ID (`939a7233f79c4ca9940a0db3957f0607` for Intel).
    pub qe_vendor_id: [u8; 16],
    /// Custom data of the quote generator (Intel's QE puts a platform identifier here).
    pub user_data: [u8; 20],
}

/// The TD report body of a quote (TDX 1.0 fields, plus the TDX 1.5 ones when present).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TdQuoteBody {
    /// TEE TCB SVN of the TDX module.
    pub tee_tcb_svn: [u8; 16],
    /// Measurement of the TDX module.
    pub mr_seam: [u8; 48],
    /// Signer of the TDX module (zero for Intel's).
    pub mr_signer_seam: [u8; 48],
    /// Attributes of the TDX module.
    pub seam_attributes: [u8; 8],
    /// TD attributes (bit 0 = debug).
    pub td_attributes: [u8; 8],
    /// The XSAVE feature mask allowed to the TD.
    pub xfam: [u8; 8],
    /// The build-time measurement of the TD (firmware).
    pub mr_td: [u8; 48],
    /// Software-defined configuration ID (the init-data digest, when used).
    pub mr_config_id: [u8; 48],
    /// Software-defined owner ID.
    pub mr_owner: [u8; 48],
    /// Software-defined owner configuration.
    pub mr_owner_config: [u8; 48],
    /// The run-time measurement registers RTMR0 to RTMR3.
    pub rtmrs: [[u8; 48]; 4],
    /// Guest-supplied data, where the broker's binding digest goes.
    pub report_data: [u8; 64],
    /// TEE TCB SVN 2 (TDX 1.5 bodies only).
    pub tee_tcb_svn2: Option<[u8; 16]>,
    /// Measurement of the service TD bound to this TD (TDX 1.5 bodies only).
    pub mr_servicetd: Option<[u8; 48]>,
}

impl TdQuoteBody {
    /// Whether the TD runs with debug enabled (bit 0 of the TD attributes): its memory is
    /// then readable by the host, so nothing it reports can be trusted.
    pub fn debug(&self) -> bool {
        self.td_attributes.first().is_some_and(|b| b & 1 != 0)
    }
}

/// The signature data of a quote with an ECDSA P-256 attestation key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuoteSignatureData {
    /// The declared length of the signature data.
    pub length: u32,
    /// ECDSA P-256 signature (`r ‖ s`, big-endian) over [`TdxQuote::signed_bytes`].
    pub signature: [u8; 64],
    /// The attestation key (`x ‖ y`, big-endian, no SEC1 prefix).
    pub attestation_key: [u8; 64],
    /// Certification data: how to chain the attestation key to Intel.
    pub certification: CertificationData,
}

/// Certification data of a quote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertificationData {
    /// Type 6: the QE report, signed by the PCK, with nested certification data.
    QeReport(Box<QeReportCertification>),
    /// Type 5: the PCK certificate chain as concatenated PEM (often NUL-terminated).
    PckChain(Vec<u8>),
    /// Any other type, kept raw.
    Other {
        /// The certification data type.
        cert_type: u16,
        /// The raw data.
        data: Vec<u8>,
    },
}

impl CertificationData {
    /// The PCK certificate chain (PEM), found directly or inside the QE report data.
    pub fn pck_chain_pem(&self) -> Option<&[u8]> {
        match self {
            CertificationData::PckChain(pem) => Some(pem),
            CertificationData::QeReport(qe) => qe.certification.pck_chain_pem(),
            CertificationData::Other { .. } => None,
        }
    }

    /// The type number of this certification data.
    pub fn cert_type(&self) -> u16 {
        match self {
            CertificationData::QeReport(_) => CERT_TYPE_QE_REPORT,
            CertificationData::PckChain(_) => CERT_TYPE_PCK_CHAIN,
            CertificationData::Other { cert_type, .. } => *cert_type,
        }
    }
}

/// Certification data type 6.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QeReportCertification {
    /// The quoting enclave's SGX report.
    pub qe_report: EnclaveReport,
    /// The raw 384 bytes of the QE report: what the PCK signed.
    pub qe_report_raw: Vec<u8>,
    /// ECDSA P-256 signature of the QE report by the PCK key (`r ‖ s`).
    pub qe_report_signature: [u8; 64],
    /// QE authentication data (hashed with the attestation key into the QE report data).
    pub qe_auth_data: Vec<u8>,
    /// The nested certification data (normally type 5, the PCK chain).
    pub certification: CertificationData,
}

/// An SGX enclave report (`sgx_report_body_t`), here the quoting enclave's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnclaveReport {
    /// CPU security version.
    pub cpu_svn: [u8; 16],
    /// MISCSELECT.
    pub misc_select: u32,
    /// Enclave attributes.
    pub attributes: [u8; 16],
    /// MRENCLAVE.
    pub mr_enclave: [u8; 32],
    /// MRSIGNER.
    pub mr_signer: [u8; 32],
    /// ISV product ID.
    pub isv_prod_id: u16,
    /// ISV security version (the QE SVN).
    pub isv_svn: u16,
    /// Report data: SHA-256(attestation key ‖ QE authentication data) then 32 zero bytes.
    pub report_data: [u8; 64],
}

/// Parses a TDX quote that may be followed by zero padding.
///
/// Quotes read from fixed-size buffers (a cloud metadata service, some test fixtures) come
/// with zero bytes after the signature data; those are accepted. Any other trailing byte is
/// [`FormatError::TrailingBytes`]: it is not part of a quote. [`parse_quote_prefix`] accepts
/// anything after the quote and returns it.
pub fn parse_quote(bytes: &[u8]) -> Result<TdxQuote, FormatError> {
    let (quote, rest) = parse_quote_prefix(bytes)?;
    if rest.iter().any(|&b| b != 0) {
        return Err(FormatError::TrailingBytes {
            what: WHAT,
            extra: rest.len(),
        });
    }
    Ok(quote)
}

/// Parses a TDX quote at the start of `bytes` and returns it with the bytes that follow it.
pub fn parse_quote_prefix(bytes: &[u8]) -> Result<(TdxQuote, &[u8]), FormatError> {
    let mut r = Reader::new(bytes, WHAT);
    let version = r.u16_le()?;
    if version != 4 && version != 5 {
        return Err(FormatError::UnsupportedVersion {
            what: WHAT,
            version: version.into(),
        });
    }
    let att_key_type = r.u16_le()?;
    let tee_type = r.u32_le()?;
    if tee_type != TEE_TYPE_TDX {
        return Err(FormatError::invalid(
            WHAT,
            format!("TEE type {tee_type:#x} is not TDX (0x81)"),
        ));
    }
    if att_key_type != ATT_KEY_TYPE_ECDSA_P256 {
        return Err(FormatError::invalid(
            WHAT,
            format!("attestation key type {att_key_type} is not ECDSA P-256 (2)"),
        ));
    }
    let header = QuoteHeader {
        version,
        att_key_type,
        tee_type,
        reserved: r.array()?,
        qe_vendor_id: r.array()?,
        user_data: r.array()?,
    };

    let (body_type, body_len) = if version == 4 {
        (2, BODY_SIZE_TD10)
    } else {
        let body_type = r.u16_le()?;
        let size = r.u32_le()?;
        let expected = match body_type {
            2 => BODY_SIZE_TD10,
            3 => BODY_SIZE_TD15,
            1 => return Err(FormatError::invalid(WHAT, "body type 1 is an SGX report")),
            other => {
                return Err(FormatError::invalid(
                    WHAT,
                    format!("unknown body type {other}"),
                ))
            }
        };
        if usize::try_from(size).ok() != Some(expected) {
            return Err(FormatError::invalid(
                WHAT,
                format!("body type {body_type} must be {expected} bytes, not {size}"),
            ));
        }
        (body_type, expected)
    };
    let body = parse_quote_body(r.bytes(body_len)?, body_type == 3)?;
    let signed_len = r.position();
    let signed_bytes = bytes
        .get(..signed_len)
        .ok_or(FormatError::Truncated {
            what: WHAT,
            need: signed_len,
            have: bytes.len(),
        })?
        .to_vec();

    let length = r.u32_le()?;
    check_max(
        "TDX quote signature data length",
        length.into(),
        MAX_SIGNATURE_DATA as u64,
    )?;
    let sig_bytes = r.bytes(length as usize)?;
    let signature = parse_signature_data(sig_bytes, length)?;

    Ok((
        TdxQuote {
            header,
            body_type,
            body,
            signed_bytes,
            signature,
        },
        r.rest(),
    ))
}

/// Reads a TD report body from exactly 584 (or, with `td15`, 648) bytes.
fn parse_quote_body(bytes: &[u8], td15: bool) -> Result<TdQuoteBody, FormatError> {
    let mut r = Reader::new(bytes, "TDX quote body");
    let body = TdQuoteBody {
        tee_tcb_svn: r.array()?,
        mr_seam: r.array()?,
        mr_signer_seam: r.array()?,
        seam_attributes: r.array()?,
        td_attributes: r.array()?,
        xfam: r.array()?,
        mr_td: r.array()?,
        mr_config_id: r.array()?,
        mr_owner: r.array()?,
        mr_owner_config: r.array()?,
        rtmrs: [r.array()?, r.array()?, r.array()?, r.array()?],
        report_data: r.array()?,
        tee_tcb_svn2: if td15 { Some(r.array()?) } else { None },
        mr_servicetd: if td15 { Some(r.array()?) } else { None },
    };
    r.finish()?;
    Ok(body)
}

fn parse_signature_data(bytes: &[u8], length: u32) -> Result<QuoteSignatureData, FormatError> {
    let mut r = Reader::new(bytes, WHAT_SIG);
    let signature = r.array()?;
    let attestation_key = r.array()?;
    let certification = parse_certification(&mut r, true)?;
    r.finish()?;
    Ok(QuoteSignatureData {
        length,
        signature,
        attestation_key,
        certification,
    })
}

/// Reads one certification data element (`u16` type, `u32` size, data). A QE report element
/// may contain one nested element, which may not itself be a QE report: that bounds the
/// recursion at two levels whatever the input says.
fn parse_certification(
    r: &mut Reader<'_>,
    allow_qe_report: bool,
) -> Result<CertificationData, FormatError> {
    let cert_type = r.u16_le()?;
    let size = r.u32_le()?;
    let data = r.bytes(size as usize)?;
    match cert_type {
        CERT_TYPE_QE_REPORT if allow_qe_report => {
            let mut q = Reader::new(data, WHAT_CERT);
            let qe_report_raw = q.bytes(ENCLAVE_REPORT_SIZE)?;
            let qe_report = parse_enclave_report(qe_report_raw)?;
            let qe_report_signature = q.array()?;
            let auth_len = q.u16_le()?;
            let qe_auth_data = q.bytes(auth_len.into())?.to_vec();
            let certification = parse_certification(&mut q, false)?;
            q.finish()?;
            Ok(CertificationData::QeReport(Box::new(
                QeReportCertification {
                    qe_report,
                    qe_report_raw: qe_report_raw.to_vec(),
                    qe_report_signature,
                    qe_auth_data,
                    certification,
                },
            )))
        }
        CERT_TYPE_QE_REPORT => Err(FormatError::invalid(
            WHAT_CERT,
            "a QE report nested inside a QE report",
        )),
        CERT_TYPE_PCK_CHAIN => Ok(CertificationData::PckChain(data.to_vec())),
        other => Ok(CertificationData::Other {
            cert_type: other,
            data: data.to_vec(),
        }),
    }
}

/// Parses a 384-byte SGX enclave report body.
pub(crate) fn parse_enclave_report(bytes: &[u8]) -> Result<EnclaveReport, FormatError> {
    let mut r = Reader::new(bytes, "SGX enclave report");
    let cpu_svn = r.array()?; // 0
    let misc_select = r.u32_le()?; // 16
    r.skip(28)?; // 20 reserved
    let attributes = r.array()?; // 48
    let mr_enclave = r.array()?; // 64
    r.skip(32)?; // 96 reserved
    let mr_signer = r.array()?; // 128
    r.skip(96)?; // 160 reserved
    let isv_prod_id = r.u16_le()?; // 256
    let isv_svn = r.u16_le()?; // 258
    r.skip(60)?; // 260 reserved
    let report_data = r.array()?; // 320
    r.finish()?;
    Ok(EnclaveReport {
        cpu_svn,
        misc_select,
        attributes,
        mr_enclave,
        mr_signer,
        isv_prod_id,
        isv_svn,
        report_data,
    })
}

/// A TDREPORT (`TDREPORT_STRUCT`, 1024 bytes): what the TDX module returns to the TD, before
/// the quoting enclave turns it into a quote. Azure puts one in the HCL report of a TDX CVM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TdReport {
    /// Report type: type (0x81 = TDX), subtype, version, reserved.
    pub report_type: [u8; 4],
    /// CPU security version.
    pub cpu_svn: [u8; 16],
    /// SHA-384 of the TEE TCB info.
    pub tee_tcb_info_hash: [u8; 48],
    /// SHA-384 of the TD info.
    pub tee_info_hash: [u8; 48],
    /// Guest-supplied data.
    pub report_data: [u8; 64],
    /// The MAC over the report (verifiable only on the same platform).
    pub mac: [u8; 32],
    /// TEE TCB info: validity mask.
    pub tcb_valid: [u8; 8],
    /// TEE TCB SVN.
    pub tee_tcb_svn: [u8; 16],
    /// Measurement of the TDX module.
    pub mr_seam: [u8; 48],
    /// Signer of the TDX module.
    pub mr_signer_seam: [u8; 48],
    /// Attributes of the TDX module.
    pub seam_attributes: [u8; 8],
    /// TD attributes.
    pub td_attributes: [u8; 8],
    /// XSAVE feature mask.
    pub xfam: [u8; 8],
    /// Build-time measurement of the TD.
    pub mr_td: [u8; 48],
    /// Configuration ID.
    pub mr_config_id: [u8; 48],
    /// Owner ID.
    pub mr_owner: [u8; 48],
    /// Owner configuration.
    pub mr_owner_config: [u8; 48],
    /// RTMR0 to RTMR3.
    pub rtmrs: [[u8; 48]; 4],
    /// Service TD hash (TDX 1.5; zero before).
    pub servtd_hash: [u8; 48],
}

/// Parses a TDREPORT from the first 1024 bytes of `bytes` (Azure's HCL slot is larger).
pub fn parse_td_report(bytes: &[u8]) -> Result<TdReport, FormatError> {
    let mut r = Reader::new(bytes, WHAT_TDREPORT);
    // REPORTMACSTRUCT (256 bytes).
    let report_type: [u8; 4] = r.array()?;
    let [tee_type, ..] = report_type;
    if tee_type != 0x81 {
        return Err(FormatError::invalid(
            WHAT_TDREPORT,
            format!("report type {tee_type:#04x} is not TDX (0x81)"),
        ));
    }
    r.skip(12)?;
    let cpu_svn = r.array()?; // 16
    let tee_tcb_info_hash = r.array()?; // 32
    let tee_info_hash = r.array()?; // 80
    let report_data = r.array()?; // 128
    r.skip(32)?; // 192 reserved
    let mac = r.array()?; // 224
                          // TEE_TCB_INFO (239 bytes) at 256, then 17 reserved bytes.
    let tcb_valid = r.array()?;
    let tee_tcb_svn = r.array()?;
    let mr_seam = r.array()?;
    let mr_signer_seam = r.array()?;
    let seam_attributes = r.array()?;
    r.skip(111 + 17)?;
    // TDINFO (512 bytes) at 512.
    let td_attributes = r.array()?;
    let xfam = r.array()?;
    let mr_td = r.array()?;
    let mr_config_id = r.array()?;
    let mr_owner = r.array()?;
    let mr_owner_config = r.array()?;
    let rtmrs = [r.array()?, r.array()?, r.array()?, r.array()?];
    let servtd_hash = r.array()?;
    r.skip(64)?; // reserved, ends at the TDREPORT's 1024 bytes
    Ok(TdReport {
        report_type,
        cpu_svn,
        tee_tcb_info_hash,
        tee_info_hash,
        report_data,
        mac,
        tcb_valid,
        tee_tcb_svn,
        mr_seam,
        mr_signer_seam,
        seam_attributes,
        td_attributes,
        xfam,
        mr_td,
        mr_config_id,
        mr_owner,
        mr_owner_config,
        rtmrs,
        servtd_hash,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal well-formed v4 quote: header, zero body, signature data with a type 5 chain.
    fn minimal_v4() -> Vec<u8> {
        let mut q = Vec::new();
        q.extend_from_slice(&4u16.to_le_bytes());
        q.extend_from_slice(&2u16.to_le_bytes());
        q.extend_from_slice(&0x81u32.to_le_bytes());
        q.extend_from_slice(&[0; 40]);
        q.extend_from_slice(&[0; BODY_SIZE_TD10]);
        let pem = b"-----BEGIN CERTIFICATE-----\n";
        let sig_len = 128 + 6 + pem.len();
        q.extend_from_slice(&(sig_len as u32).to_le_bytes());
        q.extend_from_slice(&[0; 128]);
        q.extend_from_slice(&5u16.to_le_bytes());
        q.extend_from_slice(&(pem.len() as u32).to_le_bytes());
        q.extend_from_slice(pem);
        q
    }

    #[test]
    fn minimal_quote_parses_and_padding_rules_hold() {
        let q = minimal_v4();
        let quote = parse_quote(&q).unwrap();
        assert_eq!(quote.signed_bytes.len(), HEADER_SIZE + BODY_SIZE_TD10);
        assert!(quote.signature.certification.pck_chain_pem().is_some());
        let mut padded = q;
        padded.extend_from_slice(&[0; 70]);
        assert!(parse_quote(&padded).is_ok());
        padded.push(b'x');
        assert_eq!(
            parse_quote(&padded),
            Err(FormatError::TrailingBytes {
                what: WHAT,
                extra: 71
            })
        );
        assert_eq!(parse_quote_prefix(&padded).unwrap().1.len(), 71);
    }

    #[test]
    fn rejects_bad_headers() {
        let mut q = minimal_v4();
        q[0] = 3;
        assert_eq!(
            parse_quote(&q),
            Err(FormatError::UnsupportedVersion {
                what: WHAT,
                version: 3
            })
        );
        let mut q = minimal_v4();
        q[4] = 0;
        assert!(matches!(parse_quote(&q), Err(FormatError::Invalid { .. })));
        let mut q = minimal_v4();
        let len_at = HEADER_SIZE + BODY_SIZE_TD10;
        q[len_at..len_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(parse_quote(&q), Err(FormatError::TooMany { .. })));
    }

    #[test]
    fn nested_qe_report_is_bounded() {
        // Type 6 inside type 6 must be refused rather than followed.
        let mut inner = vec![0u8; ENCLAVE_REPORT_SIZE + 64];
        inner.extend_from_slice(&0u16.to_le_bytes());
        inner.extend_from_slice(&6u16.to_le_bytes());
        inner.extend_from_slice(&0u32.to_le_bytes());
        let mut sig = vec![0u8; 128];
        sig.extend_from_slice(&6u16.to_le_bytes());
        sig.extend_from_slice(&(inner.len() as u32).to_le_bytes());
        sig.extend_from_slice(&inner);
        let mut q = minimal_v4();
        q.truncate(HEADER_SIZE + BODY_SIZE_TD10);
        q.extend_from_slice(&(sig.len() as u32).to_le_bytes());
        q.extend_from_slice(&sig);
        assert!(matches!(parse_quote(&q), Err(FormatError::Invalid { .. })));
    }
}
