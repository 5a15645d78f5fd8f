//! TCG PC-Client measured-boot event logs (`binary_bios_measurements`) and the TDX CCEL.
//!
//! Two record formats exist, both little-endian:
//!
//! * `TCG_PCR_EVENT` (TCG 1.2, "SHA-1 legacy"): PCR index, event type, one 20-byte SHA-1
//!   digest, data size, data. A legacy log is made only of these.
//! * `TCG_PCR_EVENT2` (crypto-agile): PCR index, event type, a `TPML_DIGEST_VALUES` (count,
//!   then per digest an algorithm ID and a digest whose size the log header declares), data
//!   size, data. A crypto-agile log starts with one `TCG_PCR_EVENT` of type `EV_NO_ACTION`
//!   whose data is the "Spec ID Event03" structure listing the algorithms and digest sizes.
//!
//! Replaying a log recomputes what each PCR must hold: starting from zero (PCR0 from the
//! locality of a "StartupLocality" `EV_NO_ACTION` event, when there is one), every event
//! except `EV_NO_ACTION` extends `PCR = H(PCR ‖ digest)`.
//!
//! The TDX CCEL (the ACPI CCEL table's log area, `/sys/firmware/acpi/tables/data/CCEL`) uses
//! the crypto-agile format with only SHA-384, but its index field holds a CC measurement
//! register index: 1 to 4 are RTMR0 to RTMR3 (0 would be MRTD, which no event extends). The
//! log area is larger than the log; see [`parse_ccel`] for where the log ends.

use std::collections::BTreeMap;

use super::reader::Reader;
use super::{check_max, FormatError, HashAlg};

/// `EV_NO_ACTION`: informational events that extend no PCR.
pub const EV_NO_ACTION: u32 = 0x3;
/// The most records a log may hold. Real logs hold tens to a few hundred.
pub(crate) const MAX_EVENTS: usize = 100_000;
/// The most digests per record, and the most algorithms a Spec ID event may declare.
pub(crate) const MAX_DIGESTS: u32 = 8;
/// The largest event data accepted (16 MiB).
pub(crate) const MAX_EVENT_DATA: u32 = 16 * 1024 * 1024;
/// The number of PCRs of a PC-Client TPM.
pub const PCR_COUNT: u32 = 24;
/// The largest digest an event log may declare (SHA-512).
pub(crate) const MAX_DIGEST_SIZE: u16 = 64;

const SPEC_ID_SIGNATURE: &[u8; 16] = b"Spec ID Event03\0";
const STARTUP_LOCALITY_SIGNATURE: &[u8; 16] = b"StartupLocality\0";
const WHAT_TPM: &str = "event log";
const WHAT_CCEL: &str = "CCEL event log";
const WHAT_SPEC_ID: &str = "Spec ID event";

/// Which record format a log uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// TCG 1.2: only `TCG_PCR_EVENT` records with SHA-1 digests.
    Sha1Legacy,
    /// TCG 2.0: a Spec ID event, then `TCG_PCR_EVENT2` records.
    CryptoAgile,
}

/// An algorithm a crypto-agile log declares, with its digest size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlgorithmSize {
    /// The algorithm.
    pub alg: HashAlg,
    /// Its digest size in bytes, as the log declares it.
    pub digest_size: u16,
}

/// The "Spec ID Event03" header of a crypto-agile log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecIdEvent {
    /// Platform class (0 client, 1 server).
    pub platform_class: u32,
    /// Specification version, minor.
    pub spec_version_minor: u8,
    /// Specification version, major.
    pub spec_version_major: u8,
    /// Specification errata.
    pub spec_errata: u8,
    /// Size of UINTN: 1 for 32-bit, 2 for 64-bit firmware.
    pub uintn_size: u8,
    /// The PCR banks every record carries a digest for, in the log's order.
    pub algorithms: Vec<AlgorithmSize>,
    /// Vendor information (td-shim writes "td-shim" here).
    pub vendor_info: Vec<u8>,
}

/// One digest of a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest {
    /// The algorithm.
    pub alg: HashAlg,
    /// The digest.
    pub value: Vec<u8>,
}

/// One record of a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The PCR index (a TPM log) or CC measurement register index (a CCEL).
    pub index: u32,
    /// The event type (`EV_*`).
    pub event_type: u32,
    /// One digest per bank.
    pub digests: Vec<Digest>,
    /// The event data.
    pub data: Vec<u8>,
}

impl Event {
    /// This record's digest in the bank of `alg`.
    pub fn digest(&self, alg: HashAlg) -> Option<&[u8]> {
        self.digests
            .iter()
            .find(|d| d.alg == alg)
            .map(|d| d.value.as_slice())
    }
}

/// A parsed event log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventLog {
    /// The record format.
    pub format: LogFormat,
    /// The Spec ID header (crypto-agile logs only).
    pub spec_id: Option<SpecIdEvent>,
    /// Every record, including the Spec ID record of a crypto-agile log.
    pub events: Vec<Event>,
    /// The locality of the first "StartupLocality" `EV_NO_ACTION` event (TPM logs only).
    pub startup_locality: Option<u8>,
}

/// The replay of one PCR bank.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BankReplay {
    /// The bank's algorithm.
    pub alg: HashAlg,
    /// Its digest size.
    pub digest_size: usize,
    /// False when this build cannot compute the algorithm (SM3, unknown IDs): then `pcrs` is
    /// empty and only `extend_count` is meaningful.
    pub replayed: bool,
    /// How many records extend a register in this bank.
    pub extend_count: usize,
    /// The replayed value of every register at least one record extends, by index.
    pub pcrs: BTreeMap<u32, Vec<u8>>,
}

impl EventLog {
    /// The banks this log carries, in the log's order.
    pub fn algorithms(&self) -> Vec<AlgorithmSize> {
        match &self.spec_id {
            Some(spec) => spec.algorithms.clone(),
            None => vec![AlgorithmSize {
                alg: HashAlg::Sha1,
                digest_size: 20,
            }],
        }
    }

    /// Replays every bank.
    pub fn replay(&self) -> Vec<BankReplay> {
        self.algorithms()
            .into_iter()
            .map(|a| self.replay_bank(a))
            .collect()
    }

    /// Replays the bank of `alg`, or `None` when the log does not carry it.
    pub fn replay_alg(&self, alg: HashAlg) -> Option<BankReplay> {
        self.algorithms()
            .into_iter()
            .find(|a| a.alg == alg)
            .map(|a| self.replay_bank(a))
    }

    fn replay_bank(&self, bank: AlgorithmSize) -> BankReplay {
        let size = usize::from(bank.digest_size);
        let replayed = bank.alg.hash(&[]).is_some();
        let mut pcrs: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
        let mut extend_count = 0;
        let mut buf = Vec::with_capacity(2 * size);
        for ev in self.extending_events() {
            // Parsing checked that every record carries every declared bank.
            let Some(digest) = ev.digest(bank.alg) else {
                continue;
            };
            extend_count += 1;
            if !replayed {
                continue;
            }
            let pcr = pcrs
                .entry(ev.index)
                .or_insert_with(|| self.initial_value(ev.index, size));
            buf.clear();
            buf.extend_from_slice(pcr);
            buf.extend_from_slice(digest);
            if let Some(next) = bank.alg.hash(&buf) {
                *pcr = next;
            }
        }
        BankReplay {
            alg: bank.alg,
            digest_size: size,
            replayed,
            extend_count,
            pcrs,
        }
    }

    /// The records that extend a register: all but `EV_NO_ACTION`.
    pub(crate) fn extending_events(&self) -> impl Iterator<Item = &Event> {
        self.events.iter().filter(|e| e.event_type != EV_NO_ACTION)
    }

    /// The value a register holds at reset: zero, except that PCR0 holds the startup
    /// locality in its last byte (a TPM started from locality 3 by an H-CRTM or Boot Guard).
    pub(crate) fn initial_value(&self, index: u32, size: usize) -> Vec<u8> {
        let mut value = vec![0u8; size];
        if let (0, Some(locality), Some(last)) = (index, self.startup_locality, value.last_mut()) {
            *last = locality;
        }
        value
    }
}

/// Which log is being read: the rules differ in index range and end of log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Tpm,
    Ccel,
}

impl Mode {
    fn what(self) -> &'static str {
        match self {
            Mode::Tpm => WHAT_TPM,
            Mode::Ccel => WHAT_CCEL,
        }
    }
}

/// Parses a TPM event log (`binary_bios_measurements`), legacy or crypto-agile.
///
/// The kernel exports exactly the log, so the input must end at a record boundary.
pub fn parse_event_log(bytes: &[u8]) -> Result<EventLog, FormatError> {
    parse(bytes, Mode::Tpm).map(|(log, _)| log)
}

/// A parsed CCEL: the log, and where in the input it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CcelLog {
    /// The records (indices are CC measurement register indices).
    pub log: EventLog,
    /// The offset just after the last record.
    pub log_end: usize,
    /// How many padding bytes followed it.
    pub padding: usize,
}

impl CcelLog {
    /// RTMR0 to RTMR3 replayed from the SHA-384 digests.
    pub fn rtmrs(&self) -> [[u8; 48]; 4] {
        let mut rtmrs = [[0u8; 48]; 4];
        if let Some(bank) = self.log.replay_alg(HashAlg::Sha384) {
            for (index, value) in &bank.pcrs {
                let slot = index.checked_sub(1).and_then(|i| rtmrs.get_mut(i as usize));
                if let (Some(slot), Ok(value)) = (slot, <[u8; 48]>::try_from(value.as_slice())) {
                    *slot = value;
                }
            }
        }
        rtmrs
    }

    /// How many records extend each of RTMR0 to RTMR3.
    pub(crate) fn extend_counts(&self) -> [usize; 4] {
        let mut counts = [0usize; 4];
        for ev in self.log.extending_events() {
            if let Some(c) = ev
                .index
                .checked_sub(1)
                .and_then(|i| counts.get_mut(i as usize))
            {
                *c += 1;
            }
        }
        counts
    }
}

/// Parses a TDX CCEL log area.
///
/// The ACPI table reserves a fixed log area (64 KiB for OVMF, 1 MiB for td-shim) and the log
/// fills only its start; firmware leaves the rest as it initialised it (0xFF for OVMF, 0x00
/// for td-shim). **The log ends** at the end of the input, or at the first record boundary
/// where the 8-byte record header (index and event type) is all 0x00 or all 0xFF, or the
/// event type is 0xFFFFFFFF (no real event has either). Everything after that point must be
/// 0x00 or 0xFF bytes, or the input is rejected with [`FormatError::TrailingBytes`].
pub fn parse_ccel(bytes: &[u8]) -> Result<CcelLog, FormatError> {
    let (log, log_end) = parse(bytes, Mode::Ccel)?;
    if !log.algorithms().iter().any(|a| a.alg == HashAlg::Sha384) {
        return Err(FormatError::invalid(
            WHAT_CCEL,
            "the Spec ID event declares no SHA-384 bank",
        ));
    }
    Ok(CcelLog {
        log,
        log_end,
        padding: bytes.len().saturating_sub(log_end),
    })
}

/// The Spec ID header of a crypto-agile log, read from the first record only; `None` when
/// the first record is not a well-formed Spec ID Event03 (a legacy log, or not a log at all).
/// Cheap enough for guessing what a blob is.
pub(crate) fn spec_id_of(bytes: &[u8]) -> Option<SpecIdEvent> {
    let mut r = Reader::new(bytes, WHAT_TPM);
    let first = read_legacy_event(&mut r).ok()?;
    if first.event_type == EV_NO_ACTION && first.data.starts_with(SPEC_ID_SIGNATURE) {
        parse_spec_id(&first.data).ok()
    } else {
        None
    }
}

/// Whether a CCEL ends here (see [`parse_ccel`]).
fn at_ccel_end(rest: &[u8]) -> bool {
    let header = rest.get(..8).unwrap_or(rest);
    header.iter().all(|&b| b == 0)
        || header.iter().all(|&b| b == 0xFF)
        || rest.get(4..8) == Some(&[0xFF; 4][..])
}

fn parse(bytes: &[u8], mode: Mode) -> Result<(EventLog, usize), FormatError> {
    let what = mode.what();
    let mut r = Reader::new(bytes, what);

    // The first record is a TCG_PCR_EVENT in both formats.
    let first = read_legacy_event(&mut r)?;
    let spec_id = if first.event_type == EV_NO_ACTION && first.data.starts_with(SPEC_ID_SIGNATURE) {
        Some(parse_spec_id(&first.data)?)
    } else {
        None
    };
    if mode == Mode::Ccel && spec_id.is_none() {
        return Err(FormatError::invalid(
            what,
            "the first record is not a Spec ID Event03 (a CCEL is always crypto-agile)",
        ));
    }
    check_index(&first, mode)?;
    let mut events = vec![first];

    loop {
        let rest = r.rest();
        if rest.is_empty() {
            break;
        }
        if mode == Mode::Ccel && at_ccel_end(rest) {
            let garbage = rest.iter().filter(|&&b| b != 0 && b != 0xFF).count();
            if garbage != 0 {
                return Err(FormatError::TrailingBytes {
                    what,
                    extra: rest.len(),
                });
            }
            break;
        }
        check_max(
            "event log record count",
            (events.len() + 1) as u64,
            MAX_EVENTS as u64,
        )?;
        let event = match &spec_id {
            Some(spec) => read_agile_event(&mut r, what, spec)?,
            None => read_legacy_event(&mut r)?,
        };
        check_index(&event, mode)?;
        events.push(event);
    }
    let end = r.position();

    let startup_locality = match mode {
        Mode::Tpm => startup_locality(&events)?,
        Mode::Ccel => None,
    };
    let format = if spec_id.is_some() {
        LogFormat::CryptoAgile
    } else {
        LogFormat::Sha1Legacy
    };
    Ok((
        EventLog {
            format,
            spec_id,
            events,
            startup_locality,
        },
        end,
    ))
}

/// A record that extends a register must name one that exists: PCR0 to PCR23 in a TPM log,
/// RTMR0 to RTMR3 (indices 1 to 4) in a CCEL.
fn check_index(event: &Event, mode: Mode) -> Result<(), FormatError> {
    if event.event_type == EV_NO_ACTION {
        return Ok(());
    }
    let ok = match mode {
        Mode::Tpm => event.index < PCR_COUNT,
        Mode::Ccel => (1..=4).contains(&event.index),
    };
    if ok {
        Ok(())
    } else {
        Err(FormatError::invalid(
            mode.what(),
            format!(
                "event type {:#x} extends register index {}, which does not exist",
                event.event_type, event.index
            ),
        ))
    }
}

/// The locality of the first StartupLocality event: 17 bytes, the signature then the byte.
fn startup_locality(events: &[Event]) -> Result<Option<u8>, FormatError> {
    let Some(event) = events
        .iter()
        .find(|e| e.event_type == EV_NO_ACTION && e.data.starts_with(STARTUP_LOCALITY_SIGNATURE))
    else {
        return Ok(None);
    };
    match event.data.get(STARTUP_LOCALITY_SIGNATURE.len()..) {
        Some([locality]) => Ok(Some(*locality)),
        _ => Err(FormatError::invalid(
            WHAT_TPM,
            format!(
                "StartupLocality event data is {} bytes, not 17",
                event.data.len()
            ),
        )),
    }
}

fn read_event_data(r: &mut Reader<'_>) -> Result<Vec<u8>, FormatError> {
    let size = r.u32_le()?;
    check_max("event data size", size.into(), MAX_EVENT_DATA.into())?;
    Ok(r.bytes(size as usize)?.to_vec())
}

fn read_legacy_event(r: &mut Reader<'_>) -> Result<Event, FormatError> {
    let index = r.u32_le()?;
    let event_type = r.u32_le()?;
    let digest: [u8; 20] = r.array()?;
    let data = read_event_data(r)?;
    Ok(Event {
        index,
        event_type,
        digests: vec![Digest {
            alg: HashAlg::Sha1,
            value: digest.to_vec(),
        }],
        data,
    })
}

fn read_agile_event(
    r: &mut Reader<'_>,
    what: &'static str,
    spec: &SpecIdEvent,
) -> Result<Event, FormatError> {
    let index = r.u32_le()?;
    let event_type = r.u32_le()?;
    let count = r.u32_le()?;
    check_max("event digest count", count.into(), MAX_DIGESTS.into())?;
    let mut digests: Vec<Digest> = Vec::new();
    for _ in 0..count {
        let alg = HashAlg::from_id(r.u16_le()?);
        let Some(declared) = spec.algorithms.iter().find(|a| a.alg == alg) else {
            return Err(FormatError::invalid(
                what,
                format!("a record uses {alg}, which the Spec ID event does not declare"),
            ));
        };
        if digests.iter().any(|d| d.alg == alg) {
            return Err(FormatError::invalid(
                what,
                format!("a record carries two {alg} digests"),
            ));
        }
        let value = r.bytes(declared.digest_size.into())?.to_vec();
        digests.push(Digest { alg, value });
    }
    // Every record must carry every declared bank, or no bank could be replayed faithfully.
    if digests.len() != spec.algorithms.len() {
        return Err(FormatError::invalid(
            what,
            format!(
                "a record carries {} digests but the Spec ID event declares {} banks",
                digests.len(),
                spec.algorithms.len()
            ),
        ));
    }
    let data = read_event_data(r)?;
    Ok(Event {
        index,
        event_type,
        digests,
        data,
    })
}

/// Parses the data of the Spec ID record.
fn parse_spec_id(data: &[u8]) -> Result<SpecIdEvent, FormatError> {
    let mut r = Reader::new(data, WHAT_SPEC_ID);
    r.skip(SPEC_ID_SIGNATURE.len())?;
    let platform_class = r.u32_le()?;
    let spec_version_minor = r.u8()?;
    let spec_version_major = r.u8()?;
    let spec_errata = r.u8()?;
    let uintn_size = r.u8()?;
    let count = r.u32_le()?;
    check_max("Spec ID algorithm count", count.into(), MAX_DIGESTS.into())?;
    if count == 0 {
        return Err(FormatError::invalid(
            WHAT_SPEC_ID,
            "it declares no algorithm",
        ));
    }
    let mut algorithms: Vec<AlgorithmSize> = Vec::new();
    for _ in 0..count {
        let alg = HashAlg::from_id(r.u16_le()?);
        let digest_size = r.u16_le()?;
        let size_ok = match alg.digest_size() {
            Some(known) => usize::from(digest_size) == known,
            None => (1..=MAX_DIGEST_SIZE).contains(&digest_size),
        };
        if !size_ok {
            return Err(FormatError::invalid(
                WHAT_SPEC_ID,
                format!("{alg} declared with digest size {digest_size}"),
            ));
        }
        if algorithms.iter().any(|a| a.alg == alg) {
            return Err(FormatError::invalid(
                WHAT_SPEC_ID,
                format!("{alg} declared twice"),
            ));
        }
        algorithms.push(AlgorithmSize { alg, digest_size });
    }
    let vendor_size = r.u8()?;
    let vendor_info = r.bytes(vendor_size.into())?.to_vec();
    r.finish()?;
    Ok(SpecIdEvent {
        platform_class,
        spec_version_minor,
        spec_version_major,
        spec_errata,
        uintn_size,
        algorithms,
        vendor_info,
    })
}

/// The EFI variable an `EV_EFI_VARIABLE_*` event measured (`UEFI_VARIABLE_DATA`): its vendor
/// GUID, its name, and the length of the value that follows in the event data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EfiVariable {
    /// The vendor GUID in its registry form (`8be4df61-93ca-11d2-aa0d-00e098032b8c`).
    pub guid: String,
    /// The variable's name (`SecureBoot`, `PK`, `db`, `Boot0001`...).
    pub name: String,
    /// The length of the value after the name.
    pub value_len: usize,
}

/// `EV_EFI_VARIABLE_DRIVER_CONFIG`, `_BOOT`, `_BOOT2` and `_AUTHORITY`: events whose data is a
/// `UEFI_VARIABLE_DATA`.
pub(crate) fn is_efi_variable_event(event_type: u32) -> bool {
    matches!(
        event_type,
        0x8000_0001 | 0x8000_0002 | 0x8000_000C | 0x8000_00E0
    )
}

/// Reads a `UEFI_VARIABLE_DATA` (GUID, name length in UTF-16 units, value length, the name,
/// the value): `None` unless the lengths account for exactly the bytes given.
pub fn efi_variable(data: &[u8]) -> Option<EfiVariable> {
    let guid = data.get(..16)?;
    let u64_at = |i: usize| -> Option<usize> {
        let b: [u8; 8] = data.get(i..i + 8)?.try_into().ok()?;
        usize::try_from(u64::from_le_bytes(b)).ok()
    };
    let name_units = u64_at(16)?;
    let value_len = u64_at(24)?;
    let name_end = name_units.checked_mul(2)?.checked_add(32)?;
    if name_end.checked_add(value_len)? != data.len() {
        return None;
    }
    let units: Vec<u16> = data
        .get(32..name_end)?
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    let name = String::from_utf16_lossy(&units)
        .trim_end_matches('\0')
        .to_owned();
    let d1 = u32::from_le_bytes(guid.get(..4)?.try_into().ok()?);
    let d2 = u16::from_le_bytes(guid.get(4..6)?.try_into().ok()?);
    let d3 = u16::from_le_bytes(guid.get(6..8)?.try_into().ok()?);
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    Some(EfiVariable {
        guid: format!(
            "{d1:08x}-{d2:04x}-{d3:04x}-{}-{}",
            hex(guid.get(8..10)?),
            hex(guid.get(10..16)?)
        ),
        name,
        value_len,
    })
}

/// The TCG name of an event type, when it has one.
pub fn event_type_name(event_type: u32) -> Option<&'static str> {
    Some(match event_type {
        0x0000_0000 => "EV_PREBOOT_CERT",
        0x0000_0001 => "EV_POST_CODE",
        0x0000_0002 => "EV_UNUSED",
        0x0000_0003 => "EV_NO_ACTION",
        0x0000_0004 => "EV_SEPARATOR",
        0x0000_0005 => "EV_ACTION",
        0x0000_0006 => "EV_EVENT_TAG",
        0x0000_0007 => "EV_S_CRTM_CONTENTS",
        0x0000_0008 => "EV_S_CRTM_VERSION",
        0x0000_0009 => "EV_CPU_MICROCODE",
        0x0000_000A => "EV_PLATFORM_CONFIG_FLAGS",
        0x0000_000B => "EV_TABLE_OF_DEVICES",
        0x0000_000C => "EV_COMPACT_HASH",
        0x0000_000D => "EV_IPL",
        0x0000_000E => "EV_IPL_PARTITION_DATA",
        0x0000_000F => "EV_NONHOST_CODE",
        0x0000_0010 => "EV_NONHOST_CONFIG",
        0x0000_0011 => "EV_NONHOST_INFO",
        0x0000_0012 => "EV_OMIT_BOOT_DEVICE_EVENTS",
        0x0000_0013 => "EV_POST_CODE2",
        0x8000_0001 => "EV_EFI_VARIABLE_DRIVER_CONFIG",
        0x8000_0002 => "EV_EFI_VARIABLE_BOOT",
        0x8000_0003 => "EV_EFI_BOOT_SERVICES_APPLICATION",
        0x8000_0004 => "EV_EFI_BOOT_SERVICES_DRIVER",
        0x8000_0005 => "EV_EFI_RUNTIME_SERVICES_DRIVER",
        0x8000_0006 => "EV_EFI_GPT_EVENT",
        0x8000_0007 => "EV_EFI_ACTION",
        0x8000_0008 => "EV_EFI_PLATFORM_FIRMWARE_BLOB",
        0x8000_0009 => "EV_EFI_HANDOFF_TABLES",
        0x8000_000A => "EV_EFI_PLATFORM_FIRMWARE_BLOB2",
        0x8000_000B => "EV_EFI_HANDOFF_TABLES2",
        0x8000_000C => "EV_EFI_VARIABLE_BOOT2",
        0x8000_000D => "EV_EFI_GPT_EVENT2",
        0x8000_0010 => "EV_EFI_HCRTM_EVENT",
        0x8000_00E0 => "EV_EFI_VARIABLE_AUTHORITY",
        0x8000_00E1 => "EV_EFI_SPDM_FIRMWARE_BLOB",
        0x8000_00E2 => "EV_EFI_SPDM_FIRMWARE_CONFIG",
        0x8000_00E3 => "EV_EFI_SPDM_DEVICE_POLICY",
        0x8000_00E4 => "EV_EFI_SPDM_DEVICE_AUTHORITY",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn legacy_record(index: u32, event_type: u32, digest: [u8; 20], data: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&index.to_le_bytes());
        v.extend_from_slice(&event_type.to_le_bytes());
        v.extend_from_slice(&digest);
        v.extend_from_slice(&(data.len() as u32).to_le_bytes());
        v.extend_from_slice(data);
        v
    }

    fn spec_id_record(algs: &[(u16, u16)]) -> Vec<u8> {
        let mut d = SPEC_ID_SIGNATURE.to_vec();
        d.extend_from_slice(&0u32.to_le_bytes());
        d.extend_from_slice(&[0, 2, 0, 2]);
        d.extend_from_slice(&(algs.len() as u32).to_le_bytes());
        for (id, size) in algs {
            d.extend_from_slice(&id.to_le_bytes());
            d.extend_from_slice(&size.to_le_bytes());
        }
        d.push(0);
        legacy_record(0, EV_NO_ACTION, [0; 20], &d)
    }

    fn agile_record(
        index: u32,
        event_type: u32,
        digests: &[(u16, Vec<u8>)],
        data: &[u8],
    ) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&index.to_le_bytes());
        v.extend_from_slice(&event_type.to_le_bytes());
        v.extend_from_slice(&(digests.len() as u32).to_le_bytes());
        for (id, d) in digests {
            v.extend_from_slice(&id.to_le_bytes());
            v.extend_from_slice(d);
        }
        v.extend_from_slice(&(data.len() as u32).to_le_bytes());
        v.extend_from_slice(data);
        v
    }

    #[test]
    fn legacy_replay_with_startup_locality() {
        let mut log = legacy_record(0, EV_NO_ACTION, [0; 20], b"StartupLocality\0\x03");
        log.extend(legacy_record(0, 8, [0x11; 20], b"v1"));
        let parsed = parse_event_log(&log).unwrap();
        assert_eq!(parsed.format, LogFormat::Sha1Legacy);
        assert_eq!(parsed.startup_locality, Some(3));
        let bank = parsed.replay_alg(HashAlg::Sha1).unwrap();
        let mut start = vec![0u8; 20];
        start[19] = 3;
        start.extend_from_slice(&[0x11; 20]);
        assert_eq!(bank.pcrs[&0], super::super::sha1::sha1(&start).to_vec());
        assert_eq!(bank.extend_count, 1);
    }

    #[test]
    fn agile_records_must_carry_every_declared_bank() {
        let mut log = spec_id_record(&[(0x000B, 32), (0x000C, 48)]);
        log.extend(agile_record(4, 0x8000_0003, &[(0x000B, vec![1; 32])], b""));
        assert!(matches!(
            parse_event_log(&log),
            Err(FormatError::Invalid { .. })
        ));
    }

    #[test]
    fn caps_counts() {
        let mut log = spec_id_record(&[(0x000B, 32)]);
        let mut rec = agile_record(4, 0x8000_0003, &[(0x000B, vec![1; 32])], b"");
        rec[8..12].copy_from_slice(&1000u32.to_le_bytes());
        log.extend(rec);
        assert!(matches!(
            parse_event_log(&log),
            Err(FormatError::TooMany { max: 8, .. })
        ));
        let too_many_algs = spec_id_record(&[(0x000B, 32); 9]);
        assert!(matches!(
            parse_event_log(&too_many_algs),
            Err(FormatError::TooMany { .. })
        ));
        let wrong_size = spec_id_record(&[(0x000B, 48)]);
        assert!(matches!(
            parse_event_log(&wrong_size),
            Err(FormatError::Invalid { .. })
        ));
    }

    #[test]
    fn ccel_end_and_padding() {
        let mut log = spec_id_record(&[(0x000C, 48)]);
        log.extend(agile_record(2, 0x8000_0003, &[(0x000C, vec![7; 48])], b"x"));
        let end = log.len();
        log.extend_from_slice(&[0xFF; 100]);
        let ccel = parse_ccel(&log).unwrap();
        assert_eq!((ccel.log_end, ccel.padding), (end, 100));
        assert_eq!(ccel.extend_counts(), [0, 1, 0, 0]);
        assert_ne!(ccel.rtmrs()[1], [0; 48]);
        assert_eq!(ccel.rtmrs()[0], [0; 48]);
        // Garbage after the end marker is not padding.
        log.push(0x42);
        assert!(matches!(
            parse_ccel(&log),
            Err(FormatError::TrailingBytes { .. })
        ));
        // MR index 0 (MRTD) cannot be extended.
        let mut bad = spec_id_record(&[(0x000C, 48)]);
        bad.extend(agile_record(0, 0x8000_0003, &[(0x000C, vec![7; 48])], b""));
        assert!(matches!(parse_ccel(&bad), Err(FormatError::Invalid { .. })));
        // The TPM parser refuses the padding.
        let mut padded = spec_id_record(&[(0x000C, 48)]);
        padded.extend_from_slice(&[0; 40]);
        assert!(parse_event_log(&padded).is_err());
    }

    #[test]
    fn efi_variable_data_is_read_exactly() {
        // EFI_GLOBAL_VARIABLE 8be4df61-93ca-11d2-aa0d-00e098032b8c, "PK", a 3-byte value.
        let mut d = vec![0x61, 0xdf, 0xe4, 0x8b, 0xca, 0x93, 0xd2, 0x11];
        d.extend_from_slice(&[0xaa, 0x0d, 0x00, 0xe0, 0x98, 0x03, 0x2b, 0x8c]);
        d.extend_from_slice(&2u64.to_le_bytes());
        d.extend_from_slice(&3u64.to_le_bytes());
        d.extend_from_slice(&[b'P', 0, b'K', 0]);
        d.extend_from_slice(b"abc");
        let v = efi_variable(&d).unwrap();
        assert_eq!(v.guid, "8be4df61-93ca-11d2-aa0d-00e098032b8c");
        assert_eq!((v.name.as_str(), v.value_len), ("PK", 3));
        // One byte short, one byte over, lengths that overflow: not a variable.
        assert!(efi_variable(&d[..d.len() - 1]).is_none());
        let mut over = d.clone();
        over.push(0);
        assert!(efi_variable(&over).is_none());
        let mut huge = d.clone();
        huge[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(efi_variable(&huge).is_none());
        assert!(efi_variable(&[]).is_none());
    }
}
