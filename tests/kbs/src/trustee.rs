//! The real Trustee KBS (`kbs` and `kbs-client` built unchanged from upstream 78962cd, from
//! `../shared/tools/trustee-kbs-78962cd/`, unpacked under `target/`), started on 127.0.0.1
//! over HTTPS with its own PKI, the built-in attestation service and RVPS, and the resource
//! plugin, as that directory's PROVENANCE.md records a working config: for the agent's tests
//! against the real peer and the bench's storm against it.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

const TOOLS: &str = "trustee-kbs-78962cd";

/// A running Trustee KBS, killed on drop.
pub struct Trustee {
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: tempfile::TempDir,
    child: Child,
}

fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .context("run openssl")?;
    ensure!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// A CA, a server certificate for 127.0.0.1 and an EC P-256 token signer with its chain.
fn make_pki(dir: &Path) -> Result<()> {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let ca = |name: &str| -> Result<()> {
        let mut a = vec!["req", "-x509"];
        a.extend(ec);
        let key = format!("{name}.key");
        let pem = format!("{name}.pem");
        let subj = format!("/CN={name}");
        a.extend([
            "-keyout", &key, "-out", &pem, "-days", "3650", "-subj", &subj,
        ]);
        openssl(dir, &a)
    };
    let leaf = |name: &str, issuer: &str, ext: &str| -> Result<()> {
        std::fs::write(dir.join(format!("{name}.ext")), ext)?;
        let mut a = vec!["req"];
        a.extend(ec);
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        let subj = format!("/CN={name}");
        a.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
        openssl(dir, &a)?;
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
        )
    };
    ca("ca")?;
    leaf(
        "server",
        "ca",
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )?;
    ca("token-ca")?;
    leaf(
        "token",
        "token-ca",
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n",
    )?;
    let chain = std::fs::read_to_string(dir.join("token.pem"))?
        + &std::fs::read_to_string(dir.join("token-ca.pem"))?;
    std::fs::write(dir.join("token-chain.pem"), chain)?;
    Ok(())
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
    /// Start a fresh KBS on a free loopback port, with Trustee's `provisioner` plugin (per-VM
    /// LUKS keys) when asked.
    pub fn start(provisioner: bool) -> Result<Trustee> {
        let kbs = crate::shared_tool(TOOLS, "kbs")?;
        let dir = tempfile::tempdir()?;
        make_pki(dir.path())?;
        std::fs::create_dir_all(dir.path().join("state"))?;
        for _ in 0..10 {
            let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            let cfg = dir.path().join("kbs.toml");
            std::fs::write(&cfg, config(dir.path(), port, provisioner))?;
            let log = std::fs::File::create(dir.path().join("kbs.log"))?;
            let mut child = Command::new(&kbs)
                .arg("--config-file")
                .arg(&cfg)
                .env("RUST_LOG", "info")
                .stdout(log.try_clone()?)
                .stderr(log)
                .stdin(Stdio::null())
                .spawn()
                .context("start kbs")?;
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(20) {
                if child.try_wait()?.is_some() {
                    break;
                }
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Ok(Trustee { port, dir, child });
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        bail!(
            "kbs did not start: {}",
            std::fs::read_to_string(dir.path().join("kbs.log")).unwrap_or_default()
        )
    }

    /// The KBS process's id (for its CPU time in `/proc`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// Its CA certificate (PEM).
    pub fn ca_pem(&self) -> Result<String> {
        Ok(std::fs::read_to_string(self.dir.path().join("ca.pem"))?)
    }

    /// Its working directory (config, PKI, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The real `kbs-client`.
    pub fn client() -> Result<PathBuf> {
        crate::shared_tool(TOOLS, "kbs-client")
    }

    /// `kbs-client --url URL --cert-file CA config ARGS`, which must succeed: its stdout.
    pub fn admin(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(Self::client()?)
            .current_dir(self.dir.path())
            .arg("--url")
            .arg(self.url())
            .arg("--cert-file")
            .arg(self.dir.path().join("ca.pem"))
            .arg("config")
            .args(args)
            .output()
            .context("run kbs-client")?;
        ensure!(
            out.status.success(),
            "kbs-client config {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Upload a resource.
    pub fn set_resource(&self, path: &str, bytes: &[u8]) -> Result<()> {
        let file = self.dir.path().join("resource.tmp");
        std::fs::write(&file, bytes)?;
        let file_arg = file.display().to_string();
        self.admin(&["set-resource", "--path", path, "--resource-file", &file_arg])?;
        std::fs::remove_file(file)?;
        Ok(())
    }

    /// The KBS's own log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("kbs.log")).unwrap_or_default()
    }
}

impl Drop for Trustee {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
