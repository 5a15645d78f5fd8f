//! `cargo xtask bench`: attest-unlock against clevis/tang and against its own baselines, on
//! this machine, in one run, with the method written down (docs/benchmarks.md and
//! docs/benchmarks.svg). Issue 7 is the spec.
//!
//! 1. time to key: `attest-unlock unlock --verify-only` (release build, swtpm, the test broker
//!    over TLS on loopback) vs `clevis decrypt` of a tang-bound JWE with a local `tangd`, runs
//!    interleaved, plus our per-step breakdown from the verdict line; 1b. the evidence step with
//!    the AK created on every boot vs kept at its persistent handle, on swtpm and with a slow
//!    `CreatePrimary` injected at the TCTI;
//! 2. keyslot open: our PBKDF2-1000 keyslot vs a default argon2id one, and the cost of not
//!    naming the slot;
//! 3. size: the stripped binary and its shared libraries; the bytes our dracut module adds to
//!    an initramfs vs clevis + clevis-pin-tang + clevis-pin-tpm2, built the same way;
//! 4. memory: peak RSS of one `unlock`;
//! 5. boot: `cargo xtask e2e --measure N` (QEMU, attested vs key file);
//! 6. boot storm: N in-process nodes running the agent's real retry loop
//!    (`attest_unlock::flow::release`) against one test broker that admits at most C
//!    attestations at once (503 beyond), vs fixed-interval baselines.
//!
//! The agent library and the broker link tss-esapi (libtss2-dev), and the storm needs
//! optimized crypto: so `cargo xtask bench` installs what it needs, then re-runs itself from an
//! optimized build with the `bench` feature in its own target directory (target/bench/build),
//! leaving the shipped release profile's target/release alone.

#[cfg_attr(not(feature = "bench"), allow(dead_code))]
mod plot;
#[cfg_attr(not(feature = "bench"), allow(dead_code))]
mod stats;

#[cfg(feature = "bench")]
mod akcost;
#[cfg(feature = "bench")]
mod measure;
#[cfg(feature = "bench")]
mod page;
#[cfg(feature = "bench")]
mod storm;
#[cfg(feature = "bench")]
mod trustee_storm;

use anyhow::Result;

/// Debian packages the bench needs beyond `cargo xtask setup`'s: the tang server, socat to run
/// it per connection, GNU time for peak RSS, and clevis's dracut modules (+ the tpm2 pin) for
/// the initramfs comparison.
pub(crate) const PACKAGES: &[&str] = &[
    "tang",
    "socat",
    "time",
    "clevis-dracut",
    "clevis-tpm2",
    "zstd",
    "cpio",
    "file",
];

/// Installs the bench's packages that are missing (same mechanism as `cargo xtask setup`).
fn install_packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .copied()
        .filter(|p| !crate::installed(p))
        .collect();
    if !missing.is_empty() {
        eprintln!("xtask: bench: installing {}", missing.join(" "));
        crate::run(std::process::Command::new("apt-get").args(["update", "-q"]))?;
        crate::run(
            std::process::Command::new("apt-get")
                .args(["install", "-y", "-q", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
    }
    Ok(())
}

/// `cargo xtask bench [options]` (see [`USAGE`]).
pub(crate) fn bench(args: &[String]) -> Result<()> {
    install_packages()?;
    #[cfg(feature = "bench")]
    {
        page::run(args)
    }
    #[cfg(not(feature = "bench"))]
    {
        use anyhow::Context;
        if args.iter().any(|a| a == "--help" || a == "-h") {
            eprintln!("{USAGE}");
            return Ok(());
        }
        crate::step("bench: building the bench runner (xtask --features bench, optimized, target/bench/build)");
        // `--config` rather than CARGO_PROFILE_* variables: those would leak into the cargo
        // builds the bench runs itself (the shipped release binary, the e2e).
        let status = crate::cargo()
            .args([
                "run",
                "--release",
                "-p",
                "xtask",
                "--features",
                "bench",
                "--target-dir",
                "target/bench/build",
                "--config",
                "profile.release.lto=false",
                "--config",
                "profile.release.codegen-units=16",
                "--",
                "bench",
            ])
            .args(args)
            .status()
            .context("run cargo")?;
        if !status.success() {
            // It has said why; only its exit code is left to pass on.
            std::process::exit(status.code().unwrap_or(1));
        }
        Ok(())
    }
}

/// The options, for the usage text and `--help`.
pub(crate) const USAGE: &str = "\
usage: cargo xtask bench [--runs N] [--keyslot-runs N] [--boots N] [--storm-runs N]
                         [--storm-nodes N,N] [--service-ms MS] [--quick] [--no-write]
                         [--storm-only] [--real-storm-only]
  --runs N          time-to-key and memory runs per side (default 10)
  --keyslot-runs N  keyslot-open runs per case (default 5; argon2 cases take ~2 s each)
  --boots N         QEMU boots per kind via `cargo xtask e2e --measure N` (default 3; 0 skips)
  --storm-runs N    boot-storm runs per variant and size (default 2)
  --storm-nodes L   simulated node counts (default 100,1000)
  --service-ms MS   the broker's fixed service time per attestation
                    (default 100 ms up to 100 nodes, 250 ms beyond)
  --quick           3 runs, 2 keyslot runs, no boots, 1 storm run (a smoke test)
  --no-write        print the table only; leave docs/benchmarks.* alone
  --storm-only      only the storm against the admission model (6), for each of
                    --storm-nodes; writes nothing
  --real-storm-only only the storm against the real Trustee KBS (6b), for each of
                    --storm-nodes; writes nothing";
