//! attest-unlock: the boot-time attestation agent for confidential RHCOS nodes.
//!
//! Detect the platform, collect evidence bound to the broker's nonce and an ephemeral key,
//! speak Trustee's KBS protocol 0.4.0 over TLS, receive the disk key and other secrets as
//! JWE, unlock the LUKS2 volume and deliver the secrets; on any failure, unlock nothing and
//! write nothing. See ARCHITECTURE.md for the code map and the invariants.
//!
//! The documented surface is what the binary (`main.rs`) uses: [`cli`], [`pin`], [`text`],
//! [`verdict`] and [`error`]. The hidden modules are public only for the fuzz targets, the
//! bench, the test broker and the tests (as rustls hides its internals); every public item in
//! them is one of those callers names, the rest is `pub(crate)`.

pub(crate) mod anchors;
pub(crate) mod class;
#[doc(hidden)]
pub mod clevis;
pub mod cli;
#[doc(hidden)]
pub mod config;
pub(crate) mod deliver;
#[doc(hidden)]
pub mod docs;
pub mod error;
#[doc(hidden)]
pub mod evidence;
#[doc(hidden)]
pub mod flow;
#[doc(hidden)]
pub mod formats;
#[doc(hidden)]
pub mod header;
pub(crate) mod hw;
#[doc(hidden)]
pub mod inspect;
#[doc(hidden)]
pub mod kbs;
pub(crate) mod luks;
pub(crate) mod net;
#[doc(hidden)]
pub mod offline;
pub mod pin;
#[doc(hidden)]
pub mod refvalues;
pub(crate) mod rotate;
pub mod text;
pub mod verdict;

pub use error::{Error, ErrorClass};
