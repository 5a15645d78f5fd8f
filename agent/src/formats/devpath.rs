//! UEFI device paths (UEFI 2.10, section 10) as text, in the form of the specification's text
//! representation (section 10.6, what edk2's `DevicePathToText` prints), for the events that
//! carry one: an image load (`UEFI_IMAGE_LOAD_EVENT`: which shim, GRUB or kernel was run, from
//! which disk and partition) and a boot option (`EFI_LOAD_OPTION` in `Boot####`).
//!
//! Nodes this module does not name print as `Path(type,subtype,hex)`, as edk2 prints them.
//! Hex numbers are lowercase, GUIDs in their registry form.

use super::reader::Reader;
use super::FormatError;

const WHAT: &str = "EFI device path";
/// Nodes in one path at most (real paths have fewer than ten).
const MAX_NODES: usize = 64;

/// The registry form of a GUID stored in its mixed-endian EFI layout.
pub(crate) fn guid(b: &[u8; 16]) -> String {
    let d1 = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    let d2 = u16::from_le_bytes([b[4], b[5]]);
    let d3 = u16::from_le_bytes([b[6], b[7]]);
    let hex = |s: &[u8]| s.iter().map(|x| format!("{x:02x}")).collect::<String>();
    format!(
        "{d1:08x}-{d2:04x}-{d3:04x}-{}-{}",
        hex(&b[8..10]),
        hex(&b[10..16])
    )
}

/// UCS-2 text up to its NUL.
fn ucs2(data: &[u8]) -> String {
    let units: Vec<u16> = data
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|u| *u != 0)
        .collect();
    String::from_utf16_lossy(&units)
        .chars()
        .map(|c| if c.is_control() { '.' } else { c })
        .collect()
}

/// The text of one node's body (`data`: after its 4-byte header).
fn node(kind: u8, sub: u8, data: &[u8]) -> Result<String, FormatError> {
    let mut r = Reader::new(data, WHAT);
    let generic = || {
        let hex: String = data.iter().map(|x| format!("{x:02x}")).collect();
        format!("Path({kind},{sub},{hex})")
    };
    Ok(match (kind, sub) {
        // Hardware: PCI, memory-mapped, vendor.
        (1, 1) if data.len() == 2 => {
            let function = r.u8()?;
            let device = r.u8()?;
            format!("Pci({device:#x},{function:#x})")
        }
        (1, 3) if data.len() == 20 => {
            let mem = r.u32_le()?;
            let start = r.u64_le()?;
            let end = r.u64_le()?;
            format!("MemoryMapped({mem:#x},{start:#x},{end:#x})")
        }
        (1, 4) if data.len() >= 16 => format!("VenHw({})", guid(&r.array()?)),
        // ACPI: the PCI root bridges by their EISA id, others by HID and UID.
        (2, 1) if data.len() == 8 => {
            let hid = r.u32_le()?;
            let uid = r.u32_le()?;
            match hid {
                0x0a03_41d0 => format!("PciRoot({uid:#x})"),
                0x0a08_41d0 => format!("PcieRoot({uid:#x})"),
                _ => format!("Acpi({hid:#010x},{uid:#x})"),
            }
        }
        // Messaging.
        (3, 2) if data.len() == 4 => {
            let pun = r.u16_le()?;
            let lun = r.u16_le()?;
            format!("Scsi({pun:#x},{lun:#x})")
        }
        (3, 5) if data.len() == 2 => {
            let port = r.u8()?;
            let iface = r.u8()?;
            format!("USB({port:#x},{iface:#x})")
        }
        (3, 10) if data.len() >= 16 => format!("VenMsg({})", guid(&r.array()?)),
        (3, 11) if data.len() == 33 => {
            let mac: String = r.bytes(32)?[..6]
                .iter()
                .map(|x| format!("{x:02x}"))
                .collect();
            let if_type = r.u8()?;
            format!("MAC({mac},{if_type:#x})")
        }
        (3, 18) if data.len() == 6 => {
            let hba = r.u16_le()?;
            let pm = r.u16_le()?;
            let lun = r.u16_le()?;
            format!("Sata({hba:#x},{pm:#x},{lun:#x})")
        }
        (3, 23) if data.len() == 12 => {
            let nsid = r.u32_le()?;
            let eui: Vec<String> = r.bytes(8)?.iter().map(|x| format!("{x:02x}")).collect();
            format!("NVMe({nsid:#x},{})", eui.join("-"))
        }
        (3, 24) => format!("Uri({})", String::from_utf8_lossy(data).escape_debug()),
        // Media: partitions, files, firmware volumes.
        (4, 1) if data.len() == 38 => {
            let number = r.u32_le()?;
            let start = r.u64_le()?;
            let size = r.u64_le()?;
            let signature: [u8; 16] = r.array()?;
            let format = r.u8()?;
            let sig_type = r.u8()?;
            let sig = match sig_type {
                1 => format!(
                    "{:#010x}",
                    u32::from_le_bytes([signature[0], signature[1], signature[2], signature[3]])
                ),
                2 => guid(&signature),
                _ => "0".to_owned(),
            };
            let format = match format {
                1 => "MBR".to_owned(),
                2 => "GPT".to_owned(),
                other => other.to_string(),
            };
            format!("HD({number},{format},{sig},{start:#x},{size:#x})")
        }
        (4, 2) if data.len() == 20 => {
            let entry = r.u32_le()?;
            let start = r.u64_le()?;
            let size = r.u64_le()?;
            format!("CDROM({entry:#x},{start:#x},{size:#x})")
        }
        (4, 3) if data.len() >= 16 => format!("VenMedia({})", guid(&r.array()?)),
        (4, 4) => ucs2(data),
        (4, 6) if data.len() == 16 => format!("FvFile({})", guid(&r.array()?)),
        (4, 7) if data.len() == 16 => format!("Fv({})", guid(&r.array()?)),
        (4, 8) if data.len() == 20 => {
            r.skip(4)?;
            let start = r.u64_le()?;
            let end = r.u64_le()?;
            format!("Offset({start:#x},{end:#x})")
        }
        // BIOS boot specification.
        (5, 1) if data.len() >= 4 => {
            let device = r.u16_le()?;
            let flags = r.u16_le()?;
            format!("BBS({device:#x},{},{flags:#x})", ucs2_or_ascii(r.rest()))
        }
        _ => generic(),
    })
}

/// BBS descriptions are ASCII.
fn ucs2_or_ascii(data: &[u8]) -> String {
    String::from_utf8_lossy(data.split(|b| *b == 0).next().unwrap_or_default())
        .chars()
        .map(|c| if c.is_control() { '.' } else { c })
        .collect()
}

/// A device path (one or more instances, each ended by an end node) as text: nodes joined by
/// `/`, instances by `,`.
pub fn to_text(path: &[u8]) -> Result<String, FormatError> {
    let mut r = Reader::new(path, WHAT);
    let mut out = String::new();
    let mut nodes = 0;
    while r.remaining() > 0 {
        nodes += 1;
        if nodes > MAX_NODES {
            return Err(FormatError::TooMany {
                what: "EFI device path nodes",
                count: nodes as u64,
                max: MAX_NODES as u64,
            });
        }
        let kind = r.u8()?;
        let sub = r.u8()?;
        let len = usize::from(r.u16_le()?);
        let body = len
            .checked_sub(4)
            .ok_or_else(|| FormatError::invalid(WHAT, format!("node length {len} < 4")))?;
        let data = r.bytes(body)?;
        match (kind, sub) {
            (0x7f, 0xff) => return Ok(out),
            (0x7f, 0x01) => out.push(','),
            _ => {
                if !out.is_empty() && !out.ends_with(',') {
                    out.push('/');
                }
                out.push_str(&node(kind, sub, data)?);
            }
        }
    }
    Err(FormatError::invalid(WHAT, "no end node"))
}

/// A `UEFI_IMAGE_LOAD_EVENT` (`EV_EFI_BOOT_SERVICES_APPLICATION`, `_DRIVER`,
/// `EV_EFI_RUNTIME_SERVICES_DRIVER`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageLoad {
    /// Where the image was loaded.
    pub location: u64,
    /// Its length in memory.
    pub length: u64,
    /// Its link-time address.
    pub link_time_address: u64,
    /// Where it was loaded from, as text.
    pub device_path: String,
    /// Bytes after the device path (some firmware, GCE's among it, writes a zero length and
    /// then bytes anyway).
    pub trailing: Vec<u8>,
}

/// Read a `UEFI_IMAGE_LOAD_EVENT`.
pub fn image_load(data: &[u8]) -> Result<ImageLoad, FormatError> {
    let mut r = Reader::new(data, "UEFI_IMAGE_LOAD_EVENT");
    let location = r.u64_le()?;
    let length = r.u64_le()?;
    let link_time_address = r.u64_le()?;
    let path_len = usize::try_from(r.u64_le()?).unwrap_or(usize::MAX);
    let path = r.bytes(path_len)?;
    Ok(ImageLoad {
        location,
        length,
        link_time_address,
        device_path: if path.is_empty() {
            String::new()
        } else {
            to_text(path)?
        },
        trailing: r.rest().to_vec(),
    })
}

/// An `EFI_LOAD_OPTION` (the value of a `Boot####` variable).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadOption {
    /// `LOAD_OPTION_ACTIVE` (1) and others.
    pub attributes: u32,
    /// What the boot menu shows.
    pub description: String,
    /// What it boots, as text.
    pub device_path: String,
    /// The bytes after the device path (arguments to the image).
    pub optional_data: Vec<u8>,
}

/// Read an `EFI_LOAD_OPTION`.
pub fn load_option(value: &[u8]) -> Result<LoadOption, FormatError> {
    let mut r = Reader::new(value, "EFI_LOAD_OPTION");
    let attributes = r.u32_le()?;
    let path_len = usize::from(r.u16_le()?);
    let mut units = Vec::new();
    loop {
        let u = r.u16_le()?;
        if u == 0 {
            break;
        }
        units.push(u);
    }
    let description = String::from_utf16_lossy(&units)
        .chars()
        .map(|c| if c.is_control() { '.' } else { c })
        .collect();
    let path = r.bytes(path_len)?;
    Ok(LoadOption {
        attributes,
        description,
        device_path: to_text(path)?,
        optional_data: r.rest().to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// The device paths of the stock OVMF log
    /// (`../shared/testdata/tpm/eventlogs/keylime-binary_bios_measurements-secureboot`), as
    /// tpm2_eventlog prints their bytes: an option ROM, then shim from the ESP.
    #[test]
    fn ovmf_paths_read_as_the_specification_writes_them() {
        let rom = "02010c00d041030a0000000001010600000201010600000004081800000000000060010000000000ff530300000000007fff0400";
        assert_eq!(
            to_text(&unhex(rom)).unwrap(),
            "PciRoot(0x0)/Pci(0x2,0x0)/Pci(0x0,0x0)/Offset(0x16000,0x353ff)"
        );
        let shim = "02010c00d041030a0000000001010600030201010600000004012a0001000000000800000000000000c012000000000052d48ea8529ac44591ce3da7707caaab0202040434005c004500460049005c007200650064006800610074005c007300680069006d007800360034002e0065006600690000007fff0400";
        assert_eq!(
            to_text(&unhex(shim)).unwrap(),
            "PciRoot(0x0)/Pci(0x2,0x3)/Pci(0x0,0x0)/HD(1,GPT,a88ed452-9a52-45c4-91ce-3da7707caaab,0x800,0x12c000)/\\EFI\\redhat\\shimx64.efi"
        );
    }

    #[test]
    fn unknown_nodes_instances_and_bad_lengths() {
        assert_eq!(
            to_text(&unhex("09090500427f01040004040800410000007fff0400")).unwrap(),
            "Path(9,9,42),A"
        );
        for bad in [
            "",
            "0101",
            "01010300",
            "0101060000",
            "02010c00d041030a00000000",
        ] {
            assert!(to_text(&unhex(bad)).is_err(), "{bad}");
        }
        let many = "010106000000".repeat(65) + "7fff0400";
        assert!(to_text(&unhex(&many)).is_err());
        assert!(to_text(&unhex(&("010106000000".repeat(63) + "7fff0400"))).is_ok());
    }

    #[test]
    fn load_option_and_image_load_events() {
        // Boot0001: active, "UEFI Misc Device", PciRoot(0x0)/Pci(0x3,0x0), no optional data.
        let mut opt = 1u32.to_le_bytes().to_vec();
        let path = unhex("02010c00d041030a000000000101060000037fff0400");
        opt.extend((path.len() as u16).to_le_bytes());
        for u in "UEFI Misc Device\0".encode_utf16() {
            opt.extend(u.to_le_bytes());
        }
        opt.extend(&path);
        opt.extend(b"args");
        let o = load_option(&opt).unwrap();
        assert_eq!(o.description, "UEFI Misc Device");
        assert_eq!(o.device_path, "PciRoot(0x0)/Pci(0x3,0x0)");
        assert_eq!(o.optional_data, b"args");
        assert!(load_option(&opt[..10]).is_err());

        let mut ev = Vec::new();
        for v in [0x1000u64, 0x2000, 0, path.len() as u64] {
            ev.extend(v.to_le_bytes());
        }
        ev.extend(&path);
        let i = image_load(&ev).unwrap();
        assert_eq!((i.location, i.length), (0x1000, 0x2000));
        assert_eq!(i.device_path, "PciRoot(0x0)/Pci(0x3,0x0)");
        ev.push(0xaf);
        assert_eq!(image_load(&ev).unwrap().trailing, [0xaf]);
        let mut huge = ev.clone();
        huge[24..32].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(image_load(&huge).is_err());
    }
}
