//! `attest-unlock rotate`: the disk moves to a new broker key and opens at every instant.
//!
//! Real parts: swtpm, the test broker, cryptsetup on a LUKS2 image (slot 0: a recovery key),
//! and for the pin's token the real `clevis luks bind/pass/list` from Debian. The faults:
//! - the agent killed (SIGKILL) right after each header write, by a `cryptsetup` wrapper first
//!   in its PATH that runs the real one, then kills its parent;
//! - the broker failing at each request (auth, attest, the resources) and the new key absent.
//!
//! After every fault the volume opens through the boot path (`unlock --verify-only`: the token
//! names a keyslot that opens with the key at its path), and a rerun finishes with exactly the
//! recovery slot and the new one.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use test_kbs::{Broker, Endpoint, Faults};

/// Where the operator put the new key.
const NEW: &str = "default/node1/root-2";

/// The `cryptsetup` wrapper: counts the header writes (`luksAddKey`, `luksKillSlot`,
/// `token import`) in `$ROTATE_COUNT`; at write number `$ROTATE_CRASH_AT` it runs the real
/// cryptsetup, then kills the agent that ran it with SIGKILL.
struct Crasher {
    dir: tempfile::TempDir,
}

impl Crasher {
    fn new() -> Crasher {
        use std::os::unix::fs::PermissionsExt;
        let real = String::from_utf8(
            run_ok(Command::new("sh").args(["-c", "command -v cryptsetup"])).stdout,
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let script = format!(
            r#"#!/bin/sh
case "$1" in
luksAddKey|luksKillSlot|token)
    n=$(( $(cat "$ROTATE_COUNT" 2>/dev/null || echo 0) + 1 ))
    echo "$n" > "$ROTATE_COUNT"
    {real} "$@"
    rc=$?
    if [ "$n" = "$ROTATE_CRASH_AT" ]; then kill -9 "$PPID"; fi
    exit $rc ;;
esac
exec {real} "$@"
"#,
            real = real.trim()
        );
        let path = dir.path().join("cryptsetup");
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        Crasher { dir }
    }

    /// `cmd` with the wrapper first in PATH, crashing at write `at` (0: never); the writes are
    /// counted in `count`.
    fn arm(&self, cmd: &mut Command, at: u32, count: &Path) {
        let path = format!(
            "{}:{}",
            self.dir.path().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        cmd.env("PATH", path)
            .env("ROTATE_CRASH_AT", at.to_string())
            .env("ROTATE_COUNT", count);
    }
}

/// The header's JSON metadata.
fn metadata(img: &Path) -> serde_json::Value {
    let out = run_ok(
        Command::new("cryptsetup")
            .args(["luksDump", "--dump-json-metadata"])
            .arg(img),
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn keyslots(img: &Path) -> Vec<u32> {
    metadata(img)["keyslots"]
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.parse().unwrap())
        .collect()
}

/// The tokens of `kind` (`clevis` or `attest-unlock`).
fn tokens(img: &Path, kind: &str) -> Vec<serde_json::Value> {
    metadata(img)["tokens"]
        .as_object()
        .unwrap()
        .values()
        .filter(|t| t["type"] == kind)
        .cloned()
        .collect()
}

/// A native node: the measured config names `disk_key` (slot 1); the broker serves the old key
/// and, at `NEW`, a new one.
struct Native {
    w: World,
    broker: Broker,
    new_pass: Vec<u8>,
    new_resource: Vec<u8>,
    cfg: PathBuf,
}

impl Native {
    fn new() -> Native {
        Native::with(Faults::default(), true)
    }

    fn with(faults: Faults, serve_new: bool) -> Native {
        let w = World::new();
        let (new_resource, new_pass) = operator_disk_key();
        let mut config = w.broker_config();
        if serve_new {
            config
                .resources
                .insert(NEW.to_owned(), new_resource.clone());
        }
        config.faults = faults;
        let broker = Broker::start(config).unwrap();
        let cfg = write_config(&w.agent_config(&broker), w.work.path());
        Native {
            w,
            broker,
            new_pass,
            new_resource,
            cfg,
        }
    }

    fn rotate(&self, crasher: Option<(&Crasher, u32)>) -> Run {
        rotate_cmd(&self.cfg, &[], crasher, self.w.work.path())
    }

    /// The boot path opens the volume (the token's slot with its path's key, or the config's).
    fn opens(&self) -> String {
        let run = collect(Command::new(agent_bin()).args(unlock_args(&self.cfg, &[])));
        assert!(
            run.status.success() && run.verdict().contains("volume=verified"),
            "{}",
            run.stderr
        );
        run.stderr
    }

    /// The end state: slot 0 (recovery) and one slot for the new key, which the native token
    /// names with the new path; the old key opens nothing.
    fn rotated(&self) -> u32 {
        let img = &self.w.image.path;
        let slots = keyslots(img);
        assert_eq!(slots.len(), 2, "recovery + new, no orphan: {slots:?}");
        let t = tokens(img, "attest-unlock");
        assert_eq!(t.len(), 1, "{t:?}");
        assert_eq!(t[0]["disk_key"], NEW);
        assert!(t[0].get("retire").is_none(), "{t:?}");
        let slot: u32 = t[0]["keyslots"][0].as_str().unwrap().parse().unwrap();
        assert!(opens_keyslot(img, slot, &self.new_pass));
        for s in &slots {
            assert!(
                !opens_keyslot(img, *s, &self.w.passphrase),
                "old key opens {s}"
            );
        }
        assert!(opens_keyslot(
            img,
            0,
            &std::fs::read(&self.w.image.recovery_key).unwrap()
        ));
        slot
    }
}

fn rotate_cmd(cfg: &Path, extra: &[&str], crasher: Option<(&Crasher, u32)>, dir: &Path) -> Run {
    let mut cmd = Command::new(agent_bin());
    cmd.args([
        "rotate",
        "--to",
        NEW,
        "--kernel-cmdline",
        "/dev/null",
        "--config",
    ])
    .arg(cfg)
    .args(extra);
    if let Some((c, at)) = crasher {
        let count = dir.join("writes");
        let _ = std::fs::remove_file(&count);
        c.arm(&mut cmd, at, &count);
    }
    collect(&mut cmd)
}

/// The rerun after a kill at write `at` took up where the killed run stopped.
fn resumed(at: u32, run: &Run) {
    let want = match at {
        // The slot was added, the token not yet rewritten: found, not added again.
        1 => "already holds the new key (an earlier run added it)",
        // The token names the new slot and the old one to retire.
        2 => "step 3/4: removed keyslot 1",
        // The old slot is gone; the token still carries the record.
        3 => "step 3/4: keyslot 1 is already gone",
        _ => "nothing to do",
    };
    assert!(
        run.stderr.contains(want),
        "after write {at}: {}",
        run.stderr
    );
}

fn killed(run: &Run) -> bool {
    use std::os::unix::process::ExitStatusExt;
    run.status.signal() == Some(9)
}

#[test]
fn native_key_rotates_and_the_boot_follows_the_token() {
    let n = Native::new();
    let run = n.rotate(None);
    assert!(run.status.success(), "{}", run.stderr);
    assert_eq!(
        run.stdout.trim(),
        format!("rotated: keyslot=2 path={NEW} added=2 removed=1"),
        "{}",
        run.stderr
    );
    for step in ["step 1/4", "step 2/4", "step 3/4", "step 4/4"] {
        assert!(run.stderr.contains(step), "{step}: {}", run.stderr);
    }
    assert_eq!(n.rotated(), 2);
    // The config still says the old path and keyslot 1: the token beats it.
    let boot = n.opens();
    assert!(
        boot.contains("attest-unlock token 0 for keyslot 2 (default/node1/root-2)"),
        "{boot}"
    );
    // The token is the LUKS-token layer only: `--set` (like the kernel command line) beats
    // its path, and the old key does not open the token's keyslot.
    let overridden = collect(Command::new(agent_bin()).args(unlock_args(
        &n.cfg,
        &["--set".into(), format!("disk_key={DISK:?}")],
    )));
    assert!(
        overridden.verdict().contains("class=luks") && overridden.stderr.contains("keyslot 2"),
        "{}",
        overridden.stderr
    );
    // Again: nothing to do, nothing written.
    let before = n.w.image.digest();
    let again = n.rotate(None);
    assert!(again.status.success(), "{}", again.stderr);
    assert!(again.stderr.contains("nothing to do"), "{}", again.stderr);
    assert_eq!(n.w.image.digest(), before);
    // The old key retired at the broker: the node still boots.
    let mut config = n.w.broker_config();
    config.resources.remove(DISK);
    config
        .resources
        .insert(NEW.to_owned(), n.new_resource.clone());
    let only_new = Broker::start(config).unwrap();
    let cfg = write_config(&n.w.agent_config(&only_new), n.w.work.path());
    let run = collect(Command::new(agent_bin()).args(unlock_args(&cfg, &[])));
    assert!(run.status.success(), "{}", run.stderr);
}

/// On a booted node PCR 15 holds the boot's anchors and the post-release event, so the
/// rotation's attestation carries another value: a broker pinning the boot's refuses it (and
/// nothing changes) until it also accepts what `anchors --rotate-to` printed.
#[test]
fn on_a_booted_node_the_rotation_needs_the_value_anchors_prints() {
    let n = Native::new();
    let printed = anchors_json(&n.cfg, &["--rotate-to", NEW]);
    let value = |v: &serde_json::Value| v["pcr15:sha256"].as_str().unwrap().to_owned();
    let boot = value(&printed["registers"]);
    let rotation = value(&printed["rotation"]["registers"]);
    assert!(
        printed["rotation"]["event"]
            .as_str()
            .unwrap()
            .contains(&format!("resource {DISK}\nresource {NEW}\n")),
        "{printed}"
    );
    n.broker
        .accept_pcr_values(BTreeMap::from([(15, vec![boot.clone()])]))
        .unwrap();
    n.opens();
    let before = n.w.image.digest();
    let run = n.rotate(None);
    assert!(!run.status.success(), "{}", run.stderr);
    assert!(run.stderr.contains("denied (PolicyDeny)"), "{}", run.stderr);
    assert_eq!(n.w.image.digest(), before);
    n.broker
        .accept_pcr_values(BTreeMap::from([(15, vec![boot, rotation.clone()])]))
        .unwrap();
    let run = n.rotate(None);
    assert!(run.status.success(), "{}", run.stderr);
    n.rotated();
    // The broker accepted the rotation's value; the release was then measured after it.
    assert_eq!(
        pcr_by_tpm2_tools(&n.w.tpm, "sha256", 15),
        extend_by_hashlib("sha256", &rotation, &[b"attest-unlock:secrets-released:v1"])
    );
}

#[test]
fn native_rotation_killed_after_each_header_write_still_opens_and_resumes() {
    let crasher = Crasher::new();
    for at in 1..=4 {
        let n = Native::new();
        let run = n.rotate(Some((&crasher, at)));
        assert!(killed(&run), "write {at}: {:?}\n{}", run.status, run.stderr);
        n.opens();
        let run = n.rotate(None);
        assert!(run.status.success(), "after write {at}: {}", run.stderr);
        resumed(at, &run);
        n.rotated();
        n.opens();
    }
}

#[test]
fn a_failing_broker_changes_nothing() {
    let faults = [
        (Endpoint::Auth, 500),
        (Endpoint::Attest, 403),
        (Endpoint::Resource, 500),
    ];
    let mut cases: Vec<(String, Native)> = faults
        .into_iter()
        .map(|(e, status)| {
            (
                format!("{e:?} {status}"),
                Native::with(
                    Faults {
                        status_for: Some((e, status, None)),
                        ..Faults::default()
                    },
                    true,
                ),
            )
        })
        .collect();
    cases.push((
        "new key absent".into(),
        Native::with(Faults::default(), false),
    ));
    for (what, n) in cases {
        let before = n.w.image.digest();
        let run = n.rotate(None);
        assert!(!run.status.success(), "{what}: {}", run.stderr);
        assert_eq!(n.w.image.digest(), before, "{what}: the header changed");
        assert!(run.stdout.is_empty(), "{what}: {}", run.stdout);
    }
}

#[test]
fn a_planted_retire_record_removes_no_slot_the_old_key_does_not_open() {
    let n = Native::new();
    // The host writes a token whose record names the recovery slot.
    let planted = serde_json::json!({
        "type": "attest-unlock", "keyslots": ["1"], "disk_key": DISK,
        "retire": {"keyslot": "0", "disk_key": DISK},
    });
    let mut import = Command::new("cryptsetup");
    import
        .args(["token", "import", "--token-id", "0", "--json-file=-"])
        .arg(&n.w.image.path);
    let run = run_with_stdin(&mut import, planted.to_string().as_bytes());
    assert!(run.status.success(), "{}", run.stderr);
    let run = n.rotate(None);
    assert!(run.status.success(), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("which the old key does not open: left as it is"),
        "{}",
        run.stderr
    );
    assert!(opens_keyslot(
        &n.w.image.path,
        0,
        &std::fs::read(&n.w.image.recovery_key).unwrap()
    ));
    n.rotated();
}

/// A keyslot or disk key named above the token (kernel command line, `--set`) would still be
/// used by the next boot after the old slot is gone: refused before anything is fetched.
#[test]
fn a_keyslot_or_disk_key_above_the_token_is_refused() {
    let n = Native::new();
    let before = n.w.image.digest();
    for (set, names) in [
        ("luks.keyslot=1", "luks.keyslot is set"),
        (&format!("disk_key={DISK:?}")[..], "disk_key is set"),
    ] {
        let run = rotate_cmd(&n.cfg, &["--set", set], None, n.w.work.path());
        assert!(!run.status.success(), "{}", run.stderr);
        assert!(
            run.stderr.contains(names) && run.stderr.contains("above the LUKS2 token"),
            "{}",
            run.stderr
        );
        assert_eq!(n.w.image.digest(), before);
    }
    assert!(n.broker.log().is_empty(), "{:?}", n.broker.log());
}

#[test]
fn a_token_whose_slot_does_not_open_is_not_rotated() {
    let n = Native::new();
    // The token names the recovery slot with the broker's path: the key does not open it.
    let wrong = serde_json::json!({"type": "attest-unlock", "keyslots": ["0"], "disk_key": DISK});
    let mut import = Command::new("cryptsetup");
    import
        .args(["token", "import", "--token-id", "0", "--json-file=-"])
        .arg(&n.w.image.path);
    assert!(run_with_stdin(&mut import, wrong.to_string().as_bytes())
        .status
        .success());
    let before = n.w.image.digest();
    let run = n.rotate(None);
    assert!(!run.status.success());
    assert!(
        run.stderr.contains("keyslot 0 of")
            && run
                .stderr
                .contains("does not open with the key at default/node1/root: not rotating"),
        "{}",
        run.stderr
    );
    assert_eq!(n.w.image.digest(), before);
}

/// A node bound with the real `clevis luks bind` and our pin (token 0, keyslot 1).
struct Pinned {
    node: PinNode,
    image: LuksImage,
}

impl Pinned {
    fn new() -> Pinned {
        let resources = BTreeMap::from([
            (DISK.to_owned(), operator_disk_key().0),
            (NEW.to_owned(), operator_disk_key().0),
        ]);
        let p = Pinned {
            node: PinNode::start(resources, Some(1)),
            image: LuksImage::recovery_only(),
        };
        let pin = serde_json::json!({
            "servers": [{"url": p.node.broker.url(), "cert": p.node.broker.ca_pem()}],
            "path": DISK,
        });
        let mut bind = p.clevis();
        bind.args(["luks", "bind", "-y", "-k"])
            .arg(&p.image.recovery_key)
            .arg("-d")
            .arg(&p.image.path)
            .args(["trustee", &pin.to_string()]);
        run_ok(&mut bind);
        p
    }

    fn clevis(&self) -> Command {
        self.node.cmd("clevis")
    }

    fn device(&self) -> String {
        format!("luks.device={:?}", self.image.path.display().to_string())
    }

    fn rotate(&self, crasher: Option<(&Crasher, u32)>) -> Run {
        rotate_cmd(
            &self.node.config_file,
            &["--set", &self.device()],
            crasher,
            self.node.bin_dir.path(),
        )
    }

    fn opens(&self) {
        let args = unlock_args(&self.node.config_file, &["--set".into(), self.device()]);
        let run = collect(Command::new(agent_bin()).args(args));
        assert!(
            run.status.success() && run.verdict().contains("volume=verified"),
            "{}",
            run.stderr
        );
    }

    /// The end state: the recovery slot and the new one; clevis lists one binding, and
    /// `clevis luks pass` (our decrypt, fetching the new path) gives what opens it.
    fn rotated(&self) {
        let img = &self.image.path;
        let slots = keyslots(img);
        assert_eq!(slots.len(), 2, "recovery + new, no orphan: {slots:?}");
        let t = tokens(img, "clevis");
        assert_eq!(t.len(), 1, "{t:?}");
        assert!(t[0].get("attest-unlock-retire").is_none(), "{t:?}");
        let slot = t[0]["keyslots"][0].as_str().unwrap().to_owned();
        let list = run_ok(self.clevis().args(["luks", "list", "-d"]).arg(img));
        assert_eq!(
            String::from_utf8_lossy(&list.stdout).trim(),
            format!("{slot}: unknown pin 'trustee'")
        );
        let pass = run_ok(
            self.clevis()
                .args(["luks", "pass", "-d"])
                .arg(img)
                .args(["-s", &slot]),
        );
        assert!(opens_keyslot(img, slot.parse().unwrap(), &pass.stdout));
        let header = t[0]["jwe"]["protected"].as_str().unwrap();
        let header: serde_json::Value = serde_json::from_slice(
            &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, header)
                .unwrap(),
        )
        .unwrap();
        assert_eq!(header["clevis"]["trustee"]["path"], NEW, "{header}");
    }
}

#[test]
fn clevis_token_rebinds_to_the_new_key_and_clevis_still_reads_it() {
    let p = Pinned::new();
    let run = p.rotate(None);
    assert!(run.status.success(), "{}", run.stderr);
    assert_eq!(
        run.stdout.trim(),
        format!("rotated: keyslot=2 path={NEW} added=2 removed=1")
    );
    p.rotated();
    p.opens();
}

#[test]
fn clevis_rebinding_killed_after_each_header_write_still_opens_and_resumes() {
    let crasher = Crasher::new();
    for at in 1..=4 {
        let p = Pinned::new();
        let run = p.rotate(Some((&crasher, at)));
        assert!(killed(&run), "write {at}: {:?}\n{}", run.status, run.stderr);
        p.opens();
        let run = p.rotate(None);
        assert!(run.status.success(), "after write {at}: {}", run.stderr);
        resumed(at, &run);
        p.rotated();
        p.opens();
    }
}

/// The agent reads the header itself (no cryptsetup run); what it reads is what
/// `cryptsetup luksDump --dump-json-metadata` prints: on a rotated image with tokens, on an
/// image with a larger metadata area, and with the primary copy damaged (both then use the
/// secondary). Both copies damaged: an error, as cryptsetup's.
#[test]
fn the_header_reader_agrees_with_cryptsetup() {
    let ours = |img: &Path| -> Result<serde_json::Value, String> {
        let disk = std::fs::read(img).unwrap();
        attest_unlock::formats::luks2::metadata(&disk)
            .map(|j| serde_json::from_slice(j).unwrap())
            .map_err(|e| e.to_string())
    };
    let n = Native::new();
    assert!(n.rotate(None).status.success());
    let img = &n.w.image.path;
    assert_eq!(ours(img).unwrap(), metadata(img));

    let big = LuksImage::recovery_only();
    run_ok(
        Command::new("cryptsetup")
            .args(["luksFormat", "--type", "luks2", "--batch-mode"])
            .args([
                "--luks2-metadata-size",
                "64k",
                "--luks2-keyslots-size",
                "1m",
            ])
            .args(["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"])
            .arg("--key-file")
            .arg(&big.recovery_key)
            .arg(&big.path),
    );
    assert_eq!(ours(&big.path).unwrap(), metadata(&big.path));

    // Damage the primary's JSON area: cryptsetup and we read the secondary.
    let mut disk = std::fs::read(img).unwrap();
    disk[4096 + 3] ^= 0x20;
    std::fs::write(img, &disk).unwrap();
    assert_eq!(ours(img).unwrap(), metadata(img));
    // And the secondary's (at the primary's size, 16 KiB here): neither reads it.
    disk[16384 + 4096 + 3] ^= 0x20;
    std::fs::write(img, &disk).unwrap();
    assert!(ours(img).unwrap_err().contains("checksum mismatch"));
    assert!(!Command::new("cryptsetup")
        .args(["luksDump", "--dump-json-metadata"])
        .arg(img)
        .output()
        .unwrap()
        .status
        .success());
}
