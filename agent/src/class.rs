//! The error classes: the short stable words that the verdict line, the retry policy and the
//! troubleshooting docs key on. A leaf module every area may use (it imports nothing), so an
//! area's error can name its class without depending on the top-level error.

use std::fmt;

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
    pub(crate) fn is_retryable(self) -> bool {
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
