//! The one test world of the suites that run the agent against the test broker: a node with
//! its real swtpm, its LUKS2 image bound to the operator-format disk key, its AK, a work
//! directory and a tmpfs directory for delivered secrets. The suites add what is theirs (the
//! broker's faults, the simulated TEE) around it.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use test_kbs::{Broker, BrokerConfig};

use super::{ak_public, operator_disk_key, secret_dir, AgentConfig, LuksImage, Run, Swtpm};

/// The node's disk key resource.
pub(crate) const DISK: &str = "default/node1/root";
/// The node's kubelet secret resource, and what the broker holds there.
pub(crate) const KUBELET: &str = "default/node1/kubelet";
pub(crate) const KUBELET_TOKEN: &[u8] = b"kubelet bootstrap token 1234";

pub(crate) struct World {
    pub tpm: Swtpm,
    pub image: LuksImage,
    /// What the image's keyslot opens with (the bytes of the disk key's `key` string).
    pub passphrase: Vec<u8>,
    /// The disk key resource as the broker serves it.
    pub disk_resource: Vec<u8>,
    /// The TPM's AK, as the broker trusts it.
    pub ak: String,
    pub work: tempfile::TempDir,
    pub secrets: tempfile::TempDir,
}

impl World {
    pub(crate) fn new() -> World {
        let tpm = Swtpm::start();
        let (disk_resource, passphrase) = operator_disk_key();
        let image = LuksImage::new(&passphrase);
        let ak = ak_public(&tpm);
        World {
            tpm,
            image,
            passphrase,
            disk_resource,
            ak,
            work: secret_dir(),
            secrets: secret_dir(),
        }
    }

    /// A broker that trusts this node's AK and serves its disk key and kubelet secret.
    pub(crate) fn broker_config(&self) -> BrokerConfig {
        let mut resources = BTreeMap::new();
        resources.insert(DISK.to_owned(), self.disk_resource.clone());
        resources.insert(KUBELET.to_owned(), KUBELET_TOKEN.to_vec());
        BrokerConfig {
            trusted_aks: vec![self.ak.clone()],
            resources,
            ..BrokerConfig::default()
        }
    }

    /// Where the kubelet secret is delivered.
    pub(crate) fn secret_path(&self) -> PathBuf {
        self.secrets.path().join("kubelet/bootstrap-token")
    }

    /// The node's config for `broker`: the disk key, the image, the kubelet secret, the token.
    pub(crate) fn agent_config(&self, broker: &Broker) -> AgentConfig {
        self.config_for(&broker.url(), &broker.ca_pem())
    }

    /// The node's config for the broker at `url` with CA `ca_pem` (the test broker or the
    /// real Trustee).
    pub(crate) fn config_for(&self, url: &str, ca_pem: &str) -> AgentConfig {
        AgentConfig {
            brokers: vec![(url.to_owned(), ca_pem.to_owned())],
            tcti: self.tpm.tcti(),
            disk_key: Some(DISK.to_owned()),
            image: Some(self.image.path.clone()),
            secrets: vec![(KUBELET.to_owned(), self.secret_path())],
            token_path: Some(self.secrets.path().join("token.jwt")),
            extra: String::new(),
        }
    }

    /// The fail-closed guarantees of a failed `run` (the image's digest was `before`): a
    /// non-zero exit, the image untouched, nothing written under the secrets directory (not a
    /// file, not a staging file, not a directory), one `verdict=failed` line with `class`.
    /// Returns the verdict line.
    pub(crate) fn failed(&self, run: &Run, before: &str, class: &str) -> String {
        assert!(!run.status.success(), "must fail:\n{}", run.stderr);
        assert_eq!(self.image.digest(), before, "the image must be untouched");
        let left = entries(self.secrets.path());
        assert!(left.is_empty(), "nothing may be written, found {left:?}");
        let verdicts: Vec<&str> = run
            .stderr
            .lines()
            .filter(|l| l.contains("verdict="))
            .collect();
        assert_eq!(verdicts.len(), 1, "one verdict line:\n{}", run.stderr);
        let v = verdicts[0].to_owned();
        assert!(v.contains("verdict=failed "), "{v}");
        assert!(
            v.contains(&format!("class={class} ")),
            "want class {class}: {v}\n{}",
            run.stderr
        );
        v
    }
}

/// Every file and directory under `dir`.
pub(crate) fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        out.push(p.clone());
        if p.is_dir() {
            out.extend(entries(&p));
        }
    }
    out
}

/// Every file under `dir`.
pub(crate) fn walk(dir: &Path) -> Vec<PathBuf> {
    entries(dir).into_iter().filter(|p| !p.is_dir()).collect()
}

/// A node for the clevis pin: a swtpm, a test broker that trusts its AK and serves
/// `resources`, the agent under the pin's names in `bin_dir` and its config file (what
/// `$ATTEST_UNLOCK_CONFIG` names: the TPM, short backoffs, `max_rounds` when given).
pub(crate) struct PinNode {
    pub tpm: Swtpm,
    pub broker: test_kbs::Broker,
    pub bin_dir: tempfile::TempDir,
    pub config_file: PathBuf,
}

impl PinNode {
    pub(crate) fn start(resources: BTreeMap<String, Vec<u8>>, max_rounds: Option<u32>) -> PinNode {
        let tpm = Swtpm::start();
        let broker = Broker::start(BrokerConfig {
            trusted_aks: vec![ak_public(&tpm)],
            resources,
            ..BrokerConfig::default()
        })
        .unwrap();
        let bin_dir = tempfile::tempdir().unwrap();
        for name in ["clevis-encrypt-trustee", "clevis-decrypt-trustee"] {
            std::os::unix::fs::symlink(super::agent_bin(), bin_dir.path().join(name)).unwrap();
        }
        let config_file = bin_dir.path().join("attest-unlock.toml");
        let rounds = max_rounds.map_or(String::new(), |n| format!("max_rounds = {n}\n"));
        std::fs::write(
            &config_file,
            format!(
                "[tpm]\ntcti = {:?}\n[retry]\n{rounds}initial_backoff_ms = 1\nmax_backoff_ms = 2\n[measure]\nlog = {:?}\n",
                tpm.tcti(),
                bin_dir.path().join("measurements.log").display().to_string()
            ),
        )
        .unwrap();
        PinNode {
            tpm,
            broker,
            bin_dir,
            config_file,
        }
    }

    /// `program` (clevis) with the pin's names first in PATH and the node's config.
    pub(crate) fn cmd(&self, program: &str) -> std::process::Command {
        let mut c = std::process::Command::new(program);
        let path = format!(
            "{}:{}",
            self.bin_dir.path().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        c.env("PATH", path)
            .env("ATTEST_UNLOCK_CONFIG", &self.config_file);
        c
    }
}
