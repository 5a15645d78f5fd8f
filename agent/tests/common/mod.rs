//! Shared harness of the end-to-end tests: a real swtpm, a LUKS2 image made by the real
//! cryptsetup, the test broker on 127.0.0.1, and the agent binary run as a user would.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub(crate) mod shared_tools;
pub(crate) mod trustee;
mod world;

#[allow(unused_imports)] // Not every suite uses the world.
pub(crate) use world::*;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use sha2::{Digest, Sha256};

/// The agent binary under test. `ATTEST_UNLOCK_TEST_BIN` names another build, to show that a
/// new test fails on the code before a fix (`ATTEST_UNLOCK_TEST_BIN=/path/to/old cargo test`).
pub(crate) fn agent_bin() -> PathBuf {
    std::env::var_os("ATTEST_UNLOCK_TEST_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_attest-unlock")),
        PathBuf::from,
    )
}

/// Run a command and fail the test with its output if it did not succeed.
pub(crate) fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A swtpm on two free loopback ports, killed on drop.
pub(crate) struct Swtpm {
    pub port: u16,
    pid: i32,
    _state: tempfile::TempDir,
}

impl Swtpm {
    pub(crate) fn start() -> Swtpm {
        for _ in 0..20 {
            let port = free_port_pair();
            let state = tempfile::tempdir().unwrap();
            let pidfile = state.path().join("pid");
            let status = Command::new("swtpm")
                .args(["socket", "--tpm2", "--tpmstate"])
                .arg(format!("dir={}", state.path().display()))
                .arg("--server")
                .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
                .arg("--ctrl")
                .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
                .args([
                    "--flags",
                    "not-need-init,startup-clear",
                    "--daemon",
                    "--pid",
                ])
                .arg(format!("file={}", pidfile.display()))
                .stderr(Stdio::null())
                .status()
                .expect("swtpm must be installed (cargo xtask setup)");
            if !status.success() {
                continue; // port taken between our probe and swtpm's bind: try others
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while !pidfile.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            let pid: i32 = std::fs::read_to_string(&pidfile)
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            return Swtpm {
                port,
                pid,
                _state: state,
            };
        }
        panic!("could not start swtpm on any port pair");
    }

    /// The TCTI string for tss-esapi and tpm2-tools.
    pub(crate) fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.pid.to_string()).status();
    }
}

/// Two consecutive free ports (swtpm's server and control sockets).
fn free_port_pair() -> u16 {
    loop {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let p = l.local_addr().unwrap().port();
        if p < 65535 && TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            return p;
        }
    }
}

/// The AK public key (std base64 DER SPKI) the agent reports for this TPM.
pub(crate) fn ak_public(tpm: &Swtpm) -> String {
    let out = run_ok(
        Command::new(agent_bin())
            .args(["ak", "--kernel-cmdline", "/dev/null", "--set"])
            .arg(format!("tpm.tcti={}", tpm.tcti())),
    );
    let text = String::from_utf8(out.stdout).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("ak_public: "))
        .unwrap()
        .to_owned()
}

/// The post-release event and the PCR it extends by default.
pub(crate) const RELEASE_EVENT: &[u8] = b"attest-unlock:secrets-released:v1";

/// SHA-256 PCR values of the TPM, read with tpm2-tools (independent of our code).
pub(crate) fn pcrs_by_tpm2_tools(tpm: &Swtpm) -> Vec<String> {
    let out = run_ok(
        Command::new("tpm2_pcrread")
            .env("TPM2TOOLS_TCTI", tpm.tcti())
            .arg("sha256:all"),
    );
    let text = String::from_utf8(out.stdout).unwrap();
    text.lines()
        .filter_map(|l| l.trim().split_once(": 0x"))
        .map(|(_, v)| v.trim().to_lowercase())
        .collect()
}

/// One PCR of one bank (`sha1`, `sha256`...), read with tpm2-tools.
pub(crate) fn pcr_by_tpm2_tools(tpm: &Swtpm, bank: &str, pcr: u32) -> String {
    let out = run_ok(
        Command::new("tpm2_pcrread")
            .env("TPM2TOOLS_TCTI", tpm.tcti())
            .arg(format!("{bank}:{pcr}")),
    );
    let text = String::from_utf8(out.stdout).unwrap();
    text.lines()
        .find_map(|l| l.trim().split_once(": 0x"))
        .map(|(_, v)| v.trim().to_lowercase())
        .unwrap_or_else(|| panic!("no {bank}:{pcr} in {text}"))
}

/// `old` extended with `events` in bank `alg` (a hashlib name), computed by Python's hashlib
/// (independent of our code): `H(old || H(event))` for each event in turn.
pub(crate) fn extend_by_hashlib(alg: &str, old: &str, events: &[&[u8]]) -> String {
    let hexes: Vec<String> = events.iter().map(hex::encode).collect();
    let script = format!(
        "import hashlib,sys\nv=bytes.fromhex('{old}')\nfor e in sys.argv[1:]:\n    v=hashlib.new('{alg}', v+hashlib.new('{alg}', bytes.fromhex(e)).digest()).digest()\nprint(v.hex())"
    );
    let out = run_ok(Command::new("python3").arg("-c").arg(script).args(&hexes));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// What `attest-unlock anchors --json` reports for the config file `cfg` (and `extra`
/// arguments, e.g. `--pin-config JSON`).
pub(crate) fn anchors_json(cfg: &Path, extra: &[&str]) -> serde_json::Value {
    let out = run_ok(
        Command::new(agent_bin())
            .args([
                "anchors",
                "--json",
                "--kernel-cmdline",
                "/dev/null",
                "--config",
            ])
            .arg(cfg)
            .args(extra),
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The trust-anchor event `attest-unlock anchors` reports for the config file `cfg`.
pub(crate) fn anchors_event(cfg: &Path) -> String {
    anchors_json(cfg, &[])["event"].as_str().unwrap().to_owned()
}

/// Whether `passphrase` opens keyslot `slot` of `image`, asked of cryptsetup itself
/// (`open --test-passphrase`: no device-mapper needed), the key on its stdin.
pub(crate) fn opens_keyslot(image: &Path, slot: u32, passphrase: &[u8]) -> bool {
    use std::io::Write;
    let mut child = Command::new("cryptsetup")
        .args(["open", "--test-passphrase", "--key-slot"])
        .arg(slot.to_string())
        .arg("--key-file=-")
        .arg(image)
        .stdin(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(passphrase).unwrap();
    child.wait().unwrap().success()
}

/// A LUKS2 image whose slot 0 holds a recovery key and slot 1 the broker key, both PBKDF2-1000
/// (fast), made by the real cryptsetup on a plain file.
pub(crate) struct LuksImage {
    pub path: PathBuf,
    /// The key file of slot 0.
    pub recovery_key: PathBuf,
    _dir: tempfile::TempDir,
}

impl LuksImage {
    pub(crate) fn new(broker_key: &[u8]) -> LuksImage {
        let img = LuksImage::recovery_only();
        let k1 = img._dir.path().join("k1");
        std::fs::write(&k1, broker_key).unwrap();
        run_ok(
            Command::new("cryptsetup")
                .args(["luksAddKey", "--batch-mode", "--key-slot", "1"])
                .args(["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"])
                .arg("--key-file")
                .arg(&img.recovery_key)
                .arg(&img.path)
                .arg(&k1),
        );
        std::fs::remove_file(&k1).unwrap();
        img
    }

    /// An image with only slot 0 (the recovery key).
    pub(crate) fn recovery_only() -> LuksImage {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(20 << 20).unwrap();
        let k0 = dir.path().join("k0");
        std::fs::write(&k0, b"recovery key of the test image").unwrap();
        let pbkdf = ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"];
        run_ok(
            Command::new("cryptsetup")
                .args(["luksFormat", "--type", "luks2", "--batch-mode"])
                .args(pbkdf)
                .arg("--key-file")
                .arg(&k0)
                .arg(&path),
        );
        LuksImage {
            path,
            recovery_key: k0,
            _dir: dir,
        }
    }

    /// SHA-256 of the whole image, to prove a run left it untouched.
    pub(crate) fn digest(&self) -> String {
        hex::encode(Sha256::digest(std::fs::read(&self.path).unwrap()))
    }
}

/// A directory for delivered secrets on tmpfs (the agent refuses persistent filesystems).
pub(crate) fn secret_dir() -> tempfile::TempDir {
    tempfile::tempdir_in("/dev/shm").expect("/dev/shm (tmpfs) is needed for secret destinations")
}

/// A directory on a persistent (not tmpfs/ramfs) filesystem, for the refusals of persistent
/// destinations: under the build tree's `target/`, which is on disk; fails (never skips) when
/// it is not, since the assertion would then prove nothing.
pub(crate) fn persistent_dir() -> tempfile::TempDir {
    let base = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/persistent-tmp");
    std::fs::create_dir_all(&base).unwrap();
    let fs = Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(&base)
        .output()
        .unwrap();
    let fs = String::from_utf8_lossy(&fs.stdout).trim().to_owned();
    assert!(
        fs != "tmpfs" && fs != "ramfs",
        "{} is on {fs}: the persistent-destination tests need the build tree on a disk",
        base.display()
    );
    tempfile::tempdir_in(&base).unwrap()
}

/// The disk key in the trusted-execution-clusters operator's format, and the passphrase
/// (the bytes of its `key` string) that the LUKS keyslot holds.
pub(crate) fn operator_disk_key() -> (Vec<u8>, Vec<u8>) {
    let mut raw = [0u8; 24];
    getrandom(&mut raw);
    let key = STANDARD.encode(raw);
    let resource = serde_json::json!({"key_type": "oct", "key": key}).to_string();
    (resource.into_bytes(), key.into_bytes())
}

/// Fill `buf` from /dev/urandom.
pub(crate) fn getrandom(buf: &mut [u8]) {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(buf)
        .unwrap();
}

/// One agent configuration under test.
pub(crate) struct AgentConfig {
    pub brokers: Vec<(String, String)>, // (url, ca pem)
    pub tcti: String,
    pub disk_key: Option<String>,
    pub image: Option<PathBuf>,
    pub secrets: Vec<(String, PathBuf)>,
    pub token_path: Option<PathBuf>,
    pub extra: String,
}

impl AgentConfig {
    pub(crate) fn toml(&self) -> String {
        let mut s = String::new();
        s.push_str(&self.extra);
        s.push('\n');
        if let Some(k) = &self.disk_key {
            s.push_str(&format!("disk_key = {k:?}\n"));
        }
        if let Some(p) = &self.token_path {
            s.push_str(&format!("token_path = {:?}\n", p.display().to_string()));
        }
        s.push_str("[retry]\nmax_rounds = 1\ninitial_backoff_ms = 1\nmax_backoff_ms = 2\n");
        s.push_str("[timeouts]\nconnect_ms = 2000\nrequest_ms = 10000\n");
        s.push_str(&format!("[tpm]\ntcti = {:?}\n", self.tcti));
        if let Some(img) = &self.image {
            s.push_str(&format!(
                "[luks]\ndevice = {:?}\nkeyslot = 1\n",
                img.display().to_string()
            ));
        }
        for (url, ca) in &self.brokers {
            s.push_str(&format!("[[brokers]]\nurl = {url:?}\nca_cert = {ca:?}\n"));
        }
        for (res, path) in &self.secrets {
            s.push_str(&format!(
                "[[secrets]]\nresource = {res:?}\npath = {:?}\nmode = \"0600\"\n",
                path.display().to_string()
            ));
        }
        s
    }
}

/// The result of one agent run.
pub(crate) struct Run {
    pub status: std::process::ExitStatus,
    pub stderr: String,
    pub stdout: String,
}

impl Run {
    /// The verdict line.
    pub(crate) fn verdict(&self) -> &str {
        self.stderr
            .lines()
            .rev()
            .find(|l| l.contains("verdict="))
            .unwrap_or_else(|| panic!("no verdict line in:\n{}", self.stderr))
    }
}

/// Run `attest-unlock unlock --verify-only` with this config.
pub(crate) fn unlock(config: &AgentConfig, dir: &Path) -> Run {
    unlock_with(config, dir, &[])
}

/// Write the config file `unlock` runs with (the measurement log under `dir`); returns its path.
pub(crate) fn write_config(config: &AgentConfig, dir: &Path) -> PathBuf {
    let cfg = dir.join("config.toml");
    let text = format!(
        "{}[measure]\nlog = {:?}\n",
        config.toml(),
        dir.join("measurements.log").display().to_string()
    );
    std::fs::write(&cfg, text).unwrap();
    cfg
}

/// The arguments of `attest-unlock unlock --verify-only` with the config file `cfg` and
/// `extra` arguments after them (e.g. `--set retry.max_rounds=2`).
pub(crate) fn unlock_args(cfg: &Path, extra: &[String]) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = [
        "unlock",
        "--verify-only",
        "--kernel-cmdline",
        "/dev/null",
        "--config",
    ]
    .iter()
    .map(Into::into)
    .collect();
    args.push(cfg.into());
    args.extend(extra.iter().map(Into::into));
    args
}

/// Run a command with `input` on its stdin and collect what it printed.
pub(crate) fn run_with_stdin(cmd: &mut Command, input: &[u8]) -> Run {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), input).unwrap();
    let out = child.wait_with_output().unwrap();
    Run {
        status: out.status,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
    }
}

/// Run a command to completion and collect what it printed.
pub(crate) fn collect(cmd: &mut Command) -> Run {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    Run {
        status: out.status,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
    }
}

/// Like [`unlock`], with `extra` arguments after the config (e.g. `--set KEY=VALUE`, which
/// beats the config file).
pub(crate) fn unlock_with(config: &AgentConfig, dir: &Path, extra: &[String]) -> Run {
    let cfg = write_config(config, dir);
    collect(Command::new(agent_bin()).args(unlock_args(&cfg, extra)))
}
