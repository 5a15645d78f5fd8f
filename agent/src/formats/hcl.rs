//! The Azure confidential VM HCL report: what the paravisor (HCL) stores in vTPM NV index
//! 0x01400001, little-endian.
//!
//! ```text
//! 0     header (32 bytes): "HCLA", version, report_size, request_type, status, reserved
//! 32    hardware report slot (1184 bytes): an SNP report, or a 1024-byte TDREPORT
//! 1216  IGVM request data (20 bytes): data_size, version, report_type (2 SNP, 4 TDX),
//!       hash type (1 SHA-256, 2 SHA-384, 3 SHA-512), variable data size
//! 1236  variable data: JSON runtime claims (the vTPM AK and EK as JWKs, VM configuration,
//!       user data)
//! ```
//!
//! The hardware report's report data starts with the hash of the variable data: that is
//! what binds the vTPM's AK to the hardware. The NV index is larger than the report; the
//! rest is zero. Layout as in kinvolk/azure-cvm-tooling `az-cvm-vtpm/src/hcl/mod.rs`.

use sha2::{Digest as _, Sha256, Sha384, Sha512};

use super::reader::Reader;
use super::snp::{self, SnpReport};
use super::tdx::{self, TdReport};
use super::{check_max, FormatError};

const WHAT: &str = "HCL report";

/// The header signature.
pub(crate) const SIGNATURE: &[u8; 4] = b"HCLA";
/// The size of the header.
pub(crate) const HEADER_SIZE: usize = 32;
/// The size of the hardware report slot.
pub(crate) const HW_REPORT_SLOT_SIZE: usize = 1184;
/// The size of the IGVM request data before the variable data.
pub(crate) const REQUEST_DATA_SIZE: usize = 20;
/// The offset of the variable data.
pub(crate) const VAR_DATA_OFFSET: usize = HEADER_SIZE + HW_REPORT_SLOT_SIZE + REQUEST_DATA_SIZE;
/// The largest variable data accepted. Real runtime claims are 0.5 to 1.5 KiB; the NV index
/// holding the whole report is a few KiB.
pub(crate) const MAX_VAR_DATA: u32 = 64 * 1024;
/// Report type of an SNP hardware report.
pub const REPORT_TYPE_SNP: u32 = 2;
/// Report type of a TDX hardware report (TDREPORT).
pub const REPORT_TYPE_TDX: u32 = 4;

/// A parsed HCL report.
#[derive(Debug, Clone, PartialEq)]
pub struct HclReport {
    /// The header.
    pub header: HclHeader,
    /// The hardware report in the slot.
    pub hw_report: HwReport,
    /// The IGVM request data.
    pub request: IgvmRequestData,
    /// The variable data (the runtime claims as bytes): what the hardware report data hashes.
    pub var_data: Vec<u8>,
    /// The variable data parsed as JSON.
    pub runtime_claims: serde_json::Value,
    /// How many zero bytes followed the report.
    pub padding: usize,
}

/// The 32-byte header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HclHeader {
    /// Header version (1 or 2).
    pub version: u32,
    /// The size of the report up to the end of the variable data.
    pub report_size: u32,
    /// The IGVM attestation request type.
    pub request_type: u32,
    /// Status.
    pub status: u32,
}

/// The IGVM request data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IgvmRequestData {
    /// Size of the request data including the variable data.
    pub data_size: u32,
    /// Version.
    pub version: u32,
    /// Hardware report type: 2 SNP, 4 TDX.
    pub report_type: u32,
    /// The hash of the variable data in the hardware report data.
    pub hash_type: HclHashType,
    /// Size of the variable data.
    pub variable_data_size: u32,
}

/// The algorithm that hashes the variable data into the hardware report data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HclHashType {
    /// 1.
    Sha256,
    /// 2.
    Sha384,
    /// 3.
    Sha512,
}

impl HclHashType {
    /// The lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            HclHashType::Sha256 => "sha256",
            HclHashType::Sha384 => "sha384",
            HclHashType::Sha512 => "sha512",
        }
    }
}

/// The hardware report in the slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HwReport {
    /// An SNP attestation report, signed by the VCEK.
    Snp(Box<SnpReport>),
    /// A TDREPORT (MACed, not signed: Azure turns it into a quote through IMDS).
    Tdx(Box<TdReport>),
}

impl HwReport {
    /// The report data of the hardware report.
    pub fn report_data(&self) -> &[u8; 64] {
        match self {
            HwReport::Snp(r) => &r.report_data,
            HwReport::Tdx(r) => &r.report_data,
        }
    }
}

impl HclReport {
    /// The hash of the variable data, with the report's hash type.
    pub fn var_data_hash(&self) -> Vec<u8> {
        match self.request.hash_type {
            HclHashType::Sha256 => Sha256::digest(&self.var_data).to_vec(),
            HclHashType::Sha384 => Sha384::digest(&self.var_data).to_vec(),
            HclHashType::Sha512 => Sha512::digest(&self.var_data).to_vec(),
        }
    }

    /// Whether the hardware report data starts with the hash of the variable data, which is
    /// what makes the runtime claims (and the AK in them) as trustworthy as the hardware
    /// report.
    pub fn var_data_hash_matches(&self) -> bool {
        self.hw_report
            .report_data()
            .starts_with(&self.var_data_hash())
    }

    /// The JWK with `kid` "HCLAkPub" in the runtime claims: the vTPM attestation key.
    pub fn ak_pub(&self) -> Option<&serde_json::Value> {
        self.runtime_claims
            .get("keys")?
            .as_array()?
            .iter()
            .find(|k| k.get("kid").and_then(|v| v.as_str()) == Some("HCLAkPub"))
    }

    /// The `user-data` claim (hex), which the guest wrote to NV index 0x01400002.
    pub fn user_data(&self) -> Option<&str> {
        self.runtime_claims.get("user-data")?.as_str()
    }
}

/// Parses an HCL report, followed by nothing or by zero padding.
pub fn parse_hcl_report(bytes: &[u8]) -> Result<HclReport, FormatError> {
    let mut r = Reader::new(bytes, WHAT);
    let signature: [u8; 4] = r.array()?;
    if &signature != SIGNATURE {
        return Err(FormatError::invalid(
            WHAT,
            format!(
                "header signature is {}, not \"HCLA\"",
                hex::encode(signature)
            ),
        ));
    }
    let version = r.u32_le()?;
    if !(1..=2).contains(&version) {
        return Err(FormatError::UnsupportedVersion {
            what: WHAT,
            version,
        });
    }
    let header = HclHeader {
        version,
        report_size: r.u32_le()?,
        request_type: r.u32_le()?,
        status: r.u32_le()?,
    };
    r.skip(12)?;
    let slot = r.bytes(HW_REPORT_SLOT_SIZE)?;

    let data_size = r.u32_le()?;
    let request_version = r.u32_le()?;
    let report_type = r.u32_le()?;
    let hash_type = match r.u32_le()? {
        1 => HclHashType::Sha256,
        2 => HclHashType::Sha384,
        3 => HclHashType::Sha512,
        other => {
            return Err(FormatError::invalid(
                WHAT,
                format!("unknown report data hash type {other}"),
            ))
        }
    };
    let variable_data_size = r.u32_le()?;
    check_max(
        "HCL variable data size",
        variable_data_size.into(),
        MAX_VAR_DATA.into(),
    )?;
    let request = IgvmRequestData {
        data_size,
        version: request_version,
        report_type,
        hash_type,
        variable_data_size,
    };
    // Both sizes are redundant with variable_data_size; a report where they disagree was not
    // written by the HCL, and which one to believe would be a guess.
    let expected_data_size = REQUEST_DATA_SIZE as u64 + u64::from(variable_data_size);
    if u64::from(data_size) != expected_data_size {
        return Err(FormatError::invalid(
            WHAT,
            format!("request data size {data_size} is not {expected_data_size}"),
        ));
    }
    let expected_report_size = VAR_DATA_OFFSET as u64 + u64::from(variable_data_size);
    if u64::from(header.report_size) != expected_report_size {
        return Err(FormatError::invalid(
            WHAT,
            format!(
                "header report size {} is not {expected_report_size}",
                header.report_size
            ),
        ));
    }
    let var_data = r.bytes(variable_data_size as usize)?.to_vec();
    let padding = r.rest();
    if padding.iter().any(|&b| b != 0) {
        return Err(FormatError::TrailingBytes {
            what: WHAT,
            extra: padding.len(),
        });
    }

    let hw_report = match report_type {
        REPORT_TYPE_SNP => HwReport::Snp(Box::new(snp::parse_report(slot)?)),
        REPORT_TYPE_TDX => HwReport::Tdx(Box::new(tdx::parse_td_report(slot)?)),
        other => {
            return Err(FormatError::invalid(
                WHAT,
                format!("hardware report type {other} is neither SNP (2) nor TDX (4)"),
            ))
        }
    };
    let runtime_claims = serde_json::from_slice(&var_data)
        .map_err(|e| FormatError::invalid("HCL runtime claims", format!("not JSON: {e}")))?;

    Ok(HclReport {
        header,
        hw_report,
        request,
        var_data,
        runtime_claims,
        padding: padding.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn synthetic(report_type: u32, var: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(SIGNATURE);
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&((VAR_DATA_OFFSET + var.len()) as u32).to_le_bytes());
        b.extend_from_slice(&[0; 20]);
        let mut slot = vec![0u8; HW_REPORT_SLOT_SIZE];
        if report_type == REPORT_TYPE_SNP {
            slot[0] = 2;
        } else {
            slot[0] = 0x81;
        }
        let hash = Sha256::digest(var);
        let rd_at = if report_type == REPORT_TYPE_SNP {
            0x50
        } else {
            128
        };
        slot[rd_at..rd_at + 32].copy_from_slice(&hash);
        b.extend_from_slice(&slot);
        for v in [20 + var.len() as u32, 1, report_type, 1, var.len() as u32] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(var);
        b
    }

    #[test]
    fn synthetic_reports_parse_and_bind() {
        let var = br#"{"keys":[{"kid":"HCLAkPub","kty":"RSA"}],"user-data":"00"}"#;
        for t in [REPORT_TYPE_SNP, REPORT_TYPE_TDX] {
            let mut b = synthetic(t, var);
            b.extend_from_slice(&[0; 100]);
            let hcl = parse_hcl_report(&b).unwrap();
            assert!(hcl.var_data_hash_matches());
            assert_eq!(hcl.padding, 100);
            assert_eq!(hcl.user_data(), Some("00"));
            assert!(hcl.ak_pub().is_some());
        }
    }

    #[test]
    fn rejects_malformed() {
        let var = b"{}";
        let good = synthetic(REPORT_TYPE_SNP, var);
        let mut b = good.clone();
        b[0] = b'X';
        assert!(matches!(
            parse_hcl_report(&b),
            Err(FormatError::Invalid { .. })
        ));
        let mut b = good.clone();
        b[4] = 9;
        assert!(matches!(
            parse_hcl_report(&b),
            Err(FormatError::UnsupportedVersion { version: 9, .. })
        ));
        let mut b = good.clone();
        b[1216 + 8] = 3; // report type
        assert!(matches!(
            parse_hcl_report(&b),
            Err(FormatError::Invalid { .. })
        ));
        let mut b = good.clone();
        b[1216 + 16..1216 + 20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            parse_hcl_report(&b),
            Err(FormatError::TooMany { .. })
        ));
        let mut b = good;
        b.push(1);
        assert!(matches!(
            parse_hcl_report(&b),
            Err(FormatError::TrailingBytes { extra: 1, .. })
        ));
        let b = synthetic(REPORT_TYPE_SNP, b"not json");
        assert!(matches!(
            parse_hcl_report(&b),
            Err(FormatError::Invalid { .. })
        ));
    }
}
