//! The TCB status of the real TDX quotes with the Intel collateral that comes with them, by
//! our evaluation and by dcap-qvl's (PROVENANCE.md section 2: "UpToDate" for `tdx_quote`; the
//! "outdated" fixture matches no TCB level, which dcap-qvl refuses).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{SystemTime, UNIX_EPOCH};

use attest_verify::check::Checks;
use attest_verify::collateral::{self, TcbStatus};
use attest_verify::{roots, tdx};

const TESTDATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/testdata/");

fn read(rel: &str) -> Vec<u8> {
    std::fs::read(format!("{TESTDATA}{rel}")).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn at(rfc3339: &str) -> SystemTime {
    collateral::parse_time(rfc3339).unwrap()
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// Ours: the quote verified against Intel's pinned root, then its collateral evaluated.
fn ours(quote: &[u8], collateral_json: &[u8], t: SystemTime) -> (Option<TcbStatus>, Checks) {
    let intel = roots::intel();
    let mut checks = Checks::new();
    let verified =
        tdx::verify_steps(quote, &intel.anchors, t, &mut checks).expect("quote verifies");
    let c = collateral::parse(collateral_json).unwrap();
    let verdict = collateral::evaluate(&verified, &c, &intel.anchors, &c.crls, t, &mut checks);
    (verdict.map(|v| v.status), checks)
}

fn failures(checks: &Checks) -> Vec<String> {
    checks
        .iter()
        .filter_map(|c| c.outcome.as_ref().err().map(|r| format!("{}: {r}", c.name)))
        .collect()
}

#[test]
fn up_to_date_quote_agrees_with_dcap_qvl() {
    let quote = read("tdx/dcap-qvl/tdx_quote");
    let json = read("tdx/dcap-qvl/tdx_quote_collateral.json");
    let t = at("2025-07-01T00:00:00Z");
    let (status, checks) = ours(&quote, &json, t);
    assert_eq!(
        status,
        Some(TcbStatus::UpToDate),
        "{:#?}",
        failures(&checks)
    );
    assert!(checks.all_passed(), "{:#?}", failures(&checks));
    let theirs: dcap_qvl::QuoteCollateralV3 = serde_json::from_slice(&json).unwrap();
    let report = dcap_qvl::verify::verify(&quote, &theirs, secs(t)).unwrap();
    assert_eq!(report.status, "UpToDate");

    // Outside the collateral's window both refuse: the TCB info expired 2025-07-19.
    let late = at("2025-08-01T00:00:00Z");
    let (status, checks) = ours(&quote, &json, late);
    assert_eq!(status, None);
    assert!(
        failures(&checks).iter().any(|f| f.contains("expired")),
        "{:#?}",
        failures(&checks)
    );
    assert!(dcap_qvl::verify::verify(&quote, &theirs, secs(late)).is_err());
}

#[test]
fn outdated_quote_matches_no_level_as_dcap_qvl_says() {
    let quote = read("tdx/dcap-qvl/tdx_quote_outdated");
    let json = read("tdx/dcap-qvl/tdx_quote_outdated_collateral.json");
    let t = at("2026-03-01T00:00:00Z");
    let (status, checks) = ours(&quote, &json, t);
    assert_eq!(status, None);
    let f = failures(&checks);
    assert!(
        f.len() == 1 && f[0].starts_with("tcb_level: no TCB level matches"),
        "{f:#?}"
    );
    let theirs: dcap_qvl::QuoteCollateralV3 = serde_json::from_slice(&json).unwrap();
    let e = dcap_qvl::verify::verify(&quote, &theirs, secs(t)).unwrap_err();
    assert!(format!("{e:#}").contains("No matching TCB level"), "{e:#}");
}

/// A byte of the signed TCB info changed: its signature fails, and nothing is appraised on it.
#[test]
fn a_changed_tcb_info_fails_its_signature() {
    let quote = read("tdx/dcap-qvl/tdx_quote");
    let mut json: serde_json::Value =
        serde_json::from_slice(&read("tdx/dcap-qvl/tdx_quote_collateral.json")).unwrap();
    let tcb_info = json["tcb_info"]
        .as_str()
        .unwrap()
        .replacen("UpToDate", "UpToDatf", 1);
    json["tcb_info"] = serde_json::Value::String(tcb_info);
    let (status, checks) = ours(
        &quote,
        json.to_string().as_bytes(),
        at("2025-07-01T00:00:00Z"),
    );
    assert_eq!(status, None);
    assert!(
        failures(&checks)
            .iter()
            .any(|f| f.starts_with("tcb_info: the TCB info signature does not verify")),
        "{:#?}",
        failures(&checks)
    );
}
