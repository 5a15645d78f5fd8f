//! The real peers in `../shared/tools/` (built unchanged from upstream, each with a
//! PROVENANCE.md), unpacked once under `target/<dir>/` and never committed.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

/// `../shared/tools/<dir>/<name>.xz` unpacked as `target/<dir>/<name>` (executable)
/// ([`test_kbs::shared_tool`]).
pub(crate) fn unpack(dir: &str, name: &str) -> PathBuf {
    test_kbs::shared_tool(dir, name).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Upstream `ignition-validate` v2.26.0 (spec 3.6.0: custom clevis pins by any name).
pub(crate) fn ignition_validate() -> PathBuf {
    unpack("ignition-v2.26.0", "ignition-validate")
}
