//! Repository checks as ordinary tests (rust-analyzer's tidy): shell scripts pass shellcheck,
//! every systemd ordering line says why, the Ignition examples validate with the real
//! `ignition-validate` and carry a pin config our pin accepts, and the README gives exactly
//! the two commands.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "common/shared_tools.rs"]
mod shared_tools;

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn files(dir: &str, ext: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(repo().join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no *.{ext} in {dir}");
    out
}

#[test]
fn shell_scripts_pass_shellcheck() {
    // Every file with a shell shebang (module-setup.sh, the generator).
    let scripts: Vec<PathBuf> = std::fs::read_dir(repo().join("dracut-module/90attest-unlock"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            std::fs::read_to_string(p)
                .map(|t| t.starts_with("#!/bin/sh") || t.starts_with("#!/bin/bash"))
                .unwrap_or(false)
        })
        .collect();
    assert!(scripts.len() >= 2, "{scripts:?}");
    let out = Command::new("shellcheck")
        .args(&scripts)
        .output()
        .expect("shellcheck (cargo xtask setup)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn every_unit_ordering_line_says_why() {
    for unit in files("systemd", "service") {
        let text = std::fs::read_to_string(&unit).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if line.starts_with("After=") || line.starts_with("Before=") {
                // The nearest non-ordering line above must be a comment.
                let above = lines[..i].iter().rev().find(|l| {
                    !(l.starts_with("After=")
                        || l.starts_with("Before=")
                        || l.starts_with("Wants="))
                });
                assert!(
                    above.is_some_and(|l| l.starts_with('#')),
                    "{}:{}: {line} has no comment saying why",
                    unit.display(),
                    i + 1
                );
            }
        }
        assert!(
            text.contains("DefaultDependencies=no"),
            "{}",
            unit.display()
        );
    }
    let main = std::fs::read_to_string(repo().join("systemd/attest-unlock.service")).unwrap();
    for needed in [
        "Type=oneshot",
        "RemainAfterExit=yes",
        "OnFailure=emergency.target",
        "OnFailureJobMode=isolate",
    ] {
        assert!(
            main.contains(needed),
            "attest-unlock.service lacks {needed}"
        );
    }
    assert!(
        !main
            .lines()
            .any(|l| l.starts_with("After=") && l.contains("dracut-initqueue")),
        "ordering after dracut-initqueue deadlocks"
    );
}

/// Every example validates with upstream `ignition-validate` v2.26.0 (spec 3.6.0, the first
/// to accept a custom clevis pin by any name) with no error and no warning, and carries a pin
/// config our pin accepts and whose extension the token layer may set.
#[test]
fn ignition_examples_validate_and_carry_a_valid_pin_config() {
    let validate = shared_tools::ignition_validate();
    let mut checked = 0;
    for ign in files("ignition", "ign") {
        let out = Command::new(&validate).arg(&ign).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && text.trim().is_empty(),
            "{}: {text}",
            ign.display()
        );
        let doc: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&ign).unwrap()).unwrap();
        assert_eq!(doc["ignition"]["version"], "3.6.0", "{}", ign.display());
        for luks in doc["storage"]["luks"].as_array().unwrap() {
            let custom = &luks["clevis"]["custom"];
            assert_eq!(custom["pin"], "trustee");
            let config = custom["config"].as_str().unwrap();
            let pin = attest_unlock::clevis::PinConfig::parse(config).unwrap();
            attest_unlock::config::validate_resource_path(&pin.path).unwrap();
            // The token may only name what to fetch: every example's extension resolves.
            let mut layers = attest_unlock::config::Layers::default();
            pin.add_to(&mut layers, None).unwrap();
            layers
                .resolve()
                .unwrap_or_else(|e| panic!("{}: {e}", ign.display()));
        }
        checked += 1;
    }
    assert!(checked >= 7, "{checked} examples");
}

/// What an Ignition older than 2.26.0 (any spec up to 3.5.0) says about our pin, as the docs
/// state it: the same example at spec 3.5.0 is rejected by the same validator.
#[test]
fn ignition_before_spec_3_6_rejects_the_pin_as_the_docs_say() {
    let validate = shared_tools::ignition_validate();
    let text = std::fs::read_to_string(repo().join("ignition/trustee-root.ign"))
        .unwrap()
        .replace("\"3.6.0\"", "\"3.5.0\"");
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("old.ign");
    std::fs::write(&old, text).unwrap();
    let out = Command::new(&validate).arg(&old).output().unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    // What the docs quote, for this example (the position is its line and column).
    let quoted =
        "error at $.storage.luks.0.clevis.custom.pin, line 19 col 20: unsupported clevis pin";
    assert!(said.contains(quoted), "{said}");
    let rhcos = std::fs::read_to_string(repo().join("docs/rhcos.md")).unwrap();
    assert!(
        rhcos.contains(quoted),
        "docs/rhcos.md must quote {quoted:?}"
    );

    // An Ignition that predates spec 3.6.0 (Debian's 2.14) cannot parse the examples at all.
    let out = Command::new("ignition-validate")
        .arg(repo().join("ignition/trustee-root.ign"))
        .output()
        .expect("Debian's ignition-validate (cargo xtask setup)");
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let quoted = "couldn't parse config: unsupported config version";
    assert!(!out.status.success() && said.contains(quoted), "{said}");
    assert!(
        rhcos.contains(quoted),
        "docs/rhcos.md must quote {quoted:?}"
    );
}

#[test]
fn readme_gives_exactly_the_two_commands() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let commands: Vec<&str> = readme
        .lines()
        .filter(|l| l.starts_with("    cargo "))
        .map(str::trim)
        .collect();
    assert_eq!(commands, vec!["cargo xtask demo", "cargo xtask test"]);
    let ci = std::fs::read_to_string(repo().join(".ci/run")).unwrap();
    assert!(
        ci.lines().any(|l| l.trim() == "cargo xtask test"),
        ".ci/run must run the README test command"
    );
}

/// docs/configuration.md and docs/attest-unlock.1 are generated from the code; regenerate with
/// `ATTEST_UNLOCK_BLESS=1 cargo test -p attest-unlock --test repo generated_docs`.
#[test]
fn generated_docs_are_up_to_date() {
    for (path, text) in [
        (
            "docs/configuration.md",
            attest_unlock::docs::configuration_reference(),
        ),
        ("docs/attest-unlock.1", attest_unlock::docs::man_page()),
    ] {
        let file = repo().join(path);
        if std::env::var_os("ATTEST_UNLOCK_BLESS").is_some() {
            std::fs::write(&file, &text).unwrap();
        }
        let on_disk = std::fs::read_to_string(&file).unwrap_or_default();
        assert!(
            on_disk == text,
            "{path} is out of date: run ATTEST_UNLOCK_BLESS=1 cargo test -p attest-unlock --test repo generated_docs"
        );
    }
}

#[test]
fn help_of_every_subcommand_is_in_the_reference() {
    let reference = std::fs::read_to_string(repo().join("docs/configuration.md")).unwrap();
    for sub in ["unlock", "evidence", "detect", "ak"] {
        let out = Command::new(env!("CARGO_BIN_EXE_attest-unlock"))
            .args([sub, "--help"])
            .output()
            .unwrap();
        assert!(out.status.success());
        let help = String::from_utf8(out.stdout).unwrap();
        assert!(
            reference.contains(help.trim_end()),
            "`attest-unlock {sub} --help` differs from docs/configuration.md"
        );
    }
}

fn doc_files() -> Vec<PathBuf> {
    let mut docs = files("docs", "md");
    docs.push(repo().join("README.md"));
    docs
}

/// Lines of shell code blocks (``` or ```sh, and four-space indented blocks) in a Markdown file.
fn shell_lines(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut fence: Option<String> = None;
    for line in text.lines() {
        if let Some(rest) = line.trim_start().strip_prefix("```") {
            fence = match fence {
                Some(_) => None,
                None => Some(rest.trim().to_owned()),
            };
            continue;
        }
        match &fence {
            Some(lang) if lang.is_empty() || lang == "sh" => out.push(line.trim().to_owned()),
            None if line.starts_with("    ") && !line.trim().is_empty() => {
                out.push(line.trim().to_owned())
            }
            _ => {}
        }
    }
    out
}

/// Commands in the docs that can run here do run: every `ignition-validate` (upstream v2.26.0,
/// no error allowed), and every `attest-unlock` command line
/// parses with the real argument parser (so a renamed flag breaks the docs build).
#[test]
fn commands_in_the_docs_run() {
    let mut validated = 0;
    let mut parsed = 0;
    for doc in doc_files() {
        let text = std::fs::read_to_string(&doc).unwrap();
        for line in shell_lines(&text) {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.first() {
                Some(&"ignition-validate") => {
                    let out = Command::new(shared_tools::ignition_validate())
                        .args(&words[1..])
                        .current_dir(repo())
                        .output()
                        .unwrap();
                    let text = String::from_utf8_lossy(&out.stdout).to_string()
                        + &String::from_utf8_lossy(&out.stderr);
                    assert!(
                        out.status.success() && text.trim().is_empty(),
                        "{}: `{line}`: {text}",
                        doc.display()
                    );
                    validated += 1;
                }
                // Synopsis lines with [optional] parts are notation, not commands.
                Some(&"attest-unlock")
                    if !['$', '|', '>', '['].iter().any(|c| line.contains(*c)) =>
                {
                    use clap::CommandFactory;
                    let args: Vec<&str> = words
                        .iter()
                        .take_while(|w| !w.starts_with('#'))
                        .copied()
                        .collect();
                    let result = attest_unlock::cli::Cli::command().try_get_matches_from(&args);
                    if let Err(e) = result {
                        assert!(
                            matches!(
                                e.kind(),
                                clap::error::ErrorKind::DisplayHelp
                                    | clap::error::ErrorKind::DisplayVersion
                            ),
                            "{}: `{line}` does not parse: {e}",
                            doc.display()
                        );
                    }
                    parsed += 1;
                }
                _ => {}
            }
        }
    }
    assert!(
        validated >= 1 && parsed >= 3,
        "validated {validated}, parsed {parsed}"
    );
}

#[test]
fn relative_links_in_the_docs_resolve() {
    for doc in doc_files() {
        let text = std::fs::read_to_string(&doc).unwrap();
        for part in text.split("](").skip(1) {
            let target = part.split(')').next().unwrap_or_default();
            if target.starts_with("http") || target.starts_with('#') || target.is_empty() {
                continue;
            }
            let path = doc
                .parent()
                .unwrap()
                .join(target.split('#').next().unwrap());
            assert!(
                path.exists(),
                "{}: link to {target} is broken",
                doc.display()
            );
        }
    }
}

/// The top-level modules of the library and the ones each names (`crate::x`), tests left out.
fn module_graph() -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
    let mut graph: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        Default::default();
    let mut stack = vec![repo().join("agent/src")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().and_then(|e| e.to_str()) != Some("rs") {
                continue;
            }
            let rel = path.strip_prefix(repo().join("agent/src")).unwrap();
            let top = rel
                .components()
                .next()
                .unwrap()
                .as_os_str()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_owned();
            if top == "lib" || top == "main" {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap();
            let deps = graph.entry(top.clone()).or_default();
            for (i, _) in code.match_indices("crate::") {
                let name: String = code[i + 7..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                if !name.is_empty() && name != top {
                    deps.insert(name);
                }
            }
        }
    }
    graph
}

/// No import cycle between the library's modules (ARCHITECTURE.md), and the pure `formats`
/// layer imports nothing of the crate.
#[test]
fn module_imports_have_no_cycle() {
    let graph = module_graph();
    fn reaches(
        graph: &std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
        from: &str,
        to: &str,
        seen: &mut std::collections::BTreeSet<String>,
    ) -> bool {
        graph
            .get(from)
            .into_iter()
            .flatten()
            .any(|n| n == to || (seen.insert(n.clone()) && reaches(graph, n, to, seen)))
    }
    let mut cycles = Vec::new();
    for (module, deps) in &graph {
        for dep in deps {
            if reaches(&graph, dep, module, &mut Default::default()) {
                cycles.push(format!("{module} -> {dep}"));
            }
        }
    }
    assert!(cycles.is_empty(), "import cycles through: {cycles:?}");
    assert!(
        graph["formats"].is_empty(),
        "formats imports {:?}",
        graph["formats"]
    );
    assert!(graph.len() > 15, "{graph:?}");
}
