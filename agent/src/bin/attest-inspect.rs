//! The `attest-inspect` binary: the operator's offline tool (see `attest_unlock::offline`).

use std::io::Write;
use std::process::ExitCode;

use attest_unlock::offline::{self, Cli, Outcome};
use clap::Parser;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut stdout = std::io::stdout().lock();
    match offline::run(&cli, &mut stdout) {
        Ok(Outcome::Success) => ExitCode::SUCCESS,
        Ok(Outcome::Failed) => ExitCode::from(1),
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "attest-inspect: error: {}",
                attest_unlock::text::console(&e.to_string(), 4096)
            );
            ExitCode::from(2)
        }
    }
}
