//! The first boot with the real Ignition (v2.26.0 from `../shared/tools`), then the boots after.
//!
//! One initramfs, as on RHCOS: dracut with upstream's `30ignition` module (its units and
//! generator, unchanged; the `ignition` binary in it), clevis (`clevis luks bind` and what it
//! runs), and our module. The Ignition config is `ignition/trustee-root-kubelet.ign` as shipped,
//! filled in with the test broker's URL and CA (which also serves the AK registration) and
//! with the root's few files, and reaches the guest through QEMU's fw_cfg.
//!
//! 1. `ignition.firstboot` on a blank disk (a GPT with the partition the config names):
//!    Ignition formats LUKS2 with its own key file, opens it, runs `clevis luks bind` with our
//!    pin (which registers the AK, attests and gets the root key), makes the xfs root, writes
//!    the root's files, removes its key file; the root is reached. The header then holds the
//!    pin's keyslot (PBKDF2, 1000 iterations) and its token, nothing else.
//! 2. A normal boot of the same node: our unit opens the root from the token, the kubelet
//!    credentials are under /run with mode 0600.
//! 3. The same disk with another vTPM (a stolen disk): denied, nothing released.
//! 4. A first boot that is denied (the node's uuid reinstalled with another vTPM: the AK
//!    registration refuses it): Ignition stops, the header holds only Ignition's
//!    keyslot (its key file is gone with the initramfs) and no token, and the next boot of
//!    that disk stops at the token with nothing released.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use base64::Engine;
use serde_json::{json, Value};
use test_kbs::{Broker, BrokerConfig};

use super::{
    build_initramfs, capture, check_stopped, check_unlocked, hex, random, root, root_init, run,
    secs, step, Boot, Checks, Flavour, Kernel, Vm, DRACUT_DRIVERS, DRACUT_MODULES, OS_RELEASE,
};

/// The shipped example the first boot runs.
const EXAMPLE: &str = "ignition/trustee-root-kubelet.ign";
/// Where the test broker takes AK registrations.
const REGISTRATION: &str = "/register/ak";
const TOOLS: &str = "ignition-v2.26.0";
/// The blank disk: big enough for xfs (300 MB at least) and the LUKS2 header.
const DISK_MB: u64 = 400;
/// Where sgdisk puts the partition, so the header can be read off the image.
const PART_START_SECTOR: u64 = 2048;
/// LUKS2's default header size (two metadata copies and the keyslot area).
const HEADER_BYTES: u64 = 16 << 20;
/// The guest memory: luksFormat's argon2id takes up to half of it.
const MEMORY_MB: u32 = 1536;

/// What `clevis luks bind` runs in the initramfs besides cryptsetup (RHCOS's clevis dracut
/// modules bring the same).
const CLEVIS: &[&str] = &[
    "bash",
    "clevis",
    "clevis-luks-bind",
    "clevis-luks-common-functions",
    "jose",
    "luksmeta",
    "pwmake",
    "awk",
    "cut",
    "grep",
    "sed",
    "sort",
    "tail",
    "tr",
    "mktemp",
    "basename",
    "cat",
    "rm",
    "mkdir",
];

/// The distribution's `ignition-kargs-helper` (upstream's only says "not supported"). A boot
/// with `-kernel` has no boot loader entry to edit, so this one changes nothing and succeeds
/// only when the running command line already is what the config asks (RHCOS's edits the BLS
/// entry and reboots instead).
const KARGS_HELPER: &str = r#"#!/bin/sh
# attest-unlock e2e: check, never edit (see xtask/src/e2e/boot/firstboot.rs).
read -r cmdline </proc/cmdline
while [ $# -ge 2 ]; do
    case " $cmdline " in *" $2 "*) present=1 ;; *) present= ;; esac
    case "$1" in
        --should-exist) [ -n "$present" ] || { echo "ignition-kargs-helper: $2 missing" >&2; exit 1; } ;;
        --should-not-exist) [ -z "$present" ] || { echo "ignition-kargs-helper: $2 present" >&2; exit 1; } ;;
        *) echo "ignition-kargs-helper: unknown $1" >&2; exit 1 ;;
    esac
    shift 2
done
[ $# -eq 0 ]
"#;

/// Boot times, QEMU start to the root's marker.
pub(super) struct Times {
    pub provision: Duration,
    pub unlock: Duration,
}

/// The resources and the secret the example names.
struct Example {
    config: Value,
    root: String,
    kubelet: String,
    kubelet_path: String,
}

pub(super) fn first_boot(
    work: &Path,
    dist: &Path,
    kernel: &Kernel,
    timeout: Duration,
) -> Result<Times> {
    let work = work.join("firstboot");
    std::fs::create_dir(&work)?;
    let example = Example::read(&root().join(EXAMPLE))?;

    step("e2e first boot: test broker with AK registration, nothing trusted yet");
    let disk_key = base64::engine::general_purpose::STANDARD.encode(random::<24>()?);
    let kubelet_token = format!("e2e-first-boot-kubelet-{}", hex(&random::<8>()?));
    let mut resources = BTreeMap::new();
    resources.insert(
        example.root.clone(),
        format!("{{\"key_type\":\"oct\",\"key\":\"{disk_key}\"}}").into_bytes(),
    );
    resources.insert(example.kubelet.clone(), kubelet_token.clone().into_bytes());
    let broker = Broker::start(BrokerConfig {
        resources,
        registration: Some(REGISTRATION.into()),
        ..BrokerConfig::default()
    })?;
    let guest_url = format!("https://10.0.2.2:{}", broker.port());

    step(&format!(
        "e2e first boot: {EXAMPLE} filled in, checked by ignition-validate v2.26.0"
    ));
    let config = work.join("config.ign");
    let filled = example.fill(&guest_url, &broker.ca_pem())?;
    std::fs::write(&config, serde_json::to_vec_pretty(&filled)?)?;
    let out = Command::new(shared_tool("ignition-validate")?)
        .arg(&config)
        .output()
        .context("run ignition-validate")?;
    ensure!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "ignition-validate v2.26.0 on the filled-in {EXAMPLE}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let initrd = first_boot_initramfs(&work, dist, kernel)?;

    let node = Node {
        work: &work,
        kernel,
        initrd: &initrd,
        config: &config,
        timeout,
    };
    let firstboot = "console=ttyS0 systemd.show_status=1 ignition.firstboot \
                     ignition.platform.id=qemu rd.neednet=1 ip=dhcp root=LABEL=root rw \
                     systemd.journald.forward_to_console=1 \
                     systemd.journald.max_level_console=warning";
    let next = |uuid: &str| {
        format!(
            "console=ttyS0 systemd.show_status=1 ignition.platform.id=qemu \
             rd.luks.name={uuid}=root root=LABEL=root rw rd.neednet=1 ip=dhcp"
        )
    };

    step("e2e first boot: boot 1, Ignition provisions the blank disk (ignition.firstboot)");
    let disk = node.blank_disk("disk.img")?;
    let boot = node.boot("first-1-provision", &disk, "tpm-a", firstboot)?;
    let released = broker.released();
    check_provisioned(&boot, &released, &example, &broker.log())
        .map_err(|e| boot.fail(e, &broker))?;
    let header = read_header(&disk, &work.join("header-1.img"))?;
    check_bound_header(&header)?;
    let uuid = capture(Command::new("cryptsetup").arg("luksUUID").arg(&header))?;
    let provision = boot.marker_at.context("no marker time")?;
    eprintln!(
        "e2e: provisioned in {}: LUKS2 {uuid}, one keyslot (PBKDF2, 1000) + the trustee token",
        secs(provision)
    );

    step("e2e first boot: boot 2, the same node unlocks its root");
    let before = broker.released().len();
    let boot = node.boot("first-2-unlock", &disk, "tpm-a", &next(&uuid))?;
    let released = broker.released().split_off(before);
    check_unlocked(
        &boot,
        "first boot, then unlock",
        (&example.kubelet_path, &kubelet_token),
        &released,
        &[&example.root, &example.kubelet],
    )
    .map_err(|e| boot.fail(e, &broker))?;
    let unlock = boot.marker_at.context("no marker time")?;
    eprintln!("e2e: boot 2 reached the root in {}", secs(unlock));

    step("e2e first boot: boot 3, the disk in a VM with another vTPM (a stolen disk)");
    let before = broker.released().len();
    let stolen = format!("{} rd.attest_unlock.retry.max_rounds=1", next(&uuid));
    let boot = node.boot("first-3-stolen", &disk, "tpm-b", &stolen)?;
    let released = broker.released().split_off(before);
    check_stopped(
        &boot,
        "stolen disk",
        "broker-denied",
        &kubelet_token,
        &released,
        &broker.log(),
        Some("AK not in trusted_aks"),
    )
    .map_err(|e| boot.fail(e, &broker))?;

    denied_first_boot(&node, &broker, firstboot, &next, &kubelet_token)?;
    Ok(Times { provision, unlock })
}

/// The one initramfs of these boots: upstream's 30ignition (the binary in it, the
/// distribution's kargs helper), clevis, our module.
fn first_boot_initramfs(work: &Path, dist: &Path, kernel: &Kernel) -> Result<PathBuf> {
    step("e2e first boot: initramfs with upstream 30ignition, clevis and our module");
    let t = std::time::Instant::now();
    let ignition = shared_tool("ignition")?;
    let initrd = work.join("initrd.img");
    let modules = format!("{DRACUT_MODULES} ignition qemu url-lib");
    let drivers = format!("{DRACUT_DRIVERS} xfs qemu_fw_cfg");
    let prepare = |basedir: &Path| -> Result<()> {
        let module = basedir.join("modules.d/30ignition");
        // The host may carry its distribution's (older) 30ignition: upstream's replaces it.
        if module.exists() {
            std::fs::remove_dir_all(&module)?;
        }
        super::super::copy_tree(&tools_dir().join("dracut/30ignition"), &module)?;
        super::super::copy_file(&ignition, &module.join("ignition"))?;
        std::fs::write(module.join("ignition-kargs-helper.sh"), KARGS_HELPER)?;
        Ok(())
    };
    build_initramfs(
        work,
        dist,
        kernel,
        &initrd,
        &Flavour {
            name: "dracut-ignition",
            modules: &modules,
            drivers: &drivers,
            install: CLEVIS,
            prepare: &prepare,
        },
    )?;
    eprintln!(
        "e2e: {} ({} MB) ({})",
        initrd.display(),
        std::fs::metadata(&initrd)?.len() >> 20,
        secs(t.elapsed())
    );
    Ok(initrd)
}

/// A first boot that is denied leaves no bound disk, and the next boot of that disk stops at
/// the token with nothing released.
fn denied_first_boot(
    node: &Node<'_>,
    broker: &Broker,
    firstboot: &str,
    next: &dyn Fn(&str) -> String,
    kubelet_token: &str,
) -> Result<()> {
    step("e2e first boot: a first boot the broker denies leaves no bound disk");
    // The same node (uuid) reinstalled with another vTPM: the registration refuses the new AK
    // (trust on first use), so the pin gets no key and `clevis luks bind` fails.
    let before = broker.released().len();
    let disk = node.blank_disk("disk-denied.img")?;
    let denied_first = format!("{firstboot} rd.attest_unlock.retry.max_rounds=1");
    let boot = node.boot("first-4-denied", &disk, "tpm-c", &denied_first)?;
    let released = broker.released().split_off(before);
    check_first_boot_denied(&boot, &released, &broker.log()).map_err(|e| boot.fail(e, broker))?;
    let header = read_header(&disk, &node.work.join("header-4.img"))?;
    check_unbound_header(&header)?;
    let uuid = capture(Command::new("cryptsetup").arg("luksUUID").arg(&header))?;
    let boot = node.boot("first-5-after-denied", &disk, "tpm-c", &next(&uuid))?;
    let released = broker.released().split_off(before);
    check_stopped(
        &boot,
        "after a denied first boot",
        "luks",
        kubelet_token,
        &released,
        &broker.log(),
        None,
    )
    .map_err(|e| boot.fail(e, broker))?;
    ensure!(
        boot.has("no clevis trustee token"),
        "after a denied first boot: the agent should say the header has no trustee token"
    );
    Ok(())
}

impl Example {
    fn read(path: &Path) -> Result<Example> {
        let config: Value = serde_json::from_slice(&std::fs::read(path)?)
            .with_context(|| format!("{} is not JSON", path.display()))?;
        let pin = pin_config(&config)?;
        let text = |v: &Value| -> Result<String> {
            v.as_str()
                .map(str::to_owned)
                .with_context(|| format!("{}: pin config lacks {v}", path.display()))
        };
        let secret = &pin["attest-unlock"]["secrets"][0];
        Ok(Example {
            root: text(&pin["path"])?,
            kubelet: text(&secret["resource"])?,
            kubelet_path: text(&secret["path"])?,
            config,
        })
    }

    /// The example with the broker's guest URL and CA in the pin config (servers and AK
    /// registration), and the root's files for Ignition's files stage.
    fn fill(&self, url: &str, ca_pem: &str) -> Result<Value> {
        let mut config = self.config.clone();
        let mut pin = pin_config(&config)?;
        pin["servers"] = json!([{"url": url, "cert": ca_pem}]);
        pin["attestation_key"]["registration"]["url"] = json!(format!("{url}{REGISTRATION}"));
        pin["attestation_key"]["registration"]["cert"] = json!(ca_pem);
        config["storage"]["luks"][0]["clevis"]["custom"]["config"] = json!(pin.to_string());
        let busybox = capture_bytes(Command::new("gzip").args(["-9c", "/bin/busybox"]))?;
        let data = |bytes: &[u8]| {
            json!({"source": format!(
                "data:;base64,{}",
                base64::engine::general_purpose::STANDARD.encode(bytes)
            )})
        };
        let mut busybox_contents = data(&busybox);
        busybox_contents["compression"] = json!("gzip");
        let secret_dir = Path::new(&self.kubelet_path)
            .parent()
            .context("kubelet path has no directory")?
            .to_str()
            .context("kubelet path")?
            .to_owned();
        let init = root_init(&[&secret_dir, "/run/attest-unlock"]);
        // Upstream Ignition relabels what it wrote with the root's SELinux policy (RHCOS
        // ships one); this root's labels nothing.
        let selinux = "SELINUX=disabled\nSELINUXTYPE=e2e\n";
        let file_contexts = "/.*\t<<none>>\n";
        let storage = config["storage"]
            .as_object_mut()
            .context("the example has no storage")?;
        storage.insert(
            "directories".into(),
            json!(["/proc", "/sys", "/dev", "/run", "/tmp"]
                .iter()
                .map(|d| json!({"path": d, "mode": 0o755}))
                .collect::<Vec<_>>()),
        );
        storage.insert(
            "files".into(),
            json!([
                {"path": "/bin/busybox", "mode": 0o755, "contents": busybox_contents},
                {"path": "/sbin/init", "mode": 0o755, "contents": data(init.as_bytes())},
                {"path": "/usr/lib/os-release", "mode": 0o644, "contents": data(OS_RELEASE.as_bytes())},
                {"path": "/etc/selinux/config", "mode": 0o644, "contents": data(selinux.as_bytes())},
                {
                    "path": "/etc/selinux/e2e/contexts/files/file_contexts",
                    "mode": 0o644,
                    "contents": data(file_contexts.as_bytes())
                },
            ]),
        );
        storage.insert(
            "links".into(),
            json!([
                {"path": "/bin/sh", "target": "busybox"},
                {"path": "/etc/os-release", "target": "../usr/lib/os-release"},
            ]),
        );
        Ok(config)
    }
}

/// The pin config (JSON inside a string) of the first LUKS volume.
fn pin_config(config: &Value) -> Result<Value> {
    let text = config["storage"]["luks"][0]["clevis"]["custom"]["config"]
        .as_str()
        .context("storage.luks[0].clevis.custom.config is not a string")?;
    serde_json::from_str(text).context("the pin config is not JSON")
}

/// One node's boots: its disk, its vTPM state (by name), the same initramfs and Ignition
/// config every time.
struct Node<'a> {
    work: &'a Path,
    kernel: &'a Kernel,
    initrd: &'a Path,
    config: &'a Path,
    timeout: Duration,
}

impl Node<'_> {
    /// A sparse disk with one GPT partition labelled `root`, as the config names it.
    fn blank_disk(&self, name: &str) -> Result<PathBuf> {
        let disk = self.work.join(name);
        std::fs::File::create(&disk)?.set_len(DISK_MB << 20)?;
        run(Command::new("sgdisk")
            .arg("--clear")
            .arg(format!("--new=1:{PART_START_SECTOR}:0"))
            .arg("--change-name=1:root")
            .arg(&disk)
            .stdout(std::process::Stdio::null()))?;
        Ok(disk)
    }

    fn boot(&self, name: &str, disk: &Path, tpm: &str, cmdline: &str) -> Result<Boot> {
        let tpm_state = self.work.join(tpm);
        std::fs::create_dir_all(&tpm_state)?;
        let vm = Vm {
            work: self.work,
            kernel: self.kernel,
            image: disk,
            persistent: true,
            tpm_state: &tpm_state,
            esp: None,
            ignition_config: Some(self.config),
            memory_mb: MEMORY_MB,
            timeout: self.timeout,
        };
        vm.boot(name, true, self.initrd, cmdline)
    }
}

fn check_provisioned(
    boot: &Boot,
    released: &[String],
    example: &Example,
    log: &[String],
) -> Result<()> {
    let mut c = Checks::new("first");
    for stage in ["fetch-offline", "kargs", "disks", "mount", "files"] {
        c.expect(
            &format!("Ignition's {stage} stage finished"),
            boot.lines.iter().any(|(_, l)| {
                l.contains("Finished") && l.contains(&format!("Ignition ({stage})."))
            }),
        );
    }
    c.expect("no verdict=failed", !boot.has("verdict=failed"));
    c.expect(
        "the AK registered for the node at the broker",
        log.iter().any(|l| l.contains("registration: AK")),
    );
    c.expect(
        &format!(
            "the broker released only {} (released {released:?})",
            example.root
        ),
        !released.is_empty() && released.iter().all(|r| *r == example.root),
    );
    super::reached_root(&mut c, boot);
    c.done()
}

fn check_first_boot_denied(boot: &Boot, released: &[String], log: &[String]) -> Result<()> {
    let mut c = Checks::new("denied first");
    c.expect(
        "the broker's log: the registration refused",
        log.iter()
            .any(|l| l.contains("registration: refused for node")),
    );
    c.expect(
        "the pin's verdict=failed with class=broker-denied",
        boot.lines
            .iter()
            .any(|(_, l)| l.contains("verdict=failed") && l.contains("class=broker-denied")),
    );
    c.expect(
        "Ignition's disks stage failed, the emergency target",
        boot.stop_at.is_some(),
    );
    c.expect("no root marker", boot.marker_at.is_none());
    c.expect(
        &format!("the broker released nothing (released {released:?})"),
        released.is_empty(),
    );
    c.done()
}

/// The LUKS2 header of the disk's partition, copied out for cryptsetup.
fn read_header(disk: &Path, out: &Path) -> Result<PathBuf> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(disk)?;
    f.seek(SeekFrom::Start(PART_START_SECTOR * 512))?;
    let mut header = Vec::new();
    f.take(HEADER_BYTES).read_to_end(&mut header)?;
    std::fs::write(out, header)?;
    Ok(out.to_path_buf())
}

fn luks_metadata(header: &Path) -> Result<Value> {
    let text = capture(
        Command::new("cryptsetup")
            .args(["luksDump", "--dump-json-metadata"])
            .arg(header),
    )?;
    serde_json::from_str(&text).context("cryptsetup's JSON metadata")
}

/// Exactly one keyslot, PBKDF2 with 1000 iterations (what `clevis luks bind` adds), and one
/// clevis token of the trustee pin naming it: Ignition's own keyslot is gone.
fn check_bound_header(header: &Path) -> Result<()> {
    let meta = luks_metadata(header)?;
    let slots = meta["keyslots"].as_object().context("keyslots")?;
    let tokens = meta["tokens"].as_object().context("tokens")?;
    ensure!(
        slots.len() == 1 && tokens.len() == 1,
        "after the first boot the header should hold one keyslot and one token: {meta:#}"
    );
    let (slot, keyslot) = slots.iter().next().context("a keyslot")?;
    ensure!(
        keyslot["kdf"]["type"] == "pbkdf2" && keyslot["kdf"]["iterations"] == 1000,
        "keyslot {slot} should be PBKDF2 with 1000 iterations: {keyslot:#}"
    );
    let token = tokens.values().next().context("a token")?;
    ensure!(
        token["type"] == "clevis" && token["keyslots"] == json!([slot]),
        "the token should be clevis's, for keyslot {slot}: {token:#}"
    );
    let protected = token["jwe"]["protected"].as_str().unwrap_or_default();
    let header_json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(protected)
        .context("the token's protected header")?;
    let header_json: Value = serde_json::from_slice(&header_json)?;
    ensure!(
        header_json["clevis"]["pin"] == "trustee",
        "the token should name the trustee pin: {header_json}"
    );
    Ok(())
}

/// What a first boot the broker denied leaves: Ignition's keyslot only (its key file died
/// with the initramfs), no token.
fn check_unbound_header(header: &Path) -> Result<()> {
    let meta = luks_metadata(header)?;
    let slots = meta["keyslots"].as_object().context("keyslots")?;
    let tokens = meta["tokens"].as_object().context("tokens")?;
    if slots.len() != 1 || !tokens.is_empty() {
        bail!("a denied first boot should leave one keyslot and no token: {meta:#}");
    }
    let kdf = &slots.values().next().context("a keyslot")?["kdf"]["type"];
    ensure!(
        kdf != "pbkdf2",
        "the one keyslot left should be Ignition's (luksFormat's default KDF), not a pin's: {kdf}"
    );
    Ok(())
}

fn tools_dir() -> PathBuf {
    root().join("../shared/tools").join(TOOLS)
}

/// `../shared/tools/ignition-v2.26.0/<name>.xz` unpacked as `target/ignition-v2.26.0/<name>`,
/// where the tests unpack it too.
fn shared_tool(name: &str) -> Result<PathBuf> {
    test_kbs::shared_tool(TOOLS, name)
}

fn capture_bytes(cmd: &mut Command) -> Result<Vec<u8>> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    ensure!(out.status.success(), "{cmd:?} failed with {}", out.status);
    Ok(out.stdout)
}
