//! What the firmware and the kernel expose as files: the measured-boot event logs (the TCG
//! log, the TDX CCEL) and the TDX RTMR extend attribute; and the files an operator names on the
//! command line (`inspect`, `reference-values`), read whole up to a cap.

use std::io::{Read, Write};
use std::path::Path;

/// Largest event log read (the CCEL's ACPI area is typically 64 KiB to 1 MiB, mostly padding;
/// a TCG log is tens of KiB).
pub(crate) const MAX_LOG: u64 = 16 << 20;

/// The event log at `path`; `None` when there is none. A log over [`MAX_LOG`] bytes is an
/// error, never cut.
pub(crate) fn read_log(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut raw = Vec::new();
    file.take(MAX_LOG + 1).read_to_end(&mut raw)?;
    if raw.len() as u64 > MAX_LOG {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {MAX_LOG} bytes"),
        ));
    }
    Ok(Some(raw))
}

/// The file at `path` (`-`: standard input), whole; more than `cap` bytes is an error, never
/// a silent cut.
pub(crate) fn read_input(path: &Path, cap: u64) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    // One byte past the cap tells a file that is too large from one that fits exactly.
    if path.as_os_str() == "-" {
        std::io::stdin().take(cap + 1).read_to_end(&mut bytes)?;
    } else {
        std::fs::File::open(path)?
            .take(cap + 1)
            .read_to_end(&mut bytes)?;
    }
    if bytes.len() as u64 > cap {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {cap} bytes"),
        ));
    }
    Ok(bytes)
}

/// Write one digest to an extend attribute (`/sys/class/misc/tdx_guest/measurements/rtmrN:sha384`):
/// the kernel extends the register with it.
pub(crate) fn extend(attribute: &Path, digest: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new().write(true).open(attribute)?;
    f.write_all(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_are_read_whole_or_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_log(&dir.path().join("absent")).unwrap().is_none());
        let small = dir.path().join("small");
        std::fs::write(&small, b"log").unwrap();
        assert_eq!(read_log(&small).unwrap().unwrap(), b"log");
        let big = dir.path().join("big");
        std::fs::File::create(&big)
            .unwrap()
            .set_len(MAX_LOG + 1)
            .unwrap();
        assert!(
            read_log(&big).is_err(),
            "an oversized log is refused, not cut"
        );
    }
}
