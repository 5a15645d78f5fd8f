//! `attest-unlock reference-values`: the PCR values of this boot and of the next one after an
//! update, checked against real parts. The images' Authenticode digests in the logs are
//! computed by `osslsigncode` and the files' digests by Python's hashlib, the registers are
//! extended and read by a real swtpm through tpm2-tools: the only code of ours under test is
//! the command itself.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::trustee::Trustee;
use common::{
    agent_bin, collect, pcr_by_tpm2_tools, run_ok, run_with_stdin, unlock_with, Run, Swtpm, World,
};

const EV_SEPARATOR: u32 = 0x4;
const EV_EVENT_TAG: u32 = 0x6;
const EV_EFI_BOOT_SERVICES_APPLICATION: u32 = 0x8000_0003;
const EV_EFI_ACTION: u32 = 0x8000_0007;

/// A PE32+ EFI application: three sections listed out of file order (one without raw data),
/// and `tail` bytes after the last section, so every rule of the Authenticode ranges is used.
fn pe_image(fill: u8, tail: usize) -> Vec<u8> {
    let mut f = vec![0u8; 0x800];
    f[0..2].copy_from_slice(b"MZ");
    f[0x3C..0x40].copy_from_slice(&0x80u32.to_le_bytes());
    let pe = 0x80;
    f[pe..pe + 4].copy_from_slice(b"PE\0\0");
    let coff = pe + 4;
    f[coff..coff + 2].copy_from_slice(&0x8664u16.to_le_bytes());
    f[coff + 2..coff + 4].copy_from_slice(&3u16.to_le_bytes());
    f[coff + 16..coff + 18].copy_from_slice(&240u16.to_le_bytes());
    f[coff + 18..coff + 20].copy_from_slice(&0x0022u16.to_le_bytes());
    let opt = coff + 20;
    let put32 =
        |f: &mut Vec<u8>, at: usize, v: u32| f[at..at + 4].copy_from_slice(&v.to_le_bytes());
    f[opt..opt + 2].copy_from_slice(&0x20bu16.to_le_bytes());
    put32(&mut f, opt + 4, 0x200); // SizeOfCode
    put32(&mut f, opt + 16, 0x1000); // AddressOfEntryPoint
    put32(&mut f, opt + 20, 0x1000); // BaseOfCode
    f[opt + 24..opt + 32].copy_from_slice(&0x1_4000_0000u64.to_le_bytes());
    put32(&mut f, opt + 32, 0x1000); // SectionAlignment
    put32(&mut f, opt + 36, 0x200); // FileAlignment
    put32(&mut f, opt + 56, 0x4000); // SizeOfImage
    put32(&mut f, opt + 60, 0x400); // SizeOfHeaders
    f[opt + 68..opt + 70].copy_from_slice(&10u16.to_le_bytes()); // EFI application
    put32(&mut f, opt + 108, 16); // NumberOfRvaAndSizes
    let table = opt + 240;
    let sections: [(&[u8], u32, u32, u32, u32); 3] = [
        (b".text\0\0\0", 0x200, 0x1000, 0x200, 0x600),
        (b".data\0\0\0", 0x200, 0x2000, 0x200, 0x400),
        (b".bss\0\0\0\0", 0x100, 0x3000, 0, 0),
    ];
    for (i, (name, vsize, va, raw, ptr)) in sections.iter().enumerate() {
        let s = table + 40 * i;
        f[s..s + 8].copy_from_slice(name);
        put32(&mut f, s + 8, *vsize);
        put32(&mut f, s + 12, *va);
        put32(&mut f, s + 16, *raw);
        put32(&mut f, s + 20, *ptr);
    }
    for (i, b) in f[0x400..0x800].iter_mut().enumerate() {
        *b = fill ^ (i as u8);
    }
    f.extend(std::iter::repeat_n(fill.wrapping_add(1), tail));
    f
}

/// The Authenticode SHA-256 of `image` as osslsigncode computes it: signed with a throwaway
/// certificate, then `verify` prints the calculated digest.
fn osslsigncode_digest(dir: &Path, image: &[u8]) -> String {
    let key = dir.join("sign.key");
    let cert = dir.join("sign.crt");
    if !key.exists() {
        run_ok(
            Command::new("openssl")
                .args([
                    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                ])
                .args(["-subj", "/CN=attest-unlock test signer", "-keyout"])
                .arg(&key)
                .arg("-out")
                .arg(&cert),
        );
    }
    let unsigned = dir.join("image.efi");
    let signed = dir.join("image.signed.efi");
    std::fs::write(&unsigned, image).unwrap();
    let _ = std::fs::remove_file(&signed);
    run_ok(
        Command::new("osslsigncode")
            .args(["sign", "-h", "sha256", "-certs"])
            .arg(&cert)
            .arg("-key")
            .arg(&key)
            .arg("-in")
            .arg(&unsigned)
            .arg("-out")
            .arg(&signed),
    );
    let out = Command::new("osslsigncode")
        .args(["verify", "-CAfile"])
        .arg(&cert)
        .arg("-in")
        .arg(&signed)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("Calculated message digest : "))
        .map(|d| d.trim().to_lowercase())
        .unwrap_or_else(|| panic!("no digest from osslsigncode:\n{text}"))
}

fn sha256_by_hashlib(data: &[u8]) -> String {
    let run = run_with_stdin(
        Command::new("python3")
            .arg("-c")
            .arg("import hashlib,sys;print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())"),
        data,
    );
    assert!(run.status.success(), "{}", run.stderr);
    run.stdout.trim().to_owned()
}

/// A crypto-agile TCG event log with one SHA-256 bank.
struct Log(Vec<u8>);

impl Log {
    fn new() -> Log {
        let mut spec = b"Spec ID Event03\0".to_vec();
        spec.extend(0u32.to_le_bytes()); // platform class
        spec.extend([0, 2, 0, 2]); // version 2.0, errata 0, uintn size 2
        spec.extend(1u32.to_le_bytes());
        spec.extend(0x000Bu16.to_le_bytes());
        spec.extend(32u16.to_le_bytes());
        spec.push(0);
        let mut log = Vec::new();
        log.extend(0u32.to_le_bytes());
        log.extend(3u32.to_le_bytes()); // EV_NO_ACTION
        log.extend([0u8; 20]);
        log.extend((spec.len() as u32).to_le_bytes());
        log.extend(spec);
        Log(log)
    }

    fn event(&mut self, pcr: u32, event_type: u32, digest: &str, data: &[u8]) {
        self.0.extend(pcr.to_le_bytes());
        self.0.extend(event_type.to_le_bytes());
        self.0.extend(1u32.to_le_bytes());
        self.0.extend(0x000Bu16.to_le_bytes());
        self.0.extend(hex::decode(digest).unwrap());
        self.0.extend((data.len() as u32).to_le_bytes());
        self.0.extend(data);
    }
}

/// A boot as UEFI firmware and the kernel's EFI stub record it: PCR 4 holds the boot-option
/// action, the loaded image and the separator; PCR 7 a separator; PCR 9 the initrd.
struct Boot {
    log: Log,
    /// (pcr, digest) in extend order.
    extends: Vec<(u32, String)>,
}

impl Boot {
    fn new(dir: &Path, image: &[u8], initrd: &[u8]) -> Boot {
        let mut b = Boot {
            log: Log::new(),
            extends: Vec::new(),
        };
        let action = b"Calling EFI Application from Boot Option";
        b.add(4, EV_EFI_ACTION, sha256_by_hashlib(action), action);
        b.add(
            4,
            EV_EFI_BOOT_SERVICES_APPLICATION,
            osslsigncode_digest(dir, image),
            &[0u8; 32],
        );
        for pcr in [4, 7] {
            b.add(pcr, EV_SEPARATOR, sha256_by_hashlib(&[0; 4]), &[0; 4]);
        }
        let mut tag = 0x8F3B_22ECu32.to_le_bytes().to_vec();
        tag.extend(13u32.to_le_bytes());
        tag.extend(b"Linux initrd\0");
        b.add(9, EV_EVENT_TAG, sha256_by_hashlib(initrd), &tag);
        b
    }

    fn add(&mut self, pcr: u32, event_type: u32, digest: String, data: &[u8]) {
        self.log.event(pcr, event_type, &digest, data);
        self.extends.push((pcr, digest));
    }

    /// Extends `tpm` as this boot did, with tpm2-tools.
    fn extend(&self, tpm: &Swtpm) {
        for (pcr, digest) in &self.extends {
            run_ok(
                Command::new("tpm2_pcrextend")
                    .env("TPM2TOOLS_TCTI", tpm.tcti())
                    .arg(format!("{pcr}:sha256={digest}")),
            );
        }
    }
}

fn reference_values(tpm: Option<&Swtpm>, log: &Path, args: &[&str]) -> Run {
    let mut cmd = Command::new(agent_bin());
    cmd.args([
        "reference-values",
        "--kernel-cmdline",
        "/dev/null",
        "--event-log",
    ])
    .arg(log)
    .args(args);
    match tpm {
        Some(t) => cmd.arg("--set").arg(format!("tpm.tcti={}", t.tcti())),
        None => cmd.arg("--offline"),
    };
    collect(&mut cmd)
}

fn json(run: &Run) -> serde_json::Value {
    assert!(run.status.success(), "{}", run.stderr);
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {}", run.stdout))
}

fn write(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    p
}

/// The files of a boot (kernel A, initrd A) and of the update (kernel B, initrd B).
struct Update {
    dir: tempfile::TempDir,
    kernel_a: Vec<u8>,
    kernel_b: Vec<u8>,
    initrd_a: Vec<u8>,
    initrd_b: Vec<u8>,
}

impl Update {
    fn new() -> Update {
        Update {
            dir: tempfile::tempdir().unwrap(),
            kernel_a: pe_image(0x11, 0x100),
            kernel_b: pe_image(0x22, 0x200),
            initrd_a: b"initrd A: the running boot's".repeat(100),
            initrd_b: b"initrd B: the update's".repeat(100),
        }
    }

    fn path(&self, name: &str) -> String {
        let data = match name {
            "kernel-a" => &self.kernel_a,
            "kernel-b" => &self.kernel_b,
            "initrd-a" => &self.initrd_a,
            _ => &self.initrd_b,
        };
        write(self.dir.path(), name, data).display().to_string()
    }

    fn boot(&self, kernel: &[u8], initrd: &[u8]) -> Boot {
        Boot::new(self.dir.path(), kernel, initrd)
    }
}

fn pcr_values(v: &serde_json::Value, pcr: u64) -> (String, String) {
    let p = v["pcrs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pcr"] == pcr)
        .unwrap_or_else(|| panic!("no PCR {pcr} in {v}"));
    (
        p["current"].as_str().unwrap().to_owned(),
        p["next"].as_str().unwrap().to_owned(),
    )
}

/// The current values equal the TPM's after boot A; the predicted values equal what a TPM
/// holds after booting B (another swtpm extended with osslsigncode's and hashlib's digests of
/// B's files); a PCR the update does not touch is predicted unchanged.
#[test]
fn prediction_equals_the_registers_after_the_update() {
    let u = Update::new();
    let a = u.boot(&u.kernel_a, &u.initrd_a);
    let tpm_a = Swtpm::start();
    a.extend(&tpm_a);
    let log = write(u.dir.path(), "log-a", &a.log.0);
    let run = reference_values(
        Some(&tpm_a),
        &log,
        &[
            "--pcrs",
            "4,7,9",
            "--replace",
            &u.path("kernel-a"),
            &u.path("kernel-b"),
            "--replace",
            &u.path("initrd-a"),
            &u.path("initrd-b"),
        ],
    );
    let v = json(&run);
    assert_eq!(v["tpm"], "matches the event log", "{v}");

    let b = u.boot(&u.kernel_b, &u.initrd_b);
    let tpm_b = Swtpm::start();
    b.extend(&tpm_b);
    for pcr in [4u32, 7, 9] {
        let (current, next) = pcr_values(&v, pcr.into());
        assert_eq!(
            current,
            pcr_by_tpm2_tools(&tpm_a, "sha256", pcr),
            "PCR {pcr} now"
        );
        assert_eq!(
            next,
            pcr_by_tpm2_tools(&tpm_b, "sha256", pcr),
            "PCR {pcr} next"
        );
    }
    let (c7, n7) = pcr_values(&v, 7);
    assert_eq!(c7, n7, "the update does not touch PCR 7");
    let refs = &v["reference_values"];
    assert_eq!(refs["tpm_pcr4"].as_array().unwrap().len(), 2, "{refs}");
    assert_eq!(refs["tpm_pcr7"].as_array().unwrap().len(), 1, "{refs}");
    let events = v["pcrs"][0]["events"].as_array().unwrap();
    let image = events
        .iter()
        .find(|e| e["type"] == "EV_EFI_BOOT_SERVICES_APPLICATION")
        .unwrap();
    assert!(
        image["replaced_by"].as_str().unwrap().ends_with("kernel-b"),
        "{image}"
    );
}

/// A log that does not replay to the TPM's registers is not a description of this boot: no
/// values from it. A file the boot did not measure cannot be replaced.
#[test]
fn a_log_unlike_the_tpm_and_an_unmeasured_file_are_refused() {
    let u = Update::new();
    let a = u.boot(&u.kernel_a, &u.initrd_a);
    let tpm = Swtpm::start();
    a.extend(&tpm);
    // The log of another boot (kernel B) against this TPM.
    let other = write(
        u.dir.path(),
        "log-b",
        &u.boot(&u.kernel_b, &u.initrd_a).log.0,
    );
    let run = reference_values(Some(&tpm), &other, &["--pcrs", "4,7"]);
    assert!(!run.status.success(), "{}", run.stdout);
    assert!(
        run.stderr.contains("PCR 4") && run.stderr.contains("does not describe this boot"),
        "{}",
        run.stderr
    );
    assert!(run.stdout.is_empty(), "{}", run.stdout);

    let log = write(u.dir.path(), "log-a", &a.log.0);
    let run = reference_values(
        Some(&tpm),
        &log,
        &["--replace", &u.path("kernel-b"), &u.path("kernel-a")],
    );
    assert!(!run.status.success(), "{}", run.stdout);
    assert!(
        run.stderr
            .contains("kernel-b was not measured in this boot"),
        "{}",
        run.stderr
    );
}

/// What the command prints for Trustee is what Trustee takes: the sample reference-value
/// message, posted to the real KBS, makes the node with kernel A `affirming` under the
/// documented TPM policy with both A's and B's PCR 4 registered, and the unlock succeeds.
#[test]
fn the_printed_message_registers_both_values_at_the_real_trustee() {
    let w = World::new();
    let u = Update::new();
    u.boot(&u.kernel_a, &u.initrd_a).extend(&w.tpm);
    let log = write(
        u.dir.path(),
        "log-a",
        &u.boot(&u.kernel_a, &u.initrd_a).log.0,
    );
    let run = reference_values(
        Some(&w.tpm),
        &log,
        &["--replace", &u.path("kernel-a"), &u.path("kernel-b")],
    );
    let v = json(&run);
    let message = v["trustee"]["message"].to_string();
    let kbs = Trustee::start();
    let (status, body) = kbs.admin_http("POST", "/kbs/v0/reference-value", &message);
    assert_eq!(status, 200, "{body}");
    let (c4, n4) = pcr_values(&v, 4);
    assert_ne!(c4, n4);
    let stored = kbs.admin(&["get-reference-value", "--id", "tpm_pcr4"]);
    assert!(stored.contains(&c4) && stored.contains(&n4), "{stored}");
    kbs.admin(&["set-sample-reference-value", "trusted_aks", &w.ak]);
    kbs.set_attestation_policy(
        "default_cpu",
        &common::trustee::doc_policy("tpm_pcrs_valid"),
    );
    kbs.set_resource(common::DISK, &w.disk_resource);
    kbs.admin(&["set-resource-policy", "--affirming"]);
    let mut config = w.config_for(&kbs.url(), &kbs.ca_pem());
    config.secrets.clear();
    let run = unlock_with(&config, w.work.path(), &[]);
    assert!(run.status.success(), "{}", run.stderr);
    assert!(run.verdict().contains("verdict=ok"), "{}", run.verdict());
    // The policy does check PCR 4: with only the next boot's value, this boot is refused.
    kbs.admin(&["set-sample-reference-value", "tpm_pcr4", &n4]);
    let run = unlock_with(&config, w.work.path(), &[]);
    assert!(!run.status.success(), "{}", run.stderr);
    assert!(
        run.verdict().contains("class=broker-denied"),
        "{}",
        run.verdict()
    );
}

/// The offline form (a log copied off its node) says it compared nothing, and the text form
/// names each changed event and the message to post.
#[test]
fn offline_and_text_forms() {
    let u = Update::new();
    let log = write(
        u.dir.path(),
        "log-a",
        &u.boot(&u.kernel_a, &u.initrd_a).log.0,
    );
    let v = json(&reference_values(None, &log, &[]));
    assert_eq!(v["tpm"], "not compared (--offline)", "{v}");
    let run = reference_values(
        None,
        &log,
        &[
            "--text",
            "--replace",
            &u.path("kernel-a"),
            &u.path("kernel-b"),
        ],
    );
    assert!(run.status.success(), "{}", run.stderr);
    assert!(run.stdout.contains("PCR 4"), "{}", run.stdout);
    assert!(
        run.stdout.contains("EV_EFI_BOOT_SERVICES_APPLICATION"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("kernel-b"), "{}", run.stdout);
    assert!(
        run.stdout.contains("/kbs/v0/reference-value"),
        "{}",
        run.stdout
    );
}
