//! The real Trustee KBS (`kbs` and `kbs-client` built unchanged from upstream 78962cd, from
//! `../shared/tools/trustee-kbs-78962cd/`, unpacked under `target/trustee/`), started on
//! 127.0.0.1 over HTTPS with its own PKI, the built-in attestation service and RVPS, and the
//! resource plugin, as that directory's PROVENANCE.md records a working config.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::run_ok;

/// The unpacked `kbs` and `kbs-client`.
fn tools() -> &'static (PathBuf, PathBuf) {
    static TOOLS: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    TOOLS.get_or_init(|| {
        let dir = "trustee-kbs-78962cd";
        (
            super::shared_tools::unpack(dir, "kbs"),
            super::shared_tools::unpack(dir, "kbs-client"),
        )
    })
}

/// A running Trustee KBS, killed on drop.
pub(crate) struct Trustee {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Child,
}

fn openssl(dir: &Path, args: &[&str]) {
    run_ok(Command::new("openssl").current_dir(dir).args(args));
}

/// A CA, a server certificate for 127.0.0.1 and an EC P-256 token signer with its chain.
fn make_pki(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let ca = |name: &str| {
        let mut a = vec!["req", "-x509"];
        a.extend(ec);
        let key = format!("{name}.key");
        let pem = format!("{name}.pem");
        let subj = format!("/CN={name}");
        a.extend([
            "-keyout", &key, "-out", &pem, "-days", "3650", "-subj", &subj,
        ]);
        openssl(dir, &a);
    };
    let leaf = |name: &str, issuer: &str, ext: &str| {
        std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
        let mut a = vec!["req"];
        a.extend(ec);
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        let subj = format!("/CN={name}");
        a.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
        openssl(dir, &a);
        let (ca_pem, ca_key, pem, extf) = (
            format!("{issuer}.pem"),
            format!("{issuer}.key"),
            format!("{name}.pem"),
            format!("{name}.ext"),
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &ca_pem,
                "-CAkey",
                &ca_key,
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "365",
                "-extfile",
                &extf,
            ],
        );
    };
    ca("ca");
    leaf(
        "server",
        "ca",
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    );
    ca("token-ca");
    leaf(
        "token",
        "token-ca",
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n",
    );
    let chain = std::fs::read_to_string(dir.join("token.pem")).unwrap()
        + &std::fs::read_to_string(dir.join("token-ca.pem")).unwrap();
    std::fs::write(dir.join("token-chain.pem"), chain).unwrap();
}

fn config(dir: &Path, port: u16, provisioner: bool) -> String {
    let p = |f: &str| dir.join(f).display().to_string();
    format!(
        r#"[http_server]
sockets = ["127.0.0.1:{port}"]
insecure_http = false
private_key = "{}"
certificate = "{}"
[attestation_token]
trusted_certs_paths = ["{}"]
[attestation_service]
type = "coco_as_builtin"
[attestation_service.attestation_token_broker]
duration_min = 5
[attestation_service.attestation_token_broker.signer]
key_path = "{}"
cert_path = "{}"
[attestation_service.rvps_config]
type = "BuiltIn"
[admin]
authorization_mode = "InsecureAllowAll"
[storage_backend]
storage_type = "LocalFs"
[storage_backend.backends.local_fs]
dir_path = "{}"
[[plugins]]
name = "resource"
storage_backend_type = "kvstorage"
{}"#,
        p("server.key"),
        p("server.pem"),
        p("token-ca.pem"),
        p("token.key"),
        p("token-chain.pem"),
        p("state"),
        if provisioner {
            "[[plugins]]\nname = \"provisioner\"\n"
        } else {
            ""
        },
    )
}

impl Trustee {
    /// Start a fresh KBS on a free loopback port.
    pub(crate) fn start() -> Trustee {
        Trustee::start_with(false)
    }

    /// Start a fresh KBS, with Trustee's `provisioner` plugin (per-VM LUKS keys) when asked.
    pub(crate) fn start_with(provisioner: bool) -> Trustee {
        let (kbs, _) = tools();
        let dir = tempfile::tempdir().unwrap();
        make_pki(dir.path());
        std::fs::create_dir_all(dir.path().join("state")).unwrap();
        for _ in 0..10 {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let cfg = dir.path().join("kbs.toml");
            std::fs::write(&cfg, config(dir.path(), port, provisioner)).unwrap();
            let log = std::fs::File::create(dir.path().join("kbs.log")).unwrap();
            let mut child = Command::new(kbs)
                .arg("--config-file")
                .arg(&cfg)
                .env("RUST_LOG", "info")
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .stdin(Stdio::null())
                .spawn()
                .unwrap();
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(20) {
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Trustee { port, dir, child };
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!(
            "kbs did not start: {}",
            std::fs::read_to_string(dir.path().join("kbs.log")).unwrap_or_default()
        );
    }

    pub(crate) fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    pub(crate) fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("ca.pem")).unwrap()
    }

    /// `kbs-client --url URL --cert-file CA config ARGS`, which must succeed.
    pub(crate) fn admin(&self, args: &[&str]) -> String {
        let (_, client) = tools();
        let out = run_ok(
            Command::new(client)
                .current_dir(self.dir.path())
                .arg("--url")
                .arg(self.url())
                .arg("--cert-file")
                .arg(self.dir.path().join("ca.pem"))
                .arg("config")
                .args(args),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Upload a resource.
    pub(crate) fn set_resource(&self, path: &str, bytes: &[u8]) {
        let file = self.dir.path().join("resource.tmp");
        std::fs::write(&file, bytes).unwrap();
        self.admin(&[
            "set-resource",
            "--path",
            path,
            "--resource-file",
            file.to_str().unwrap(),
        ]);
        std::fs::remove_file(file).unwrap();
    }

    /// Upload a resource policy (rego text).
    pub(crate) fn set_resource_policy(&self, rego: &str) {
        let file = self.dir.path().join("resource-policy.rego");
        std::fs::write(&file, rego).unwrap();
        self.admin(&[
            "set-resource-policy",
            "--policy-file",
            file.to_str().unwrap(),
        ]);
    }

    /// Upload an attestation policy (rego text) under `id` (`default_cpu` replaces the
    /// default appraisal of CPU-class evidence such as TPM quotes).
    pub(crate) fn set_attestation_policy(&self, id: &str, rego: &str) {
        let file = self.dir.path().join("attestation-policy.rego");
        std::fs::write(&file, rego).unwrap();
        self.admin(&[
            "set-attestation-policy",
            "--policy-file",
            file.to_str().unwrap(),
            "--id",
            id,
        ]);
    }

    /// An admin call over HTTPS (InsecureAllowAll): `method` `path` with a JSON body;
    /// returns the status and the body.
    pub(crate) fn admin_http(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        let agent = test_kbs::https_client(&self.ca_pem()).unwrap();
        let url = format!("{}{path}", self.url());
        let mut resp = match method {
            "POST" => agent
                .post(&url)
                .header("Content-Type", "application/json")
                .send(body)
                .unwrap(),
            "DELETE" => agent.delete(&url).call().unwrap(),
            other => panic!("{other}"),
        };
        let status = resp.status().as_u16();
        (status, resp.body_mut().read_to_string().unwrap_or_default())
    }

    /// `POST /kbs/v0/provisioner/provision`: the VM's uuid and resource path.
    pub(crate) fn provision(&self, vm_name: &str, namespace: &str) -> (String, String) {
        let body = serde_json::json!({"vm_name": vm_name, "namespace": namespace}).to_string();
        let (status, text) = self.admin_http("POST", "/kbs/v0/provisioner/provision", &body);
        assert_eq!(status, 200, "provision: {text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        (
            v["uuid"].as_str().unwrap().to_owned(),
            v["resource_path"].as_str().unwrap().to_owned(),
        )
    }

    /// The KBS's own log so far.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("kbs.log")).unwrap_or_default()
    }
}

impl Drop for Trustee {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The ```rego block of docs/deploying.md that contains `marker`.
pub(crate) fn doc_policy(marker: &str) -> String {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/deploying.md"))
            .unwrap();
    let blocks: Vec<String> = text
        .split("```rego\n")
        .skip(1)
        .filter_map(|b| b.split("```").next())
        .map(|b| {
            // Blocks inside a list are indented.
            let indent = b
                .lines()
                .next()
                .map_or(0, |l| l.len() - l.trim_start().len());
            b.lines()
                .map(|l| l.get(indent..).unwrap_or(l.trim_start()))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .filter(|b| b.contains(marker))
        .collect();
    assert_eq!(
        blocks.len(),
        1,
        "one rego block with {marker:?} in docs/deploying.md"
    );
    blocks[0].clone()
}
