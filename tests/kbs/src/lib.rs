//! A test key broker that speaks Trustee's KBS protocol 0.4.0 (RCAR) on loopback.
//!
//! The broker exists so the agent's end-to-end tests and the demo can run against something
//! wire-compatible with a real Trustee KBS without containers or network access. It verifies TPM
//! evidence for real (quote signature, PCR digest, nonce binding) with code that shares nothing
//! with the agent, appraises it the way Trustee's default TPM policy does (`affirming` only when
//! the AK is trusted and the expected PCRs match, `warning` otherwise), verifies SEV-SNP reports
//! (VCEK -> ASK -> ARK) and TDX quotes (QE report, PCK chain, CCEL replay), alone or with a TPM
//! quote as additional evidence (see [`SnpPolicy`], [`TdxPolicy`]; [`sim`] makes simulated
//! hardware for tests), Azure vTPM evidence (hardware report -> HCL runtime claims -> vTPM AK
//! -> quote, [`AzurePolicy`]) and GCE AK certificates ([`GcePolicy`]; [`sim_cloud`] makes both
//! for tests), issues an ES256 EAR-style token and releases resources as flattened JWE
//! (`ECDH-ES+A256KW` + `A256GCM`) to the TEE key bound into the evidence.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! let mut config = test_kbs::BrokerConfig::default();
//! config.resources.insert("default/key/disk".into(), b"secret".to_vec());
//! let broker = test_kbs::Broker::start(config)?;
//! println!("trust {} and talk to {}", broker.ca_pem(), broker.url());
//! # Ok(())
//! # }
//! ```
//!
//! Every decision (why attestation failed, which status was given, which resource was released
//! or denied) is recorded as one line in [`Broker::log`], mirroring what an operator would read in
//! Trustee's log. Secret bytes, nonces and tokens are never logged.

mod admission;
mod api;
mod azure;
mod evidence;
mod faults;
mod gce;
mod http;
mod jwe;
mod relay;
mod server;
pub mod sim;
pub mod sim_cloud;
mod snp;
mod tdx;
mod tee;
mod tls;
mod token;
pub mod trustee;

use std::collections::BTreeMap;

/// Certificates and chains: the verification the offline tool shares.
use attest_verify::x509;

pub use admission::{Admission, AdmissionStats};
pub use attest_verify::snp::SnpTcb;
pub use azure::AzurePolicy;
pub use faults::{Endpoint, Faults, JweFault, Reset, TlsFault, MAX_DELAY};
pub use gce::GcePolicy;
pub use relay::RelayConfig;
pub use server::Broker;
pub use snp::SnpPolicy;
pub use tdx::TdxPolicy;

/// The KBS protocol version a real Trustee accepts, and this broker's default.
pub const KBS_PROTOCOL_VERSION: &str = "0.4.0";

/// What the broker trusts, what it serves, and how strict it is.
///
/// Build it with `BrokerConfig { ..Default::default() }` so that fields added later do not break
/// callers.
#[derive(Clone)]
pub struct BrokerConfig {
    /// Trusted attestation keys: standard base64 (padded) of the AK's DER SubjectPublicKeyInfo,
    /// exactly as the client sends it in the evidence field `ak_public`. Like Trustee, the broker
    /// compares the decoded bytes, so only the key matters, not the base64 spelling.
    pub trusted_aks: Vec<String>,
    /// Reference values: PCR index (0-23) to the lowercase hex SHA-256 value it must hold.
    pub expected_pcrs: BTreeMap<u8, String>,
    /// Resources by path `repo/type/tag`, with their plaintext bytes.
    pub resources: BTreeMap<String, Vec<u8>>,
    /// The protocol version the broker accepts in `/auth`; tests set another value to provoke a
    /// version mismatch. Defaults to [`KBS_PROTOCOL_VERSION`].
    pub expected_version: String,
    /// Whether a resource is released only when the appraisal is `affirming` (the default, and
    /// what operators must configure on a real Trustee). When false, `warning` is enough, which is
    /// what Trustee's default resource policy does.
    pub require_affirming: bool,
    /// Fault injection for the agent's fault tests; the default injects nothing. Can be changed
    /// while the broker runs with [`Broker::set_faults`].
    pub faults: Faults,
    /// What SNP evidence must chain to and is appraised against; trusts nothing by default.
    pub snp: SnpPolicy,
    /// What TDX evidence must chain to and is appraised against; trusts nothing by default.
    pub tdx: TdxPolicy,
    /// What Azure vTPM evidence may be beyond the SNP/TDX policies (which its hardware report
    /// is checked against).
    pub azure: AzurePolicy,
    /// Which CAs certify GCE attestation keys (`ak_cert` in `tpm` evidence); none by default.
    pub gce: GcePolicy,
    /// Load tests only (`cargo xtask bench`): at most this many attestations at once, the rest
    /// answered 503 (see [`Admission`]). `None` (the default): no limit.
    pub admission: Option<Admission>,
    /// Hostile-disk tests only: relay every request to another broker, serving only
    /// [`RelayConfig::own`] itself (the attacker's broker in the middle).
    pub relay: Option<RelayConfig>,
    /// First-boot tests: also serve AK registration at this path (`PUT` with
    /// `{"attestation_key": <PEM>, "uuid": <uuid>}`, as the pin sends it), trust on first use
    /// per node uuid: a registered AK is trusted from then on, and another AK for the same uuid
    /// is refused with 409. `None` (the default): no registration endpoint.
    pub registration: Option<String>,
}

/// Shows resource paths and sizes but never their bytes, so a logged configuration cannot leak
/// a secret.
impl std::fmt::Debug for BrokerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let resources: BTreeMap<&str, String> = self
            .resources
            .iter()
            .map(|(path, bytes)| (path.as_str(), format!("<{} bytes>", bytes.len())))
            .collect();
        f.debug_struct("BrokerConfig")
            .field("trusted_aks", &self.trusted_aks)
            .field("expected_pcrs", &self.expected_pcrs)
            .field("resources", &resources)
            .field("expected_version", &self.expected_version)
            .field("require_affirming", &self.require_affirming)
            .field("faults", &self.faults)
            .field("snp", &self.snp)
            .field("tdx", &self.tdx)
            .field("azure", &self.azure)
            .field("gce", &self.gce)
            .field("admission", &self.admission)
            .field("relay", &self.relay)
            .field("registration", &self.registration)
            .finish()
    }
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            trusted_aks: Vec::new(),
            expected_pcrs: BTreeMap::new(),
            resources: BTreeMap::new(),
            expected_version: KBS_PROTOCOL_VERSION.to_string(),
            require_affirming: true,
            faults: Faults::default(),
            snp: SnpPolicy::default(),
            tdx: TdxPolicy::default(),
            azure: AzurePolicy::default(),
            gce: GcePolicy::default(),
            admission: None,
            relay: None,
            registration: None,
        }
    }
}

/// An HTTPS client that trusts only `ca_pem` (ring, as the agent uses), with no proxy, no
/// redirects, statuses as replies and a 30 s bound per call: how the relay, and tests that
/// talk to a broker directly, reach it.
pub fn https_client(ca_pem: &str) -> anyhow::Result<ureq::Agent> {
    use std::sync::Arc;
    use ureq::tls::{Certificate, RootCerts, TlsConfig};
    let ca = Certificate::from_pem(ca_pem.as_bytes())
        .map_err(|e| anyhow::anyhow!("CA certificate: {e}"))?
        .to_owned();
    let tls = TlsConfig::builder()
        .root_certs(RootCerts::Specific(Arc::new(vec![ca])))
        .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .build();
    Ok(ureq::Agent::config_builder()
        .tls_config(tls)
        .proxy(None)
        .max_redirects(0)
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(30)))
        .build()
        .new_agent())
}

/// A file of `../shared/testdata/` (real artefacts from public projects; its PROVENANCE.md
/// says what each must parse to) by its path there. The one helper every test uses; panics
/// naming the file when it cannot be read (tests only).
#[allow(clippy::panic)]
pub fn testdata(path: &str) -> Vec<u8> {
    let full = format!(
        "{}/../../../shared/testdata/{path}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&full).unwrap_or_else(|e| panic!("{full}: {e}"))
}

/// `../shared/tools/<dir>/<name>.xz` (the real peers, built unchanged from upstream, each with
/// a PROVENANCE.md) unpacked once as `target/<dir>/<name>`, executable, never committed. The
/// one unpacker of the tests and xtask: unpacked beside and renamed into place, as test
/// binaries run in parallel.
pub fn shared_tool(dir: &str, name: &str) -> anyhow::Result<std::path::PathBuf> {
    use anyhow::{ensure, Context};
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let packed = repo
        .join("../shared/tools")
        .join(dir)
        .join(format!("{name}.xz"));
    ensure!(
        packed.exists(),
        "the real {name} is expected at {} (the shared tools beside the repository)",
        packed.display()
    );
    let out = repo.join("target").join(dir);
    std::fs::create_dir_all(&out).with_context(|| format!("create {}", out.display()))?;
    let dest = out.join(name);
    // One unpacker at a time in this process; across processes, unique names and a rename.
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !dest.exists() {
        let tmp = out.join(format!(".{name}.{}", std::process::id()));
        // The shell writes the file, so this process never holds a write descriptor to an
        // executable that another thread may be about to run (ETXTBSY).
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg("xz -dc \"$1\" > \"$2\" && chmod 755 \"$2\"")
            .arg("sh")
            .arg(&packed)
            .arg(&tmp)
            .status()
            .context("run sh (xz)")?;
        ensure!(status.success(), "xz -dc {} failed", packed.display());
        std::fs::rename(&tmp, &dest).with_context(|| format!("rename to {}", dest.display()))?;
    }
    Ok(dest)
}
