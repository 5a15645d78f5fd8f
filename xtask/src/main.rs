//! `cargo xtask`: what cargo alone cannot do. `setup` installs the system packages the tests
//! and the demo use; `test` runs every check CI runs; `demo` runs the whole job end to end on
//! local defaults (swtpm, the test broker on 127.0.0.1, a LUKS2 image file); `e2e` boots the
//! real initramfs under QEMU (see `e2e.rs`); `dist` lays out what an image build installs.

mod bench;
mod e2e;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use base64::Engine;

/// Debian packages the test suite and the demo need.
const PACKAGES: &[&str] = &[
    "swtpm",
    "swtpm-tools",
    "tpm2-tools",
    "libtss2-dev",
    "cryptsetup-bin",
    "pkg-config",
    "clang",
    "python3-pip",
    "jose",
    // The pin is tested with the real clevis CLI.
    "clevis",
    "clevis-luks",
    // The Authenticode digests of `reference-values` are checked against osslsigncode's.
    "osslsigncode",
    // `cargo xtask e2e`: the boot under QEMU (TCG) with OVMF, a dracut + systemd initramfs,
    // a busybox root on ext4, and Debian's Ignition validator (2.14, which predates spec
    // 3.6.0: the docs quote what it says about our examples; the examples themselves are
    // validated by upstream v2.26.0 from ../shared/tools).
    "qemu-system-x86",
    "ovmf",
    "dracut-core",
    "dracut-network",
    "busybox-static",
    "e2fsprogs",
    "ignition",
    "shellcheck",
    // The real Trustee KBS in the interop tests: unpacked with xz, its PKI made with openssl,
    // `kbs` links libtss2-mu; the attack matrix bounds memory with prlimit (util-linux).
    "xz-utils",
    "openssl",
    "libtss2-mu0",
    "util-linux",
    // The system CA bundle an empty pin `cert` falls back to (tested).
    "ca-certificates",
    // The first boot with upstream Ignition (e2e): the blank disk's partition table (sgdisk),
    // the example's xfs root (mkfs.xfs), dracut's url-lib that 30ignition depends on (curl),
    // and what `clevis luks bind` runs in the initramfs (pwmake, luksmeta).
    "gdisk",
    "xfsprogs",
    "curl",
    "libpwquality-tools",
    "luksmeta",
    // Upstream Ignition relabels what it writes (setfiles, with the root's SELinux policy).
    "policycoreutils",
    // The update boots (e2e): UKIs made from systemd's stub with objcopy, on a FAT ESP.
    "systemd-boot-efi",
    "binutils",
    "dosfstools",
    "mtools",
];

/// Python modules the tests use as independent implementations.
const PYTHON_MODULES: &[(&str, &str)] = &[("jwcrypto", "jwcrypto")];

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("setup") => setup(),
        Some("test") => {
            setup()?;
            let e2e = match args.get(1).map(String::as_str) {
                None => true,
                Some("--no-e2e") => false,
                Some(other) => bail!("test: unknown argument {other:?} (test [--no-e2e])"),
            };
            test(e2e)
        }
        Some("e2e") => {
            setup()?;
            e2e::e2e(&args[1..])
        }
        Some("dist") => e2e::dist(&args[1..]),
        Some("bench") => {
            setup()?;
            bench::bench(&args[1..])
        }
        Some("demo") => {
            setup()?;
            demo()
        }
        Some("fuzz") => {
            let secs: u64 = match args.get(1) {
                Some(s) => s.parse().context("fuzz takes the seconds per target")?,
                None => 30,
            };
            fuzz(secs)
        }
        _ => {
            eprintln!(
                "usage: cargo xtask <command>\n\n\
                 commands:\n  \
                 setup   install the Debian packages and tools the tests and the demo need\n  \
                 test [--no-e2e]  setup, then fmt --check, clippy -D warnings, cargo-deny, the whole\n           \
                 test suite and the e2e boot test\n  \
                 e2e [--measure N] [--boot-timeout SECS] [--first-boot-only]  setup, then boot the real\n           \
                 initramfs under QEMU: attested (OVMF), denied, and key-file baseline (N boots each for\n           \
                 the timings); then the first boot with upstream Ignition and the boots after it\n  \
                 dist --destdir D  build release and lay out usr/bin, the dracut module and the units\n  \
                 demo    setup, then attest with a swtpm to a local test broker and verify a LUKS2 keyslot\n  \
                 bench [--quick] [--boots N] ...  setup, then measure against clevis/tang and the\n           \
                 baselines; writes docs/benchmarks.md (bench --help for the options)\n  \
                 fuzz [SECS]  run every cargo-fuzz target for SECS seconds (default 30)"
            );
            bail!("no command given")
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

/// Install what is missing; a no-op on a machine that has everything.
fn setup() -> Result<()> {
    let missing: Vec<&str> = PACKAGES.iter().copied().filter(|p| !installed(p)).collect();
    if !missing.is_empty() {
        eprintln!("xtask: installing {}", missing.join(" "));
        run(Command::new("apt-get").args(["update", "-q"]))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    for (module, package) in PYTHON_MODULES {
        let present = Command::new("python3")
            .args(["-c", &format!("import {module}")])
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !present {
            eprintln!("xtask: installing python module {package}");
            run(Command::new("python3").args(["-m", "pip", "install", "-q", package]))?;
        }
    }
    let components = Command::new("rustup")
        .args(["component", "list", "--installed"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    for c in ["clippy", "rustfmt"] {
        if !components.lines().any(|l| l.starts_with(c)) {
            run(Command::new("rustup").args(["component", "add", c]))?;
        }
    }
    Ok(())
}

/// The declared MSRV (`rust-version` of the workspace) is the toolchain that builds here:
/// `rustc` must be that major.minor version, so the claim cannot drift from what CI runs.
fn check_msrv() -> Result<()> {
    let manifest = std::fs::read_to_string(root().join("Cargo.toml")).context("read Cargo.toml")?;
    let declared = manifest
        .lines()
        .find_map(|l| l.trim().strip_prefix("rust-version = "))
        .map(|v| v.trim_matches('"').to_owned())
        .context("no rust-version in Cargo.toml")?;
    let out = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .arg("--version")
        .output()
        .context("rustc --version")?;
    let version = String::from_utf8_lossy(&out.stdout);
    let built = version.split_whitespace().nth(1).unwrap_or_default();
    let minor = |v: &str| v.split('.').take(2).collect::<Vec<_>>().join(".");
    if minor(built) != minor(&declared) {
        bail!(
            "Cargo.toml declares rust-version {declared}, but this build uses rustc {built}: \
             build with {declared} or update the declaration"
        );
    }
    eprintln!("xtask: rust-version {declared} is the toolchain in use (rustc {built})");
    Ok(())
}

fn test(e2e: bool) -> Result<()> {
    check_msrv()?;
    run(cargo().args(["fmt", "--all", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The fuzz targets are outside the workspace (they build with cargo-fuzz's flags); make
    // sure they still compile against the library.
    run(cargo().args([
        "check",
        "--manifest-path",
        "fuzz/Cargo.toml",
        "--target-dir",
        "target/fuzz-check",
    ]))?;
    // xtask's e2e feature (the boot test and its broker) is outside the workspace build.
    run(cargo().args([
        "clippy",
        "-p",
        "xtask",
        "--all-targets",
        "--features",
        "e2e,bench",
        "--",
        "-D",
        "warnings",
    ]))?;
    deny()?;
    run(cargo().args(["test", "--workspace"]))?;
    run(cargo().args(["test", "-p", "xtask", "--features", "e2e,bench"]))?;
    if e2e {
        // The boots under QEMU (TCG): about 10-12 minutes on a 2-core machine (release build,
        // two dracut images, eight boots of 20-90 s each).
        e2e::e2e(&[])?;
        // The README's first command, as a newcomer runs it.
        demo()?;
        // A short smoke of every fuzz target (longer runs: cargo xtask fuzz SECS).
        fuzz(5)?;
    }
    Ok(())
}

/// The cargo-fuzz targets, each a two-line call into the library: the `[[bin]]` entries of
/// fuzz/Cargo.toml, so a target added there is fuzzed without another list to keep.
fn fuzz_targets() -> Result<Vec<String>> {
    let manifest =
        std::fs::read_to_string(root().join("fuzz/Cargo.toml")).context("read fuzz/Cargo.toml")?;
    let mut targets = Vec::new();
    let mut in_bin = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_bin = line == "[[bin]]";
        } else if let (true, Some(name)) = (in_bin, line.strip_prefix("name = ")) {
            targets.push(name.trim_matches('"').to_owned());
        }
    }
    if targets.is_empty() {
        bail!("no [[bin]] targets in fuzz/Cargo.toml");
    }
    Ok(targets)
}

/// The version `cargo xtask test` installs (without its default features: no git, no
/// certificate store).
const CARGO_DENY: &str = "0.20.2";

/// cargo-deny on the dependency tree (deny.toml): licences, bans (no wildcard versions;
/// duplicate versions reported) and sources (crates.io only). The advisories need the RustSec
/// database from GitHub, which this project's CI machines cannot reach.
fn deny() -> Result<()> {
    let have = Command::new("cargo")
        .args(["deny", "--version"])
        .output()
        .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains(CARGO_DENY))
        .unwrap_or(false);
    if !have {
        run(cargo().args([
            "install",
            "--locked",
            "--no-default-features",
            "--version",
            CARGO_DENY,
            "cargo-deny",
        ]))?;
    }
    run(cargo().args(["deny", "check", "licenses", "bans", "sources"]))
}

fn fuzz(secs: u64) -> Result<()> {
    let have = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !have {
        run(cargo().args(["install", "--locked", "cargo-fuzz"]))?;
    }
    for t in fuzz_targets()? {
        eprintln!("xtask: fuzzing {t} for {secs}s");
        // cargo-fuzz needs nightly flags; the machine has one stable toolchain.
        run(cargo()
            .current_dir(root().join("fuzz"))
            .env("RUSTC_BOOTSTRAP", "1")
            .args(["fuzz", "run", &t, "--", &format!("-max_total_time={secs}")]))?;
    }
    Ok(())
}

/// Kills a child process (and waits for it) when dropped.
struct Guard(Child, &'static str);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        eprintln!("demo: stopped {}", self.1);
    }
}

fn step(msg: &str) {
    eprintln!("\n\x1b[1m==> {msg}\x1b[0m");
}

fn free_port_pair() -> Result<u16> {
    for _ in 0..100 {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        let p = l.local_addr()?.port();
        if p < 65535 && std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            return Ok(p);
        }
    }
    bail!("no free port pair on 127.0.0.1")
}

fn demo() -> Result<()> {
    step("building attest-unlock and the test broker (release)");
    run(cargo().args([
        "build",
        "--release",
        "-p",
        "attest-unlock",
        "-p",
        "test-kbs",
    ]))?;
    let bin = root().join("target/release/attest-unlock");
    let kbs = root().join("target/release/test-kbs");
    let work = tempdir("attest-unlock-demo", Path::new("/tmp"))?;
    let _cleanup = RemoveDir(work.clone());
    // Secrets must land on tmpfs; /dev/shm is one on every Linux system.
    let secrets = tempdir("attest-unlock-demo", Path::new("/dev/shm"))?;
    let _cleanup_secrets = RemoveDir(secrets.clone());

    step("starting a software TPM (swtpm) on 127.0.0.1");
    let port = free_port_pair()?;
    let state = work.join("tpm");
    std::fs::create_dir(&state)?;
    let swtpm = Command::new("swtpm")
        .args(["socket", "--tpm2", "--tpmstate"])
        .arg(format!("dir={}", state.display()))
        .arg("--server")
        .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
        .arg("--ctrl")
        .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
        .args(["--flags", "not-need-init,startup-clear"])
        .spawn()
        .context("cannot start swtpm")?;
    let _swtpm = Guard(swtpm, "swtpm");
    let tcti = format!("swtpm:host=127.0.0.1,port={port}");
    wait_port(port)?;

    step("reading the node's attestation key (attest-unlock ak)");
    let out = Command::new(&bin)
        .args(["ak", "--kernel-cmdline", "/dev/null", "--set"])
        .arg(format!("tpm.tcti={tcti}"))
        .output()?;
    if !out.status.success() {
        bail!(
            "attest-unlock ak failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8(out.stdout)?;
    let ak = text
        .lines()
        .find_map(|l| l.strip_prefix("ak_public: "))
        .context("no ak_public line")?
        .to_owned();
    eprintln!("AK (for the broker's trusted_aks): {ak}");
    std::fs::write(work.join("ak.b64"), &ak)?;

    step("making a LUKS2 image: slot 0 recovery key, slot 1 the broker's key (PBKDF2-1000)");
    let mut raw = [0u8; 24];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut raw)?;
    let key = base64::engine::general_purpose::STANDARD.encode(raw);
    std::fs::write(
        work.join("root.json"),
        format!("{{\"key_type\":\"oct\",\"key\":\"{key}\"}}"),
    )?;
    std::fs::write(work.join("kubelet"), b"demo kubelet bootstrap token\n")?;
    let img = work.join("root.img");
    std::fs::File::create(&img)?.set_len(20 << 20)?;
    let recovery = work.join("recovery.key");
    std::fs::write(&recovery, b"demo recovery key")?;
    let passphrase = work.join("broker.key");
    std::fs::write(&passphrase, key.as_bytes())?;
    let pbkdf = ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"];
    run(Command::new("cryptsetup")
        .args(["luksFormat", "--type", "luks2", "--batch-mode"])
        .args(pbkdf)
        .arg("--key-file")
        .arg(&recovery)
        .arg(&img))?;
    run(Command::new("cryptsetup")
        .args(["luksAddKey", "--batch-mode", "--key-slot", "1"])
        .args(pbkdf)
        .arg("--key-file")
        .arg(&recovery)
        .arg(&img)
        .arg(&passphrase))?;
    std::fs::remove_file(&passphrase)?;

    step("starting the test broker (KBS protocol 0.4.0) on 127.0.0.1");
    let ca = work.join("ca.pem");
    let mut broker = Command::new(&kbs)
        .arg("--trusted-ak")
        .arg(work.join("ak.b64"))
        .arg("--resource")
        .arg(format!(
            "default/demo-node/root={}",
            work.join("root.json").display()
        ))
        .arg("--resource")
        .arg(format!(
            "default/demo-node/kubelet={}",
            work.join("kubelet").display()
        ))
        .arg("--ca-out")
        .arg(&ca)
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start test-kbs")?;
    let stdout = broker.stdout.take().context("no broker stdout")?;
    let _broker = Guard(broker, "test broker");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let url = line
        .trim()
        .rsplit(' ')
        .next()
        .filter(|u| u.starts_with("https://"))
        .with_context(|| format!("unexpected broker output {line:?}"))?
        .to_owned();
    eprintln!("broker: {url}");

    let secret = secrets.join("kubelet/bootstrap-token");
    let config = work.join("config.toml");
    let mut f = std::fs::File::create(&config)?;
    write!(
        f,
        "disk_key = \"default/demo-node/root\"\n\
         [tpm]\ntcti = \"{tcti}\"\n\
         [luks]\ndevice = \"{img}\"\nkeyslot = 1\n\
         [[brokers]]\nurl = \"{url}\"\nca_cert = \"{ca}\"\n\
         [[secrets]]\nresource = \"default/demo-node/kubelet\"\npath = \"{secret}\"\nmode = \"0600\"\n\
         [retry]\nmax_rounds = 3\n\
         [measure]\nlog = \"{measure}\"\n",
        img = img.display(),
        ca = ca.display(),
        secret = secret.display(),
        measure = secrets.join("measurements.log").display(),
    )?;
    eprintln!(
        "config ({}):\n{}",
        config.display(),
        std::fs::read_to_string(&config)?
    );

    step("attest-unlock unlock --verify-only");
    let start = Instant::now();
    let status = Command::new(&bin)
        .args([
            "unlock",
            "--verify-only",
            "--kernel-cmdline",
            "/dev/null",
            "--config",
        ])
        .arg(&config)
        .status()?;
    eprintln!("(wall clock {:.0} ms)", start.elapsed().as_secs_f64() * 1e3);
    if !status.success() {
        bail!("attest-unlock unlock failed");
    }

    step("delivered secret");
    let meta = std::fs::metadata(&secret)?;
    use std::os::unix::fs::PermissionsExt;
    eprintln!(
        "{} (mode {:o}): {}",
        secret.display(),
        meta.permissions().mode() & 0o777,
        std::fs::read_to_string(&secret)?.trim()
    );
    step("done: the broker released the key to this TPM's evidence, and it opens keyslot 1");
    Ok(())
}

fn wait_port(port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    bail!("swtpm did not listen on {port}")
}

struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempdir(prefix: &str, parent: &Path) -> Result<PathBuf> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = parent.join(format!("{prefix}-{}-{nanos}", std::process::id()));
    std::fs::create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    /// Every file in fuzz/fuzz_targets is a [[bin]] of fuzz/Cargo.toml, and so fuzzed.
    #[test]
    fn every_fuzz_target_file_is_fuzzed() {
        let mut listed = super::fuzz_targets().unwrap();
        listed.sort();
        let mut files: Vec<String> = std::fs::read_dir(super::root().join("fuzz/fuzz_targets"))
            .unwrap()
            .filter_map(|e| {
                let name = e.ok()?.file_name().to_string_lossy().into_owned();
                name.strip_suffix(".rs").map(str::to_owned)
            })
            .collect();
        files.sort();
        assert_eq!(listed, files);
    }
}
