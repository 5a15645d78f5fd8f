//! TPM 2.0 quote structures (TPM 2.0 Library, Part 2), big-endian as the TPM marshals them:
//! `TPMS_ATTEST` carrying a `TPMS_QUOTE_INFO`, and `TPMT_SIGNATURE`.
//!
//! Every `TPM2B` size is capped at the largest value its TPM type allows, so a forged size
//! is reported as [`FormatError::TooMany`] rather than read.

use super::reader::Reader;
use super::{check_max, FormatError, HashAlg};

const WHAT_ATTEST: &str = "TPMS_ATTEST";
const WHAT_SIGNATURE: &str = "TPMT_SIGNATURE";

/// `TPM_GENERATED_VALUE`: the magic that marks a structure the TPM itself produced.
pub(crate) const TPM_GENERATED_VALUE: u32 = 0xFF54_4347;
/// `TPM_ST_ATTEST_QUOTE`.
pub(crate) const TPM_ST_ATTEST_QUOTE: u16 = 0x8018;
/// `sizeof(TPMU_NAME)`: a hash algorithm ID and a digest of up to 64 bytes.
pub(crate) const MAX_NAME: usize = 2 + 64;
/// `sizeof(TPMT_HA)`, the bound of `TPM2B_DATA`.
pub(crate) const MAX_DATA: usize = 2 + 64;
/// The largest digest (SHA-512).
pub(crate) const MAX_DIGEST: usize = 64;
/// The most banks a PCR selection may list.
pub(crate) const MAX_PCR_BANKS: u32 = 8;
/// The largest PCR select bitmap: 4 bytes (32 PCRs); PC-Client TPMs use 3.
pub(crate) const MAX_SIZEOF_SELECT: u8 = 4;
/// The largest RSA signature (4096-bit keys).
pub(crate) const MAX_RSA_SIGNATURE: usize = 512;
/// The largest ECC parameter (P-521: 66 bytes).
pub(crate) const MAX_ECC_PARAMETER: usize = 66;

/// `TPM_ALG_RSASSA`.
pub(crate) const TPM_ALG_RSASSA: u16 = 0x0014;
/// `TPM_ALG_RSAPSS`.
pub(crate) const TPM_ALG_RSAPSS: u16 = 0x0016;
/// `TPM_ALG_ECDSA`.
pub(crate) const TPM_ALG_ECDSA: u16 = 0x0018;

/// A `TPMS_ATTEST` of type quote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TpmsAttest {
    /// The qualified name of the signing key (`TPM2B_NAME`).
    pub qualified_signer: Vec<u8>,
    /// The caller's qualifying data (`TPM2B_DATA`): the nonce.
    pub extra_data: Vec<u8>,
    /// The TPM clock at the time of the quote.
    pub clock_info: ClockInfo,
    /// The TPM firmware version (vendor-defined).
    pub firmware_version: u64,
    /// The quote information.
    pub quote: QuoteInfo,
}

/// `TPMS_CLOCK_INFO`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockInfo {
    /// Milliseconds the TPM has been powered since it was made.
    pub clock: u64,
    /// TPM resets (reboots) since the TPM was made.
    pub reset_count: u32,
    /// Restarts (resume from hibernation) since the last reset.
    pub restart_count: u32,
    /// Whether `clock` has not gone backwards.
    pub safe: bool,
}

/// `TPMS_QUOTE_INFO`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuoteInfo {
    /// The selected PCRs, per bank.
    pub pcr_select: Vec<PcrSelection>,
    /// The digest (with the AK's name algorithm) of the selected PCR values, concatenated in
    /// selection order.
    pub pcr_digest: Vec<u8>,
}

/// `TPMS_PCR_SELECTION`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcrSelection {
    /// The bank.
    pub hash: HashAlg,
    /// The selection bitmap: bit `i` of byte `j` selects PCR `8 * j + i`.
    pub select: Vec<u8>,
}

impl PcrSelection {
    /// The selected PCR indices, in ascending order.
    pub fn pcrs(&self) -> Vec<u32> {
        let mut out = Vec::new();
        for (byte_index, byte) in (0u32..).zip(&self.select) {
            for bit in 0..8 {
                if byte & (1 << bit) != 0 {
                    out.push(byte_index * 8 + bit);
                }
            }
        }
        out
    }
}

/// Parses a `TPMS_ATTEST` that must be a quote and fill `bytes` exactly.
pub fn parse_tpms_attest(bytes: &[u8]) -> Result<TpmsAttest, FormatError> {
    let mut r = Reader::new(bytes, WHAT_ATTEST);
    let magic = r.u32_be()?;
    if magic != TPM_GENERATED_VALUE {
        return Err(FormatError::invalid(
            WHAT_ATTEST,
            format!("magic {magic:#010x} is not TPM_GENERATED_VALUE (0xff544347)"),
        ));
    }
    let st = r.u16_be()?;
    if st != TPM_ST_ATTEST_QUOTE {
        return Err(FormatError::invalid(
            WHAT_ATTEST,
            format!("type {st:#06x} is not a quote (0x8018)"),
        ));
    }
    let qualified_signer = tpm2b(&mut r, "TPMS_ATTEST qualifiedSigner size", MAX_NAME)?;
    let extra_data = tpm2b(&mut r, "TPMS_ATTEST extraData size", MAX_DATA)?;
    let clock = r.u64_be()?;
    let reset_count = r.u32_be()?;
    let restart_count = r.u32_be()?;
    let safe = match r.u8()? {
        0 => false,
        1 => true,
        other => {
            return Err(FormatError::invalid(
                WHAT_ATTEST,
                format!("clockInfo.safe is {other}, not a TPMI_YES_NO"),
            ))
        }
    };
    let firmware_version = r.u64_be()?;

    let count = r.u32_be()?;
    check_max(
        "TPML_PCR_SELECTION count",
        count.into(),
        MAX_PCR_BANKS.into(),
    )?;
    let mut pcr_select = Vec::new();
    for _ in 0..count {
        let hash = HashAlg::from_id(r.u16_be()?);
        let size = r.u8()?;
        check_max(
            "TPMS_PCR_SELECTION sizeofSelect",
            size.into(),
            MAX_SIZEOF_SELECT.into(),
        )?;
        let select = r.bytes(size.into())?.to_vec();
        pcr_select.push(PcrSelection { hash, select });
    }
    let pcr_digest = tpm2b(&mut r, "TPMS_QUOTE_INFO pcrDigest size", MAX_DIGEST)?;
    r.finish()?;

    Ok(TpmsAttest {
        qualified_signer,
        extra_data,
        clock_info: ClockInfo {
            clock,
            reset_count,
            restart_count,
            safe,
        },
        firmware_version,
        quote: QuoteInfo {
            pcr_select,
            pcr_digest,
        },
    })
}

/// A `TPMT_SIGNATURE` of the schemes an attestation key uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TpmtSignature {
    /// RSASSA-PKCS1-v1_5.
    RsaSsa {
        /// The hash the signature was made with.
        hash: HashAlg,
        /// The signature.
        signature: Vec<u8>,
    },
    /// RSASSA-PSS.
    RsaPss {
        /// The hash the signature was made with.
        hash: HashAlg,
        /// The signature.
        signature: Vec<u8>,
    },
    /// ECDSA.
    Ecdsa {
        /// The hash the signature was made with.
        hash: HashAlg,
        /// `r`, big-endian.
        r: Vec<u8>,
        /// `s`, big-endian.
        s: Vec<u8>,
    },
}

impl TpmtSignature {
    /// The scheme's name (`rsassa`, `rsapss`, `ecdsa`).
    pub fn scheme(&self) -> &'static str {
        match self {
            TpmtSignature::RsaSsa { .. } => "rsassa",
            TpmtSignature::RsaPss { .. } => "rsapss",
            TpmtSignature::Ecdsa { .. } => "ecdsa",
        }
    }

    /// The hash algorithm of the signature.
    pub fn hash(&self) -> HashAlg {
        match self {
            TpmtSignature::RsaSsa { hash, .. }
            | TpmtSignature::RsaPss { hash, .. }
            | TpmtSignature::Ecdsa { hash, .. } => *hash,
        }
    }
}

/// Parses a `TPMT_SIGNATURE` (RSASSA, RSAPSS or ECDSA) that must fill `bytes` exactly.
pub fn parse_tpmt_signature(bytes: &[u8]) -> Result<TpmtSignature, FormatError> {
    let mut r = Reader::new(bytes, WHAT_SIGNATURE);
    let sig_alg = r.u16_be()?;
    let hash = HashAlg::from_id(r.u16_be()?);
    let signature = match sig_alg {
        TPM_ALG_RSASSA => TpmtSignature::RsaSsa {
            hash,
            signature: tpm2b(&mut r, "TPMT_SIGNATURE RSA size", MAX_RSA_SIGNATURE)?,
        },
        TPM_ALG_RSAPSS => TpmtSignature::RsaPss {
            hash,
            signature: tpm2b(&mut r, "TPMT_SIGNATURE RSA size", MAX_RSA_SIGNATURE)?,
        },
        TPM_ALG_ECDSA => TpmtSignature::Ecdsa {
            hash,
            r: tpm2b(&mut r, "TPMT_SIGNATURE ECC r size", MAX_ECC_PARAMETER)?,
            s: tpm2b(&mut r, "TPMT_SIGNATURE ECC s size", MAX_ECC_PARAMETER)?,
        },
        other => {
            return Err(FormatError::invalid(
                WHAT_SIGNATURE,
                format!("signature scheme {other:#06x} is not RSASSA, RSAPSS or ECDSA"),
            ))
        }
    };
    r.finish()?;
    Ok(signature)
}

/// Reads a `TPM2B`: a big-endian `u16` size, then that many bytes, at most `max`.
fn tpm2b(r: &mut Reader<'_>, what: &'static str, max: usize) -> Result<Vec<u8>, FormatError> {
    let size = r.u16_be()?;
    check_max(what, size.into(), max as u64)?;
    Ok(r.bytes(size.into())?.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quote(extra: &[u8]) -> Vec<u8> {
        let mut q = Vec::new();
        q.extend_from_slice(&TPM_GENERATED_VALUE.to_be_bytes());
        q.extend_from_slice(&TPM_ST_ATTEST_QUOTE.to_be_bytes());
        q.extend_from_slice(&2u16.to_be_bytes());
        q.extend_from_slice(&[0x00, 0x0B]);
        q.extend_from_slice(&(extra.len() as u16).to_be_bytes());
        q.extend_from_slice(extra);
        q.extend_from_slice(&7u64.to_be_bytes());
        q.extend_from_slice(&1u32.to_be_bytes());
        q.extend_from_slice(&0u32.to_be_bytes());
        q.push(1);
        q.extend_from_slice(&0x2016u64.to_be_bytes());
        q.extend_from_slice(&1u32.to_be_bytes());
        q.extend_from_slice(&[0x00, 0x0B, 3, 0x81, 0x00, 0x80]);
        q.extend_from_slice(&32u16.to_be_bytes());
        q.extend_from_slice(&[0xAB; 32]);
        q
    }

    #[test]
    fn parses_a_quote() {
        let a = parse_tpms_attest(&quote(b"nonce")).unwrap();
        assert_eq!(a.extra_data, b"nonce");
        assert_eq!(a.clock_info.clock, 7);
        assert!(a.clock_info.safe);
        assert_eq!(a.quote.pcr_select[0].hash, HashAlg::Sha256);
        assert_eq!(a.quote.pcr_select[0].pcrs(), vec![0, 7, 23]);
        assert_eq!(a.quote.pcr_digest, vec![0xAB; 32]);
    }

    #[test]
    fn rejects_malformed_quotes() {
        let mut q = quote(b"");
        q[0] = 0;
        assert!(matches!(
            parse_tpms_attest(&q),
            Err(FormatError::Invalid { .. })
        ));
        let mut q = quote(b"");
        q.push(0);
        assert!(matches!(
            parse_tpms_attest(&q),
            Err(FormatError::TrailingBytes { extra: 1, .. })
        ));
        let mut q = quote(b"");
        q[10..12].copy_from_slice(&0xFFFFu16.to_be_bytes()); // extraData size
        assert!(matches!(
            parse_tpms_attest(&q),
            Err(FormatError::TooMany { count: 65535, .. })
        ));
    }

    #[test]
    fn signatures() {
        let mut s = vec![0x00, 0x18, 0x00, 0x0B, 0x00, 0x02, 1, 2, 0x00, 0x01, 3];
        assert_eq!(
            parse_tpmt_signature(&s).unwrap(),
            TpmtSignature::Ecdsa {
                hash: HashAlg::Sha256,
                r: vec![1, 2],
                s: vec![3]
            }
        );
        s[1] = 0x05; // HMAC
        assert!(matches!(
            parse_tpmt_signature(&s),
            Err(FormatError::Invalid { .. })
        ));
    }
}
