//! An OS update that does not brick the node: the boots after the classic ones, from UKIs on
//! an ESP as firmware boots them (OVMF measures the UKI into PCR 4, systemd-stub its sections
//! into PCR 11, the kernel's EFI stub the command line and the initrd into PCR 9).
//!
//! 1. UKI A boots and unlocks (the broker checks only the AK so far). On the booted node,
//!    `attest-unlock reference-values --replace <ESP's BOOTX64.EFI> <the staged next.efi>`
//!    replays the event log, checks it against the TPM and predicts PCRs 4, 9 and 11 for B.
//! 2. The broker is given both values of each (current, predicted), as an operator registers
//!    them before rolling an update; B is made the boot entry; B boots and unlocks: the
//!    prediction is what the TPM holds after the reboot.
//! 3. UKI C, never registered, boots: the broker refuses it, nothing is released, and the
//!    explainer names the PCRs that changed since B's unlock (which B recorded in the LUKS2
//!    header of the one disk the three boots share).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{ensure, Context, Result};
use base64::Engine;
use serde_json::Value;
use test_kbs::Broker;

use super::{
    check_attested, check_stopped, run, secs, step, Boot, Kernel, Vm, PREDICT_BEGIN, PREDICT_END,
    UPDATE_PCRS,
};

/// What an unlock that recorded its PCRs in the LUKS2 header logs.
const RECORDED: &str = "recorded this unlock's PCRs in the LUKS2 header";
/// systemd's UKI stub (Debian's systemd-boot-efi).
const STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";
/// The modules the root needs to read the ESP, loaded by the initramfs (they stay loaded after
/// the switch to the root, which has no modules of its own).
const ESP_MODULES: &str = "rd.modules_load=vfat,nls_cp437,nls_utf8";

/// What the update boots need from the classic part.
pub(super) struct Node<'a> {
    pub work: &'a Path,
    pub kernel: &'a Kernel,
    pub image: &'a Path,
    pub tpm_state: &'a Path,
    pub initrd: &'a Path,
    pub cmdline: &'a str,
    pub kubelet_token: &'a str,
    pub timeout: std::time::Duration,
}

/// A UKI: the stub with the kernel, `initrd` and `cmdline` as sections, made with objcopy.
fn uki(work: &Path, kernel: &Kernel, initrd: &Path, cmdline: &str, name: &str) -> Result<PathBuf> {
    let dir = work.join("uki");
    std::fs::create_dir_all(&dir)?;
    let osrel = dir.join("os-release");
    std::fs::write(&osrel, "ID=attest-unlock-e2e\nNAME=\"attest-unlock e2e\"\n")?;
    let cmd = dir.join(format!("{name}.cmdline"));
    std::fs::write(&cmd, cmdline)?;
    let out = dir.join(format!("{name}.efi"));
    let section = |name: &str, file: &Path, vma: &str| {
        [
            "--add-section".to_owned(),
            format!("{name}={}", file.display()),
            "--change-section-vma".to_owned(),
            format!("{name}={vma}"),
        ]
    };
    run(Command::new("objcopy")
        .args(section(".osrel", &osrel, "0x20000"))
        .args(section(".cmdline", &cmd, "0x30000"))
        .args(section(".linux", &kernel.vmlinuz(), "0x2000000"))
        .args(section(".initrd", initrd, "0x3000000"))
        .arg(STUB)
        .arg(&out))?;
    Ok(out)
}

/// A FAT ESP image holding `boot` as `\EFI\BOOT\BOOTX64.EFI` and `next` staged as
/// `\EFI\Linux\next.efi`.
fn esp(work: &Path, boot: &Path, next: &Path) -> Result<PathBuf> {
    let esp = work.join("esp.img");
    let _ = std::fs::remove_file(&esp);
    run(Command::new("mkfs.vfat")
        .args(["-C", "-F", "32", "-n", "ESP"])
        .arg(&esp)
        .arg("204800"))?;
    run(Command::new("mmd")
        .arg("-i")
        .arg(&esp)
        .args(["::/EFI", "::/EFI/BOOT", "::/EFI/Linux"]))?;
    put(&esp, boot, "::/EFI/BOOT/BOOTX64.EFI")?;
    put(&esp, next, "::/EFI/Linux/next.efi")?;
    Ok(esp)
}

fn put(esp: &Path, file: &Path, to: &str) -> Result<()> {
    run(Command::new("mcopy")
        .arg("-o")
        .arg("-i")
        .arg(esp)
        .arg(file)
        .arg(to))
}

/// The `reference-values` JSON the root's init printed (base64, between the markers).
fn prediction(boot: &Boot) -> Result<Value> {
    let start = boot
        .lines
        .iter()
        .position(|(_, l)| l.contains(PREDICT_BEGIN))
        .context("the root printed no reference values")?;
    let encoded = boot.lines[start..]
        .iter()
        .take_while(|(_, l)| !l.contains(PREDICT_END))
        .map(|(_, l)| l.trim())
        .filter(|l| !l.contains(' '))
        .max_by_key(|l| l.len())
        .unwrap_or_default();
    let json = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .context("the reference values are not base64 (see the serial log)")?;
    serde_json::from_slice(&json).context("the reference values are not JSON")
}

/// PCR index to (current, next), from the prediction.
fn values(v: &Value) -> Result<BTreeMap<u8, (String, String)>> {
    let mut out = BTreeMap::new();
    for p in v["pcrs"].as_array().context("no pcrs")? {
        let pcr = p["pcr"].as_u64().and_then(|i| u8::try_from(i).ok());
        let (Some(pcr), Some(c), Some(n)) = (pcr, p["current"].as_str(), p["next"].as_str()) else {
            anyhow::bail!("a PCR entry without pcr/current/next: {p}");
        };
        out.insert(pcr, (c.to_owned(), n.to_owned()));
    }
    Ok(out)
}

/// The three update boots; the checks fail the e2e.
pub(super) fn update(node: &Node<'_>, broker: &Broker) -> Result<()> {
    step("e2e update: UKIs A, B and C (systemd-stub, this kernel and initramfs, each its own command line) on a FAT ESP");
    let cmdline = |x: &str| format!("{} {ESP_MODULES} e2e.predict e2e.update={x}", node.cmdline);
    let a = uki(node.work, node.kernel, node.initrd, &cmdline("a"), "a")?;
    let b = uki(node.work, node.kernel, node.initrd, &cmdline("b"), "b")?;
    let esp = esp(node.work, &a, &b)?;
    // One disk for the three boots, as a node keeps its disk across updates: each unlock
    // records its PCRs in the LUKS2 header, and C's denial names those that changed since B.
    let image = node.work.join("update-root.img");
    std::fs::copy(node.image, &image)?;
    let vm = Vm {
        work: node.work,
        kernel: node.kernel,
        image: &image,
        persistent: true,
        tpm_state: node.tpm_state,
        ignition_config: None,
        esp: Some(&esp),
        memory_mb: 1024,
        timeout: node.timeout,
    };

    step("e2e update: boot UKI A; on the node, reference-values predicts B");
    let before = broker.released().len();
    let boot = vm.boot("update-a", true, node.initrd, &cmdline("a"))?;
    let released: Vec<String> = broker.released().split_off(before);
    check_attested(&boot, node.kubelet_token, &released).map_err(|e| boot.fail(e, broker))?;
    ensure!(
        boot.has(RECORDED),
        "A's unlock did not record its PCRs in the LUKS2 header ({RECORDED})"
    );
    let predicted = prediction(&boot).map_err(|e| boot.fail(e, broker))?;
    ensure!(
        predicted["tpm"] == "matches the event log",
        "the node's log was not checked against its TPM: {}",
        predicted["tpm"]
    );
    let a_values = values(&predicted)?;
    for (pcr, (current, next)) in &a_values {
        ensure!(
            current != next,
            "PCR {pcr}: B changes the UKI, its command line and so PCRs {UPDATE_PCRS}, but the prediction says unchanged"
        );
    }
    let a_at = boot.marker_at.context("no marker time")?;
    eprintln!(
        "e2e: UKI A unlocked in {}; predicted for B: {}",
        secs(a_at),
        a_values
            .iter()
            .map(|(p, (_, n))| format!("PCR {p} {}", &n[..16]))
            .collect::<Vec<_>>()
            .join(", ")
    );

    step("e2e update: both values registered at the broker; B becomes the boot entry; boot B");
    broker.accept_pcr_values(
        a_values
            .iter()
            .map(|(p, (c, n))| (*p, vec![c.clone(), n.clone()]))
            .collect(),
    )?;
    put(&esp, &b, "::/EFI/BOOT/BOOTX64.EFI")?;
    let before = broker.released().len();
    let boot = vm.boot("update-b", true, node.initrd, &cmdline("b"))?;
    let released: Vec<String> = broker.released().split_off(before);
    check_attested(&boot, node.kubelet_token, &released).map_err(|e| boot.fail(e, broker))?;
    ensure!(
        boot.has(RECORDED),
        "B's unlock did not record its new PCRs in the LUKS2 header ({RECORDED})"
    );
    let b_values = values(&prediction(&boot).map_err(|e| boot.fail(e, broker))?)?;
    for (pcr, (_, next)) in &a_values {
        let now = b_values.get(pcr).map(|(c, _)| c.as_str());
        ensure!(
            now == Some(next.as_str()),
            "PCR {pcr}: predicted {next}, the TPM holds {now:?} after the reboot"
        );
    }
    let b_at = boot.marker_at.context("no marker time")?;
    eprintln!(
        "e2e: UKI B unlocked in {}: the prediction was the TPM's",
        secs(b_at)
    );

    step("e2e update: UKI C, never registered: refused");
    let c_line = format!("{} rd.attest_unlock.retry.max_rounds=1", cmdline("c"));
    let c = uki(node.work, node.kernel, node.initrd, &c_line, "c")?;
    put(&esp, &c, "::/EFI/BOOT/BOOTX64.EFI")?;
    let before = broker.released().len();
    let boot = vm.boot("update-c", true, node.initrd, &c_line)?;
    let released: Vec<String> = broker.released().split_off(before);
    check_stopped(
        &boot,
        "update-c",
        "broker-denied",
        node.kubelet_token,
        &released,
        &broker.log(),
        Some("PCR4 is "),
    )
    .map_err(|e| boot.fail(e, broker))?;
    // The explainer says what changed since B's unlock: C is another UKI with another
    // command line, so PCRs 4, 9 and 11 (and nothing the firmware measures).
    let since = boot
        .lines
        .iter()
        .find(|(_, l)| {
            l.contains("since:") && l.contains("changed since the last successful unlock")
        })
        .map(|(_, l)| l.clone());
    ensure!(
        since
            .as_deref()
            .is_some_and(|l| l.contains("PCRs 4, 9, 11 changed")),
        "C's explainer does not say PCRs 4, 9, 11 changed since B's unlock: {since:?}"
    );
    eprintln!(
        "e2e: update: UKI A {}, UKI B (predicted values) {}, UKI C refused after {}",
        secs(a_at),
        secs(b_at),
        secs(boot.stop_at.unwrap_or(boot.elapsed))
    );
    Ok(())
}
