//! The real peers in `../shared/tools/` (built unchanged from upstream, each with a
//! PROVENANCE.md), unpacked once under `target/<dir>/` and never committed.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// `../shared/tools/<dir>/<name>.xz` unpacked as `target/<dir>/<name>` (executable); unpacked
/// beside and renamed into place, as test binaries run in parallel.
pub(crate) fn unpack(dir: &str, name: &str) -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let packed = repo
        .join("../shared/tools")
        .join(dir)
        .join(format!("{name}.xz"));
    assert!(
        packed.exists(),
        "the real {name} is expected at {} (the shared tools beside the repository)",
        packed.display()
    );
    let out = repo.join("target").join(dir);
    std::fs::create_dir_all(&out).unwrap();
    let dest = out.join(name);
    // One unpacker at a time in this process; across processes, unique names and a rename.
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !dest.exists() {
        let tmp = out.join(format!(".{name}.{}", std::process::id()));
        // The shell writes the file, so this process never holds a write descriptor to an
        // executable that another thread may be about to run (ETXTBSY).
        let status = Command::new("sh")
            .arg("-c")
            .arg("xz -dc \"$1\" > \"$2\" && chmod 755 \"$2\"")
            .arg("sh")
            .arg(&packed)
            .arg(&tmp)
            .status()
            .unwrap();
        assert!(status.success(), "xz -dc {} failed", packed.display());
        std::fs::rename(&tmp, &dest).unwrap();
    }
    dest
}

/// Upstream `ignition-validate` v2.26.0 (spec 3.6.0: custom clevis pins by any name).
pub(crate) fn ignition_validate() -> PathBuf {
    unpack("ignition-v2.26.0", "ignition-validate")
}
