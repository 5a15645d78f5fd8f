//! Pure parsers of attestation formats: bytes in, typed structures out, no I/O.
//!
//! Every input here comes from outside the agent's trust (a device, a firmware table, a file
//! an operator hands to `inspect`), so every parser checks each length against the bytes it
//! actually has before reading, caps every count it reads from the input, and returns a
//! [`FormatError`] instead of panicking. Nothing here verifies a signature or decides whether a
//! value is good: that is appraisal, and it belongs to whoever holds the reference values.
//!
//! | module | format |
//! |---|---|
//! | [`snp`] | AMD SEV-SNP attestation report (1184 bytes, versions 2 to 5) |
//! | [`tdx`] | Intel TDX quote v4/v5 and the 1024-byte TDREPORT |
//! | [`devpath`] | UEFI device paths as text, image-load events, boot options |
//! | [`eventlog`] | TCG PC-Client event log (SHA-1 legacy and crypto-agile) and the TDX CCEL |
//! | [`hcl`] | Azure confidential VM HCL report |
//! | [`luks2`] | the LUKS2 on-disk header (binary header copies and JSON metadata) |
//! | [`pe`] | PE/COFF images (EFI applications) and their Authenticode digest |
//! | [`tpm`] | `TPMS_ATTEST` (quote) and `TPMT_SIGNATURE` |
//! | [`qgs`] | the TDX quote generation service's `GET_QUOTE` messages (vsock framing) |
//! | [`sha1`] | SHA-1, only to replay SHA-1 PCR banks of event logs |

pub mod confdata;
pub mod devpath;
pub mod eventlog;
pub mod hcl;
pub mod luks2;
pub mod pe;
pub mod qgs;
mod reader;
pub mod sha1;
pub mod snp;
pub mod tdx;
pub mod tpm;

use sha2::{Digest as _, Sha256, Sha384, Sha512};

/// Why a blob could not be parsed. Every message is one line and names the structure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// The input ends before a field the structure requires.
    #[error("{what}: truncated: need {need} bytes, have {have}")]
    Truncated {
        /// The structure being read.
        what: &'static str,
        /// The length the input would need for the field that did not fit.
        need: usize,
        /// The length the input has.
        have: usize,
    },
    /// Bytes follow the end of a structure that must fill its input.
    #[error("{what}: {extra} unexpected trailing bytes")]
    TrailingBytes {
        /// The structure being read.
        what: &'static str,
        /// How many bytes follow it.
        extra: usize,
    },
    /// A version (or type) number this parser does not know the layout of.
    #[error("{what}: unsupported version {version}")]
    UnsupportedVersion {
        /// The structure being read.
        what: &'static str,
        /// The version found.
        version: u32,
    },
    /// A count or length read from the input is above the cap this parser allows.
    #[error("{what}: {count} exceeds the maximum of {max}")]
    TooMany {
        /// The count or length, and the structure it belongs to.
        what: &'static str,
        /// The value found.
        count: u64,
        /// The largest value accepted.
        max: u64,
    },
    /// A field holds a value that makes the structure malformed.
    #[error("{what}: {why}")]
    Invalid {
        /// The structure being read.
        what: &'static str,
        /// What is wrong, in a few words.
        why: String,
    },
}

impl FormatError {
    /// Shorthand for [`FormatError::Invalid`].
    pub(crate) fn invalid(what: &'static str, why: impl Into<String>) -> Self {
        FormatError::Invalid {
            what,
            why: why.into(),
        }
    }
}

/// Fails with [`FormatError::TooMany`] when `count` is above `max`.
pub(crate) fn check_max(what: &'static str, count: u64, max: u64) -> Result<(), FormatError> {
    if count > max {
        Err(FormatError::TooMany { what, count, max })
    } else {
        Ok(())
    }
}

/// A TPM hash algorithm (`TPM_ALG_ID`), as event logs and TPM structures name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HashAlg {
    /// `TPM_ALG_SHA1` (0x0004).
    Sha1,
    /// `TPM_ALG_SHA256` (0x000B).
    Sha256,
    /// `TPM_ALG_SHA384` (0x000C).
    Sha384,
    /// `TPM_ALG_SHA512` (0x000D).
    Sha512,
    /// `TPM_ALG_SM3_256` (0x0012).
    Sm3_256,
    /// Any other algorithm identifier.
    Other(u16),
}

impl HashAlg {
    /// The algorithm with this `TPM_ALG_ID`.
    pub(crate) fn from_id(id: u16) -> Self {
        match id {
            0x0004 => HashAlg::Sha1,
            0x000B => HashAlg::Sha256,
            0x000C => HashAlg::Sha384,
            0x000D => HashAlg::Sha512,
            0x0012 => HashAlg::Sm3_256,
            other => HashAlg::Other(other),
        }
    }

    /// The `TPM_ALG_ID` of this algorithm.
    pub fn id(self) -> u16 {
        match self {
            HashAlg::Sha1 => 0x0004,
            HashAlg::Sha256 => 0x000B,
            HashAlg::Sha384 => 0x000C,
            HashAlg::Sha512 => 0x000D,
            HashAlg::Sm3_256 => 0x0012,
            HashAlg::Other(id) => id,
        }
    }

    /// The digest size in bytes, when the algorithm is known.
    pub(crate) fn digest_size(self) -> Option<usize> {
        match self {
            HashAlg::Sha1 => Some(20),
            HashAlg::Sha256 | HashAlg::Sm3_256 => Some(32),
            HashAlg::Sha384 => Some(48),
            HashAlg::Sha512 => Some(64),
            HashAlg::Other(_) => None,
        }
    }

    /// The lowercase name used in JSON output (`sha256`), or `alg_0x....` for unknown ones.
    pub fn name(self) -> String {
        match self {
            HashAlg::Sha1 => "sha1".into(),
            HashAlg::Sha256 => "sha256".into(),
            HashAlg::Sha384 => "sha384".into(),
            HashAlg::Sha512 => "sha512".into(),
            HashAlg::Sm3_256 => "sm3_256".into(),
            HashAlg::Other(id) => format!("alg_{id:#06x}"),
        }
    }

    /// The digest of `data`, or `None` when this build has no implementation of the algorithm.
    pub fn hash(self, data: &[u8]) -> Option<Vec<u8>> {
        match self {
            HashAlg::Sha1 => Some(sha1::sha1(data).to_vec()),
            HashAlg::Sha256 => Some(Sha256::digest(data).to_vec()),
            HashAlg::Sha384 => Some(Sha384::digest(data).to_vec()),
            HashAlg::Sha512 => Some(Sha512::digest(data).to_vec()),
            HashAlg::Sm3_256 => Some(sm3::Sm3::digest(data).to_vec()),
            HashAlg::Other(_) => None,
        }
    }
}

impl std::fmt::Display for HashAlg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}
