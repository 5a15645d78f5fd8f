//! `attest-inspect --verify` against every signed artefact in `shared/testdata`: each verifies
//! at a time inside its certificates' validity with the result PROVENANCE.md states, and a
//! one-byte change in any signed region fails the check that covers it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

const TESTDATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/testdata/");

fn path(rel: &str) -> String {
    PathBuf::from(TESTDATA).join(rel).display().to_string()
}

/// Runs `attest-inspect ARGS`; (exit code, stdout, stderr).
fn tool(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_attest-inspect"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `--verify --at AT FILES...` as JSON; (exit code, the report).
fn verify(at: &str, files: &[String]) -> (i32, Value) {
    let mut args = vec!["--verify", "--at", at];
    args.extend(files.iter().map(String::as_str));
    let (code, out, err) = tool(&args);
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out} {err}"));
    (code, v)
}

/// The checks of every file: (check name, passed, detail or reason).
fn checks(v: &Value) -> Vec<(String, bool, String)> {
    v["files"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|f| f["checks"].as_array().unwrap().iter())
        .map(|c| {
            let pass = c["result"] == "pass";
            let text = if pass { &c["detail"] } else { &c["reason"] };
            (
                c["check"].as_str().unwrap().to_string(),
                pass,
                text.as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn assert_verified(at: &str, files: &[&str], expect: &[(&str, &str)]) {
    let files: Vec<String> = files.iter().map(|f| path(f)).collect();
    let (code, v) = verify(at, &files);
    let list = checks(&v);
    assert_eq!(code, 0, "{files:?} at {at}: {list:#?}");
    assert_eq!(v["verified"], true);
    for (name, needle) in expect {
        let found = list.iter().find(|(n, _, _)| n == name);
        let (_, pass, detail) = found.unwrap_or_else(|| panic!("no check {name}: {list:#?}"));
        assert!(*pass && detail.contains(needle), "{name}: {detail}");
    }
}

/// Every real SNP report verifies with its VCEK/VLEK and AMD's pinned chain (PROVENANCE.md
/// 1.2, 4.1, 4.3): signature, hwID and TCB extensions, chain to the product's ARK.
#[test]
fn real_snp_reports_verify_with_the_pinned_amd_roots() {
    assert_verified(
        "2024-01-01",
        &[
            "snp/milan-virtee-sev/report_milan.bin",
            "snp/milan-virtee-sev/vcek_milan.der",
        ],
        &[
            ("snp.signature", "SEV-VCEK"),
            ("snp.vek_matches_report", "hwID and TCB"),
            ("snp.vek_chain", "ARK-Milan"),
        ],
    );
    assert_verified(
        "2024-01-01",
        &[
            "snp/milan-trustee/test-report.bin",
            "snp/milan-trustee/test-vcek.der",
        ],
        &[("snp.vek_chain", "ARK-Milan")],
    );
    // The VLEK chains through the ASVK (SEV-VLEK-Milan); it expired 2025-12-10.
    assert_verified(
        "2025-06-01",
        &[
            "snp/milan-trustee/test-vlek-report.bin",
            "snp/milan-trustee/test-vlek.der",
        ],
        &[("snp.report", "VLEK"), ("snp.vek_chain", "ARK-Milan")],
    );
    assert_verified(
        "2025-06-01",
        &[
            "snp/genoa-azure/report_genoa.bin",
            "snp/genoa-azure/vcek_genoa.pem",
        ],
        &[("snp.vek_chain", "ARK-Genoa")],
    );
}

/// The Azure HCL reports: the SNP report in the slot verifies, and REPORT_DATA binds the
/// runtime claims (PROVENANCE.md 4.1, 4.3).
#[test]
fn azure_hcl_reports_verify_end_to_end() {
    assert_verified(
        "2025-06-01",
        &[
            "azure/trustee-az-snp/hcl-report.bin",
            "azure/trustee-az-snp/vcek.pem",
        ],
        &[
            ("snp.vek_chain", "ARK-Milan"),
            ("hcl.var_data_binding", "sha256 of the variable data"),
        ],
    );
    assert_verified(
        "2025-06-01",
        &[
            "azure/trustee-az-snp-genoa/hcl-report-genoa.bin",
            "azure/trustee-az-snp-genoa/vcek-genoa.pem",
        ],
        &[("snp.vek_chain", "ARK-Genoa")],
    );
}

/// The one HCL report without its VCEK fails, as PROVENANCE.md 4.4 says: `certs.pem` is
/// another chip's.
#[test]
fn a_report_with_another_chips_vcek_fails_the_signature() {
    let files = [
        path("azure/azure-cvm-tooling/hcl-report-snp.bin"),
        path("azure/azure-cvm-tooling/certs.pem"),
    ];
    let (code, v) = verify("2024-01-01", &files);
    assert_eq!(code, 1);
    assert_eq!(v["verified"], false);
    let list = checks(&v);
    let sig = list.iter().find(|(n, _, _)| n == "snp.signature").unwrap();
    assert!(!sig.1 && sig.2.contains("does not verify"), "{sig:?}");
    // The binding of the variable data is still checked, and holds.
    assert!(list
        .iter()
        .any(|(n, p, _)| n == "hcl.var_data_binding" && *p));
}

/// Every real TDX quote verifies with its PCK chain to Intel's pinned root (PROVENANCE.md 2),
/// at a time inside every PCK leaf's validity (the latest, `tdx_quote_outdated`'s, starts
/// 2026-01-23).
#[test]
fn real_tdx_quotes_verify_with_the_pinned_intel_root() {
    for quote in [
        "tdx/go-tdx-guest/tdx_prod_quote_SPR_E4.dat",
        "tdx/trustee/tdx_quote_4.dat",
        "tdx/trustee/tdx_quote_5.dat",
        "tdx/trustee/tdx_quote_6.dat",
        "tdx/dcap-qvl/tdx_quote",
        "tdx/dcap-qvl/tdx_quote_outdated",
        "azure/trustee-az-tdx/td-quote.bin",
    ] {
        assert_verified(
            "2026-06-01",
            &[quote],
            &[
                ("tdx.signature", "attestation key"),
                ("tdx.qe_binding", "SHA-256"),
                ("tdx.qe_report_signature", "Intel SGX PCK"),
                ("tdx.pck_chain", "Intel SGX Root CA"),
            ],
        );
    }
    // go-tdx-guest's own assertion: after the PCK leaf expired (2029-09-20) it fails.
    let (code, v) = verify(
        "2053-07-01",
        &[path("tdx/go-tdx-guest/tdx_prod_quote_SPR_E4.dat")],
    );
    assert_eq!(code, 1);
    let chain = checks(&v)
        .into_iter()
        .find(|(n, _, _)| n == "tdx.pck_chain")
        .unwrap();
    assert!(!chain.1 && chain.2.contains("expired"), "{chain:?}");
}

/// Certificates alone: a VCEK chains to its ARK; a VLEK outside its validity fails; an ARK is
/// a pinned root; a self-signed stranger is not.
#[test]
fn certificates_alone_are_checked_against_the_pinned_roots() {
    assert_verified("2024-01-01", &["snp/milan-virtee-sev/vcek_milan.der"], &[]);
    assert_verified("2025-01-01", &["snp/turin-virtee-sev/vcek_turin.der"], &[]);
    assert_verified("2030-01-01", &["snp/amd-certs/genoa_ark.pem"], &[]);
    let (code, v) = verify("2026-01-01", &[path("snp/milan-trustee/test-vlek.der")]);
    assert_eq!(code, 1, "{v}");
    assert!(checks(&v)[0].2.contains("expired"), "{v}");
    let dir = tempfile::tempdir().unwrap();
    let stranger = dir.path().join("stranger.der");
    let key = rcgen_free_self_signed();
    std::fs::write(&stranger, key).unwrap();
    let (code, v) = verify("2030-01-01", &[stranger.display().to_string()]);
    assert_eq!(code, 1, "{v}");
    assert!(checks(&v)[0].2.contains("not a trusted root"), "{v}");
}

/// A self-signed certificate that is not a vendor root: Intel's root with its signature
/// kept, but the subject and issuer both changed the same way, so it is self-issued, well
/// formed, and signed by nobody we trust.
fn rcgen_free_self_signed() -> Vec<u8> {
    let mut der = std::fs::read(path("tdx/dcap-qvl/TrustedRootCA.der")).unwrap();
    let needle = b"Intel SGX Root CA";
    let mut at = 0;
    while let Some(i) = der[at..].windows(needle.len()).position(|w| w == needle) {
        der[at + i] = b'J';
        at += i + 1;
    }
    der
}

/// A one-byte change in a signed region fails the check that covers it: every 37th byte of
/// an SNP report's signed part and of its signature, and the header, body, QE report and PCK
/// certificate of a TDX quote.
#[test]
fn a_one_byte_change_in_a_signed_region_fails() {
    let dir = tempfile::tempdir().unwrap();
    let vcek = path("snp/milan-virtee-sev/vcek_milan.der");
    let report = std::fs::read(path("snp/milan-virtee-sev/report_milan.bin")).unwrap();
    let positions: Vec<usize> = (0..0x2A0)
        .step_by(37)
        .chain([0x29F, 0x2A0, 0x2A0 + 72])
        .collect();
    for at in positions {
        let mut bad = report.clone();
        bad[at] ^= 0x01;
        let f = dir.path().join("report.bin");
        std::fs::write(&f, &bad).unwrap();
        let (code, v) = verify("2024-01-01", &[f.display().to_string(), vcek.clone()]);
        assert_eq!(code, 1, "byte {at:#x} changed, still verified: {v}");
    }

    let quote = std::fs::read(path("tdx/go-tdx-guest/tdx_prod_quote_SPR_E4.dat")).unwrap();
    // Offsets: header 0..48, body 48..632, then the signature data; the QE report starts
    // 4 + 64 + 64 + 2 + 4 = 138 bytes into it; the PEM chain after QE report, signature and
    // the 32 bytes of auth data.
    let qe_report = 632 + 138;
    let pem = quote
        .windows(27)
        .position(|w| w == b"-----BEGIN CERTIFICATE-----")
        .unwrap();
    for (at, check) in [
        (10, "tdx.signature"),
        (48 + 136, "tdx.signature"),
        (632 + 4 + 10, "tdx.signature"),
        (qe_report + 320, "tdx.qe_binding"),
        (qe_report + 10, "tdx.qe_report_signature"),
        (pem + 300, "tdx."),
    ] {
        let mut bad = quote.clone();
        bad[at] ^= 0x01;
        let f = dir.path().join("quote.dat");
        std::fs::write(&f, &bad).unwrap();
        let (code, v) = verify("2025-07-01", &[f.display().to_string()]);
        assert_eq!(code, 1, "byte {at} changed, still verified: {v}");
        let failed: Vec<String> = checks(&v)
            .into_iter()
            .filter(|(_, p, _)| !p)
            .map(|(n, _, _)| n)
            .collect();
        assert!(
            failed.iter().any(|n| n.starts_with(check)),
            "byte {at}: expected {check} to fail, failed: {failed:?}"
        );
    }
}

/// Without `--verify` nothing is verified and the help says so; certificates decode with
/// their vendor extensions.
#[test]
fn certificates_decode_with_vendor_extensions() {
    let (code, out, err) = tool(&[&path("snp/milan-virtee-sev/vcek_milan.der")]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["kind"], "certificate");
    let cert = &v["certificates"][0];
    assert_eq!(cert["amd"]["productName"], "Milan-B0");
    assert_eq!(cert["amd"]["ucodeSPL"], 115);
    assert_eq!(cert["amd"]["snpSPL"], 8);
    assert_eq!(cert["public_key"], "EC P-384");
    assert_eq!(cert["signature_algorithm"], "RSASSA-PSS");
    // hwID is the report's CHIP_ID (PROVENANCE.md 1.2 a).
    let report = std::fs::read(path("snp/milan-virtee-sev/report_milan.bin")).unwrap();
    assert_eq!(cert["amd"]["hwID"], hex::encode(&report[0x1A0..0x1E0]));

    // Turin's short hwID and its fmcSPL (PROVENANCE.md 1.3).
    let (_, out, _) = tool(&[&path("snp/turin-virtee-sev/vcek_turin.der")]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["certificates"][0]["amd"]["hwID"], "1e550a8ee5cf9f4d");
    assert_eq!(v["certificates"][0]["amd"]["productName"], "Turin");
    assert_eq!(v["certificates"][0]["amd"]["ucodeSPL"], 9);

    // The VLEK's CSP (PROVENANCE.md 1.2 c).
    let (_, out, _) = tool(&[&path("snp/milan-trustee/test-vlek.der")]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["certificates"][0]["amd"]["cspID"],
        "CN=cc-us-east-2.amazonaws.com"
    );

    // An Intel PCK chain: FMSPC of the leaf (PROVENANCE.md 2: go-tdx-guest's assertion).
    let (_, out, _) = tool(&[&path(
        "tdx/go-tdx-guest/tdx_prod_quote_SPR_E4.pck_chain.pem",
    )]);
    let v: Value = serde_json::from_str(&out).unwrap();
    let list = v["certificates"].as_array().unwrap();
    assert_eq!(list.len(), 3);
    assert_eq!(list[0]["intel_sgx"]["FMSPC"], "50806f000000");
    assert!(
        list[0]["intel_sgx"]["TCB"]["PCESVN"].is_u64(),
        "{}",
        list[0]
    );
    assert_eq!(list[2]["self_issued"], true);

    let (_, help, _) = tool(&["--help"]);
    assert!(help.contains("Without it, nothing is verified"), "{help}");
}

/// The initramfs binary carries none of the offline tool: no pinned root, no check name, no
/// certificate field. The same needles are in `attest-inspect`, so the test can fail.
#[test]
fn the_boot_binary_carries_none_of_the_offline_tool() {
    let intel_root =
        std::fs::read_to_string(path("tdx/go-tdx-guest/collateral/intel_sgx_root_ca.pem")).unwrap();
    let pem_line = intel_root.lines().nth(1).unwrap().to_string();
    // String literals only: a debug build's symbols name every function of the library.
    let needles = [
        pem_line.as_str(),
        "hwID and TCB extensions agree",
        "a TDREPORT is MACed, not signed",
        "is self-signed but not a trusted root",
    ];
    let contains =
        |hay: &[u8], needle: &str| hay.windows(needle.len()).any(|w| w == needle.as_bytes());
    let boot = std::fs::read(env!("CARGO_BIN_EXE_attest-unlock")).unwrap();
    let tool = std::fs::read(env!("CARGO_BIN_EXE_attest-inspect")).unwrap();
    for needle in needles {
        assert!(contains(&tool, needle), "attest-inspect lacks {needle:?}");
        assert!(!contains(&boot, needle), "attest-unlock carries {needle:?}");
    }
}

const GCE: &str = "tpm/quote/gce-cos-85-nonce9009/";

fn tpm_args(bank: &str, ak: &str, extra: &str) -> Vec<String> {
    vec![
        path(&format!("{GCE}quote_{bank}.tpms_attest.bin")),
        "--signature".into(),
        path(&format!("{GCE}quote_{bank}.tpmt_signature.bin")),
        "--ak".into(),
        path(&format!("{GCE}{ak}")),
        "--extra-data".into(),
        extra.into(),
    ]
}

fn verify_args(at: &str, args: &[String]) -> (i32, Value) {
    let mut all = vec!["--verify".to_string(), "--at".into(), at.into()];
    all.extend(args.iter().cloned());
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    let (code, out, err) = tool(&refs);
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out} {err}"));
    (code, v)
}

fn check<'a>(list: &'a [(String, bool, String)], name: &str) -> &'a (String, bool, String) {
    list.iter()
        .find(|(n, _, _)| n == name)
        .unwrap_or_else(|| panic!("no check {name}: {list:#?}"))
}

/// The GCE quotes (PROVENANCE.md 6): each bank's quote verifies with the AK (as TPMT_PUBLIC
/// and as its certificate) and the nonce 9009; its PCR digest is that of the PCR values; the
/// event log replays to them (PCRs 0-9). A changed nonce, message, PCR value or event log
/// fails the covering check.
#[test]
fn tpm_quotes_verify_against_the_ak_nonce_pcrs_and_event_log() {
    for bank in ["sha1", "sha256", "sha384"] {
        for ak in ["ak_pub.tpmt_public.bin", "ak_cert.der"] {
            let mut args = tpm_args(bank, ak, "9009");
            args.extend([
                "--pcrs".into(),
                path(&format!("{GCE}pcrs.json")),
                path(&format!("{GCE}event_log.bin")),
            ]);
            let (code, v) = verify_args("2024-01-01", &args);
            let list = checks(&v);
            assert_eq!(code, 0, "{bank} {ak}: {list:#?}");
            assert!(check(&list, "tpm.quote")
                .2
                .contains(&format!("{bank}:0-23")));
            assert!(
                check(&list, "tpm.event_log").2.contains("PCRs 0-9"),
                "{list:#?}"
            );
            assert!(check(&list, "tpm.pcr_digest").1);
            assert!(check(&list, "tpm.extra_data").1);
        }
    }

    // The wrong nonce.
    let (code, v) = verify_args("2024-01-01", &tpm_args("sha256", "ak_cert.der", "900a"));
    assert_eq!(code, 1);
    let list = checks(&v);
    assert!(!check(&list, "tpm.extra_data").1 && check(&list, "tpm.signature").1);

    let dir = tempfile::tempdir().unwrap();
    // One byte of the signed message (its clock) changed.
    let mut message = std::fs::read(path(&format!("{GCE}quote_sha256.tpms_attest.bin"))).unwrap();
    message[40] ^= 1;
    let f = dir.path().join("quote.bin");
    std::fs::write(&f, &message).unwrap();
    let mut args = tpm_args("sha256", "ak_cert.der", "9009");
    args[0] = f.display().to_string();
    let (code, v) = verify_args("2024-01-01", &args);
    assert_eq!(code, 1);
    assert!(check(&checks(&v), "tpm.signature")
        .2
        .contains("does not verify"));

    // A PCR value changed: the digest no longer matches.
    let mut pcrs: Value =
        serde_json::from_slice(&std::fs::read(path(&format!("{GCE}pcrs.json"))).unwrap()).unwrap();
    pcrs["pcrs"]["sha256"]["12"] = Value::String("11".repeat(32));
    let p = dir.path().join("pcrs.json");
    std::fs::write(&p, pcrs.to_string()).unwrap();
    let mut args = tpm_args("sha256", "ak_cert.der", "9009");
    args.extend(["--pcrs".into(), p.display().to_string()]);
    let (code, v) = verify_args("2024-01-01", &args);
    assert_eq!(code, 1);
    assert!(check(&checks(&v), "tpm.pcr_digest")
        .2
        .contains("does not match"));

    // Another machine's event log does not replay to these PCRs.
    let mut args = tpm_args("sha256", "ak_cert.der", "9009");
    args.extend([
        "--pcrs".into(),
        path(&format!("{GCE}pcrs.json")),
        path("tpm/eventlogs/gce-rhel8-uefi.bin"),
    ]);
    let (code, v) = verify_args("2024-01-01", &args);
    assert_eq!(code, 1);
    assert!(check(&checks(&v), "tpm.event_log")
        .2
        .contains("replays sha256 PCR 0"));
}

/// Azure's vTPM quote (PROVENANCE.md 4.1): the bare RSASSA signature verifies with the HCL
/// report's AK and the nonce "challenge", and the PCR digest is that of the 24 values.
#[test]
fn azure_vtpm_quote_verifies_with_the_hcl_ak() {
    let json: Value = serde_json::from_slice(
        &std::fs::read(path("azure/trustee-az-snp/tpm-quote-v1.json")).unwrap(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, hex_text: &str| {
        let f = dir.path().join(name);
        std::fs::write(&f, hex::decode(hex_text).unwrap()).unwrap();
        f.display().to_string()
    };
    let message = write("message.bin", json["message"].as_str().unwrap());
    let signature = write("signature.bin", json["signature"].as_str().unwrap());
    let pcrs = dir.path().join("pcrs.json");
    std::fs::write(&pcrs, json["pcrs"].to_string()).unwrap();
    let args = vec![
        message,
        "--signature".into(),
        signature,
        "--ak".into(),
        path("azure/trustee-az-snp/hcl-akpub.pem"),
        "--extra-data".into(),
        hex::encode("challenge"),
        "--pcrs".into(),
        pcrs.display().to_string(),
    ];
    let (code, v) = verify_args("2025-01-01", &args);
    assert_eq!(code, 0, "{:#?}", checks(&v));

    // End to end without --ak: the HCL report beside the quote (its SNP report verified with
    // the VCEK and AMD's chain, its runtime claims bound by REPORT_DATA) vouches for the AK.
    let mut composite: Vec<String> = args
        .iter()
        .filter(|a| !a.ends_with("hcl-akpub.pem") && *a != "--ak")
        .cloned()
        .collect();
    composite.extend([
        path("azure/trustee-az-snp/hcl-report.bin"),
        path("azure/trustee-az-snp/vcek.pem"),
    ]);
    let (code, v) = verify_args("2025-06-01", &composite);
    let list = checks(&v);
    assert_eq!(code, 0, "{list:#?}");
    assert!(check(&list, "tpm.signature").2.contains("HCLAkPub"));
    assert!(check(&list, "hcl.var_data_binding").1);
    assert!(check(&list, "snp.vek_chain").2.contains("ARK-Milan"));

    // Another HCL report's AK (the Genoa one) does not sign this quote.
    let mut wrong = composite.clone();
    let n = wrong.len();
    wrong[n - 2] = path("azure/trustee-az-snp-genoa/hcl-report-genoa.bin");
    wrong[n - 1] = path("azure/trustee-az-snp-genoa/vcek-genoa.pem");
    let (code, v) = verify_args("2025-06-01", &wrong);
    assert_eq!(code, 1);
    assert!(!check(&checks(&v), "tpm.signature").1);
}

/// The GCE AK certificate chains through Google's intermediate to its EK root given with
/// `--root` (PROVENANCE.md 6), and not without that root.
#[test]
fn gce_ak_certificate_chains_to_the_given_root() {
    let args = vec![
        path(&format!("{GCE}ak_cert.der")),
        path(&format!("{GCE}gce_tpm_ek_intermediate_2.crt")),
        "--root".to_string(),
        path(&format!("{GCE}gce_tpm_ek_root_1.cer")),
    ];
    let (code, v) = verify_args("2024-01-01", &args);
    let list = checks(&v);
    assert_eq!(code, 0, "{list:#?}");
    assert!(
        list.iter().all(
            |(_, pass, d)| *pass && d.contains("chains to CN=tpm_ek_v1_cloud_host_root-signer")
        ),
        "{list:#?}"
    );
    let (code, _) = verify_args("2024-01-01", &args[..2]);
    assert_eq!(code, 1);
}

/// A CCEL beside a TDX quote is replayed against its RTMRs, and REPORT_DATA against the
/// binding of a nonce and a TEE key: a simulated quote (`--root` its simulated Intel root)
/// carrying the RTMRs of a real CCEL passes; with one RTMR or the nonce different it fails.
#[test]
fn ccel_and_binding_cross_checks() {
    use test_kbs::sim::{TdxQuoteParams, TdxSigner};
    let ccel_path = path("tdx/ccel/trustee-tdshim/CCEL_data");
    let ccel = std::fs::read(&ccel_path).unwrap();
    let replay = attest_verify::tdx::replay_ccel(&ccel).unwrap();
    let signer = TdxSigner::new().unwrap();
    let key = serde_json::json!({"kty": "EC", "crv": "P-256", "alg": "ECDH-ES+A256KW", "x": "eA", "y": "eQ"});
    let digest = attest_verify::binding::binding_digest("", "bm9uY2U=", &key).unwrap();
    let mut report_data = [0u8; 64];
    report_data[..48].copy_from_slice(&digest);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root.der");
    std::fs::write(&root, signer.root_der()).unwrap();
    let run = |rtmrs: [[u8; 48]; 4], nonce: &str| {
        let params = TdxQuoteParams {
            rtmrs,
            ..TdxQuoteParams::default()
        };
        let quote = dir.path().join("quote.dat");
        std::fs::write(&quote, signer.quote(&params, &report_data)).unwrap();
        verify_args(
            "2030-01-01",
            &[
                quote.display().to_string(),
                ccel_path.clone(),
                "--root".into(),
                root.display().to_string(),
                "--nonce".into(),
                nonce.into(),
                "--tee-pubkey".into(),
                key.to_string(),
            ],
        )
    };
    let (code, v) = run(replay.rtmrs, "bm9uY2U=");
    let list = checks(&v);
    assert_eq!(code, 0, "{list:#?}");
    assert!(check(&list, "tdx.ccel")
        .2
        .contains("replays to the quote's RTMR0-3"));
    assert!(check(&list, "tdx.report_data").1);

    let mut other = replay.rtmrs;
    other[1][0] ^= 1;
    let (code, v) = run(other, "bm9uY2U=");
    assert_eq!(code, 1);
    assert!(check(&checks(&v), "tdx.ccel")
        .2
        .contains("RTMR1 replays to"));

    let (code, v) = run(replay.rtmrs, "b3RoZXI=");
    assert_eq!(code, 1);
    assert!(!check(&checks(&v), "tdx.report_data").1);
}

/// Revocation: Intel's PCK and root CRLs (PROVENANCE.md 2) clear the SPR_E4 quote's chain while
/// current, and fail it once expired; a CRL that lists a certificate revokes it; a CRL signed
/// by another key is refused.
#[test]
fn crls_are_checked_against_each_verified_chain() {
    let quote = path("tdx/go-tdx-guest/tdx_prod_quote_SPR_E4.dat");
    let crls = [
        "--crl".to_string(),
        path("tdx/go-tdx-guest/collateral/pckcrl.der"),
        "--crl".to_string(),
        path("tdx/go-tdx-guest/collateral/rootcrl.der"),
    ];
    let mut args = vec![quote];
    args.extend(crls.iter().cloned());
    let (code, v) = verify_args("2023-07-01", &args);
    let list = checks(&v);
    assert_eq!(code, 0, "{list:#?}");
    let revocation = &check(&list, "tdx.revocation").2;
    assert!(
        revocation.contains("Intel SGX PCK Certificate")
            && revocation.contains("Intel SGX PCK Platform CA"),
        "{revocation}"
    );
    // The PCK CRL's next update was 2023-07-08.
    let (code, v) = verify_args("2023-08-01", &args);
    assert_eq!(code, 1);
    assert!(
        check(&checks(&v), "tdx.revocation").2.contains("expired"),
        "{v}"
    );

    use rcgen::{
        BasicConstraints, CertificateParams, CertificateRevocationListParams, IsCa, KeyIdMethod,
        KeyPair, KeyUsagePurpose, RevokedCertParams, SerialNumber,
    };
    let dir = tempfile::tempdir().unwrap();
    let ca = |name: &str| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).unwrap();
        (cert, key)
    };
    let (ca_cert, ca_key) = ca("test root");
    let leaf_key = KeyPair::generate().unwrap();
    let mut leaf_params = CertificateParams::new(vec!["node".into()]).unwrap();
    leaf_params.serial_number = Some(SerialNumber::from(42u64));
    let leaf = leaf_params.signed_by(&leaf_key, &ca_cert, &ca_key).unwrap();
    let crl = |revoked: Vec<u64>, signer: &(rcgen::Certificate, KeyPair)| {
        CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2020, 1, 1),
            next_update: rcgen::date_time_ymd(2040, 1, 1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .into_iter()
                .map(|n| RevokedCertParams {
                    serial_number: SerialNumber::from(n),
                    revocation_time: rcgen::date_time_ymd(2021, 1, 1),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&signer.0, &signer.1)
        .unwrap()
    };
    let write = |name: &str, der: &[u8]| {
        let f = dir.path().join(name);
        std::fs::write(&f, der).unwrap();
        f.display().to_string()
    };
    let root = write("root.der", ca_cert.der());
    let leaf = write("leaf.der", leaf.der());
    let run = |crl_der: &[u8]| {
        let crl = write("crl.der", crl_der);
        verify_args(
            "2030-01-01",
            &[
                leaf.clone(),
                "--root".into(),
                root.clone(),
                "--crl".into(),
                crl,
            ],
        )
    };
    let signer = (ca_cert, ca_key);
    let (code, v) = run(crl(vec![7], &signer).der());
    assert_eq!(code, 0, "{v}");
    let (code, v) = run(crl(vec![7, 42], &signer).der());
    assert_eq!(code, 1);
    assert!(
        checks(&v)
            .iter()
            .any(|(_, p, r)| !p && r.contains("is revoked")),
        "{v}"
    );
    // Same issuer name, another key.
    let impostor = ca("test root");
    let (code, v) = run(crl(vec![], &impostor).der());
    assert_eq!(code, 1);
    assert!(
        checks(&v)
            .iter()
            .any(|(_, p, r)| !p && r.contains("is not signed by")),
        "{v}"
    );
}

/// Intel's collateral beside a TDX quote: the TCB status (PROVENANCE.md 2: UpToDate for
/// dcap-qvl's quote in its collateral's window), the collateral's CRLs applied to the PCK
/// chain; the outdated fixture matches no TCB level and fails.
#[test]
fn tdx_collateral_gives_the_tcb_status() {
    let args = vec![
        path("tdx/dcap-qvl/tdx_quote"),
        "--collateral".to_string(),
        path("tdx/dcap-qvl/tdx_quote_collateral.json"),
    ];
    let (code, v) = verify_args("2025-07-01", &args);
    let list = checks(&v);
    assert_eq!(code, 0, "{list:#?}");
    assert_eq!(check(&list, "tdx.tcb_status").2, "UpToDate");
    assert!(check(&list, "tdx.revocation").2.contains("not revoked"));
    assert!(check(&list, "tdx.tcb_info")
        .2
        .contains("Intel SGX TCB Signing"));

    let args = vec![
        path("tdx/dcap-qvl/tdx_quote_outdated"),
        "--collateral".to_string(),
        path("tdx/dcap-qvl/tdx_quote_outdated_collateral.json"),
    ];
    let (code, v) = verify_args("2026-03-01", &args);
    assert_eq!(code, 1);
    assert!(check(&checks(&v), "tdx.tcb_level")
        .2
        .contains("no TCB level matches"));
}

/// An evidence document as `attest-unlock evidence` prints it.
fn document(tee: &str, nonce: &str, key: &Value, primary: Value, additional: &str) -> Value {
    serde_json::json!({
        "tee": tee,
        "runtime-data": {"nonce": nonce, "tee-pubkey": key},
        "tee-evidence": {"primary_evidence": primary, "additional_evidence": additional},
    })
}

fn test_key() -> Value {
    serde_json::json!({"kty": "EC", "crv": "P-256", "alg": "ECDH-ES+A256KW", "x": "eA", "y": "eQ"})
}

fn padded(digest: [u8; 48]) -> [u8; 64] {
    let mut out = [0u8; 64];
    out[..48].copy_from_slice(&digest);
    out
}

/// SNP and TDX evidence documents, in the agent's own encoding (`evidence::snp::encode`),
/// from simulated hardware whose roots are given with `--root`: the report, its VCEK from the
/// certificate table, the chain, and REPORT_DATA against the document's runtime data and,
/// with `--nonce`/`--tee-pubkey`, the broker's.
#[test]
fn snp_and_tdx_evidence_documents_verify() {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    use test_kbs::sim::{SnpReportParams, SnpSigner, TdxQuoteParams, TdxSigner};
    let dir = tempfile::tempdir().unwrap();
    let key = test_key();
    let nonce = "bm9uY2U=";
    let digest = attest_verify::binding::binding_digest("", nonce, &key).unwrap();

    let snp = SnpSigner::new().unwrap();
    let raw = snp.report(&SnpReportParams::default(), &padded(digest));
    let ev = attest_unlock::evidence::snp::encode(&raw, Some(snp.cert_table()), &padded(digest))
        .unwrap();
    let doc = dir.path().join("snp.json");
    std::fs::write(&doc, document("snp", nonce, &key, ev, "").to_string()).unwrap();
    let ark = dir.path().join("ark.der");
    std::fs::write(&ark, snp.ark_der()).unwrap();
    let args = vec![
        doc.display().to_string(),
        "--root".to_string(),
        ark.display().to_string(),
    ];
    let (code, v) = verify_args("2030-01-01", &args);
    let list = checks(&v);
    assert_eq!(code, 0, "{list:#?}");
    assert!(check(&list, "snp.report_data").1);
    assert!(check(&list, "snp.signature").1);
    // The broker's nonce was another: the report is not bound to it.
    let mut other = args;
    other.extend([
        "--nonce".into(),
        "b3RoZXI=".into(),
        "--tee-pubkey".into(),
        key.to_string(),
    ]);
    let (code, v) = verify_args("2030-01-01", &other);
    assert_eq!(code, 1);
    assert!(!check(&checks(&v), "snp.report_data").1);

    let tdx = TdxSigner::new().unwrap();
    let ccel = std::fs::read(path("tdx/ccel/trustee-ovmf/CCEL_data_ovmf")).unwrap();
    let replay = attest_verify::tdx::replay_ccel(&ccel).unwrap();
    let params = TdxQuoteParams {
        rtmrs: replay.rtmrs,
        ..TdxQuoteParams::default()
    };
    let quote = tdx.quote(&params, &padded(digest));
    let ev = serde_json::json!({"quote": STANDARD.encode(&quote), "cc_eventlog": STANDARD.encode(&ccel)});
    let doc = dir.path().join("tdx.json");
    std::fs::write(&doc, document("tdx", nonce, &key, ev, "").to_string()).unwrap();
    let root = dir.path().join("intel.der");
    std::fs::write(&root, tdx.root_der()).unwrap();
    let (code, v) = verify_args(
        "2030-01-01",
        &[
            doc.display().to_string(),
            "--root".into(),
            root.display().to_string(),
        ],
    );
    let list = checks(&v);
    assert_eq!(code, 0, "{list:#?}");
    assert!(check(&list, "tdx.ccel").1 && check(&list, "tdx.report_data").1);
}

/// A real Azure SNP evidence (PROVENANCE.md 4.1, trustee's `evidence-v2.json`) in a document:
/// the SNP report with its VCEK and AMD's chain, the runtime-claims binding, the vTPM quote
/// with the HCL's AK and its PCRs all verify; only the binding to this document's runtime data
/// fails, because trustee's fixture was bound to its own test nonce.
#[test]
fn azure_evidence_document_verifies_up_to_its_binding() {
    let ev: Value = serde_json::from_slice(
        &std::fs::read(path("azure/trustee-az-snp/evidence-v2.json")).unwrap(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let doc = dir.path().join("az.json");
    std::fs::write(
        &doc,
        document("az-snp-vtpm", "bm9uY2U=", &test_key(), ev, "").to_string(),
    )
    .unwrap();
    let (code, v) = verify_args("2026-01-01", &[doc.display().to_string()]);
    assert_eq!(code, 1);
    let failed: Vec<String> = checks(&v)
        .into_iter()
        .filter(|(_, p, _)| !p)
        .map(|(n, _, _)| n)
        .collect();
    assert_eq!(failed, ["tpm.binding"], "{:#?}", checks(&v));
    let list = checks(&v);
    assert!(check(&list, "snp.vek_chain").2.contains("ARK-Milan"));
    assert!(check(&list, "tpm.signature").2.contains("HCLAkPub"));
    assert!(check(&list, "tpm.pcr_digest").1);
    // The same for Azure TDX (PROVENANCE.md 4.2): the TD quote and its PCK chain, the TDREPORT
    // in the HCL report it was made from, the runtime claims, the vTPM quote.
    let ev: Value = serde_json::from_slice(
        &std::fs::read(path("azure/trustee-az-tdx/evidence-v1.json")).unwrap(),
    )
    .unwrap();
    std::fs::write(
        &doc,
        document("az-tdx-vtpm", "bm9uY2U=", &test_key(), ev, "").to_string(),
    )
    .unwrap();
    let (code, v) = verify_args("2026-06-01", &[doc.display().to_string()]);
    assert_eq!(code, 1);
    let list = checks(&v);
    let failed: Vec<&str> = list
        .iter()
        .filter(|(_, p, _)| !p)
        .map(|(n, _, _)| n.as_str())
        .collect();
    assert_eq!(failed, ["tpm.binding"], "{list:#?}");
    for name in [
        "tdx.pck_chain",
        "tdx.report",
        "hcl.var_data_binding",
        "tpm.signature",
    ] {
        assert!(check(&list, name).1, "{name}: {list:#?}");
    }
}

/// The rest of the signed artefacts (PROVENANCE.md 4.2, 4.3, 4.4): the Azure TDX vTPM quote
/// with its HCL report and TD quote, the Genoa vTPM quote with its HCL report and VCEK, the
/// cvm-tooling quote with its AK, and the cvm-tooling VCEK chain; each verifies with the
/// nonce `challenge` (or the Genoa evaluation's nonce), and a changed signature byte fails.
#[test]
fn the_other_azure_artefacts_verify() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let f = dir.path().join(name);
        std::fs::write(&f, bytes).unwrap();
        f.display().to_string()
    };
    let challenge = hex::encode("challenge");

    // Azure TDX: the TDREPORT in the HCL report is vouched for by the TD quote beside it.
    let json: Value = serde_json::from_slice(
        &std::fs::read(path("azure/trustee-az-tdx/tpm-quote-v1.json")).unwrap(),
    )
    .unwrap();
    let hexed = |k: &str| hex::decode(json[k].as_str().unwrap()).unwrap();
    let args = vec![
        write("tdx-message.bin", &hexed("message")),
        "--signature".into(),
        write("tdx-signature.bin", &hexed("signature")),
        "--extra-data".into(),
        challenge.clone(),
        "--pcrs".into(),
        write("tdx-pcrs.json", json["pcrs"].to_string().as_bytes()),
        path("azure/trustee-az-tdx/hcl-report.bin"),
        path("azure/trustee-az-tdx/td-quote.bin"),
    ];
    let (code, v) = verify_args("2026-06-01", &args);
    let list = checks(&v);
    assert_eq!(code, 0, "{list:#?}");
    assert!(check(&list, "tdx.report").1 && check(&list, "tdx.pck_chain").1);
    assert!(check(&list, "tpm.signature").2.contains("HCLAkPub"));
    // Without the TD quote, the TDREPORT is vouched for by nothing.
    let (code, v) = verify_args("2026-06-01", &args[..args.len() - 1]);
    assert_eq!(code, 1);
    assert!(!check(&checks(&v), "tdx.report").1);

    // Genoa: the JSON's byte arrays.
    let ev: Value = serde_json::from_slice(
        &std::fs::read(path("azure/trustee-az-snp-genoa/evidence-genoa.json")).unwrap(),
    )
    .unwrap();
    let bytes = |v: &Value| -> Vec<u8> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_u64().unwrap() as u8)
            .collect()
    };
    let pcrs: Vec<String> = ev["quote"]["pcrs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| hex::encode(bytes(p)))
        .collect();
    let mut signature = bytes(&ev["quote"]["signature"]);
    let args = vec![
        write("genoa-message.bin", &bytes(&ev["quote"]["message"])),
        "--signature".into(),
        write("genoa-signature.bin", &signature),
        "--extra-data".into(),
        "0218488bae25d2509232bf676f1a66a30d7372add909109b36016ef136f2938ca05475f8b46094de6b64270ea35d950f".into(),
        "--pcrs".into(),
        write("genoa-pcrs.json", serde_json::to_string(&pcrs).unwrap().as_bytes()),
        path("azure/trustee-az-snp-genoa/hcl-report-genoa.bin"),
        path("azure/trustee-az-snp-genoa/vcek-genoa.pem"),
    ];
    let (code, v) = verify_args("2026-01-01", &args);
    let list = checks(&v);
    assert_eq!(code, 0, "{list:#?}");
    assert!(check(&list, "snp.vek_chain").2.contains("ARK-Genoa"));
    signature[100] ^= 1;
    let mut bad = args;
    bad[2] = write("genoa-signature.bin", &signature);
    let (code, v) = verify_args("2026-01-01", &bad);
    assert_eq!(code, 1);
    assert!(!check(&checks(&v), "tpm.signature").1);

    // cvm-tooling's quote.bin: u64-LE length + signature, u64-LE length + TPMS_ATTEST,
    // u64-LE count + SHA-256 PCRs.
    let raw = std::fs::read(path("azure/azure-cvm-tooling/quote.bin")).unwrap();
    let mut at = 0;
    let mut take = |n: usize| {
        let out = raw[at..at + n].to_vec();
        at += n;
        out
    };
    let len = |b: Vec<u8>| u64::from_le_bytes(b.try_into().unwrap()) as usize;
    let n = len(take(8));
    let sig = take(n);
    let n = len(take(8));
    let message = take(n);
    let count = len(take(8));
    let pcrs: Vec<String> = (0..count).map(|_| hex::encode(take(32))).collect();
    let args = vec![
        write("cvm-message.bin", &message),
        "--signature".into(),
        write("cvm-signature.bin", &sig),
        "--ak".into(),
        path("azure/azure-cvm-tooling/akpub.pem"),
        "--extra-data".into(),
        challenge,
        "--pcrs".into(),
        write(
            "cvm-pcrs.json",
            serde_json::to_string(&pcrs).unwrap().as_bytes(),
        ),
    ];
    let (code, v) = verify_args("2024-01-01", &args);
    assert_eq!(code, 0, "{:#?}", checks(&v));
    // Its nonce is not [1,2,3,4] (the source's NonceMismatch case).
    let mut wrong = args;
    wrong[6] = "01020304".into();
    let (code, _) = verify_args("2024-01-01", &wrong);
    assert_eq!(code, 1);

    // The cvm-tooling VCEK chain (another chip's; it still chains to ARK-Milan).
    let (code, v) = verify_args("2024-01-01", &[path("azure/azure-cvm-tooling/certs.pem")]);
    let list = checks(&v);
    assert_eq!(code, 0, "{list:#?}");
    assert_eq!(list.len(), 3, "{list:#?}");
}

/// `--text` prints one line per check, no escaped newlines, and for an SNP report without its
/// VCEK says where AMD publishes it.
#[test]
fn text_output_is_one_clean_line_per_check() {
    let (code, out, _) = tool(&[
        "--verify",
        "--text",
        "--at",
        "2025-06-01",
        &path("snp/genoa-azure/report_genoa.bin"),
    ]);
    assert_eq!(code, 1);
    assert!(!out.contains("\\x0a") && !out.contains("\n\n"), "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert!(lines[1].starts_with("  pass  snp.report: "), "{out}");
    assert!(
        lines[2].starts_with("  FAIL  snp.signature: no VCEK certificate"),
        "{out}"
    );
    // Genoa (CPUID family 0x19 model 0x11): the KDS address of this chip's VCEK at its TCB.
    // The hwID and SPLs are those of the chip's real VCEK (vcek_genoa.pem's extensions).
    assert!(
        lines[2].contains(
            "https://kdsintf.amd.com/vcek/v1/Genoa/0506ffba875e939c2729d20c74eb72b4c5ba6bf7ea1faa\
             a640141f12c6d64782fb487f68ce69dcd021e914cc0d9244327bc121f0242d6470903ad1d4aaea4ad1\
             ?blSPL=10&teeSPL=0&snpSPL=23&ucodeSPL=84)"
        ),
        "{out}"
    );
    assert_eq!(lines[3], "NOT verified");
}
