//! The agent's TPM evidence checked by independent tools: tpm2_checkquote verifies the quote
//! signature and qualifying data, tpm2_print decodes the TPMS_ATTEST, tpm2_pcrread reads the
//! PCRs, and the JSON has exactly the field layout Trustee's `tpm` verifier deserializes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use common::*;
use rsa::pkcs8::DecodePublicKey;
use sha2::{Digest, Sha256};

fn evidence(tpm: &Swtpm, nonce: &str) -> serde_json::Value {
    let out = run_ok(
        Command::new(agent_bin())
            .args([
                "evidence",
                "--kernel-cmdline",
                "/dev/null",
                "--nonce",
                nonce,
                "--set",
            ])
            .arg(format!("tpm.tcti={}", tpm.tcti())),
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn quote_verifies_with_tpm2_checkquote_and_matches_trustee_layout() {
    let tpm = Swtpm::start();
    let nonce = STANDARD.encode([7u8; 32]);
    let doc = evidence(&tpm, &nonce);
    assert_eq!(doc["tee"], "tpm");
    assert_eq!(doc["runtime-data"]["nonce"], nonce.as_str());
    let ev = &doc["tee-evidence"]["primary_evidence"];

    // Field layout Trustee's verifier reads: {tpm_quote:{signature,message,pcrs},ak_public}.
    let obj = ev.as_object().unwrap();
    assert!(
        obj.keys()
            .all(|k| ["tpm_quote", "ak_public", "event_log"].contains(&k.as_str())),
        "{obj:?}"
    );
    let quote = ev["tpm_quote"].as_object().unwrap();
    assert_eq!(quote.len(), 3, "{quote:?}");
    let pcrs: Vec<String> = quote["pcrs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(pcrs.len(), 24);
    assert!(pcrs.iter().all(|p| p.len() == 64
        && p.chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))));
    let ak_b64 = ev["ak_public"].as_str().unwrap();
    let ak_der = STANDARD.decode(ak_b64).unwrap();
    rsa::RsaPublicKey::from_public_key_der(&ak_der).expect("ak_public is a DER RSA SPKI");
    assert_eq!(
        ak_b64,
        ak_public(&tpm),
        "same AK as `attest-unlock ak`: stable across runs"
    );

    // Independent checks with tpm2-tools.
    let dir = tempfile::tempdir().unwrap();
    let msg = dir.path().join("msg");
    let sig = dir.path().join("sig");
    let pem = dir.path().join("ak.pem");
    std::fs::write(
        &msg,
        STANDARD.decode(quote["message"].as_str().unwrap()).unwrap(),
    )
    .unwrap();
    std::fs::write(
        &sig,
        STANDARD
            .decode(quote["signature"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    let ak_out = run_ok(
        Command::new(agent_bin())
            .args(["ak", "--kernel-cmdline", "/dev/null", "--set"])
            .arg(format!("tpm.tcti={}", tpm.tcti())),
    );
    let text = String::from_utf8(ak_out.stdout).unwrap();
    let pem_text: String = text.lines().skip(1).map(|l| format!("{l}\n")).collect();
    std::fs::write(&pem, pem_text).unwrap();

    let report_data = doc["report-data"].as_str().unwrap();
    let qualifying = &report_data[..64]; // first 32 bytes of the binding digest
    run_ok(
        Command::new("tpm2_checkquote")
            .arg("-u")
            .arg(&pem)
            .arg("-m")
            .arg(&msg)
            .arg("-s")
            .arg(&sig)
            .args(["-g", "sha256", "-q", qualifying]),
    );
    // The checker can fail: another qualification is rejected.
    let wrong = Command::new("tpm2_checkquote")
        .arg("-u")
        .arg(&pem)
        .arg("-m")
        .arg(&msg)
        .arg("-s")
        .arg(&sig)
        .args(["-g", "sha256", "-q", &"00".repeat(32)])
        .output()
        .unwrap();
    assert!(
        !wrong.status.success(),
        "tpm2_checkquote accepted a wrong nonce"
    );

    // The quoted PCR digest is SHA-256 over the 24 PCR values we sent, which are the TPM's.
    let printed = run_ok(
        Command::new("tpm2_print")
            .args(["-t", "TPMS_ATTEST"])
            .arg(&msg),
    );
    let printed = String::from_utf8(printed.stdout).unwrap();
    let digest_line = printed
        .lines()
        .find_map(|l| l.trim().strip_prefix("pcrDigest:"))
        .unwrap_or_else(|| panic!("no pcrDigest in {printed}"));
    let mut h = Sha256::new();
    for p in &pcrs {
        h.update(hex::decode(p).unwrap());
    }
    assert_eq!(digest_line.trim().to_lowercase(), hex::encode(h.finalize()));
    assert_eq!(pcrs, pcrs_by_tpm2_tools(&tpm));
}

#[test]
fn evidence_is_bound_to_the_nonce() {
    let tpm = Swtpm::start();
    let a = evidence(&tpm, &STANDARD.encode([1u8; 32]));
    let b = evidence(&tpm, &STANDARD.encode([2u8; 32]));
    assert_ne!(a["report-data"], b["report-data"]);
    assert_ne!(
        a["tee-evidence"]["primary_evidence"]["tpm_quote"]["message"],
        b["tee-evidence"]["primary_evidence"]["tpm_quote"]["message"]
    );
}

/// The AK public key the agent reports, with `extra` settings, and what it logged.
fn ak_with(tpm: &Swtpm, extra: &[&str]) -> (String, String) {
    let mut cmd = Command::new(agent_bin());
    cmd.args(["ak", "-v", "--kernel-cmdline", "/dev/null", "--set"])
        .arg(format!("tpm.tcti={}", tpm.tcti()));
    for e in extra {
        cmd.arg("--set").arg(e);
    }
    let run = collect(&mut cmd);
    assert!(run.status.success(), "{}", run.stderr);
    let pem = run.stdout[run.stdout.find("-----BEGIN").unwrap()..]
        .trim()
        .to_owned();
    (pem, run.stderr)
}

fn tpm2(tpm: &Swtpm, args: &[&str]) -> String {
    let out = run_ok(
        Command::new(args[0])
            .env("TPM2TOOLS_TCTI", tpm.tcti())
            .args(&args[1..]),
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const CACHE: &str = "0x81010020";

/// The first run creates the derived AK and keeps it at the cache handle; the key there (read
/// by tpm2_readpublic) is the derived one, and the next run uses it without creating it
/// again. With the cache off, the same key is derived.
#[test]
fn the_derived_ak_is_kept_and_reused() {
    let tpm = Swtpm::start();
    let (derived, log) = ak_with(&tpm, &["tpm.ak_cache_handle=0"]);
    assert!(!log.contains("kept at"), "{log}");
    assert!(!tpm2(&tpm, &["tpm2_getcap", "handles-persistent"]).contains(CACHE));

    let (first, log) = ak_with(&tpm, &[]);
    assert_eq!(first, derived);
    assert!(
        log.contains("AK created and kept at TPM persistent handle 0x81010020"),
        "{log}"
    );
    assert!(
        !log.contains("ERROR"),
        "no TSS noise on a first boot: {log}"
    );
    let dir = tempfile::tempdir().unwrap();
    let pem = dir.path().join("cached.pem");
    tpm2(
        &tpm,
        &[
            "tpm2_readpublic",
            "-c",
            CACHE,
            "-f",
            "pem",
            "-o",
            pem.to_str().unwrap(),
        ],
    );
    assert_eq!(std::fs::read_to_string(&pem).unwrap().trim(), derived);

    let (second, log) = ak_with(&tpm, &[]);
    assert_eq!(second, derived);
    assert!(
        log.contains("AK: the derived key, kept at 0x81010020"),
        "{log}"
    );
    assert!(!log.contains("created"), "{log}");
}

/// A key planted at the cache handle is not used, even one made with exactly the AK's template
/// (a child of a storage key: only its qualified Name tells it from the derived primary). The
/// agent derives the real AK instead, says so, and leaves the planted key alone.
#[test]
fn a_key_planted_at_the_cache_handle_is_not_used() {
    let tpm = Swtpm::start();
    let (derived, _) = ak_with(&tpm, &["tpm.ak_cache_handle=0"]);
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).display().to_string();
    tpm2(
        &tpm,
        &["tpm2_createprimary", "-C", "o", "-c", &p("parent.ctx")],
    );
    tpm2(&tpm, &["tpm2_flushcontext", "-t"]);
    tpm2(
        &tpm,
        &[
            "tpm2_create",
            "-C",
            &p("parent.ctx"),
            "-G",
            "rsa2048:rsassa-sha256:null",
            "-a",
            "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda|restricted|sign",
            "-u",
            &p("ak.pub"),
            "-r",
            &p("ak.priv"),
        ],
    );
    tpm2(&tpm, &["tpm2_flushcontext", "-t"]);
    tpm2(
        &tpm,
        &[
            "tpm2_load",
            "-C",
            &p("parent.ctx"),
            "-u",
            &p("ak.pub"),
            "-r",
            &p("ak.priv"),
            "-c",
            &p("ak.ctx"),
        ],
    );
    tpm2(&tpm, &["tpm2_flushcontext", "-t"]);
    tpm2(
        &tpm,
        &["tpm2_evictcontrol", "-C", "o", "-c", &p("ak.ctx"), CACHE],
    );

    let (used, log) = ak_with(&tpm, &[]);
    assert_eq!(used, derived, "the derived AK, not the planted one");
    assert!(
        log.contains("holds a key that is not the derived AK: not used"),
        "{log}"
    );
    assert!(tpm2(&tpm, &["tpm2_getcap", "handles-persistent"]).contains(CACHE));
    let planted = p("planted.pem");
    tpm2(
        &tpm,
        &["tpm2_readpublic", "-c", CACHE, "-f", "pem", "-o", &planted],
    );
    assert_ne!(std::fs::read_to_string(&planted).unwrap().trim(), derived);
}

/// The document `attest-unlock evidence` prints verifies offline with `attest-inspect`
/// against the AK registered for the node and the broker's nonce; another nonce, or no AK
/// pinned, fails.
#[test]
fn the_evidence_document_verifies_offline() {
    let tpm = Swtpm::start();
    let nonce = STANDARD.encode([9u8; 32]);
    let doc = evidence(&tpm, &nonce);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("evidence.json");
    std::fs::write(&file, doc.to_string()).unwrap();
    let ak = dir.path().join("ak.der");
    std::fs::write(&ak, STANDARD.decode(ak_public(&tpm)).unwrap()).unwrap();
    let key = doc["runtime-data"]["tee-pubkey"].to_string();
    let inspect = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_attest-inspect"))
            .args(["--verify", "--text"])
            .arg(&file)
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let ak = ak.to_str().unwrap();
    let (code, text) = inspect(&["--ak", ak, "--nonce", &nonce, "--tee-pubkey", &key]);
    assert_eq!(code, Some(0), "{text}");
    for line in [
        "pass  tpm.signature",
        "pass  tpm.binding",
        "pass  tpm.pcr_digest",
    ] {
        assert!(text.contains(line), "{line}: {text}");
    }
    let other = STANDARD.encode([8u8; 32]);
    let (code, text) = inspect(&["--ak", ak, "--nonce", &other, "--tee-pubkey", &key]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("FAIL  tpm.binding"), "{text}");
    let (code, text) = inspect(&[]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("FAIL  tpm.ak_trusted"), "{text}");
}
