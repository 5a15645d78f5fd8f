//! The fault-injection matrix: one test per fault, each run end to end (swtpm + test broker
//! with a fault knob + agent binary + real cryptsetup on a LUKS2 image file) with two retry
//! rounds allowed. Every test asserts the fail-closed guarantees: non-zero exit, the image
//! unchanged and not reported as verified or opened, no secret and no temporary file written,
//! exactly one verdict line with the expected class, step and attempts, and a message that
//! names the cause. Retryable classes (transport, broker-unavailable, broker-denied) use both
//! rounds (`attempts=2`); the others stop at once (`attempts=1`, or `attempts=0` when the
//! failure comes before any broker session).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;

use common::*;
use test_kbs::{Admission, Broker, BrokerConfig, Endpoint, Faults, JweFault, Reset, TlsFault};

const ERRORS: &str = "https://github.com/confidential-containers/kbs/errors/";

/// Two rounds, tiny backoff (a denial still waits at least max_backoff_ms / 2).
const RETRY: [&str; 6] = [
    "--set",
    "retry.max_rounds=2",
    "--set",
    "retry.initial_backoff_ms=1",
    "--set",
    "retry.max_backoff_ms=5",
];

/// What a failed run must say.
struct Want<'a> {
    class: &'a str,
    step: &'a str,
    /// `None`: the verdict carries no attempts (a config error stops before the flow).
    attempts: Option<u32>,
}

const fn want(class: &'static str, step: &'static str, attempts: u32) -> Want<'static> {
    Want {
        class,
        step,
        attempts: Some(attempts),
    }
}

impl World {
    /// A broker that serves this world, with `faults`.
    fn broker(&self, faults: Faults) -> Broker {
        Broker::start(BrokerConfig {
            faults,
            ..self.broker_config()
        })
        .unwrap()
    }

    /// Run with two retry rounds plus `extra` arguments and assert the fail-closed guarantees;
    /// returns the verdict line.
    fn fails(&self, config: &AgentConfig, extra: &[&str], want: Want<'_>) -> String {
        let mut args: Vec<String> = RETRY.iter().map(|s| (*s).to_owned()).collect();
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let before = self.image.digest();
        let run = unlock_with(config, self.work.path(), &args);
        self.check(&run, &before, &want)
    }

    fn check(&self, run: &Run, before: &str, want: &Want<'_>) -> String {
        let v = self.failed(run, before, want.class);
        eprintln!("{}: {v}", std::thread::current().name().unwrap_or("?"));
        assert!(!v.contains("volume="), "nothing verified or opened: {v}");
        match want.attempts {
            Some(n) => {
                assert!(
                    v.contains(&format!("step={} ", want.step)),
                    "want step {}: {v}",
                    want.step
                );
                assert!(
                    v.contains(&format!("attempts={n} ")),
                    "want attempts={n}: {v}"
                );
                assert!(v.contains("(nothing unlocked, no secret written)"), "{v}");
            }
            None => assert!(!v.contains("attempts="), "{v}"),
        }
        v
    }
}

/// The verdict names the cause: every one of `words` appears in it.
fn says(verdict: &str, words: &[&str]) {
    for w in words {
        assert!(verdict.contains(w), "verdict should say {w:?}: {verdict}");
    }
}

/// A Trustee error body.
fn kbs_error(variant: &str, detail: &str) -> Option<String> {
    Some(serde_json::json!({"type": format!("{ERRORS}{variant}"), "detail": detail}).to_string())
}

fn status(endpoint: Endpoint, code: u16, body: Option<String>) -> Faults {
    Faults {
        status_for: Some((endpoint, code, body)),
        ..Faults::default()
    }
}

fn body(endpoint: Endpoint, bytes: &[u8]) -> Faults {
    Faults {
        body_for: Some((endpoint, bytes.to_vec())),
        ..Faults::default()
    }
}

fn jwe(fault: JweFault) -> Faults {
    Faults {
        jwe: Some(fault),
        ..Faults::default()
    }
}

fn tls(fault: TlsFault) -> Faults {
    Faults {
        tls: Some(fault),
        ..Faults::default()
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The `total=...ms` of a verdict.
fn total_ms(verdict: &str) -> f64 {
    verdict
        .split_whitespace()
        .find_map(|w| w.strip_prefix("total="))
        .and_then(|t| t.trim_end_matches("ms").parse().ok())
        .unwrap_or_else(|| panic!("no total= in {verdict}"))
}

// ---- transport: retried (attempts=2) ----

#[test]
fn broker_not_listening() {
    let w = World::new();
    let any = w.broker(Faults::default());
    let mut c = w.agent_config(&any);
    c.brokers = vec![(format!("https://127.0.0.1:{}", free_port()), any.ca_pem())];
    let v = w.fails(&c, &[], want("transport", "auth", 2));
    says(&v, &["connection refused"]);
}

#[test]
fn slow_auth_beyond_request_timeout() {
    let w = World::new();
    let b = w.broker(Faults {
        delay_ms_for: Some((Endpoint::Auth, 3000)),
        ..Faults::default()
    });
    let v = w.fails(
        &w.agent_config(&b),
        &["--set", "timeouts.request_ms=300"],
        want("transport", "auth", 2),
    );
    says(&v, &["timed out"]);
    // Two attempts cut at 300 ms each, not two waits for the 3 s reply.
    assert!(total_ms(&v) < 2500.0, "{v}");
}

#[test]
fn resource_reply_dripped_slower_than_request_timeout() {
    let w = World::new();
    let b = w.broker(Faults {
        drip_ms_for: Some((Endpoint::Resource, 50)),
        ..Faults::default()
    });
    let v = w.fails(
        &w.agent_config(&b),
        &["--set", "timeouts.request_ms=300"],
        want("transport", "fetch", 2),
    );
    says(&v, &["resource: timed out"]);
    // The whole reply would take ~25 s to drip; each attempt is cut at 300 ms.
    assert!(total_ms(&v) < 5000.0, "{v}");
}

#[test]
fn tls_handshake_never_answered() {
    let w = World::new();
    let b = w.broker(tls(TlsFault::Silent));
    let v = w.fails(
        &w.agent_config(&b),
        &["--set", "timeouts.request_ms=300"],
        want("transport", "auth", 2),
    );
    says(&v, &["auth: timed out"]);
    assert!(total_ms(&v) < 2500.0, "{v}");
}

#[test]
fn server_certificate_from_another_ca() {
    let w = World::new();
    let b = w.broker(Faults::default());
    let other = Broker::start(BrokerConfig::default()).unwrap();
    let mut c = w.agent_config(&b);
    c.brokers = vec![(b.url(), other.ca_pem())];
    let v = w.fails(&c, &[], want("transport", "auth", 2));
    says(&v, &["TLS", "invalid peer certificate"]);
    assert!(b.log().is_empty(), "no request reached the broker");
}

#[test]
fn plain_http_broker_when_https_is_configured() {
    let w = World::new();
    let b = w.broker(tls(TlsFault::PlainHttp));
    let v = w.fails(&w.agent_config(&b), &[], want("transport", "auth", 2));
    says(&v, &["TLS"]);
    assert!(
        b.log().iter().any(|l| l.contains("plain HTTP")),
        "{:?}",
        b.log()
    );
}

// ---- broker unavailable (5xx): retried ----

#[test]
fn policy_deny_untrusted_ak() {
    let w = World::new();
    let b = Broker::start(BrokerConfig {
        trusted_aks: Vec::new(),
        ..w.broker_config()
    })
    .unwrap();
    let v = w.fails(&w.agent_config(&b), &[], want("broker-denied", "fetch", 2));
    says(&v, &["denied (PolicyDeny)", "Access denied by policy"]);
    assert!(b.released().is_empty());
}

#[test]
fn denial_detail_is_cut_to_one_bounded_line() {
    let w = World::new();
    let detail = format!(
        "Access denied\r\nby policy\t\"quoted\"\n{}",
        "x".repeat(200_000)
    );
    let b = w.broker(status(
        Endpoint::Resource,
        401,
        kbs_error("PolicyDeny", &detail),
    ));
    let v = w.fails(&w.agent_config(&b), &[], want("broker-denied", "fetch", 2));
    says(
        &v,
        &["denied (PolicyDeny): Access denied by policy 'quoted' xxx"],
    );
    assert!(v.len() < 1500, "{} bytes: {v}", v.len());
}

// ---- protocol mismatch: stops at once ----

#[test]
fn protocol_version_mismatch() {
    let w = World::new();
    let b = Broker::start(BrokerConfig {
        expected_version: "0.5.0".into(),
        ..w.broker_config()
    })
    .unwrap();
    let v = w.fails(
        &w.agent_config(&b),
        &[],
        want("protocol-mismatch", "auth", 1),
    );
    says(&v, &["protocol version mismatch", "expect =0.5.0"]);
}

// ---- bad replies: stop at once ----

#[test]
fn oversized_attest_reply() {
    let w = World::new();
    let mut big = br#"{"token":""#.to_vec();
    big.resize((1 << 20) + 4096, b'a');
    big.extend_from_slice(br#""}"#);
    let b = w.broker(body(Endpoint::Attest, &big));
    let v = w.fails(&w.agent_config(&b), &[], want("bad-reply", "attest", 1));
    says(&v, &["reply larger than 1048576 bytes"]);
}

#[test]
fn huge_reply_is_not_read_past_the_cap() {
    let w = World::new();
    let huge: u64 = 256 << 20;
    let b = w.broker(Faults {
        oversize_for: Some((Endpoint::Auth, huge)),
        ..Faults::default()
    });
    let v = w.fails(&w.agent_config(&b), &[], want("bad-reply", "auth", 1));
    says(&v, &["reply larger than 1048576 bytes"]);
    // The agent stopped reading at the cap: the broker could write only that plus what the
    // socket buffers held, far from the 256 MiB it offered.
    let sent = b.bytes_streamed();
    assert!(sent < 16 << 20, "the agent read {sent} bytes");
}

#[test]
fn html_200_from_a_captive_portal_is_retried() {
    for (endpoint, step) in [(Endpoint::Auth, "auth"), (Endpoint::Resource, "fetch")] {
        let w = World::new();
        let b = w.broker(body(
            endpoint,
            b"\n<!DOCTYPE html><html>Sign in to the network</html>",
        ));
        let v = w.fails(
            &w.agent_config(&b),
            &[],
            want("broker-unavailable", step, 2),
        );
        says(&v, &["HTTP 200 with an HTML body"]);
    }
}

/// A broker's words reach the console without a control byte: no escape sequence can clear
/// the screen, move the cursor or forge a log line.
#[test]
fn escape_sequences_from_the_broker_never_reach_the_console() {
    let w = World::new();
    let detail = "\u{1b}[2J\u{1b}[1;1Hattest-unlock: verdict=ok platform=tpm\r\u{9b}31m\u{7}";
    let b = w.broker(status(
        Endpoint::Attest,
        401,
        kbs_error("PolicyDeny\u{1b}[5m", detail),
    ));
    let config = w.agent_config(&b);
    let run = unlock_with(&config, w.work.path(), &RETRY.map(str::to_owned));
    assert!(!run.status.success());
    for bad in ['\u{1b}', '\r', '\u{9b}', '\u{7}'] {
        assert!(
            !run.stderr.contains(bad),
            "{bad:?} reached stderr: {:?}",
            run.stderr
        );
    }
    let v = run.verdict();
    assert!(v.contains("\\x1b[2J"), "shown escaped: {v}");
    assert!(v.starts_with("attest-unlock: error: verdict=failed"), "{v}");
}

// ---- JWE: stop at once; the broker released, the agent refuses ----

fn jwe_fails(fault: JweFault, words: &[&str]) {
    let w = World::new();
    let b = w.broker(jwe(fault));
    let v = w.fails(&w.agent_config(&b), &[], want("jwe", "decrypt", 1));
    says(&v, &[&format!("cannot decrypt resource {DISK}")]);
    says(&v, words);
    assert!(b
        .log()
        .iter()
        .any(|l| l.starts_with("fault: Resource: JWE")));
}

#[test]
fn jwe_encrypted_to_another_key() {
    jwe_fails(JweFault::EncryptToOtherKey, &["key unwrap failed"]);
}

#[test]
fn jwe_ciphertext_tampered() {
    jwe_fails(JweFault::FlipCiphertext, &["authentication failed"]);
}

#[test]
fn jwe_tag_tampered() {
    jwe_fails(JweFault::FlipTag, &["authentication failed"]);
}

#[test]
fn jwe_iv_tampered() {
    jwe_fails(JweFault::FlipIv, &["authentication failed"]);
}

#[test]
fn jwe_protected_header_altered() {
    jwe_fails(JweFault::AlterProtected, &["authentication failed"]);
}

#[test]
fn jwe_unsupported_alg() {
    jwe_fails(
        JweFault::Alg("RSA-OAEP-256".into()),
        &["unsupported JWE alg 'RSA-OAEP-256'"],
    );
}

#[test]
fn jwe_unsupported_enc() {
    jwe_fails(
        JweFault::Enc("A128CBC-HS256".into()),
        &["unsupported JWE enc 'A128CBC-HS256'"],
    );
}

#[test]
fn jwe_replayed_from_previous_session() {
    let w = World::new();
    let b = w.broker(Faults::default());
    // A genuine earlier session (its secrets go elsewhere): the broker keeps what it served.
    let earlier = secret_dir();
    let mut c = w.agent_config(&b);
    c.secrets = vec![(KUBELET.to_owned(), earlier.path().join("kubelet"))];
    c.token_path = None;
    let run = unlock(&c, w.work.path());
    assert!(run.status.success(), "{}", run.stderr);
    b.set_faults(jwe(JweFault::ReplayPrevious));
    let v = w.fails(&w.agent_config(&b), &[], want("jwe", "decrypt", 1));
    says(
        &v,
        &[
            &format!("cannot decrypt resource {DISK}"),
            "key unwrap failed",
        ],
    );
    assert!(b
        .log()
        .iter()
        .any(|l| l.contains("JWE of default/node1/root: ReplayPrevious")));
}

// ---- load shedding: "not now" with Retry-After ----

/// A broker that sheds load answers the attestation 503 with Retry-After; the agent waits as
/// asked and resends the same attestation in the same session: one auth and one evidence
/// collection for the whole unlock, one extra request for the wait.
#[test]
fn not_now_with_retry_after_resends_the_attestation_in_the_same_session() {
    let w = World::new();
    let broker = Broker::start(BrokerConfig {
        admission: Some(Admission {
            max_in_flight: 1,
            service_ms: 2500,
            retry_after: true,
        }),
        ..w.broker_config()
    })
    .unwrap();
    // Another node's attestation holds the only slot for 2.5 s (admitted before it is
    // read, so any body will do).
    let url = format!("{}/kbs/v0/attest", broker.url());
    let ca = broker.ca_pem();
    let holder = std::thread::spawn(move || {
        let cert = ureq::tls::parse_pem(ca.as_bytes())
            .find_map(|i| match i {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                _ => None,
            })
            .unwrap();
        let tls = ureq::tls::TlsConfig::builder()
            .root_certs(ureq::tls::RootCerts::Specific(std::sync::Arc::new(vec![
                cert,
            ])))
            .unversioned_rustls_crypto_provider(std::sync::Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .build();
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .tls_config(tls)
            .http_status_as_error(false)
            .build()
            .into();
        agent.post(&url).send("{}").map(|r| r.status().as_u16())
    });
    let waited = std::time::Instant::now();
    while broker.admission_stats().attest_admitted == 0 {
        assert!(
            !holder.is_finished() && waited.elapsed().as_secs() < 20,
            "the holding attestation never reached the broker: {:?}",
            holder.join().map(|r| r.map_err(|e| e.to_string()))
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // The world's tiny backoff cap would cut the broker's wait short (the cap wins).
    let mut args: Vec<String> = [
        "--set",
        "retry.max_rounds=4",
        "--set",
        "retry.max_backoff_ms=30000",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    args.extend(["-v".to_owned()]);
    let run = unlock_with(&w.agent_config(&broker), w.work.path(), &args);
    assert!(run.status.success(), "{}", run.stderr);
    assert_ne!(holder.join().unwrap().unwrap(), 503);
    // Told 2 s while 2.5 s of the slot remain, the agent may come back just before it is
    // free, and be told to wait again.
    let attempts: u64 = run
        .verdict()
        .split_whitespace()
        .find_map(|w| w.strip_prefix("attempts="))
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!((2..=3).contains(&attempts), "{}", run.verdict());
    assert!(
        run.stderr.contains("as the broker asked (Retry-After: 2)")
            && run
                .stderr
                .contains("resending the attestation in the same session"),
        "{}",
        run.stderr
    );
    // One session for all of it: one auth, each refusal one request.
    let s = broker.admission_stats();
    assert_eq!(
        (s.auth, s.attest_rejected, s.attest_admitted),
        (1, attempts - 1, 2),
        "{s:?}"
    );
}

// ---- LUKS ----

#[test]
fn malformed_luks_token() {
    let w = World::new();
    let token = serde_json::json!({
        "type": "clevis",
        "keyslots": ["1"],
        "jwe": {"protected": "!!garbage!!", "encrypted_key": "", "iv": "x", "ciphertext": "%", "tag": "y"},
    });
    let file = w.work.path().join("token.json");
    std::fs::write(&file, token.to_string()).unwrap();
    run_ok(
        Command::new("cryptsetup")
            .args(["token", "import", "--json-file"])
            .arg(&file)
            .arg(&w.image.path),
    );
    let b = w.broker(Faults::default());
    let mut c = w.agent_config(&b);
    c.disk_key = None; // read the disk key's JWE from the LUKS2 token
    let v = w.fails(&c, &[], want("luks", "token", 0));
    says(
        &v,
        &[
            "LUKS2 token",
            "no usable clevis trustee token",
            "invalid clevis JWE",
        ],
    );
    assert!(b.log().is_empty(), "broker contacted: {:?}", b.log());
}

#[test]
fn luks_device_absent() {
    let w = World::new();
    let b = w.broker(Faults::default());
    let mut c = w.agent_config(&b);
    c.image = Some(w.work.path().join("no-such-disk.img"));
    // The header is read (for a rotation's token) before any broker: nothing is fetched.
    let v = w.fails(
        &c,
        &["--set", "luks.device_timeout_ms=200"],
        want("luks", "token", 0),
    );
    says(&v, &["no-such-disk.img does not exist"]);
    assert!(b.log().is_empty(), "broker contacted: {:?}", b.log());
}

#[test]
fn released_key_does_not_open_the_slot() {
    let w = World::new();
    let mut bc = w.broker_config();
    bc.resources.insert(
        DISK.to_owned(),
        br#"{"key_type":"oct","key":"not the key"}"#.to_vec(),
    );
    let b = Broker::start(bc).unwrap();
    let v = w.fails(&w.agent_config(&b), &[], want("luks", "unlock", 1));
    says(&v, &["does not open", "keyslot 1"]);
}

// ---- evidence ----

#[test]
fn tpm_absent() {
    let w = World::new();
    let b = w.broker(Faults::default());
    let mut c = w.agent_config(&b);
    c.tcti = "device:/dev/tpm-that-does-not-exist".into();
    let v = w.fails(&c, &[], want("evidence", "detect", 0));
    says(&v, &["tpm-that-does-not-exist"]);
    assert!(b.log().is_empty(), "broker contacted: {:?}", b.log());
}

// ---- deliver: staging fails before the unlock ----

#[test]
fn secret_destination_parent_is_a_file() {
    let w = World::new();
    let b = w.broker(Faults::default());
    let other = secret_dir();
    let blocker = other.path().join("file");
    std::fs::write(&blocker, b"").unwrap();
    let mut c = w.agent_config(&b);
    c.secrets = vec![(KUBELET.to_owned(), blocker.join("secret"))];
    let v = w.fails(&c, &[], want("deliver", "stage", 1));
    says(&v, &["cannot write secret", "Not a directory"]);
    assert_eq!(walk(other.path()), vec![blocker.clone()]);
    assert_eq!(std::fs::read(&blocker).unwrap(), b"");
}

#[test]
fn secret_destination_on_persistent_filesystem() {
    let w = World::new();
    let b = w.broker(Faults::default());
    let persistent = persistent_dir();
    let mut c = w.agent_config(&b);
    c.secrets = vec![(KUBELET.to_owned(), persistent.path().join("kubelet"))];
    let v = w.fails(&c, &[], want("deliver", "stage", 1));
    says(&v, &["not on tmpfs"]);
    assert!(walk(persistent.path()).is_empty());
}

#[test]
fn disk_full_while_writing_a_secret() {
    let w = World::new();
    let mut bc = w.broker_config();
    bc.resources.insert(KUBELET.to_owned(), vec![b'k'; 8192]);
    let b = Broker::start(bc).unwrap();
    // A 4 KiB tmpfs, mounted in a private mount namespace around the agent; the shell lists it
    // after the agent exits (the mount vanishes with the namespace).
    let mount_point = secret_dir();
    let full = mount_point.path().to_owned();
    let mut c = w.agent_config(&b);
    c.secrets = vec![(KUBELET.to_owned(), full.join("kubelet"))];
    c.token_path = Some(full.join("token.jwt"));
    let args: Vec<String> = RETRY.iter().map(|s| (*s).to_owned()).collect();
    let cfg = write_config(&c, w.work.path());
    let script = r#"dir=$1; shift
mount -t tmpfs -o size=4k,mode=0700 tmpfs "$dir" || exit 99
"$@"; rc=$?
echo "left-in-tmpfs:[$(ls -A "$dir" | tr '\n' ' ')]" >&2
exit $rc"#;
    let before = w.image.digest();
    let run = collect(
        Command::new("unshare")
            .args(["--mount", "sh", "-c", script, "sh"])
            .arg(&full)
            .arg(agent_bin())
            .args(unlock_args(&cfg, &args)),
    );
    assert_ne!(run.status.code(), Some(99), "mount failed: {}", run.stderr);
    let v = w.check(&run, &before, &want("deliver", "stage", 1));
    says(&v, &["cannot write secret", "No space left on device"]);
    assert!(
        run.stderr.contains("left-in-tmpfs:[]"),
        "a partial file was left: {}",
        run.stderr
    );
    assert!(entries(&full).is_empty());
}

#[test]
fn secret_destination_is_a_directory() {
    let w = World::new();
    let b = w.broker(Faults::default());
    let other = secret_dir();
    let dest = other.path().join("token.jwt");
    std::fs::create_dir(&dest).unwrap();
    let mut c = w.agent_config(&b);
    c.token_path = Some(dest.clone());
    let v = w.fails(&c, &[], want("deliver", "stage", 1));
    says(&v, &["cannot write secret", "token.jwt"]);
    assert_eq!(
        entries(other.path()),
        vec![dest],
        "only the directory itself"
    );
}

// ---- config ----

#[test]
fn plain_http_broker_url_is_refused() {
    let w = World::new();
    let b = w.broker(Faults::default());
    let mut c = w.agent_config(&b);
    c.brokers = vec![(b.url().replace("https://", "http://"), b.ca_pem())];
    let v = w.fails(
        &c,
        &[],
        Want {
            class: "config",
            step: "",
            attempts: None,
        },
    );
    says(&v, &["must start with https://"]);
    assert!(b.log().is_empty(), "broker contacted: {:?}", b.log());
}

// ---- the matrix: one case a row ----

/// The broker-fault matrix, one case a row: the fault the test broker injects, extra agent
/// arguments, the verdict's class, step and attempts, the words it must say, and (`nothing
/// released`) that the broker released nothing. Every row also gets [`World::fails`]'s
/// guarantees: nothing unlocked, nothing written, one verdict line. The cases that need more
/// than this (their own broker config, several runs, their own checks) are the tests above.
macro_rules! matrix {
    ($($name:ident: $faults:expr, [$($arg:expr),*] => $want:expr, says [$($word:expr),* $(,)?] $(, $nothing:ident released)?;)*) => {$(
        #[test]
        fn $name() {
            let w = World::new();
            let b = w.broker($faults);
            let v = w.fails(&w.agent_config(&b), &[$($arg),*], $want);
            says(&v, &[$($word),*]);
            $(matrix!(@$nothing b);)?
        }
    )*};
    (@nothing $b:ident) => {
        assert!($b.released().is_empty(), "released {:?}", $b.released());
    };
}

#[rustfmt::skip]
matrix! {
    connection_closed_before_auth_reply:
        Faults { reset_connection_on: Some((Endpoint::Auth, Reset::BeforeReply)), ..Faults::default() }, []
        => want("transport", "auth", 2), says ["auth:"], nothing released;
    connection_closed_mid_resource_reply:
        Faults { reset_connection_on: Some((Endpoint::Resource, Reset::HalfReply)), ..Faults::default() }, []
        => want("transport", "fetch", 2), says ["resource:"];
    slow_resource_beyond_request_timeout:
        Faults { delay_ms_for: Some((Endpoint::Resource, 3000)), ..Faults::default() }, ["--set", "timeouts.request_ms=300"]
        => want("transport", "fetch", 2), says ["resource: timed out"];
    server_certificate_expired:
        tls(TlsFault::Expired), []
        => want("transport", "auth", 2), says ["TLS", "invalid peer certificate: certificate expired"];
    server_certificate_for_another_name:
        tls(TlsFault::WrongName), []
        => want("transport", "auth", 2), says ["TLS", "certificate not valid for name '127.0.0.1'"];
    http_500_on_auth:
        status(Endpoint::Auth, 500, None), []
        => want("broker-unavailable", "auth", 2), says ["HTTP 500", "broker unavailable"];
    http_502_on_attest:
        status(Endpoint::Attest, 502, Some("<html>bad gateway</html>".into())), []
        => want("broker-unavailable", "attest", 2), says ["attest: HTTP 502"];
    http_503_on_resource:
        status(Endpoint::Resource, 503, None), []
        => want("broker-unavailable", "fetch", 2), says ["resource: HTTP 503"], nothing released;
    // ---- broker denied (401): retried with the long backoff ----
    token_not_found_on_resource:
        status(Endpoint::Resource, 401, kbs_error("TokenNotFound", "Attestation Token not found")), []
        => want("broker-denied", "fetch", 2), says ["denied (TokenNotFound)"];
    generic_attestation_error_on_attest:
        status(Endpoint::Attest, 401, kbs_error("AttestationError", "Attestation error: RCAR handshake Attest failed")), []
        => want("broker-denied", "attest", 2), says ["denied (AttestationError)", "RCAR handshake Attest failed"];
    forbidden_403_on_resource:
        status(Endpoint::Resource, 403, kbs_error("PolicyDeny", "Access denied by policy")), []
        => want("broker-denied", "fetch", 2), says ["denied (PolicyDeny)"];
    garbage_json_challenge:
        body(Endpoint::Auth, b"{\"nonce\": <<garbage"), []
        => want("bad-reply", "auth", 1), says ["auth: bad reply: invalid JSON"];
    wrong_shape_attest_reply:
        body(Endpoint::Attest, br#"{"tokens":["a.b.c"]}"#), []
        => want("bad-reply", "attest", 1), says ["attest: bad reply: invalid JSON", "token"];
    challenge_nonce_not_base64:
        Faults { bad_nonce: Some("not base64 at all!".into()), ..Faults::default() }, []
        => want("bad-reply", "auth", 1), says ["nonce is not standard base64"];
    challenge_nonce_too_short:
        Faults { bad_nonce: Some("AAECAw==".into()), ..Faults::default() }, []
        => want("bad-reply", "auth", 1), says ["nonce is 4 bytes, fewer than 16"];
    session_cookie_missing:
        Faults { drop_cookie: true, ..Faults::default() }, []
        => want("bad-reply", "auth", 1), says ["no kbs-session-id cookie"];
    session_cookie_changes_on_attest:
        Faults { change_cookie_on_attest: true, ..Faults::default() }, []
        => want("bad-reply", "attest", 1), says ["changed the session cookie"], nothing released;
    unauthorized_without_a_kbs_error_body:
        status(Endpoint::Auth, 401, Some("<html>login</html>".into())), []
        => want("broker-unavailable", "auth", 2), says ["HTTP 401 without a KBS error body", "not a KBS reply"];
    // ---- a hostile or misrouted broker: what is not a KBS reply is retried like a 5xx (an ingress
    // or captive portal during a rollout); what a KBS says is kept to one bounded, escaped line ----
    redirect_on_auth_is_retried_not_followed:
        status(Endpoint::Auth, 302, Some(String::new())), []
        => want("broker-unavailable", "auth", 2), says ["HTTP 302 redirect, not followed"];
    bare_404_from_an_ingress_is_retried:
        status(Endpoint::Auth, 404, Some("<html><body>default backend - 404</body></html>".into())), []
        => want("broker-unavailable", "auth", 2), says ["HTTP 404 without a KBS error body"];
    too_many_requests_is_retried:
        status(Endpoint::Attest, 429, Some(String::new())), []
        => want("broker-unavailable", "attest", 2), says ["HTTP 429"];
    not_found_404_on_resource:
        status(Endpoint::Resource, 404, kbs_error("InvalidRequestPath", "Request path is invalid")), []
        => want("bad-reply", "fetch", 1), says ["HTTP 404"];
    resource_reply_is_json_but_not_a_jwe:
        body(Endpoint::Resource, br#"{"key_type":"oct","key":"x"}"#), []
        => want("jwe", "decrypt", 1), says ["malformed JWE"];
    tpm_error_mid_quote_missing_persistent_ak:
        Faults::default(), ["--set", "tpm.ak_handle=0x81000099"]
        => want("evidence", "prepare", 1), says ["TPM has no AK at persistent handle 0x81000099"], nothing released;
}
