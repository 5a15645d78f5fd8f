//! End to end on confidential-VM evidence: a fake configfs-tsm tree backed by simulated SNP
//! and TDX hardware (test-kbs `sim`), a real swtpm beside it (composite evidence), the test
//! broker verifying both for real, the agent binary with `--root` pointing at the fake system,
//! and real cryptsetup on a LUKS2 image. Failures are checked for the fail-closed guarantees.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "common/fake_tsm.rs"]
mod fake_tsm;

use std::process::Command;
use std::sync::Arc;

use common::*;
use fake_tsm::FakeTsm;
use test_kbs::sim::{
    SnpReportParams, SnpSigner, TdxQuoteParams, TdxSigner, SIM_SNP_MEASUREMENT, SIM_TDX_MR_TD,
};
use test_kbs::{Broker, BrokerConfig, SnpPolicy, TdxPolicy};

/// Where the agent looks under `--root`.
const TSM_DIR: &str = "sys/kernel/config/tsm/report";
const CCEL_PATH: &str = "sys/firmware/acpi/tables/data/CCEL";

/// A real OVMF CCEL (trustee's test data) and the RTMRs trustee's own test states for it.
const OVMF_CCEL: &str = "tdx/ccel/trustee-ovmf/CCEL_data_ovmf";
const OVMF_RTMRS: [&str; 3] = [
    "8566f998798db09443b244c62de9a3041fb02e2e6936c4396d784bba2e90177329ec5aba3bb484404f2ab9cc90abe193",
    "775b9f6bfe99f8a31396f0d0218e67ffa796d3b96ccf961cbb0deba48c79c00f082cda1a5567c1c16305f1fc210c13c6",
    "94eaf7a7bf398ed8d888c91057ae0261802e4f3df084213a76ca7f0b5055ac9d2241de43cd58d9e8b49c503bbf25f34a",
];

use test_kbs::testdata;

/// The simulated platform behind the fake tree.
enum Hw {
    Snp(Arc<SnpSigner>),
    Tdx(Arc<TdxSigner>),
}

/// The test world with simulated TEE hardware behind a fake configfs-tsm tree under `root`.
struct Tee {
    node: World,
    hw: Hw,
    // Dropped before `root`, so the fake stops before its tree goes away.
    fake: Option<FakeTsm>,
    root: tempfile::TempDir,
}

impl std::ops::Deref for Tee {
    type Target = World;
    fn deref(&self) -> &World {
        &self.node
    }
}

impl Tee {
    fn new(hw: Hw) -> Tee {
        Tee {
            node: World::new(),
            hw,
            fake: None,
            root: tempfile::tempdir().unwrap(),
        }
    }

    fn snp() -> Tee {
        Tee::new(Hw::Snp(Arc::new(SnpSigner::new().unwrap())))
    }

    fn tdx() -> Tee {
        let w = Tee::new(Hw::Tdx(Arc::new(TdxSigner::new().unwrap())));
        let ccel = w.root.path().join(CCEL_PATH);
        std::fs::create_dir_all(ccel.parent().unwrap()).unwrap();
        std::fs::write(&ccel, testdata(OVMF_CCEL)).unwrap();
        w
    }

    /// Start the fake configfs-tsm tree for this world's hardware.
    fn start_tsm(&mut self, generation_race: bool) {
        self.start_tsm_launched_with(generation_race, [0; 48]);
    }

    /// Like [`Tee::start_tsm`], for a VM the host launched with this init-data digest
    /// (SNP HOST_DATA takes its first 32 bytes, TDX MRCONFIGID all 48).
    fn start_tsm_launched_with(&mut self, generation_race: bool, launch: [u8; 48]) {
        let dir = self.root.path().join(TSM_DIR);
        let fake = match &self.hw {
            Hw::Snp(signer) => {
                let signer = signer.clone();
                let aux = signer.auxblob().unwrap();
                FakeTsm::start(
                    &dir,
                    "sev_guest",
                    Box::new(move |data| {
                        let mut params = SnpReportParams::default();
                        params.host_data.copy_from_slice(&launch[..32]);
                        let report = signer.report(&params, data);
                        (report, Some(aux.clone()))
                    }),
                    generation_race,
                )
            }
            Hw::Tdx(signer) => {
                let signer = signer.clone();
                let mut params = TdxQuoteParams {
                    mr_config_id: launch,
                    ..TdxQuoteParams::default()
                };
                for (i, rtmr) in OVMF_RTMRS.iter().enumerate() {
                    params.rtmrs[i].copy_from_slice(&hex::decode(rtmr).unwrap());
                }
                FakeTsm::start(
                    &dir,
                    "tdx_guest",
                    Box::new(move |data| (signer.quote(&params, data), None)),
                    generation_race,
                )
            }
        };
        self.fake = Some(fake);
    }

    fn fake(&self) -> &FakeTsm {
        self.fake.as_ref().unwrap()
    }

    /// Trusts this world's TPM and simulated hardware, and expects its measurements.
    fn broker_config(&self) -> BrokerConfig {
        let mut config = self.node.broker_config();
        match &self.hw {
            Hw::Snp(signer) => {
                config.snp = SnpPolicy {
                    trusted_arks: vec![signer.ark_der().to_vec()],
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

    fn root_args(&self) -> Vec<String> {
        vec!["--root".to_owned(), self.root.path().display().to_string()]
    }

    fn unlock(&self, config: &AgentConfig) -> Run {
        unlock_with(config, self.work.path(), &self.root_args())
    }

    /// `attest-unlock detect` against the fake system.
    fn detect(&self, config: &AgentConfig) -> Run {
        let cfg = write_config(config, self.work.path());
        collect(
            Command::new(agent_bin())
                .args(["detect", "--kernel-cmdline", "/dev/null", "--config"])
                .arg(&cfg)
                .args(self.root_args()),
        )
    }

    /// Run and assert the fail-closed guarantees: non-zero exit, image untouched, nothing
    /// written; returns the verdict line.
    fn expect_failure(&self, config: &AgentConfig, class: &str) -> String {
        let before = self.image.digest();
        let run = self.unlock(config);
        self.failed(&run, &before, class)
    }

    /// Run, expect success with every secret delivered, and return the verdict line.
    fn expect_success(&self, config: &AgentConfig, broker: &Broker) -> String {
        let before = self.image.digest();
        let run = self.unlock(config);
        assert!(run.status.success(), "{}", run.stderr);
        assert_eq!(
            self.image.digest(),
            before,
            "--verify-only leaves the image"
        );
        assert_eq!(std::fs::read(self.secret_path()).unwrap(), KUBELET_TOKEN);
        assert_eq!(broker.released(), vec![DISK.to_owned(), KUBELET.to_owned()]);
        // One report was made, for 64 bytes of report data that end in 16 zero bytes (the
        // 48-byte binding digest, padded), and its entry was removed.
        let stats = self.fake().stats();
        assert_eq!(stats.served, 1, "{stats:?}");
        assert_eq!(&stats.report_data[0][48..], &[0u8; 16]);
        assert!(stats.served_left.is_empty(), "entry left: {stats:?}");
        run.verdict().to_owned()
    }
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

#[test]
fn snp_with_vtpm_unlocks_after_the_broker_verified_both() {
    let mut w = Tee::snp();
    w.start_tsm(false);
    let broker = Broker::start(w.broker_config()).unwrap();
    let config = w.agent_config(&broker);

    let detect = w.detect(&config);
    assert!(detect.status.success(), "{}", detect.stderr);
    assert!(
        detect.stdout.starts_with("snp (configfs-tsm "),
        "{}",
        detect.stdout
    );

    let verdict = w.expect_success(&config, &broker);
    assert!(verdict.contains("verdict=ok platform=snp "), "{verdict}");
    assert!(verdict.contains("volume=verified"), "{verdict}");
    let line = attest_line(&broker);
    assert!(
        line.contains("snp report v3 signed by") && line.contains("+ tpm quote"),
        "{line}"
    );
    assert!(line.contains("ear.status affirming"), "{line}");
}

#[test]
fn snp_wrong_measurement_is_denied_and_nothing_is_unlocked() {
    let mut w = Tee::snp();
    w.start_tsm(false);
    let mut bc = w.broker_config();
    bc.snp.expected_measurement = Some("ab".repeat(48));
    let broker = Broker::start(bc).unwrap();
    let v = w.expect_failure(&w.agent_config(&broker), "broker-denied");
    assert!(v.contains("PolicyDeny"), "{v}");
    assert!(broker.released().is_empty());
    let line = attest_line(&broker);
    assert!(
        line.contains("ear.status warning") && line.contains("SNP measurement"),
        "{line}"
    );
}

#[test]
fn snp_report_from_an_untrusted_chip_is_rejected() {
    let mut w = Tee::snp();
    w.start_tsm(false);
    let mut bc = w.broker_config();
    bc.snp.trusted_arks = vec![SnpSigner::new().unwrap().ark_der().to_vec()];
    let broker = Broker::start(bc).unwrap();
    let v = w.expect_failure(&w.agent_config(&broker), "broker-denied");
    assert!(v.contains("step=attest"), "{v}");
    assert!(broker.released().is_empty());
    let line = attest_line(&broker);
    assert!(
        line.contains("rejected") && line.contains("chain"),
        "{line}"
    );
}

#[test]
fn tdx_with_vtpm_unlocks_after_the_broker_verified_both() {
    let mut w = Tee::tdx();
    w.start_tsm(false);
    let broker = Broker::start(w.broker_config()).unwrap();
    let config = w.agent_config(&broker);

    let detect = w.detect(&config);
    assert!(detect.status.success(), "{}", detect.stderr);
    assert!(
        detect.stdout.starts_with("tdx (configfs-tsm "),
        "{}",
        detect.stdout
    );

    let verdict = w.expect_success(&config, &broker);
    assert!(verdict.contains("verdict=ok platform=tdx "), "{verdict}");
    let line = attest_line(&broker);
    assert!(
        line.contains("tdx quote v4")
            && line.contains("CCEL replayed")
            && line.contains("+ tpm quote"),
        "{line}"
    );
    assert!(line.contains("ear.status affirming"), "{line}");
}

/// With the TDX guest device beside configfs-tsm, detection chooses the quote generation
/// service over vsock first and says configfs-tsm is the fallback. Only `detect` runs: the
/// service's address is the host's vsock CID 2, which on these test machines is the real
/// host, outside what tests may reach (the direct path's exchange is tested against a fake
/// service in `evidence::tdx`).
#[test]
fn tdx_guest_device_makes_the_quote_service_the_first_choice() {
    let mut w = Tee::tdx();
    w.start_tsm(false);
    let dev = w.root.path().join("dev");
    std::fs::create_dir_all(&dev).unwrap();
    std::fs::write(dev.join("tdx_guest"), b"").unwrap();
    let broker = Broker::start(w.broker_config()).unwrap();
    let detect = w.detect(&w.agent_config(&broker));
    assert!(detect.status.success(), "{}", detect.stderr);
    assert!(
        detect
            .stdout
            .starts_with("tdx (quote generation service at vsock 2:4050 with ")
            && detect.stdout.contains("/dev/tdx_guest, configfs-tsm ")
            && detect.stdout.contains(" as the fallback"),
        "{}",
        detect.stdout
    );
}

#[test]
fn tdx_wrong_mrtd_is_denied_and_nothing_is_unlocked() {
    let mut w = Tee::tdx();
    w.start_tsm(false);
    let mut bc = w.broker_config();
    bc.tdx.expected_mr_td = Some("ab".repeat(48));
    let broker = Broker::start(bc).unwrap();
    let v = w.expect_failure(&w.agent_config(&broker), "broker-denied");
    assert!(v.contains("PolicyDeny"), "{v}");
    assert!(broker.released().is_empty());
    let line = attest_line(&broker);
    assert!(line.contains("TDX MRTD"), "{line}");
}

#[test]
fn tdx_event_log_that_does_not_match_the_quote_is_rejected() {
    let mut w = Tee::tdx();
    // Another real CCEL: it replays to other RTMRs than the quote carries.
    std::fs::write(
        w.root.path().join(CCEL_PATH),
        testdata("tdx/ccel/trustee-grub/CCEL_data_grub"),
    )
    .unwrap();
    w.start_tsm(false);
    let broker = Broker::start(w.broker_config()).unwrap();
    let v = w.expect_failure(&w.agent_config(&broker), "broker-denied");
    assert!(v.contains("step=attest"), "{v}");
    assert!(broker.released().is_empty());
    let line = attest_line(&broker);
    assert!(line.contains("the CCEL replays RTMR0"), "{line}");
}

#[test]
fn configfs_generation_race_fails_before_attesting() {
    for mut w in [Tee::snp(), Tee::tdx()] {
        w.start_tsm(true);
        let broker = Broker::start(w.broker_config()).unwrap();
        let v = w.expect_failure(&w.agent_config(&broker), "evidence");
        assert!(v.contains("step=evidence"), "{v}");
        assert!(v.contains("raced"), "{v}");
        assert!(broker.released().is_empty());
        assert!(
            !broker.log().iter().any(|l| l.starts_with("attest:")),
            "{:?}",
            broker.log()
        );
    }
}

#[test]
fn configured_tee_that_is_absent_fails_without_falling_back_to_the_tpm() {
    for platform in ["snp", "tdx"] {
        // A TPM is there (swtpm), no configfs-tsm and no /dev/sev-guest under the root.
        let w = Tee::snp();
        let broker = Broker::start(w.broker_config()).unwrap();
        let mut c = w.agent_config(&broker);
        c.extra = format!("platform = {platform:?}");
        let v = w.expect_failure(&c, "evidence");
        assert!(v.contains(&format!("no {platform} platform found")), "{v}");
        assert!(v.contains("step=detect"), "{v}");
        assert!(
            broker.log().is_empty(),
            "broker was contacted: {:?}",
            broker.log()
        );
    }
}

const INIT_DATA: &str = "version = '0.1.0'\nalgorithm = 'sha256'\n[data]\nuuid = 'node1'\n";

/// The init-data digest as Trustee computes it, by `sha256sum` (independent of our code),
/// zero-padded to 48 bytes.
fn init_data_digest() -> [u8; 48] {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("init.toml");
    std::fs::write(&f, INIT_DATA).unwrap();
    let out = run_ok(Command::new("sha256sum").arg(&f));
    let hexd = String::from_utf8(out.stdout).unwrap();
    let mut d = [0u8; 48];
    d[..32].copy_from_slice(&hex::decode(hexd.split_whitespace().next().unwrap()).unwrap());
    d
}

fn with_init_data(mut config: AgentConfig) -> AgentConfig {
    config.extra = format!("init_data = {{ body = {INIT_DATA:?} }}\n");
    config
}

/// Init-data that the launch did not bind (SNP HOST_DATA, TDX MRCONFIGID) is caught before
/// the evidence is sent, with what the report holds and what the init-data gives; the VM
/// launched with it attests.
#[test]
fn init_data_is_checked_against_what_the_launch_bound() {
    for tdx in [false, true] {
        let mut other = [0u8; 48];
        other[0] = 0x77;
        let mut w = if tdx { Tee::tdx() } else { Tee::snp() };
        w.start_tsm_launched_with(false, other);
        let broker = Broker::start(w.broker_config()).unwrap();
        let v = w.expect_failure(&with_init_data(w.agent_config(&broker)), "evidence");
        let field = if tdx {
            "TDX MRCONFIGID"
        } else {
            "SNP HOST_DATA"
        };
        assert!(
            v.contains(&format!(
                "does not match what this VM was launched with: {field} is 77"
            )),
            "{v}"
        );
        assert!(v.contains("step=evidence"), "{v}");
        assert!(
            !broker.log().iter().any(|l| l.contains("attest")),
            "evidence sent: {:?}",
            broker.log()
        );

        let mut w = if tdx { Tee::tdx() } else { Tee::snp() };
        w.start_tsm_launched_with(false, init_data_digest());
        let broker = Broker::start(w.broker_config()).unwrap();
        w.expect_success(&with_init_data(w.agent_config(&broker)), &broker);
    }
}

/// The pin looks under the same kind of root as the agent (`$ATTEST_UNLOCK_ROOT`, what
/// `--root` is for the CLI): `clevis-encrypt-trustee` attests on the simulated SNP behind the
/// fake configfs-tsm tree (with the vTPM beside it) and gets the key; the decrypt attests
/// again and gives the secret back.
#[test]
fn the_pin_attests_from_a_test_root_too() {
    let mut w = Tee::snp();
    w.start_tsm(false);
    let broker = Broker::start(w.broker_config()).unwrap();
    let config = write_config(
        &AgentConfig {
            brokers: Vec::new(),
            disk_key: None,
            image: None,
            secrets: Vec::new(),
            token_path: None,
            ..w.agent_config(&broker)
        },
        w.work.path(),
    );
    let bin = tempfile::tempdir().unwrap();
    for name in ["clevis-encrypt-trustee", "clevis-decrypt-trustee"] {
        std::os::unix::fs::symlink(agent_bin(), bin.path().join(name)).unwrap();
    }
    let pin_config = serde_json::json!({
        "servers": [{"url": broker.url(), "cert": broker.ca_pem()}],
        "path": DISK,
    })
    .to_string();
    let pin = |name: &str, arg: Option<&str>, input: &[u8]| {
        let mut cmd = Command::new(bin.path().join(name));
        cmd.args(arg)
            .env("ATTEST_UNLOCK_CONFIG", &config)
            .env("ATTEST_UNLOCK_ROOT", w.root.path());
        run_with_stdin(&mut cmd, input)
    };
    let enc = pin("clevis-encrypt-trustee", Some(&pin_config), b"pin secret");
    assert!(enc.status.success(), "{}", enc.stderr);
    assert!(enc.stderr.contains("platform snp"), "{}", enc.stderr);
    let dec = pin("clevis-decrypt-trustee", None, enc.stdout.as_bytes());
    assert!(dec.status.success(), "{}", dec.stderr);
    assert_eq!(dec.stdout, "pin secret");
    assert_eq!(w.fake().stats().served, 2, "one SNP report per attestation");
    assert_eq!(broker.released(), vec![DISK.to_owned(), DISK.to_owned()]);
}
