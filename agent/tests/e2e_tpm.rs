//! End to end on the host: swtpm + test broker + agent binary + real cryptsetup on a LUKS2
//! image file. Each test checks what a user would: the verdict line, the image, the files.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::os::unix::fs::PermissionsExt;

use common::*;
use test_kbs::{Broker, BrokerConfig};

impl World {
    /// Run and assert the fail-closed guarantees; returns the verdict line.
    fn expect_failure(&self, config: &AgentConfig, class: &str) -> String {
        let before = self.image.digest();
        let run = unlock(config, self.work.path());
        self.failed(&run, &before, class)
    }
}

#[test]
fn released_key_opens_keyslot_and_secret_is_delivered() {
    let w = World::new();
    let broker = Broker::start(w.broker_config()).unwrap();
    let before = w.image.digest();
    let sha1_before = pcr_by_tpm2_tools(&w.tpm, "sha1", 15);
    let sha256_before = pcr_by_tpm2_tools(&w.tpm, "sha256", 15);
    let config = w.agent_config(&broker);
    let run = unlock(&config, w.work.path());
    assert!(run.status.success(), "{}", run.stderr);

    // Trust anchors before any contact, post-release after: PCR 15 in every active bank is
    // H(H(old || H(anchors)) || H(release)), read by tpm2-tools and computed by hashlib.
    let anchors = anchors_event(&write_config(&config, w.work.path()));
    assert!(
        anchors.contains(&format!("broker {} ca-sha256=", broker.url())),
        "{anchors}"
    );
    assert!(
        anchors.contains(&format!("resource {DISK}\nresource {KUBELET}\n")),
        "{anchors}"
    );
    for (bank, before) in [("sha256", &sha256_before), ("sha1", &sha1_before)] {
        assert_eq!(
            pcr_by_tpm2_tools(&w.tpm, bank, 15),
            extend_by_hashlib(bank, before, &[anchors.as_bytes(), RELEASE_EVENT]),
            "{bank} bank"
        );
    }
    let log = std::fs::read_to_string(w.work.path().join("measurements.log")).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 2, "{log}");
    assert!(
        lines[0].starts_with("PCR 15 (")
            && lines[0].contains("event=attest-unlock:trust-anchors:v1"),
        "{log}"
    );
    assert!(
        lines[1].contains("event=attest-unlock:secrets-released:v1"),
        "{log}"
    );

    let verdict = run.verdict();
    assert!(verdict.contains("verdict=ok platform=tpm"), "{verdict}");
    assert!(verdict.contains("volume=verified"), "{verdict}");
    for step in [
        "anchors=",
        "keygen=",
        "auth=",
        "evidence=",
        "attest=",
        "fetch=",
        "decrypt=",
        "unlock=",
        "deliver=",
        "total=",
    ] {
        assert!(verdict.contains(step), "{step} missing: {verdict}");
    }

    let secret = w.secret_path();
    assert_eq!(
        std::fs::read(&secret).unwrap(),
        b"kubelet bootstrap token 1234"
    );
    let mode = std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let token = std::fs::read_to_string(w.secrets.path().join("token.jwt")).unwrap();
    assert_eq!(token.split('.').count(), 3, "token is a JWT");
    assert_eq!(
        w.image.digest(),
        before,
        "--verify-only must not change the image"
    );
    assert_eq!(broker.released(), vec![DISK.to_owned(), KUBELET.to_owned()]);

    // The released passphrase is the one in keyslot 1: check with cryptsetup directly.
    assert!(opens_keyslot(&w.image.path, 1, &w.passphrase));
}

#[test]
fn pcr_policy_mismatch_is_denied_and_nothing_happens() {
    let w = World::new();
    let mut bc = w.broker_config();
    bc.expected_pcrs.insert(7, "ff".repeat(32));
    let broker = Broker::start(bc).unwrap();
    let v = w.expect_failure(&w.agent_config(&broker), "broker-denied");
    assert!(v.contains("PolicyDeny"), "{v}");
    assert!(broker.released().is_empty());
    assert!(
        broker
            .log()
            .iter()
            .any(|l| l.contains("PCR") || l.contains("pcr")),
        "{:?}",
        broker.log()
    );
}

#[test]
fn untrusted_ak_is_denied() {
    let w = World::new();
    let mut bc = w.broker_config();
    bc.trusted_aks = vec![];
    let broker = Broker::start(bc).unwrap();
    let v = w.expect_failure(&w.agent_config(&broker), "broker-denied");
    assert!(v.contains("step=fetch"), "{v}");
    assert!(broker.released().is_empty());
}

#[test]
fn broker_cert_from_another_ca_fails_tls() {
    let w = World::new();
    let broker = Broker::start(w.broker_config()).unwrap();
    let other = Broker::start(BrokerConfig::default()).unwrap();
    let mut c = w.agent_config(&broker);
    c.brokers = vec![(broker.url(), other.ca_pem())];
    let v = w.expect_failure(&c, "transport");
    assert!(
        v.to_lowercase().contains("certificate") || v.contains("TLS"),
        "{v}"
    );
    assert!(broker.released().is_empty());
}

#[test]
fn broker_not_listening_is_a_transport_error() {
    let w = World::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let other = Broker::start(BrokerConfig::default()).unwrap();
    let mut c = w.agent_config(&other);
    c.brokers = vec![(format!("https://127.0.0.1:{port}"), other.ca_pem())];
    let v = w.expect_failure(&c, "transport");
    assert!(v.contains("step=auth"), "{v}");
    assert!(v.contains("refused"), "{v}");
}

#[test]
fn protocol_version_mismatch_stops_at_once() {
    let w = World::new();
    let mut bc = w.broker_config();
    bc.expected_version = "0.5.0".to_owned();
    let broker = Broker::start(bc).unwrap();
    let mut c = w.agent_config(&broker);
    // Even with retries allowed, a version mismatch is not retried.
    c.extra = String::new();
    let v = w.expect_failure(&c, "protocol-mismatch");
    assert!(v.contains("attempts=1 "), "{v}");
}

#[test]
fn key_that_does_not_open_the_slot_fails_in_unlock() {
    let w = World::new();
    let mut bc = w.broker_config();
    bc.resources.insert(
        DISK.to_owned(),
        br#"{"key_type":"oct","key":"not the key"}"#.to_vec(),
    );
    let broker = Broker::start(bc).unwrap();
    let v = w.expect_failure(&w.agent_config(&broker), "luks");
    assert!(v.contains("keyslot 1"), "{v}");
}

#[test]
fn absent_tpm_fails_before_contacting_the_broker() {
    let w = World::new();
    let broker = Broker::start(w.broker_config()).unwrap();
    let mut c = w.agent_config(&broker);
    c.tcti = "device:/dev/tpm-that-does-not-exist".to_owned();
    let v = w.expect_failure(&c, "evidence");
    assert!(v.contains("tpm-that-does-not-exist"), "{v}");
    assert!(
        broker.log().is_empty(),
        "broker was contacted: {:?}",
        broker.log()
    );
}

#[test]
fn missing_luks_device_fails_without_writing() {
    let w = World::new();
    let broker = Broker::start(w.broker_config()).unwrap();
    let mut c = w.agent_config(&broker);
    c.image = Some(w.work.path().join("no-such-disk.img"));
    let before = w.image.digest();
    let run = unlock_with(
        &c,
        w.work.path(),
        &["--set".into(), "luks.device_timeout_ms=200".into()],
    );
    let v = w.failed(&run, &before, "luks");
    assert!(v.contains("does not exist"), "{v}");
    assert!(
        broker.log().is_empty(),
        "broker contacted: {:?}",
        broker.log()
    );
}

#[test]
fn failover_first_broker_dead_second_serves() {
    let w = World::new();
    let good = Broker::start(w.broker_config()).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut c = w.agent_config(&good);
    c.brokers
        .insert(0, (format!("https://127.0.0.1:{port}"), good.ca_pem()));
    let run = unlock(&c, w.work.path());
    assert!(run.status.success(), "{}", run.stderr);
    let v = run.verdict();
    assert!(
        v.contains(&format!("broker={} ", good.url())) && v.contains("attempts=2 "),
        "{v}"
    );
    assert!(
        run.stderr.contains("refused"),
        "the first broker's failure is logged: {}",
        run.stderr
    );
}

#[test]
fn failover_first_broker_denies_second_serves() {
    let w = World::new();
    let good = Broker::start(w.broker_config()).unwrap();
    let mut deny = w.broker_config();
    deny.trusted_aks = vec![];
    let denying = Broker::start(deny).unwrap();
    let mut c = w.agent_config(&good);
    c.brokers.insert(0, (denying.url(), denying.ca_pem()));
    let run = unlock(&c, w.work.path());
    assert!(run.status.success(), "{}", run.stderr);
    let v = run.verdict();
    assert!(
        v.contains(&format!("broker={} ", good.url())) && v.contains("attempts=2 "),
        "{v}"
    );
    assert!(denying.released().is_empty());
    assert_eq!(good.released(), vec![DISK.to_owned(), KUBELET.to_owned()]);
}

#[test]
fn failure_report_explains_the_failure() {
    let w = World::new();
    let mut bc = w.broker_config();
    bc.trusted_aks = vec![];
    let broker = Broker::start(bc).unwrap();
    let report = w.work.path().join("failure");
    let mut c = w.agent_config(&broker);
    c.extra = format!("failure_report = {:?}\n", report.display().to_string());
    w.expect_failure(&c, "broker-denied");
    let text = std::fs::read_to_string(&report).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("attest-unlock: boot stopped"),
        "{text}"
    );
    for (label, want) in [
        ("device:", w.image.path.display().to_string()),
        ("broker:", broker.url()),
        ("step:", "fetch".to_owned()),
        ("class:", "broker-denied".to_owned()),
        ("check:", "trusted_aks".to_owned()),
    ] {
        let line = lines
            .iter()
            .find(|l| l.trim_start().starts_with(label))
            .unwrap_or_else(|| panic!("{label} missing: {text}"));
        assert!(line.contains(&want), "{label} should name {want}: {line}");
    }
    assert!(lines.len() <= 10, "one short block: {text}");
}

#[test]
fn retry_deadline_bounds_an_otherwise_endless_retry() {
    let w = World::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let other = Broker::start(BrokerConfig::default()).unwrap();
    let mut c = w.agent_config(&other);
    c.brokers = vec![(format!("https://127.0.0.1:{port}"), other.ca_pem())];
    let cfg = w.work.path().join("deadline.toml");
    std::fs::write(&cfg, c.toml()).unwrap();
    // Practically no round limit, a 400 ms deadline: the agent keeps retrying the dead
    // broker with backoff, then stops at the deadline instead of running forever.
    let out = std::process::Command::new(agent_bin())
        .args([
            "unlock",
            "--verify-only",
            "--kernel-cmdline",
            "/dev/null",
            "--config",
        ])
        .arg(&cfg)
        .args([
            "--set",
            "retry={max_rounds=100000,initial_backoff_ms=20,max_backoff_ms=100,deadline_ms=400}",
            "--set",
            &format!(
                "measure.log={:?}",
                w.work.path().join("m.log").display().to_string()
            ),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("retry deadline"), "{err}");
    let attempts: u32 = err
        .split("attempts=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    assert!(attempts >= 2, "retried before the deadline: {err}");
}
