//! The real Trustee KBS for the tests (`test_kbs::trustee` starts it), with the admin calls
//! the suites use, each failing the test on error.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

/// A running Trustee KBS ([`test_kbs::trustee::Trustee`]), failing the test on any error.
pub(crate) struct Trustee(test_kbs::trustee::Trustee);

impl Trustee {
    /// Start a fresh KBS on a free loopback port.
    pub(crate) fn start() -> Trustee {
        Trustee::start_with(false)
    }

    /// Start a fresh KBS, with Trustee's `provisioner` plugin (per-VM LUKS keys) when asked.
    pub(crate) fn start_with(provisioner: bool) -> Trustee {
        Trustee(test_kbs::trustee::Trustee::start(provisioner).unwrap_or_else(|e| panic!("{e:#}")))
    }

    pub(crate) fn url(&self) -> String {
        self.0.url()
    }

    pub(crate) fn ca_pem(&self) -> String {
        self.0.ca_pem().unwrap()
    }

    /// `kbs-client --url URL --cert-file CA config ARGS`, which must succeed.
    pub(crate) fn admin(&self, args: &[&str]) -> String {
        self.0.admin(args).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Upload a resource.
    pub(crate) fn set_resource(&self, path: &str, bytes: &[u8]) {
        self.0
            .set_resource(path, bytes)
            .unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// Upload a resource policy (rego text).
    pub(crate) fn set_resource_policy(&self, rego: &str) {
        let file = self.0.dir().join("resource-policy.rego");
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
        let file = self.0.dir().join("attestation-policy.rego");
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
        self.0.log()
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
