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
pub struct Item<'a> {
    /// Destination path.
    pub path: &'a Path,
    /// File mode.
    pub mode: u32,
    /// Contents.
    pub bytes: &'a [u8],
}

/// Secrets written to temporary files, not yet visible at their destinations.
#[derive(Debug, Default)]
pub struct Staged {
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
pub fn stage(items: &[Item<'_>], allow_persistent: bool) -> Result<Staged, DeliverError> {
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
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.attest-unlock.{}", std::process::id()));
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(item.mode)
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
    pub fn commit(mut self) -> Result<(), DeliverError> {
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
    pub fn abort(&mut self) {
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
