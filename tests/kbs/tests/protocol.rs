//! The broker over real TLS on loopback, driven the way the agent drives it (ureq + rustls),
//! with TPM quotes forged in the test: the quote structures are marshalled by hand here and
//! signed with a fixture RSA key, so the broker's tss-esapi parsing and `rsa` verification are
//! checked against an independent encoder.

// Helpers outside `#[test]` functions are test code too; clippy cannot tell.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use rsa::pkcs1v15::SigningKey;
use rsa::pkcs8::{DecodePrivateKey, EncodePublicKey};
use rsa::signature::{SignatureEncoding, Signer};
use rsa::RsaPrivateKey;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use test_kbs::{Broker, BrokerConfig};

mod common;
use common::{assert_error, Client, TeeKey};

const AK_PKCS8_DER: &[u8] = include_bytes!("data/test-ak-rsa2048.pk8.der");
const ATTEST_FAILED: &str = "Attestation error: RCAR handshake Attest failed";
const SECRET_PATH: &str = "default/key/disk";
const SECRET: &[u8] = b"a disk key that must only reach the TEE";

fn ak() -> RsaPrivateKey {
    RsaPrivateKey::from_pkcs8_der(AK_PKCS8_DER).unwrap()
}

/// `ak_public` as the agent sends it: standard base64 of the DER SubjectPublicKeyInfo.
fn ak_public(key: &RsaPrivateKey) -> String {
    STANDARD.encode(key.to_public_key().to_public_key_der().unwrap().as_bytes())
}

/// Deterministic PCR values standing in for a measured boot.
fn pcr_values() -> Vec<[u8; 32]> {
    (0..24_u8)
        .map(|i| Sha256::digest([i]).into())
        .collect::<Vec<[u8; 32]>>()
}

fn config_trusting(key: &RsaPrivateKey) -> BrokerConfig {
    let mut config = BrokerConfig {
        trusted_aks: vec![ak_public(key)],
        ..Default::default()
    };
    config
        .expected_pcrs
        .insert(11, hex::encode(pcr_values()[11]));
    config
        .resources
        .insert(SECRET_PATH.to_string(), SECRET.to_vec());
    config
}

/// Ways to spoil a forged quote, one at a time.
#[derive(Default, Clone)]
struct Spoil {
    nonce: Option<String>,
    extra_data: Option<Vec<u8>>,
    pcr_select: Option<Vec<u8>>,
    bank: Option<u16>,
    reported_pcr: Option<(usize, [u8; 32])>,
    attest_type: Option<u16>,
    signature_hash: Option<u16>,
    flip_signature_bit: bool,
}

fn tpm2b(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&u16::try_from(bytes.len()).unwrap().to_be_bytes());
    out.extend_from_slice(bytes);
}

/// Marshals a TPMS_ATTEST of a quote (TPM 2.0 Part 2, 10.12.12) by hand.
fn marshal_quote(
    attest_type: u16,
    extra: &[u8],
    bank: u16,
    select: &[u8],
    digest: &[u8],
) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&0xff54_4347_u32.to_be_bytes()); // TPM_GENERATED_VALUE
    out.extend_from_slice(&attest_type.to_be_bytes());
    let mut name = vec![0x00, 0x0b];
    name.extend_from_slice(&[0x5a; 32]);
    tpm2b(&mut out, &name); // qualifiedSigner
    tpm2b(&mut out, extra); // extraData
    out.extend_from_slice(&1234_u64.to_be_bytes()); // clockInfo.clock
    out.extend_from_slice(&1_u32.to_be_bytes()); // resetCount
    out.extend_from_slice(&0_u32.to_be_bytes()); // restartCount
    out.push(1); // safe
    out.extend_from_slice(&0x2019_1023_u64.to_be_bytes()); // firmwareVersion
    out.extend_from_slice(&1_u32.to_be_bytes()); // TPML_PCR_SELECTION.count
    out.extend_from_slice(&bank.to_be_bytes());
    out.push(u8::try_from(select.len()).unwrap());
    out.extend_from_slice(select);
    tpm2b(&mut out, digest); // pcrDigest
    out
}

/// Builds the attest body of a session, forging the quote as the `spoil` says.
fn forge_attestation(key: &RsaPrivateKey, tee: &TeeKey, nonce: &str, spoil: &Spoil) -> Value {
    let pcrs = pcr_values();
    let mut digest = Sha256::new();
    for pcr in &pcrs {
        digest.update(pcr);
    }
    let extra = spoil
        .extra_data
        .clone()
        .unwrap_or_else(|| tee.binding_digest(nonce)[..32].to_vec());
    let message = marshal_quote(
        spoil.attest_type.unwrap_or(0x8018),
        &extra,
        spoil.bank.unwrap_or(0x000b),
        spoil.pcr_select.as_deref().unwrap_or(&[0xff, 0xff, 0xff]),
        &digest.finalize(),
    );
    let mut signature = SigningKey::<Sha256>::new(key.clone())
        .sign(&message)
        .to_vec();
    if spoil.flip_signature_bit {
        signature[10] ^= 1;
    }
    let mut tpmt_signature = Vec::new();
    tpmt_signature.extend_from_slice(&0x0014_u16.to_be_bytes()); // TPM_ALG_RSASSA
    tpmt_signature.extend_from_slice(&spoil.signature_hash.unwrap_or(0x000b).to_be_bytes());
    tpm2b(&mut tpmt_signature, &signature);

    let mut reported: Vec<String> = pcrs.iter().map(hex::encode).collect();
    if let Some((index, value)) = spoil.reported_pcr {
        reported[index] = hex::encode(value);
    }
    json!({
        "init-data": null,
        "runtime-data": {
            "nonce": spoil.nonce.clone().unwrap_or_else(|| nonce.to_string()),
            "tee-pubkey": tee.jwk,
        },
        "tee-evidence": {
            "primary_evidence": {
                "tpm_quote": {
                    "signature": STANDARD.encode(tpmt_signature),
                    "message": STANDARD.encode(message),
                    "pcrs": reported,
                },
                "ak_public": ak_public(key),
                "uefi_event_log": "",
            },
            "additional_evidence": "",
        },
    })
}

/// Runs auth and attest for one client, returning the attest status and body.
fn attest(client: &mut Client, key: &RsaPrivateKey, tee: &TeeKey, spoil: &Spoil) -> (u16, Value) {
    let (status, challenge) = client.auth("0.4.0", "tpm");
    assert_eq!(status, 200, "{challenge}");
    let nonce = challenge["nonce"].as_str().unwrap().to_string();
    let body = forge_attestation(key, tee, &nonce, spoil);
    client.post("/kbs/v0/attest", &body)
}

#[test]
fn auth_issues_a_trustee_shaped_challenge() {
    let broker = Broker::start(BrokerConfig::default()).unwrap();
    let mut client = Client::new(&broker);
    let (status, body, set_cookie) = Client::finish(
        client
            .agent
            .post(format!("{}/kbs/v0/auth", broker.url()))
            .send(json!({"version": "0.4.0", "tee": "tpm", "extra-params": {}}).to_string())
            .unwrap(),
    );
    assert_eq!(status, 200);
    let nonce = body["nonce"].as_str().unwrap();
    assert_eq!(nonce.len(), 44);
    assert_eq!(STANDARD.decode(nonce).unwrap().len(), 32);
    assert_eq!(body["extra-params"], "");

    let set_cookie = set_cookie.unwrap();
    let (pair, attributes) = set_cookie.split_once("; ").unwrap();
    let id = pair.strip_prefix("kbs-session-id=").unwrap();
    assert_eq!(id.len(), 32);
    assert!(id
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    let expires = attributes.strip_prefix("Expires=").unwrap();
    assert!(
        expires.ends_with(" GMT") && expires.len() == 29,
        "{expires}"
    );
    assert!(!set_cookie.contains("Path"));

    // A second auth makes a different session and nonce.
    let (_, second) = client.auth("0.4.0", "tpm");
    assert_ne!(second["nonce"], body["nonce"]);
    assert!(broker.log().iter().any(|l| l.contains("challenge issued")));
}

#[test]
fn version_mismatch_is_401_with_the_trustee_detail() {
    let broker = Broker::start(BrokerConfig::default()).unwrap();
    let mut client = Client::new(&broker);
    let response = client.auth("0.3.0", "tpm");
    assert_error(&response, 401, "AttestationError");
    let detail = response.1["detail"].as_str().unwrap();
    assert!(detail.contains("Protocol Version Mismatch"), "{detail}");
    assert!(
        detail.contains("expect =0.4.0 while the request is 0.3.0"),
        "{detail}"
    );

    let strict = Broker::start(BrokerConfig {
        expected_version: "9.9.9".into(),
        ..Default::default()
    })
    .unwrap();
    let response = Client::new(&strict).auth("0.4.0", "tpm");
    assert_error(&response, 401, "AttestationError");
    assert!(strict.log()[0].contains("Protocol Version Mismatch"));
}

#[test]
fn unknown_tee_is_401() {
    let broker = Broker::start(BrokerConfig::default()).unwrap();
    let response = Client::new(&broker).auth("0.4.0", "no-such-tee");
    assert_error(&response, 401, "AttestationError");
}

#[test]
fn resource_without_session_is_token_not_found() {
    let broker = Broker::start(config_trusting(&ak())).unwrap();
    let mut client = Client::new(&broker);
    let response = client.get(&format!("/kbs/v0/resource/{SECRET_PATH}"), None);
    assert_error(&response, 401, "TokenNotFound");

    // A session that has only done auth is not attested either.
    client.auth("0.4.0", "tpm");
    let response = client.get(&format!("/kbs/v0/resource/{SECRET_PATH}"), None);
    assert_error(&response, 401, "TokenNotFound");

    // Nor is a made-up bearer token accepted.
    let response = client.get(
        &format!("/kbs/v0/resource/{SECRET_PATH}"),
        Some("e30.e30.AAAA"),
    );
    assert_error(&response, 401, "TokenVerifierError");
    assert!(broker.released().is_empty());
}

#[test]
fn trusted_quote_is_affirming_and_the_resource_decrypts() {
    let key = ak();
    let broker = Broker::start(config_trusting(&key)).unwrap();
    let mut client = Client::new(&broker);
    let tee = TeeKey::new();
    let (status, body) = attest(&mut client, &key, &tee, &Spoil::default());
    assert_eq!(status, 200, "{body} {:?}", broker.log());
    let token = body["token"].as_str().unwrap().to_string();
    let claims: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(token.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["submods"]["cpu0"]["ear.status"], "affirming");
    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(token.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header["alg"], "ES256");

    let (status, jwe) = client.get(&format!("/kbs/v0/resource/{SECRET_PATH}"), None);
    assert_eq!(status, 200, "{jwe}");
    assert_eq!(tee.decrypt(&jwe), SECRET);

    // The token alone authorises a client without the cookie, as with Trustee.
    let (status, jwe) =
        Client::new(&broker).get(&format!("/kbs/v0/resource/{SECRET_PATH}"), Some(&token));
    assert_eq!(status, 200, "{jwe}");
    assert_eq!(tee.decrypt(&jwe), SECRET);
    assert_eq!(broker.released(), [SECRET_PATH, SECRET_PATH]);

    // A missing resource and malformed paths.
    let missing = client.get("/kbs/v0/resource/default/key/other", None);
    assert_error(&missing, 401, "PluginInternalError");
    let bad_path = client.get("/kbs/v0/resource/default/key", None);
    assert_error(&bad_path, 404, "InvalidRequestPath");
    let unknown = client.get("/kbs/v0/nothing", None);
    assert_error(&unknown, 404, "PluginNotFound");
    let outside = client.get("/elsewhere", None);
    assert_eq!(outside.0, 404);

    let log = broker.log().join("\n");
    assert!(log.contains("ear.status affirming"), "{log}");
    assert!(
        log.contains(&format!("resource: {SECRET_PATH}: released")),
        "{log}"
    );
    assert!(!log.contains(std::str::from_utf8(SECRET).unwrap()));
    assert!(!log.contains(&token));
}

#[test]
fn untrusted_ak_is_warning_and_denied_by_policy() {
    let key = ak();
    let mut config = config_trusting(&key);
    config.trusted_aks.clear();
    let broker = Broker::start(config.clone()).unwrap();
    let mut client = Client::new(&broker);
    let tee = TeeKey::new();
    let (status, _) = attest(&mut client, &key, &tee, &Spoil::default());
    assert_eq!(status, 200);
    let denied = client.get(&format!("/kbs/v0/resource/{SECRET_PATH}"), None);
    assert_error(&denied, 401, "PolicyDeny");
    assert_eq!(denied.1["detail"], "Access denied by policy");
    assert!(broker.released().is_empty());
    let log = broker.log().join("\n");
    assert!(
        log.contains("ear.status warning: AK not in trusted_aks"),
        "{log}"
    );

    // Trustee's default resource policy releases at warning; so does --allow-warning.
    config.require_affirming = false;
    let lenient = Broker::start(config).unwrap();
    let mut client = Client::new(&lenient);
    attest(&mut client, &key, &tee, &Spoil::default());
    let (status, jwe) = client.get(&format!("/kbs/v0/resource/{SECRET_PATH}"), None);
    assert_eq!(status, 200);
    assert_eq!(tee.decrypt(&jwe), SECRET);
}

#[test]
fn unexpected_pcr_is_warning() {
    let key = ak();
    let mut config = config_trusting(&key);
    config.expected_pcrs.insert(7, "ab".repeat(32));
    let broker = Broker::start(config).unwrap();
    let mut client = Client::new(&broker);
    let (status, _) = attest(&mut client, &key, &TeeKey::new(), &Spoil::default());
    assert_eq!(status, 200);
    assert_error(
        &client.get(&format!("/kbs/v0/resource/{SECRET_PATH}"), None),
        401,
        "PolicyDeny",
    );
    let log = broker.log().join("\n");
    assert!(log.contains("PCR7 is"), "{log}");
}

#[test]
fn every_evidence_fault_is_a_generic_401_with_the_reason_logged() {
    let key = ak();
    let cases: Vec<(&str, Spoil)> = vec![
        (
            "nonce in the handshake session is different",
            Spoil {
                nonce: Some(STANDARD.encode([9_u8; 32])),
                ..Default::default()
            },
        ),
        (
            "not the first 32 bytes of the binding digest",
            Spoil {
                extra_data: Some(vec![0; 32]),
                ..Default::default()
            },
        ),
        (
            "expected exactly sha256:0-23",
            Spoil {
                pcr_select: Some(vec![0xff, 0xf7, 0xff]),
                ..Default::default()
            },
        ),
        (
            "expected sha256",
            Spoil {
                bank: Some(0x0004),
                ..Default::default()
            },
        ),
        (
            "does not match SHA-256 of the supplied PCR values",
            Spoil {
                reported_pcr: Some((4, [0xee; 32])),
                ..Default::default()
            },
        ),
        (
            "not a quote",
            Spoil {
                attest_type: Some(0x8017),
                ..Default::default()
            },
        ),
        (
            "not SHA-256",
            Spoil {
                signature_hash: Some(0x000c),
                ..Default::default()
            },
        ),
        (
            "quote signature does not verify",
            Spoil {
                flip_signature_bit: true,
                ..Default::default()
            },
        ),
    ];
    let broker = Broker::start(config_trusting(&key)).unwrap();
    for (reason, spoil) in cases {
        let mut client = Client::new(&broker);
        let response = attest(&mut client, &key, &TeeKey::new(), &spoil);
        assert_error(&response, 401, "AttestationError");
        assert_eq!(response.1["detail"], ATTEST_FAILED);
        let last = broker.log().last().unwrap().clone();
        assert!(
            last.contains("rejected") && last.contains(reason),
            "expected {reason:?} in {last:?}"
        );
        // The failed session cannot fetch anything.
        assert_error(
            &client.get(&format!("/kbs/v0/resource/{SECRET_PATH}"), None),
            401,
            "TokenNotFound",
        );
    }

    // Attest without any session cookie.
    let mut client = Client::new(&broker);
    let response = client.post("/kbs/v0/attest", &json!({}));
    assert_error(&response, 401, "AttestationError");
    assert!(broker.log().last().unwrap().contains("cookie not found"));

    // A tee-pubkey changed after the quote was made breaks the binding.
    let mut client = Client::new(&broker);
    let (_, challenge) = client.auth("0.4.0", "tpm");
    let tee = TeeKey::new();
    let mut body = forge_attestation(
        &key,
        &tee,
        challenge["nonce"].as_str().unwrap(),
        &Spoil::default(),
    );
    body["runtime-data"]["tee-pubkey"] = TeeKey::new().jwk;
    assert_error(
        &client.post("/kbs/v0/attest", &body),
        401,
        "AttestationError",
    );
    assert!(broker.log().last().unwrap().contains("binding digest"));
    assert!(broker.released().is_empty());
}

#[test]
fn tee_pubkey_with_members_trustee_drops_is_refused() {
    let key = ak();
    let broker = Broker::start(config_trusting(&key)).unwrap();
    let mut client = Client::new(&broker);
    let mut tee = TeeKey::new();
    tee.jwk["use"] = json!("enc");
    let response = attest(&mut client, &key, &tee, &Spoil::default());
    assert_error(&response, 401, "AttestationError");
    let last = broker.log().last().unwrap().clone();
    assert!(
        last.contains("members Trustee drops before hashing (use)"),
        "{last}"
    );
}

#[test]
fn broker_is_send_and_sync_and_hides_secrets_in_debug() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Broker>();
    let debug = format!("{:?}", config_trusting(&ak()));
    assert!(
        debug.contains(&format!("<{} bytes>", SECRET.len())),
        "{debug}"
    );
    assert!(!debug.contains("must only reach"), "{debug}");
}

#[test]
fn unsupported_tee_key_is_refused_at_release() {
    let key = ak();
    let broker = Broker::start(config_trusting(&key)).unwrap();
    let mut client = Client::new(&broker);
    let mut tee = TeeKey::new();
    tee.jwk["crv"] = json!("P-384");
    let (status, _) = attest(&mut client, &key, &tee, &Spoil::default());
    assert_eq!(status, 200, "{:?}", broker.log());
    let response = client.get(&format!("/kbs/v0/resource/{SECRET_PATH}"), None);
    assert_error(&response, 401, "JweError");
    assert!(response.1["detail"]
        .as_str()
        .unwrap()
        .contains("not supported by test-kbs"));
}

#[test]
fn jose_cli_decrypts_the_released_jwe() {
    assert!(
        std::process::Command::new("jose")
            .arg("alg")
            .output()
            .is_ok(),
        "the jose CLI is required: run cargo xtask setup"
    );
    let key = ak();
    let broker = Broker::start(config_trusting(&key)).unwrap();
    let mut client = Client::new(&broker);
    let tee = TeeKey::new();
    attest(&mut client, &key, &tee, &Spoil::default());
    let (status, jwe) = client.get(&format!("/kbs/v0/resource/{SECRET_PATH}"), None);
    assert_eq!(status, 200);

    let dir = tempfile::tempdir().unwrap();
    let mut private_jwk = tee.jwk.clone();
    private_jwk["d"] = json!(URL_SAFE_NO_PAD.encode(tee.secret.to_bytes()));
    let jwk_path = dir.path().join("tee.jwk");
    let jwe_path = dir.path().join("resource.jwe");
    std::fs::write(&jwk_path, private_jwk.to_string()).unwrap();
    std::fs::write(&jwe_path, jwe.to_string()).unwrap();
    let output = std::process::Command::new("jose")
        .args(["jwe", "dec", "-i"])
        .arg(&jwe_path)
        .arg("-k")
        .arg(&jwk_path)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(output.stdout, SECRET);
}

/// A raw TLS client, to see the connection-level behaviour ureq hides.
fn raw_tls(broker: &Broker) -> rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    let pem = broker.ca_pem();
    let der = STANDARD
        .decode(
            pem.lines()
                .filter(|l| !l.starts_with("-----"))
                .collect::<String>(),
        )
        .unwrap();
    roots.add(der.into()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connection =
        rustls::ClientConnection::new(Arc::new(config), "127.0.0.1".try_into().unwrap()).unwrap();
    let socket = std::net::TcpStream::connect(("127.0.0.1", broker.port())).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    rustls::StreamOwned::new(connection, socket)
}

#[test]
fn one_connection_serves_several_requests_until_close() {
    let broker = Broker::start(BrokerConfig::default()).unwrap();
    let mut tls = raw_tls(&broker);
    let auth = r#"{"version":"0.4.0","tee":"tpm","extra-params":""}"#;
    let requests = format!(
        "POST /kbs/v0/auth HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{auth}\
         GET /kbs/v0/resource/a/b/c HTTP/1.1\r\nHost: x\r\n\r\n\
         GET /kbs/v0/none HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        auth.len()
    );
    tls.write_all(requests.as_bytes()).unwrap();
    let mut all = Vec::new();
    let _ = tls.read_to_end(&mut all);
    let all = String::from_utf8(all).unwrap();
    let statuses: Vec<&str> = all
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &all[i + 9..i + 12])
        .collect();
    assert_eq!(statuses, ["200", "401", "404"], "{all}");
    assert!(all.contains("Set-Cookie: kbs-session-id="));
    assert!(
        all.ends_with("\"detail\":\"Plugin none not found\"}"),
        "{all}"
    );
}

#[test]
fn oversized_body_is_413() {
    let broker = Broker::start(BrokerConfig::default()).unwrap();
    let mut tls = raw_tls(&broker);
    tls.write_all(b"POST /kbs/v0/attest HTTP/1.1\r\nHost: x\r\nContent-Length: 1048577\r\n\r\n")
        .unwrap();
    let mut all = Vec::new();
    let _ = tls.read_to_end(&mut all);
    assert!(String::from_utf8(all).unwrap().starts_with("HTTP/1.1 413 "));
}

#[test]
fn drop_closes_idle_connections_and_stops_listening() {
    let broker = Broker::start(BrokerConfig::default()).unwrap();
    let port = broker.port();
    let mut client = Client::new(&broker);
    client.auth("0.4.0", "tpm");
    // The ureq agent keeps its connection open; dropping the broker must not wait for it.
    let started = Instant::now();
    drop(broker);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}

#[test]
fn set_trusted_aks_changes_later_appraisals_on_the_same_broker() {
    let key = ak();
    let broker = Broker::start(config_trusting(&key)).unwrap();
    let (url, ca) = (broker.url(), broker.ca_pem());
    let resource = format!("/kbs/v0/resource/{SECRET_PATH}");

    broker.set_trusted_aks(Vec::new()).unwrap();
    let mut client = Client::new(&broker);
    let tee = TeeKey::new();
    assert_eq!(attest(&mut client, &key, &tee, &Spoil::default()).0, 200);
    assert_error(&client.get(&resource, None), 401, "PolicyDeny");
    assert!(broker.released().is_empty());

    assert!(broker.set_trusted_aks(vec!["not base64!".into()]).is_err());
    broker.set_trusted_aks(vec![ak_public(&key)]).unwrap();
    let mut client = Client::new(&broker);
    attest(&mut client, &key, &tee, &Spoil::default());
    let (status, jwe) = client.get(&resource, None);
    assert_eq!(status, 200);
    assert_eq!(tee.decrypt(&jwe), SECRET);
    assert_eq!((broker.url(), broker.ca_pem()), (url, ca));
    assert!(broker
        .log()
        .join("\n")
        .contains("policy: trusted_aks replaced"));
}
