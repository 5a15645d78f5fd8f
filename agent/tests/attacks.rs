//! The attack matrix: a hostile disk (the LUKS2 token, written by whoever holds the disk),
//! a hostile kernel command line, and hostile local files, each run end to end (swtpm, the
//! test broker, a relaying broker, real cryptsetup, the agent binary). Every case asserts what
//! an attacker must not get: no secret delivered, no volume reported opened or verified, no
//! contact with a broker the measured config did not name, a typed one-line error.
//!
//! `ATTEST_UNLOCK_TEST_BIN=/path/to/an/older/attest-unlock` runs the matrix against another
//! build: against the build before these fixes every case here fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use test_kbs::{Broker, BrokerConfig, RelayConfig};

const KUBELET: &str = "default/node1/kubelet";
const KUBELET_TOKEN: &[u8] = b"the real kubelet bootstrap token";
const NODE_DISK: &str = "default/node1/root";
const ATTACKER_DISK: &str = "default/attacker/root";

/// A node: its TPM, the real broker that trusts its AK, and where secrets go.
struct Node {
    tpm: Swtpm,
    secrets: tempfile::TempDir,
    work: tempfile::TempDir,
}

impl Node {
    fn new() -> Node {
        Node {
            tpm: Swtpm::start(),
            secrets: secret_dir(),
            work: secret_dir(),
        }
    }

    fn kubelet_path(&self) -> PathBuf {
        self.secrets.path().join("kubelet/bootstrap-token")
    }

    /// The node's initramfs config: TPM, the kubelet secret, a disk, and (when given) the
    /// brokers it pins.
    fn config(&self, brokers: &[&Broker], image: &Path) -> PathBuf {
        let mut s = format!(
            "[tpm]\ntcti = {:?}\n[retry]\nmax_rounds = 1\ninitial_backoff_ms = 1\nmax_backoff_ms = 2\n\
             [luks]\ndevice = {:?}\n[measure]\nlog = {:?}\n\
             [[secrets]]\nresource = {KUBELET:?}\npath = {:?}\n",
            self.tpm.tcti(),
            image.display().to_string(),
            self.work.path().join("measurements.log").display().to_string(),
            self.kubelet_path().display().to_string(),
        );
        for b in brokers {
            s.push_str(&format!(
                "[[brokers]]\nurl = {:?}\nca_cert = {:?}\n",
                b.url(),
                b.ca_pem()
            ));
        }
        let path = self.work.path().join("config.toml");
        std::fs::write(&path, s).unwrap();
        path
    }

    fn unlock(&self, config: &Path, extra: &[&str]) -> Run {
        let extra: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
        collect(Command::new(agent_bin()).args(unlock_args(config, &extra)))
    }

    /// Nothing of the node's secrets reached the destination directory.
    fn assert_nothing_delivered(&self, run: &Run) {
        assert!(!run.status.success(), "must fail:\n{}", run.stderr);
        let left: Vec<_> = std::fs::read_dir(self.secrets.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert!(left.is_empty(), "nothing may be written, found {left:?}");
        let v = run.verdict();
        assert!(v.contains("verdict=failed"), "{v}");
        assert!(!v.contains("volume="), "{v}");
    }
}

/// The real broker: it trusts the AKs of `tpms`, holds the node's kubelet credential and disk
/// key, and (with `pcr15`) requires that PCR 15 value.
fn real_broker(tpms: &[&Swtpm], node_disk: &[u8], pcr15: Option<String>) -> Broker {
    let mut resources = BTreeMap::new();
    resources.insert(KUBELET.to_owned(), KUBELET_TOKEN.to_vec());
    resources.insert(NODE_DISK.to_owned(), node_disk.to_vec());
    let mut expected_pcrs = BTreeMap::new();
    if let Some(v) = pcr15 {
        expected_pcrs.insert(15, v);
    }
    Broker::start(BrokerConfig {
        trusted_aks: tpms.iter().map(|t| ak_public(t)).collect(),
        resources,
        expected_pcrs,
        ..BrokerConfig::default()
    })
    .unwrap()
}

/// The attacker's broker: relays everything to `upstream` but serves the key of the
/// attacker's disk itself.
fn relaying_broker(upstream: &Broker, attacker_key: &[u8]) -> Broker {
    let mut own = BTreeMap::new();
    own.insert(ATTACKER_DISK.to_owned(), attacker_key.to_vec());
    Broker::start(BrokerConfig {
        relay: Some(RelayConfig {
            upstream_url: upstream.url(),
            upstream_ca_pem: upstream.ca_pem(),
            own,
        }),
        ..BrokerConfig::default()
    })
    .unwrap()
}

/// The pin config a disk's token carries.
fn pin_config(
    broker: &Broker,
    path: &str,
    extension: Option<serde_json::Value>,
) -> serde_json::Value {
    let mut c = serde_json::json!({
        "servers": [{"url": broker.url(), "cert": broker.ca_pem()}],
        "path": path,
        "initdata": null,
        "num_retries": 1,
        "attestation_key": null,
    });
    if let Some(ext) = extension {
        c["attest-unlock"] = ext;
    }
    c
}

/// A LUKS2 image whose keyslot 1 holds a passphrase sealed, as the trustee pin does, under the
/// key resource `key_resource`, with a clevis token carrying `pin` (the way `clevis luks bind`
/// writes it). Written without any broker: this is what a disk's owner (or the host) can do.
fn bound_disk(pin: &serde_json::Value, key_resource: &[u8]) -> LuksImage {
    let passphrase = format!("luks passphrase {}", rand_hex());
    let image = LuksImage::new(passphrase.as_bytes());
    let key = attest_unlock::clevis::PinKey::from_resource(key_resource).unwrap();
    let mut header = pin.clone();
    header["pin"] = "trustee".into();
    header["trustee"] = pin.clone();
    let jwe = attest_unlock::clevis::encrypt(&key, header, passphrase.as_bytes()).unwrap();
    let parts: Vec<&str> = jwe.split('.').collect();
    let token = serde_json::json!({
        "type": "clevis",
        "keyslots": ["1"],
        "jwe": {
            "protected": parts[0], "encrypted_key": parts[1], "iv": parts[2],
            "ciphertext": parts[3], "tag": parts[4],
        },
    });
    let file = image.path.with_extension("token.json");
    std::fs::write(&file, token.to_string()).unwrap();
    run_ok(
        Command::new("cryptsetup")
            .args(["token", "import", "--json-file"])
            .arg(&file)
            .arg(&image.path),
    );
    image
}

fn rand_hex() -> String {
    let mut b = [0u8; 8];
    getrandom(&mut b);
    hex::encode(b)
}

/// A node whose config pins the real broker and names its disk key natively (`disk_key`),
/// with a LUKS image that key opens.
fn native_node() -> (Node, Broker, LuksImage, PathBuf) {
    let node = Node::new();
    let (key, passphrase) = operator_disk_key();
    let real = real_broker(&[&node.tpm], &key, None);
    let image = LuksImage::new(&passphrase);
    let config = node.config(&[&real], &image.path);
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("disk_key = {NODE_DISK:?}\n{text}")).unwrap();
    (node, real, image, config)
}

fn relayed(broker: &Broker) -> usize {
    broker
        .log()
        .iter()
        .filter(|l| l.starts_with("relay:"))
        .count()
}

// ---- a hostile token ----

/// The probe of the issue: the node's config pins the real broker, the disk's token names the
/// attacker's relaying broker. The node must talk to the real broker only: the attacker's
/// disk key is not there, so nothing is unlocked and the real kubelet credential stays put.
#[test]
fn token_cannot_redirect_a_node_with_measured_brokers() {
    let node = Node::new();
    let (node_disk, _) = operator_disk_key();
    let (attacker_key, _) = operator_disk_key();
    let real = real_broker(&[&node.tpm], &node_disk, None);
    let relay = relaying_broker(&real, &attacker_key);
    let disk = bound_disk(&pin_config(&relay, ATTACKER_DISK, None), &attacker_key);
    let config = node.config(&[&real], &disk.path);

    let run = node.unlock(&config, &[]);
    node.assert_nothing_delivered(&run);
    assert_eq!(relayed(&relay), 0, "the token's broker was contacted");
    assert!(
        real.released().is_empty(),
        "released: {:?}",
        real.released()
    );
    assert!(
        run.stderr
            .contains("brokers from the initramfs config file"),
        "{}",
        run.stderr
    );
}

/// The PCR 15 value `attest-unlock anchors` gives for a node whose token carries `pin` and
/// whose initramfs config names no broker (a pure clevis drop-in).
fn drop_in_pcr15(node: &Node, pin: &serde_json::Value) -> String {
    let config = node.config(&[], Path::new("/dev/null"));
    let doc = anchors_json(&config, &["--pin-config", &pin.to_string()]);
    assert_eq!(doc["brokers_from"], "LUKS2 token");
    doc["registers"]["pcr15:sha256"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// A pure clevis drop-in (no broker in the measured config): the token's brokers are used,
/// but measured first. The real broker requires the PCR 15 value of the honest anchors, so
/// the evidence relayed through the attacker's broker, whose event names that broker, is
/// refused and nothing is delivered. The honest disk on another node unlocks under the very
/// same broker policy.
#[test]
fn relayed_attestation_is_refused_by_the_real_broker() {
    let honest_node = Node::new();
    let victim = Node::new();
    let (node_disk, _) = operator_disk_key();
    let (attacker_key, _) = operator_disk_key();
    let real = real_broker(&[&honest_node.tpm, &victim.tpm], &node_disk, None);
    let honest_pin = pin_config(&real, NODE_DISK, None);
    let mut pcrs = BTreeMap::new();
    pcrs.insert(15, drop_in_pcr15(&honest_node, &honest_pin));
    real.set_expected_pcrs(pcrs).unwrap();

    let honest_disk = bound_disk(&honest_pin, &node_disk);
    let run = honest_node.unlock(&honest_node.config(&[], &honest_disk.path), &[]);
    assert!(run.status.success(), "{}", run.stderr);
    assert!(run.verdict().contains("verdict=ok"), "{}", run.stderr);
    assert_eq!(
        std::fs::read(honest_node.kubelet_path()).unwrap(),
        KUBELET_TOKEN
    );

    let relay = relaying_broker(&real, &attacker_key);
    let disk = bound_disk(&pin_config(&relay, ATTACKER_DISK, None), &attacker_key);
    let run = victim.unlock(&victim.config(&[], &disk.path), &[]);
    victim.assert_nothing_delivered(&run);
    assert!(
        relayed(&relay) > 0,
        "the drop-in node used the token's broker"
    );
    assert!(
        run.stderr.contains("come from the LUKS2 token"),
        "{}",
        run.stderr
    );
    let log = real.log().join("\n");
    assert!(
        log.contains("PCR"),
        "the real broker refused on the register: {log}"
    );
}

/// Settings only measured layers may set are refused from the token, before any contact.
#[test]
fn token_may_not_weaken_the_node() {
    let node = Node::new();
    let (key, _) = operator_disk_key();
    let real = real_broker(&[&node.tpm], &key, None);
    for ext in [
        serde_json::json!({"insecure_allow_http": true}),
        serde_json::json!({"insecure_allow_persistent_secrets": true}),
        serde_json::json!({"measure": {"enabled": false}}),
        serde_json::json!({"tpm": {"tcti": "swtpm:host=127.0.0.1,port=1"}}),
        serde_json::json!({"brokers": [{"url": "https://evil.example", "ca_cert": "x"}]}),
        serde_json::json!({"luks": {"name": "--test-passphrase"}}),
    ] {
        let disk = bound_disk(&pin_config(&real, NODE_DISK, Some(ext.clone())), &key);
        let run = node.unlock(&node.config(&[&real], &disk.path), &[]);
        node.assert_nothing_delivered(&run);
        let v = run.verdict();
        assert!(
            v.contains("class=config") && v.contains("LUKS2 token may not set"),
            "{ext}: {v}"
        );
        assert!(real.log().is_empty(), "{ext}: broker contacted");
    }
}

/// A token value of a megabyte with escape bytes is neither echoed whole nor raw.
#[test]
fn huge_hostile_token_values_are_cut_and_escaped() {
    let node = Node::new();
    let (key, _) = operator_disk_key();
    let real = real_broker(&[&node.tpm], &key, None);
    let url = format!("https://\u{1b}[2J{}", "a".repeat(2000));
    let mut pin = pin_config(&real, NODE_DISK, None);
    pin["servers"][0]["url"] = url.into();
    let disk = bound_disk(&pin, &key);
    // A drop-in node, so the token's URL is the one used (and refused as a URL).
    let run = node.unlock(&node.config(&[], &disk.path), &[]);
    node.assert_nothing_delivered(&run);
    assert!(!run.stderr.contains('\u{1b}'), "raw ESC reached stderr");
    let longest = run.stderr.lines().map(str::len).max().unwrap_or(0);
    assert!(
        longest < 1500,
        "a {longest}-byte line: the value was echoed whole"
    );
}

/// `luks.name` reaches cryptsetup's argv. `--test-passphrase` as the name turned `open` into a
/// test that activated nothing while the agent said `volume=opened` and delivered.
#[test]
fn option_like_volume_name_from_the_kernel_command_line_is_refused() {
    let (node, real, _image, config) = native_node();
    let cmdline = node.work.path().join("cmdline");
    std::fs::write(
        &cmdline,
        "ro rd.attest_unlock.luks.name=--test-passphrase quiet",
    )
    .unwrap();
    let run = collect(
        Command::new(agent_bin())
            .args(["unlock", "--kernel-cmdline"])
            .arg(&cmdline)
            .arg("--config")
            .arg(&config),
    );
    node.assert_nothing_delivered(&run);
    assert!(run.verdict().contains("class=config"), "{}", run.stderr);
    assert!(real.log().is_empty(), "broker contacted: {:?}", real.log());
}

/// The documented kernel switches work as bare words and `=1`.
#[test]
fn documented_kernel_switches_work_as_bare_words() {
    let node = Node::new();
    let cmdline = node.work.path().join("cmdline");
    for switch in ["rd.attest_unlock.disable", "rd.attest_unlock.disable=1"] {
        std::fs::write(&cmdline, format!("ro {switch} quiet")).unwrap();
        let run = collect(
            Command::new(agent_bin())
                .args(["unlock", "--kernel-cmdline"])
                .arg(&cmdline)
                .args(["--config", "/dev/null"]),
        );
        assert!(run.status.success(), "{switch}: {}", run.stderr);
        assert!(run.stderr.contains("disabled"), "{switch}: {}", run.stderr);
    }
    std::fs::write(&cmdline, "rd.attest_unlock.verbose").unwrap();
    let run = collect(
        Command::new(agent_bin())
            .args(["detect", "--kernel-cmdline"])
            .arg(&cmdline)
            .args(["--config", "/dev/null", "--set"])
            .arg(format!("tpm.tcti={}", node.tpm.tcti())),
    );
    assert!(run.status.success(), "{}", run.stderr);
}

/// Weakening settings from the kernel command line are logged with the layer that set them.
#[test]
fn weakening_kernel_arguments_are_logged_with_their_layer() {
    let node = Node::new();
    let cmdline = node.work.path().join("cmdline");
    std::fs::write(
        &cmdline,
        "rd.attest_unlock.measure.enabled=false rd.attest_unlock.measure.pcr=23 rd.attest_unlock.insecure_allow_http=1",
    )
    .unwrap();
    let run = collect(
        Command::new(agent_bin())
            .args(["detect", "--kernel-cmdline"])
            .arg(&cmdline)
            .args(["--config", "/dev/null", "--set"])
            .arg(format!("tpm.tcti={}", node.tpm.tcti())),
    );
    assert!(run.status.success(), "{}", run.stderr);
    for want in [
        "warn: measure.enabled (set by the kernel command line)",
        "warn: measure.pcr (set by the kernel command line)",
        "warn: insecure_allow_http (set by the kernel command line)",
    ] {
        assert!(run.stderr.contains(want), "{want}:\n{}", run.stderr);
    }
}

/// Files the config names are read with a cap: `/dev/zero` is an error, not gigabytes.
#[test]
fn unbounded_files_are_refused() {
    let node = Node::new();
    let base = ["--kernel-cmdline", "/dev/null"];
    for args in [
        vec!["--config", "/dev/zero", "detect"],
        vec![
            "--config",
            "/dev/null",
            "--set",
            "init_data.path=\"/dev/zero\"",
            "anchors",
        ],
        vec![
            "--config",
            "/dev/null",
            "--set",
            "brokers=[{url=\"https://127.0.0.1:1\",ca_cert=\"/dev/zero\"}]",
            "anchors",
        ],
    ] {
        // Under a 1 GiB address-space limit: reading /dev/zero whole would be killed.
        let run = collect(
            Command::new("prlimit")
                .arg("--as=1073741824")
                .arg("--")
                .arg(agent_bin())
                .args(base)
                .args(&args),
        );
        assert_eq!(run.status.code(), Some(2), "{args:?}: {}", run.stderr);
        assert!(
            run.stderr.contains("larger than 1048576 bytes"),
            "{args:?}: {}",
            run.stderr
        );
    }
    let _ = &node;
}

/// The failure report and the measurement log are not written through a symlink, nor to a
/// persistent filesystem.
#[test]
fn run_files_do_not_follow_symlinks() {
    let node = Node::new();
    let target = node.work.path().join("target");
    std::fs::write(&target, "untouched").unwrap();
    let link = node.work.path().join("failure");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let config = node.work.path().join("bad.toml");
    std::fs::write(&config, "[tpm]\ntcti = \"swtpm:host=127.0.0.1,port=1\"\n[[secrets]]\nresource = \"a/b/c\"\npath = \"/run/x\"\n[[brokers]]\nurl = \"https://127.0.0.1:1\"\nca_cert = \"-----BEGIN CERTIFICATE-----\"\n").unwrap();
    let run = collect(
        Command::new(agent_bin())
            .args(["unlock", "--kernel-cmdline", "/dev/null", "--config"])
            .arg(&config)
            .arg("--failure-report")
            .arg(&link),
    );
    assert!(!run.status.success());
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "untouched");
    assert!(
        run.stderr.contains("cannot write the failure report"),
        "{}",
        run.stderr
    );
    // On a persistent filesystem (the build tree), refused too.
    let dir = persistent_dir();
    let persistent = dir.path().join("failure");
    let run = collect(
        Command::new(agent_bin())
            .args(["unlock", "--kernel-cmdline", "/dev/null", "--config"])
            .arg(&config)
            .arg("--failure-report")
            .arg(&persistent),
    );
    assert!(!run.status.success());
    assert!(
        !persistent.exists(),
        "report written to a persistent filesystem"
    );
}

// ---- delivery ----

/// A world-writable destination directory, or one owned by someone else, is refused before
/// anything is unlocked.
#[test]
fn unsafe_destination_directories_are_refused() {
    let (node, _real, _image, config) = native_node();
    let dir = node.kubelet_path().parent().unwrap().to_owned();
    std::fs::create_dir_all(&dir).unwrap();
    for (mode, owner) in [(0o777, None), (0o700, Some(65534))] {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
        if let Some(uid) = owner {
            std::os::unix::fs::chown(&dir, Some(uid), None).unwrap();
        }
        let run = node.unlock(&config, &[]);
        assert!(!run.status.success(), "{}", run.stderr);
        let v = run.verdict();
        assert!(
            v.contains("class=deliver") && v.contains("refusing to write into"),
            "{v}"
        );
        assert!(
            std::fs::read_dir(&dir).unwrap().next().is_none(),
            "written into {dir:?}"
        );
    }
}

/// A stop request between staging and delivery leaves no plaintext behind: the agent holds
/// SIGTERM there, removes what it staged and fails. A staging file that a SIGKILL left is
/// removed by the next run.
#[test]
fn sigterm_between_staging_and_delivery_leaves_no_secret() {
    let (node, _real, _image, config) = native_node();
    // cryptsetup that takes its time: the window between staging and delivery.
    let bin = tempfile::tempdir().unwrap();
    let slow = bin.path().join("cryptsetup");
    std::fs::write(
        &slow,
        format!(
            "#!/bin/sh\nsleep 2\nexec {} \"$@\"\n",
            String::from_utf8(
                run_ok(Command::new("sh").args(["-c", "command -v cryptsetup"])).stdout
            )
            .unwrap()
            .trim()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&slow, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let child = Command::new(agent_bin())
        .args(unlock_args(&config, &[]))
        .env("PATH", &path)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let dir = node.kubelet_path().parent().unwrap().to_owned();
    let started = std::time::Instant::now();
    while started.elapsed() < std::time::Duration::from_secs(30) {
        let staged = std::fs::read_dir(&dir)
            .map(|d| {
                d.flatten()
                    .any(|e| e.file_name().to_string_lossy().contains(".attest-unlock."))
            })
            .unwrap_or(false);
        if staged {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    nix_kill(child.id(), "TERM");
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    // The directory it made for the secret went with the staged file.
    let left: Vec<_> = std::fs::read_dir(&dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left behind: {left:?}\n{stderr}");
    assert!(
        stderr.contains("stopped by SIGTERM before delivery"),
        "{stderr}"
    );

    // What a SIGKILL would leave: a staging file. The next run removes it.
    let stale = dir.join(".bootstrap-token.attest-unlock.4242");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(&stale, KUBELET_TOKEN).unwrap();
    let run = node.unlock(&config, &[]);
    // PCR 15 of this TPM moved on (the first run measured its anchors), the test broker does
    // not check it, so this run succeeds.
    assert!(run.status.success(), "{}", run.stderr);
    assert!(!stale.exists(), "stale staging file kept");
    assert!(
        run.stderr.contains("left by an interrupted run"),
        "{}",
        run.stderr
    );
}

fn nix_kill(pid: u32, signal: &str) {
    run_ok(
        Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string()),
    );
}

/// The relayed attestation against the real Trustee KBS (upstream 78962cd, built-in
/// attestation service): the node's AK and PCR 11 are registered so it reaches `affirming`,
/// and the resource policy also requires the PCR 15 value of the node's trust anchors, keyed
/// by the node's path (one rule serves a fleet). The honest drop-in node unlocks; the node
/// whose disk names the attacker's relaying broker is refused by Trustee, and nothing is
/// delivered.
#[test]
fn relayed_attestation_is_refused_by_the_real_trustee() {
    use common::trustee::Trustee;
    let honest_node = Node::new();
    let victim = Node::new();
    let (node_disk, _) = operator_disk_key();
    let (attacker_key, _) = operator_disk_key();
    let kbs = Trustee::start();
    kbs.set_resource(KUBELET, KUBELET_TOKEN);
    kbs.set_resource(NODE_DISK, &node_disk);
    // One trusted AK at a time: a sample reference value is replaced, not appended.
    kbs.admin(&[
        "set-sample-reference-value",
        "trusted_aks",
        &ak_public(&honest_node.tpm),
    ]);
    let pcr11 = pcr_by_tpm2_tools(&honest_node.tpm, "sha256", 11);
    kbs.admin(&["set-sample-reference-value", "tpm_pcr11", &pcr11]);

    // The honest pin config names the real broker; its anchors give the value to require.
    let honest_pin = serde_json::json!({
        "servers": [{"url": kbs.url(), "cert": kbs.ca_pem()}],
        "path": NODE_DISK,
        "initdata": null,
        "num_retries": 1,
        "attestation_key": null,
    });
    let pcr15 = drop_in_pcr15(&honest_node, &honest_pin);
    // The policy of docs/deploying.md as written, with this node's path segment and value.
    let policy = common::trustee::doc_policy("anchors := ").replace(
        r#""11111111-2222-3333-4444-555555555555": "<pcr15:sha256 of that node>""#,
        &format!(r#""node1": "{pcr15}""#),
    );
    assert!(policy.contains(&pcr15), "{policy}");
    kbs.set_resource_policy(&policy);

    let honest_disk = bound_disk(&honest_pin, &node_disk);
    let run = honest_node.unlock(&honest_node.config(&[], &honest_disk.path), &[]);
    assert!(run.status.success(), "{}\n{}", run.stderr, kbs.log());
    assert_eq!(
        std::fs::read(honest_node.kubelet_path()).unwrap(),
        KUBELET_TOKEN
    );

    // The victim is a registered node too (affirming): only its trust anchors differ.
    kbs.admin(&[
        "set-sample-reference-value",
        "trusted_aks",
        &ak_public(&victim.tpm),
    ]);

    // The attacker relays the victim's genuine evidence to Trustee through their broker.
    // The relay is our test broker pointed at the real Trustee.
    let relay = Broker::start(BrokerConfig {
        relay: Some(RelayConfig {
            upstream_url: kbs.url(),
            upstream_ca_pem: kbs.ca_pem(),
            own: BTreeMap::from([(ATTACKER_DISK.to_owned(), attacker_key.clone())]),
        }),
        ..BrokerConfig::default()
    })
    .unwrap();
    let disk = bound_disk(&pin_config(&relay, ATTACKER_DISK, None), &attacker_key);
    let run = victim.unlock(&victim.config(&[], &disk.path), &[]);
    victim.assert_nothing_delivered(&run);
    assert!(
        relayed(&relay) > 0,
        "the drop-in node used the token's broker"
    );
    let v = run.verdict();
    let relay_log = relay.log().join("\n");
    assert!(
        v.contains("class=broker-denied") && v.contains("PolicyDeny"),
        "{v}\n{relay_log}"
    );
    // Trustee accepted the genuine evidence (a token was issued): only the trust anchors in
    // PCR 15 made the resource policy refuse.
    assert!(
        relay_log.contains("relay: POST /kbs/v0/attest -> 200"),
        "{relay_log}"
    );
}

/// A drop-in token whose server has an empty `cert` trusts the system CA bundle, as the
/// upstream pin does, but never silently: it is logged at warn (and the bundle's certificates
/// are part of the measured anchors). Our test broker's CA is not in that bundle: TLS fails.
#[test]
fn empty_pin_cert_trusts_the_system_bundle_loudly() {
    let node = Node::new();
    let (key, _) = operator_disk_key();
    let real = real_broker(&[&node.tpm], &key, None);
    let mut pin = pin_config(&real, NODE_DISK, None);
    pin["servers"][0]["cert"] = "".into();
    let disk = bound_disk(&pin, &key);
    let run = node.unlock(&node.config(&[], &disk.path), &[]);
    node.assert_nothing_delivered(&run);
    assert!(
        run.stderr
            .contains("has an empty cert in the LUKS2 token: trusting the system CA bundle"),
        "{}",
        run.stderr
    );
    assert!(run.verdict().contains("class=transport"), "{}", run.stderr);
}
