//! The measurements that drive real programs: the agent (release build) with a swtpm and the
//! test broker, clevis with a local tang, cryptsetup, dracut, GNU time, and the e2e boots.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use base64::Engine;

use super::stats;
use crate::{free_port_pair, root, wait_port};

/// A child process killed (and reaped) when dropped.
pub(super) struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn random<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(b)
}

/// stdout of a command that must succeed, trimmed.
pub(super) fn capture(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Runs `cmd` with `input` on its stdin; (wall ms, output).
fn timed(cmd: &mut Command, input: &[u8]) -> Result<(f64, std::process::Output)> {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input)?;
    }
    let out = child.wait_with_output()?;
    Ok((start.elapsed().as_secs_f64() * 1e3, out))
}

fn tool(name: &str) -> Result<PathBuf> {
    for dir in ["/usr/libexec", "/usr/bin", "/usr/sbin", "/bin", "/sbin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return Ok(p);
        }
    }
    bail!("{name} not found (cargo xtask bench installs tang, socat, time)")
}

/// The world the process measurements share: a swtpm, the test broker (release binary) that
/// trusts its AK, a LUKS2 image (slot 0: a recovery passphrase with the default argon2id;
/// slot 1: the broker's key with PBKDF2-1000), a local tang and a tang-bound JWE of the key.
pub(super) struct World {
    pub work: PathBuf,
    pub secrets: PathBuf,
    pub bin: PathBuf,
    pub image: PathBuf,
    /// The same two slots on a volume formatted with `--pbkdf pbkdf2
    /// --pbkdf-force-iterations 1000`, whose volume-key digest then has 1000 iterations too.
    pub fast_image: PathBuf,
    /// The volume-key digest's PBKDF2 iterations of `image` and `fast_image`.
    pub digest_iterations: (String, String),
    pub key: Vec<u8>,
    pub recovery: Vec<u8>,
    pub jwe: Vec<u8>,
    /// `attest-unlock unlock --verify-only` of the disk key.
    pub unlock_config: PathBuf,
    /// The same without a disk (one secret to tmpfs): the agent alone, no cryptsetup child.
    pub secrets_config: PathBuf,
    pub tang_url: String,
    pub argon2: String,
    /// The swtpm's server port (its control port is the next one).
    pub tpm_port: u16,
    _swtpm: Proc,
    _broker: Proc,
    _tang: Proc,
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.secrets);
    }
}

impl World {
    pub(super) fn new(work: &Path) -> Result<World> {
        let repo = root();
        let bin = repo.join("target/release/attest-unlock");
        let kbs = repo.join("target/release/test-kbs");
        std::fs::create_dir_all(work)?;
        let secrets =
            Path::new("/dev/shm").join(format!("attest-unlock-bench-{}", std::process::id()));
        if secrets.exists() {
            std::fs::remove_dir_all(&secrets)?;
        }
        std::fs::create_dir(&secrets)?;

        // swtpm, as the demo starts it.
        let port = free_port_pair()?;
        let state = work.join("tpm");
        std::fs::create_dir_all(&state)?;
        let swtpm = Proc(
            Command::new("swtpm")
                .args(["socket", "--tpm2", "--tpmstate"])
                .arg(format!("dir={}", state.display()))
                .arg("--server")
                .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
                .arg("--ctrl")
                .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
                .args(["--flags", "not-need-init,startup-clear"])
                .stderr(Stdio::null())
                .spawn()
                .context("cannot start swtpm")?,
        );
        wait_port(port)?;
        let tcti = format!("swtpm:host=127.0.0.1,port={port}");
        let ak_out = capture(
            Command::new(&bin)
                .args(["ak", "--kernel-cmdline", "/dev/null", "--set"])
                .arg(format!("tpm.tcti={tcti}")),
        )?;
        let ak = ak_out
            .lines()
            .find_map(|l| l.strip_prefix("ak_public: "))
            .context("attest-unlock ak printed no ak_public line")?
            .trim()
            .to_owned();
        std::fs::write(work.join("ak.b64"), &ak)?;

        // The disk key as the operator stores it; its `key` string is the passphrase.
        let key = base64::engine::general_purpose::STANDARD
            .encode(random::<24>()?)
            .into_bytes();
        std::fs::write(
            work.join("root.json"),
            format!(
                "{{\"key_type\":\"oct\",\"key\":\"{}\"}}",
                String::from_utf8_lossy(&key)
            ),
        )?;
        std::fs::write(work.join("kubelet"), b"bench kubelet bootstrap token\n")?;

        // The LUKS2 image: slot 0 the default (argon2id, benchmarked by cryptsetup), slot 1
        // ours (what `clevis luks bind` / the pin creates: PBKDF2, 1000 iterations).
        let recovery = b"bench recovery passphrase".to_vec();
        let recovery_file = work.join("recovery.key");
        std::fs::write(&recovery_file, &recovery)?;
        let key_file = work.join("broker.key");
        std::fs::write(&key_file, &key)?;
        let pbkdf2 = ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"];
        let make = |image: &Path, format_args: &[&str]| -> Result<String> {
            std::fs::File::create(image)?.set_len(32 << 20)?;
            crate::run(
                Command::new("cryptsetup")
                    .args(["luksFormat", "--type", "luks2", "--batch-mode"])
                    .args(format_args)
                    .arg("--key-file")
                    .arg(&recovery_file)
                    .arg(image),
            )?;
            crate::run(
                Command::new("cryptsetup")
                    .args(["luksAddKey", "--batch-mode", "--key-slot", "1"])
                    .args(pbkdf2)
                    .arg("--key-file")
                    .arg(&recovery_file)
                    .arg(image)
                    .arg(&key_file),
            )?;
            capture(Command::new("cryptsetup").arg("luksDump").arg(image))
        };
        let image = work.join("root.img");
        let dump = make(&image, &[])?;
        let argon2 = argon2_params(&dump);
        let fast_image = work.join("root-fast-digest.img");
        let fast_dump = make(&fast_image, &pbkdf2)?;
        let digest_iterations = (digest_iterations(&dump), digest_iterations(&fast_dump));
        std::fs::remove_file(&key_file)?;

        // The test broker (release binary, its own process, as a real broker would be).
        let ca = work.join("ca.pem");
        let mut broker = Command::new(&kbs)
            .arg("--trusted-ak")
            .arg(work.join("ak.b64"))
            .arg("--resource")
            .arg(format!(
                "default/bench-node/root={}",
                work.join("root.json").display()
            ))
            .arg("--resource")
            .arg(format!(
                "default/bench-node/kubelet={}",
                work.join("kubelet").display()
            ))
            .arg("--ca-out")
            .arg(&ca)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(work.join("test-kbs.log"))?)
            .spawn()
            .context("cannot start test-kbs")?;
        let stdout = broker.stdout.take().context("no broker stdout")?;
        let broker = Proc(broker);
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let url = line
            .trim()
            .rsplit(' ')
            .next()
            .filter(|u| u.starts_with("https://"))
            .with_context(|| format!("unexpected test-kbs output {line:?}"))?
            .to_owned();

        let common = format!(
            "[tpm]\ntcti = \"{tcti}\"\n\
             [[brokers]]\nurl = \"{url}\"\nca_cert = \"{ca}\"\n\
             [retry]\nmax_rounds = 1\n\
             [measure]\nlog = \"{measure}\"\n",
            ca = ca.display(),
            measure = work.join("measurements.log").display(),
        );
        let unlock_config = work.join("unlock.toml");
        std::fs::write(
            &unlock_config,
            format!(
                "disk_key = \"default/bench-node/root\"\n\
                 [luks]\ndevice = \"{}\"\nkeyslot = 1\n{common}",
                image.display()
            ),
        )?;
        let secrets_config = work.join("secrets.toml");
        std::fs::write(
            &secrets_config,
            format!(
                "[[secrets]]\nresource = \"default/bench-node/kubelet\"\npath = \"{}\"\nmode = \"0600\"\n{common}",
                secrets.join("kubelet").display()
            ),
        )?;

        // tang: tangd per connection under socat, as tangd.socket runs it under systemd.
        let tang_db = work.join("tang");
        std::fs::create_dir_all(&tang_db)?;
        crate::run(Command::new(tool("tangd-keygen")?).arg(&tang_db))?;
        let tang_port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let tang = Proc(
            Command::new("socat")
                .arg(format!(
                    "TCP-LISTEN:{tang_port},bind=127.0.0.1,fork,reuseaddr"
                ))
                .arg(format!(
                    "EXEC:{} {}",
                    tool("tangd")?.display(),
                    tang_db.display()
                ))
                .stderr(std::fs::File::create(work.join("tang.log"))?)
                .spawn()
                .context("cannot start socat (tang)")?,
        );
        wait_port(tang_port)?;
        let tang_url = format!("http://127.0.0.1:{tang_port}");
        let (_, enc) = timed(
            Command::new("clevis").args([
                "encrypt",
                "tang",
                &format!("{{\"url\":\"{tang_url}\"}}"),
                "-y",
            ]),
            &key,
        )?;
        ensure!(
            enc.status.success(),
            "clevis encrypt tang failed: {}",
            String::from_utf8_lossy(&enc.stderr)
        );
        let jwe = enc.stdout;
        std::fs::write(work.join("key.jwe"), &jwe)?;

        Ok(World {
            work: work.to_path_buf(),
            secrets,
            bin,
            image,
            fast_image,
            digest_iterations,
            key,
            recovery,
            jwe,
            unlock_config,
            secrets_config,
            tang_url,
            argon2,
            tpm_port: port,
            _swtpm: swtpm,
            _broker: broker,
            _tang: tang,
        })
    }

    fn agent(&self, config: &Path) -> Command {
        let mut c = Command::new(&self.bin);
        c.args([
            "unlock",
            "--verify-only",
            "--kernel-cmdline",
            "/dev/null",
            "--config",
        ])
        .arg(config);
        c
    }

    /// One `attest-unlock unlock --verify-only`: (wall ms, verdict steps).
    pub(super) fn ours_once(&self) -> Result<(f64, Vec<(String, f64)>)> {
        self.ours_with(&[])
    }

    /// The same with `--set` overrides.
    pub(super) fn ours_with(&self, set: &[String]) -> Result<(f64, Vec<(String, f64)>)> {
        let mut cmd = self.agent(&self.unlock_config);
        for s in set {
            cmd.arg("--set").arg(s);
        }
        let (ms, out) = timed(&mut cmd, b"")?;
        let err = String::from_utf8_lossy(&out.stderr);
        ensure!(
            out.status.success(),
            "attest-unlock unlock failed: {}",
            err.trim()
        );
        let verdict = stats::find_verdict(&err).context("no verdict line")?;
        ensure!(verdict.contains("verdict=ok"), "verdict: {verdict}");
        Ok((ms, stats::verdict_steps(verdict)))
    }

    /// One `clevis decrypt` of the tang JWE: wall ms; the key must come out.
    fn clevis_once(&self) -> Result<f64> {
        let (ms, out) = timed(Command::new("clevis").arg("decrypt"), &self.jwe)?;
        ensure!(
            out.status.success() && out.stdout == self.key,
            "clevis decrypt failed or gave another key: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(ms)
    }
}

/// The argon2 keyslot's parameters from `cryptsetup luksDump` (slot 0), one line.
fn argon2_params(dump: &str) -> String {
    let mut in_slot0 = false;
    let mut parts = Vec::new();
    for line in dump.lines() {
        let t = line.trim();
        if t.starts_with("0: luks2") {
            in_slot0 = true;
            continue;
        }
        if in_slot0 && (t.starts_with("1: luks2") || t == "Tokens:") {
            break;
        }
        if in_slot0 {
            for k in ["PBKDF:", "Time cost:", "Memory:", "Threads:"] {
                if let Some(v) = t.strip_prefix(k) {
                    parts.push(format!("{} {}", k.trim_end_matches(':'), v.trim()));
                }
            }
        }
    }
    parts.join(", ")
}

/// The PBKDF2 iterations of the volume-key digest (`Digests:` in `cryptsetup luksDump`).
fn digest_iterations(dump: &str) -> String {
    dump.split_once("Digests:")
        .and_then(|(_, d)| {
            d.lines().find_map(|l| {
                l.trim()
                    .strip_prefix("Iterations:")
                    .map(|v| v.trim().to_owned())
            })
        })
        .unwrap_or_else(|| "?".into())
}

/// Time to key, interleaved A/B (the order alternates each run).
pub(super) struct TimeToKey {
    pub ours_wall: Vec<f64>,
    /// Wall minus the keyslot check (`unlock` step): the key in memory, measured.
    pub ours_key: Vec<f64>,
    pub steps: Vec<Vec<(String, f64)>>,
    pub clevis: Vec<f64>,
    pub jwe_bytes: usize,
    pub tang_url: String,
}

pub(super) fn time_to_key(w: &World, runs: usize) -> Result<TimeToKey> {
    // One warm-up each (page cache, the swtpm's first primary key), not counted.
    w.ours_once()?;
    w.clevis_once()?;
    let mut t = TimeToKey {
        ours_wall: Vec::new(),
        ours_key: Vec::new(),
        steps: Vec::new(),
        clevis: Vec::new(),
        jwe_bytes: w.jwe.len(),
        tang_url: w.tang_url.clone(),
    };
    for i in 0..runs {
        let mut ours = || -> Result<()> {
            let (ms, steps) = w.ours_once()?;
            let unlock = steps
                .iter()
                .find(|(k, _)| k == "unlock")
                .map_or(0.0, |(_, v)| *v);
            t.ours_wall.push(ms);
            t.ours_key.push(ms - unlock);
            t.steps.push(steps);
            Ok(())
        };
        if i % 2 == 0 {
            ours()?;
            t.clevis.push(w.clevis_once()?);
        } else {
            let c = w.clevis_once()?;
            ours()?;
            t.clevis.push(c);
        }
        eprintln!(
            "bench: time to key {}/{runs}: ours {:.1} ms (to key {:.1}), clevis/tang {:.1} ms",
            i + 1,
            t.ours_wall.last().copied().unwrap_or(0.0),
            t.ours_key.last().copied().unwrap_or(0.0),
            t.clevis.last().copied().unwrap_or(0.0)
        );
    }
    Ok(t)
}

/// Keyslot open (cryptsetup open --test-passphrase), interleaved.
pub(super) struct Keyslot {
    /// Our key, `--key-slot 1` (PBKDF2-1000).
    pub pbkdf2_named: Vec<f64>,
    /// The recovery passphrase, `--key-slot 0` (default argon2id).
    pub argon2_named: Vec<f64>,
    /// Our key without `--key-slot`: cryptsetup tries slot 0 (argon2id) first.
    pub ours_unnamed: Vec<f64>,
    /// Our key, `--key-slot 1`, on the volume whose digest has 1000 iterations.
    pub pbkdf2_fast_digest: Vec<f64>,
    pub argon2: String,
    /// Digest iterations: (default volume, fast-digest volume).
    pub digest_iterations: (String, String),
}

pub(super) fn keyslot(w: &World, runs: usize) -> Result<Keyslot> {
    let open_on = |image: &Path, slot: Option<u32>, pass: &[u8]| -> Result<f64> {
        let mut c = Command::new("cryptsetup");
        c.args(["open", "--test-passphrase"]);
        if let Some(s) = slot {
            c.args(["--key-slot", &s.to_string()]);
        }
        c.arg("--key-file=-").arg(image);
        let (ms, out) = timed(&mut c, pass)?;
        ensure!(
            out.status.success(),
            "cryptsetup open --test-passphrase (slot {slot:?}) failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(ms)
    };
    let open = |slot: Option<u32>, pass: &[u8]| open_on(&w.image, slot, pass);
    open(Some(1), &w.key)?;
    open_on(&w.fast_image, Some(1), &w.key)?;
    let mut k = Keyslot {
        pbkdf2_named: Vec::new(),
        argon2_named: Vec::new(),
        ours_unnamed: Vec::new(),
        pbkdf2_fast_digest: Vec::new(),
        argon2: w.argon2.clone(),
        digest_iterations: w.digest_iterations.clone(),
    };
    for i in 0..runs {
        k.pbkdf2_named.push(open(Some(1), &w.key)?);
        k.argon2_named.push(open(Some(0), &w.recovery)?);
        k.ours_unnamed.push(open(None, &w.key)?);
        k.pbkdf2_fast_digest
            .push(open_on(&w.fast_image, Some(1), &w.key)?);
        eprintln!(
            "bench: keyslot {}/{runs}: pbkdf2 slot {:.1} ms, argon2id slot {:.1} ms, ours unnamed {:.1} ms, pbkdf2 slot on a fast-digest volume {:.1} ms",
            i + 1,
            k.pbkdf2_named.last().copied().unwrap_or(0.0),
            k.argon2_named.last().copied().unwrap_or(0.0),
            k.ours_unnamed.last().copied().unwrap_or(0.0),
            k.pbkdf2_fast_digest.last().copied().unwrap_or(0.0)
        );
    }
    Ok(k)
}

/// Peak RSS (KiB) by GNU time.
pub(super) struct Memory {
    /// `unlock --verify-only` with the keyslot check: the larger of the agent and its
    /// cryptsetup child (rusage reports the biggest process of the tree).
    pub unlock_kib: Vec<f64>,
    /// A secrets-only `unlock`: the agent process alone.
    pub agent_kib: Vec<f64>,
    /// `clevis decrypt` (bash, jose, curl: the biggest of them).
    pub clevis_kib: Vec<f64>,
}

pub(super) fn memory(w: &World, runs: usize) -> Result<Memory> {
    let time = Path::new("/usr/bin/time");
    ensure!(
        time.exists(),
        "/usr/bin/time is missing (Debian package time)"
    );
    let out = w.work.join("time.out");
    let peak = |cmd: Command, input: &[u8]| -> Result<f64> {
        let mut c = Command::new(time);
        c.args(["-f", "%M", "-o"]).arg(&out).arg(cmd.get_program());
        c.args(cmd.get_args());
        let (_, o) = timed(&mut c, input)?;
        ensure!(
            o.status.success(),
            "{:?} failed: {}",
            cmd.get_program(),
            String::from_utf8_lossy(&o.stderr).trim()
        );
        let text = std::fs::read_to_string(&out)?;
        text.lines()
            .last()
            .and_then(|l| l.trim().parse::<f64>().ok())
            .with_context(|| format!("GNU time wrote {text:?}"))
    };
    let mut m = Memory {
        unlock_kib: Vec::new(),
        agent_kib: Vec::new(),
        clevis_kib: Vec::new(),
    };
    let secret = w.secrets.join("kubelet");
    for _ in 0..runs {
        m.unlock_kib.push(peak(w.agent(&w.unlock_config), b"")?);
        let _ = std::fs::remove_file(&secret);
        m.agent_kib.push(peak(w.agent(&w.secrets_config), b"")?);
        let _ = std::fs::remove_file(&secret);
        let mut c = Command::new("clevis");
        c.arg("decrypt");
        m.clevis_kib.push(peak(c, &w.jwe)?);
    }
    Ok(m)
}

/// Binary size and shared libraries.
pub(super) struct Binary {
    pub bytes: u64,
    /// `opt-level` of the workspace's release profile, as Cargo.toml says it.
    pub opt_level: String,
    pub stripped: Option<bool>,
    /// (soname, resolved path, bytes of the file).
    pub libs: Vec<(String, String, u64)>,
}

pub(super) fn binary(bin: &Path) -> Result<Binary> {
    let bytes = std::fs::metadata(bin)?.len();
    let stripped = Command::new("file")
        .arg("-b")
        .arg(bin)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .map(|s| s.contains(", stripped"));
    let ldd = capture(Command::new("ldd").arg(bin))?;
    let mut libs = Vec::new();
    for line in ldd.lines() {
        let line = line.trim();
        let (name, path) = match line.split_once(" => ") {
            Some((n, rest)) => (n.trim(), rest.split(" (").next().unwrap_or("").trim()),
            None => {
                let p = line.split(" (").next().unwrap_or("").trim();
                (p, p)
            }
        };
        if name.starts_with("linux-vdso") || path.is_empty() {
            continue;
        }
        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        let real = std::fs::canonicalize(path)
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| path.to_owned());
        libs.push((name.to_owned(), real, size));
    }
    Ok(Binary {
        bytes,
        opt_level: release_opt_level(&std::fs::read_to_string(root().join("Cargo.toml"))?),
        stripped,
        libs,
    })
}

/// The `opt-level` of `[profile.release]` in a Cargo.toml's text (`3` when it is not set).
fn release_opt_level(manifest: &str) -> String {
    let mut in_release = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_release = line == "[profile.release]";
        } else if let Some(value) = line.strip_prefix("opt-level") {
            if in_release {
                let value = value.trim_start().trim_start_matches('=');
                return value.trim().trim_matches('"').to_owned();
            }
        }
    }
    "3".to_owned()
}

/// One initramfs build.
pub(super) struct Image {
    pub name: &'static str,
    pub raw: u64,
    pub zstd: u64,
    /// Path in the image to size, for every entry.
    pub files: Vec<(String, u64)>,
}

/// The initramfs comparison: the same dracut (a copy of /usr/lib/dracut with our module and
/// Debian's clevis modules), no kernel, no host configuration; base, base + ours, base +
/// clevis + clevis-pin-tang + clevis-pin-tpm2.
pub(super) struct Initramfs {
    pub base: Image,
    pub ours: Image,
    pub clevis: Image,
    pub command: String,
}

/// The base module set: what e2e's initramfs has besides ours (systemd, crypt, network).
const BASE_MODULES: &str = "base systemd systemd-initrd dracut-systemd rootfs-block udev-rules \
                            fs-lib crypt network systemd-networkd";

pub(super) fn initramfs(work: &Path) -> Result<Initramfs> {
    let repo = root();
    let dir = work.join("dracut");
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(dir.join("conf.d"))?;
    std::fs::create_dir_all(dir.join("tmp"))?;
    let basedir = dir.join("basedir");
    crate::run(
        Command::new("cp")
            .args(["-a", "/usr/lib/dracut"])
            .arg(&basedir),
    )?;
    for m in ["60clevis", "60clevis-pin-tang", "60clevis-pin-tpm2"] {
        ensure!(
            basedir.join("modules.d").join(m).is_dir(),
            "dracut module {m} missing (Debian package clevis-dracut)"
        );
    }
    crate::run(
        Command::new("cp")
            .arg("-a")
            .arg(repo.join("dracut-module/90attest-unlock"))
            .arg(basedir.join("modules.d/")),
    )?;
    let build = |name: &'static str, extra: &str| -> Result<Image> {
        let modules = format!("{BASE_MODULES} {extra}").trim().to_owned();
        let out = dir.join(format!("{name}.cpio"));
        let log = dir.join(format!("{name}.log"));
        let status = Command::new("dracut")
            .env("dracutbasedir", &basedir)
            .env("ATTEST_UNLOCK_BINDIR", repo.join("target/release"))
            .env("ATTEST_UNLOCK_UNITDIR", repo.join("systemd"))
            .args([
                "--force",
                "--no-hostonly",
                "--no-early-microcode",
                "--no-kernel",
                "--no-compress",
                "--conf",
                "/dev/null",
                "--confdir",
            ])
            .arg(dir.join("conf.d"))
            .arg("--tmpdir")
            .arg(dir.join("tmp"))
            .args(["--modules", &modules])
            .arg(&out)
            .stdout(std::fs::File::create(&log)?)
            .stderr(std::fs::File::options().append(true).open(&log)?)
            .status()
            .context("run dracut")?;
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        ensure!(
            status.success(),
            "dracut ({name}) failed; see {}",
            log.display()
        );
        for m in extra.split_whitespace() {
            ensure!(
                text.contains(&format!("Including module: {m} ")),
                "dracut did not include {m}; see {}",
                log.display()
            );
        }
        let raw = std::fs::metadata(&out)?.len();
        let zst = dir.join(format!("{name}.cpio.zst"));
        crate::run(
            Command::new("zstd")
                .args(["-q", "-19", "-T0", "-f"])
                .arg(&out)
                .arg("-o")
                .arg(&zst),
        )?;
        let zstd = std::fs::metadata(&zst)?.len();
        let listing = capture(
            Command::new("cpio")
                .args(["-itv", "--quiet"])
                .stdin(std::fs::File::open(&out)?),
        )?;
        let files = listing
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let size = f.get(4)?.parse::<u64>().ok()?;
                let name = f.get(8..)?.join(" ");
                let name = name.split(" -> ").next().unwrap_or(&name).to_owned();
                let size = if l.starts_with('-') { size } else { 0 };
                Some((name, size))
            })
            .collect();
        eprintln!(
            "bench: initramfs {name}: {} raw, {} zstd -19",
            stats::bytes(raw),
            stats::bytes(zstd)
        );
        Ok(Image {
            name,
            raw,
            zstd,
            files,
        })
    };
    let base = build("base", "")?;
    let ours = build("ours", "attest-unlock")?;
    let clevis = build("clevis", "clevis clevis-pin-tang clevis-pin-tpm2")?;
    Ok(Initramfs {
        base,
        ours,
        clevis,
        command: format!(
            "dracutbasedir=COPY dracut --no-hostonly --no-early-microcode --no-kernel --no-compress \
             --conf /dev/null --modules \"{BASE_MODULES} [attest-unlock | clevis clevis-pin-tang clevis-pin-tpm2]\""
        ),
    })
}

/// The files `with` has beyond `base`, largest first.
pub(super) fn added(base: &Image, with: &Image) -> Vec<(String, u64)> {
    let have: std::collections::HashSet<&str> =
        base.files.iter().map(|(n, _)| n.as_str()).collect();
    let mut out: Vec<(String, u64)> = with
        .files
        .iter()
        .filter(|(n, _)| !have.contains(n.as_str()))
        .cloned()
        .collect();
    out.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    out
}

/// The e2e boot times (seconds from QEMU start to the root's marker).
pub(super) struct Boot {
    pub attested: Vec<f64>,
    pub baseline: Vec<f64>,
}

fn qemu_running() -> bool {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| std::fs::read(e.path().join("comm")).ok())
                .any(|c| c.starts_with(b"qemu-system"))
        })
        .unwrap_or(false)
}

/// `cargo xtask e2e --measure N`, its summary line parsed.
pub(super) fn boot(n: usize, log: &Path) -> Result<Boot> {
    // Another e2e (or anything in QEMU) would share target/e2e and the CPUs: wait a while.
    let deadline = Instant::now() + Duration::from_secs(900);
    while qemu_running() {
        ensure!(
            Instant::now() < deadline,
            "another QEMU kept running for 15 minutes (an e2e run of someone else?)"
        );
        eprintln!("bench: a QEMU is running (another e2e?); waiting");
        std::thread::sleep(Duration::from_secs(20));
    }
    let mut child = crate::cargo()
        .args([
            "run",
            "-p",
            "xtask",
            "--",
            "e2e",
            "--measure",
            &n.to_string(),
        ])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .context("run cargo xtask e2e")?;
    let stderr = child.stderr.take().context("no e2e stderr")?;
    let mut file = std::fs::File::create(log)?;
    let mut summary = None;
    for line in BufReader::new(stderr).lines() {
        let line = line?;
        writeln!(file, "{line}")?;
        if line.starts_with("e2e: boot")
            || line.contains("reached the root")
            || line.starts_with("e2e: passed")
        {
            eprintln!("{line}");
        }
        if line.starts_with("time to root marker") {
            summary = Some(line);
        }
    }
    let status = child.wait()?;
    ensure!(
        status.success(),
        "cargo xtask e2e --measure {n} failed ({status}); see {}",
        log.display()
    );
    let line = summary.context("e2e printed no `time to root marker` line")?;
    parse_boot(&line)
}

/// `time to root marker (...): attested 12.3s [12.3s, 12.5s], key file 10.2s [10.2s, 10.4s]`.
pub(super) fn parse_boot(line: &str) -> Result<Boot> {
    let list = |after: &str| -> Result<Vec<f64>> {
        let rest = line
            .split_once(after)
            .map(|(_, r)| r)
            .with_context(|| format!("no {after:?} in {line:?}"))?;
        let inner = rest
            .split_once('[')
            .and_then(|(_, r)| r.split_once(']'))
            .map(|(i, _)| i)
            .with_context(|| format!("no [list] after {after:?}"))?;
        inner
            .split(',')
            .map(|s| {
                s.trim()
                    .trim_end_matches('s')
                    .parse::<f64>()
                    .with_context(|| format!("bad time {s:?}"))
            })
            .collect()
    };
    Ok(Boot {
        attested: list("attested ")?,
        baseline: list("key file ")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size section names the profile's real opt-level (it once said `s` under `z`).
    #[test]
    fn the_release_opt_level_is_read_from_the_manifest() {
        assert_eq!(
            release_opt_level("[profile.release]\n# size\nopt-level = \"z\"\nlto = true\n"),
            "z"
        );
        assert_eq!(
            release_opt_level("[profile.dev]\nopt-level = 1\n[profile.release]\nlto = true\n"),
            "3"
        );
        assert_eq!(release_opt_level("[profile.release]\nopt-level=2\n"), "2");
    }

    #[test]
    fn e2e_summary_parses() {
        let b = parse_boot(
            "time to root marker (QEMU start to E2E-ROOT-REACHED, median of 2): attested 12.3s [12.3s, 12.5s], key file 10.2s [10.2s, 10.4s]",
        )
        .unwrap_or(Boot {
            attested: vec![],
            baseline: vec![],
        });
        assert_eq!(b.attested, vec![12.3, 12.5]);
        assert_eq!(b.baseline, vec![10.2, 10.4]);
    }

    #[test]
    fn digest_iterations_from_the_dump() {
        let dump = "Keyslots:\n  1: luks2\n\tIterations: 1000\nDigests:\n  0: pbkdf2\n\tHash: sha256\n\tIterations: 203844\n";
        assert_eq!(digest_iterations(dump), "203844");
        assert_eq!(digest_iterations("nothing"), "?");
    }

    #[test]
    fn argon2_slot_params() {
        let dump = "Keyslots:\n  0: luks2\n\tKey:        512 bits\n\tPBKDF:      argon2id\n\tTime cost:  4\n\tMemory:     1048576\n\tThreads:    2\n  1: luks2\n\tPBKDF:      pbkdf2\nTokens:\n";
        assert_eq!(
            argon2_params(dump),
            "PBKDF argon2id, Time cost 4, Memory 1048576, Threads 2"
        );
    }
}
