//! Interop with the real Trustee KBS (upstream 78962cd, `../shared/tools/trustee-kbs-78962cd`):
//! `kbs` on 127.0.0.1 over HTTPS with the built-in attestation service, driven by the real
//! `kbs-client`, against swtpm, cryptsetup and the agent binary. The policies the docs give are
//! loaded from docs/deploying.md as written, so the docs cannot drift from the broker.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::trustee::{doc_policy, Trustee};
use common::*;

/// One node: the one test world (its TPM, a LUKS2 image whose slot 1 holds its disk key, a
/// tmpfs for its secrets), with its config written for the real Trustee.
struct Node(World);

impl std::ops::Deref for Node {
    type Target = World;
    fn deref(&self) -> &World {
        &self.0
    }
}

impl Node {
    fn new() -> Node {
        Node(World::new())
    }

    fn kubelet(&self) -> PathBuf {
        self.secret_path()
    }

    /// The node's config: disk key and kubelet secret at `kbs`, with `extra` TOML on top.
    fn config(&self, url: &str, ca: &str, extra: &str) -> PathBuf {
        let text = format!(
            "disk_key = {DISK:?}\n\
             [tpm]\ntcti = {:?}\n[retry]\nmax_rounds = 1\ninitial_backoff_ms = 1\nmax_backoff_ms = 2\n\
             [luks]\ndevice = {:?}\nkeyslot = 1\n[measure]\nlog = {:?}\n\
             [[brokers]]\nurl = {url:?}\nca_cert = {ca:?}\n\
             [[secrets]]\nresource = {KUBELET:?}\npath = {:?}\n{extra}\n",
            self.tpm.tcti(),
            self.image.path.display().to_string(),
            self.work.path().join("measurements.log").display().to_string(),
            self.kubelet().display().to_string(),
        );
        let path = self.work.path().join("config.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    fn unlock(&self, config: &Path) -> Run {
        collect(Command::new(agent_bin()).args(unlock_args(config, &[])))
    }

    /// Register this node at `kbs`: its AK and PCR 11 (Trustee's default TPM appraisal then
    /// says `affirming`). A sample reference value is replaced, not appended.
    fn register(&self, kbs: &Trustee) {
        kbs.admin(&[
            "set-sample-reference-value",
            "trusted_aks",
            &ak_public(&self.tpm),
        ]);
        let pcr11 = pcr_by_tpm2_tools(&self.tpm, "sha256", 11);
        kbs.admin(&["set-sample-reference-value", "tpm_pcr11", &pcr11]);
    }

    /// A failed run left nothing (the world's fail-closed checks) and opened no volume.
    fn denied(&self, run: &Run, before: &str, class: &str) -> String {
        let v = self.failed(run, before, class);
        assert!(!v.contains("volume="), "{v}");
        v
    }
}

/// A KBS serving `node`'s disk key and kubelet credential with the affirming-only policy.
fn kbs_for(node: &Node) -> Trustee {
    let kbs = Trustee::start();
    kbs.set_resource(DISK, &node.disk_resource);
    kbs.set_resource(KUBELET, KUBELET_TOKEN);
    kbs.admin(&["set-resource-policy", "--affirming"]);
    kbs
}

#[test]
fn native_unlock_with_keyslot_and_secrets() {
    let node = Node::new();
    let kbs = kbs_for(&node);
    node.register(&kbs);
    let before = node.image.digest();
    let run = node.unlock(&node.config(&kbs.url(), &kbs.ca_pem(), ""));
    assert!(run.status.success(), "{}\n{}", run.stderr, kbs.log());
    let v = run.verdict();
    assert!(
        v.contains("verdict=ok platform=tpm") && v.contains("volume=verified"),
        "{v}"
    );
    assert_eq!(std::fs::read(node.kubelet()).unwrap(), KUBELET_TOKEN);
    assert_eq!(node.image.digest(), before);
}

/// Trustee's default appraisal passes an unregistered AK as `warning`: it is refused at the
/// resource fetch (`PolicyDeny`), not at `attest`, as docs/troubleshooting.md says.
#[test]
fn unregistered_ak_is_refused_at_the_fetch() {
    let node = Node::new();
    let kbs = kbs_for(&node);
    let before = node.image.digest();
    let run = node.unlock(&node.config(&kbs.url(), &kbs.ca_pem(), ""));
    let v = node.denied(&run, &before, "broker-denied");
    assert!(v.contains("step=fetch") && v.contains("PolicyDeny"), "{v}");
    let doc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/troubleshooting.md"),
    )
    .unwrap();
    assert!(
        doc.contains("an unregistered AK passes attestation as `warning` and is refused at the resource fetch"),
        "docs/troubleshooting.md must say where an unregistered AK is refused"
    );
}

#[test]
fn wrong_pcr_reference_is_refused() {
    let node = Node::new();
    let kbs = kbs_for(&node);
    node.register(&kbs);
    kbs.admin(&["set-sample-reference-value", "tpm_pcr11", &"ab".repeat(32)]);
    let before = node.image.digest();
    let run = node.unlock(&node.config(&kbs.url(), &kbs.ca_pem(), ""));
    let v = node.denied(&run, &before, "broker-denied");
    assert!(v.contains("PolicyDeny"), "{v}");
}

#[test]
fn wrong_ca_and_broker_down_are_transport_errors() {
    let node = Node::new();
    let kbs = kbs_for(&node);
    node.register(&kbs);
    let other = Trustee::start();
    let before = node.image.digest();
    let run = node.unlock(&node.config(&kbs.url(), &other.ca_pem(), ""));
    let v = node.denied(&run, &before, "transport");
    assert!(
        v.contains("UnknownIssuer") || v.contains("certificate"),
        "{v}"
    );
    let url = kbs.url();
    let ca = kbs.ca_pem();
    drop(kbs);
    let run = node.unlock(&node.config(&url, &ca, ""));
    let v = node.denied(&run, &before, "transport");
    assert!(v.contains("connection refused"), "{v}");
}

#[test]
fn missing_resource_is_refused_with_nothing_written() {
    let node = Node::new();
    let kbs = Trustee::start();
    kbs.set_resource(KUBELET, KUBELET_TOKEN);
    kbs.admin(&["set-resource-policy", "--affirming"]);
    node.register(&kbs);
    let before = node.image.digest();
    let run = node.unlock(&node.config(&kbs.url(), &kbs.ca_pem(), ""));
    let v = node.denied(&run, &before, "broker-denied");
    // What docs/troubleshooting.md says a missing resource looks like.
    assert!(
        v.contains("step=fetch") && v.contains("PluginInternalError"),
        "{v}"
    );
}

/// Init-data on a TPM node: PCR 8 gets exactly the one extend Trustee's TPM verifier requires,
/// the token carries the init-data claims, and the per-node resource policy of
/// docs/deploying.md (loaded as written) releases a node's path to that node only. A rerun in
/// the same boot leaves PCR 8 as it is; a PCR 8 holding anything else fails closed before any
/// contact.
#[test]
fn init_data_binds_a_tpm_node_and_the_docs_policy_releases_per_node() {
    let node = Node::new();
    let kbs = kbs_for(&node);
    node.register(&kbs);
    kbs.set_resource_policy(&doc_policy("init_data_claims"));
    let init = |uuid: &str| {
        format!("[init_data]\nbody = \"version = '0.1.0'\\nalgorithm = 'sha256'\\n[data]\\nuuid = '{uuid}'\\n\"\n")
    };
    let before = node.image.digest();
    let cfg = node.config(&kbs.url(), &kbs.ca_pem(), &init("node1"));
    let run = node.unlock(&cfg);
    assert!(run.status.success(), "{}\n{}", run.stderr, kbs.log());
    assert!(
        run.stderr
            .contains("extended PCR 8 with the init-data digest"),
        "{}",
        run.stderr
    );
    // PCR 8 = SHA-256(0^32 || SHA-256(body)), by tpm2-tools and hashlib.
    let body = "version = '0.1.0'\nalgorithm = 'sha256'\n[data]\nuuid = 'node1'\n";
    assert_eq!(
        pcr_by_tpm2_tools(&node.tpm, "sha256", 8),
        extend_by_hashlib("sha256", &"00".repeat(32), &[body.as_bytes()])
    );
    assert_eq!(std::fs::read(node.kubelet()).unwrap(), KUBELET_TOKEN);

    // Rerun in the same boot (PCR 15 moved on, which this policy does not check).
    std::fs::remove_file(node.kubelet()).unwrap();
    let run = node.unlock(&cfg);
    assert!(run.status.success(), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("PCR 8 already holds the init-data digest"),
        "{}",
        run.stderr
    );
    std::fs::remove_file(node.kubelet()).unwrap();
    std::fs::remove_dir(node.kubelet().parent().unwrap()).unwrap();

    // Another node (its own TPM, registered, affirming) with its own init-data asks for
    // node1's path: refused by the per-node policy.
    let other = Node::new();
    other.register(&kbs);
    let before_other = other.image.digest();
    let run = other.unlock(&other.config(&kbs.url(), &kbs.ca_pem(), &init("node2")));
    let v = other.denied(&run, &before_other, "broker-denied");
    assert!(v.contains("PolicyDeny"), "{v}");

    // The first node's TPM with other init-data: PCR 8 is taken, fail before any contact.
    let cfg = node.config(&kbs.url(), &kbs.ca_pem(), &init("node3"));
    let run = node.unlock(&cfg);
    let v = node.denied(&run, &before, "evidence");
    assert!(
        v.contains("init-data cannot be bound on this TPM: PCR 8"),
        "{v}"
    );
}

/// The attestation policy of docs/deploying.md, loaded as written as Trustee's `default_cpu`,
/// with the node's PCR 4/7/14 registered: the node reaches `affirming` and unlocks; with a
/// wrong PCR 7 it does not.
#[test]
fn docs_attestation_policy_loads_and_decides() {
    let node = Node::new();
    let kbs = kbs_for(&node);
    node.register(&kbs);
    kbs.set_attestation_policy("default_cpu", &doc_policy("tpm_pcrs_valid"));
    for pcr in [4, 7, 14] {
        let v = pcr_by_tpm2_tools(&node.tpm, "sha256", pcr);
        kbs.admin(&["set-sample-reference-value", &format!("tpm_pcr{pcr}"), &v]);
    }
    let run = node.unlock(&node.config(&kbs.url(), &kbs.ca_pem(), ""));
    assert!(run.status.success(), "{}\n{}", run.stderr, kbs.log());
    std::fs::remove_file(node.kubelet()).unwrap();
    std::fs::remove_dir(node.kubelet().parent().unwrap()).unwrap();

    kbs.admin(&["set-sample-reference-value", "tpm_pcr7", &"cd".repeat(32)]);
    let before = node.image.digest();
    let run = node.unlock(&node.config(&kbs.url(), &kbs.ca_pem(), ""));
    node.denied(&run, &before, "broker-denied");
}

/// The real `clevis` CLI with our binary as `clevis-encrypt-trustee` / `-decrypt-trustee`,
/// configured (TPM, retries) by a file in `$ATTEST_UNLOCK_CONFIG`.
struct Clevis {
    bin: tempfile::TempDir,
    config_file: PathBuf,
}

impl Clevis {
    fn for_node(node: &Node) -> Clevis {
        let bin = tempfile::tempdir().unwrap();
        for name in ["clevis-encrypt-trustee", "clevis-decrypt-trustee"] {
            std::os::unix::fs::symlink(agent_bin(), bin.path().join(name)).unwrap();
        }
        let config_file = bin.path().join("attest-unlock.toml");
        std::fs::write(
            &config_file,
            format!(
                "[tpm]\ntcti = {:?}\n[retry]\nmax_rounds = 1\ninitial_backoff_ms = 1\nmax_backoff_ms = 2\n[measure]\nlog = {:?}\n",
                node.tpm.tcti(),
                node.work.path().join("measurements.log").display().to_string()
            ),
        )
        .unwrap();
        Clevis { bin, config_file }
    }

    /// Run `clevis ARGS` with `input` on stdin; it must succeed; its stdout.
    fn run(&self, args: &[&str], input: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut child = Command::new("clevis")
            .args(args)
            .env(
                "PATH",
                format!(
                    "{}:{}",
                    self.bin.path().display(),
                    std::env::var("PATH").unwrap_or_default()
                ),
            )
            .env("ATTEST_UNLOCK_CONFIG", &self.config_file)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "clevis {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }
}

fn pin_config(kbs: &Trustee, path: &str) -> String {
    serde_json::json!({
        "servers": [{"url": kbs.url(), "cert": kbs.ca_pem()}],
        "path": path,
        "initdata": null,
        "num_retries": 1,
        "attestation_key": null,
    })
    .to_string()
}

/// The clevis pin path against the real KBS: the real `clevis` CLI runs our binary.
#[test]
fn clevis_pin_bind_pass_encrypt_decrypt() {
    let node = Node::new();
    let kbs = kbs_for(&node);
    node.register(&kbs);
    let clevis = Clevis::for_node(&node);
    let pin = pin_config(&kbs, DISK);
    let jwe = clevis.run(&["encrypt", "trustee", &pin], b"a secret");
    assert_eq!(clevis.run(&["decrypt"], &jwe), b"a secret");

    let img = LuksImage::recovery_only();
    let recovery = img.recovery_key.display().to_string();
    let device = img.path.display().to_string();
    clevis.run(
        &[
            "luks", "bind", "-y", "-k", &recovery, "-d", &device, "trustee", &pin,
        ],
        b"",
    );
    let pass = clevis.run(&["luks", "pass", "-d", &device, "-s", "1"], b"");
    assert!(
        opens_keyslot(&img.path, 1, &pass),
        "clevis luks pass opens slot 1"
    );
}

/// Trustee's provisioner plugin end to end: the operator provisions a VM; at its first boot
/// the pin binds the disk to `kbs+provisioner:///default/<uuid>/root` (the init-data that
/// the plugin requires is built from the path and bound into PCR 8); the next unlock reads
/// the token and opens the keyslot. Another node (its own init-data) is refused that path,
/// and after deprovisioning the node itself is refused.
#[test]
fn provisioner_plugin_bind_unlock_and_refusals() {
    let node = Node::new();
    let kbs = Trustee::start_with(true);
    kbs.admin(&["set-resource-policy", "--affirming"]);
    node.register(&kbs);
    let (uuid, path) = kbs.provision("node-a", "ocp");
    assert_eq!(path, format!("default/{uuid}/root"));
    let reference = format!("kbs+provisioner:///{path}");

    // First boot: bind with the pin (as Ignition's `clevis luks bind` does).
    let clevis = Clevis::for_node(&node);
    let img = LuksImage::recovery_only();
    let recovery = img.recovery_key.display().to_string();
    let device = img.path.display().to_string();
    clevis.run(
        &[
            "luks",
            "bind",
            "-y",
            "-k",
            &recovery,
            "-d",
            &device,
            "trustee",
            &pin_config(&kbs, &reference),
        ],
        b"",
    );

    // Every later boot: the native unlock from the token.
    let unlock_config = |n: &Node, extra: &str| {
        let text = format!(
            "{extra}\n[tpm]\ntcti = {:?}\n[retry]\nmax_rounds = 1\ninitial_backoff_ms = 1\nmax_backoff_ms = 2\n\
             [luks]\ndevice = {device:?}\n[measure]\nlog = {:?}\n\
             [[brokers]]\nurl = {:?}\nca_cert = {:?}\n",
            n.tpm.tcti(),
            n.work.path().join("measurements.log").display().to_string(),
            kbs.url(),
            kbs.ca_pem(),
        );
        let p = n.work.path().join("unlock.toml");
        std::fs::write(&p, text).unwrap();
        p
    };
    let run = node.unlock(&unlock_config(&node, ""));
    assert!(run.status.success(), "{}\n{}", run.stderr, kbs.log());
    assert!(run.verdict().contains("volume=verified"), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("PCR 8 already holds the init-data digest"),
        "the bind at first boot bound the same init-data: {}",
        run.stderr
    );

    // Another registered node whose init-data names its own VM asks for node-a's path.
    let other = Node::new();
    other.register(&kbs);
    let (_, other_path) = kbs.provision("node-b", "ocp");
    let init = format!(
        "[init_data]\nbody = \"version = '0.1.0'\\nalgorithm = 'sha256'\\n[data]\\n'trustee.kbs.resource' = 'kbs+provisioner:///{other_path}'\\n\""
    );
    let before = img.digest();
    let run = other.unlock(&unlock_config(&other, &init));
    assert!(!run.status.success(), "{}", run.stderr);
    assert_eq!(img.digest(), before);
    let v = run.verdict();
    eprintln!("other node: {v}");
    assert!(
        v.contains("class=broker-denied")
            && v.contains("step=fetch")
            && v.contains("PluginInternalError"),
        "{v}"
    );

    // Deprovisioned: refused, nothing unlocked.
    let (status, text) = kbs.admin_http(
        "DELETE",
        &format!("/kbs/v0/provisioner/provision/{uuid}"),
        "",
    );
    assert!((200..300).contains(&status), "deprovision: {status} {text}");
    node.register(&kbs);
    let run = node.unlock(&unlock_config(&node, ""));
    assert!(!run.status.success(), "{}", run.stderr);
    let v = run.verdict();
    eprintln!("deprovisioned: {v}");
    assert!(!v.contains("volume="), "{}", run.stderr);
    assert!(
        v.contains("step=fetch") && v.contains("PluginInternalError"),
        "deprovisioned, as docs/deploying.md says: {v}"
    );
}

/// The `sh` block of docs/deploying.md that contains `marker`, continuation lines joined.
fn doc_shell(doc: &str, marker: &str) -> String {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../docs")
            .join(doc),
    )
    .unwrap();
    let blocks: Vec<&str> = text
        .split("```sh\n")
        .skip(1)
        .filter_map(|b| b.split("```").next())
        .filter(|b| b.contains(marker))
        .collect();
    assert_eq!(
        blocks.len(),
        1,
        "one sh block with {marker:?} in docs/{doc}"
    );
    blocks[0].to_owned()
}

/// Run the ```sh block of docs/`doc` that contains `marker` as an operator would, against
/// `kbs`: in `dir`, which gets the KBS's CA (`kbs-ca.pem`) and an admin token, with the real
/// `kbs-client` and then `bin` (if any) first in PATH, `$UUID` = node1 and only the URL
/// replaced. Returns what it printed.
fn run_doc_shell(kbs: &Trustee, doc: &str, marker: &str, dir: &Path, bin: Option<&Path>) -> String {
    std::fs::write(dir.join("kbs-ca.pem"), kbs.ca_pem()).unwrap();
    std::fs::write(dir.join("admin-token"), "not checked by InsecureAllowAll").unwrap();
    let script = doc_shell(doc, marker).replace(
        "KBS=https://kbs.example.com:8080",
        &format!("KBS={}", kbs.url()),
    );
    let client = common::shared_tools::unpack("trustee-kbs-78962cd", "kbs-client");
    let mut path = vec![client.parent().unwrap().to_path_buf()];
    path.extend(bin.map(Path::to_path_buf));
    path.reverse();
    let path = format!(
        "{}:{}",
        std::env::join_paths(path).unwrap().to_string_lossy(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = run_ok(
        Command::new("bash")
            .args(["-euo", "pipefail", "-c", &script])
            .current_dir(dir)
            .env("UUID", "node1")
            .env("PATH", path),
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The resource upload of docs/deploying.md runs as written (with the real `kbs-client`, its
/// `--admin-token-file` and `--cert-file`; only the URL is this KBS's), and a node then gets
/// both resources, the disk key in the operator's format.
#[test]
fn docs_resource_upload_runs_as_written() {
    let node = Node::new();
    let kbs = Trustee::start();
    kbs.admin(&["set-resource-policy", "--affirming"]);
    node.register(&kbs);
    let dir = secret_dir();
    std::fs::write(dir.path().join("bootstrap.kubeconfig"), KUBELET_TOKEN).unwrap();
    run_doc_shell(
        &kbs,
        "deploying.md",
        "set-resource --path",
        dir.path(),
        None,
    );
    // A node with both as secrets (no disk here): delivered, the key as the docs describe.
    let root = node.secrets.path().join("root.json");
    let text = format!(
        "[tpm]\ntcti = {:?}\n[retry]\nmax_rounds = 1\n[measure]\nlog = {:?}\n\
         [[brokers]]\nurl = {:?}\nca_cert = {:?}\n\
         [[secrets]]\nresource = {KUBELET:?}\npath = {:?}\n\
         [[secrets]]\nresource = {DISK:?}\npath = {:?}\n",
        node.tpm.tcti(),
        node.work
            .path()
            .join("measurements.log")
            .display()
            .to_string(),
        kbs.url(),
        kbs.ca_pem(),
        node.kubelet().display().to_string(),
        root.display().to_string(),
    );
    let cfg = node.work.path().join("secrets.toml");
    std::fs::write(&cfg, text).unwrap();
    let run = node.unlock(&cfg);
    assert!(run.status.success(), "{}\n{}", run.stderr, kbs.log());
    assert_eq!(std::fs::read(node.kubelet()).unwrap(), KUBELET_TOKEN);
    let key: serde_json::Value = serde_json::from_slice(&std::fs::read(&root).unwrap()).unwrap();
    assert_eq!(key["key_type"], "oct");
    assert_eq!(key["key"].as_str().unwrap().len(), 32, "{key}");
}

/// The key rotation of docs/operations.md runs as written against the real KBS and
/// `kbs-client` (the node's `attest-unlock` is the binary under test with this node's config):
/// the new key uploaded, the node rotated, the old key deleted; the node then unlocks with
/// the new key alone, its token following the new path.
#[test]
fn docs_key_rotation_runs_as_written() {
    let node = Node::new();
    let kbs = kbs_for(&node);
    node.register(&kbs);
    let cfg = node.config(&kbs.url(), &kbs.ca_pem(), "");
    let before = node.unlock(&cfg);
    assert!(before.status.success(), "{}\n{}", before.stderr, kbs.log());
    let dir = secret_dir();
    // `attest-unlock` as the node runs it: its config file, its kernel command line.
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let wrapper = bin.join("attest-unlock");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec {:?} \"$@\" --config {:?} --kernel-cmdline /dev/null\n",
            agent_bin().display().to_string(),
            cfg.display().to_string()
        ),
    )
    .unwrap();
    run_ok(Command::new("chmod").arg("755").arg(&wrapper));
    let printed = run_doc_shell(&kbs, "operations.md", "rotate --to", dir.path(), Some(&bin));
    assert!(
        printed.contains("rotated: keyslot=2 path=default/node1/root-2 added=2 removed=1"),
        "{printed}"
    );
    // The old key is gone from the KBS; the node boots with the new one, through its token.
    let run = node.unlock(&cfg);
    assert!(run.status.success(), "{}\n{}", run.stderr, kbs.log());
    assert!(
        run.stderr
            .contains("attest-unlock token 0 for keyslot 2 (default/node1/root-2)"),
        "{}",
        run.stderr
    );
    // The old path is deleted: asking for it (`--set` beats the token) is refused at the fetch.
    let old = collect(Command::new(agent_bin()).args(unlock_args(
        &cfg,
        &["--set".into(), format!("disk_key={DISK:?}")],
    )));
    assert!(
        old.verdict().contains("step=fetch") && old.verdict().contains("PluginInternalError"),
        "{}",
        old.stderr
    );
}
