//! End to end on cloud CVM platforms, with the vTPM as each cloud provisions it:
//!
//! - Azure (`az-snp-vtpm`, `az-tdx-vtpm`): a swtpm with Azure's persistent AK at 0x81000003
//!   and an HCL report in NV 0x01400001 made by the test (runtime claims naming that AK; an
//!   SNP report signed by a simulated VCEK chain, or a TDREPORT that a fake IMDS turns into a
//!   quote signed by a simulated PCK chain), a paravisor stand-in that rewrites the report
//!   after the guest writes user data to NV 0x01400002 (after a delay the test chooses), and a
//!   fake IMDS on loopback. The broker verifies hardware report -> HCL claims -> AK -> quote
//!   -> binding digest.
//! - GCP (`gcp-vtpm`): a swtpm with a GCE-style AK template and an AK certificate from a test
//!   CA in NV; the broker trusts the AK because the certificate chains to that CA.
//! - The real Azure and GCE artefacts in `shared/testdata` through `attest-inspect`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "common/fake_imds.rs"]
mod fake_imds;
#[path = "common/fake_vtpm.rs"]
mod fake_vtpm;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use base64::Engine;
use common::*;
use fake_imds::{Backend, FakeImds};
use fake_vtpm::*;
use sha2::{Digest, Sha256};
use test_kbs::sim::{
    SnpReportParams, SnpSigner, TdxQuoteParams, TdxSigner, SIM_SNP_MEASUREMENT, SIM_TDX_MR_TD,
};
use test_kbs::sim_cloud::{self, GceCa, HCL_NV_SIZE};
use test_kbs::{AzurePolicy, Broker, BrokerConfig, GcePolicy, SnpPolicy, TdxPolicy};

const DISK: &str = "default/node1/root";
const KUBELET: &str = "default/node1/kubelet";

use test_kbs::testdata;

/// What the fake platform holds besides the TPM.
enum Hw {
    Snp(Arc<SnpSigner>),
    Tdx(Arc<TdxSigner>),
}

/// An Azure CVM. Fields drop in order: the paravisor before the proxy it talks through, the
/// proxy before the swtpm.
struct Azure {
    paravisor: Option<Paravisor>,
    imds: FakeImds,
    proxy: TpmProxy,
    /// Kept for its lifetime (killed on drop); everything talks to it through the proxy.
    _tpm: Swtpm,
    hw: Hw,
    image: LuksImage,
    disk_resource: Vec<u8>,
    work: tempfile::TempDir,
    secrets: tempfile::TempDir,
}

fn hcl_report(hw: &Hw, ak: &[u8], user_data: &[u8; 64]) -> Vec<u8> {
    match hw {
        Hw::Snp(signer) => {
            sim_cloud::snp_hcl_report(signer, &SnpReportParams::default(), ak, user_data).unwrap()
        }
        Hw::Tdx(_) => sim_cloud::tdx_hcl_report(&TdxQuoteParams::default(), ak, user_data).unwrap(),
    }
}

impl Azure {
    /// A CVM whose paravisor refreshes the HCL report `delay` after the guest wrote user
    /// data (`None`: never).
    fn new(snp: bool, delay: Option<Duration>) -> Azure {
        let hw = if snp {
            Hw::Snp(Arc::new(SnpSigner::new().unwrap()))
        } else {
            Hw::Tdx(Arc::new(TdxSigner::new().unwrap()))
        };
        let tpm = Swtpm::start();
        let work = secret_dir();
        let ak = make_azure_ak(&tpm, work.path());
        // The report the paravisor made at boot: user data all zero.
        let boot = hcl_report(&hw, &ak, &[0; 64]);
        nv_define_and_write(&tpm, work.path(), HCL_REPORT_NV, HCL_NV_SIZE, &boot);
        let proxy = TpmProxy::start(&tpm);
        let for_paravisor = match &hw {
            Hw::Snp(s) => Hw::Snp(s.clone()),
            Hw::Tdx(s) => Hw::Tdx(s.clone()),
        };
        let paravisor = Paravisor::start(
            &proxy.tcti(),
            delay,
            Box::new(move |ud| hcl_report(&for_paravisor, &ak, ud)),
        );
        let backend = match &hw {
            Hw::Snp(s) => Backend {
                thim: Some(fake_imds::thim_reply(
                    s.vcek_der(),
                    s.ask_der(),
                    s.ark_der(),
                )),
                quoter: None,
            },
            Hw::Tdx(s) => {
                let s = s.clone();
                Backend {
                    thim: None,
                    quoter: Some(Box::new(move |report| {
                        sim_cloud::td_quote_for(&s, report).unwrap()
                    })),
                }
            }
        };
        let imds = FakeImds::start(backend);
        let (disk_resource, passphrase) = operator_disk_key();
        let image = LuksImage::new(&passphrase);
        Azure {
            paravisor: Some(paravisor),
            imds,
            proxy,
            _tpm: tpm,
            hw,
            image,
            disk_resource,
            work,
            secrets: secret_dir(),
        }
    }

    /// Trusts the simulated hardware (not the AK: the hardware report vouches for it).
    fn broker_config(&self) -> BrokerConfig {
        let mut resources = BTreeMap::new();
        resources.insert(DISK.to_owned(), self.disk_resource.clone());
        resources.insert(KUBELET.to_owned(), b"kubelet bootstrap token 1234".to_vec());
        let mut config = BrokerConfig {
            resources,
            ..BrokerConfig::default()
        };
        match &self.hw {
            Hw::Snp(signer) => {
                config.snp = SnpPolicy {
                    trusted_arks: vec![signer.ark_der().to_vec()],
                    // As Trustee vendors AMD's ASKs: the evidence carries only the VCEK.
                    intermediates: vec![signer.ask_der().to_vec()],
                    expected_measurement: Some(hex::encode(SIM_SNP_MEASUREMENT)),
                    ..SnpPolicy::default()
                }
            }
            Hw::Tdx(signer) => {
                config.tdx = TdxPolicy {
                    trusted_roots: vec![signer.root_der().to_vec()],
                    expected_mr_td: Some(hex::encode(SIM_TDX_MR_TD)),
                    ..TdxPolicy::default()
                }
            }
        }
        config
    }

    fn agent_config(&self, broker: &Broker, azure: &str) -> AgentConfig {
        AgentConfig {
            brokers: vec![(broker.url(), broker.ca_pem())],
            tcti: self.proxy.tcti(),
            disk_key: Some(DISK.to_owned()),
            image: Some(self.image.path.clone()),
            secrets: vec![(KUBELET.to_owned(), self.secret_path())],
            token_path: Some(self.secrets.path().join("token.jwt")),
            extra: format!("azure = {{ imds_url = {:?}{azure} }}", self.imds.url()),
        }
    }

    fn secret_path(&self) -> PathBuf {
        self.secrets.path().join("kubelet/bootstrap-token")
    }

    fn paravisor_updates(&self) -> u32 {
        self.paravisor.as_ref().map_or(0, Paravisor::updates)
    }
}

/// `attest-unlock detect` with this config.
fn detect(config: &AgentConfig, work: &Path) -> Run {
    let cfg = write_config(config, work);
    collect(
        Command::new(agent_bin())
            .args(["detect", "--kernel-cmdline", "/dev/null", "--config"])
            .arg(&cfg),
    )
}

/// Run `unlock --verify-only`, expect success with every secret delivered and the image
/// untouched; returns the verdict line.
fn expect_success(
    config: &AgentConfig,
    work: &Path,
    image: &LuksImage,
    secret: &Path,
    broker: &Broker,
) -> String {
    let before = image.digest();
    let run = unlock(config, work);
    assert!(run.status.success(), "{}", run.stderr);
    assert_eq!(image.digest(), before, "--verify-only leaves the image");
    assert_eq!(
        std::fs::read(secret).unwrap(),
        b"kubelet bootstrap token 1234"
    );
    assert_eq!(broker.released(), vec![DISK.to_owned(), KUBELET.to_owned()]);
    run.verdict().to_owned()
}

/// Run and check the fail-closed guarantees; returns the verdict line.
fn expect_failure(
    config: &AgentConfig,
    work: &Path,
    image: &LuksImage,
    secrets: &Path,
    class: &str,
) -> String {
    let before = image.digest();
    let run = unlock(config, work);
    assert!(!run.status.success(), "must fail:\n{}", run.stderr);
    assert_eq!(image.digest(), before, "the image must be untouched");
    assert!(
        std::fs::read_dir(secrets).unwrap().next().is_none(),
        "nothing may be written"
    );
    let verdict = run.verdict().to_owned();
    assert!(verdict.contains("verdict=failed"), "{verdict}");
    assert!(
        verdict.contains(&format!("class={class} ")),
        "want {class}: {verdict}"
    );
    verdict
}

/// The time a step took, from the verdict line (`evidence=12.3ms`).
fn step_ms(verdict: &str, step: &str) -> f64 {
    verdict
        .split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{step}=")))
        .and_then(|v| v.strip_suffix("ms"))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {step}= in {verdict}"))
}

/// The broker's line for the one attestation.
fn attest_line(broker: &Broker) -> String {
    let attests: Vec<String> = broker
        .log()
        .into_iter()
        .filter(|l| l.starts_with("attest:"))
        .collect();
    assert_eq!(attests.len(), 1, "{attests:?}");
    attests[0].clone()
}

/// The public tools sleep this long after writing the user data; the agent must not.
const FIXED_SLEEP_OF_THE_ANCHORS_MS: f64 = 3000.0;

#[test]
fn azure_snp_vtpm_unlocks_after_the_broker_verified_the_whole_chain() {
    let w = Azure::new(true, Some(Duration::ZERO));
    let broker = Broker::start(w.broker_config()).unwrap();
    let config = w.agent_config(&broker, "");

    let d = detect(&config, w.work.path());
    assert!(d.status.success(), "{}", d.stderr);
    assert!(
        d.stdout.starts_with("az-snp-vtpm (vTPM swtpm:"),
        "{}",
        d.stdout
    );
    assert!(d.stdout.contains("NV 0x01400001"), "{}", d.stdout);

    let verdict = expect_success(&config, w.work.path(), &w.image, &w.secret_path(), &broker);
    assert!(
        verdict.contains("verdict=ok platform=az-snp-vtpm "),
        "{verdict}"
    );
    eprintln!("{verdict}");
    let evidence_ms = step_ms(&verdict, "evidence");
    assert!(evidence_ms < FIXED_SLEEP_OF_THE_ANCHORS_MS, "{verdict}");
    let line = attest_line(&broker);
    assert!(
        line.contains("snp report v3 signed by")
            && line.contains("fresh HCL report")
            && line.contains("vTPM quote by HCLAkPub")
            && line.contains("ear.status affirming"),
        "{line}"
    );
    assert_eq!(w.paravisor_updates(), 1);
    assert_eq!(
        w.imds.seen(),
        vec!["GET /metadata/THIM/amd/certification".to_owned()]
    );
}

#[test]
fn azure_tdx_vtpm_unlocks_after_the_broker_verified_the_whole_chain() {
    let w = Azure::new(false, Some(Duration::ZERO));
    let broker = Broker::start(w.broker_config()).unwrap();
    let config = w.agent_config(&broker, "");

    let d = detect(&config, w.work.path());
    assert!(d.status.success(), "{}", d.stderr);
    assert!(
        d.stdout.starts_with("az-tdx-vtpm (vTPM swtpm:"),
        "{}",
        d.stdout
    );

    let verdict = expect_success(&config, w.work.path(), &w.image, &w.secret_path(), &broker);
    assert!(
        verdict.contains("verdict=ok platform=az-tdx-vtpm "),
        "{verdict}"
    );
    let line = attest_line(&broker);
    assert!(
        line.contains("tdx quote v4")
            && line.contains("fresh HCL report")
            && line.contains("ear.status affirming"),
        "{line}"
    );
    assert_eq!(w.imds.seen(), vec!["POST /acc/tdquote".to_owned()]);
}

#[test]
fn azure_evidence_has_trustees_shape() {
    let w = Azure::new(true, Some(Duration::ZERO));
    let broker = Broker::start(w.broker_config()).unwrap();
    let cfg = write_config(&w.agent_config(&broker, ""), w.work.path());
    let nonce = STANDARD.encode([7u8; 32]);
    let out = run_ok(
        Command::new(agent_bin())
            .args(["evidence", "--kernel-cmdline", "/dev/null", "--config"])
            .arg(&cfg)
            .args(["--nonce", &nonce]),
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["tee"], "az-snp-vtpm");
    let ev = &doc["tee-evidence"]["primary_evidence"];
    assert_eq!(ev["version"], 2);
    let report_data = hex::decode(doc["report-data"].as_str().unwrap()).unwrap();
    // Hex TPM quote fields, as Trustee's serde_with Hex reads them; the raw RSA signature.
    let quote = &ev["tpm_quote"];
    assert_eq!(
        hex::decode(quote["signature"].as_str().unwrap())
            .unwrap()
            .len(),
        256
    );
    let message = hex::decode(quote["message"].as_str().unwrap()).unwrap();
    assert!(message.windows(48).any(|w| w == report_data.as_slice()));
    assert_eq!(quote["pcrs"].as_array().unwrap().len(), 24);
    // Padded base64url HCL report whose user data is the binding digest, and the VCEK as
    // padded base64url DER.
    let hcl = URL_SAFE.decode(ev["hcl_report"].as_str().unwrap()).unwrap();
    assert_eq!(hcl.len(), HCL_NV_SIZE);
    let text = String::from_utf8_lossy(&hcl);
    let mut padded = report_data;
    padded.resize(64, 0);
    assert!(
        text.contains(&hex::encode_upper(&padded)),
        "user data not in the report"
    );
    let Hw::Snp(signer) = &w.hw else {
        unreachable!()
    };
    assert_eq!(
        URL_SAFE.decode(ev["vcek"].as_str().unwrap()).unwrap(),
        signer.vcek_der()
    );
    assert!(ev.get("td_quote").is_none());
}

#[test]
fn azure_slow_paravisor_is_polled_not_waited_out_with_a_fixed_sleep() {
    let delay = Duration::from_millis(700);
    let w = Azure::new(true, Some(delay));
    let broker = Broker::start(w.broker_config()).unwrap();
    let config = w.agent_config(&broker, "");
    let verdict = expect_success(&config, w.work.path(), &w.image, &w.secret_path(), &broker);
    eprintln!("{verdict}");
    let evidence_ms = step_ms(&verdict, "evidence");
    // It waited for the refresh, and took it as soon as it came rather than after a fixed
    // sleep (the anchors' 3 s would put it at 3 s or more).
    assert!(evidence_ms >= 700.0, "{verdict}");
    assert!(evidence_ms < FIXED_SLEEP_OF_THE_ANCHORS_MS, "{verdict}");
    assert_eq!(w.paravisor_updates(), 1);
    assert!(attest_line(&broker).contains("fresh HCL report"));
}

#[test]
fn azure_paravisor_that_never_refreshes_fails_at_the_timeout_with_a_clear_error() {
    let w = Azure::new(true, None);
    let broker = Broker::start(w.broker_config()).unwrap();
    let config = w.agent_config(&broker, ", poll_timeout_ms = 400");
    let start = std::time::Instant::now();
    let verdict = expect_failure(
        &config,
        w.work.path(),
        &w.image,
        w.secrets.path(),
        "evidence",
    );
    assert!(start.elapsed() < Duration::from_secs(10));
    assert!(verdict.contains("step=evidence"), "{verdict}");
    assert!(
        verdict.contains("vTPM NV 0x01400001 did not carry our user data after"),
        "{verdict}"
    );
    assert!(verdict.contains("azure.poll_timeout_ms"), "{verdict}");
    // Never sent: no attestation reached the broker, the VCEK was not even fetched.
    assert!(!broker.log().iter().any(|l| l.starts_with("attest:")));
    assert!(w.imds.seen().is_empty());
}

#[test]
fn azure_boot_report_is_accepted_only_when_the_broker_allows_it() {
    let w = Azure::new(true, Some(Duration::ZERO));
    let broker = Broker::start(w.broker_config()).unwrap();
    let config = w.agent_config(&broker, ", insecure_boot_report = true");
    let verdict = expect_failure(
        &config,
        w.work.path(),
        &w.image,
        w.secrets.path(),
        "broker-denied",
    );
    assert!(verdict.contains("step=attest"), "{verdict}");
    assert!(attest_line(&broker).contains("allow_boot_report is off"));
    drop(broker);

    let mut bc = w.broker_config();
    bc.azure = AzurePolicy {
        allow_boot_report: true,
    };
    let broker = Broker::start(bc).unwrap();
    let config = w.agent_config(&broker, ", insecure_boot_report = true");
    expect_success(&config, w.work.path(), &w.image, &w.secret_path(), &broker);
    assert!(attest_line(&broker).contains("boot-time HCL report"));
    // No user data was written, so the paravisor made no report.
    assert_eq!(w.paravisor_updates(), 0);
}

#[test]
fn azure_report_from_an_untrusted_chip_is_rejected() {
    let w = Azure::new(true, Some(Duration::ZERO));
    let mut bc = w.broker_config();
    bc.snp.trusted_arks = vec![SnpSigner::new().unwrap().ark_der().to_vec()];
    let broker = Broker::start(bc).unwrap();
    let config = w.agent_config(&broker, "");
    let verdict = expect_failure(
        &config,
        w.work.path(),
        &w.image,
        w.secrets.path(),
        "broker-denied",
    );
    assert!(verdict.contains("step=attest"), "{verdict}");
    assert!(broker.released().is_empty());
    let line = attest_line(&broker);
    assert!(
        line.contains("rejected") && line.contains("chain"),
        "{line}"
    );
}

/// A Google Cloud VM: the GCE AK template and its certificate in NV, as GCE provisions them.
struct Gcp {
    tpm: Swtpm,
    ca: GceCa,
    image: LuksImage,
    disk_resource: Vec<u8>,
    work: tempfile::TempDir,
    secrets: tempfile::TempDir,
}

/// GCE's RSA AK template: the real GCE AK's TPMT_PUBLIC (shared/testdata) with the unique
/// field emptied, as a creation template has it.
fn gce_template() -> Vec<u8> {
    let public = testdata("tpm/quote/gce-cos-85-nonce9009/ak_pub.tpmt_public.bin");
    // type, nameAlg, attributes, empty authPolicy, RSA parameters: 22 bytes; then unique.
    let mut t = public[..22].to_vec();
    t.extend_from_slice(&[0, 0]);
    t
}

/// The key the template yields on this TPM, made with tss-esapi (not the agent).
fn gce_ak_spki(tpm: &Swtpm, template: &[u8]) -> Vec<u8> {
    use rsa::pkcs8::EncodePublicKey;
    use std::str::FromStr;
    use tss_esapi::interface_types::resource_handles::Hierarchy;
    use tss_esapi::structures::Public;
    use tss_esapi::traits::UnMarshall;
    let mut ctx =
        tss_esapi::Context::new(tss_esapi::TctiNameConf::from_str(&tpm.tcti()).unwrap()).unwrap();
    let public = Public::unmarshall(template).unwrap();
    let key = ctx
        .execute_with_nullauth_session(|c| {
            c.create_primary(Hierarchy::Endorsement, public, None, None, None, None)
        })
        .unwrap();
    ctx.flush_context(key.key_handle.into()).unwrap();
    let Public::Rsa { unique, .. } = key.out_public else {
        panic!("RSA AK")
    };
    rsa::RsaPublicKey::new(
        rsa::BigUint::from_bytes_be(unique.value()),
        rsa::BigUint::from(65_537u32),
    )
    .unwrap()
    .to_public_key_der()
    .unwrap()
    .into_vec()
}

impl Gcp {
    fn new() -> Gcp {
        let tpm = Swtpm::start();
        let work = secret_dir();
        let template = gce_template();
        nv_define_and_write(
            &tpm,
            work.path(),
            GCE_TEMPLATE_NV,
            template.len(),
            &template,
        );
        let ca = GceCa::new().unwrap();
        let mut cert = ca.issue_ak_cert(&gce_ak_spki(&tpm, &template)).unwrap();
        // GCE's certificate index is larger than the certificate: zero padding follows.
        cert.resize(cert.len() + 100, 0);
        nv_define_and_write(&tpm, work.path(), GCE_CERT_NV, cert.len(), &cert);
        let (disk_resource, passphrase) = operator_disk_key();
        Gcp {
            tpm,
            ca,
            image: LuksImage::new(&passphrase),
            disk_resource,
            work,
            secrets: secret_dir(),
        }
    }

    /// Trusts the test CA's AK certificates; no AK is pinned.
    fn broker_config(&self, roots: Vec<Vec<u8>>) -> BrokerConfig {
        let mut resources = BTreeMap::new();
        resources.insert(DISK.to_owned(), self.disk_resource.clone());
        resources.insert(KUBELET.to_owned(), b"kubelet bootstrap token 1234".to_vec());
        BrokerConfig {
            resources,
            gce: GcePolicy {
                trusted_roots: roots,
                intermediates: vec![self.ca.intermediate_der()],
                verification_time: None,
            },
            ..BrokerConfig::default()
        }
    }

    fn agent_config(&self, broker: &Broker) -> AgentConfig {
        AgentConfig {
            brokers: vec![(broker.url(), broker.ca_pem())],
            tcti: self.tpm.tcti(),
            disk_key: Some(DISK.to_owned()),
            image: Some(self.image.path.clone()),
            secrets: vec![(
                KUBELET.to_owned(),
                self.secrets.path().join("kubelet/bootstrap-token"),
            )],
            token_path: None,
            extra: String::new(),
        }
    }
}

#[test]
fn gcp_vtpm_unlocks_with_the_ak_the_gce_ca_certified() {
    let w = Gcp::new();
    let broker = Broker::start(w.broker_config(vec![w.ca.root_der()])).unwrap();
    let config = w.agent_config(&broker);

    let d = detect(&config, w.work.path());
    assert!(d.status.success(), "{}", d.stderr);
    assert!(
        d.stdout.starts_with("gcp-vtpm (vTPM swtpm:"),
        "{}",
        d.stdout
    );

    let verdict = expect_success(
        &config,
        w.work.path(),
        &w.image,
        &w.secrets.path().join("kubelet/bootstrap-token"),
        &broker,
    );
    assert!(
        verdict.contains("verdict=ok platform=gcp-vtpm "),
        "{verdict}"
    );
    let line = attest_line(&broker);
    assert!(
        line.contains("tpm quote (AK certified by") && line.contains("ear.status affirming"),
        "{line}"
    );
}

#[test]
fn gcp_ak_certificate_from_an_untrusted_ca_is_denied() {
    let w = Gcp::new();
    let other = GceCa::new().unwrap();
    let broker = Broker::start(w.broker_config(vec![other.root_der()])).unwrap();
    let verdict = expect_failure(
        &w.agent_config(&broker),
        w.work.path(),
        &w.image,
        w.secrets.path(),
        "broker-denied",
    );
    assert!(verdict.contains("PolicyDeny"), "{verdict}");
    let line = attest_line(&broker);
    assert!(
        line.contains("ear.status warning") && line.contains("AK certificate rejected"),
        "{line}"
    );
}

#[test]
fn configured_cloud_platform_that_is_absent_fails_without_falling_back() {
    // A plain swtpm: no HCL report, no GCE AK template.
    let w = Gcp {
        tpm: Swtpm::start(),
        ca: GceCa::new().unwrap(),
        image: LuksImage::recovery_only(),
        disk_resource: Vec::new(),
        work: secret_dir(),
        secrets: secret_dir(),
    };
    let broker = Broker::start(w.broker_config(vec![w.ca.root_der()])).unwrap();
    for platform in ["az-snp-vtpm", "az-tdx-vtpm", "gcp-vtpm"] {
        let mut c = w.agent_config(&broker);
        c.extra = format!("platform = {platform:?}");
        let verdict = expect_failure(&c, w.work.path(), &w.image, w.secrets.path(), "evidence");
        assert!(
            verdict.contains(&format!("no {platform} platform found")),
            "{verdict}"
        );
        assert!(verdict.contains("step=detect"), "{verdict}");
    }
    assert!(broker.log().is_empty(), "{:?}", broker.log());
}

fn inspect(bytes: &[u8], dir: &Path) -> serde_json::Value {
    let file = dir.join("artefact.bin");
    std::fs::write(&file, bytes).unwrap();
    let out = run_ok(Command::new(env!("CARGO_BIN_EXE_attest-inspect")).arg(&file));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn real_azure_and_gce_artefacts_parse_through_inspect() {
    let dir = tempfile::tempdir().unwrap();
    for (path, hw) in [
        ("azure/trustee-az-snp/hcl-report.bin", "snp"),
        ("azure/trustee-az-tdx/hcl-report.bin", "tdx"),
        ("azure/trustee-az-snp-genoa/hcl-report-genoa.bin", "snp"),
        ("azure/azure-cvm-tooling/hcl-report-snp.bin", "snp"),
        ("azure/azure-cvm-tooling/hcl-report-tdx.bin", "tdx"),
    ] {
        let v = inspect(&testdata(path), dir.path());
        assert_eq!(v["kind"], "hcl_report", "{path}");
        assert_eq!(v["hw_report_type"], hw, "{path}");
        assert_eq!(v["var_data_hash_matches"], true, "{path}");
        assert_eq!(v["ak_pub_present"], true, "{path}");
    }

    // trustee's v2 evidence: the HCL user data and the quote nonce are the report data.
    let ev: serde_json::Value =
        serde_json::from_slice(&testdata("azure/trustee-az-snp/evidence-v2.json")).unwrap();
    const NONCE: &str = "982f5c6e45df0ed3f10b6f60b02f0c8390e281300f3805e2279c16168cd6ae9aa398f647caa2338748cd0fd9f5f819ef";
    let hcl = URL_SAFE.decode(ev["hcl_report"].as_str().unwrap()).unwrap();
    let v = inspect(&hcl, dir.path());
    assert_eq!(
        v["runtime_claims"]["user-data"]
            .as_str()
            .unwrap()
            .to_lowercase(),
        format!("{NONCE}{}", "0".repeat(32))
    );
    let message = hex::decode(ev["tpm_quote"]["message"].as_str().unwrap()).unwrap();
    let v = inspect(&message, dir.path());
    assert_eq!(v["kind"], "tpms_attest");
    assert_eq!(v["extra_data"], NONCE);

    // The GCE set: the quote's nonce and PCR digest, the event log.
    let set = "tpm/quote/gce-cos-85-nonce9009";
    let v = inspect(
        &testdata(&format!("{set}/quote_sha256.tpms_attest.bin")),
        dir.path(),
    );
    assert_eq!(v["extra_data"], "9009");
    let pcrs: serde_json::Value =
        serde_json::from_slice(&testdata(&format!("{set}/pcrs.json"))).unwrap();
    let mut h = Sha256::new();
    for i in 0..24 {
        h.update(hex::decode(pcrs["pcrs"]["sha256"][i.to_string()].as_str().unwrap()).unwrap());
    }
    assert_eq!(v["pcr_digest"], hex::encode(h.finalize()));
    let v = inspect(&testdata(&format!("{set}/event_log.bin")), dir.path());
    assert_eq!(v["kind"], "event_log");
}

/// The GCE evidence document verifies offline: `attest-inspect` finds the AK vouched for by
/// its certificate through the intermediate given beside and the root given with `--root`,
/// and refuses it without the root.
#[test]
fn gcp_evidence_document_verifies_offline_through_its_ak_certificate() {
    let w = Gcp::new();
    let broker = Broker::start(w.broker_config(vec![w.ca.root_der()])).unwrap();
    let cfg = write_config(&w.agent_config(&broker), w.work.path());
    let nonce = STANDARD.encode([5u8; 32]);
    let out = run_ok(
        Command::new(agent_bin())
            .args(["evidence", "--kernel-cmdline", "/dev/null", "--config"])
            .arg(&cfg)
            .args(["--nonce", &nonce]),
    );
    let doc = w.work.path().join("evidence.json");
    std::fs::write(&doc, &out.stdout).unwrap();
    let root = w.work.path().join("root.der");
    std::fs::write(&root, w.ca.root_der()).unwrap();
    let intermediate = w.work.path().join("intermediate.der");
    std::fs::write(&intermediate, w.ca.intermediate_der()).unwrap();
    let inspect = |extra: &[&Path]| {
        Command::new(env!("CARGO_BIN_EXE_attest-inspect"))
            .args(["--verify", "--text"])
            .arg(&doc)
            .args(extra)
            .output()
            .unwrap()
    };
    let out = inspect(&[&intermediate, Path::new("--root"), &root]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("pass  tpm.ak_trusted: ak_cert chains to"),
        "{text}"
    );
    assert!(text.contains("pass  tpm.binding"), "{text}");
    let out = inspect(&[&intermediate]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("FAIL  tpm.ak_trusted"), "{text}");
}
