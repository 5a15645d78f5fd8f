//! Offline verification of attestation evidence: the one implementation that the test broker
//! (`tests/kbs`, deciding what it accepts) and the operator's `attest-inspect --verify` share.
//!
//! - [`x509`]: certificate chains and validity, with only the algorithms the vendors use;
//! - [`snp`]: an SEV-SNP report's signature, its VCEK/VLEK against the report, the chain to an
//!   AMD root;
//! - [`tdx`]: a TDX quote's signature, QE binding, PCK chain to Intel's root, and the CCEL
//!   replay.
//!
//! Nothing here links into the initramfs binary: the agent produces evidence, it never
//! verifies it.

pub mod binding;
pub mod certs;
pub mod check;
pub mod collateral;
pub mod roots;
pub mod snp;
pub mod tdx;
pub mod time;
pub mod tpm;
pub mod x509;

/// The certificate types of this crate's API.
pub use x509_cert;
