//! The only code that opens devices. Everything above it sees typed results, never handles.

pub mod tpm;
pub mod tsm;
