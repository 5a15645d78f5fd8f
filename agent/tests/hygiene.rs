//! Secret hygiene: after a successful run, the disk key and every secret (raw, base64 and
//! base64url) appear nowhere but at their destination: not in the argv or environment of the
//! agent or of cryptsetup, not in anything logged, not in any other file the run touched.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use common::*;
use test_kbs::{Broker, BrokerConfig};

fn needles(secret: &[u8]) -> Vec<Vec<u8>> {
    vec![
        secret.to_vec(),
        STANDARD.encode(secret).into_bytes(),
        URL_SAFE_NO_PAD.encode(secret).into_bytes(),
    ]
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push(p);
        }
    }
}

#[test]
fn secrets_appear_only_at_their_destination() {
    let tpm = Swtpm::start();
    let (disk_resource, passphrase) = operator_disk_key();
    let image = LuksImage::new(&passphrase);
    let kubelet = b"kubelet-bootstrap-token-7f3a9c1e5d".to_vec();
    let broker = Broker::start(BrokerConfig {
        trusted_aks: vec![ak_public(&tpm)],
        resources: BTreeMap::from([
            ("default/n/root".to_owned(), disk_resource.clone()),
            ("default/n/kubelet".to_owned(), kubelet.clone()),
        ]),
        ..BrokerConfig::default()
    })
    .unwrap();
    let work = secret_dir();
    let secrets = secret_dir();
    let dest = secrets.path().join("kubelet");

    // A cryptsetup wrapper on PATH records its own argv and environment, then runs the real
    // one: that is the agent's child process, seen from the inside.
    let spy = tempfile::tempdir().unwrap();
    let wrapper = spy.path().join("cryptsetup");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\ncat /proc/$$/cmdline > {dir}/child.$$.cmdline\ncat /proc/$$/environ > {dir}/child.$$.environ\nexec /usr/sbin/cryptsetup \"$@\"\n",
            dir = spy.path().join("out").display()
        ),
    )
    .unwrap();
    std::fs::create_dir(spy.path().join("out")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();

    let config = AgentConfig {
        brokers: vec![(broker.url(), broker.ca_pem())],
        tcti: tpm.tcti(),
        disk_key: Some("default/n/root".to_owned()),
        image: Some(image.path.clone()),
        secrets: vec![("default/n/kubelet".to_owned(), dest.clone())],
        token_path: None,
        extra: String::new(),
    };
    let cfg = work.path().join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            "{}[measure]\nlog = {:?}\n",
            config.toml(),
            work.path().join("m.log").display().to_string()
        ),
    )
    .unwrap();
    let path = format!(
        "{}:{}",
        spy.path().display(),
        std::env::var("PATH").unwrap()
    );
    let child = Command::new(agent_bin())
        .args([
            // The most verbose level: every library's trace output too.
            "-vv",
            "unlock",
            "--verify-only",
            "--kernel-cmdline",
            "/dev/null",
            "--config",
        ])
        .arg(&cfg)
        .env("PATH", &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The agent's own argv and environment, read while it runs.
    let pid = child.id();
    // Until the exec has happened the entries are the test's own (or empty): read until
    // the agent's argv is there, for at most two seconds.
    let read = |what: &str| std::fs::read(format!("/proc/{pid}/{what}")).unwrap_or_default();
    let started = std::time::Instant::now();
    let (mut own_cmdline, mut own_environ) = (read("cmdline"), read("environ"));
    while !own_cmdline.windows(6).any(|w| w == b"unlock")
        && started.elapsed() < std::time::Duration::from_secs(2)
    {
        std::thread::sleep(std::time::Duration::from_millis(1));
        own_cmdline = read("cmdline");
        own_environ = read("environ");
    }
    // A search in nothing proves nothing: the reads must have worked.
    assert!(
        own_cmdline.windows(6).any(|w| w == b"unlock") && !own_environ.is_empty(),
        "could not read the agent's argv/environ"
    );
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(&dest).unwrap(), kubelet);

    let mut places: Vec<(String, Vec<u8>)> = vec![
        ("agent stdout".into(), out.stdout.clone()),
        ("agent stderr (debug log)".into(), out.stderr),
        ("agent cmdline".into(), own_cmdline),
        ("agent environ".into(), own_environ),
    ];
    let mut files = Vec::new();
    for dir in [
        work.path(),
        secrets.path(),
        spy.path(),
        image.path.parent().unwrap(),
    ] {
        walk(dir, &mut files);
    }
    let children = files
        .iter()
        .filter(|f| f.to_string_lossy().contains("child."))
        .count();
    assert!(
        children >= 2,
        "cryptsetup's argv and environ were recorded: {files:?}"
    );
    for f in files.iter().filter(|f| **f != dest) {
        places.push((f.display().to_string(), std::fs::read(f).unwrap()));
    }

    let mut all = needles(&passphrase);
    all.extend(needles(&disk_resource));
    all.extend(needles(&kubelet));
    for (place, bytes) in &places {
        for n in &all {
            assert!(
                !contains(bytes, n),
                "a secret ({} bytes) was found in {place}",
                n.len()
            );
        }
    }
}
