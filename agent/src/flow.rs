//! The unlock flow: an explicit state machine that depends only on the evidence-source trait,
//! the broker client and the LUKS/deliver back ends.
//!
//! ```text
//! Detect -> [ Keygen -> Auth -> Evidence -> Attest -> Fetch -> Decrypt ]  (one session,
//!            one broker; on a retryable error: next broker, then backoff and a new round)
//!        -> Stage -> Unlock -> Deliver -> Done
//! any state -> Failed (nothing unlocked, nothing written)
//! ```
//!
//! Ordering is what makes it fail closed: every secret is fetched and decrypted before
//! anything touches the disk or a destination; secrets are staged to temporary files (invisible
//! at their destinations) before the unlock, and become visible only after it succeeded.

use std::fmt;
use std::path::Path;
use std::time::{Duration, Instant};

use kbs_types::{Attestation, CompositeEvidence, InitData, RuntimeData};
use rand_core::{OsRng, RngCore};
use zeroize::Zeroizing;

use crate::anchors::TrustAnchors;
use crate::config::{Config, KeyFormat, Layers};
use crate::deliver::{self, Item};
use crate::error::{Error, ErrorClass};
use crate::evidence::{binding, EvidenceSource, Platforms};
use crate::header::{Header, KeySource, KeyToken, PcrRecord};
use crate::kbs::key::EphemeralKey;
use crate::kbs::{jwe, BrokerClient, KbsClient, KbsError, Session};
use crate::luks::Volume;

/// The states of the flow, also the names of the timed steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Read the configuration layers (the file, the kernel command line, the LUKS2 token).
    Config,
    /// Wait for the volume and read the trustee token from its LUKS2 header.
    Token,
    /// Find the platform.
    Detect,
    /// Measure the trust anchors (brokers, CAs, resources, init-data) before any contact.
    Anchors,
    /// Generate the ephemeral key.
    Keygen,
    /// `POST /kbs/v0/auth`.
    Auth,
    /// Make the evidence ready but for the nonce (load the AK), while `auth` runs.
    Prepare,
    /// Not a step: the time `auth` and `prepare` ran at once, i.e. what overlapping them saved.
    Overlap,
    /// Produce the evidence bound to the nonce and key.
    Evidence,
    /// `POST /kbs/v0/attest`.
    Attest,
    /// `GET /kbs/v0/resource/...` for each resource.
    Fetch,
    /// Decrypt each JWE.
    Decrypt,
    /// Turn the disk key resource into the LUKS passphrase (for the pin: decrypt the token's
    /// JWE with it).
    Passphrase,
    /// Extend the post-release measurement.
    Measure,
    /// Write secrets to temporary files.
    Stage,
    /// Check or open the LUKS2 keyslot.
    Unlock,
    /// Move secrets into place.
    Deliver,
}

impl Step {
    /// The step's name in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Config => "config",
            Step::Token => "token",
            Step::Detect => "detect",
            Step::Anchors => "anchors",
            Step::Keygen => "keygen",
            Step::Auth => "auth",
            Step::Prepare => "prepare",
            Step::Overlap => "overlap",
            Step::Evidence => "evidence",
            Step::Attest => "attest",
            Step::Fetch => "fetch",
            Step::Decrypt => "decrypt",
            Step::Passphrase => "passphrase",
            Step::Measure => "measure",
            Step::Stage => "stage",
            Step::Unlock => "unlock",
            Step::Deliver => "deliver",
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Elapsed time per step (of the successful session, plus the steps after it).
#[derive(Debug, Default, Clone)]
pub struct Timings(pub Vec<(Step, Duration)>);

impl Timings {
    fn time<T>(&mut self, step: Step, f: impl FnOnce() -> T) -> T {
        let start = Instant::now();
        let out = f();
        self.0.push((step, start.elapsed()));
        out
    }
}

impl fmt::Display for Timings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (step, d)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{step}={:.1}ms", d.as_secs_f64() * 1e3)?;
        }
        Ok(())
    }
}

/// What the caller asked for.
#[derive(Debug, Clone)]
pub struct Options {
    /// Only check that the key opens the keyslot; activate nothing.
    pub verify_only: bool,
}

/// A successful run.
#[derive(Debug)]
pub struct Report {
    /// The platform attested as ([`unlock`] sets it).
    pub platform: Option<crate::config::Platform>,
    /// The broker that released the secrets.
    pub broker: String,
    /// Sessions tried (1 when the first broker served at once).
    pub attempts: u32,
    /// Per-step timings.
    pub timings: Timings,
    /// What was done to the volume.
    pub volume: crate::verdict::Volume,
    /// Number of secrets delivered.
    pub secrets: usize,
}

/// A failed run: the error, the step it happened in, and the broker involved.
#[derive(Debug)]
pub struct Failure {
    /// The step that failed.
    pub step: Step,
    /// The platform, once detected.
    pub platform: Option<crate::config::Platform>,
    /// The broker of the last session, if one was tried.
    pub broker: Option<Box<str>>,
    /// Sessions tried.
    pub attempts: u32,
    /// Why.
    pub error: Error,
    /// For a denial: which PCRs differ from the last successful unlock on this node (a hint
    /// from the LUKS2 header).
    pub hint: Option<Box<String>>,
}

impl Failure {
    /// A failure at `step`, before the platform is known.
    pub fn at(step: Step, broker: Option<String>, attempts: u32, error: Error) -> Failure {
        Failure {
            step,
            platform: None,
            broker: broker.map(String::into_boxed_str),
            attempts,
            error,
            hint: None,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.error)
    }
}

/// Resources released in one session, decrypted, held in zeroizing buffers.
pub struct Released {
    /// The broker that released them.
    pub broker: String,
    /// Sessions tried.
    pub attempts: u32,
    /// Per-step timings of the successful session.
    pub timings: Timings,
    /// The plaintexts, by resource path.
    pub resources: Resources,
    /// The attestation token (EAR JWT).
    pub token: Zeroizing<String>,
}

/// Released plaintexts by resource path: a value is taken by the name it was asked for, never
/// by its position among the others. A path asked for twice was released twice.
#[derive(Default)]
pub struct Resources(Vec<(String, Zeroizing<Vec<u8>>)>);

impl Resources {
    /// Whether the plaintext released for `path` is `expected` (without taking it).
    pub fn holds(&self, path: &str, expected: &[u8]) -> bool {
        self.0
            .iter()
            .any(|(p, v)| p == path && v.as_slice() == expected)
    }

    /// A copy of the plaintext released for `path`.
    pub(crate) fn cloned(&self, path: &str) -> Option<Zeroizing<Vec<u8>>> {
        self.0
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, v)| v.clone())
    }

    /// Takes the plaintext released for `path` (the first one left).
    pub fn take(&mut self, path: &str) -> Option<Zeroizing<Vec<u8>>> {
        let i = self.0.iter().position(|(p, _)| p == path)?;
        Some(self.0.remove(i).1)
    }

    /// Takes the plaintext released for `path`, or says it was not released.
    fn take_released(&mut self, path: &str) -> Result<Zeroizing<Vec<u8>>, Error> {
        self.take(path).ok_or_else(|| Error::KeyFormat {
            resource: path.to_owned(),
            message: "not among the resources the broker released".into(),
        })
    }
}

/// Names the resources, never their bytes.
impl fmt::Debug for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(
                self.0
                    .iter()
                    .map(|(p, v)| format!("{p}: <{} bytes>", v.len())),
            )
            .finish()
    }
}

/// Proof that the trust anchors were measured (or that measuring was switched off by a
/// measured layer): [`release`] takes it, so no broker is contacted before.
#[derive(Debug)]
pub struct AnchorsMeasured(());

/// What a run fetches, in order: the disk key (if any), then the secrets. The trust-anchor
/// event names them in this order, so `unlock` and `anchors` must both build it here.
pub(crate) fn resource_paths<'a>(config: &'a Config, disk: Option<&'a str>) -> Vec<&'a str> {
    disk.into_iter()
        .chain(config.secrets.iter().map(|s| s.resource.as_str()))
        .collect()
}

/// The trust anchors of this run: the config's brokers and their CA fingerprints, the
/// resources to fetch, the init-data body ([`init_data_for`]).
pub fn trust_anchors(
    config: &Config,
    paths: &[&str],
    init_data: Option<&str>,
) -> Result<TrustAnchors, Error> {
    let mut brokers = Vec::new();
    for b in &config.brokers {
        brokers.push((b.url.as_str(), b.ca_fingerprints()?));
    }
    Ok(TrustAnchors::new(&brokers, paths, init_data))
}

/// Extend the trust-anchor event into the evidence's register before any network contact.
///
/// A rerun in the same boot finds the register already holding exactly this one extend and
/// leaves it. Brokers that came from the LUKS2 token are used only when the event reached a
/// register (a broker checking it then refuses relayed evidence); measured brokers are used
/// with a warning where the platform has no register.
pub fn measure_anchors(
    config: &Config,
    source: &mut dyn EvidenceSource,
    anchors: &TrustAnchors,
) -> Result<AnchorsMeasured, Error> {
    measure_anchors_after(config, source, anchors, &[])
}

/// [`measure_anchors`] for a command whose register may already hold `prior` events (a
/// rotation on a booted node: the boot's anchors and the post-release event): a rerun that
/// finds the register at `prior`, then this event, leaves it too.
pub(crate) fn measure_anchors_after(
    config: &Config,
    source: &mut dyn EvidenceSource,
    anchors: &TrustAnchors,
    prior: &[&[u8]],
) -> Result<AnchorsMeasured, Error> {
    use crate::evidence::{EvidenceError, Recorded};
    let from_token = config.provenance.brokers_from_token();
    let pcr = config.measure.pcr;
    if !config.measure.enabled {
        if from_token {
            return Err(crate::config::ConfigError::Invalid(
                "brokers named only by the LUKS2 token need the trust-anchor measurement (measure.enabled = true)".into(),
            )
            .into());
        }
        log::warn!("measure.enabled = false: the trust anchors are not measured");
        return Ok(AnchorsMeasured(()));
    }
    let event = anchors.event();
    if source
        .pcr_sha256(pcr)?
        .is_some_and(|v| is_extended(&v, &[], event) || is_extended(&v, prior, event))
    {
        log::info!(
            "PCR {pcr} already holds the trust anchors (a rerun in this boot): not extended again"
        );
        return Ok(AnchorsMeasured(()));
    }
    match source.measure(pcr, anchors.event())? {
        Recorded::Registers(registers) => {
            let sha256 = crate::anchors::extended_once(crate::formats::HashAlg::Sha256, anchors.event())
                .map(hex::encode)
                .unwrap_or_default();
            log::info!(
                "measured the trust anchors into {registers} before contacting any broker (PCR {pcr} from zero: sha256 {sha256}; `attest-unlock anchors` prints the event)"
            );
            append_measurement_log(config, &registers, anchors.event());
            Ok(AnchorsMeasured(()))
        }
        Recorded::Unavailable(why) if from_token => Err(EvidenceError::Unrecorded(format!(
            "brokers named only by the LUKS2 token need a register to measure them into, and {why}: name the brokers in the initramfs config"
        ))
        .into()),
        Recorded::Unavailable(why) => {
            log::warn!("the trust anchors are not measured: {why}");
            Ok(AnchorsMeasured(()))
        }
    }
}

/// Whether a SHA-256 PCR `value` is exactly the extends of `prior`, then `event`, from zero
/// (a rerun in the same boot after a failure, which must not extend it a second time).
fn is_extended(value: &[u8; 32], prior: &[&[u8]], event: &[u8]) -> bool {
    let events: Vec<&[u8]> = prior.iter().copied().chain([event]).collect();
    crate::anchors::extended(crate::formats::HashAlg::Sha256, &events).as_deref()
        == Some(&value[..])
}

/// The init-data of a run: the configured one, or, for a `kbs+provisioner:///` resource with
/// none configured, the document Trustee's provisioner plugin requires to release it
/// (`[data] "trustee.kbs.resource" = "<that reference>"`).
pub fn init_data_for(
    config: &Config,
    paths: &[&str],
) -> Result<Option<String>, crate::config::ConfigError> {
    if let Some(body) = config.init_data_body()? {
        return Ok(Some(body));
    }
    let Some(reference) = paths
        .iter()
        .find(|p| crate::config::provisioner_path(p).is_some())
    else {
        return Ok(None);
    };
    let mut data = toml::Table::new();
    data.insert(
        "trustee.kbs.resource".into(),
        toml::Value::String((*reference).to_owned()),
    );
    let mut doc = toml::Table::new();
    doc.insert("version".into(), toml::Value::String("0.1.0".into()));
    doc.insert("algorithm".into(), toml::Value::String("sha256".into()));
    doc.insert("data".into(), toml::Value::Table(data));
    toml::to_string(&doc)
        .map(Some)
        .map_err(|e| crate::config::ConfigError::Invalid(format!("init-data: {e}")))
}

/// The init-data digest as Trustee computes it: the body's bytes hashed with the algorithm its
/// `algorithm` key names (`sha256`, `sha384` or `sha512`; there is no default).
pub fn init_data_digest(body: &str) -> Result<(crate::formats::HashAlg, Vec<u8>), Error> {
    use crate::formats::HashAlg;
    let bad = |why: String| crate::config::ConfigError::Invalid(format!("init-data: {why}"));
    let doc: toml::Table = body
        .parse()
        .map_err(|e: toml::de::Error| bad(crate::text::value(e.message())))?;
    let alg = match doc.get("algorithm").and_then(toml::Value::as_str) {
        Some("sha256") => HashAlg::Sha256,
        Some("sha384") => HashAlg::Sha384,
        Some("sha512") => HashAlg::Sha512,
        Some(other) => {
            return Err(bad(format!(
                "algorithm '{}' is not sha256, sha384 or sha512",
                crate::text::value(other)
            ))
            .into())
        }
        None => return Err(bad("no algorithm key (sha256, sha384 or sha512)".into()).into()),
    };
    let digest = alg
        .hash(body.as_bytes())
        .ok_or_else(|| bad(format!("cannot hash with {alg}")))?;
    Ok((alg, digest))
}

/// Check, before sending, that the init-data matches what the TEE launch bound (SNP
/// HOST_DATA, TDX MRCONFIGID), as Trustee's verifiers compare them: the digest zero-padded
/// or cut to the field's size. A TDX MRCONFIGID of zeros is let through with a warning
/// (a broker may bind init-data through an RTMR 3 event instead).
fn check_launch_init_data(
    source: &dyn EvidenceSource,
    init_data: Option<&str>,
) -> Result<(), Error> {
    use crate::evidence::{EvidenceError, LaunchInitData};
    let (Some(body), Some(launch)) = (init_data, source.launch_init_data()) else {
        return Ok(());
    };
    let (_, mut digest) = init_data_digest(body)?;
    let field = launch.bytes();
    digest.resize(field.len(), 0);
    if digest == field {
        return Ok(());
    }
    if matches!(launch, LaunchInitData::TdxMrConfigId(_)) && field.iter().all(|b| *b == 0) {
        log::warn!("init-data is sent but TDX MRCONFIGID is zero: the broker must bind it another way (an RTMR 3 event), or it refuses the evidence");
        return Ok(());
    }
    Err(EvidenceError::InitDataMismatch {
        field: launch.name(),
        found: hex::encode(field),
        expected: hex::encode(&digest),
    }
    .into())
}

/// The PCR a Trustee TPM verifier compares with the init-data digest.
pub(crate) const INIT_DATA_PCR: u32 = 8;

/// Bind the init-data to a TPM node's evidence as Trustee's TPM verifier requires: PCR 8 must
/// be exactly `SHA-256(0^32 || SHA-256(init-data body))`, one extend from zero (what Trustee's
/// own TPM attester does at start-up). Extended when PCR 8 is zero, left when it already holds
/// exactly that (a rerun in this boot); anything else there (GRUB measures its commands into
/// PCR 8) fails closed with what to do. TEE platforms bind init-data at launch (HOST_DATA,
/// MRCONFIGID): nothing to do here.
pub(crate) fn bind_init_data(
    source: &mut dyn EvidenceSource,
    init_data: Option<&str>,
) -> Result<(), Error> {
    use crate::evidence::EvidenceError;
    let Some(body) = init_data else {
        return Ok(());
    };
    if source.tee() != kbs_types::Tee::Tpm {
        return Ok(());
    }
    let Some(value) = source.pcr_sha256(INIT_DATA_PCR)? else {
        return Ok(());
    };
    // Trustee's TPM verifier takes PCR 8 = SHA-256(0^32 || digest): a 32-byte digest.
    let (alg, _) = init_data_digest(body)?;
    if alg != crate::formats::HashAlg::Sha256 {
        return Err(crate::config::ConfigError::Invalid(format!(
            "init-data algorithm {alg}: a TPM node binds init-data into the SHA-256 PCR 8, which takes a sha256 digest"
        ))
        .into());
    }
    let event = body.as_bytes();
    if value == [0u8; 32] {
        source.measure(INIT_DATA_PCR, event)?;
        log::info!("extended PCR {INIT_DATA_PCR} with the init-data digest (Trustee's TPM init-data binding)");
        Ok(())
    } else if is_extended(&value, &[], event) {
        log::info!("PCR {INIT_DATA_PCR} already holds the init-data digest (a rerun in this boot)");
        Ok(())
    } else {
        Err(EvidenceError::InitDataPcrInUse {
            value: hex::encode(value),
        }
        .into())
    }
}

/// Attest and fetch `paths` (sending `init_data`, [`init_data_for`]) from the config's
/// brokers, retrying across brokers and rounds per the config's policy.
pub fn release(
    config: &Config,
    source: &mut dyn EvidenceSource,
    paths: &[&str],
    init_data: Option<&str>,
    anchors: &AnchorsMeasured,
) -> Result<Released, Failure> {
    release_from(config, &clients(config)?, source, paths, init_data, anchors)
}

/// The real broker clients of the config (no network contact: TLS settings and CAs only).
pub fn clients(config: &Config) -> Result<Vec<Box<dyn BrokerClient>>, Failure> {
    let fail = |broker, error: Error| Failure::at(Step::Config, broker, 0, error);
    let mut clients: Vec<Box<dyn BrokerClient>> = Vec::new();
    for b in &config.brokers {
        let ca = b.ca_pem().map_err(|e| fail(None, e.into()))?;
        let client = KbsClient::new(b, ca.as_deref(), &config.timeouts)
            .map_err(|e| fail(Some(b.url.clone()), e.into()))?;
        clients.push(Box::new(client));
    }
    Ok(clients)
}

/// The retry loop of [`release`] over brokers already built (the real clients, or fakes).
///
/// A round tries every broker once. A broker that answered the attestation "not now" (5xx,
/// 429, or a reply that is not the KBS's: an ingress answering for it) keeps its session
/// ([`Pending`]): the next round resends the same attestation in it, one request instead of
/// a new session's auth, evidence and attest. Between rounds the loop
/// waits as the brokers asked with `Retry-After` when every failure of the round carried one
/// ([`hinted_wait`]), and by exponential backoff otherwise ([`backoff`]).
pub(crate) fn release_from(
    config: &Config,
    clients: &[Box<dyn BrokerClient>],
    source: &mut dyn EvidenceSource,
    paths: &[&str],
    init_data: Option<&str>,
    _anchors: &AnchorsMeasured,
) -> Result<Released, Failure> {
    let fail = Failure::at;
    let mut attempts = 0u32;
    let mut round = 0u32;
    let started = Instant::now();
    let mut pending: Vec<Option<Box<Pending>>> = clients.iter().map(|_| None).collect();
    loop {
        let mut last = None;
        // The smallest wait the round's brokers asked for; `None` once one failure had none.
        let mut hint = Some(Duration::MAX);
        for (client, resume) in clients.iter().zip(pending.iter_mut()) {
            let resumed = resume.take().filter(|p| p.opened.elapsed() < RESUME_FOR);
            match attempt(
                client.as_ref(),
                source,
                paths,
                init_data,
                resumed,
                &mut attempts,
            ) {
                Ok((resources, token, mut timings)) => {
                    if config.measure.enabled {
                        timings
                            .time(Step::Measure, || measure_release(config, source))
                            .map_err(|e| {
                                fail(Step::Measure, Some(client.url().to_owned()), attempts, e)
                            })?;
                    }
                    return Ok(Released {
                        broker: client.url().to_owned(),
                        attempts,
                        timings,
                        resources,
                        token,
                    });
                }
                Err((step, error, kept)) => {
                    let class = error.class();
                    log::warn!(
                        "attempt {attempts}: broker {} step {step}: {} [{class}]",
                        client.url(),
                        crate::error::chain(&error)
                    );
                    if !class.is_retryable() {
                        return Err(fail(step, Some(client.url().to_owned()), attempts, error));
                    }
                    hint = hint.zip(error.retry_after()).map(|(a, b)| a.min(b));
                    *resume = kept;
                    last = Some((step, client.url().to_owned(), error));
                }
            }
        }
        round += 1;
        let Some((step, url, error)) = last else {
            return Err(fail(
                Step::Config,
                None,
                attempts,
                crate::config::ConfigError::Invalid("no broker configured".into()).into(),
            ));
        };
        if config.retry.max_rounds.is_some_and(|max| round >= max) {
            return Err(fail(step, Some(url), attempts, error));
        }
        let delay = match hint {
            Some(asked) => hinted_wait(config, asked),
            None => backoff(config, round, error.class()),
        };
        if let Some(deadline) = config.retry.deadline_ms.map(Duration::from_millis) {
            if started.elapsed() + delay > deadline {
                log::warn!("retry deadline of {:.1}s reached", deadline.as_secs_f64());
                return Err(fail(step, Some(url), attempts, error));
            }
        }
        if error.class() == ErrorClass::BrokerDenied {
            log::warn!(
                "round {round}: denied by the broker's policy; retrying in {:.1}s (the operator may be updating the policy or registering this node's AK)",
                delay.as_secs_f64()
            );
        } else if let Some(asked) = hint {
            log::info!(
                "round {round} failed; retrying in {:.1}s as the broker asked (Retry-After: {}){}",
                delay.as_secs_f64(),
                asked.as_secs(),
                resend_note(&pending)
            );
        } else {
            log::info!(
                "round {round} failed; retrying all brokers in {:.1}s{}",
                delay.as_secs_f64(),
                resend_note(&pending)
            );
        }
        std::thread::sleep(delay);
    }
}

/// What a successful attempt yields: the decrypted resources, the attestation token, and the
/// timings of its session.
type Done = (Resources, Zeroizing<String>, Timings);

/// A failed attempt: its step, the error, and the session to resume at the next round when
/// the broker answered the attestation "not now".
type Failed = (Step, Error, Option<Box<Pending>>);

/// How long a session whose attestation a broker answered "not now" is resumed: a minute, well
/// under the session lifetime Trustee's source sets by default (5 minutes; not tested here). A
/// broker that forgot the session meanwhile answers the resent attestation with an error, and
/// [`attempt`] opens a new session at once.
const RESUME_FOR: Duration = Duration::from_secs(60);

fn resend_note(pending: &[Option<Box<Pending>>]) -> &'static str {
    if pending.iter().any(Option::is_some) {
        " (resending the attestation in the same session)"
    } else {
        ""
    }
}

/// One try at one broker: the attestation resent in `resumed` (its session kept), or a new
/// session; a resumed session that fails other than "not now" is dropped and a new session
/// opened at once (the broker may have forgotten it). Counts each into `attempts`. On
/// failure: the step, the error, and the session to resume next round, if the broker
/// answered the attestation "not now".
fn attempt(
    client: &dyn BrokerClient,
    source: &mut dyn EvidenceSource,
    paths: &[&str],
    init_data: Option<&str>,
    resumed: Option<Box<Pending>>,
    attempts: &mut u32,
) -> Result<Done, Failed> {
    if let Some(pending) = resumed {
        *attempts += 1;
        match finish(client, pending, paths) {
            Err((step, error, None)) => log::info!(
                "attempt {attempts}: broker {} step {step}: the resumed session failed: {}; opening a new session",
                client.url(),
                crate::error::chain(&error)
            ),
            done => return done,
        }
    }
    *attempts += 1;
    let mut timings = Timings::default();
    let opened = open(client, source, init_data, &mut timings);
    // Whatever happened, nothing stays open for the next session or the measurement.
    source.unprepare();
    let (session, key, attestation) = opened.map_err(|(step, e)| (step, e, None))?;
    finish(
        client,
        Box::new(Pending {
            session,
            key,
            attestation,
            timings,
            opened: Instant::now(),
        }),
        paths,
    )
}

/// Detect the platform and measure the trust anchors for fetching `paths`: what must happen
/// before the first network byte of a command that fetches keys outside the unlock (the pin,
/// the rotation).
/// `prior`: the events the register may hold before this command's (see
/// [`measure_anchors_after`]).
pub(crate) fn prepare(
    config: &Config,
    root: &Path,
    paths: &[&str],
    prior: &[&[u8]],
) -> Result<Prepared, Error> {
    let (_, mut source) = crate::evidence::Hardware { root }.detect(config)?;
    let init_data = init_data_for(config, paths)?;
    let anchors = trust_anchors(config, paths, init_data.as_deref())?;
    bind_init_data(source.as_mut(), init_data.as_deref())?;
    let measured = measure_anchors_after(config, source.as_mut(), &anchors, prior)?;
    Ok(Prepared {
        source,
        init_data,
        measured,
    })
}

/// What [`prepare`] leaves for the fetch.
pub(crate) struct Prepared {
    source: Box<dyn EvidenceSource>,
    init_data: Option<String>,
    measured: AnchorsMeasured,
}

impl Prepared {
    /// Attest and fetch `paths` (those [`prepare`] measured) in one session. A failure logs
    /// its step and broker; `main` reports the error (one verdict).
    pub(crate) fn fetch(&mut self, config: &Config, paths: &[&str]) -> Result<Released, Error> {
        release(
            config,
            self.source.as_mut(),
            paths,
            self.init_data.as_deref(),
            &self.measured,
        )
        .map_err(
            |Failure {
                 step,
                 broker,
                 error,
                 ..
             }| {
                log::warn!(
                    "step={step} broker={}",
                    broker.as_deref().map_or("-".into(), crate::text::value)
                );
                error
            },
        )
    }
}

/// The parts of a node the unlock works with: the real ones, or fakes in the fast tests.
pub struct Node<'a> {
    /// The LUKS2 volume (header, keyslot test, open, close).
    pub volume: &'a dyn Volume,
    /// Platform detection and the evidence source.
    pub platforms: &'a dyn Platforms,
    /// The brokers; `None`: the real clients of the resolved config.
    pub brokers: Option<&'a [Box<dyn BrokerClient>]>,
}

/// The whole unlock, from the config layers to delivered secrets: where the disk key comes
/// from (the config's `disk_key`, or the trustee token in the volume's LUKS2 header, whose pin
/// config becomes the config's token layer), detection, then `run_with`. `config` is
/// `layers` resolved; it is resolved again only when the token adds its layer.
pub fn unlock(
    layers: Layers,
    config: Config,
    node: &Node<'_>,
    opts: &Options,
) -> Result<Report, Failure> {
    let (config, disk, header) = disk_key_source(layers, config, node.volume)?;
    config.log_settings();
    let start = Instant::now();
    let (platform, mut source) = node
        .platforms
        .detect(&config)
        .map_err(|e| Failure::at(Step::Detect, None, 0, e.into()))?;
    let detect_time = start.elapsed();
    let with_platform = |f: Failure| Failure {
        platform: Some(platform),
        ..f
    };
    let owned;
    let brokers = match node.brokers {
        Some(b) => b,
        None => {
            owned = clients(&config).map_err(with_platform)?;
            &owned
        }
    };
    let run = run_with(
        &config,
        disk.as_ref(),
        source.as_mut(),
        brokers,
        node.volume,
        opts,
    );
    let device = config.luks.as_ref().map(|l| l.device.as_path());
    let mut report = match run {
        Ok(report) => report,
        Err(mut f) => {
            if f.error.class() == ErrorClass::BrokerDenied {
                f.hint = header
                    .as_ref()
                    .and_then(|h| explain_denial(h, source.as_mut()))
                    .map(Box::new);
            }
            return Err(with_platform(f));
        }
    };
    if let (crate::verdict::Volume::Opened, Some(h), Some(device)) =
        (report.volume, &header, device)
    {
        record_pcrs(h, source.as_mut(), node.volume, device);
    }
    report.timings.0.insert(0, (Step::Detect, detect_time));
    report.platform = Some(platform);
    Ok(report)
}

/// After an unlock that opened the volume: keep the PCRs of this boot in the LUKS2 header
/// (a token of their own, no keyslot), where the next boot can read them before anything is
/// unlocked, for [`explain_denial`]. Written only when they changed (an update, not every
/// boot). Never fails the run: the disk is open, the secrets delivered.
fn record_pcrs(
    header: &Header,
    source: &mut dyn EvidenceSource,
    volume: &dyn Volume,
    device: &Path,
) {
    let pcrs = match source.pcrs_sha256() {
        Ok(Some(p)) => p,
        Ok(None) => return,
        Err(e) => {
            log::warn!("the PCRs of this unlock are not recorded: {e}");
            return;
        }
    };
    let record = header.pcr_record();
    if record.as_ref().is_some_and(|r| r.matches(&pcrs)) {
        return;
    }
    let id = record.map_or_else(|| header.free_token_id(), |r| r.id);
    let json = PcrRecord::token_json(&pcrs).to_string();
    match volume.write_token(device, id, &json) {
        Ok(()) => log::info!(
            "recorded this unlock's PCRs in the LUKS2 header (token {id}): the next denial says which changed"
        ),
        Err(e) => log::warn!("the PCRs of this unlock are not recorded: {e}"),
    }
}

/// For a denial: which PCRs differ from those recorded at the last successful unlock. The
/// record comes from the LUKS2 header, which the host writes: a hint for the operator, never
/// a decision.
fn explain_denial(header: &Header, source: &mut dyn EvidenceSource) -> Option<String> {
    let pcrs = source.pcrs_sha256().ok().flatten()?;
    let hint = match header.pcr_record() {
        None => "no record of a successful unlock in the LUKS2 header (a first boot, or the record was removed)".to_owned(),
        Some(r) => match r.changed(&pcrs)[..] {
            [] => "the PCRs are those of the last successful unlock on this node: the broker's policy or reference values changed, not this boot".to_owned(),
            ref changed => format!(
                "PCR{} {} changed since the last successful unlock on this node (register the new values, see `attest-unlock reference-values`)",
                if changed.len() > 1 { "s" } else { "" },
                changed.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
            ),
        },
    };
    log::warn!("{hint} [a hint from the LUKS2 header, which the host can write]");
    Some(hint)
}

/// Where the disk key comes from: `disk_key` in the config (and, after a rotation, our native
/// token in the volume's LUKS2 header, which then names the path and the keyslot), or the
/// trustee clevis token, whose pin config then becomes the config's LUKS-token layer (what to
/// fetch; its servers only when no measured layer names a broker) with its keyslot. Returns
/// the config to use, resolved with every layer.
fn disk_key_source(
    layers: Layers,
    config: Config,
    volume: &dyn Volume,
) -> Result<(Config, Option<KeySource>, Option<Header>), Failure> {
    let token_err = |e: Error| Failure::at(Step::Token, None, 0, e);
    let Some((header, token)) = read_header(&config, volume).map_err(token_err)? else {
        let disk = config.disk_key.clone().map(KeySource::Native);
        return Ok((config, disk, None));
    };
    let Some(token) = token else {
        let disk = config.disk_key.clone().map(KeySource::Native);
        return Ok((config, disk, Some(header)));
    };
    let resolved = with_token(layers, &token).map_err(|e| match e {
        Error::Config(e) => Failure::at(Step::Config, None, 0, e.into()),
        e => token_err(e),
    })?;
    let source = key_source(&resolved, token.source);
    Ok((resolved, source, Some(header)))
}

/// The key source of a run whose config was resolved with `token`'s layer: a native token's
/// path is only that layer's word (the kernel command line and `--set` beat it); a clevis
/// token's JWE is the key.
pub(crate) fn key_source(resolved: &Config, token: KeySource) -> Option<KeySource> {
    match token {
        KeySource::Native(_) => resolved.disk_key.clone().map(KeySource::Native),
        clevis => Some(clevis),
    }
}

/// The key token of the volume the config names: our native token when the measured config
/// names `disk_key` (none: the config alone says where the key is), the trustee clevis token
/// otherwise (required). `None` without a volume.
pub(crate) fn key_token(config: &Config, volume: &dyn Volume) -> Result<Option<KeyToken>, Error> {
    Ok(read_header(config, volume)?.and_then(|(_, t)| t))
}

/// The header of the volume the config names and its key token (see [`key_token`]).
fn read_header(
    config: &Config,
    volume: &dyn Volume,
) -> Result<Option<(Header, Option<KeyToken>)>, Error> {
    let Some(luks) = &config.luks else {
        return Ok(None);
    };
    volume.appear(&luks.device, Duration::from_millis(luks.device_timeout_ms))?;
    let header = Header::parse(&volume.metadata(&luks.device)?)?;
    let token = if config.disk_key.is_some() {
        header.native_token()?
    } else {
        Some(header.trustee_token()?)
    };
    if let Some(t) = &token {
        log::info!(
            "{}: {} token {} for keyslot {} ({})",
            luks.device.display(),
            match t.source {
                KeySource::Clevis(..) => "trustee clevis",
                KeySource::Native(_) => crate::header::NATIVE_TYPE,
            },
            t.id,
            t.keyslot,
            crate::text::value(t.source.path())
        );
    }
    Ok(Some((header, token)))
}

/// `layers` with `token` as the LUKS-token layer (its path and keyslot; for a clevis token
/// the pin config), resolved.
pub(crate) fn with_token(mut layers: Layers, token: &KeyToken) -> Result<Config, Error> {
    let mut table = match &token.source {
        KeySource::Clevis(jwe, _) => {
            jwe.config
                .add_to(&mut layers, crate::config::system_ca_bundle())?;
            layers.luks_token.take().unwrap_or_default()
        }
        KeySource::Native(path) => {
            let mut t = toml::Table::new();
            t.insert("disk_key".into(), toml::Value::String(path.clone()));
            t
        }
    };
    let mut luks = toml::Table::new();
    luks.insert(
        "keyslot".into(),
        toml::Value::Integer(i64::from(token.keyslot)),
    );
    let mut slot = toml::Table::new();
    slot.insert("luks".into(), toml::Value::Table(luks));
    crate::config::merge(&mut table, slot);
    layers.luks_token = Some(table);
    Ok(layers.resolve()?)
}

/// The flow once the disk key's source, the evidence source and the brokers (the real clients,
/// or fakes in the fast tests) are known.
pub(crate) fn run_with(
    config: &Config,
    disk: Option<&KeySource>,
    source: &mut dyn EvidenceSource,
    brokers: &[Box<dyn BrokerClient>],
    cryptsetup: &dyn Volume,
    opts: &Options,
) -> Result<Report, Failure> {
    let early = |step, error: Error| Failure::at(step, None, 0, error);
    config
        .validate_for_unlock(disk.is_some())
        .map_err(|e| early(Step::Config, e.into()))?;
    let paths = resource_paths(config, disk.map(KeySource::path));
    // Read once: the anchors name its digest, PCR 8 binds it, the broker gets it.
    let init_data = init_data_for(config, &paths).map_err(|e| early(Step::Config, e.into()))?;
    let anchors =
        trust_anchors(config, &paths, init_data.as_deref()).map_err(|e| early(Step::Config, e))?;
    let anchors_start = Instant::now();
    bind_init_data(source, init_data.as_deref()).map_err(|e| early(Step::Anchors, e))?;
    let measured =
        measure_anchors(config, source, &anchors).map_err(|e| early(Step::Anchors, e))?;
    let anchors_time = anchors_start.elapsed();
    let Released {
        broker,
        attempts,
        mut timings,
        mut resources,
        token,
    } = release_from(
        config,
        brokers,
        source,
        &paths,
        init_data.as_deref(),
        &measured,
    )?;
    timings.0.insert(0, (Step::Anchors, anchors_time));
    let fail_at = |step, error| Failure::at(step, Some(broker.clone()), attempts, error);

    let passphrase = match disk {
        None => None,
        Some(d) => {
            let key = timings
                .time(Step::Passphrase, || {
                    let raw = resources.take_released(d.path())?;
                    passphrase_for(d, raw, config.disk_key_format)
                })
                .map_err(|e| fail_at(Step::Passphrase, e))?;
            Some(key)
        }
    };

    // Stage secrets (and the token) before touching the disk: a destination that cannot be
    // written fails the run before anything is unlocked.
    let secrets = config
        .secrets
        .iter()
        .map(|s| Ok((s, resources.take_released(&s.resource)?)))
        .collect::<Result<Vec<_>, Error>>()
        .map_err(|e| fail_at(Step::Stage, e))?;
    let mut items: Vec<Item<'_>> = secrets
        .iter()
        .map(|(s, bytes)| Item {
            path: &s.path,
            mode: s.mode,
            bytes,
        })
        .collect();
    if let Some(p) = &config.token_path {
        items.push(Item {
            path: p,
            mode: 0o600,
            bytes: token.as_bytes(),
        });
    }
    // From here to the commit, a SIGTERM/SIGINT/SIGHUP is held and checked before the commit:
    // a stop request then removes what was staged (and closes an opened volume) instead of
    // killing the process with plaintext in a staging file. A SIGKILL cannot be held: the
    // next run removes the staging files it left (see `deliver`).
    let signals = deliver::HeldSignals::hold();
    let staged = timings
        .time(Step::Stage, || {
            deliver::stage(&items, config.insecure_allow_persistent_secrets)
        })
        .map_err(|e| fail_at(Step::Stage, e.into()))?;

    let mut volume = crate::verdict::Volume::None;
    if let (Some(luks), Some(key)) = (&config.luks, &passphrase) {
        timings
            .time(Step::Unlock, || {
                if opts.verify_only {
                    cryptsetup.test_key(&luks.device, luks.keyslot, key)
                } else {
                    cryptsetup.open(&luks.device, &luks.name, luks.keyslot, key)
                }
            })
            .map_err(|e| fail_at(Step::Unlock, e.into()))?;
        volume = if opts.verify_only {
            crate::verdict::Volume::Verified
        } else {
            crate::verdict::Volume::Opened
        };
    }

    let delivered = timings.time(Step::Deliver, || match signals.pending() {
        Some(signal) => {
            drop(staged);
            Err(deliver::DeliverError::Interrupted(signal))
        }
        None => staged.commit(),
    });
    drop(signals);
    if let Err(e) = delivered {
        // The verdict promises nothing unlocked: undo the activation.
        if let (Some(luks), false) = (&config.luks, opts.verify_only) {
            if volume == crate::verdict::Volume::Opened {
                if let Err(close) = cryptsetup.close(&luks.name) {
                    log::error!(
                        "delivery failed and the volume could not be closed again: {close}"
                    );
                }
            }
        }
        return Err(fail_at(Step::Deliver, e.into()));
    }

    Ok(Report {
        platform: None,
        broker,
        attempts,
        timings,
        volume,
        secrets: config.secrets.len(),
    })
}

pub(crate) fn passphrase_for(
    disk: &KeySource,
    raw: Zeroizing<Vec<u8>>,
    format: KeyFormat,
) -> Result<Zeroizing<Vec<u8>>, Error> {
    match disk {
        KeySource::Native(path) => {
            disk_passphrase(path, raw, format).map_err(|message| Error::KeyFormat {
                resource: path.clone(),
                message,
            })
        }
        KeySource::Clevis(jwe, _) => {
            let key =
                crate::clevis::PinKey::from_released(&jwe.config.path, &raw).map_err(|e| {
                    Error::KeyFormat {
                        resource: jwe.config.path.clone(),
                        message: e.to_string(),
                    }
                })?;
            Ok(jwe.decrypt(&key)?)
        }
    }
}

/// The documented post-release event. The PCR becomes
/// `SHA-256(old || SHA-256("attest-unlock:secrets-released:v1"))`.
pub const RELEASE_EVENT: &[u8] = b"attest-unlock:secrets-released:v1";

/// Extend the post-release measurement and log it. A failure fails the run: secrets whose
/// release cannot be recorded are not used (they stay in memory and are zeroized).
fn measure_release(config: &Config, source: &mut dyn EvidenceSource) -> Result<(), Error> {
    use crate::evidence::Recorded;
    let pcr = config.measure.pcr;
    match source.measure(pcr, RELEASE_EVENT)? {
        Recorded::Registers(registers) => {
            append_measurement_log(config, &registers, RELEASE_EVENT);
            log::info!("extended {registers} with the post-release event");
        }
        Recorded::Unavailable(why) => {
            log::warn!("the post-release measurement is not recorded: {why}");
        }
    }
    Ok(())
}

/// Append one line per measurement to `measure.log` (a convenience for verifiers: the
/// register holds the truth). Written like a secret: tmpfs only, no symlink followed.
fn append_measurement_log(config: &Config, registers: &str, event: &[u8]) {
    use sha2::{Digest, Sha256};
    let first = event.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = format!(
        "{registers} sha256={} event={} ({} bytes)\n",
        hex::encode(Sha256::digest(event)),
        String::from_utf8_lossy(first),
        event.len()
    );
    if let Err(e) = deliver::write_run_file(
        &config.measure.log,
        line.as_bytes(),
        true,
        config.insecure_allow_persistent_secrets,
    ) {
        log::warn!("cannot append to the measurement log: {e}");
    }
}

/// Collect the evidence of one session: the additional device's first (bound with the digest
/// computed without the `additional-evidence` key), then the primary's, bound with the digest
/// over the exact `additional_evidence` string sent.
pub fn collect(
    source: &mut dyn EvidenceSource,
    nonce: &str,
    tee_pubkey: &kbs_types::TeePubKey,
) -> Result<(serde_json::Value, String), crate::evidence::EvidenceError> {
    use crate::evidence::EvidenceError;
    let encode = |e: serde_json::Error| EvidenceError::Encode(e.to_string());
    let additional = match source.additional() {
        Some(device) => {
            let rd = binding::device_report_data(nonce, tee_pubkey).map_err(encode)?;
            let tee = serde_json::to_value(device.tee()).map_err(encode)?;
            let key = tee.as_str().unwrap_or("tpm").to_owned();
            let mut map = serde_json::Map::new();
            map.insert(key, device.collect(&rd)?);
            serde_json::to_string(&map).map_err(encode)?
        }
        None => String::new(),
    };
    let rd = binding::report_data(nonce, tee_pubkey, &additional).map_err(encode)?;
    Ok((source.collect(&rd)?, additional))
}

/// `POST /kbs/v0/auth` on a thread of its own while this one prepares the evidence (loads the
/// AK): neither needs the other, and each usually waits on a device or the network. The
/// timings get both and what running them at once saved (`overlap`).
fn auth_and_prepare(
    client: &dyn BrokerClient,
    source: &mut dyn EvidenceSource,
    t: &mut Timings,
) -> Result<Session, (Step, Error)> {
    let tee = source.tee();
    let start = Instant::now();
    let (auth, (prepared, prepare_time)) = std::thread::scope(|s| {
        let auth = s.spawn(|| {
            let start = Instant::now();
            let r = client.auth(tee);
            (r, start.elapsed())
        });
        let prepared = {
            let start = Instant::now();
            let r = source.prepare();
            (r, start.elapsed())
        };
        (auth.join(), prepared)
    });
    let wall = start.elapsed();
    let Ok((session, auth_time)) = auth else {
        return Err((
            Step::Auth,
            KbsError::Transport {
                broker: client.url().to_owned(),
                step: "auth",
                message: "the auth thread panicked".into(),
            }
            .into(),
        ));
    };
    t.0.push((Step::Auth, auth_time));
    t.0.push((Step::Prepare, prepare_time));
    t.0.push((
        Step::Overlap,
        (auth_time + prepare_time).saturating_sub(wall),
    ));
    // A local failure is the one to report: it will not go away on a retry.
    prepared.map_err(|e| (Step::Prepare, e.into()))?;
    session.map_err(|e| (Step::Auth, e.into()))
}

/// A session whose attestation is made: its key, its evidence bound to the session's nonce and
/// the key, the timings so far. Kept across rounds when the broker answers the attestation
/// "not now" (see [`release_from`]): the evidence still binds the same nonce and key.
struct Pending {
    session: Session,
    key: EphemeralKey,
    attestation: Attestation,
    timings: Timings,
    opened: Instant,
}

/// The first half of a session: the key, `auth` (beside the evidence preparation), the
/// evidence, the attestation.
fn open(
    client: &dyn BrokerClient,
    source: &mut dyn EvidenceSource,
    init_data: Option<&str>,
    t: &mut Timings,
) -> Result<(Session, EphemeralKey, Attestation), (Step, Error)> {
    let key = t.time(Step::Keygen, EphemeralKey::generate);
    let tee_pubkey = key.tee_pubkey();
    let session = auth_and_prepare(client, source, t)?;

    let (evidence, additional_evidence) = t
        .time(Step::Evidence, || {
            collect(source, &session.nonce, &tee_pubkey)
        })
        .map_err(|e| (Step::Evidence, e.into()))?;
    check_launch_init_data(source, init_data).map_err(|e| (Step::Evidence, e))?;

    let attestation = Attestation {
        init_data: init_data.map(|body| InitData {
            format: "toml".to_owned(),
            body: body.to_owned(),
        }),
        runtime_data: RuntimeData {
            nonce: session.nonce.clone(),
            tee_pubkey,
        },
        tee_evidence: CompositeEvidence {
            primary_evidence: evidence,
            additional_evidence,
        },
    };
    Ok((session, key, attestation))
}

/// The second half: `attest`, the resources, their decryption, with the timings of the
/// session's first half. A "not now" at `attest` (the broker-unavailable class: 5xx, 429, or
/// an ingress answering for the KBS) hands the session back to be resumed; the attempt's own
/// `attest` time is not kept with it.
fn finish(
    client: &dyn BrokerClient,
    pending: Box<Pending>,
    paths: &[&str],
) -> Result<Done, Failed> {
    let start = Instant::now();
    let token = match client.attest(&pending.session, &pending.attestation) {
        Ok(token) => token,
        Err(e) if e.class() == ErrorClass::BrokerUnavailable => {
            return Err((Step::Attest, e.into(), Some(pending)))
        }
        Err(e) => return Err((Step::Attest, e.into(), None)),
    };
    let Pending {
        session,
        key,
        timings: mut t,
        ..
    } = *pending;
    t.0.push((Step::Attest, start.elapsed()));

    let bodies = t
        .time(Step::Fetch, || {
            paths
                .iter()
                .map(|p| client.resource(&session, p))
                .collect::<Result<Vec<_>, KbsError>>()
        })
        .map_err(|e| (Step::Fetch, e.into(), None))?;

    let plain = t
        .time(Step::Decrypt, || {
            paths
                .iter()
                .zip(&bodies)
                .map(|(p, body)| {
                    let plain = jwe::decrypt(body, &key).map_err(|source| Error::Jwe {
                        resource: (*p).to_owned(),
                        source,
                    })?;
                    Ok(((*p).to_owned(), plain))
                })
                .collect::<Result<Vec<_>, Error>>()
        })
        .map_err(|e| (Step::Decrypt, e, None))?;
    Ok((Resources(plain), Zeroizing::new(token), t))
}

/// Turn the disk key resource into the LUKS passphrase.
///
/// The trusted-execution-clusters operator stores `{"key_type":"oct","key":"<string>"}` and
/// its pin uses the bytes of the `key` string; anything else is taken as raw bytes (`auto`).
pub fn disk_passphrase(
    path: &str,
    raw: Zeroizing<Vec<u8>>,
    format: KeyFormat,
) -> Result<Zeroizing<Vec<u8>>, String> {
    #[derive(serde::Deserialize, zeroize::Zeroize, zeroize::ZeroizeOnDrop)]
    #[serde(deny_unknown_fields)]
    struct Operator {
        key_type: String,
        key: String,
    }
    let parsed = || -> Result<Zeroizing<Vec<u8>>, String> {
        let op: Operator = serde_json::from_slice(&raw)
            .map_err(|_| "not {\"key_type\":\"oct\",\"key\":...} JSON".to_owned())?;
        if op.key_type != "oct" {
            return Err(format!("key_type {:?} is not \"oct\"", op.key_type));
        }
        if op.key.is_empty() {
            return Err("key is empty".to_owned());
        }
        Ok(Zeroizing::new(op.key.as_bytes().to_vec()))
    };
    let confdata = || {
        // The volume's key is named after the path's last segment (`.../root`).
        let inner = crate::config::provisioner_path(path).unwrap_or(path);
        let volume = inner.rsplit('/').next().unwrap_or_default();
        crate::formats::confdata::luks_key(&raw, volume).map_err(|e| e.to_string())
    };
    let key = match format {
        KeyFormat::OperatorJson => parsed()?,
        KeyFormat::Raw => raw.clone(),
        KeyFormat::Confdata => confdata()?,
        KeyFormat::Auto if crate::config::provisioner_path(path).is_some() => confdata()?,
        KeyFormat::Auto => match parsed() {
            Ok(k) => k,
            Err(_) => raw.clone(),
        },
    };
    if key.is_empty() {
        return Err("disk key is empty".to_owned());
    }
    Ok(key)
}

/// The wait a broker asked for with `Retry-After` (delta-seconds), plus up to a second of
/// jitter (the header's resolution: the nodes it told the same second spread over that
/// second), never more than `max_backoff_ms`: a hostile broker cannot park the node.
fn hinted_wait(config: &Config, asked: Duration) -> Duration {
    let cap = Duration::from_millis(config.retry.max_backoff_ms);
    let jitter = Duration::from_secs(1).min(cap);
    let span = u64::try_from(jitter.as_micros()).unwrap_or(1).max(1);
    asked.min(cap - jitter) + Duration::from_micros(OsRng.next_u64() % span)
}

/// Exponential backoff with full jitter: uniform in [0, min(cap, base * 2^round)]. A denial
/// waits longer (at least half the cap): the operator is probably changing the policy, and
/// hammering the broker does not help.
fn backoff(config: &Config, round: u32, class: ErrorClass) -> Duration {
    let base = config.retry.initial_backoff_ms;
    let cap = config.retry.max_backoff_ms;
    let exp = base.saturating_mul(1u64 << round.min(30)).min(cap);
    let (lo, hi) = if class == ErrorClass::BrokerDenied {
        (cap / 2, cap)
    } else {
        (0, exp)
    };
    let span = hi.saturating_sub(lo).max(1);
    Duration::from_millis(lo + OsRng.next_u64() % span)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn operator_key_format() {
        let z = |b: &[u8]| Zeroizing::new(b.to_vec());
        let op = br#"{"key_type":"oct","key":"c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"}"#;
        assert_eq!(
            &**disk_passphrase("a/b/c", z(op), KeyFormat::Auto).unwrap(),
            b"c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"
        );
        assert_eq!(
            &**disk_passphrase("a/b/c", z(b"raw"), KeyFormat::Auto).unwrap(),
            b"raw"
        );
        assert_eq!(
            &**disk_passphrase("a/b/c", z(op), KeyFormat::Raw).unwrap(),
            op
        );
        assert!(disk_passphrase("a/b/c", z(b"raw"), KeyFormat::OperatorJson).is_err());
        assert!(disk_passphrase(
            "a/b/c",
            z(br#"{"key_type":"rsa","key":"x"}"#),
            KeyFormat::OperatorJson
        )
        .is_err());
        assert!(disk_passphrase("a/b/c", z(b""), KeyFormat::Raw).is_err());
        // A provisioner reference takes the volume's key out of the confdata.
        let conf = b"version = \"0.1.0\"\n[data]\n\"io.cryptsetup.key.text.root\" = \"k3y\"\n";
        let p = "kbs+provisioner:///default/u/root";
        assert_eq!(
            &**disk_passphrase(p, z(conf), KeyFormat::Auto).unwrap(),
            b"k3y"
        );
        assert!(disk_passphrase(p, z(op), KeyFormat::Auto).is_err());
    }

    #[test]
    fn backoff_is_bounded_and_denial_waits_longer() {
        let c = Config::default();
        for round in 0..40 {
            let d = backoff(&c, round, ErrorClass::Transport);
            assert!(d <= Duration::from_millis(c.retry.max_backoff_ms));
            let d = backoff(&c, round, ErrorClass::BrokerDenied);
            assert!(d >= Duration::from_millis(c.retry.max_backoff_ms / 2));
        }
        assert!(backoff(&c, 0, ErrorClass::Transport) <= Duration::from_millis(250));
    }

    #[test]
    fn provisioner_paths_get_the_init_data_the_plugin_requires() {
        let c = Config::default();
        let reference = "kbs+provisioner:///default/u/root";
        let body = init_data_for(&c, &["a/b/c", reference]).unwrap().unwrap();
        let t: toml::Table = body.parse().unwrap();
        assert_eq!(t["version"].as_str(), Some("0.1.0"));
        assert_eq!(t["data"]["trustee.kbs.resource"].as_str(), Some(reference));
        assert_eq!(init_data_for(&c, &["a/b/c"]).unwrap(), None);
    }

    // ---- the fast ring: the flow's ordering invariants with fakes at its seams, in ms ----

    use std::sync::{Arc, Mutex};

    use crate::evidence::{EvidenceError, Recorded, ReportData};
    use crate::kbs::Session;
    use crate::luks::LuksError;

    type Calls = Arc<Mutex<Vec<String>>>;

    /// Evidence that records its measurements and can fail the n-th one.
    struct FakeSource {
        calls: Calls,
        fail_measure: Option<usize>,
    }

    impl EvidenceSource for FakeSource {
        fn platform(&self) -> crate::config::Platform {
            crate::config::Platform::Tpm
        }
        fn tee(&self) -> kbs_types::Tee {
            kbs_types::Tee::Tpm
        }
        fn collect(&mut self, _: &ReportData) -> Result<serde_json::Value, EvidenceError> {
            self.calls.lock().unwrap().push("collect".into());
            Ok(serde_json::json!({}))
        }
        fn measure(&mut self, _pcr: u32, event: &[u8]) -> Result<Recorded, EvidenceError> {
            let n = self
                .calls
                .lock()
                .unwrap()
                .iter()
                .filter(|c| c.starts_with("measure"))
                .count();
            let first =
                String::from_utf8_lossy(event.split(|b| *b == b'\n').next().unwrap_or_default())
                    .into_owned();
            self.calls.lock().unwrap().push(format!("measure {first}"));
            if self.fail_measure == Some(n) {
                return Err(EvidenceError::Unavailable(
                    "injected measurement failure".into(),
                ));
            }
            Ok(Recorded::Registers("PCR 15 (fake)".into()))
        }
        fn pcrs_sha256(&mut self) -> Result<Option<[[u8; 32]; 24]>, EvidenceError> {
            Ok(Some(FAKE_PCRS))
        }
    }

    /// The fake TPM's SHA-256 bank: zero but PCR 4.
    const FAKE_PCRS: [[u8; 32]; 24] = {
        let mut p = [[0u8; 32]; 24];
        p[4] = [4; 32];
        p
    };

    /// A broker that serves `resources` (encrypted to the session key) or denies at attest.
    struct FakeBroker {
        name: String,
        calls: Calls,
        deny: bool,
        resources: Vec<(String, Vec<u8>)>,
        key: Mutex<Option<kbs_types::TeePubKey>>,
        /// Answers to the next `attest`s, before the normal one.
        script: Mutex<std::collections::VecDeque<KbsError>>,
    }

    impl BrokerClient for FakeBroker {
        fn url(&self) -> &str {
            &self.name
        }
        fn auth(&self, _tee: kbs_types::Tee) -> Result<Session, KbsError> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("{} auth", self.name));
            Ok(Session::new(
                "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=".into(),
                "c".into(),
            ))
        }
        fn attest(&self, _s: &Session, a: &Attestation) -> Result<String, KbsError> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("{} attest", self.name));
            if let Some(e) = self.script.lock().unwrap().pop_front() {
                return Err(e);
            }
            if self.deny {
                return Err(KbsError::Denied {
                    broker: self.name.clone(),
                    step: "attest",
                    kind: "PolicyDeny".into(),
                    detail: "no".into(),
                });
            }
            *self.key.lock().unwrap() = Some(a.runtime_data.tee_pubkey.clone());
            Ok("a.b.c".into())
        }
        fn resource(&self, _s: &Session, path: &str) -> Result<Vec<u8>, KbsError> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("{} fetch {path}", self.name));
            let plain = &self.resources.iter().find(|(p, _)| p == path).unwrap().1;
            Ok(jwe::encrypt_to(
                self.key.lock().unwrap().as_ref().unwrap(),
                plain,
            ))
        }
    }

    /// A volume that records what it was asked, and what the secret destination looked like
    /// at that moment; `open` can raise a SIGTERM (a stop request mid-unlock).
    struct FakeVolume {
        calls: Calls,
        watch: PathBuf,
        sigterm_on_open: bool,
        /// The LUKS2 metadata JSON its header holds.
        header: Vec<u8>,
    }

    impl Volume for FakeVolume {
        fn appear(&self, _: &std::path::Path, _: Duration) -> Result<(), LuksError> {
            Ok(())
        }
        fn metadata(&self, _: &std::path::Path) -> Result<Vec<u8>, LuksError> {
            self.calls.lock().unwrap().push("metadata".into());
            Ok(self.header.clone())
        }
        fn test_key(
            &self,
            _: &std::path::Path,
            _: Option<u32>,
            key: &[u8],
        ) -> Result<(), LuksError> {
            let staged = std::fs::read_dir(self.watch.parent().unwrap())
                .map(|d| d.count())
                .unwrap_or(0);
            self.calls.lock().unwrap().push(format!(
                "test_key {} dest_exists={} staged={staged}",
                String::from_utf8_lossy(key),
                self.watch.exists()
            ));
            Ok(())
        }
        fn open(
            &self,
            _: &std::path::Path,
            _: &str,
            _: Option<u32>,
            _: &[u8],
        ) -> Result<(), LuksError> {
            self.calls.lock().unwrap().push("open".into());
            if self.sigterm_on_open {
                nix::sys::signal::raise(nix::sys::signal::Signal::SIGTERM).unwrap();
            }
            Ok(())
        }
        fn close(&self, _: &str) -> Result<(), LuksError> {
            self.calls.lock().unwrap().push("close".into());
            Ok(())
        }
        fn write_token(&self, _: &std::path::Path, id: u32, json: &str) -> Result<(), LuksError> {
            let t: serde_json::Value = serde_json::from_str(json).unwrap();
            self.calls
                .lock()
                .unwrap()
                .push(format!("write_token {id} {}", t["type"].as_str().unwrap()));
            Ok(())
        }
    }

    /// Detection that finds a TPM (the [`FakeSource`]) or nothing.
    struct FakePlatforms {
        calls: Calls,
        fails: bool,
    }

    impl Platforms for FakePlatforms {
        fn detect(
            &self,
            _: &Config,
        ) -> Result<(crate::config::Platform, Box<dyn EvidenceSource>), EvidenceError> {
            self.calls.lock().unwrap().push("detect".into());
            if self.fails {
                return Err(EvidenceError::NoPlatform {
                    wanted: "auto".into(),
                    checked: "nothing (fake)".into(),
                });
            }
            let source = FakeSource {
                calls: self.calls.clone(),
                fail_measure: None,
            };
            Ok((crate::config::Platform::Tpm, Box::new(source)))
        }
    }

    struct Fast {
        calls: Calls,
        dir: tempfile::TempDir,
        config: Config,
    }

    impl Fast {
        fn new() -> Fast {
            let dir = tempfile::tempdir_in("/dev/shm").unwrap();
            let mut config = Config::default();
            config.measure.log = dir.path().join("m.log");
            config.retry.max_rounds = Some(1);
            // What the anchors name; the fakes stand in for the clients.
            config.brokers = vec![crate::config::Broker {
                url: "https://b1".into(),
                ca_cert: None,
            }];
            config.disk_key = Some("default/n/root".into());
            config.luks = Some(crate::config::Luks {
                device: PathBuf::from("/dev/fake"),
                name: "root".into(),
                keyslot: Some(1),
                device_timeout_ms: 1,
            });
            config.secrets = vec![crate::config::Secret {
                resource: "default/n/kubelet".into(),
                path: dir.path().join("out/kubelet"),
                mode: 0o600,
            }];
            Fast {
                calls: Arc::default(),
                dir,
                config,
            }
        }

        fn broker(&self, name: &str, deny: bool) -> Box<dyn BrokerClient> {
            Box::new(self.fake(name, deny, Vec::new()))
        }

        /// A broker whose next `attest`s answer `script` first.
        fn scripted(&self, name: &str, script: Vec<KbsError>) -> Box<dyn BrokerClient> {
            Box::new(self.fake(name, false, script))
        }

        fn fake(&self, name: &str, deny: bool, script: Vec<KbsError>) -> FakeBroker {
            FakeBroker {
                name: name.into(),
                calls: self.calls.clone(),
                deny,
                resources: vec![
                    ("default/n/root".into(), b"disk-key".to_vec()),
                    ("default/n/kubelet".into(), b"kubelet".to_vec()),
                ],
                key: Mutex::new(None),
                script: Mutex::new(script.into()),
            }
        }

        fn run(
            &self,
            brokers: &[Box<dyn BrokerClient>],
            fail_measure: Option<usize>,
            verify_only: bool,
            sigterm_on_open: bool,
        ) -> Result<Report, Failure> {
            let mut source = FakeSource {
                calls: self.calls.clone(),
                fail_measure,
            };
            let volume = self.volume(sigterm_on_open);
            let disk = KeySource::Native("default/n/root".into());
            let mut config = self.config.clone();
            config.disk_key_format = KeyFormat::Raw;
            run_with(
                &config,
                Some(&disk),
                &mut source,
                brokers,
                &volume,
                &Options { verify_only },
            )
        }

        fn volume(&self, sigterm_on_open: bool) -> FakeVolume {
            FakeVolume {
                calls: self.calls.clone(),
                watch: self.dest(),
                sigterm_on_open,
                header: br#"{"keyslots":{"0":{}},"tokens":{}}"#.to_vec(),
            }
        }

        /// The whole [`unlock`] with `config`, fake hardware (detection fails when
        /// `detect_fails`) and `brokers`.
        fn unlock(
            &self,
            config: Config,
            detect_fails: bool,
            brokers: &[Box<dyn BrokerClient>],
        ) -> Result<Report, Failure> {
            let volume = self.volume(false);
            self.unlock_on(config, detect_fails, brokers, &volume, true)
        }

        /// [`Fast::unlock`] on `volume`, opening it unless `verify_only`.
        fn unlock_on(
            &self,
            config: Config,
            detect_fails: bool,
            brokers: &[Box<dyn BrokerClient>],
            volume: &FakeVolume,
            verify_only: bool,
        ) -> Result<Report, Failure> {
            let platforms = FakePlatforms {
                calls: self.calls.clone(),
                fails: detect_fails,
            };
            let node = Node {
                volume,
                platforms: &platforms,
                brokers: Some(brokers),
            };
            unlock(Layers::default(), config, &node, &Options { verify_only })
        }

        /// A volume whose header holds a PCR record of `pcrs` (none: no record).
        fn volume_recording(&self, pcrs: Option<[[u8; 32]; 24]>) -> FakeVolume {
            let tokens = match pcrs {
                Some(p) => serde_json::json!({"3": PcrRecord::token_json(&p)}),
                None => serde_json::json!({}),
            };
            FakeVolume {
                header: serde_json::json!({"keyslots": {"0": {}}, "tokens": tokens})
                    .to_string()
                    .into_bytes(),
                ..self.volume(false)
            }
        }

        fn dest(&self) -> PathBuf {
            self.dir.path().join("out/kubelet")
        }

        fn calls(&self) -> Vec<String> {
            self.calls.lock().unwrap().clone()
        }
    }

    #[test]
    fn order_anchors_then_broker_then_stage_then_unlock_then_deliver() {
        let f = Fast::new();
        let report = f.run(&[f.broker("b1", false)], None, true, false).unwrap();
        assert_eq!(report.volume, crate::verdict::Volume::Verified);
        let calls = f.calls();
        assert_eq!(
            calls[0], "measure attest-unlock:trust-anchors:v1",
            "{calls:?}"
        );
        assert_eq!(calls[1], "b1 auth");
        let release = calls
            .iter()
            .position(|c| c.contains("secrets-released"))
            .unwrap();
        let unlock = calls
            .iter()
            .position(|c| c.starts_with("test_key"))
            .unwrap();
        assert!(calls.iter().position(|c| c.contains("fetch")).unwrap() < release);
        assert!(release < unlock, "{calls:?}");
        // At the unlock the secret is staged (a hidden file) but not at its destination.
        assert_eq!(
            calls[unlock],
            "test_key disk-key dest_exists=false staged=1"
        );
        assert_eq!(std::fs::read(f.dest()).unwrap(), b"kubelet");
    }

    #[test]
    fn nothing_contacts_a_broker_before_the_anchors_are_measured() {
        let f = Fast::new();
        let e = f
            .run(&[f.broker("b1", false)], Some(0), true, false)
            .unwrap_err();
        assert_eq!(e.step, Step::Anchors);
        assert!(
            f.calls().iter().all(|c| !c.starts_with("b1")),
            "{:?}",
            f.calls()
        );
    }

    #[test]
    fn nothing_is_staged_or_unlocked_when_the_release_cannot_be_measured() {
        let f = Fast::new();
        let e = f
            .run(&[f.broker("b1", false)], Some(1), true, false)
            .unwrap_err();
        assert_eq!(e.step, Step::Measure);
        assert!(f
            .calls()
            .iter()
            .all(|c| !c.starts_with("test_key") && c != "open"));
        assert!(!f.dir.path().join("out").exists(), "nothing staged");
    }

    #[test]
    fn a_denial_moves_on_to_the_next_broker_in_the_same_round() {
        let f = Fast::new();
        let report = f
            .run(
                &[f.broker("b1", true), f.broker("b2", false)],
                None,
                true,
                false,
            )
            .unwrap();
        assert_eq!((report.broker.as_str(), report.attempts), ("b2", 2));
    }

    fn busy(retry_after: Option<u64>) -> KbsError {
        KbsError::Unavailable {
            broker: "b1".into(),
            step: "attest",
            status: 503,
            retry_after: retry_after.map(Duration::from_secs),
        }
    }

    /// A broker that answers the attestation "not now" gets it again in the same session:
    /// one request per retry, no new auth or evidence, after the wait it asked for.
    #[test]
    fn not_now_resends_the_attestation_in_the_same_session_after_retry_after() {
        let mut f = Fast::new();
        f.config.retry.max_rounds = None;
        let started = Instant::now();
        let report = f
            .run(&[f.scripted("b1", vec![busy(Some(0))])], None, true, false)
            .unwrap();
        // Retry-After: 0 waits less than its second of jitter.
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(report.attempts, 2);
        let broker: Vec<String> = f
            .calls()
            .into_iter()
            .filter(|c| c.starts_with("b1"))
            .collect();
        assert_eq!(
            broker,
            [
                "b1 auth",
                "b1 attest",
                "b1 attest",
                "b1 fetch default/n/root",
                "b1 fetch default/n/kubelet"
            ]
        );
        // One evidence collection only.
        assert_eq!(f.calls().iter().filter(|c| *c == "collect").count(), 1);
    }

    /// A resumed session the broker no longer honours (it forgot it, or restarted) is
    /// dropped, and a new one opened in the same round, without waiting.
    #[test]
    fn a_resumed_session_that_fails_gives_way_to_a_new_one_at_once() {
        let mut f = Fast::new();
        f.config.retry.max_rounds = Some(2);
        let forgot = KbsError::Denied {
            broker: "b1".into(),
            step: "attest",
            kind: "InvalidCookie".into(),
            detail: "no such session".into(),
        };
        let report = f
            .run(
                &[f.scripted("b1", vec![busy(Some(0)), forgot])],
                None,
                true,
                false,
            )
            .unwrap();
        assert_eq!(report.attempts, 3);
        let auths = f.calls().iter().filter(|c| *c == "b1 auth").count();
        assert_eq!(auths, 2, "{:?}", f.calls());
    }

    #[test]
    fn retry_after_is_honoured_within_the_backoff_cap() {
        let mut c = Config::default();
        for secs in [0, 3, 29] {
            let d = hinted_wait(&c, Duration::from_secs(secs));
            assert!(d >= Duration::from_secs(secs) && d < Duration::from_secs(secs + 1));
        }
        // A hostile broker's hour is the cap, with the jitter kept below it.
        c.retry.max_backoff_ms = 10_000;
        let d = hinted_wait(&c, Duration::from_secs(3600));
        assert!(d >= Duration::from_secs(9) && d <= Duration::from_secs(10));
        c.retry.max_backoff_ms = 0;
        assert_eq!(hinted_wait(&c, Duration::from_secs(3600)), Duration::ZERO);
    }

    /// A stop request during the unlock: the opened volume is closed again and nothing is
    /// delivered (what a systemd stop does to the unit mid-boot).
    #[test]
    fn a_stop_request_after_the_open_closes_the_volume_and_delivers_nothing() {
        let f = Fast::new();
        let e = f
            .run(&[f.broker("b1", false)], None, false, true)
            .unwrap_err();
        assert_eq!(e.step, Step::Deliver);
        assert!(e.error.to_string().contains("SIGTERM"), "{}", e.error);
        let calls = f.calls();
        assert_eq!(&calls[calls.len() - 2..], ["open", "close"], "{calls:?}");
        assert!(!f.dest().exists());
    }

    /// A header without the trustee token (e.g. a first boot whose binding was denied) stops
    /// the run at `token`: nothing detected, no broker contacted, nothing unlocked.
    #[test]
    fn a_header_without_a_trustee_token_stops_before_detection_and_any_broker() {
        let f = Fast::new();
        let mut config = f.config.clone();
        config.disk_key = None;
        let e = f
            .unlock(config, false, &[f.broker("b1", false)])
            .unwrap_err();
        assert_eq!(e.step, Step::Token);
        assert!(
            e.error.to_string().contains("no clevis trustee token"),
            "{}",
            e.error
        );
        assert_eq!(e.platform, None);
        assert_eq!(f.calls(), ["metadata"]);
    }

    /// A detection failure is reported at `detect`, before any measurement or contact (the
    /// header was read for a native token).
    #[test]
    fn a_detection_failure_contacts_nothing() {
        let f = Fast::new();
        let e = f
            .unlock(f.config.clone(), true, &[f.broker("b1", false)])
            .unwrap_err();
        assert_eq!(e.step, Step::Detect);
        assert_eq!(f.calls(), ["metadata", "detect"]);
    }

    /// A configured `disk_key` reads the header only for our native token (a rotation's); with
    /// none, the config's path and keyslot are used. The report names the platform and leads
    /// its timings with detection.
    #[test]
    fn a_configured_disk_key_without_a_native_token_uses_the_config() {
        let f = Fast::new();
        let mut config = f.config.clone();
        config.disk_key_format = KeyFormat::Raw;
        let report = f.unlock(config, false, &[f.broker("b1", false)]).unwrap();
        assert_eq!(report.platform, Some(crate::config::Platform::Tpm));
        assert_eq!(report.timings.0[0].0, Step::Detect);
        let calls = f.calls();
        assert_eq!(calls[..2], ["metadata", "detect"], "{calls:?}");
        assert!(
            calls.iter().any(|c| c.starts_with("test_key disk-key")),
            "{calls:?}"
        );
    }

    /// An unlock that opened the volume keeps its PCRs in the header once (an update writes
    /// them again, an unchanged boot does not); a check (`--verify-only`) writes nothing.
    #[test]
    fn an_opened_volume_records_its_pcrs_when_they_changed() {
        let writes = |f: &Fast| {
            f.calls()
                .into_iter()
                .filter(|c| c.starts_with("write_token"))
                .collect::<Vec<_>>()
        };
        let mut config = Fast::new().config;
        config.disk_key_format = KeyFormat::Raw;
        for (record, verify_only, want) in [
            (None, false, vec!["write_token 0 attest-unlock-pcrs"]),
            (
                Some([[0u8; 32]; 24]),
                false,
                vec!["write_token 3 attest-unlock-pcrs"],
            ),
            (Some(FAKE_PCRS), false, vec![]),
            (None, true, vec![]),
        ] {
            let f = Fast::new();
            let volume = f.volume_recording(record);
            let brokers = [f.broker("b1", false)];
            f.unlock_on(config.clone(), false, &brokers, &volume, verify_only)
                .unwrap();
            assert_eq!(
                writes(&f),
                want,
                "record {record:?}, verify_only {verify_only}"
            );
        }
    }

    /// A denial says which PCRs differ from the recorded unlock, or that there is no record.
    #[test]
    fn a_denial_names_the_pcrs_changed_since_the_recorded_unlock() {
        let mut config = Fast::new().config;
        config.disk_key_format = KeyFormat::Raw;
        config.retry.max_rounds = Some(1);
        let mut before_update = FAKE_PCRS;
        before_update[4] = [0; 32];
        before_update[9] = [9; 32];
        for (record, want) in [
            (
                Some(before_update),
                "PCRs 4, 9 changed since the last successful unlock",
            ),
            (
                Some(FAKE_PCRS),
                "the PCRs are those of the last successful unlock",
            ),
            (None, "no record of a successful unlock"),
        ] {
            let f = Fast::new();
            let volume = f.volume_recording(record);
            let brokers = [f.broker("b1", true)];
            let e = f
                .unlock_on(config.clone(), false, &brokers, &volume, false)
                .unwrap_err();
            assert_eq!(e.error.class(), ErrorClass::BrokerDenied);
            let hint = e.hint.unwrap_or_default();
            assert!(hint.contains(want), "{hint}");
            assert!(!f.calls().iter().any(|c| c.starts_with("write_token")));
        }
    }

    /// `auth` and the evidence's preparation run at once: each waits, with a generous bound,
    /// for the other to have started, which a sequential order never gives. A preparation
    /// failure is reported at `prepare` (it would not go away on a retry).
    #[test]
    fn auth_and_prepare_run_at_once() {
        use std::sync::mpsc::{channel, Receiver, Sender};
        const BOUND: Duration = Duration::from_secs(20);
        struct Meet(Mutex<(Sender<()>, Receiver<()>)>);
        impl Meet {
            fn meet(&self) -> bool {
                let pair = self.0.lock().unwrap();
                pair.0.send(()).unwrap();
                pair.1.recv_timeout(BOUND).is_ok()
            }
        }
        struct Broker(Meet);
        impl BrokerClient for Broker {
            fn url(&self) -> &str {
                "b"
            }
            fn auth(&self, _: kbs_types::Tee) -> Result<Session, KbsError> {
                assert!(self.0.meet(), "auth ran alone");
                Ok(Session::new("n".into(), "c".into()))
            }
            fn attest(&self, _: &Session, _: &Attestation) -> Result<String, KbsError> {
                unreachable!()
            }
            fn resource(&self, _: &Session, _: &str) -> Result<Vec<u8>, KbsError> {
                unreachable!()
            }
        }
        struct Source(Meet, bool);
        impl EvidenceSource for Source {
            fn platform(&self) -> crate::config::Platform {
                crate::config::Platform::Tpm
            }
            fn tee(&self) -> kbs_types::Tee {
                kbs_types::Tee::Tpm
            }
            fn collect(&mut self, _: &ReportData) -> Result<serde_json::Value, EvidenceError> {
                unreachable!()
            }
            fn measure(&mut self, _: u32, _: &[u8]) -> Result<Recorded, EvidenceError> {
                unreachable!()
            }
            fn prepare(&mut self) -> Result<(), EvidenceError> {
                assert!(self.0.meet(), "prepare ran alone");
                if self.1 {
                    return Err(EvidenceError::Unavailable("no AK".into()));
                }
                Ok(())
            }
        }
        for fail in [false, true] {
            let (to_source, from_broker) = channel();
            let (to_broker, from_source) = channel();
            let broker = Broker(Meet(Mutex::new((to_source, from_source))));
            let mut source = Source(Meet(Mutex::new((to_broker, from_broker))), fail);
            let mut t = Timings(Vec::new());
            let out = auth_and_prepare(&broker, &mut source, &mut t);
            let steps: Vec<Step> = t.0.iter().map(|(s, _)| *s).collect();
            assert_eq!(steps, [Step::Auth, Step::Prepare, Step::Overlap]);
            match out {
                Ok(_) => assert!(!fail),
                Err((step, e)) => {
                    assert!(fail);
                    assert_eq!(step, Step::Prepare);
                    assert_eq!(e.class(), ErrorClass::Evidence);
                }
            }
        }
    }
}
