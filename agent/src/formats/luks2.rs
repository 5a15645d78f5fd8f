//! The LUKS2 on-disk header: two copies of a 4096-byte binary header followed by the JSON
//! metadata area, each copy with a sequence id and a checksum over the whole copy (LUKS2
//! On-Disk Format Specification 1.1, section 2).
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 6 | magic: `LUKS\xba\xbe` (primary), `SKUL\xba\xbe` (secondary) |
//! | 6 | 2 | version (2), big-endian |
//! | 8 | 8 | hdr_size: binary header + JSON area, one of 16 KiB ... 4 MiB |
//! | 16 | 8 | seqid |
//! | 72 | 32 | checksum algorithm, NUL-terminated (`sha256`) |
//! | 256 | 8 | hdr_offset: where this copy starts |
//! | 448 | 64 | checksum of the copy with this field zeroed |
//! | 4096 | hdr_size - 4096 | the JSON metadata, NUL-padded |
//!
//! As cryptsetup does: the secondary copy is at the primary's `hdr_size` (or, when the primary
//! is damaged, at one of the allowed sizes); of the valid copies the one with the higher
//! seqid wins, the primary on a tie; no valid copy is an error.

use super::reader::Reader;
use super::{FormatError, HashAlg};

const WHAT: &str = "LUKS2 header";
/// The primary copy's magic.
const MAGIC_PRIMARY: &[u8; 6] = b"LUKS\xba\xbe";
/// The secondary copy's magic.
const MAGIC_SECONDARY: &[u8; 6] = b"SKUL\xba\xbe";
/// The binary part of a copy.
const BINARY: usize = 4096;
/// Where the checksum field is, and its size.
const CSUM_AT: usize = 448;
const CSUM_LEN: usize = 64;
/// The copy sizes the format allows (binary header + JSON area).
pub const SIZES: [usize; 9] = [
    16 << 10,
    32 << 10,
    64 << 10,
    128 << 10,
    256 << 10,
    512 << 10,
    1 << 20,
    2 << 20,
    4 << 20,
];

/// One valid copy.
struct Copy<'a> {
    seqid: u64,
    json: &'a [u8],
}

/// The size of the primary copy, from its first 4096 bytes (to know how much to read).
pub fn header_size(first: &[u8]) -> Result<usize, FormatError> {
    let mut r = Reader::new(first, WHAT);
    if r.bytes(6)? != MAGIC_PRIMARY {
        return Err(FormatError::invalid(WHAT, "no LUKS2 magic at offset 0"));
    }
    let version = r.u16_be()?;
    if version != 2 {
        return Err(FormatError::UnsupportedVersion {
            what: WHAT,
            version: u32::from(version),
        });
    }
    size(r.u64_be()?)
}

fn size(hdr_size: u64) -> Result<usize, FormatError> {
    SIZES
        .iter()
        .copied()
        .find(|s| u64::try_from(*s).ok() == Some(hdr_size))
        .ok_or_else(|| FormatError::invalid(WHAT, format!("hdr_size {hdr_size} is not allowed")))
}

/// The copy at `offset` of `disk`, if it is one: magic, version, size, offset and checksum.
fn copy<'a>(disk: &'a [u8], offset: usize, magic: &[u8; 6]) -> Result<Copy<'a>, FormatError> {
    let head = disk
        .get(offset..)
        .ok_or_else(|| FormatError::invalid(WHAT, format!("no copy at {offset}")))?;
    let mut r = Reader::new(head, WHAT);
    if r.bytes(6)? != magic {
        return Err(FormatError::invalid(WHAT, format!("no magic at {offset}")));
    }
    let version = r.u16_be()?;
    if version != 2 {
        return Err(FormatError::UnsupportedVersion {
            what: WHAT,
            version: u32::from(version),
        });
    }
    let hdr_size = size(r.u64_be()?)?;
    let seqid = r.u64_be()?;
    r.skip(48)?; // label
    let alg = r.bytes(32)?;
    let alg = alg.split(|b| *b == 0).next().unwrap_or_default();
    let alg = match alg {
        b"sha256" => HashAlg::Sha256,
        b"sha512" => HashAlg::Sha512,
        b"sha1" => HashAlg::Sha1,
        _ => {
            return Err(FormatError::invalid(
                WHAT,
                format!(
                    "checksum algorithm {:?} is not supported",
                    String::from_utf8_lossy(alg)
                ),
            ))
        }
    };
    r.skip(256 - r.position())?;
    let hdr_offset = r.u64_be()?;
    if u64::try_from(offset).ok() != Some(hdr_offset) {
        return Err(FormatError::invalid(
            WHAT,
            format!("the copy at {offset} says it is at {hdr_offset}"),
        ));
    }
    let whole = head.get(..hdr_size).ok_or(FormatError::Truncated {
        what: WHAT,
        need: offset.saturating_add(hdr_size),
        have: disk.len(),
    })?;
    let stored = whole
        .get(CSUM_AT..CSUM_AT + CSUM_LEN)
        .ok_or_else(|| FormatError::invalid(WHAT, "short binary header"))?;
    let mut zeroed = whole.to_vec();
    if let Some(field) = zeroed.get_mut(CSUM_AT..CSUM_AT + CSUM_LEN) {
        field.fill(0);
    }
    let digest = alg
        .hash(&zeroed)
        .ok_or_else(|| FormatError::invalid(WHAT, "checksum algorithm unavailable"))?;
    if stored.get(..digest.len()) != Some(&digest[..]) {
        return Err(FormatError::invalid(
            WHAT,
            format!("checksum mismatch in the copy at {offset}"),
        ));
    }
    let area = whole.get(BINARY..).unwrap_or_default();
    let json = area.split(|b| *b == 0).next().unwrap_or_default();
    Ok(Copy { seqid, json })
}

/// The JSON metadata of the valid copy with the higher seqid. `disk` is the start of the
/// device: at least both copies (twice the primary's size; when the primary is damaged, as
/// far as the largest allowed secondary offset, or all the device has).
pub fn metadata(disk: &[u8]) -> Result<&[u8], FormatError> {
    let primary = copy(disk, 0, MAGIC_PRIMARY);
    let secondary = match &primary {
        Ok(_) => header_size(disk).and_then(|s| copy(disk, s, MAGIC_SECONDARY)),
        Err(_) => SIZES
            .iter()
            .map(|s| copy(disk, *s, MAGIC_SECONDARY))
            .find(Result::is_ok)
            .unwrap_or_else(|| Err(FormatError::invalid(WHAT, "no valid secondary copy"))),
    };
    match (primary, secondary) {
        (Ok(p), Ok(s)) if s.seqid > p.seqid => Ok(s.json),
        (Ok(p), _) => Ok(p.json),
        (Err(_), Ok(s)) => Ok(s.json),
        (Err(e), Err(_)) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A copy of `size` bytes at `offset` with `json` and `seqid`, checksummed.
    fn make(magic: &[u8; 6], size: usize, offset: usize, seqid: u64, json: &str) -> Vec<u8> {
        let mut c = vec![0u8; size];
        c[..6].copy_from_slice(magic);
        c[6..8].copy_from_slice(&2u16.to_be_bytes());
        c[8..16].copy_from_slice(&(size as u64).to_be_bytes());
        c[16..24].copy_from_slice(&seqid.to_be_bytes());
        c[72..78].copy_from_slice(b"sha256");
        c[256..264].copy_from_slice(&(offset as u64).to_be_bytes());
        c[BINARY..BINARY + json.len()].copy_from_slice(json.as_bytes());
        let d = HashAlg::Sha256.hash(&c).unwrap();
        c[CSUM_AT..CSUM_AT + 32].copy_from_slice(&d);
        c
    }

    fn disk(p: &str, pseq: u64, s: &str, sseq: u64) -> Vec<u8> {
        let n = SIZES[0];
        let mut d = make(MAGIC_PRIMARY, n, 0, pseq, p);
        d.extend(make(MAGIC_SECONDARY, n, n, sseq, s));
        d
    }

    #[test]
    fn the_valid_copy_with_the_higher_seqid_wins() {
        assert_eq!(metadata(&disk("{1}", 5, "{2}", 5)).unwrap(), b"{1}");
        assert_eq!(metadata(&disk("{1}", 5, "{2}", 6)).unwrap(), b"{2}");
        assert_eq!(metadata(&disk("{1}", 7, "{2}", 6)).unwrap(), b"{1}");
        assert_eq!(header_size(&disk("{}", 1, "{}", 1)).unwrap(), SIZES[0]);
    }

    #[test]
    fn a_damaged_copy_is_skipped_and_two_are_an_error() {
        let mut d = disk("{1}", 5, "{2}", 4);
        d[BINARY + 1] ^= 1;
        assert_eq!(metadata(&d).unwrap(), b"{2}");
        d[SIZES[0] + BINARY + 1] ^= 1;
        let e = metadata(&d).unwrap_err().to_string();
        assert!(e.contains("checksum mismatch"), "{e}");
        // Damaged magic, version, size, offset, algorithm; short input.
        for (at, v) in [(0, b'X'), (7, 3), (15, 1), (263, 1), (72, b'x')] {
            let mut d = disk("{1}", 5, "{2}", 4);
            d[at] = v;
            assert_eq!(metadata(&d).unwrap(), b"{2}", "byte {at}");
        }
        assert!(metadata(&disk("{1}", 5, "{2}", 4)[..100]).is_err());
        assert!(metadata(b"").is_err());
    }
}
