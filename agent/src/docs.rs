//! The configuration reference and the man page, generated from the code so they cannot drift:
//! the config keys come from one table checked against the config structs (a test asks serde
//! for each struct's field list), the command-line flags from clap.

use std::fmt::Write;

use clap::CommandFactory;

/// One config key: dotted name, default, what it does.
pub(crate) struct Key {
    /// Dotted key, as in TOML, `--set` and `rd.attest_unlock.`.
    pub key: &'static str,
    /// The default, as TOML.
    pub default: &'static str,
    /// What it does.
    pub doc: &'static str,
}

const fn k(key: &'static str, default: &'static str, doc: &'static str) -> Key {
    Key { key, default, doc }
}

/// Every config key. The tests check this against the config structs both ways.
pub(crate) const KEYS: &[Key] = &[
    k("platform", "\"auto\"", "Evidence source: `auto`, `tpm`, `snp`, `tdx`, `az-snp-vtpm`, `az-tdx-vtpm`, `gcp-vtpm`. `auto` tries configfs-tsm (SNP/TDX), the Azure HCL report in vTPM NV 0x01400001, `/dev/sev-guest`, the GCE AK template in vTPM NV 0x01c10001/0x01c10003, then the plain TPM. A named platform that is absent is an error, never a fallback."),
    k("brokers", "[]", "Brokers (Trustee KBS), tried in order each round: a list of tables."),
    k("brokers[].url", "(required)", "Base URL, `https://host:port`; the `/kbs/v0/...` paths are appended."),
    k("brokers[].ca_cert", "(required for https)", "The CA certificate(s) of the broker's TLS certificate: inline PEM or a path. The only trusted roots."),
    k("disk_key", "(none)", "Resource path (`repo/type/tag`, or `kbs+provisioner:///repo/type/tag` for Trustee's provisioner plugin) of the LUKS passphrase. Without it, `unlock` reads the trustee clevis token of the LUKS2 header."),
    k("disk_key_format", "\"auto\"", "`auto`, `operator-json` (`{\"key_type\":\"oct\",\"key\":...}`: the bytes of `key`), `raw`, `confdata` (the provisioner's TOML: the text of `io.cryptsetup.key.text.<tag>`; what `auto` uses for a `kbs+provisioner:///` path)."),
    k("luks", "(none)", "The volume to open; without it, `rd.luks.uuid=` / `rd.luks.name=` on the kernel command line name it."),
    k("luks.device", "(required)", "Block device or image holding the LUKS2 header."),
    k("luks.name", "\"root\"", "Device-mapper name to activate as (`luks-UUID` when taken from `rd.luks.uuid`)."),
    k("luks.keyslot", "(token's)", "The keyslot the key opens; a trustee token names it. Naming it skips other (argon2) slots."),
    k("luks.device_timeout_ms", "90000", "How long to wait for the device node to appear."),
    k("secrets", "[]", "Secrets to deliver: a list of tables."),
    k("secrets[].resource", "(required)", "Resource path at the broker."),
    k("secrets[].path", "(required)", "Absolute destination on tmpfs/ramfs (e.g. under /run)."),
    k("secrets[].mode", "\"0600\"", "File mode; group and other bits are refused."),
    k("tpm.tcti", "\"device:/dev/tpmrm0\"", "TCTI string (`device:`, `swtpm:host=..,port=..`)."),
    k("tpm.ak_handle", "(none)", "A persistent AK handle (e.g. 0x81010002); default: the AK derived from the endorsement seed (same key every boot)."),
    k("tpm.ak_cache_handle", "0x81010020", "Where the derived AK is kept after its first creation, so later boots skip the RSA key generation (seconds on a discrete TPM); a key there is used only if it is exactly the derived primary. 0: keep nothing. Clear with `tpm2_evictcontrol -C o -c 0x81010020`."),
    k("tpm.event_log", "\"/sys/kernel/security/tpm0/binary_bios_measurements\"", "TCG event log sent with the quote when present."),
    k("tee.tsm_root", "\"/sys/kernel/config/tsm/report\"", "configfs-tsm report directory."),
    k("tee.sev_guest", "\"/dev/sev-guest\"", "SEV guest device for kernels without configfs-tsm."),
    k("tee.vmpl", "0", "SNP VMPL to request (higher under an SVSM)."),
    k("tee.ccel", "\"/sys/firmware/acpi/tables/data/CCEL\"", "TDX CCEL event log."),
    k("tee.composite", "true", "With a TEE and a TPM, send the TPM quote as additional evidence bound to the TEE report."),
    k("tee.rtmr", "\"/sys/class/misc/tdx_guest/measurements/rtmr3:sha384\"", "TDX without a TPM: the RTMR attribute extended with SHA-384 of the post-release event (Linux >= 6.16)."),
    k("tee.tdx_guest", "\"/dev/tdx_guest\"", "TDX guest device: its TDREPORT is what the quote generation service signs on the direct path."),
    k("tee.qgs_port", "4050", "Host vsock port of the TDX quote generation service. With the TDX guest device present the quote is asked of it directly (milliseconds; the request timeout applies) instead of through configfs-tsm, whose driver polls once a second and which stays the fallback. 0: configfs-tsm only."),
    k("azure.imds_url", "\"http://169.254.169.254\"", "Azure Instance Metadata Service: VCEK and chain (`/metadata/THIM/amd/certification`) on SNP, TD quote (`/acc/tdquote`) on TDX."),
    k("azure.poll_timeout_ms", "10000", "How long to wait for the HCL report to carry the user data just written to NV 0x01400002 (polled with short backoff, no fixed sleep)."),
    k("azure.insecure_boot_report", "false", "Send the boot-time HCL report (evidence `version: 1`): the hardware report is then not bound to the session, only the vTPM quote is. Only for brokers whose policy accepts it (logged at warn)."),
    k("timeouts.connect_ms", "5000", "Per TCP+TLS connect."),
    k("timeouts.request_ms", "30000", "Per request (send and whole reply)."),
    k("retry.max_rounds", "(none: forever)", "Rounds over all brokers before giving up (the pin's `num_retries`)."),
    k("retry.initial_backoff_ms", "250", "First backoff; doubles each round, full jitter. A round whose every failure carried `Retry-After` (delta-seconds; an HTTP-date is ignored) waits what the broker asked instead, plus up to a second of jitter."),
    k("retry.max_backoff_ms", "30000", "Backoff cap, and cap of a broker's `Retry-After`; a denial waits between half the cap and the cap."),
    k("retry.deadline_ms", "(none)", "Give up once this much time has passed."),
    k("measure.enabled", "true", "Measure the trust anchors before the first network byte and the release after it (see `attest-unlock anchors`). Required when the brokers come from the LUKS2 token."),
    k("measure.pcr", "15", "The PCR extended, in every active bank, first with the trust-anchor event, then with the post-release event `attest-unlock:secrets-released:v1`."),
    k("measure.log", "\"/run/attest-unlock/measurements.log\"", "A line per measurement, for verifiers."),
    k("init_data", "(none)", "Init-data sent with the attestation (`format = \"toml\"`); on a TPM node PCR 8 is extended with it before any contact (Trustee's TPM binding). Without it, a `kbs+provisioner:///` path gets the init-data the provisioner plugin requires (`[data] \"trustee.kbs.resource\" = <that path>`)."),
    k("init_data.body", "(none)", "Inline TOML body."),
    k("init_data.path", "(none)", "Or a file holding it."),
    k("token_path", "(none)", "Write the broker's attestation token (EAR JWT) here, mode 0600 (tmpfs)."),
    k("insecure_allow_persistent_secrets", "false", "Allow secret destinations on a persistent filesystem (logged at warn)."),
    k("insecure_allow_http", "false", "Allow `http://` brokers (logged at warn)."),
    k("servers_url_override", "(none)", "Replace every broker URL (kernel switch `rd.attest_unlock.servers_url_override=URL`)."),
    k("failure_report", "(none)", "Write the failure explanation here (the initramfs unit passes `--failure-report`)."),
    k("disable", "false", "Do nothing (kernel switch `rd.attest_unlock.disable`)."),
    k("verbose", "false", "Debug logging (kernel switch `rd.attest_unlock.verbose`)."),
    k("trust_kernel_cmdline", "true", "Whether the boot measures the kernel command line (GRUB: PCR 8, systemd-stub: PCR 12, TDX: RTMR 2, SNP measured direct boot), so it may set trust anchors. Set `false` in the initramfs file where it is not; only the file and `--set` may set this key."),
];

/// The clevis pin config keys (drop-in for clevis-pin-trustee).
pub(crate) const PIN_KEYS: &[Key] = &[
    k("servers", "(required)", "`[{\"url\": ..., \"cert\": PEM or \"\"}]`. Used only when no measured layer (initramfs file, kernel command line) names a broker, and then measured into `measure.pcr` before any contact; an empty cert trusts the system CA bundle (logged at warn)."),
    k("path", "(required)", "Resource holding `{\"key_type\":\"oct\",\"key\":<32 characters>}` (or `kbs+provisioner:///default/<uuid>/root`: the provisioner's 32-character key); its key encrypts the JWE (`dir` + `A256GCM`)."),
    k("initdata", "null", "At encrypt time a JSON object string of key/values, stored in the header as the TOML init-data document."),
    k("num_retries", "infinity", "Rounds over the servers, or `\"infinity\"`."),
    k("attestation_key", "null", "`{\"registration\": {\"url\", \"cert\", \"uuid\"}}`: at encrypt time (first boot) PUT `{\"attestation_key\": <AK PEM>, \"uuid\"}` there."),
    k("attest-unlock", "null", "Our extension: the keys of the config above that the LUKS2 token may set (see \"Who may set what\"), as JSON (e.g. `secrets`). It is the LUKS-token layer of the config; any other key is an error."),
];

/// The whole configuration reference (docs/configuration.md).
pub fn configuration_reference() -> String {
    let mut out = String::new();
    out.push_str("# Configuration reference\n\n");
    out.push_str("<!-- Generated from agent/src/docs.rs and the clap definitions by `ATTEST_UNLOCK_BLESS=1 cargo test -p attest-unlock --test repo generated_docs`; the test fails when it drifts. -->\n\n");
    out.push_str(
        "Precedence, lowest first: built-in defaults < the volume named by `rd.luks.uuid=` / \
         `rd.luks.name=` < the config file (`/etc/attest-unlock/config.toml`, `--config`, or \
         `$ATTEST_UNLOCK_CONFIG` for the pin) < the LUKS2 token (the trustee pin config, with our \
         `attest-unlock` extension and the token's keyslot; or, when the config names \
         `disk_key`, our own `attest-unlock` token, which `attest-unlock rotate` writes: its \
         `disk_key` and keyslot) < the kernel command line (`rd.attest_unlock.KEY=VALUE`) < \
         `--set KEY=VALUE`. Tables merge key by key; any other value is replaced whole. Unknown \
         keys are errors in every layer. What each layer may set is below.\n\n",
    );
    out.push_str(
        "## Who may set what\n\nThe LUKS2 header is written by whoever holds the disk (in a \
         confidential VM: the host), so the LUKS2 token (the pin config and its `attest-unlock` \
         extension) may only name what to fetch and where it goes. Every other key, above all \
         the brokers and their CAs, every `insecure_*`, the measurement and the TPM/TEE \
         interfaces, comes only from measured layers: the initramfs config file, the kernel \
         command line (unless `trust_kernel_cmdline = false`) and `--set`. A token that sets \
         another key is an error. The pin's `servers` are used only when no measured layer \
         names a broker, and only with `measure.enabled`: the brokers, CA fingerprints, \
         resource paths and init-data digest are then extended into `measure.pcr` before the \
         first network byte, so a broker whose policy checks that register (`attest-unlock \
         anchors` prints the value) refuses evidence relayed through another broker. The log \
         names the layer of every security-relevant value, and warns for each weakening one.\n\n",
    );
    let _ = writeln!(
        out,
        "| layer | may set |\n|---|---|\n| initramfs config file, `--set` | every key |\n| kernel command line (`rd.attest_unlock.*`) | every key but `trust_kernel_cmdline`; with `trust_kernel_cmdline = false` only {} |\n| LUKS2 token | only {} |\n",
        crate::config::UNMEASURED_CMDLINE_KEYS
            .iter()
            .map(|k| format!("`{k}`"))
            .collect::<Vec<_>>()
            .join(", "),
        crate::config::TOKEN_KEYS
            .iter()
            .map(|k| format!("`{k}`"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    out.push_str("## Config keys\n\n| key | default | meaning |\n|---|---|---|\n");
    for key in KEYS {
        let _ = writeln!(out, "| `{}` | `{}` | {} |", key.key, key.default, key.doc);
    }
    out.push_str("\n## Kernel command line\n\nEvery key above as `rd.attest_unlock.KEY=VALUE` (dotted, VALUE as TOML or a plain string), plus the standard `rd.luks.uuid=UUID` / `rd.luks.name=UUID=NAME` for the volume. The switches an operator needs at boot:\n\n");
    out.push_str("| argument | effect |\n|---|---|\n");
    for (arg, doc) in [
        (
            "rd.attest_unlock.disable",
            "skip attest-unlock (recover with a passphrase or key file); booleans also take `=1`/`=0`, `=yes`/`=no`",
        ),
        ("rd.attest_unlock.verbose", "debug logging"),
        (
            "rd.attest_unlock.servers_url_override=URL",
            "use this broker URL for every broker (logged at warn, and part of the measured trust anchors)",
        ),
        (
            "rd.attest_unlock.retry.max_rounds=N",
            "give up after N rounds",
        ),
    ] {
        let _ = writeln!(out, "| `{arg}` | {doc} |");
    }
    out.push_str("\n## clevis pin config (`clevis encrypt trustee CONFIG`)\n\n| key | default | meaning |\n|---|---|---|\n");
    for key in PIN_KEYS {
        let _ = writeln!(out, "| `{}` | `{}` | {} |", key.key, key.default, key.doc);
    }
    out.push_str("\nEnvironment: `ATTEST_UNLOCK_CONFIG` names the config file for the pin (clevis passes no options) on a booted system, and is ignored in the initramfs (where `/etc/initrd-release` exists), whose config is its own measured file; `ATTEST_UNLOCK_ROOT` is the pin's `--root` in debug builds only (a test hook: a release build ignores it, as a service's environment can come from the unmeasured kernel command line).\n");
    out.push_str("\n## Command line\n\n");
    let mut cmd = crate::cli::Cli::command();
    cmd.build();
    out.push_str("```text\n");
    out.push_str(&cmd.render_long_help().to_string());
    out.push_str("```\n");
    let subs: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_owned())
        .filter(|n| n != "help")
        .collect();
    for name in subs {
        let _ = write!(out, "\n### `attest-unlock {name}`\n\n```text\n");
        // Exactly what `attest-unlock NAME --help` prints (global flags included).
        let help = match crate::cli::Cli::command().try_get_matches_from([
            "attest-unlock",
            name.as_str(),
            "--help",
        ]) {
            Err(e) => e.render().to_string(),
            Ok(_) => String::new(),
        };
        out.push_str(&help);
        if !help.ends_with('\n') {
            out.push('\n');
        }
        out.push_str("```\n");
    }
    out
}

fn roff_escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('-', "\\-")
        .replace('\'', "\\'")
}

/// The man page, attest-unlock(1), in roff.
pub fn man_page() -> String {
    let cmd = crate::cli::Cli::command();
    let mut out = String::new();
    out.push_str(".TH ATTEST-UNLOCK 1 \"\" \"attest-unlock ");
    out.push_str(env!("CARGO_PKG_VERSION"));
    out.push_str("\" \"User Commands\"\n.SH NAME\nattest\\-unlock \\- attest this node to a key broker and unlock its LUKS2 root\n");
    out.push_str(".SH SYNOPSIS\n.B attest\\-unlock\n[\\fIOPTIONS\\fR] \\fICOMMAND\\fR\n.br\n.B clevis\\-encrypt\\-trustee\n\\fICONFIG\\fR\n.br\n.B clevis\\-decrypt\\-trustee\n");
    out.push_str(".SH DESCRIPTION\n");
    out.push_str(&roff_escape(
        "In the initramfs, attest-unlock detects the platform (SEV-SNP, TDX, TPM), collects evidence bound to the broker's nonce and a fresh ephemeral key, speaks Trustee's KBS protocol 0.4.0 over TLS, receives the disk key and other secrets as JWE, opens the LUKS2 volume and delivers the secrets. On any failure it unlocks nothing, writes nothing, and prints one verdict line with the error class.",
    ));
    out.push_str("\n.SH OPTIONS\n");
    for arg in cmd.get_arguments() {
        if arg.is_hide_set() {
            continue;
        }
        let mut names = Vec::new();
        if let Some(s) = arg.get_short() {
            names.push(format!("\\-{s}"));
        }
        if let Some(l) = arg.get_long() {
            names.push(format!("\\-\\-{}", roff_escape(l)));
        }
        let _ = writeln!(out, ".TP\n\\fB{}\\fR", names.join(", "));
        if let Some(h) = arg.get_help() {
            let _ = writeln!(out, "{}", roff_escape(&h.to_string()));
        }
    }
    out.push_str(".SH COMMANDS\n");
    for sub in cmd.get_subcommands() {
        let _ = writeln!(out, ".TP\n\\fB{}\\fR", roff_escape(sub.get_name()));
        if let Some(a) = sub.get_about() {
            let _ = writeln!(out, "{}", roff_escape(&a.to_string()));
        }
    }
    out.push_str(".SH EXIT STATUS\n0 success, 1 failure (the verdict line says why), 2 configuration or usage error.\n");
    out.push_str(".SH FILES\n/etc/attest\\-unlock/config.toml, /run/attest\\-unlock/failure, /run/attest\\-unlock/measurements.log\n");
    out.push_str(
        ".SH SEE ALSO\nclevis(1), cryptsetup(8), docs/configuration.md, docs/troubleshooting.md\n",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;
    use std::collections::BTreeSet;

    /// The fields serde expects for `T`, from its `deny_unknown_fields` error message.
    fn fields<T: serde::de::DeserializeOwned>() -> BTreeSet<String> {
        let err = serde_json::from_value::<T>(serde_json::json!({"\u{1}": 0}))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        // serde says "expected `a`", "expected `a` or `b`" or "expected one of `a`, `b`, ...".
        let list = err.split("expected").nth(1).unwrap_or_default();
        list.split('`')
            .enumerate()
            .filter(|(i, _)| i % 2 == 1)
            .map(|(_, f)| f.to_owned())
            .collect()
    }

    #[test]
    fn reference_lists_exactly_the_config_fields() {
        let mut from_code = BTreeSet::new();
        let mut add = |prefix: &str, names: BTreeSet<String>| {
            assert!(!names.is_empty(), "no fields for {prefix}");
            for n in names {
                from_code.insert(format!("{prefix}{n}"));
            }
        };
        add("", fields::<config::Config>());
        add("brokers[].", fields::<config::Broker>());
        add("luks.", fields::<config::Luks>());
        add("secrets[].", fields::<config::Secret>());
        add("tpm.", fields::<config::Tpm>());
        add("tee.", fields::<config::Tee>());
        add("azure.", fields::<config::Azure>());
        add("timeouts.", fields::<config::Timeouts>());
        add("retry.", fields::<config::Retry>());
        add("measure.", fields::<config::Measure>());
        add("init_data.", fields::<config::InitData>());
        let documented: BTreeSet<String> = KEYS.iter().map(|k| k.key.to_owned()).collect();
        // A table-valued key (`tpm`) is documented through its members (`tpm.tcti`).
        let missing: Vec<_> = from_code
            .difference(&documented)
            .filter(|c| !documented.iter().any(|d| d.starts_with(&format!("{c}."))))
            .collect();
        let extra: Vec<_> = documented
            .difference(&from_code)
            .filter(|d| {
                !from_code.iter().any(|c| c.starts_with(&format!("{d}.")))
                    && !from_code.iter().any(|c| c.starts_with(&format!("{d}[].")))
            })
            .collect();
        assert!(
            missing.is_empty(),
            "config keys missing from docs::KEYS: {missing:?}"
        );
        assert!(
            extra.is_empty(),
            "docs::KEYS names keys the config does not have: {extra:?}"
        );
    }

    #[test]
    fn man_page_names_every_subcommand() {
        let man = man_page();
        for sub in ["unlock", "evidence", "detect", "ak"] {
            assert!(man.contains(&format!("\\fB{sub}\\fR")), "{sub}");
        }
        assert!(man.starts_with(".TH ATTEST-UNLOCK 1"));
    }

    /// The key lists the resolver acts on name real keys, and the boolean list is exactly the
    /// documented booleans (so a new switch also works as a bare kernel argument).
    #[test]
    fn resolver_key_lists_match_the_reference() {
        let documented: BTreeSet<&str> = KEYS.iter().map(|k| k.key).collect();
        for key in config::TOKEN_KEYS
            .iter()
            .chain(config::UNMEASURED_CMDLINE_KEYS)
            .chain(config::TRACKED_KEYS)
        {
            assert!(
                documented.contains(key)
                    || documented.iter().any(|d| d.starts_with(&format!("{key}."))),
                "{key} is not a documented key"
            );
        }
        let booleans: BTreeSet<&str> = KEYS
            .iter()
            .filter(|k| k.default == "true" || k.default == "false")
            .map(|k| k.key)
            .collect();
        let listed: BTreeSet<&str> = config::BOOL_KEYS.iter().copied().collect();
        assert_eq!(booleans, listed);
    }
}
