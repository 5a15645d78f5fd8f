//! PE/COFF images (EFI applications: shim, GRUB, systemd-boot, a UKI, the kernel's EFI stub)
//! and their Authenticode digest, the value UEFI firmware extends into PCR 4 when it loads one
//! (`EV_EFI_BOOT_SERVICES_APPLICATION`).
//!
//! The ranges hashed are those of the Authenticode specification as edk2 implements it
//! (`HashPeImage` in `DxeTpm2MeasureBootLib`): the headers without the checksum and without
//! the certificate table's data directory entry, then every section's raw data in file order,
//! then whatever follows up to the attribute certificate table at the end of the file.

use std::ops::Range;

use super::reader::Reader;
use super::{check_max, FormatError, HashAlg};

const WHAT: &str = "PE image";
/// The most sections accepted; the PE format allows 96 in practice, linkers far fewer.
pub(crate) const MAX_SECTIONS: u16 = 1024;
/// `IMAGE_DIRECTORY_ENTRY_SECURITY`: the certificate table's data directory index.
const SECURITY_DIRECTORY: u32 = 4;

/// What Authenticode hashes of an image: byte ranges of the file, in hashing order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticode {
    /// The ranges, in the order they are hashed.
    pub ranges: Vec<Range<usize>>,
    /// `PE32` or `PE32+`.
    pub pe32_plus: bool,
    /// The number of sections with raw data.
    pub sections: usize,
    /// The size of the attribute certificate table (signatures), excluded from the digest.
    pub certificate_table: usize,
}

impl Authenticode {
    /// The digest of `image` (the same bytes [`authenticode`] parsed) with `alg`, or `None` when
    /// this build cannot compute that algorithm.
    pub fn digest(&self, image: &[u8], alg: HashAlg) -> Option<Vec<u8>> {
        let mut hashed = Vec::with_capacity(image.len());
        for r in &self.ranges {
            // `authenticode` checked every range against this image.
            hashed.extend_from_slice(image.get(r.clone())?);
        }
        alg.hash(&hashed)
    }
}

/// A section of an image: its name and where its data is in the file (`VirtualSize` bytes,
/// or its raw size when that is smaller: what a UKI's stub reads of `.cmdline` or `.initrd`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// The name, NUL padding removed.
    pub name: String,
    /// The data's range in the file.
    pub data: Range<usize>,
}

/// The sections of a PE/COFF image, in table order.
pub fn sections(image: &[u8]) -> Result<Vec<Section>, FormatError> {
    let layout = headers(image)?;
    let mut out = Vec::with_capacity(layout.sections.len());
    for h in &layout.sections {
        let len = h.virtual_size.min(h.raw_size);
        let end = h
            .raw_pointer
            .checked_add(len)
            .filter(|end| *end <= image.len())
            .ok_or_else(|| {
                FormatError::invalid(WHAT, "a section's data is beyond the end of the file")
            })?;
        out.push(Section {
            name: h.name.clone(),
            data: h.raw_pointer..end,
        });
    }
    Ok(out)
}

/// One section header.
struct SectionHeader {
    name: String,
    virtual_size: usize,
    raw_size: usize,
    raw_pointer: usize,
}

/// What the headers say.
struct Headers {
    pe32_plus: bool,
    size_of_headers: usize,
    checksum: usize,
    /// The certificate table's data directory entry, when there is one.
    certificate_entry: Option<usize>,
    sections: Vec<SectionHeader>,
}

/// The Authenticode ranges of a PE/COFF image.
pub fn authenticode(image: &[u8]) -> Result<Authenticode, FormatError> {
    let h = headers(image)?;
    let mut ranges = Vec::with_capacity(4 + h.sections.len());
    ranges.push(0..h.checksum);
    let mut certificate_table = 0;
    match h.certificate_entry {
        None => ranges.push(h.checksum + 4..h.size_of_headers),
        Some(entry) => {
            let mut dir = reader_at(image, entry)?;
            dir.skip(4)?; // VirtualAddress: a file offset for this directory
            certificate_table = usize_of(dir.u32_le()?);
            ranges.push(h.checksum + 4..entry);
            ranges.push(entry + 8..h.size_of_headers);
        }
    }
    if ranges.iter().any(|r| r.start > r.end) {
        return Err(FormatError::invalid(
            WHAT,
            format!(
                "SizeOfHeaders {} ends inside the optional header",
                h.size_of_headers
            ),
        ));
    }
    let mut raw = Vec::with_capacity(h.sections.len());
    for sec in h.sections.iter().filter(|sec| sec.raw_size != 0) {
        let end = sec
            .raw_pointer
            .checked_add(sec.raw_size)
            .filter(|end| *end <= image.len())
            .ok_or_else(|| {
                FormatError::invalid(
                    WHAT,
                    format!(
                        "a section's raw data ({}+{}) is beyond the end of the file ({})",
                        sec.raw_pointer,
                        sec.raw_size,
                        image.len()
                    ),
                )
            })?;
        raw.push(sec.raw_pointer..end);
    }
    raw.sort_by_key(|r| r.start);
    let mut hashed = h.size_of_headers;
    for r in &raw {
        hashed += r.len();
    }
    let section_count = raw.len();
    ranges.extend(raw);
    if image.len() > hashed {
        let tail_end = image
            .len()
            .checked_sub(certificate_table)
            .filter(|end| *end >= hashed);
        match tail_end {
            Some(end) if end > hashed => ranges.push(hashed..end),
            Some(_) => {}
            None => {
                return Err(FormatError::invalid(
                    WHAT,
                    format!(
                    "the certificate table ({certificate_table} bytes) overlaps the hashed image"
                ),
                ))
            }
        }
    }
    Ok(Authenticode {
        ranges,
        pe32_plus: h.pe32_plus,
        sections: section_count,
        certificate_table,
    })
}

/// The DOS, COFF and optional headers and the section table.
fn headers(image: &[u8]) -> Result<Headers, FormatError> {
    let mut dos = Reader::new(image, WHAT);
    if dos.bytes(2)? != b"MZ" {
        return Err(FormatError::invalid(WHAT, "no MZ signature"));
    }
    dos.skip(0x3C - 2)?;
    let pe = usize_of(dos.u32_le()?);
    let mut coff = reader_at(image, pe)?;
    if coff.bytes(4)? != b"PE\0\0" {
        return Err(FormatError::invalid(WHAT, "no PE signature"));
    }
    coff.skip(2)?; // Machine
    let count = coff.u16_le()?;
    check_max(
        "PE image: NumberOfSections",
        count.into(),
        MAX_SECTIONS.into(),
    )?;
    coff.skip(12)?; // TimeDateStamp, PointerToSymbolTable, NumberOfSymbols
    let optional_size = usize::from(coff.u16_le()?);
    coff.skip(2)?; // Characteristics
    let optional = coff.position() + pe;

    let mut opt = reader_at(image, optional)?;
    let pe32_plus = match opt.u16_le()? {
        0x10b => false,
        0x20b => true,
        magic => {
            return Err(FormatError::invalid(
                WHAT,
                format!("optional header magic {magic:#06x} is neither PE32 nor PE32+"),
            ))
        }
    };
    let size_of_headers = usize_of(reader_at(image, optional + 60)?.u32_le()?);
    let (count_at, directories) = if pe32_plus {
        (optional + 108, optional + 112)
    } else {
        (optional + 92, optional + 96)
    };
    let directory_count = reader_at(image, count_at)?.u32_le()?;
    if size_of_headers > image.len() {
        return Err(FormatError::invalid(
            WHAT,
            format!(
                "SizeOfHeaders {size_of_headers} is beyond the end of the file ({})",
                image.len()
            ),
        ));
    }
    let certificate_entry = (directory_count > SECURITY_DIRECTORY)
        .then_some(directories + 8 * SECURITY_DIRECTORY as usize);

    let table = optional
        .checked_add(optional_size)
        .ok_or_else(|| FormatError::invalid(WHAT, "section table offset overflows"))?;
    let mut st = reader_at(image, table)?;
    let mut sections = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let mut h = Reader::new(st.bytes(40)?, WHAT);
        let name = h.bytes(8)?;
        let name = String::from_utf8_lossy(name)
            .trim_end_matches('\0')
            .to_owned();
        let virtual_size = usize_of(h.u32_le()?);
        h.skip(4)?; // VirtualAddress
        let raw_size = usize_of(h.u32_le()?);
        let raw_pointer = usize_of(h.u32_le()?);
        sections.push(SectionHeader {
            name,
            virtual_size,
            raw_size,
            raw_pointer,
        });
    }
    Ok(Headers {
        pe32_plus,
        size_of_headers,
        checksum: optional + 64,
        certificate_entry,
        sections,
    })
}

/// A reader from `offset` to the end of `image`.
fn reader_at(image: &[u8], offset: usize) -> Result<Reader<'_>, FormatError> {
    image
        .get(offset..)
        .map(|rest| Reader::new(rest, WHAT))
        .ok_or(FormatError::Truncated {
            what: WHAT,
            need: offset,
            have: image.len(),
        })
}

fn usize_of(v: u32) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A PE32+ image of `sections` (raw size, file offset), headers 0x400 bytes, `len` bytes.
    fn image(sections: &[(u32, u32)], len: usize) -> Vec<u8> {
        let mut f = vec![0u8; len.max(0x400)];
        f[0..2].copy_from_slice(b"MZ");
        f[0x3C..0x40].copy_from_slice(&0x80u32.to_le_bytes());
        f[0x80..0x84].copy_from_slice(b"PE\0\0");
        f[0x86..0x88].copy_from_slice(&(sections.len() as u16).to_le_bytes());
        f[0x94..0x96].copy_from_slice(&240u16.to_le_bytes());
        let opt = 0x98;
        f[opt..opt + 2].copy_from_slice(&0x20bu16.to_le_bytes());
        f[opt + 60..opt + 64].copy_from_slice(&0x400u32.to_le_bytes());
        f[opt + 108..opt + 112].copy_from_slice(&16u32.to_le_bytes());
        for (i, (size, ptr)) in sections.iter().enumerate() {
            let s = opt + 240 + 40 * i;
            f[s + 16..s + 20].copy_from_slice(&size.to_le_bytes());
            f[s + 20..s + 24].copy_from_slice(&ptr.to_le_bytes());
        }
        f.truncate(len);
        f
    }

    #[test]
    fn ranges_skip_checksum_and_certificate_entry_and_sort_sections() {
        let f = image(&[(0x100, 0x500), (0x100, 0x400), (0, 0)], 0x700);
        let a = authenticode(&f).unwrap();
        let opt = 0x98;
        assert_eq!(
            a.ranges,
            vec![
                0..opt + 64,
                opt + 68..opt + 112 + 32,
                opt + 112 + 40..0x400,
                0x400..0x500,
                0x500..0x600,
                0x600..0x700,
            ]
        );
        assert!(a.pe32_plus);
        assert_eq!(a.sections, 2);
    }

    #[test]
    fn malformed_images_are_typed_errors() {
        let good = image(&[(0x100, 0x400)], 0x500);
        assert!(authenticode(&good).is_ok());
        for (why, bad) in [
            ("empty", Vec::new()),
            ("no MZ", {
                let mut b = good.clone();
                b[0] = b'X';
                b
            }),
            ("cut in the headers", good[..0x90].to_vec()),
            ("section beyond the file", image(&[(0x1000, 0x400)], 0x500)),
            ("e_lfanew beyond the file", {
                let mut b = good.clone();
                b[0x3C..0x40].copy_from_slice(&u32::MAX.to_le_bytes());
                b
            }),
            ("certificate table larger than the file", {
                let mut b = good.clone();
                let entry = 0x98 + 112 + 32;
                b[entry + 4..entry + 8].copy_from_slice(&0x10_0000u32.to_le_bytes());
                b.extend([0u8; 8]);
                b
            }),
        ] {
            assert!(authenticode(&bad).is_err(), "{why} must be refused");
        }
    }
}
