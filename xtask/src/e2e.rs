//! `cargo xtask dist` (the install layout) and `cargo xtask e2e` (the whole boot, for real).
//!
//! The e2e boots a Debian kernel under QEMU (TCG) with a dracut + systemd initramfs that
//! carries our dracut module, a swtpm vTPM and a LUKS2 root bound with the real `clevis luks
//! bind` to our `trustee` pin; the test broker runs in this process on the host's loopback and
//! the guest reaches it as `10.0.2.2`. The kinds of boot:
//!
//! - **attested** (OVMF): the agent attests, the broker releases the disk key and the kubelet
//!   token, the root opens, systemd switches root and the root's init prints the token;
//! - **deny** (SeaBIOS): the broker no longer trusts the AK; the boot stops in the emergency
//!   target with our explainer on the console, and nothing is unlocked or delivered;
//! - **baseline** (OVMF): the same image opened by systemd-cryptsetup with a key file in the
//!   initramfs and `rd.attest_unlock.disable`, for the time-to-root comparison;
//! - **update** (OVMF, UKIs on an ESP; `boot/update.rs`): UKI A unlocks and the node predicts
//!   its PCRs for the staged UKI B; with both values registered B unlocks; an unregistered C
//!   is refused.
//!
//! Then the first boot with upstream Ignition (`boot/firstboot.rs`; `--no-first-boot` skips
//! it, `--first-boot-only` runs only it).
//!
//! The broker (the `test-kbs` library) links tss-esapi, which needs libtss2-dev to build; so
//! that `cargo xtask setup` works on a machine that has nothing yet, the boot part is behind
//! xtask's `e2e` feature and `cargo xtask e2e` re-runs itself with it after setup.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::{cargo, root, run};

/// `cargo xtask dist --destdir D`: build the release binary and lay out what a package or an
/// image build installs: the binary, the clevis pin names, the dracut module and the units.
pub(crate) fn dist(args: &[String]) -> Result<()> {
    let mut destdir = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--destdir" => destdir = Some(PathBuf::from(it.next().context("--destdir DIR")?)),
            other => bail!("dist: unknown argument {other:?} (usage: dist --destdir DIR)"),
        }
    }
    let destdir = destdir.context("usage: cargo xtask dist --destdir DIR")?;
    let destdir = if destdir.is_absolute() {
        destdir
    } else {
        std::env::current_dir()?.join(destdir)
    };
    run(cargo().args(["build", "--release", "-p", "attest-unlock"]))?;
    lay_out(&destdir)?;
    eprintln!("xtask: dist laid out in {}", destdir.display());
    Ok(())
}

/// Copies the release build and the repository's dracut module and units under `destdir`.
fn lay_out(destdir: &Path) -> Result<()> {
    let repo = root();
    let bin = destdir.join("usr/bin");
    std::fs::create_dir_all(&bin)?;
    copy_file(
        &repo.join("target/release/attest-unlock"),
        &bin.join("attest-unlock"),
    )?;
    // The offline tool: on the booted system, never in the initramfs (the dracut module
    // installs only `attest-unlock`).
    copy_file(
        &repo.join("target/release/attest-inspect"),
        &bin.join("attest-inspect"),
    )?;
    for pin in ["clevis-encrypt-trustee", "clevis-decrypt-trustee"] {
        let link = bin.join(pin);
        if link.symlink_metadata().is_ok() {
            std::fs::remove_file(&link)?;
        }
        std::os::unix::fs::symlink("attest-unlock", &link)
            .with_context(|| format!("symlink {}", link.display()))?;
    }
    let module = destdir.join("usr/lib/dracut/modules.d/90attest-unlock");
    if module.exists() {
        std::fs::remove_dir_all(&module)?;
    }
    copy_tree(&repo.join("dracut-module/90attest-unlock"), &module)?;
    let units = destdir.join("usr/lib/systemd/system");
    std::fs::create_dir_all(&units)?;
    let mut any = false;
    for entry in std::fs::read_dir(repo.join("systemd")).context("read systemd/")? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "service") {
            if let Some(name) = path.file_name() {
                copy_file(&path, &units.join(name))?;
                any = true;
            }
        }
    }
    if !any {
        bail!("systemd/ has no .service files");
    }
    // The man page, generated from the code (docs.rs; a test keeps the file current).
    let man = destdir.join("usr/share/man/man1");
    std::fs::create_dir_all(&man)?;
    copy_file(
        &repo.join("docs/attest-unlock.1"),
        &man.join("attest-unlock.1"),
    )?;
    Ok(())
}

/// Copies one file with its permissions, replacing what is there.
fn copy_file(from: &Path, to: &Path) -> Result<()> {
    if to.symlink_metadata().is_ok() {
        std::fs::remove_file(to)?;
    }
    std::fs::copy(from, to)
        .with_context(|| format!("copy {} to {}", from.display(), to.display()))?;
    Ok(())
}

/// Copies a directory of regular files and subdirectories.
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from).with_context(|| format!("read {}", from.display()))? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            copy_file(&entry.path(), &target)?;
        }
    }
    Ok(())
}

/// `cargo xtask e2e [--measure N] [--boot-timeout SECS] [--first-boot-only]`.
pub(crate) fn e2e(args: &[String]) -> Result<()> {
    #[cfg(feature = "e2e")]
    {
        boot::e2e(args)
    }
    #[cfg(not(feature = "e2e"))]
    {
        // This build of xtask has no broker (see the module comment): now that setup has
        // installed libtss2-dev, run the e2e from a build that has.
        crate::step("building xtask with the e2e feature (the test broker links tss-esapi)");
        let status = cargo()
            .args([
                "run",
                "--quiet",
                "-p",
                "xtask",
                "--features",
                "e2e",
                "--",
                "e2e",
            ])
            .args(args)
            .status()
            .context("run cargo")?;
        if !status.success() {
            // It has said why; only its exit code is left to pass on.
            std::process::exit(status.code().unwrap_or(1));
        }
        Ok(())
    }
}

#[cfg(feature = "e2e")]
mod boot {
    mod firstboot;
    mod update;

    use std::collections::BTreeMap;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::os::unix::fs::PermissionsExt;
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    use anyhow::{bail, ensure, Context, Result};
    use base64::Engine;
    use test_kbs::{Broker, BrokerConfig};

    use crate::{cargo, free_port_pair, root, run, step, wait_port};

    const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
    const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
    /// The dracut modules of the initramfs (dracut 059 names), ours last.
    const DRACUT_MODULES: &str = "base systemd systemd-initrd dracut-systemd rootfs-block \
                                  udev-rules fs-lib crypt network systemd-networkd attest-unlock";
    /// vfat and its code pages: the update boots' root reads the ESP with them.
    const DRACUT_DRIVERS: &str =
        "virtio_pci virtio_blk virtio_net dm_crypt ext4 xts vfat nls_cp437 nls_utf8";
    const ROOT_RESOURCE: &str = "default/e2e-node/root";
    const KUBELET_RESOURCE: &str = "default/e2e-node/kubelet";
    const KUBELET_PATH: &str = "/run/attest-unlock-e2e/kubelet-token";
    /// Printed by the root's init, so only a boot that switched root prints it.
    const MARKER: &str = "E2E-ROOT-REACHED";
    const DONE: &str = "E2E-ROOT-DONE";
    /// Around the base64 of `reference-values` run by the root's init on an update boot.
    const PREDICT_BEGIN: &str = "E2E-REFERENCE-VALUES-BEGIN";
    const PREDICT_END: &str = "E2E-REFERENCE-VALUES-END";
    /// The PCRs the update boots predict and the broker checks.
    const UPDATE_PCRS: &str = "4,9,11";
    /// The first line of our explainer (/run/attest-unlock/failure on the console).
    const EXPLAINER: &str = "attest-unlock: boot stopped";
    /// Where the key file sits in the baseline initramfs.
    const KEY_IN_INITRD: &str = "etc/e2e.key";
    /// systemd refuses to switch to a root without os-release.
    const OS_RELEASE: &str = "ID=attest-unlock-e2e\nNAME=\"attest-unlock e2e root\"\n";
    /// Lines of serial log shown with a failure.
    const TAIL: usize = 60;

    struct Options {
        measure: usize,
        /// Only the Ignition first-boot sequence (`--first-boot-only`).
        first_boot_only: bool,
        /// Without the Ignition first-boot sequence (`--no-first-boot`).
        no_first_boot: bool,
        boot_timeout: Duration,
    }

    fn parse(args: &[String]) -> Result<Options> {
        let mut o = Options {
            measure: 1,
            first_boot_only: false,
            no_first_boot: false,
            boot_timeout: Duration::from_secs(240),
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut value = |name: &str| -> Result<u64> {
                it.next()
                    .with_context(|| format!("{name} takes a number"))?
                    .parse()
                    .with_context(|| format!("{name} takes a number"))
            };
            match a.as_str() {
                "--measure" => o.measure = usize::try_from(value("--measure")?)?.max(1),
                "--boot-timeout" => o.boot_timeout = Duration::from_secs(value("--boot-timeout")?),
                "--first-boot-only" => o.first_boot_only = true,
                "--no-first-boot" => o.no_first_boot = true,
                other => bail!(
                    "e2e: unknown argument {other:?} (usage: e2e [--measure N] [--boot-timeout SECS] [--first-boot-only | --no-first-boot])"
                ),
            }
        }
        Ok(o)
    }

    pub(super) fn e2e(args: &[String]) -> Result<()> {
        let opts = parse(args)?;
        let started = Instant::now();
        let repo = root();
        let base = repo.join("target/e2e");
        let cache = base.join("cache");
        let work = base.join("run");
        if work.exists() {
            std::fs::remove_dir_all(&work).with_context(|| format!("remove {}", work.display()))?;
        }
        std::fs::create_dir_all(&work)?;
        std::fs::create_dir_all(&cache)?;
        for tool in [
            "qemu-system-x86_64",
            "swtpm",
            "swtpm_ioctl",
            "dracut",
            "clevis",
            "cryptsetup",
            "mkfs.ext4",
            "depmod",
        ] {
            ensure!(
                which(tool).is_some(),
                "{tool} is not installed (cargo xtask setup)"
            );
        }
        for f in [OVMF_CODE, OVMF_VARS, "/bin/busybox"] {
            ensure!(Path::new(f).exists(), "{f} is missing (cargo xtask setup)");
        }

        step("e2e: building the release binary and the install layout (xtask dist)");
        let t = Instant::now();
        run(cargo().args(["build", "--release", "-p", "attest-unlock"]))?;
        let dist = work.join("dist");
        super::lay_out(&dist)?;
        eprintln!("e2e: dist in {} ({})", dist.display(), secs(t.elapsed()));

        step("e2e: guest kernel (Debian 6.1, cached)");
        let t = Instant::now();
        let kernel = guest_kernel(&cache)?;
        eprintln!(
            "e2e: kernel {} in {} ({})",
            kernel.version,
            kernel.dir.display(),
            secs(t.elapsed())
        );

        let (attested, baseline) = if opts.first_boot_only {
            (Vec::new(), Vec::new())
        } else {
            classic(&work, &dist, &kernel, &opts)?
        };
        let first = if opts.no_first_boot {
            None
        } else {
            Some(firstboot::first_boot(
                &work,
                &dist,
                &kernel,
                opts.boot_timeout,
            )?)
        };

        step("e2e: passed");
        if !opts.first_boot_only {
            eprintln!(
                "time to root marker (QEMU start to {MARKER}, median of {}): attested {} [{}], key file {} [{}]",
                opts.measure,
                secs(median(&mut attested.clone())),
                list(&attested),
                secs(median(&mut baseline.clone())),
                list(&baseline),
            );
        }
        if let Some(first) = first {
            eprintln!(
                "first boot with Ignition (QEMU start to {MARKER}): provisioning {}, the next boot's unlock {}",
                secs(first.provision),
                secs(first.unlock)
            );
        }
        eprintln!("e2e: total {}", secs(started.elapsed()));
        Ok(())
    }

    /// The boots of an image bound on the host: attested (`--measure` times), denied, and the
    /// key-file baseline (`--measure` times). Returns the attested and baseline times.
    fn classic(
        work: &Path,
        dist: &Path,
        kernel: &Kernel,
        opts: &Options,
    ) -> Result<(Vec<Duration>, Vec<Duration>)> {
        let work = work.to_path_buf();
        let repo = root();
        let key_file = work.join("e2e.key");
        write_secret(&key_file, hex(&random::<32>()?).as_bytes())?;
        let disk_key = base64::engine::general_purpose::STANDARD.encode(random::<24>()?);
        let kubelet_token = format!("e2e-kubelet-bootstrap-token-{}", hex(&random::<8>()?));

        step("e2e: swtpm on 127.0.0.1 (the node's TPM state, shared with the boots)");
        let tpm_state = work.join("tpm");
        std::fs::create_dir(&tpm_state)?;
        let port = free_port_pair()?;
        let tcti = format!("swtpm:host=127.0.0.1,port={port}");
        let host_tpm = Swtpm::tcp(&tpm_state, port, &work.join("swtpm-host.log"))?;
        let bin = repo.join("target/release/attest-unlock");
        let out = Command::new(&bin)
            .args(["ak", "--kernel-cmdline", "/dev/null", "--set"])
            .arg(format!("tpm.tcti={tcti}"))
            .output()
            .context("run attest-unlock ak")?;
        ensure!(
            out.status.success(),
            "attest-unlock ak failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ak = String::from_utf8(out.stdout)?
            .lines()
            .find_map(|l| l.strip_prefix("ak_public: "))
            .context("attest-unlock ak printed no ak_public line")?
            .trim()
            .to_owned();
        eprintln!("e2e: AK {}...", ak.get(..40).unwrap_or(&ak));

        step("e2e: test broker on 127.0.0.1 (the guest reaches it as 10.0.2.2)");
        let mut resources = BTreeMap::new();
        resources.insert(
            ROOT_RESOURCE.to_owned(),
            format!("{{\"key_type\":\"oct\",\"key\":\"{disk_key}\"}}").into_bytes(),
        );
        resources.insert(
            KUBELET_RESOURCE.to_owned(),
            kubelet_token.clone().into_bytes(),
        );
        let broker = Broker::start(BrokerConfig {
            trusted_aks: vec![ak.clone()],
            resources,
            ..BrokerConfig::default()
        })?;
        let guest_url = format!("https://10.0.2.2:{}", broker.port());
        eprintln!("e2e: broker {} = {guest_url} in the guest", broker.url());

        step("e2e: LUKS2 root image (ext4 with a busybox init, encrypted in place)");
        let t = Instant::now();
        let image = work.join("root.img");
        make_root_image(&work, &image, &key_file, &bin)?;
        let uuid = capture(Command::new("cryptsetup").arg("luksUUID").arg(&image))?;
        eprintln!("e2e: LUKS UUID {uuid} ({})", secs(t.elapsed()));

        step("e2e: clevis luks bind -d root.img trustee CFG (the real clevis CLI, our pin)");
        let t = Instant::now();
        bind_on_host(&work, &bin, &image, &key_file, &broker, &tcti)?;
        host_tpm.stop();
        let bind_released = broker.released().len();
        ensure!(
            bind_released >= 2 && broker.released().iter().all(|r| r == ROOT_RESOURCE),
            "the broker should have released only {ROOT_RESOURCE} (bind, pass): {:?}",
            broker.released()
        );
        eprintln!(
            "e2e: bound (keyslot 1 + clevis token), host decrypt checked ({})",
            secs(t.elapsed())
        );

        step("e2e: initramfs (dracut with our module, systemd, crypt, networkd)");
        let t = Instant::now();
        let initrd = work.join("initrd.img");
        build_initramfs(&work, dist, kernel, &initrd, &PLAIN)?;
        // The baseline initramfs: the same image with the key file appended as a second cpio
        // archive (the kernel unpacks concatenated archives in order).
        let initrd_key = work.join("initrd-key.img");
        append_key_cpio(&initrd, &initrd_key, &std::fs::read(&key_file)?)?;
        eprintln!(
            "e2e: {} ({} MB) ({})",
            initrd.display(),
            std::fs::metadata(&initrd)?.len() >> 20,
            secs(t.elapsed())
        );

        let common = format!(
            "console=ttyS0 rd.luks.uuid={uuid} root=/dev/mapper/luks-{uuid} systemd.show_status=1"
        );
        let attested_cmdline = format!(
            "{common} rd.neednet=1 ip=dhcp rd.attest_unlock.servers_url_override={guest_url}"
        );
        let vm = Vm {
            work: &work,
            kernel,
            image: &image,
            persistent: false,
            tpm_state: &tpm_state,
            ignition_config: None,
            esp: None,
            memory_mb: 1024,
            timeout: opts.boot_timeout,
        };

        let mut attested_times = Vec::new();
        for i in 1..=opts.measure {
            step(&format!(
                "e2e: boot {i}/{}: attested (OVMF, vTPM, broker trusts the AK)",
                opts.measure
            ));
            let before = broker.released().len();
            let boot = vm.boot(&format!("attested-{i}"), true, &initrd, &attested_cmdline)?;
            let released: Vec<String> = broker.released().split_off(before);
            check_attested(&boot, &kubelet_token, &released).map_err(|e| boot.fail(e, &broker))?;
            let at = boot.marker_at.context("no marker time")?;
            eprintln!(
                "e2e: attested boot reached the root in {} (QEMU exit {})",
                secs(at),
                secs(boot.elapsed)
            );
            attested_times.push(at);
        }

        step("e2e: deny boot (SeaBIOS, the broker no longer trusts the AK)");
        broker.set_trusted_aks(Vec::new())?;
        let before = broker.released().len();
        let deny_cmdline = format!("{attested_cmdline} rd.attest_unlock.retry.max_rounds=1");
        let boot = vm.boot("deny", false, &initrd, &deny_cmdline)?;
        let released: Vec<String> = broker.released().split_off(before);
        check_denied(&boot, &kubelet_token, &released, &broker.log())
            .map_err(|e| boot.fail(e, &broker))?;
        eprintln!(
            "e2e: deny boot stopped in the emergency target with the explainer after {}",
            secs(boot.stop_at.unwrap_or(boot.elapsed))
        );

        let baseline_cmdline =
            format!("{common} rd.luks.key=/{KEY_IN_INITRD} rd.attest_unlock.disable=1");
        let mut baseline_times = Vec::new();
        for i in 1..=opts.measure {
            step(&format!(
                "e2e: boot {i}/{}: baseline (OVMF, key file in the initramfs, rd.attest_unlock.disable)",
                opts.measure
            ));
            let boot = vm.boot(
                &format!("baseline-{i}"),
                true,
                &initrd_key,
                &baseline_cmdline,
            )?;
            check_baseline(&boot).map_err(|e| boot.fail(e, &broker))?;
            let at = boot.marker_at.context("no marker time")?;
            eprintln!("e2e: baseline boot reached the root in {}", secs(at));
            baseline_times.push(at);
        }

        broker.set_trusted_aks(vec![ak])?;
        update::update(
            &update::Node {
                work: &work,
                kernel,
                image: &image,
                tpm_state: &tpm_state,
                initrd: &initrd,
                cmdline: &attested_cmdline,
                kubelet_token: &kubelet_token,
                timeout: opts.boot_timeout,
            },
            &broker,
        )?;
        drop(broker);
        Ok((attested_times, baseline_times))
    }

    /// `clevis luks bind` of the image with our pin on the host (the real clevis CLI, the
    /// pin under its clevis names), then `clevis luks pass` must give a passphrase keyslot 1
    /// accepts.
    fn bind_on_host(
        work: &Path,
        bin: &Path,
        image: &Path,
        key_file: &Path,
        broker: &Broker,
        tcti: &str,
    ) -> Result<()> {
        let pin_dir = work.join("pin");
        std::fs::create_dir(&pin_dir)?;
        for name in ["clevis-encrypt-trustee", "clevis-decrypt-trustee"] {
            std::os::unix::fs::symlink(bin, pin_dir.join(name))?;
        }
        let pin_config = work.join("pin-config.toml");
        std::fs::write(&pin_config, format!("[tpm]\ntcti = \"{tcti}\"\n"))?;
        let cfg = pin_config_json(&broker.url(), &broker.ca_pem());
        std::fs::write(work.join("pin.json"), &cfg)?;
        let path = format!(
            "{}:{}",
            pin_dir.display(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into())
        );
        let with_pin = |c: &mut Command| {
            c.env("PATH", &path)
                .env("ATTEST_UNLOCK_CONFIG", &pin_config);
        };
        let mut bind = Command::new("clevis");
        bind.args(["luks", "bind", "-y", "-k"])
            .arg(key_file)
            .arg("-d")
            .arg(image)
            .args(["trustee", &cfg]);
        with_pin(&mut bind);
        run(&mut bind)?;
        let dump = capture(Command::new("cryptsetup").arg("luksDump").arg(image))?;
        ensure!(
            dump.contains("clevis") && dump.contains("  1: luks2"),
            "after clevis luks bind, the header has no clevis token / keyslot 1:\n{dump}"
        );
        // The pin's decrypt on the host, through clevis, must give a passphrase keyslot 1
        // accepts (cryptsetup --test-passphrase needs no device-mapper).
        let mut pass = Command::new("clevis");
        pass.args(["luks", "pass", "-d"])
            .arg(image)
            .args(["-s", "1"]);
        with_pin(&mut pass);
        let passphrase = pass.output().context("clevis luks pass")?;
        ensure!(
            passphrase.status.success(),
            "clevis luks pass failed: {}",
            String::from_utf8_lossy(&passphrase.stderr)
        );
        let mut test = Command::new("cryptsetup")
            .args([
                "open",
                "--test-passphrase",
                "--key-slot",
                "1",
                "--key-file=-",
            ])
            .arg(image)
            .stdin(Stdio::piped())
            .spawn()?;
        test.stdin
            .take()
            .context("cryptsetup stdin")?
            .write_all(&passphrase.stdout)?;
        ensure!(
            test.wait()?.success(),
            "the passphrase clevis luks pass gave does not open keyslot 1"
        );
        drop(passphrase);
        Ok(())
    }

    /// The pin config JSON of the bind (the token carries it): the host's URL of the broker
    /// (the guest boots with `rd.attest_unlock.servers_url_override`) and the kubelet secret.
    fn pin_config_json(url: &str, ca_pem: &str) -> String {
        serde_json::json!({
            "servers": [{"url": url, "cert": ca_pem}],
            "path": ROOT_RESOURCE,
            "num_retries": 3,
            "attest-unlock": {
                "secrets": [{"resource": KUBELET_RESOURCE, "path": KUBELET_PATH, "mode": "0600"}]
            }
        })
        .to_string()
    }

    // ---------------------------------------------------------------- expectations

    /// The expectations of one boot, each with what it looks for; all are checked, and the
    /// failure lists every one that did not hold.
    struct Checks {
        boot: &'static str,
        failed: Vec<String>,
    }

    impl Checks {
        fn new(boot: &'static str) -> Checks {
            Checks {
                boot,
                failed: Vec::new(),
            }
        }

        fn expect(&mut self, what: &str, ok: bool) {
            if !ok {
                self.failed.push(what.to_owned());
            }
        }

        fn done(self) -> Result<()> {
            if self.failed.is_empty() {
                Ok(())
            } else {
                bail!("{} boot: expected {}", self.boot, self.failed.join("; "))
            }
        }
    }

    fn check_attested(boot: &Boot, token: &str, released: &[String]) -> Result<()> {
        check_unlocked(
            boot,
            "attested",
            (KUBELET_PATH, token),
            released,
            &[ROOT_RESOURCE, KUBELET_RESOURCE],
        )
    }

    /// A boot that unlocked the root with the agent, switched to it and found `secret` (path,
    /// content) delivered with mode 0600, after the broker released each of `resources`.
    fn check_unlocked(
        boot: &Boot,
        name: &'static str,
        (path, secret): (&str, &str),
        released: &[String],
        resources: &[&str],
    ) -> Result<()> {
        let mut c = Checks::new(name);
        c.expect("the agent's verdict=ok line", boot.has("verdict=ok"));
        c.expect("no verdict=failed", !boot.has("verdict=failed"));
        c.expect("Mounted sysroot.mount", boot.has("Mounted sysroot.mount"));
        c.expect(
            "the switch to the real root (initrd-switch-root.service)",
            boot.has("initrd-switch-root.service"),
        );
        reached_root(&mut c, boot);
        c.expect(
            &format!("the secret read from {path} by the root's init"),
            boot.has(&format!("E2E-SECRET {path}: {secret}")),
        );
        c.expect(
            &format!("{path} with mode 0600 (ls -l)"),
            boot.lines
                .iter()
                .any(|(_, l)| l.starts_with("-rw-------") && l.ends_with(path)),
        );
        c.expect(
            &format!("the broker released {resources:?} (released {released:?})"),
            resources.iter().all(|r| released.iter().any(|x| x == r)),
        );
        c.done()
    }

    /// The root's init ran to its end and powered off, and the boot never stopped.
    fn reached_root(c: &mut Checks, boot: &Boot) {
        c.expect(
            &format!("the root's marker {MARKER}"),
            boot.marker_at.is_some(),
        );
        c.expect(&format!("the root's {DONE}"), boot.has(DONE));
        c.expect("no emergency mode", boot.stop_at.is_none());
        c.expect(
            "a clean power-off (QEMU exited by itself)",
            boot.exited && !boot.timed_out,
        );
    }

    fn check_denied(boot: &Boot, token: &str, released: &[String], log: &[String]) -> Result<()> {
        check_stopped(
            boot,
            "deny",
            "broker-denied",
            token,
            released,
            log,
            Some("AK not in trusted_aks"),
        )
    }

    /// A boot that the agent stopped with `class` before the root: verdict, explainer and
    /// emergency target on the console, no root, `secret` nowhere, nothing released, and
    /// `broker_says` (if any) in the broker's log.
    fn check_stopped(
        boot: &Boot,
        name: &'static str,
        class: &str,
        secret: &str,
        released: &[String],
        log: &[String],
        broker_says: Option<&str>,
    ) -> Result<()> {
        let mut c = Checks::new(name);
        c.expect(
            &format!("the agent's verdict=failed with class={class}"),
            boot.lines.iter().any(|(_, l)| {
                l.contains("verdict=failed") && l.contains(&format!("class={class} "))
            }),
        );
        c.expect("no verdict=ok", !boot.has("verdict=ok"));
        c.expect(
            &format!("the explainer ({EXPLAINER}) on the console"),
            boot.has(EXPLAINER),
        );
        c.expect(
            "the emergency target (Reached target emergency.target / Entering emergency mode)",
            boot.has("Reached target emergency.target") || boot.has("Entering emergency mode"),
        );
        c.expect(
            &format!("no root marker {MARKER}"),
            boot.marker_at.is_none(),
        );
        c.expect(
            "no Mounted sysroot.mount",
            !boot.has("Mounted sysroot.mount"),
        );
        c.expect("the secret nowhere on the console", !boot.has(secret));
        c.expect(
            &format!("the broker released nothing (released {released:?})"),
            released.is_empty(),
        );
        if let Some(needle) = broker_says {
            c.expect(
                &format!("the broker's log: {needle}"),
                log.iter().any(|l| l.contains(needle)),
            );
        }
        c.done()
    }

    fn check_baseline(boot: &Boot) -> Result<()> {
        let mut c = Checks::new("baseline");
        c.expect(
            "no verdict line (rd.attest_unlock.disable skips the unit)",
            !boot.has("verdict="),
        );
        c.expect("Mounted sysroot.mount", boot.has("Mounted sysroot.mount"));
        c.expect(
            "no secret under /run/attest-unlock-e2e",
            !boot.has("E2E-SECRET "),
        );
        reached_root(&mut c, boot);
        c.done()
    }

    // ---------------------------------------------------------------- the guest kernel

    struct Kernel {
        version: String,
        dir: PathBuf,
    }

    impl Kernel {
        fn vmlinuz(&self) -> PathBuf {
            self.dir.join(format!("boot/vmlinuz-{}", self.version))
        }
        fn kmoddir(&self) -> PathBuf {
            self.dir.join(format!("lib/modules/{}", self.version))
        }
    }

    /// The newest plain `linux-image-6.1.0-NN-amd64` apt knows, extracted (and depmod'ed) into
    /// the cache; a cached extraction of it is reused.
    fn guest_kernel(cache: &Path) -> Result<Kernel> {
        let mut package = newest_kernel_package()?;
        if package.is_none() {
            eprintln!("e2e: apt knows no linux-image-6.1.0-NN-amd64; apt-get update");
            run(Command::new("apt-get").args(["update", "-q"]))?;
            package = newest_kernel_package()?;
        }
        let package = match package {
            Some(p) => p,
            None => {
                // Offline: any kernel already in the cache will do.
                let cached = std::fs::read_dir(cache)?
                    .filter_map(|e| e.ok())
                    .filter_map(|e| {
                        e.file_name()
                            .to_str()
                            .and_then(|n| n.strip_prefix("kernel-"))
                            .map(|v| format!("linux-image-{v}"))
                    })
                    .max();
                cached.context("no linux-image-6.1.0-NN-amd64 in apt and none cached")?
            }
        };
        let version = package
            .strip_prefix("linux-image-")
            .context("kernel package name")?
            .to_owned();
        let dir = cache.join(format!("kernel-{version}"));
        let kernel = Kernel { version, dir };
        if kernel.vmlinuz().exists() && kernel.kmoddir().join("modules.dep").exists() {
            return Ok(kernel);
        }
        let tmp = cache.join(format!("extract-{}", std::process::id()));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)?;
        }
        std::fs::create_dir(&tmp)?;
        eprintln!("e2e: apt-get download {package}");
        run(Command::new("apt-get")
            .args(["download", "-q", &package])
            .current_dir(&tmp))?;
        let deb = std::fs::read_dir(&tmp)?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
            .context("apt-get download left no .deb")?;
        let root = tmp.join("root");
        run(Command::new("dpkg").arg("-x").arg(&deb).arg(&root))?;
        run(Command::new("depmod")
            .arg("-b")
            .arg(&root)
            .arg(&kernel.version))?;
        if kernel.dir.exists() {
            std::fs::remove_dir_all(&kernel.dir)?;
        }
        std::fs::rename(&root, &kernel.dir)?;
        std::fs::remove_dir_all(&tmp)?;
        Ok(kernel)
    }

    fn newest_kernel_package() -> Result<Option<String>> {
        let out = capture(Command::new("apt-cache").args([
            "search",
            "--names-only",
            r"^linux-image-6\.1\.0-[0-9]+-amd64$",
        ]))?;
        Ok(out
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter_map(|name| {
                let n: u32 = name
                    .strip_prefix("linux-image-6.1.0-")?
                    .strip_suffix("-amd64")?
                    .parse()
                    .ok()?;
                Some((n, name.to_owned()))
            })
            .max()
            .map(|(_, name)| name))
    }

    // ---------------------------------------------------------------- images

    /// A tiny root: busybox and an init that prints the marker and the delivered secrets,
    /// then powers off; ext4, encrypted in place to LUKS2 with the key file in keyslot 0.
    /// The root: busybox, an init that reports what the boot delivered, and the agent with
    /// its libraries (for `reference-values` on the booted node, as an operator runs it
    /// before an update).
    fn make_root_image(work: &Path, image: &Path, key_file: &Path, agent: &Path) -> Result<()> {
        let rootfs = work.join("rootfs");
        for d in [
            "bin", "sbin", "etc", "proc", "sys", "dev", "run", "tmp", "usr/lib", "esp",
        ] {
            std::fs::create_dir_all(rootfs.join(d))?;
        }
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox"))?;
        std::os::unix::fs::symlink("busybox", rootfs.join("bin/sh"))?;
        // systemd refuses to switch to a root without os-release.
        std::fs::write(rootfs.join("usr/lib/os-release"), OS_RELEASE)?;
        std::os::unix::fs::symlink("../usr/lib/os-release", rootfs.join("etc/os-release"))?;
        let init = rootfs.join("sbin/init");
        std::fs::write(&init, root_init(&["/run/attest-unlock-e2e"]))?;
        std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755))?;
        install_with_libraries(&rootfs, agent, "usr/bin/attest-unlock")?;
        std::fs::File::create(image)?.set_len(96 << 20)?;
        run(Command::new("mkfs.ext4")
            .args(["-q", "-L", "e2e-root", "-d"])
            .arg(&rootfs)
            .arg(image)
            .arg("56M"))?;
        run(Command::new("cryptsetup")
            .args([
                "reencrypt",
                "--encrypt",
                "--type",
                "luks2",
                "--reduce-device-size",
                "32M",
                "--pbkdf",
                "pbkdf2",
                "--pbkdf-force-iterations",
                "1000",
                "--batch-mode",
                "--key-file",
            ])
            .arg(key_file)
            .arg(image))?;
        Ok(())
    }

    /// `binary` at `rootfs/to`, with the shared libraries `ldd` names and the TPM device TCTI
    /// the TSS loads at run time, each at its own path.
    fn install_with_libraries(rootfs: &Path, binary: &Path, to: &str) -> Result<()> {
        let dest = rootfs.join(to);
        std::fs::create_dir_all(dest.parent().context("binary destination")?)?;
        std::fs::copy(binary, &dest)?;
        let ldd = capture(Command::new("ldd").arg(binary))?;
        let mut libraries: Vec<PathBuf> = ldd
            .lines()
            .filter_map(|l| {
                l.split_whitespace()
                    .find(|w| w.starts_with('/'))
                    .map(PathBuf::from)
            })
            .collect();
        libraries.push(PathBuf::from(
            "/usr/lib/x86_64-linux-gnu/libtss2-tcti-device.so.0",
        ));
        for lib in libraries {
            let rel = lib.strip_prefix("/").context("library path")?;
            let out = rootfs.join(rel);
            std::fs::create_dir_all(out.parent().context("library directory")?)?;
            // The file the link points at, under the link's name.
            std::fs::copy(std::fs::canonicalize(&lib)?, &out)
                .with_context(|| format!("copy {}", lib.display()))?;
        }
        Ok(())
    }

    /// What an initramfs carries beyond dracut's base.
    struct Flavour<'a> {
        /// Names its dracut directories and log under the work directory.
        name: &'a str,
        modules: &'a str,
        drivers: &'a str,
        /// More binaries (`dracut --install`).
        install: &'a [&'a str],
        /// Changes to the copy of the dracut tree (modules.d) before dracut runs.
        prepare: &'a dyn Fn(&Path) -> Result<()>,
    }

    /// The initramfs of the e2e boots: systemd, crypt, networkd and our module.
    const PLAIN: Flavour<'static> = Flavour {
        name: "dracut",
        modules: DRACUT_MODULES,
        drivers: DRACUT_DRIVERS,
        install: &[],
        prepare: &|_| Ok(()),
    };

    /// The real root's init (busybox sh): the marker, then every file under `secret_dirs` with
    /// its content and `ls -l`, then power off.
    fn root_init(secret_dirs: &[&str]) -> String {
        let globs: Vec<String> = secret_dirs.iter().map(|d| format!("{d}/*")).collect();
        format!(
            "#!/bin/busybox sh\n\
             # attest-unlock e2e: the real root's init.\n\
             exec >/dev/console 2>&1\n\
             B=/bin/busybox\n\
             echo {MARKER}\n\
             for f in {}; do\n\
             \x20 [ -f \"$f\" ] || continue\n\
             \x20 echo \"E2E-SECRET $f: $($B cat \"$f\")\"\n\
             \x20 $B ls -l \"$f\"\n\
             done\n\
             if $B grep -qw e2e.predict /proc/cmdline; then\n\
             \x20 $B mount -t vfat -o ro,iocharset=utf8,codepage=437 /dev/vdb /esp\n\
             \x20 echo {PREDICT_BEGIN}\n\
             \x20 /usr/bin/attest-unlock reference-values --kernel-cmdline /dev/null --pcrs {UPDATE_PCRS} \\\n\
             \x20   --set tpm.tcti=device:/dev/tpmrm0 --replace /esp/EFI/BOOT/BOOTX64.EFI /esp/EFI/Linux/next.efi \\\n\
             \x20   | $B base64 -w 0\n\
             \x20 echo\n\
             \x20 echo {PREDICT_END}\n\
             fi\n\
             echo {DONE}\n\
             $B sync\n\
             $B poweroff -f\n",
            globs.join(" ")
        )
    }

    /// dracut from a copy of /usr/lib/dracut with our module (from the dist layout) added;
    /// nothing of the host's configuration.
    fn build_initramfs(
        work: &Path,
        dist: &Path,
        kernel: &Kernel,
        out: &Path,
        flavour: &Flavour<'_>,
    ) -> Result<()> {
        let basedir = work.join(flavour.name);
        run(Command::new("cp")
            .args(["-a", "/usr/lib/dracut"])
            .arg(&basedir))?;
        super::copy_tree(
            &dist.join("usr/lib/dracut/modules.d/90attest-unlock"),
            &basedir.join("modules.d/90attest-unlock"),
        )?;
        (flavour.prepare)(&basedir)?;
        let confdir = work.join(format!("{}.conf.d", flavour.name));
        let tmpdir = work.join(format!("{}-tmp", flavour.name));
        std::fs::create_dir_all(&confdir)?;
        std::fs::create_dir_all(&tmpdir)?;
        let log = work.join(format!("{}.log", flavour.name));
        let mut dracut = Command::new("dracut");
        dracut
            .env("dracutbasedir", &basedir)
            .env("ATTEST_UNLOCK_BINDIR", root().join("target/release"))
            .env("ATTEST_UNLOCK_UNITDIR", dist.join("usr/lib/systemd/system"))
            .args(["--force", "--no-hostonly", "--no-early-microcode"])
            .args(["--conf", "/dev/null", "--confdir"])
            .arg(&confdir)
            .arg("--tmpdir")
            .arg(&tmpdir)
            .args(["--kver", &kernel.version, "--kmoddir"])
            .arg(kernel.kmoddir())
            .args([
                "--modules",
                flavour.modules,
                "--add-drivers",
                flavour.drivers,
            ]);
        if !flavour.install.is_empty() {
            dracut.arg("--install").arg(flavour.install.join(" "));
        }
        let status = dracut
            .arg(out)
            .stdout(std::fs::File::create(&log)?)
            .stderr(std::fs::File::options().append(true).open(&log)?)
            .status()
            .context("run dracut")?;
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if !status.success() {
            bail!("dracut failed ({status}):\n{}", tail(&text, TAIL));
        }
        for module in flavour.modules.split_whitespace() {
            ensure!(
                text.contains(&format!("Including module: {module} ")),
                "dracut did not include the {module} module:\n{}",
                tail(&text, TAIL)
            );
        }
        Ok(())
    }

    /// `initrd` followed by an uncompressed newc cpio holding the key file at
    /// /`KEY_IN_INITRD`; the kernel unpacks it after the dracut image.
    fn append_key_cpio(initrd: &Path, out: &Path, key: &[u8]) -> Result<()> {
        let mut bytes = std::fs::read(initrd)?;
        // An appended archive must start 4-byte aligned; the kernel skips zero padding.
        bytes.resize(bytes.len().div_ceil(4) * 4, 0);
        cpio_entry(&mut bytes, 1, KEY_IN_INITRD, 0o100_400, key);
        cpio_entry(&mut bytes, 2, "TRAILER!!!", 0, &[]);
        bytes.resize(bytes.len().div_ceil(512) * 512, 0);
        std::fs::write(out, bytes)?;
        Ok(())
    }

    fn cpio_entry(out: &mut Vec<u8>, ino: u32, name: &str, mode: u32, data: &[u8]) {
        let pad4 = |v: &mut Vec<u8>| v.resize(v.len().div_ceil(4) * 4, 0);
        let fields = [
            ino,
            mode,
            0,
            0,
            1,
            0,
            u32::try_from(data.len()).unwrap_or(0),
            0,
            0,
            0,
            0,
            u32::try_from(name.len() + 1).unwrap_or(0),
            0,
        ];
        out.extend_from_slice(b"070701");
        for f in fields {
            out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        pad4(out);
        out.extend_from_slice(data);
        pad4(out);
    }

    // ---------------------------------------------------------------- processes

    /// A swtpm on the node's TPM state; stopped (state saved) on drop.
    struct Swtpm {
        child: Option<Child>,
        ctrl: Vec<String>,
        name: &'static str,
    }

    impl Swtpm {
        /// For the host side (the pin, `attest-unlock ak`): TCP, started up.
        fn tcp(state: &Path, port: u16, log: &Path) -> Result<Swtpm> {
            let child = Command::new("swtpm")
                .args(["socket", "--tpm2", "--tpmstate"])
                .arg(format!("dir={}", state.display()))
                .arg("--server")
                .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
                .arg("--ctrl")
                .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
                .args(["--flags", "startup-clear", "--log"])
                .arg(format!("file={},level=1", log.display()))
                .spawn()
                .context("start swtpm")?;
            let tpm = Swtpm {
                child: Some(child),
                ctrl: vec!["--tcp".into(), format!("127.0.0.1:{}", port + 1)],
                name: "swtpm (host)",
            };
            wait_port(port)?;
            Ok(tpm)
        }

        /// For QEMU: the control channel on a unix socket, no startup (the firmware does it).
        fn unix(state: &Path, sock: &Path, log: &Path) -> Result<Swtpm> {
            let child = Command::new("swtpm")
                .args(["socket", "--tpm2", "--tpmstate"])
                .arg(format!("dir={}", state.display()))
                .arg("--ctrl")
                .arg(format!("type=unixio,path={}", sock.display()))
                .arg("--log")
                .arg(format!("file={},level=1", log.display()))
                .spawn()
                .context("start swtpm")?;
            let tpm = Swtpm {
                child: Some(child),
                ctrl: vec!["--unix".into(), sock.display().to_string()],
                name: "swtpm (guest)",
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            while !sock.exists() {
                ensure!(
                    Instant::now() < deadline,
                    "swtpm made no {}",
                    sock.display()
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(tpm)
        }

        fn stop(mut self) {
            self.shutdown();
        }

        /// Asks swtpm to shut down (it saves its state), then makes sure it is gone.
        fn shutdown(&mut self) {
            let Some(mut child) = self.child.take() else {
                return;
            };
            if let Ok(mut ioctl) = Command::new("swtpm_ioctl")
                .args(&self.ctrl)
                .arg("-s")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
            {
                let _ = wait_deadline(&mut ioctl, Duration::from_secs(5));
            }
            if !matches!(
                wait_deadline(&mut child, Duration::from_secs(5)),
                Some(true)
            ) {
                let _ = child.kill();
                let _ = child.wait();
            }
            eprintln!("e2e: stopped {}", self.name);
        }
    }

    impl Drop for Swtpm {
        fn drop(&mut self) {
            self.shutdown();
        }
    }

    /// Waits up to `limit`; `Some(true)` if the process exited, else kills it.
    fn wait_deadline(child: &mut Child, limit: Duration) -> Option<bool> {
        let deadline = Instant::now() + limit;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return Some(true),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Some(false);
                }
                Err(_) => return None,
            }
        }
    }

    /// QEMU, killed on drop.
    struct Qemu(Child);

    impl Drop for Qemu {
        fn drop(&mut self) {
            if matches!(self.0.try_wait(), Ok(None)) {
                let _ = self.0.kill();
                eprintln!("e2e: stopped QEMU");
            }
            let _ = self.0.wait();
        }
    }

    struct Vm<'a> {
        work: &'a Path,
        kernel: &'a Kernel,
        image: &'a Path,
        /// Boot `image` itself, so what the boot writes stays for the next boot; otherwise
        /// each boot gets a fresh copy.
        persistent: bool,
        tpm_state: &'a Path,
        /// An Ignition config for QEMU's fw_cfg entry `opt/com.coreos/config`.
        ignition_config: Option<&'a Path>,
        /// Boot what this ESP image (a FAT file system) holds at `\EFI\BOOT\BOOTX64.EFI`, as
        /// firmware does, instead of QEMU's direct kernel boot (whose kernel OVMF measures with
        /// QEMU's patched setup header, not the file's bytes).
        esp: Option<&'a Path>,
        memory_mb: u32,
        timeout: Duration,
    }

    /// What one boot printed, with the time since QEMU started for every line.
    struct Boot {
        name: String,
        log: PathBuf,
        lines: Vec<(Duration, String)>,
        marker_at: Option<Duration>,
        /// When the console first showed the emergency target or our explainer.
        stop_at: Option<Duration>,
        elapsed: Duration,
        exited: bool,
        timed_out: bool,
    }

    impl Boot {
        fn has(&self, needle: &str) -> bool {
            self.lines.iter().any(|(_, l)| l.contains(needle))
        }

        /// The failure with the end of the serial log and the broker's decisions.
        fn fail(&self, e: anyhow::Error, broker: &Broker) -> anyhow::Error {
            let start = self.lines.len().saturating_sub(TAIL);
            let tail: Vec<&str> = self.lines[start..]
                .iter()
                .map(|(_, l)| l.as_str())
                .collect();
            anyhow::anyhow!(
                "{e:#}\n\n--- last {} lines of the {} serial log ({}){} ---\n{}\n--- broker log ---\n{}",
                tail.len(),
                self.name,
                self.log.display(),
                if self.timed_out { ", timed out" } else { "" },
                tail.join("\n"),
                broker.log().join("\n")
            )
        }
    }

    /// A console line that means the boot stopped in the emergency target.
    fn is_stop_line(line: &str) -> bool {
        line.contains(EXPLAINER)
            || line.contains("Entering emergency mode")
            || line.contains("Reached target emergency.target")
            || line.contains("Press Enter for maintenance")
    }

    impl Vm<'_> {
        /// One boot: a fresh copy of the root image, a swtpm on the node's state, QEMU with
        /// the serial console on a pipe. Ends when QEMU exits (the root powers off), a few
        /// seconds after the console shows the emergency target, or at the timeout.
        fn boot(&self, name: &str, ovmf: bool, initrd: &Path, cmdline: &str) -> Result<Boot> {
            let dir = self.work.join(name);
            std::fs::create_dir(&dir)?;
            let disk = if self.persistent {
                self.image.to_path_buf()
            } else {
                let copy = dir.join("root.img");
                std::fs::copy(self.image, &copy)?;
                copy
            };
            let sock = dir.join("swtpm.sock");
            let tpm = Swtpm::unix(self.tpm_state, &sock, &dir.join("swtpm.log"))?;
            let log_path = dir.join("serial.log");
            let mut log = std::fs::File::create(&log_path)?;

            let mut qemu = Command::new("qemu-system-x86_64");
            qemu.args([
                "-accel",
                "tcg,thread=multi",
                "-cpu",
                "max",
                "-machine",
                "q35",
            ])
            .args(["-smp", "2", "-m", &self.memory_mb.to_string()])
            .args(["-display", "none", "-no-reboot"])
            .args(["-serial", "stdio", "-monitor", "none"]);
            if ovmf {
                let vars = dir.join("OVMF_VARS.fd");
                std::fs::copy(OVMF_VARS, &vars)?;
                qemu.arg("-drive")
                    .arg(format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}"))
                    .arg("-drive")
                    .arg(format!("if=pflash,format=raw,file={}", vars.display()));
            }
            if self.esp.is_none() {
                qemu.arg("-kernel")
                    .arg(self.kernel.vmlinuz())
                    .arg("-initrd")
                    .arg(initrd)
                    .arg("-append")
                    .arg(cmdline);
            }
            qemu.arg("-drive")
                .arg(format!("file={},if=none,id=d0,format=raw", disk.display()))
                .args(["-device", "virtio-blk-pci,drive=d0"]);
            if let Some(esp) = self.esp {
                // The second virtio disk: /dev/vdb in the guest.
                qemu.arg("-drive")
                    .arg(format!("file={},if=none,id=e0,format=raw", esp.display()))
                    .args(["-device", "virtio-blk-pci,drive=e0,bootindex=0"]);
            }
            qemu.args([
                "-netdev",
                "user,id=n0",
                "-device",
                "virtio-net-pci,netdev=n0",
            ])
            .arg("-chardev")
            .arg(format!("socket,id=chrtpm,path={}", sock.display()))
            .args(["-tpmdev", "emulator,id=tpm0,chardev=chrtpm"])
            .args(["-device", "tpm-tis,tpmdev=tpm0"]);
            if let Some(config) = self.ignition_config {
                qemu.arg("-fw_cfg").arg(format!(
                    "name=opt/com.coreos/config,file={}",
                    config.display()
                ));
            }
            qemu.stdin(Stdio::null()).stdout(Stdio::piped());
            writeln!(log, "# {qemu:?}")?;
            eprintln!("e2e: {name}: kernel command line: {cmdline}");
            eprintln!("e2e: {name}: serial log {}", log_path.display());

            let start = Instant::now();
            let mut child = Qemu(qemu.spawn().context("start qemu-system-x86_64")?);
            let stdout = child.0.stdout.take().context("qemu stdout")?;
            let (tx, rx) = mpsc::channel::<(Duration, String)>();
            let reader = std::thread::spawn(move || {
                let mut reader = BufReader::new(stdout);
                let mut raw = Vec::new();
                loop {
                    raw.clear();
                    match reader.read_until(b'\n', &mut raw) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            let _ = log.write_all(&raw);
                            let line = clean(&String::from_utf8_lossy(&raw));
                            if tx.send((start.elapsed(), line)).is_err() {
                                break;
                            }
                        }
                    }
                }
            });

            let mut boot = Boot {
                name: name.to_owned(),
                log: log_path,
                lines: Vec::new(),
                marker_at: None,
                stop_at: None,
                elapsed: Duration::ZERO,
                exited: false,
                timed_out: false,
            };
            let deadline = start + self.timeout;
            let mut grace: Option<Instant> = None;
            loop {
                let now = Instant::now();
                let until = grace.map_or(deadline, |g| g.min(deadline));
                if now >= until {
                    boot.timed_out = grace.is_none() || now >= deadline;
                    break;
                }
                match rx.recv_timeout(until - now) {
                    Ok((at, line)) => {
                        if line.contains(MARKER) && boot.marker_at.is_none() {
                            boot.marker_at = Some(at);
                            eprintln!("e2e: {name}: {MARKER} at {}", secs(at));
                        }
                        if line.contains("verdict=") {
                            eprintln!("e2e: {name}: {}", line.trim());
                        }
                        if is_stop_line(&line) {
                            if boot.stop_at.is_none() {
                                boot.stop_at = Some(at);
                                eprintln!(
                                    "e2e: {name}: boot stopped at {}: {}",
                                    secs(at),
                                    line.trim()
                                );
                            }
                            // Let the explainer and the emergency banner finish (each such
                            // line extends the wait); nobody will type at the shell.
                            grace = Some(Instant::now() + Duration::from_secs(5));
                        }
                        boot.lines.push((at, line));
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        boot.exited = true;
                        break;
                    }
                }
            }
            boot.elapsed = start.elapsed();
            if boot.exited {
                // The console closed: QEMU is exiting; give it a moment to do so by itself.
                boot.exited = matches!(
                    wait_deadline(&mut child.0, Duration::from_secs(10)),
                    Some(true)
                );
            }
            drop(child);
            let _ = reader.join();
            drop(tpm);
            if boot.timed_out {
                eprintln!("e2e: {name}: timed out after {}", secs(self.timeout));
            }
            Ok(boot)
        }
    }

    /// A console line without ANSI escape sequences and carriage returns.
    fn clean(raw: &str) -> String {
        let mut out = String::with_capacity(raw.len());
        let mut chars = raw.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\u{1b}' => {
                    if chars.peek() == Some(&'[') {
                        chars.next();
                        // Parameters and intermediates, then one final byte in @..~.
                        for c in chars.by_ref() {
                            if ('@'..='~').contains(&c) {
                                break;
                            }
                        }
                    } else {
                        chars.next();
                    }
                }
                '\r' | '\n' => {}
                c => out.push(c),
            }
        }
        out
    }

    // ---------------------------------------------------------------- small helpers

    fn which(tool: &str) -> Option<PathBuf> {
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path)
            .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
            .map(|d| d.join(tool))
            .find(|p| p.is_file())
    }

    fn capture(cmd: &mut Command) -> Result<String> {
        let out = cmd
            .stderr(Stdio::inherit())
            .output()
            .with_context(|| format!("cannot run {cmd:?}"))?;
        ensure!(out.status.success(), "{cmd:?} failed with {}", out.status);
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    fn random<const N: usize>() -> Result<[u8; N]> {
        let mut b = [0u8; N];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
        Ok(b)
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Writes a file that only its owner may read.
    fn write_secret(path: &Path, bytes: &[u8]) -> Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::File::options()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        f.write_all(bytes)?;
        Ok(())
    }

    fn tail(text: &str, n: usize) -> String {
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    fn secs(d: Duration) -> String {
        format!("{:.1}s", d.as_secs_f64())
    }

    fn list(ds: &[Duration]) -> String {
        ds.iter().map(|d| secs(*d)).collect::<Vec<_>>().join(", ")
    }

    fn median(ds: &mut [Duration]) -> Duration {
        ds.sort();
        ds.get(ds.len() / 2).copied().unwrap_or_default()
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn clean_strips_systemd_colours() {
            let raw = "[\u{1b}[0;32m  OK  \u{1b}[0m] Mounted \u{1b}[0;1;39msysroot.mount\u{1b}[0m - /sysroot.\r\n";
            assert_eq!(clean(raw), "[  OK  ] Mounted sysroot.mount - /sysroot.");
        }

        #[test]
        fn cpio_entry_is_newc() {
            let mut v = Vec::new();
            cpio_entry(&mut v, 1, "etc/k", 0o100_400, b"abc");
            assert!(v.starts_with(b"070701"));
            assert_eq!(v.len() % 4, 0);
            // header 110 + name 6 = 116 (aligned), data 3 -> 4.
            assert_eq!(v.len(), 120);
        }

        #[test]
        fn pin_config_carries_the_pem_and_the_secret() {
            let cfg = pin_config_json("https://127.0.0.1:1", "-----BEGIN-----\nAB\n");
            let v: serde_json::Value = serde_json::from_str(&cfg).unwrap();
            assert_eq!(v["servers"][0]["cert"], "-----BEGIN-----\nAB\n");
            assert_eq!(v["path"], ROOT_RESOURCE);
            assert_eq!(v["attest-unlock"]["secrets"][0]["path"], KUBELET_PATH);
        }
    }
}
