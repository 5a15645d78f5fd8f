//! A quote made by a real (software) TPM with tpm2-tools, accepted by the broker.
//!
//! This is the strongest check the broker's verifier gets inside this crate: swtpm marshals and
//! signs the quote, tpm2-tools writes the AK's SubjectPublicKeyInfo, and nothing in the chain is
//! written by this project. It needs `swtpm` and tpm2-tools (`cargo xtask setup`).

// Helpers outside `#[test]` functions are test code too; clippy cannot tell.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use test_kbs::{Broker, BrokerConfig};

mod common;
use common::{assert_error, Client, TeeKey};

/// A swtpm process on two loopback ports, killed when dropped.
struct Swtpm {
    child: Child,
    port: u16,
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Finds a port `p` with `p + 1` also free, as swtpm needs both.
fn free_port_pair() -> u16 {
    loop {
        let first = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = first.local_addr().unwrap().port();
        if port < u16::MAX && TcpListener::bind((Ipv4Addr::LOCALHOST, port + 1)).is_ok() {
            return port;
        }
    }
}

impl Swtpm {
    fn start(state: &Path) -> Swtpm {
        for _ in 0..5 {
            let port = free_port_pair();
            let mut child = Command::new("swtpm")
                .arg("socket")
                .arg("--tpm2")
                .arg("--tpmstate")
                .arg(format!("dir={}", state.display()))
                .arg("--server")
                .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
                .arg("--ctrl")
                .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
                .args(["--flags", "startup-clear"])
                .stdout(Stdio::null())
                .spawn()
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if child.try_wait().unwrap().is_some() {
                    break; // Lost the port race; try another pair.
                }
                if TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok() {
                    return Swtpm { child, port };
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("swtpm did not start");
    }

    /// Runs one tpm2-tools command against this TPM in `dir`.
    fn tool(&self, dir: &Path, args: &[&str]) {
        let output = Command::new(args[0])
            .args(&args[1..])
            .current_dir(dir)
            .env(
                "TPM2TOOLS_TCTI",
                format!("swtpm:host=127.0.0.1,port={}", self.port),
            )
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

fn installed(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

#[test]
fn swtpm_quote_is_verified_and_affirming() {
    assert!(
        installed("swtpm") && installed("tpm2_quote"),
        "swtpm and tpm2-tools are required: run cargo xtask setup"
    );
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let work = dir.path();
    let tpm = Swtpm::start(&state);

    // swtpm has no resource manager: flush transient objects and sessions after each step.
    tpm.tool(
        work,
        &["tpm2_createek", "-c", "ek.ctx", "-G", "rsa", "-u", "ek.pub"],
    );
    tpm.tool(work, &["tpm2_flushcontext", "-t"]);
    tpm.tool(
        work,
        &[
            "tpm2_createak",
            "-C",
            "ek.ctx",
            "-c",
            "ak.ctx",
            "-G",
            "rsa",
            "-g",
            "sha256",
            "-s",
            "rsassa",
            "-u",
            "ak.der",
            "-f",
            "der",
        ],
    );
    tpm.tool(work, &["tpm2_flushcontext", "-t"]);
    tpm.tool(work, &["tpm2_flushcontext", "-s"]);

    // Measure something into PCR11 and compute the expected value by hand.
    let measurement: [u8; 32] = Sha256::digest(b"attest-unlock test measurement").into();
    tpm.tool(
        work,
        &[
            "tpm2_pcrextend",
            &format!("11:sha256={}", hex::encode(measurement)),
        ],
    );
    let mut extend = Sha256::new();
    extend.update([0_u8; 32]);
    extend.update(measurement);
    let expected_pcr11 = hex::encode(extend.finalize());

    let ak_public = STANDARD.encode(std::fs::read(work.join("ak.der")).unwrap());
    let mut config = BrokerConfig {
        trusted_aks: vec![ak_public.clone()],
        ..Default::default()
    };
    config.expected_pcrs.insert(11, expected_pcr11);
    config
        .resources
        .insert("node1/luks/root".into(), b"root volume key".to_vec());
    let broker = Broker::start(config).unwrap();
    let mut client = Client::new(&broker);

    let (status, challenge) = client.auth("0.4.0", "tpm");
    assert_eq!(status, 200);
    let nonce = challenge["nonce"].as_str().unwrap().to_string();
    let tee = TeeKey::new();
    let qualifying = hex::encode(&tee.binding_digest(&nonce)[..32]);

    tpm.tool(work, &["tpm2_pcrread", "sha256:all", "-o", "pcrs.bin"]);
    tpm.tool(
        work,
        &[
            "tpm2_quote",
            "-c",
            "ak.ctx",
            "-l",
            "sha256:all",
            "-q",
            &qualifying,
            "-m",
            "msg.bin",
            "-s",
            "sig.bin",
            "-g",
            "sha256",
        ],
    );
    tpm.tool(work, &["tpm2_flushcontext", "-t"]);

    let pcrs: Vec<String> = std::fs::read(work.join("pcrs.bin"))
        .unwrap()
        .chunks(32)
        .map(hex::encode)
        .collect();
    assert_eq!(pcrs.len(), 24);
    let evidence = |message: &[u8]| -> Value {
        json!({
            "init-data": null,
            "runtime-data": { "nonce": nonce, "tee-pubkey": tee.jwk },
            "tee-evidence": {
                "primary_evidence": {
                    "tpm_quote": {
                        "signature": STANDARD.encode(std::fs::read(work.join("sig.bin")).unwrap()),
                        "message": STANDARD.encode(message),
                        "pcrs": pcrs,
                    },
                    "ak_public": ak_public,
                },
                "additional_evidence": "",
            },
        })
    };
    let message = std::fs::read(work.join("msg.bin")).unwrap();

    // One flipped byte in the TPM's own message must break the signature.
    let mut tampered = message.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    let mut other = Client::new(&broker);
    let (_, other_challenge) = other.auth("0.4.0", "tpm");
    let mut body = evidence(&tampered);
    body["runtime-data"]["nonce"] = other_challenge["nonce"].clone();
    assert_error(
        &other.post("/kbs/v0/attest", &body),
        401,
        "AttestationError",
    );
    assert!(broker
        .log()
        .last()
        .unwrap()
        .contains("quote signature does not verify"));

    let (status, body) = client.post("/kbs/v0/attest", &evidence(&message));
    assert_eq!(status, 200, "{body} {:?}", broker.log());
    let claims: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(body["token"].as_str().unwrap().split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        claims["submods"]["cpu0"]["ear.status"],
        "affirming",
        "{:?}",
        broker.log()
    );
    let (status, jwe) = client.get("/kbs/v0/resource/node1/luks/root", None);
    assert_eq!(status, 200, "{jwe}");
    assert_eq!(tee.decrypt(&jwe), b"root volume key");
    assert_eq!(broker.released(), ["node1/luks/root"]);
}
