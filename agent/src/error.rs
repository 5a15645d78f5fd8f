//! The top-level error of the agent and the error classes that drive retry and reporting.
//!
//! Each area has its own typed error (`ConfigError`, `EvidenceError`, `KbsError`, `JweError`,
//! `LuksError`, `DeliverError`); this module joins them and gives every failure one
//! [`ErrorClass`], the short stable word that the verdict line, the retry policy and the
//! troubleshooting docs all key on.

pub use crate::class::ErrorClass;
use crate::clevis::ClevisError;
use crate::config::ConfigError;
use crate::deliver::DeliverError;
use crate::evidence::EvidenceError;
use crate::kbs::jwe::JweError;
use crate::kbs::KbsError;
use crate::luks::LuksError;

/// Any failure of the agent.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Invalid configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Evidence could not be collected.
    #[error(transparent)]
    Evidence(#[from] EvidenceError),
    /// The broker conversation failed.
    #[error(transparent)]
    Kbs(#[from] KbsError),
    /// A released secret could not be decrypted.
    #[error("cannot decrypt resource {resource}: {source}")]
    Jwe {
        /// The resource path whose JWE failed.
        resource: String,
        /// Why.
        #[source]
        source: JweError,
    },
    /// The disk key resource is not in the configured format.
    #[error("disk key resource {resource}: {message}")]
    KeyFormat {
        /// The resource path.
        resource: String,
        /// What is wrong (never the key itself).
        message: String,
    },
    /// The clevis pin config, JWE or LUKS2 token is unusable.
    #[error(transparent)]
    Clevis(#[from] ClevisError),
    /// The LUKS2 step failed.
    #[error(transparent)]
    Luks(#[from] LuksError),
    /// An attestation artefact (for `inspect`) does not parse.
    #[error("{file}: {source}")]
    Format {
        /// The file.
        file: String,
        /// Why.
        #[source]
        source: crate::formats::FormatError,
    },
    /// A file named on the command line (`inspect FILE`) could not be read.
    #[error("cannot read {file}: {source}")]
    Input {
        /// The file.
        file: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Writing a secret failed.
    #[error(transparent)]
    Deliver(#[from] DeliverError),
    /// No reference values could be computed.
    #[error(transparent)]
    Predict(#[from] crate::refvalues::PredictError),
}

impl Error {
    /// The class of this failure.
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::Config(_) => ErrorClass::Config,
            Error::Evidence(_) => ErrorClass::Evidence,
            Error::Kbs(e) => e.class(),
            Error::Jwe { .. } => ErrorClass::Jwe,
            Error::KeyFormat { .. } => ErrorClass::BadReply,
            Error::Clevis(ClevisError::Config(_) | ClevisError::Input(_)) => ErrorClass::Config,
            Error::Clevis(ClevisError::Key(_)) => ErrorClass::BadReply,
            Error::Clevis(ClevisError::Decrypt) => ErrorClass::Jwe,
            Error::Clevis(ClevisError::Jwe(_) | ClevisError::Token(_)) => ErrorClass::Luks,
            Error::Luks(_) => ErrorClass::Luks,
            Error::Format { .. } => ErrorClass::Evidence,
            Error::Input { .. } => ErrorClass::Config,
            Error::Deliver(_) => ErrorClass::Deliver,
            Error::Predict(_) => ErrorClass::Evidence,
        }
    }

    /// The wait the broker asked for with `Retry-After`, if this is its "not now".
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            Error::Kbs(e) => e.retry_after(),
            _ => None,
        }
    }
}

/// The error and its causes on one line. Causes whose text the message already contains
/// (most of ours embed their source) are not repeated.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut cur = error.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = e.source();
    }
    // One line, no control byte, no double quote (the verdict quotes the reason), bounded.
    let line = out.split_whitespace().collect::<Vec<_>>().join(" ");
    crate::text::printable(&line, MAX_REASON)
}

/// The longest reason the verdict line carries, in characters.
pub(crate) const MAX_REASON: usize = 1000;
