//! configfs-tsm (`/sys/kernel/config/tsm/report`, Linux >= 6.7): one interface for SNP and
//! TDX reports.
//!
//! A report is an entry directory: create it, write the 64-byte report data to `inblob`, read
//! `outblob` (the report or quote, generated on read) and `auxblob` (SNP: the certificate
//! table), check `provider` and `generation`, remove the entry. `generation` counts writes to
//! the entry's attributes; our entry is fresh and private (a unique name), so after our writes
//! it must equal their number: anything else means another writer raced us and `outblob` may
//! not hold our report data.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A configfs-tsm failure.
#[derive(Debug, thiserror::Error)]
pub enum TsmError {
    /// The configfs-tsm report directory does not exist (kernel < 6.7 or no TEE).
    #[error("configfs-tsm is not available at {0}")]
    Absent(PathBuf),
    /// The entry's provider is not the one the platform needs.
    #[error("configfs-tsm provider is {found:?}, expected {expected:?}")]
    Provider {
        /// What the kernel reports.
        found: String,
        /// What we need.
        expected: String,
    },
    /// Another writer changed the entry while we used it.
    #[error(
        "configfs-tsm generation is {found}, expected {expected}: another writer raced this report"
    )]
    GenerationRace {
        /// Writes we made.
        expected: u64,
        /// What the kernel reports.
        found: u64,
    },
    /// An I/O step failed.
    #[error("configfs-tsm {op} {path}: {source}")]
    Io {
        /// What we were doing.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The kernel returned something unusable.
    #[error("configfs-tsm: {0}")]
    Invalid(String),
}

/// A report as the kernel returned it.
#[derive(Debug, Clone)]
pub(crate) struct TsmReport {
    /// The report (SNP) or quote (TDX).
    pub outblob: Vec<u8>,
    /// The SNP certificate table, when the host provides one.
    pub auxblob: Option<Vec<u8>>,
}

/// Largest blob we read (a TDX quote with its certification data is a few KiB; an SNP
/// certificate table a few more).
const MAX_BLOB: u64 = 1 << 20;

/// How long to wait for an entry's attributes after creating it. The kernel creates them
/// with the directory; the wait only matters for test doubles and costs nothing otherwise.
const ATTRIBUTE_WAIT: Duration = Duration::from_secs(2);

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> TsmError {
    let path = path.to_owned();
    move |source| TsmError::Io { op, path, source }
}

/// Removes the entry when dropped, whatever happened.
struct Entry(PathBuf);

impl Drop for Entry {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir(&self.0) {
            log::debug!("cannot remove configfs-tsm entry {}: {e}", self.0.display());
        }
    }
}

fn read_small(path: &Path) -> Result<String, TsmError> {
    let text = std::fs::read_to_string(path).map_err(io("read", path))?;
    Ok(text.trim().to_owned())
}

fn read_blob(path: &Path) -> Result<Vec<u8>, TsmError> {
    use std::io::Read;
    let mut out = Vec::new();
    std::fs::File::open(path)
        .map_err(io("open", path))?
        .take(MAX_BLOB)
        .read_to_end(&mut out)
        .map_err(io("read", path))?;
    Ok(out)
}

fn write_attr(path: &Path, data: &[u8]) -> Result<(), TsmError> {
    // No create: the attribute must be the kernel's.
    let mut f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io("open", path))?;
    f.write_all(data).map_err(io("write", path))
}

fn new_entry(root: &Path) -> Result<Entry, TsmError> {
    if !root.is_dir() {
        return Err(TsmError::Absent(root.to_owned()));
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let dir = root.join(format!("attest-unlock-{}-{nanos}", std::process::id()));
    std::fs::create_dir(&dir).map_err(io("create entry", &dir))?;
    let entry = Entry(dir);
    let deadline = Instant::now() + ATTRIBUTE_WAIT;
    while !entry.0.join("inblob").exists() || !entry.0.join("provider").exists() {
        if Instant::now() >= deadline {
            return Err(TsmError::Invalid(format!(
                "entry {} has no inblob/provider attributes",
                entry.0.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(entry)
}

/// The provider behind this configfs-tsm tree, read from a scratch entry.
pub(crate) fn provider(root: &Path) -> Result<String, TsmError> {
    let entry = new_entry(root)?;
    read_small(&entry.0.join("provider"))
}

/// Get a report for `report_data` from `expected_provider`, at `privlevel` (SNP VMPL) when
/// given.
pub(crate) fn report(
    root: &Path,
    expected_provider: &str,
    report_data: &[u8; 64],
    privlevel: Option<u32>,
) -> Result<TsmReport, TsmError> {
    let entry = new_entry(root)?;
    let dir = &entry.0;
    let provider = read_small(&dir.join("provider"))?;
    if provider != expected_provider {
        return Err(TsmError::Provider {
            found: provider,
            expected: expected_provider.to_owned(),
        });
    }
    let mut writes = 0u64;
    if let Some(level) = privlevel {
        write_attr(&dir.join("privlevel"), level.to_string().as_bytes())?;
        writes += 1;
    }
    write_attr(&dir.join("inblob"), report_data)?;
    writes += 1;
    let outblob = read_blob(&dir.join("outblob"))?;
    if outblob.is_empty() {
        return Err(TsmError::Invalid("empty outblob".into()));
    }
    let aux_path = dir.join("auxblob");
    let auxblob = if aux_path.exists() {
        Some(read_blob(&aux_path)?).filter(|a| !a.is_empty())
    } else {
        None
    };
    let generation: u64 = read_small(&dir.join("generation"))?
        .parse()
        .map_err(|_| TsmError::Invalid("generation is not a number".into()))?;
    if generation != writes {
        return Err(TsmError::GenerationRace {
            expected: writes,
            found: generation,
        });
    }
    Ok(TsmReport { outblob, auxblob })
}
