//! Writing released secrets to their destinations, in two phases.
//!
//! [`stage`] writes each secret to a temporary file next to its destination (created with
//! `O_EXCL` and the final mode, so it is never readable by others, then fsynced). Only when
//! every secret is staged and the disk is unlocked does [`Staged::commit`] rename them into
//! place; any failure before that removes every staged file, so a failed run leaves nothing.
//! Destinations must be on tmpfs or ramfs: a secret on a persistent unencrypted disk would
//! outlive the boot that attested for it.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::sys::statfs::{statfs, FsType, TMPFS_MAGIC};

/// ramfs's magic number (linux/magic.h); nix does not name it.
const RAMFS_MAGIC: FsType = FsType(0x8584_58f6);

/// A delivery failure.
#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    /// The destination's filesystem is persistent.
    #[error("refusing to write a secret to {0}: not on tmpfs/ramfs (set insecure_allow_persistent_secrets to override)")]
    Persistent(PathBuf),
    /// The destination exists and is a directory: the rename into place would fail after the
    /// unlock.
    #[error("cannot write secret {0}: the destination is a directory")]
    IsDirectory(PathBuf),
    /// The destination's directory can be written by someone else, who could replace or read
    /// the secret around the rename.
    #[error("refusing to write into {path}: {why}")]
    UnsafeDirectory {
        /// The directory.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// A stop request (SIGTERM, SIGINT, SIGHUP) came between staging and delivery: what was
    /// staged is removed instead of delivered.
    #[error("stopped by {0} before delivery: nothing delivered")]
    Interrupted(String),
    /// An I/O step failed.
    #[error("cannot write secret {path}: {op}: {source}")]
    Io {
        /// The destination.
        path: PathBuf,
        /// What we were doing.
        op: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// One secret to write.
pub(crate) struct Item<'a> {
    /// Destination path.
    pub path: &'a Path,
    /// File mode.
    pub mode: u32,
    /// Contents.
    pub bytes: &'a [u8],
}

/// Secrets written to temporary files, not yet visible at their destinations.
#[derive(Debug, Default)]
pub(crate) struct Staged {
    files: Vec<(PathBuf, PathBuf)>,
    /// Directories created for destinations, outermost first; removed again (when empty) if
    /// the run fails, so a failed run leaves nothing at all.
    dirs: Vec<PathBuf>,
}

fn io(path: &Path, op: &'static str) -> impl FnOnce(std::io::Error) -> DeliverError {
    let path = path.to_owned();
    move |source| DeliverError::Io { path, op, source }
}

/// Stage every item; on any failure, remove what was staged and return the error.
pub(crate) fn stage(items: &[Item<'_>], allow_persistent: bool) -> Result<Staged, DeliverError> {
    let mut staged = Staged::default();
    for item in items {
        match stage_one(item, allow_persistent, &mut staged.dirs) {
            Ok(tmp) => staged.files.push((tmp, item.path.to_owned())),
            Err(e) => {
                staged.abort();
                return Err(e);
            }
        }
    }
    Ok(staged)
}

/// The staging name prefix of `dest`'s hidden temporary files: `.NAME.attest-unlock.`.
fn staging_prefix(dest: &Path) -> String {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!(".{name}.attest-unlock.")
}

/// Remove staging files an earlier run left beside `dest` (killed by SIGKILL between staging
/// and delivery, or by a power cut on a persistent filesystem): only regular files with our
/// prefix, never through a symlink.
fn remove_stale(dir: &Path, dest: &Path) {
    let prefix = staging_prefix(dest);
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with(&prefix) {
            continue;
        }
        let path = entry.path();
        if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_file()) {
            match std::fs::remove_file(&path) {
                Ok(()) => log::warn!("removed {} left by an interrupted run", path.display()),
                Err(e) => log::warn!("cannot remove stale {}: {e}", path.display()),
            }
        }
    }
}

/// A directory a secret may be written into: a real directory (not a symlink), owned by us,
/// writable by nobody else. Otherwise another user could swap the file around the rename,
/// block the staging name, or read the secret in a window.
fn check_directory(dir: &Path) -> Result<(), DeliverError> {
    use std::os::unix::fs::MetadataExt;
    let unsafe_dir = |why: String| DeliverError::UnsafeDirectory {
        path: dir.to_owned(),
        why,
    };
    let meta = std::fs::symlink_metadata(dir).map_err(io(dir, "stat directory"))?;
    if meta.file_type().is_symlink() {
        return Err(unsafe_dir("it is a symlink".into()));
    }
    let uid = nix::unistd::geteuid().as_raw();
    if meta.uid() != uid {
        return Err(unsafe_dir(format!(
            "owned by uid {}, not by us (uid {uid})",
            meta.uid()
        )));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(unsafe_dir(format!(
            "writable by group or others (mode {:o})",
            meta.mode() & 0o7777
        )));
    }
    Ok(())
}

/// Check that `dir` is on tmpfs/ramfs (or that persistent storage is allowed, with a warning).
fn check_volatile(dir: &Path, path: &Path, allow_persistent: bool) -> Result<(), DeliverError> {
    let fs = statfs(dir).map_err(|e| DeliverError::Io {
        path: path.to_owned(),
        op: "statfs",
        source: e.into(),
    })?;
    let volatile = fs.filesystem_type() == TMPFS_MAGIC || fs.filesystem_type() == RAMFS_MAGIC;
    if !volatile {
        if allow_persistent {
            log::warn!(
                "insecure_allow_persistent_secrets: writing {} to a persistent filesystem",
                path.display()
            );
        } else {
            return Err(DeliverError::Persistent(path.to_owned()));
        }
    }
    Ok(())
}

/// Write a run file that is not a secret but must not be redirected (the failure report, the
/// measurement log): the directory is created 0700 if missing, must be on tmpfs (unless
/// `allow_persistent`), and a symlink at `path` is refused (`O_NOFOLLOW`), so a planted link
/// cannot make the agent write through it. `append` appends; otherwise the file is replaced.
pub(crate) fn write_run_file(
    path: &Path,
    bytes: &[u8],
    append: bool,
    allow_persistent: bool,
) -> Result<(), DeliverError> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(path, "create parent directory"))?;
    check_volatile(dir, path, allow_persistent)?;
    let mut options = OpenOptions::new();
    options
        .write(true)
        .create(true)
        .mode(0o600)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits());
    if append {
        options.append(true);
    } else {
        options.truncate(true);
    }
    let mut f = options.open(path).map_err(io(path, "open (no symlinks)"))?;
    f.write_all(bytes).map_err(io(path, "write"))
}

/// Stop requests held between staging and delivery. While held, SIGTERM, SIGINT and SIGHUP
/// stay pending instead of killing the process; [`HeldSignals::pending`] reports one, and
/// dropping the guard restores the mask (a signal not consumed is then delivered as usual).
pub(crate) struct HeldSignals {
    mask: nix::sys::signal::SigSet,
    fd: Option<nix::sys::signalfd::SignalFd>,
}

impl HeldSignals {
    /// Start holding the stop signals. Best effort: where the mask cannot be set, signals act
    /// as before and the next run removes a staging file a kill left.
    pub(crate) fn hold() -> HeldSignals {
        use nix::sys::signal::{SigSet, Signal};
        use nix::sys::signalfd::{SfdFlags, SignalFd};
        let mut mask = SigSet::empty();
        for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
            mask.add(s);
        }
        let fd = match mask.thread_block() {
            Ok(()) => SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
                .map_err(|e| log::warn!("cannot watch stop signals: {e}"))
                .ok(),
            Err(e) => {
                log::warn!("cannot hold stop signals during delivery: {e}");
                None
            }
        };
        HeldSignals { mask, fd }
    }

    /// A stop signal that arrived while held (consumed), by name.
    pub(crate) fn pending(&self) -> Option<String> {
        let info = self.fd.as_ref()?.read_signal().ok()??;
        let name = i32::try_from(info.ssi_signo)
            .ok()
            .and_then(|n| nix::sys::signal::Signal::try_from(n).ok())
            .map_or_else(
                || format!("signal {}", info.ssi_signo),
                |s| s.as_str().to_owned(),
            );
        Some(name)
    }
}

impl Drop for HeldSignals {
    fn drop(&mut self) {
        self.fd = None;
        let _ = self.mask.thread_unblock();
    }
}

fn stage_one(
    item: &Item<'_>,
    allow_persistent: bool,
    created: &mut Vec<PathBuf>,
) -> Result<PathBuf, DeliverError> {
    let path = item.path;
    let dir = path.parent().unwrap_or(Path::new("/"));
    if !dir.exists() {
        // Remember every directory this creates (outermost first) so a failure removes them.
        let mut missing: Vec<PathBuf> = dir
            .ancestors()
            .take_while(|d| !d.as_os_str().is_empty() && !d.exists())
            .map(Path::to_path_buf)
            .collect();
        missing.reverse();
        created.extend(missing);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(path, "create parent directory"))?;
    }
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) {
        return Err(DeliverError::IsDirectory(path.to_owned()));
    }
    check_directory(dir)?;
    check_volatile(dir, path, allow_persistent)?;
    remove_stale(dir, path);
    // An unpredictable name (O_EXCL, no symlink followed): nobody can block or pre-create it.
    let mut nonce = [0u8; 8];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut nonce);
    let tmp = dir.join(format!("{}{}", staging_prefix(path), hex::encode(nonce)));
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(item.mode)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(&tmp)
        .map_err(io(path, "create temporary file"))?;
    let written = f
        .write_all(item.bytes)
        .and_then(|()| f.sync_all())
        .map_err(io(path, "write"));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(tmp)
}

impl Staged {
    /// Move every staged file into place and sync the directories. If one cannot be moved,
    /// the ones already moved are removed again: a failed delivery leaves no secret.
    pub(crate) fn commit(mut self) -> Result<(), DeliverError> {
        let files = std::mem::take(&mut self.files);
        for (i, (tmp, dest)) in files.iter().enumerate() {
            if let Err(source) = std::fs::rename(tmp, dest) {
                for (_, d) in &files[..i] {
                    let _ = std::fs::remove_file(d);
                }
                for (t, _) in &files[i..] {
                    let _ = std::fs::remove_file(t);
                }
                // Dropping `self` removes the directories made for the destinations.
                return Err(DeliverError::Io {
                    path: dest.clone(),
                    op: "rename into place",
                    source,
                });
            }
            if let Some(dir) = dest.parent() {
                // Make the rename durable where that means anything; tmpfs ignores it.
                let _ = File::open(dir).and_then(|d| d.sync_all());
            }
        }
        self.dirs.clear();
        Ok(())
    }

    /// Remove every staged file, then every directory made for them (innermost first; only
    /// while empty).
    pub(crate) fn abort(&mut self) {
        for (tmp, _) in self.files.drain(..) {
            let _ = std::fs::remove_file(tmp);
        }
        for dir in self.dirs.drain(..).rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        // A Staged dropped without commit (an error path) leaves nothing behind.
        self.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn persistent_destination_refused_unless_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("s");
        let items = [Item {
            path: &dest,
            mode: 0o600,
            bytes: b"x",
        }];
        let fs = statfs(dir.path()).unwrap().filesystem_type();
        if fs != TMPFS_MAGIC {
            assert!(matches!(
                stage(&items, false),
                Err(DeliverError::Persistent(_))
            ));
        }
        let staged = stage(&items, true).unwrap();
        assert!(!dest.exists(), "staging must not make the secret visible");
        staged.commit().unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"x");
        let mode = std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn failure_of_one_removes_all_staged() {
        let dir = tempfile::tempdir().unwrap();
        let ok = dir.path().join("a");
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, b"").unwrap();
        let bad = blocker.join("b"); // parent is a file: cannot be created
        let items = [
            Item {
                path: &ok,
                mode: 0o600,
                bytes: b"1",
            },
            Item {
                path: &bad,
                mode: 0o600,
                bytes: b"2",
            },
        ];
        assert!(stage(&items, true).is_err());
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("file")]);
    }

    #[test]
    fn failure_removes_the_directories_it_created() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a/b/s");
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, b"").unwrap();
        let bad = blocker.join("c");
        let items = [
            Item {
                path: &nested,
                mode: 0o600,
                bytes: b"1",
            },
            Item {
                path: &bad,
                mode: 0o600,
                bytes: b"2",
            },
        ];
        assert!(stage(&items, true).is_err());
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("file")]);

        // A successful delivery keeps them.
        let staged = stage(&items[..1], true).unwrap();
        staged.commit().unwrap();
        assert_eq!(std::fs::read(&nested).unwrap(), b"1");
    }

    #[test]
    fn directory_destination_fails_at_stage() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("d");
        std::fs::create_dir(&dest).unwrap();
        let items = [Item {
            path: &dest,
            mode: 0o600,
            bytes: b"x",
        }];
        assert!(matches!(
            stage(&items, true),
            Err(DeliverError::IsDirectory(_))
        ));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn commit_failure_removes_what_it_already_moved() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let items = [
            Item {
                path: &a,
                mode: 0o600,
                bytes: b"1",
            },
            Item {
                path: &b,
                mode: 0o600,
                bytes: b"2",
            },
        ];
        let staged = stage(&items, true).unwrap();
        std::fs::create_dir(&b).unwrap(); // appears between stage and commit
        assert!(staged.commit().is_err());
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("b")]);
    }

    #[test]
    fn dropped_staging_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("s");
        let staged = stage(
            &[Item {
                path: &dest,
                mode: 0o600,
                bytes: b"x",
            }],
            true,
        )
        .unwrap();
        drop(staged);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
