//! The top-level error of the agent and the error classes that drive retry and reporting.
//!
//! Each area has its own typed error (`ConfigError`, `EvidenceError`, `KbsError`, `JweError`,
//! `LuksError`, `DeliverError`); this module joins them and gives every failure one
//! [`ErrorClass`], the short stable word that the verdict line, the retry policy and the
//! troubleshooting docs all key on.

use std::fmt;

use crate::clevis::ClevisError;
use crate::config::ConfigError;
use crate::deliver::DeliverError;
use crate::evidence::EvidenceError;
use crate::kbs::jwe::JweError;
use crate::kbs::KbsError;
use crate::luks::LuksError;

/// What kind of failure this is, as far as an operator and the retry policy care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The configuration is invalid: nothing was tried.
    Config,
    /// No supported platform, or the TPM/TEE failed while producing evidence.
    Evidence,
    /// The broker could not be reached or the connection broke (TCP, TLS, timeouts).
    Transport,
    /// The broker answered 5xx: it is up but cannot serve right now.
    BrokerUnavailable,
    /// The broker refused: attestation failed or the resource policy denied the node.
    BrokerDenied,
    /// The broker speaks another protocol version.
    ProtocolMismatch,
    /// The broker's reply is malformed or violates the protocol.
    BadReply,
    /// A released secret could not be decrypted with this boot's ephemeral key.
    Jwe,
    /// The disk key did not open the LUKS2 keyslot, or cryptsetup failed.
    Luks,
    /// A secret could not be written to its destination.
    Deliver,
}

impl ErrorClass {
    /// The stable identifier printed in the verdict line (`class=...`).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Config => "config",
            ErrorClass::Evidence => "evidence",
            ErrorClass::Transport => "transport",
            ErrorClass::BrokerUnavailable => "broker-unavailable",
            ErrorClass::BrokerDenied => "broker-denied",
            ErrorClass::ProtocolMismatch => "protocol-mismatch",
            ErrorClass::BadReply => "bad-reply",
            ErrorClass::Jwe => "jwe",
            ErrorClass::Luks => "luks",
            ErrorClass::Deliver => "deliver",
        }
    }

    /// Whether another attempt (a fresh session, possibly at another broker) can help.
    ///
    /// Transport failures and 5xx are transient. A denial may be transient too: the operator
    /// may be updating the policy or registering this node's AK, so it is retried with the
    /// long backoff. Everything else is a local or protocol fault that no retry fixes.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorClass::Transport | ErrorClass::BrokerUnavailable | ErrorClass::BrokerDenied
        )
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

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
pub const MAX_REASON: usize = 1000;
