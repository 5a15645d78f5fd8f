//! The `trustee` pin driven by the real clevis CLI from Debian: `clevis encrypt/decrypt`,
//! `clevis luks bind/list/pass` on a LUKS2 image, and `attest-unlock unlock` reading the token
//! that clevis wrote. swtpm, the test broker and cryptsetup are real.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::*;
use test_kbs::{Broker, BrokerConfig};

const KEY_PATH: &str = "default/node1/root";

struct Pin {
    node: PinNode,
    /// The broker's key resource, `{"key_type":"oct","key":...}`.
    key_resource: Vec<u8>,
}

impl std::ops::Deref for Pin {
    type Target = PinNode;
    fn deref(&self) -> &PinNode {
        &self.node
    }
}

impl Pin {
    fn new() -> Pin {
        let (resource, _) = operator_disk_key();
        let resources = BTreeMap::from([(KEY_PATH.to_owned(), resource.clone())]);
        Pin {
            node: PinNode::start(resources, None),
            key_resource: resource,
        }
    }

    /// The pin config exactly as an Ignition `luks[].clevis.custom.config` would carry it.
    fn config(&self) -> String {
        serde_json::json!({
            "servers": [{"url": self.broker.url(), "cert": self.broker.ca_pem()}],
            "path": KEY_PATH,
            "initdata": null,
            "num_retries": 1,
            "attestation_key": null,
        })
        .to_string()
    }

    /// The loopback registration servers speak plain HTTP: opt in from the (measured) file.
    fn allow_http(&self) {
        let text = std::fs::read_to_string(&self.config_file).unwrap();
        std::fs::write(
            &self.config_file,
            format!("insecure_allow_http = true\n{text}"),
        )
        .unwrap();
    }

    /// `clevis encrypt trustee` of a secret with AK registration at `url` (uuid node-uuid-1).
    fn encrypt_registering(&self, url: &str) -> std::process::Output {
        let mut config: serde_json::Value = serde_json::from_str(&self.config()).unwrap();
        config["attestation_key"] =
            serde_json::json!({"registration": {"url": url, "cert": "", "uuid": "node-uuid-1"}});
        let mut enc = self.cmd("clevis");
        enc.args(["encrypt", "trustee", &config.to_string()]);
        self.piped(enc, b"secret")
    }

    fn piped(&self, mut cmd: Command, input: &[u8]) -> std::process::Output {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        child.wait_with_output().unwrap()
    }
}

fn header(jwe: &str) -> serde_json::Value {
    let protected = jwe.split('.').next().unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(protected).unwrap()).unwrap()
}

#[test]
fn clevis_encrypt_decrypt_round_trip() {
    let pin = Pin::new();
    let mut enc = pin.cmd("clevis");
    enc.args(["encrypt", "trustee", &pin.config()]);
    let out = pin.piped(enc, b"a LUKS passphrase");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let jwe = String::from_utf8(out.stdout).unwrap();
    assert_eq!(jwe.split('.').count(), 5, "compact JWE: {jwe}");
    let h = header(&jwe);
    assert_eq!(h["alg"], "dir");
    assert_eq!(h["enc"], "A256GCM");
    assert_eq!(h["clevis"]["pin"], "trustee");
    assert_eq!(h["clevis"]["path"], KEY_PATH);
    assert_eq!(h["clevis"]["servers"][0]["url"], pin.broker.url().as_str());
    assert_eq!(
        h["clevis"]["trustee"]["path"], KEY_PATH,
        "nested copy for clevis tools"
    );

    let mut dec = pin.cmd("clevis");
    dec.arg("decrypt");
    let out = pin.piped(dec, jwe.as_bytes());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"a LUKS passphrase");

    // An independent JOSE implementation (jose, from latchset) decrypts it with the key the
    // upstream pin would use: a JWK whose `k` is the bytes of the resource's `key` string.
    let resource: serde_json::Value = serde_json::from_slice(&pin.key_resource).unwrap();
    let k = URL_SAFE_NO_PAD.encode(resource["key"].as_str().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let jwk = dir.path().join("key.jwk");
    std::fs::write(&jwk, serde_json::json!({"kty": "oct", "k": k}).to_string()).unwrap();
    let mut jose = Command::new("jose");
    jose.args(["jwe", "dec", "-i-", "-k"]).arg(&jwk);
    let out = pin.piped(jose, jwe.as_bytes());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"a LUKS passphrase");
    // Two attestations (encrypt and decrypt), each releasing the key once.
    assert_eq!(
        pin.broker.released(),
        vec![KEY_PATH.to_owned(), KEY_PATH.to_owned()]
    );
}

#[test]
fn decrypt_fails_closed_when_the_broker_denies() {
    let pin = Pin::new();
    let mut enc = pin.cmd("clevis");
    enc.args(["encrypt", "trustee", &pin.config()]);
    let jwe = pin.piped(enc, b"secret").stdout;
    // A second broker with the same CA is not possible; instead point the JWE at a broker
    // that does not trust this TPM's AK by re-encrypting the config with it.
    let denying = Broker::start(BrokerConfig {
        resources: BTreeMap::from([(KEY_PATH.to_owned(), b"{}".to_vec())]),
        ..BrokerConfig::default()
    })
    .unwrap();
    let mut h = header(std::str::from_utf8(&jwe).unwrap());
    let server = serde_json::json!({"url": denying.url(), "cert": denying.ca_pem()});
    h["clevis"]["servers"][0] = server.clone();
    h["clevis"]["trustee"]["servers"][0] = server;
    let mut parts: Vec<String> = std::str::from_utf8(&jwe)
        .unwrap()
        .split('.')
        .map(str::to_owned)
        .collect();
    parts[0] = URL_SAFE_NO_PAD.encode(h.to_string());
    let mut dec = pin.cmd("clevis");
    dec.arg("decrypt");
    let out = pin.piped(dec, parts.join(".").as_bytes());
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "nothing may be printed on failure");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("class=broker-denied"), "{err}");
    // One verdict, as from `unlock` (the pin printed two).
    let verdicts = err.lines().filter(|l| l.contains("verdict=")).count();
    assert_eq!(verdicts, 1, "{err}");
}

fn luks_dump(img: &Path) -> String {
    String::from_utf8(run_ok(Command::new("cryptsetup").arg("luksDump").arg(img)).stdout).unwrap()
}

#[test]
fn clevis_luks_bind_pass_and_native_unlock_from_the_token() {
    let pin = Pin::new();
    let img = LuksImage::recovery_only();
    let mut bind = pin.cmd("clevis");
    bind.args(["luks", "bind", "-y", "-k"])
        .arg(&img.recovery_key)
        .arg("-d")
        .arg(&img.path)
        .args(["trustee", &pin.config()]);
    let out = bind.output().unwrap();
    assert!(
        out.status.success(),
        "{:?}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let list = run_ok(
        pin.cmd("clevis")
            .args(["luks", "list", "-d"])
            .arg(&img.path),
    );
    let list = String::from_utf8(list.stdout).unwrap();
    // clevis shows pins it does not know as "unknown pin"; it found our config nested under
    // `trustee` (with the upstream pin's flat header it prints nothing at all).
    assert_eq!(list.trim(), "1: unknown pin 'trustee'", "{list}");

    // clevis added keyslot 1 with PBKDF2 and 1000 iterations.
    let dump = luks_dump(&img.path);
    let slot1 = dump.split("  1: luks2").nth(1).expect("keyslot 1");
    assert!(slot1.contains("PBKDF:      pbkdf2"), "{dump}");
    assert!(slot1.contains("Iterations: 1000"), "{dump}");

    // clevis luks pass gives back the passphrase (running our decrypt), and it opens slot 1.
    let pass = run_ok(
        pin.cmd("clevis")
            .args(["luks", "pass", "-d"])
            .arg(&img.path)
            .args(["-s", "1"]),
    );
    assert!(opens_keyslot(&img.path, 1, &pass.stdout));

    // Native unlock: the agent reads the clevis token itself, attests and checks slot 1.
    let before = img.digest();
    let out = Command::new(agent_bin())
        .args([
            "unlock",
            "--verify-only",
            "--kernel-cmdline",
            "/dev/null",
            "--config",
        ])
        .arg(&pin.config_file)
        .arg("--set")
        .arg(format!("luks.device={:?}", img.path.display().to_string()))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("trustee clevis token 0 for keyslot 1"),
        "{err}"
    );
    assert!(
        err.contains("verdict=ok") && err.contains("volume=verified"),
        "{err}"
    );
    assert_eq!(img.digest(), before);
}

#[test]
fn native_unlock_without_token_fails_closed_with_a_clear_reason() {
    let pin = Pin::new();
    let img = LuksImage::recovery_only();
    let report = secret_dir();
    let report_file = report.path().join("failure");
    let out = Command::new(agent_bin())
        .args([
            "unlock",
            "--verify-only",
            "--kernel-cmdline",
            "/dev/null",
            "--config",
        ])
        .arg(&pin.config_file)
        .arg("--failure-report")
        .arg(&report_file)
        .arg("--set")
        .arg(format!("luks.device={:?}", img.path.display().to_string()))
        .arg("--set")
        .arg(format!(
            "brokers=[{{url={:?},ca_cert={:?}}}]",
            pin.broker.url(),
            pin.broker.ca_pem()
        ))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("class=luks") && err.contains("no clevis trustee token"),
        "{err}"
    );
    let text = std::fs::read_to_string(&report_file).unwrap();
    assert!(text.starts_with("attest-unlock: boot stopped"), "{text}");
    assert!(text.contains("class:    luks"), "{text}");
    assert!(
        pin.broker.log().is_empty(),
        "broker contacted: {:?}",
        pin.broker.log()
    );
    let _ = &pin.tpm;
}

/// A one-request HTTP server on 127.0.0.1 that records what it was sent and answers 201, like
/// the trusted-execution-clusters registration server.
fn registration_server() -> (String, std::thread::JoinHandle<String>) {
    registration_server_answering("201 Created", "")
}

/// [`registration_server`] answering `status` with `answer`.
fn registration_server_answering(
    status: &'static str,
    answer: &'static str,
) -> (String, std::thread::JoinHandle<String>) {
    use std::io::{BufRead, BufReader, Read};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/register", listener.local_addr().unwrap());
    let handle = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut head = String::new();
        let mut len = 0usize;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
            head.push_str(&line);
            if line == "\r\n" {
                break;
            }
        }
        let mut body = vec![0u8; len];
        reader.read_exact(&mut body).unwrap();
        let mut stream = stream;
        let reply = format!(
            "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
            answer.len()
        );
        stream.write_all(reply.as_bytes()).unwrap();
        format!("{head}{}", String::from_utf8(body).unwrap())
    });
    (url, handle)
}

/// A trust-on-first-use registration over plain HTTP lets a network attacker swap the AK:
/// refused unless a measured layer opts in, and never contacted.
#[test]
fn registration_over_plain_http_needs_an_explicit_opt_in() {
    let pin = Pin::new();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}/register", listener.local_addr().unwrap());
    let out = pin.encrypt_registering(&url);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("class=config") && err.contains("must start with https://"),
        "{err}"
    );
    assert!(
        listener.accept().is_err(),
        "the registration server was contacted"
    );
    assert!(pin.broker.log().is_empty(), "{:?}", pin.broker.log());
}

/// The pin's `path` goes into the resource URL sent with the attested session's cookie.
#[test]
fn pin_path_is_validated_before_any_contact() {
    let pin = Pin::new();
    let mut config: serde_json::Value = serde_json::from_str(&pin.config()).unwrap();
    config["path"] = "../../x?y#z".into();
    let mut enc = pin.cmd("clevis");
    enc.args(["encrypt", "trustee", &config.to_string()]);
    let out = pin.piped(enc, b"secret");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("repo/type/tag"), "{err}");
    assert!(pin.broker.log().is_empty(), "{:?}", pin.broker.log());
}

#[test]
fn encrypt_registers_the_ak_first() {
    let pin = Pin::new();
    pin.allow_http();
    let (url, server) = registration_server();
    let out = pin.encrypt_registering(&url);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("registering the AK over plain HTTP")
            && err.contains("set by the initramfs config file"),
        "{err}"
    );
    let request = server.join().unwrap();
    assert!(request.starts_with("PUT /register "), "{request}");
    let body: serde_json::Value =
        serde_json::from_str(request.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["uuid"], "node-uuid-1");
    // The PEM registered is the AK `attest-unlock ak` reports (and the broker trusts).
    let ak = run_ok(
        Command::new(agent_bin())
            .args(["ak", "--kernel-cmdline", "/dev/null", "--set"])
            .arg(format!("tpm.tcti={}", pin.tpm.tcti())),
    );
    let ak = String::from_utf8(ak.stdout).unwrap();
    let pem: String = ak.lines().skip(1).map(|l| format!("{l}\n")).collect();
    assert_eq!(body["attestation_key"].as_str().unwrap().trim(), pem.trim());
}

/// A registration server that refuses the node (another AK is registered for its uuid: a
/// reinstalled node or a swapped TPM) is a denial the operator must act on, reported as
/// `broker-denied` with the server's words, not as a malformed reply; no key is fetched.
#[test]
fn refused_registration_is_a_denial() {
    let pin = Pin::new();
    pin.allow_http();
    let (url, server) =
        registration_server_answering("409 Conflict", "node already registered with another AK");
    let out = pin.encrypt_registering(&url);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(out.stdout.is_empty());
    assert!(
        err.contains("class=broker-denied") && err.contains("node already registered"),
        "{err}"
    );
    server.join().unwrap();
    assert!(pin.broker.log().is_empty(), "{:?}", pin.broker.log());
}

/// What `clevis-decrypt-trustee` gets on stdin is its caller's input: garbage there is a
/// usage error (`class=config`), not a LUKS failure, and nothing is printed on stdout.
#[test]
fn malformed_jwe_on_stdin_is_an_input_error() {
    let pin = Pin::new();
    let mut dec = Command::new(pin.bin_dir.path().join("clevis-decrypt-trustee"));
    dec.env("ATTEST_UNLOCK_CONFIG", &pin.config_file);
    let out = pin.piped(dec, b"this.is.not.a.jwe");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert!(err.contains("class=config"), "{err}");
    assert!(pin.broker.log().is_empty(), "{:?}", pin.broker.log());
}

/// In the initramfs (the root holds `/etc/initrd-release`), `$ATTEST_UNLOCK_CONFIG` is
/// ignored: `systemd.setenv=` on the unmeasured kernel command line reaches the environment
/// of Ignition's disks stage, which runs the pin. On a booted system it names the config.
#[test]
fn the_config_variable_is_ignored_in_the_initramfs() {
    let root = tempfile::tempdir().unwrap();
    let named = root.path().join("planted-config.toml");
    let pin_config = r#"{"servers":[{"url":"https://127.0.0.1:9"}],"path":"default/n/root"}"#;
    let encrypt = || {
        let bin = tempfile::tempdir().unwrap();
        let pin = bin.path().join("clevis-encrypt-trustee");
        std::os::unix::fs::symlink(agent_bin(), &pin).unwrap();
        run_with_stdin(
            Command::new(&pin)
                .arg(pin_config)
                .env("ATTEST_UNLOCK_CONFIG", &named)
                .env("ATTEST_UNLOCK_ROOT", root.path()),
            b"secret",
        )
    };
    // A booted system: the named config is required, and it does not exist.
    let run = encrypt();
    assert!(!run.status.success());
    assert!(
        run.stderr.contains("planted-config.toml"),
        "the named config is read: {}",
        run.stderr
    );
    // The initramfs: the variable is ignored, said so, and the named file never read.
    std::fs::create_dir_all(root.path().join("etc")).unwrap();
    std::fs::write(root.path().join("etc/initrd-release"), "NAME=test\n").unwrap();
    let run = encrypt();
    assert!(
        run.stderr
            .contains("ATTEST_UNLOCK_CONFIG is ignored in the initramfs"),
        "{}",
        run.stderr
    );
    assert!(
        !run.stderr.contains("cannot read config"),
        "the named config must not be read: {}",
        run.stderr
    );
}
