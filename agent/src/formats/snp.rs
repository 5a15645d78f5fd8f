//! The AMD SEV-SNP attestation report (`ATTESTATION_REPORT` of the SEV-SNP firmware ABI
//! specification): 1184 bytes, versions 2 to 5, all little-endian.
//!
//! The layout is fixed; later versions only give meaning to bytes that earlier versions
//! reserved (version 3 the CPUID family/model/stepping at 0x188, version 5 the mitigation
//! vectors at 0x1F8), so one parser reads them all. The signature (ECDSA P-384 with SHA-384
//! for `sig_algo` 1) covers bytes `[0, 0x2A0)`; its `r` and `s` are 72-byte little-endian
//! fields at 0x2A0 and 0x2E8.

use super::reader::Reader;
use super::FormatError;

/// The size of every SNP attestation report.
pub(crate) const REPORT_SIZE: usize = 1184;
/// The length of the signed part of the report: bytes `[0, SIGNED_LEN)`.
pub const SIGNED_LEN: usize = 0x2A0;
/// The oldest report version this parser reads (firmware before 1.51 wrote version 1, whose
/// reserved fields differ).
pub(crate) const MIN_VERSION: u32 = 2;
/// The newest report version this parser knows the layout of.
pub(crate) const MAX_VERSION: u32 = 5;

const WHAT: &str = "SNP report";

/// A parsed SNP attestation report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnpReport {
    /// Report format version (2 to 5).
    pub version: u32,
    /// The guest's security version number from its ID block.
    pub guest_svn: u32,
    /// The guest policy the VM was launched with.
    pub policy: GuestPolicy,
    /// Family ID from the ID block.
    pub family_id: [u8; 16],
    /// Image ID from the ID block.
    pub image_id: [u8; 16],
    /// The VM privilege level that requested the report (above 0 under an SVSM).
    pub vmpl: u32,
    /// Signature algorithm: 1 is ECDSA P-384 with SHA-384.
    pub sig_algo: u32,
    /// The TCB the platform runs now.
    pub current_tcb: Tcb,
    /// Platform information flags (SMT enabled, TSME enabled, ...).
    pub platform_info: u64,
    /// The word at 0x48: author key enabled (bit 0), chip key masked (bit 1), signing key
    /// (bits 2 to 4).
    pub key_info: u32,
    /// Guest-supplied data, where the broker's binding digest goes.
    pub report_data: [u8; 64],
    /// The launch measurement.
    pub measurement: [u8; 48],
    /// Host-supplied data (the init-data digest, when used).
    pub host_data: [u8; 32],
    /// SHA-384 of the ID key that signed the ID block, or zero.
    pub id_key_digest: [u8; 48],
    /// SHA-384 of the author key that signed the ID key, or zero.
    pub author_key_digest: [u8; 48],
    /// The guest's report ID.
    pub report_id: [u8; 32],
    /// The report ID of the guest's migration agent (all 0xFF when there is none).
    pub report_id_ma: [u8; 32],
    /// The TCB the report's signing key was derived from: what a VCEK must match.
    pub reported_tcb: Tcb,
    /// CPUID family, model and stepping (version 3 and later; zero before).
    pub cpuid: Option<Cpuid>,
    /// The chip identifier (zero when masked, as with a VLEK).
    pub chip_id: [u8; 64],
    /// The committed (anti-rollback) TCB.
    pub committed_tcb: Tcb,
    /// The running firmware version.
    pub current_version: FirmwareVersion,
    /// The committed firmware version.
    pub committed_version: FirmwareVersion,
    /// The TCB at the time the guest was launched.
    pub launch_tcb: Tcb,
    /// Mitigation vector at launch (version 5 and later).
    pub launch_mit_vector: Option<u64>,
    /// Current mitigation vector (version 5 and later).
    pub current_mit_vector: Option<u64>,
    /// The signature over [`SnpReport::signed_bytes`].
    pub signature: SnpSignature,
    /// Bytes `[0, 0x2A0)` of the report: what the signature covers.
    pub signed_bytes: Vec<u8>,
}

/// The signing key named in the report's key information word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigningKey {
    /// The versioned chip endorsement key (per chip, from AMD KDS).
    Vcek,
    /// The versioned loaded endorsement key (per cloud provider).
    Vlek,
    /// The report is not signed.
    None,
    /// A value the specification reserves.
    Reserved(u8),
}

impl SnpReport {
    /// Which key signed the report (bits 2 to 4 of [`SnpReport::key_info`]).
    pub fn signing_key(&self) -> SigningKey {
        match (self.key_info >> 2) & 0x7 {
            0 => SigningKey::Vcek,
            1 => SigningKey::Vlek,
            7 => SigningKey::None,
            // The mask keeps the value below 8, so the cast loses nothing.
            other => SigningKey::Reserved(other as u8),
        }
    }

    /// Whether the author key digest is present (bit 0 of the key information word).
    pub(crate) fn author_key_en(&self) -> bool {
        self.key_info & 1 != 0
    }

    /// Whether the chip ID was masked (bit 1 of the key information word).
    pub(crate) fn mask_chip_key(&self) -> bool {
        self.key_info & 2 != 0
    }

    /// The processor generation, when the report says (version 3 and later).
    pub fn generation(&self) -> Option<Generation> {
        self.cpuid.map(|c| c.generation())
    }
}

/// The guest policy (a 64-bit flag word).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestPolicy(pub u64);

impl GuestPolicy {
    /// The minimum ABI minor version the guest requires.
    pub(crate) fn abi_minor(self) -> u8 {
        (self.0 & 0xFF) as u8
    }
    /// The minimum ABI major version the guest requires.
    pub(crate) fn abi_major(self) -> u8 {
        ((self.0 >> 8) & 0xFF) as u8
    }
    /// SMT is allowed (bit 16).
    pub(crate) fn smt_allowed(self) -> bool {
        self.0 & (1 << 16) != 0
    }
    /// A migration agent may be associated (bit 18).
    pub(crate) fn migrate_ma(self) -> bool {
        self.0 & (1 << 18) != 0
    }
    /// Debugging is allowed (bit 19): the hypervisor can read guest memory.
    pub fn debug_allowed(self) -> bool {
        self.0 & (1 << 19) != 0
    }
    /// The guest may run on one socket only (bit 20).
    pub(crate) fn single_socket(self) -> bool {
        self.0 & (1 << 20) != 0
    }
}

/// CPUID family, model and stepping as the report gives them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cpuid {
    /// Extended family (0x19 Milan/Genoa, 0x1A Turin).
    pub family: u8,
    /// Extended model.
    pub model: u8,
    /// Stepping.
    pub stepping: u8,
}

/// An EPYC generation, which decides the TCB layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generation {
    /// Family 0x19, models 0x00 to 0x0F.
    Milan,
    /// Family 0x19, models 0x10 to 0x1F and 0xA0 to 0xAF (Genoa, Bergamo, Siena).
    Genoa,
    /// Family 0x1A.
    Turin,
    /// Anything else.
    Unknown,
}

impl Cpuid {
    /// The generation these identifiers name.
    pub fn generation(self) -> Generation {
        match (self.family, self.model) {
            (0x19, 0x00..=0x0F) => Generation::Milan,
            (0x19, 0x10..=0x1F) | (0x19, 0xA0..=0xAF) => Generation::Genoa,
            (0x1A, _) => Generation::Turin,
            _ => Generation::Unknown,
        }
    }
}

/// How the 64-bit TCB version splits into security patch levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcbLayout {
    /// Milan and Genoa: byte 0 boot loader, byte 1 TEE, byte 6 SNP, byte 7 microcode.
    PreTurin,
    /// Turin: byte 0 FMC, byte 1 boot loader, byte 2 TEE, byte 3 SNP, byte 7 microcode.
    Turin,
}

/// A TCB version: the raw value and its security patch levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tcb {
    /// The raw 64-bit value (little-endian in the report).
    pub raw: u64,
    /// The layout used to split it.
    pub layout: TcbLayout,
    /// FMC SPL (Turin only).
    pub fmc: Option<u8>,
    /// Boot loader SPL.
    pub bootloader: u8,
    /// TEE (PSP OS) SPL.
    pub tee: u8,
    /// SNP firmware SPL.
    pub snp: u8,
    /// Microcode SPL.
    pub microcode: u8,
}

impl Tcb {
    /// Splits `raw` according to `layout`.
    pub fn decode(raw: u64, layout: TcbLayout) -> Self {
        let b = raw.to_le_bytes();
        let [b0, b1, b2, b3, _, _, b6, b7] = b;
        match layout {
            TcbLayout::PreTurin => Tcb {
                raw,
                layout,
                fmc: None,
                bootloader: b0,
                tee: b1,
                snp: b6,
                microcode: b7,
            },
            TcbLayout::Turin => Tcb {
                raw,
                layout,
                fmc: Some(b0),
                bootloader: b1,
                tee: b2,
                snp: b3,
                microcode: b7,
            },
        }
    }
}

/// A firmware version (`major.minor`, build).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FirmwareVersion {
    /// Major version.
    pub major: u8,
    /// Minor version.
    pub minor: u8,
    /// Build number.
    pub build: u8,
}

/// The report signature: ECDSA `r` and `s`, each a 72-byte little-endian field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnpSignature {
    /// `r`, little-endian, zero-extended to 72 bytes.
    pub r: [u8; 72],
    /// `s`, little-endian, zero-extended to 72 bytes.
    pub s: [u8; 72],
}

impl SnpSignature {
    /// `r` as the 48-byte big-endian P-384 scalar, or `None` if its upper bytes are not zero.
    pub fn r_p384_be(&self) -> Option<[u8; 48]> {
        p384_be(&self.r)
    }

    /// `s` as the 48-byte big-endian P-384 scalar, or `None` if its upper bytes are not zero.
    pub fn s_p384_be(&self) -> Option<[u8; 48]> {
        p384_be(&self.s)
    }
}

fn p384_be(le: &[u8; 72]) -> Option<[u8; 48]> {
    let (low, high) = le.split_at(48);
    if high.iter().any(|&b| b != 0) {
        return None;
    }
    let mut out = [0u8; 48];
    for (o, i) in out.iter_mut().zip(low.iter().rev()) {
        *o = *i;
    }
    Some(out)
}

/// Parses a 1184-byte SNP attestation report.
pub fn parse_report(bytes: &[u8]) -> Result<SnpReport, FormatError> {
    if bytes.len() > REPORT_SIZE {
        return Err(FormatError::TrailingBytes {
            what: WHAT,
            extra: bytes.len() - REPORT_SIZE,
        });
    }
    let mut r = Reader::new(bytes, WHAT);
    let version = r.u32_le()?;
    if !(MIN_VERSION..=MAX_VERSION).contains(&version) {
        return Err(FormatError::UnsupportedVersion {
            what: WHAT,
            version,
        });
    }
    // Check the length now that the version is known to be plausible, so a short blob of the
    // wrong kind is reported as the wrong version rather than as a truncated report.
    if bytes.len() < REPORT_SIZE {
        return Err(FormatError::Truncated {
            what: WHAT,
            need: REPORT_SIZE,
            have: bytes.len(),
        });
    }

    let guest_svn = r.u32_le()?; // 0x04
    let policy = GuestPolicy(r.u64_le()?); // 0x08
    let family_id = r.array()?; // 0x10
    let image_id = r.array()?; // 0x20
    let vmpl = r.u32_le()?; // 0x30
    let sig_algo = r.u32_le()?; // 0x34
    let current_tcb_raw = r.u64_le()?; // 0x38
    let platform_info = r.u64_le()?; // 0x40
    let key_info = r.u32_le()?; // 0x48
    r.skip(4)?; // 0x4C reserved
    let report_data = r.array()?; // 0x50
    let measurement = r.array()?; // 0x90
    let host_data = r.array()?; // 0xC0
    let id_key_digest = r.array()?; // 0xE0
    let author_key_digest = r.array()?; // 0x110
    let report_id = r.array()?; // 0x140
    let report_id_ma = r.array()?; // 0x160
    let reported_tcb_raw = r.u64_le()?; // 0x180
    let [family, model, stepping] = r.array()?; // 0x188
    r.skip(0x1A0 - 0x18B)?; // reserved
    let chip_id = r.array()?; // 0x1A0
    let committed_tcb_raw = r.u64_le()?; // 0x1E0
    let current_version = firmware_version(&mut r)?; // 0x1E8
    r.skip(1)?;
    let committed_version = firmware_version(&mut r)?; // 0x1EC
    r.skip(1)?;
    let launch_tcb_raw = r.u64_le()?; // 0x1F0
    let launch_mit = r.u64_le()?; // 0x1F8
    let current_mit = r.u64_le()?; // 0x200
    r.skip(SIGNED_LEN - 0x208)?; // reserved up to the signature
    let sig_r = r.array()?; // 0x2A0
    let sig_s = r.array()?; // 0x2E8
    r.skip(REPORT_SIZE - 0x330)?; // reserved rest of the signature area
    r.finish()?;

    // Version 2 reports predate the CPUID fields; only Milan and Genoa firmware wrote them,
    // so their TCBs use the pre-Turin layout. From version 3 the family decides.
    let cpuid = (version >= 3).then_some(Cpuid {
        family,
        model,
        stepping,
    });
    let layout = match cpuid.map(Cpuid::generation) {
        Some(Generation::Turin) => TcbLayout::Turin,
        _ => TcbLayout::PreTurin,
    };
    let signed_bytes = bytes
        .get(..SIGNED_LEN)
        .ok_or(FormatError::Truncated {
            what: WHAT,
            need: SIGNED_LEN,
            have: bytes.len(),
        })?
        .to_vec();

    Ok(SnpReport {
        version,
        guest_svn,
        policy,
        family_id,
        image_id,
        vmpl,
        sig_algo,
        current_tcb: Tcb::decode(current_tcb_raw, layout),
        platform_info,
        key_info,
        report_data,
        measurement,
        host_data,
        id_key_digest,
        author_key_digest,
        report_id,
        report_id_ma,
        reported_tcb: Tcb::decode(reported_tcb_raw, layout),
        cpuid,
        chip_id,
        committed_tcb: Tcb::decode(committed_tcb_raw, layout),
        current_version,
        committed_version,
        launch_tcb: Tcb::decode(launch_tcb_raw, layout),
        launch_mit_vector: (version >= 5).then_some(launch_mit),
        current_mit_vector: (version >= 5).then_some(current_mit),
        signature: SnpSignature { r: sig_r, s: sig_s },
        signed_bytes,
    })
}

/// Reads build, minor and major (in that byte order).
fn firmware_version(r: &mut Reader<'_>) -> Result<FirmwareVersion, FormatError> {
    let [build, minor, major] = r.array()?;
    Ok(FirmwareVersion {
        major,
        minor,
        build,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blank(version: u32) -> Vec<u8> {
        let mut b = vec![0u8; REPORT_SIZE];
        b[..4].copy_from_slice(&version.to_le_bytes());
        b
    }

    #[test]
    fn layout_offsets() {
        let mut b = blank(3);
        b[0x50] = 0xAA; // report_data
        b[0x90] = 0xBB; // measurement
        b[0x180..0x188].copy_from_slice(&0x0102_0304_0506_0708u64.to_le_bytes());
        b[0x188..0x18B].copy_from_slice(&[0x1A, 0x02, 0x01]); // Turin
        b[0x1A0] = 0xCC; // chip_id
        b[0x1E8..0x1EB].copy_from_slice(&[29, 55, 1]);
        b[0x2A0] = 0x11; // r, least significant byte
        b[0x2E8 + 47] = 0x22; // s, most significant byte of a P-384 scalar
        let report = parse_report(&b).unwrap();
        assert_eq!(report.report_data[0], 0xAA);
        assert_eq!(report.measurement[0], 0xBB);
        assert_eq!(report.chip_id[0], 0xCC);
        assert_eq!(report.generation(), Some(Generation::Turin));
        let tcb = report.reported_tcb;
        assert_eq!(
            (tcb.fmc, tcb.bootloader, tcb.tee, tcb.snp, tcb.microcode),
            (Some(8), 7, 6, 5, 1)
        );
        assert_eq!(
            report.current_version,
            FirmwareVersion {
                major: 1,
                minor: 55,
                build: 29
            }
        );
        assert_eq!(report.signature.r_p384_be().unwrap()[47], 0x11);
        assert_eq!(report.signature.s_p384_be().unwrap()[0], 0x22);
        assert_eq!(report.signed_bytes.len(), SIGNED_LEN);
        assert_eq!(report.launch_mit_vector, None);
    }

    #[test]
    fn version_2_has_no_cpuid_and_uses_the_milan_layout() {
        let mut b = blank(2);
        b[0x188] = 0x1A; // reserved in version 2: ignored
        b[0x38..0x40].copy_from_slice(&0x7308_0000_0000_0003u64.to_le_bytes());
        let report = parse_report(&b).unwrap();
        assert_eq!(report.cpuid, None);
        let tcb = report.current_tcb;
        assert_eq!(
            (tcb.fmc, tcb.bootloader, tcb.tee, tcb.snp, tcb.microcode),
            (None, 3, 0, 8, 115)
        );
    }

    #[test]
    fn rejects_bad_versions_and_sizes() {
        for v in [0, 1, 6, u32::MAX] {
            assert_eq!(
                parse_report(&blank(v)),
                Err(FormatError::UnsupportedVersion {
                    what: WHAT,
                    version: v
                })
            );
        }
        let b = blank(2);
        assert!(matches!(
            parse_report(&b[..1183]),
            Err(FormatError::Truncated { need: 1184, .. })
        ));
        assert!(matches!(
            parse_report(&b[..3]),
            Err(FormatError::Truncated { .. })
        ));
        let mut long = b;
        long.push(0);
        assert_eq!(
            parse_report(&long),
            Err(FormatError::TrailingBytes {
                what: WHAT,
                extra: 1
            })
        );
        assert_eq!(
            parse_report(&[]).unwrap_err().to_string(),
            "SNP report: truncated: need 4 bytes, have 0"
        );
    }
}
