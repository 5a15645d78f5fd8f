//! The fault knobs over real TLS on loopback, seen by a client set up like the agent's. The
//! end-to-end effect of every knob on the agent is in `agent/tests/faults.rs`; these check that
//! each knob does what it says at the wire, and that the default injects nothing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use test_kbs::{Broker, BrokerConfig, Endpoint, Faults, Reset, TlsFault};

mod common;
use common::{assert_error, Client};

fn broker(faults: Faults) -> Broker {
    Broker::start(BrokerConfig {
        faults,
        ..BrokerConfig::default()
    })
    .unwrap()
}

fn raw_auth(client: &Client) -> Result<ureq::http::Response<ureq::Body>, ureq::Error> {
    client
        .agent
        .post(format!("{}/kbs/v0/auth", client.base))
        .header("Content-Type", "application/json")
        .send(json!({"version": "0.4.0", "tee": "tpm", "extra-params": ""}).to_string())
}

#[test]
fn default_injects_nothing_and_set_faults_applies_at_once() {
    let broker = broker(Faults::default());
    let mut client = Client::new(&broker);
    let (status, body) = client.auth("0.4.0", "tpm");
    assert_eq!(status, 200);
    assert_eq!(body["nonce"].as_str().unwrap().len(), 44);
    assert!(client.cookie.is_some());
    assert!(broker.log().iter().all(|l| !l.starts_with("fault:")));

    broker.set_faults(Faults {
        status_for: Some((Endpoint::Auth, 503, None)),
        ..Faults::default()
    });
    let mut client = Client::new(&broker);
    assert_error(&client.auth("0.4.0", "tpm"), 503, "InjectedFault");

    broker.set_faults(Faults::default());
    assert_eq!(Client::new(&broker).auth("0.4.0", "tpm").0, 200);
}

#[test]
fn reply_knobs_change_the_challenge() {
    let broker = broker(Faults {
        drop_cookie: true,
        bad_nonce: Some("not base64".into()),
        ..Faults::default()
    });
    let mut client = Client::new(&broker);
    let (status, body) = client.auth("0.4.0", "tpm");
    assert_eq!((status, &body["nonce"]), (200, &json!("not base64")));
    assert_eq!(client.cookie, None);

    broker.set_faults(Faults {
        body_for: Some((Endpoint::Auth, b"{\"garbage".to_vec())),
        ..Faults::default()
    });
    let client = Client::new(&broker);
    let mut response = raw_auth(&client).unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.body_mut().read_to_string().unwrap(), "{\"garbage");
    // Errors are not replaced: the knob is about a successful reply's body.
    let (status, _) = Client::new(&broker).auth("9.9.9", "tpm");
    assert_eq!(status, 401);
}

#[test]
fn status_with_a_raw_body() {
    let broker = broker(Faults {
        status_for: Some((Endpoint::Resource, 401, Some("<html/>".into()))),
        ..Faults::default()
    });
    let client = Client::new(&broker);
    let mut response = client
        .agent
        .get(format!("{}/kbs/v0/resource/a/b/c", client.base))
        .call()
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    assert_eq!(response.body_mut().read_to_string().unwrap(), "<html/>");
}

#[test]
fn connection_breaks() {
    let broker = broker(Faults {
        reset_connection_on: Some((Endpoint::Auth, Reset::BeforeReply)),
        ..Faults::default()
    });
    assert!(raw_auth(&Client::new(&broker)).is_err());

    broker.set_faults(Faults {
        reset_connection_on: Some((Endpoint::Auth, Reset::HalfReply)),
        ..Faults::default()
    });
    let mut response = raw_auth(&Client::new(&broker)).unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert!(response.body_mut().read_to_vec().is_err(), "truncated body");
    assert!(broker
        .log()
        .iter()
        .any(|l| l == "fault: Auth: closing the connection after half the reply"));
}

#[test]
fn delays_and_drips_are_bounded_by_the_client_and_by_drop() {
    let broker = broker(Faults {
        delay_ms_for: Some((Endpoint::Auth, 20_000)),
        ..Faults::default()
    });
    let mut client = Client::new(&broker);
    client.agent = ureq::Agent::config_builder()
        .tls_config(client.agent.config().tls_config().clone())
        .timeout_per_call(Some(Duration::from_millis(200)))
        .build()
        .into();
    let started = Instant::now();
    assert!(raw_auth(&client).is_err());
    broker.set_faults(Faults {
        drip_ms_for: Some((Endpoint::Auth, 50)),
        ..Faults::default()
    });
    assert!(raw_auth(&client).is_err());
    // Dropping the broker wakes the sleeping and dripping connection threads.
    drop(broker);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn oversized_reply_is_streamed_as_far_as_the_client_reads() {
    let broker = broker(Faults {
        oversize_for: Some((Endpoint::Auth, 64 << 20)),
        ..Faults::default()
    });
    let mut response = raw_auth(&Client::new(&broker)).unwrap();
    assert_eq!(
        response.headers()["content-length"].to_str().unwrap(),
        (64_u64 << 20).to_string()
    );
    let err = response
        .body_mut()
        .with_config()
        .limit(1 << 20)
        .read_to_vec()
        .unwrap_err();
    assert!(matches!(err, ureq::Error::BodyExceedsLimit(_)), "{err}");
    drop(response);
    std::thread::sleep(Duration::from_millis(100));
    assert!(broker.bytes_streamed() < 16 << 20);
}

fn tls_error(fault: TlsFault) -> String {
    let broker = broker(Faults {
        tls: Some(fault),
        ..Faults::default()
    });
    raw_auth(&Client::new(&broker)).unwrap_err().to_string()
}

#[test]
fn tls_faults() {
    assert!(tls_error(TlsFault::Expired).contains("expired"));
    assert!(tls_error(TlsFault::WrongName).contains("not valid for name"));
    assert!(tls_error(TlsFault::PlainHttp).contains("InvalidContentType"));

    let silent = broker(Faults {
        tls: Some(TlsFault::Silent),
        ..Faults::default()
    });
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", silent.port())).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    stream.write_all(b"\x16\x03\x01\x00\x05hello").unwrap();
    let mut buf = [0_u8; 16];
    let read = stream.read(&mut buf);
    assert!(
        matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "{read:?}"
    );
}

#[test]
fn plain_http_serves_the_protocol_without_tls() {
    let broker = broker(Faults {
        tls: Some(TlsFault::PlainHttp),
        ..Faults::default()
    });
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut response = agent
        .post(format!("http://127.0.0.1:{}/kbs/v0/auth", broker.port()))
        .send(json!({"version": "0.4.0", "tee": "tpm", "extra-params": ""}).to_string())
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let body: Value = serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap();
    assert!(body["nonce"].is_string());
}
