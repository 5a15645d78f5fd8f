//! attest-unlock: the boot-time attestation agent for confidential RHCOS nodes.
//!
//! Detect the platform, collect evidence bound to the broker's nonce and an ephemeral key,
//! speak Trustee's KBS protocol 0.4.0 over TLS, receive the disk key and other secrets as
//! JWE, unlock the LUKS2 volume and deliver the secrets; on any failure, unlock nothing and
//! write nothing. See ARCHITECTURE.md for the code map and the invariants.

pub(crate) mod anchors;
pub(crate) mod class;
pub mod clevis;
pub mod cli;
pub mod config;
pub(crate) mod deliver;
pub mod docs;
pub mod error;
pub mod evidence;
pub mod flow;
pub mod formats;
pub(crate) mod hw;
pub mod inspect;
pub mod kbs;
pub(crate) mod luks;
pub(crate) mod net;
pub mod pin;
pub mod refvalues;
pub mod text;
pub mod verdict;

pub use error::{Error, ErrorClass};
