//! LUKS2 keyslot verification and activation through the `cryptsetup` binary.
//!
//! The key goes to cryptsetup on a pipe (`--key-file=-`): never in argv, the environment or a
//! file. cryptsetup reads the pipe to EOF and uses the bytes exactly (no newline handling).
//! Naming the keyslot (`--key-slot N`) matters for speed: without it cryptsetup tries every
//! slot in order, and an argon2id slot before ours costs seconds.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A LUKS step failure.
#[derive(Debug, thiserror::Error)]
pub enum LuksError {
    /// The device or image does not exist.
    #[error("LUKS device {0} does not exist")]
    DeviceAbsent(PathBuf),
    /// The key does not open the (named) keyslot.
    #[error("the broker's key does not open {device}{slot}")]
    KeyRejected {
        /// The device.
        device: PathBuf,
        /// " keyslot N" or "" when no slot was named.
        slot: String,
    },
    /// cryptsetup could not be run.
    #[error("cannot run {binary}: {source}")]
    Spawn {
        /// The binary.
        binary: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A rotation's current key does not open the keyslot its token names: rotating would
    /// lose track of what opens the disk.
    #[error("{0}: not rotating")]
    NotRotating(String),
    /// The header has no room for the rotation's keyslot.
    #[error("{0} has no free keyslot (LUKS2 has 32)")]
    NoFreeKeyslot(PathBuf),
    /// The LUKS2 header cannot be read or has no valid copy.
    #[error("the LUKS2 header of {device} is unusable: {message}")]
    Header {
        /// The device.
        device: PathBuf,
        /// Why.
        message: String,
    },
    /// cryptsetup failed otherwise.
    #[error("cryptsetup {op} {device} failed (exit {code}): {message}")]
    Failed {
        /// `open`, `test-passphrase`, `close`, or a rotation's `luksAddKey`,
        /// `luksKillSlot` or `token import`.
        op: &'static str,
        /// The device.
        device: PathBuf,
        /// Its exit status.
        code: i32,
        /// The first line of its stderr.
        message: String,
    },
}

/// What the flow needs of the volume: the seam at cryptsetup, so the flow's ordering rules are
/// tested with a fake.
pub trait Volume {
    /// Wait up to `timeout` for `device` to appear (udev makes the `/dev/disk/by-uuid` link
    /// some time after the disk is probed).
    fn appear(&self, device: &Path, timeout: Duration) -> Result<(), LuksError> {
        wait_for_device(device, timeout)
    }
    /// The LUKS2 header metadata as JSON, where the tokens live.
    fn metadata(&self, device: &Path) -> Result<Vec<u8>, LuksError>;
    /// Check that `key` opens `keyslot` of `device`; activate nothing.
    fn test_key(&self, device: &Path, keyslot: Option<u32>, key: &[u8]) -> Result<(), LuksError>;
    /// Activate `device` as `name` with `key`.
    fn open(
        &self,
        device: &Path,
        name: &str,
        keyslot: Option<u32>,
        key: &[u8],
    ) -> Result<(), LuksError>;
    /// Deactivate `name`.
    fn close(&self, name: &str) -> Result<(), LuksError>;
    /// Write token `id` (replacing the one there).
    fn write_token(&self, device: &Path, id: u32, json: &str) -> Result<(), LuksError>;
}

/// How to run cryptsetup.
#[derive(Debug, Clone)]
pub(crate) struct Cryptsetup {
    binary: PathBuf,
}

impl Default for Cryptsetup {
    fn default() -> Self {
        Cryptsetup {
            binary: PathBuf::from("cryptsetup"),
        }
    }
}

/// The largest LUKS2 header copy.
const MAX_HEADER: usize = 4 << 20;

/// cryptsetup's exit code for "no key available with this passphrase".
const EXIT_NO_PERMISSION: i32 = 2;
/// cryptsetup's exit code for "device does not exist or access denied".
const EXIT_WRONG_DEVICE: i32 = 4;

#[cfg(test)]
impl Cryptsetup {
    /// Use a specific cryptsetup binary (a spy in the unit tests).
    fn with_binary(binary: PathBuf) -> Cryptsetup {
        Cryptsetup { binary }
    }
}

impl Volume for Cryptsetup {
    /// The JSON metadata, read from the device itself (`formats::luks2`: both header copies,
    /// their checksums, the newer valid one), as `cryptsetup luksDump --dump-json-metadata`
    /// prints it, without a process: a few kilobytes read instead of a cryptsetup run.
    fn metadata(&self, device: &Path) -> Result<Vec<u8>, LuksError> {
        use std::io::Read;
        let header = |message: String| LuksError::Header {
            device: device.to_owned(),
            message,
        };
        if !device.exists() {
            return Err(LuksError::DeviceAbsent(device.to_owned()));
        }
        let mut f = std::fs::File::open(device).map_err(|e| header(e.to_string()))?;
        let mut first = vec![0u8; 4096];
        f.read_exact(&mut first)
            .map_err(|e| header(format!("cannot read its first 4096 bytes: {e}")))?;
        // Both copies; a damaged primary does not say its size: as far as the largest
        // allowed secondary copy reaches.
        let want = crate::formats::luks2::header_size(&first).unwrap_or(MAX_HEADER) * 2;
        let mut disk = first;
        f.take(u64::try_from(want.saturating_sub(disk.len())).unwrap_or(0))
            .read_to_end(&mut disk)
            .map_err(|e| header(e.to_string()))?;
        crate::formats::luks2::metadata(&disk)
            .map(<[u8]>::to_vec)
            .map_err(|e| header(e.to_string()))
    }

    /// Check that `key` opens `keyslot` of `device` without activating anything.
    fn test_key(&self, device: &Path, keyslot: Option<u32>, key: &[u8]) -> Result<(), LuksError> {
        let mut args = vec!["open".to_owned(), "--test-passphrase".to_owned()];
        args.extend(slot_args(keyslot));
        // `--` ends the options: nothing after it is taken for one, whatever its spelling.
        args.extend([
            "--key-file=-".to_owned(),
            "--".to_owned(),
            device.display().to_string(),
        ]);
        self.run("test-passphrase", device, keyslot, &args, key)
    }

    /// Activate `device` as `/dev/mapper/<name>` with `key`.
    fn open(
        &self,
        device: &Path,
        name: &str,
        keyslot: Option<u32>,
        key: &[u8],
    ) -> Result<(), LuksError> {
        let mut args = vec!["open".to_owned(), "--type".to_owned(), "luks2".to_owned()];
        args.extend(slot_args(keyslot));
        args.extend([
            "--key-file=-".to_owned(),
            "--".to_owned(),
            device.display().to_string(),
            name.to_owned(),
        ]);
        self.run("open", device, keyslot, &args, key)
    }

    /// Deactivate `/dev/mapper/<name>` (undo an `open` when a later step failed).
    fn close(&self, name: &str) -> Result<(), LuksError> {
        let out = Command::new(&self.binary)
            .args(["close", "--", name])
            .stdin(Stdio::null())
            .output()
            .map_err(|source| LuksError::Spawn {
                binary: self.binary.clone(),
                source,
            })?;
        if out.status.success() {
            Ok(())
        } else {
            Err(LuksError::Failed {
                op: "close",
                device: PathBuf::from(format!("/dev/mapper/{name}")),
                code: out.status.code().unwrap_or(-1),
                message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            })
        }
    }

    fn write_token(&self, device: &Path, id: u32, json: &str) -> Result<(), LuksError> {
        let args = [
            "token".to_owned(),
            "import".to_owned(),
            "--token-id".to_owned(),
            id.to_string(),
            "--token-replace".to_owned(),
            "--json-file=-".to_owned(),
            "--".to_owned(),
            device.display().to_string(),
        ];
        self.run("token import", device, None, &args, json.as_bytes())
    }
}

impl Cryptsetup {
    fn run(
        &self,
        op: &'static str,
        device: &Path,
        keyslot: Option<u32>,
        args: &[String],
        key: &[u8],
    ) -> Result<(), LuksError> {
        if !device.exists() {
            return Err(LuksError::DeviceAbsent(device.to_owned()));
        }
        let mut child = Command::new(&self.binary)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| LuksError::Spawn {
                binary: self.binary.clone(),
                source,
            })?;
        if let Some(mut stdin) = child.stdin.take() {
            // A write error means cryptsetup exited early; its exit status says why.
            let _ = stdin.write_all(key);
        }
        let out = child
            .wait_with_output()
            .map_err(|source| LuksError::Spawn {
                binary: self.binary.clone(),
                source,
            })?;
        match out.status.code() {
            Some(0) => Ok(()),
            Some(EXIT_NO_PERMISSION) => Err(LuksError::KeyRejected {
                device: device.to_owned(),
                slot: keyslot.map(|s| format!(" keyslot {s}")).unwrap_or_default(),
            }),
            Some(EXIT_WRONG_DEVICE) if !device.exists() => {
                Err(LuksError::DeviceAbsent(device.to_owned()))
            }
            code => Err(LuksError::Failed {
                op,
                device: device.to_owned(),
                code: code.unwrap_or(-1),
                message: first_line(&out.stderr, "no message"),
            }),
        }
    }
}

/// The header writes a key rotation makes, each one atomic in cryptsetup (the LUKS2 header is
/// written as a whole, in two copies with a sequence number). Keys go on pipes, never in argv
/// or a file.
pub(crate) trait Rekey: Volume {
    /// Add `new` in keyslot `new_slot`, authorised by `existing`, which opens `existing_slot`;
    /// the new slot gets `kdf` (the old slot's), or cryptsetup's defaults.
    fn add_key(
        &self,
        device: &Path,
        existing_slot: u32,
        existing: &[u8],
        new_slot: u32,
        new: &[u8],
        kdf: Option<&crate::header::Kdf>,
    ) -> Result<(), LuksError>;
    /// Remove keyslot `slot`; `remaining` must open another keyslot (cryptsetup checks).
    fn kill_slot(&self, device: &Path, slot: u32, remaining: &[u8]) -> Result<(), LuksError>;
}

impl Rekey for Cryptsetup {
    fn add_key(
        &self,
        device: &Path,
        existing_slot: u32,
        existing: &[u8],
        new_slot: u32,
        new: &[u8],
        kdf: Option<&crate::header::Kdf>,
    ) -> Result<(), LuksError> {
        use crate::header::Kdf;
        // The new key on a pipe of its own, inherited by cryptsetup as /dev/fd/N: written and
        // its write end closed before the spawn, so cryptsetup reads it to EOF.
        let (read, write) = nix::unistd::pipe().map_err(|e| LuksError::Spawn {
            binary: self.binary.clone(),
            source: e.into(),
        })?;
        std::fs::File::from(write)
            .write_all(new)
            .map_err(|source| LuksError::Spawn {
                binary: self.binary.clone(),
                source,
            })?;
        let mut args = vec![
            "luksAddKey".to_owned(),
            "--batch-mode".to_owned(),
            "--key-slot".to_owned(),
            existing_slot.to_string(),
            "--new-key-slot".to_owned(),
            new_slot.to_string(),
            format!(
                "--new-keyfile=/dev/fd/{}",
                std::os::fd::AsRawFd::as_raw_fd(&read)
            ),
        ];
        match kdf {
            Some(Kdf::Pbkdf2 { hash, iterations }) => args.extend([
                "--pbkdf=pbkdf2".to_owned(),
                format!("--hash={hash}"),
                format!("--pbkdf-force-iterations={iterations}"),
            ]),
            Some(Kdf::Argon2 {
                kind,
                time,
                memory,
                cpus,
            }) => args.extend([
                format!("--pbkdf={kind}"),
                format!("--pbkdf-force-iterations={time}"),
                format!("--pbkdf-memory={memory}"),
                format!("--pbkdf-parallel={cpus}"),
            ]),
            None => {}
        }
        args.extend([
            "--key-file=-".to_owned(),
            "--".to_owned(),
            device.display().to_string(),
        ]);
        let result = self.run("luksAddKey", device, Some(existing_slot), &args, existing);
        drop(read);
        result
    }

    fn kill_slot(&self, device: &Path, slot: u32, remaining: &[u8]) -> Result<(), LuksError> {
        let args = [
            "luksKillSlot".to_owned(),
            "--key-file=-".to_owned(),
            "--".to_owned(),
            device.display().to_string(),
            slot.to_string(),
        ];
        self.run("luksKillSlot", device, None, &args, remaining)
    }
}

/// Wait for a device node to appear (udev creates `/dev/disk/by-uuid/...` links some time
/// after the disk is probed). Polls at a short interval; returns at once when it exists.
pub(crate) fn wait_for_device(device: &Path, timeout: Duration) -> Result<(), LuksError> {
    let deadline = Instant::now() + timeout;
    let mut logged = false;
    while !device.exists() {
        if Instant::now() >= deadline {
            return Err(LuksError::DeviceAbsent(device.to_owned()));
        }
        if !logged {
            log::info!("waiting for {} to appear", device.display());
            logged = true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// The first non-empty line of cryptsetup's stderr, for a one-line message.
fn first_line(stderr: &[u8], otherwise: &str) -> String {
    String::from_utf8_lossy(stderr)
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or(otherwise)
        .trim()
        .to_owned()
}

fn slot_args(keyslot: Option<u32>) -> Vec<String> {
    keyslot
        .map(|s| vec!["--key-slot".to_owned(), s.to_string()])
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Options end with `--` before the device and the name: whatever they are spelled like,
    /// cryptsetup takes them as operands (defence in depth beside the config's name check).
    #[test]
    fn options_end_before_device_and_name() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let argv = dir.path().join("argv");
        let spy = dir.path().join("cryptsetup");
        std::fs::write(
            &spy,
            format!(
                "#!/bin/sh\nprintf '%s\\n' \"$@\" > {}\ncat > /dev/null\n",
                argv.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&spy, std::fs::Permissions::from_mode(0o755)).unwrap();
        let dev = dir.path().join("--dev");
        std::fs::write(&dev, b"").unwrap();
        let c = Cryptsetup::with_binary(spy);
        c.open(&dev, "--test-passphrase", Some(1), b"k").unwrap();
        let args = std::fs::read_to_string(&argv).unwrap();
        let args: Vec<&str> = args.lines().collect();
        let end = args.iter().position(|a| *a == "--").unwrap();
        assert_eq!(
            &args[end..],
            &["--", dev.to_str().unwrap(), "--test-passphrase"]
        );
        c.test_key(&dev, None, b"k").unwrap();
        let args = std::fs::read_to_string(&argv).unwrap();
        assert!(
            args.ends_with(&format!("--\n{}\n", dev.display())),
            "{args}"
        );
    }
}
