//! `inspect`: parse an attestation blob offline and show what it says, as JSON or a table.
//!
//! Pure: bytes in, a JSON value out (the caller reads the file and prints). Nothing here
//! verifies a signature or judges a value; it shows the fields, the replayed event-log
//! registers and the internal bindings (the HCL variable-data hash) so an operator can compare
//! them with reference values. JSON field names are snake_case, digests lowercase hex, and
//! 64-bit flag words hex strings (JSON numbers lose precision above 2^53).

use std::fmt::Write as _;
use std::str::FromStr;

use serde_json::{json, Map, Value};

use crate::formats::devpath;
use crate::formats::eventlog::{self, CcelLog, Event, EventLog, LogFormat, SpecIdEvent};
use crate::formats::hcl::{self, HclReport, HwReport};
use crate::formats::snp::{self, SigningKey, SnpReport, Tcb, TcbLayout};
use crate::formats::tdx::{self, CertificationData, TdReport, TdxQuote};
use crate::formats::tpm::{self, TpmsAttest, TpmtSignature};
use crate::formats::{FormatError, HashAlg};

/// The kinds of blob `inspect` understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// AMD SEV-SNP attestation report.
    SnpReport,
    /// Intel TDX quote (v4 or v5).
    TdxQuote,
    /// Azure HCL report.
    HclReport,
    /// TPM `TPMS_ATTEST` (quote).
    TpmsAttest,
    /// TPM `TPMT_SIGNATURE` (never detected: it has no magic number).
    TpmtSignature,
    /// TCG PC-Client event log.
    EventLog,
    /// TDX CCEL event log.
    Ccel,
    /// X.509 certificates: one DER certificate or a PEM file of one or more (VCEK, VLEK, ASK,
    /// ARK, PCK chains).
    Certificate,
    /// The evidence document `attest-unlock evidence` prints (`tee`, `runtime-data`,
    /// `tee-evidence`).
    Evidence,
}

impl Kind {
    /// Every kind, in the order detection tries them.
    pub const ALL: [Kind; 9] = [
        Kind::Evidence,
        Kind::HclReport,
        Kind::TpmsAttest,
        Kind::TdxQuote,
        Kind::SnpReport,
        Kind::Certificate,
        Kind::Ccel,
        Kind::EventLog,
        Kind::TpmtSignature,
    ];

    /// The snake_case name used in JSON (`"kind"`) and accepted on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Kind::SnpReport => "snp_report",
            Kind::TdxQuote => "tdx_quote",
            Kind::HclReport => "hcl_report",
            Kind::TpmsAttest => "tpms_attest",
            Kind::TpmtSignature => "tpmt_signature",
            Kind::EventLog => "event_log",
            Kind::Ccel => "ccel",
            Kind::Certificate => "certificate",
            Kind::Evidence => "evidence",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Kind {
    type Err = FormatError;

    /// Accepts [`Kind::name`], the same with `-` for `_`, and the short forms `snp`, `tdx`,
    /// `hcl` and `eventlog`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let normalized = s.trim().to_ascii_lowercase().replace('-', "_");
        let short = match normalized.as_str() {
            "snp" => Some(Kind::SnpReport),
            "tdx" => Some(Kind::TdxQuote),
            "hcl" => Some(Kind::HclReport),
            "eventlog" => Some(Kind::EventLog),
            "cert" | "x509" | "pem" | "der" => Some(Kind::Certificate),
            _ => None,
        };
        short
            .or_else(|| Kind::ALL.into_iter().find(|k| k.name() == normalized))
            .ok_or_else(|| {
                let names: Vec<&str> = Kind::ALL.iter().map(|k| k.name()).collect();
                FormatError::invalid(
                    "kind",
                    format!("unknown kind {s:?}; expected one of {}", names.join(", ")),
                )
            })
    }
}

/// Guesses what `bytes` are, from magic numbers and shapes:
///
/// * a JSON object with `tee-evidence`: an evidence document;
/// * `HCLA` at offset 0: an HCL report;
/// * big-endian 0xff544347 at offset 0: a `TPMS_ATTEST`;
/// * a little-endian `u16` version 4 or 5 then TEE type 0x81 at offset 4: a TDX quote;
/// * exactly 1184 bytes starting with version 2 to 5: an SNP report;
/// * PEM `-----BEGIN CERTIFICATE-----`, or DER that parses as one X.509 certificate;
/// * a first record that is a Spec ID Event03: a CCEL when SHA-384 is the only bank (TDX
///   logs use nothing else; TPM logs practically always have SHA-256), else a TPM event log;
/// * anything that parses completely as a legacy SHA-1 event log: an event log.
///
/// A `TPMT_SIGNATURE` has no distinguishing mark and is never guessed.
pub fn detect(bytes: &[u8]) -> Option<Kind> {
    // Zeros parse as legacy SHA-1 event records of type 0; they are no artefact.
    if bytes.iter().all(|b| *b == 0) {
        return None;
    }
    if evidence_document(bytes).is_some() {
        return Some(Kind::Evidence);
    }
    if bytes.starts_with(hcl::SIGNATURE) {
        return Some(Kind::HclReport);
    }
    if bytes.starts_with(&tpm::TPM_GENERATED_VALUE.to_be_bytes()) {
        return Some(Kind::TpmsAttest);
    }
    if let (Some(version), Some(tee_type)) = (bytes.get(..2), bytes.get(4..8)) {
        let is_v4_or_v5 = version == [4, 0] || version == [5, 0];
        if is_v4_or_v5 && tee_type == tdx::TEE_TYPE_TDX.to_le_bytes() {
            return Some(Kind::TdxQuote);
        }
    }
    if bytes.len() == snp::REPORT_SIZE {
        let version = bytes
            .get(..4)
            .and_then(|v| <[u8; 4]>::try_from(v).ok())
            .map(u32::from_le_bytes);
        if version.is_some_and(|v| (snp::MIN_VERSION..=snp::MAX_VERSION).contains(&v)) {
            return Some(Kind::SnpReport);
        }
    }
    if bytes.starts_with(b"-----BEGIN CERTIFICATE-----")
        || (bytes.starts_with(&[0x30, 0x82]) && attest_verify::x509::from_der(bytes).is_ok())
    {
        return Some(Kind::Certificate);
    }
    if let Some(spec) = eventlog::spec_id_of(bytes) {
        let only_sha384 = spec.algorithms.iter().all(|a| a.alg == HashAlg::Sha384);
        return Some(if only_sha384 {
            Kind::Ccel
        } else {
            Kind::EventLog
        });
    }
    if eventlog::parse_event_log(bytes).is_ok() {
        return Some(Kind::EventLog);
    }
    None
}

/// Parses `bytes` as `kind` (or as what [`detect`] finds) and describes it as JSON.
pub fn inspect(bytes: &[u8], kind: Option<Kind>) -> Result<Value, FormatError> {
    let kind = match kind {
        Some(kind) => kind,
        None => detect(bytes).ok_or_else(|| unrecognised(bytes.len()))?,
    };
    let mut value = match kind {
        Kind::SnpReport => snp_json(&snp::parse_report(bytes)?),
        Kind::TdxQuote => {
            let (quote, rest) = tdx::parse_quote_prefix(bytes)?;
            let mut v = tdx_quote_json(&quote);
            insert(&mut v, "trailing_bytes", json!(rest.len()));
            insert(
                &mut v,
                "trailing_bytes_all_zero",
                json!(rest.iter().all(|&b| b == 0)),
            );
            v
        }
        Kind::HclReport => hcl_json(&hcl::parse_hcl_report(bytes)?),
        Kind::TpmsAttest => tpms_attest_json(&tpm::parse_tpms_attest(bytes)?),
        Kind::TpmtSignature => tpmt_signature_json(&tpm::parse_tpmt_signature(bytes)?),
        Kind::EventLog => event_log_json(&eventlog::parse_event_log(bytes)?),
        Kind::Ccel => ccel_json(&eventlog::parse_ccel(bytes)?),
        Kind::Evidence => evidence_document(bytes).ok_or_else(|| {
            FormatError::invalid(
                "evidence",
                "not a JSON object with tee-evidence".to_string(),
            )
        })?,
        Kind::Certificate => {
            let certs = attest_verify::certs::parse_any(bytes)
                .map_err(|e| FormatError::invalid("certificate", format!("{e:#}")))?;
            let list: Vec<Value> = certs.iter().map(attest_verify::certs::describe).collect();
            json!({ "certificates": list })
        }
    };
    insert(&mut value, "kind", json!(kind.name()));
    Ok(value)
}

/// An evidence document: a JSON object with a `tee-evidence` member.
pub fn evidence_document(bytes: &[u8]) -> Option<Value> {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace())?;
    if *first != b'{' {
        return None;
    }
    let v: Value = serde_json::from_slice(bytes).ok()?;
    v.get("tee-evidence").is_some().then_some(v)
}

/// The error for bytes [`detect`] does not recognise.
pub fn unrecognised(len: usize) -> FormatError {
    FormatError::invalid(
        "input",
        format!("{len} bytes in no recognised format; name the kind explicitly"),
    )
}

fn insert(value: &mut Value, key: &str, v: Value) {
    if let Value::Object(map) = value {
        map.insert(key.to_owned(), v);
    }
}

fn hex(bytes: &[u8]) -> Value {
    Value::String(hex::encode(bytes))
}

fn hex_u64(v: u64) -> Value {
    Value::String(format!("{v:#018x}"))
}

fn snp_json(r: &SnpReport) -> Value {
    let signing_key = match r.signing_key() {
        SigningKey::Vcek => "vcek".to_owned(),
        SigningKey::Vlek => "vlek".to_owned(),
        SigningKey::None => "none".to_owned(),
        SigningKey::Reserved(v) => format!("reserved_{v}"),
    };
    let cpuid = r.cpuid.map_or(Value::Null, |c| {
        json!({
            "family": format!("{:#04x}", c.family),
            "model": format!("{:#04x}", c.model),
            "stepping": format!("{:#04x}", c.stepping),
            "generation": format!("{:?}", c.generation()).to_ascii_lowercase(),
        })
    });
    let signature = match (r.signature.r_p384_be(), r.signature.s_p384_be()) {
        (Some(sr), Some(ss)) => json!({ "r": hex(&sr), "s": hex(&ss) }),
        _ => json!({ "r_le": hex(&r.signature.r), "s_le": hex(&r.signature.s) }),
    };
    let version =
        |v: snp::FirmwareVersion| json!({ "major": v.major, "minor": v.minor, "build": v.build });
    let mut v = json!({
        "version": r.version,
        "guest_svn": r.guest_svn,
        "policy": {
            "raw": hex_u64(r.policy.0),
            "abi_major": r.policy.abi_major(),
            "abi_minor": r.policy.abi_minor(),
            "smt_allowed": r.policy.smt_allowed(),
            "migrate_ma": r.policy.migrate_ma(),
            "debug_allowed": r.policy.debug_allowed(),
            "single_socket": r.policy.single_socket(),
        },
        "family_id": hex(&r.family_id),
        "image_id": hex(&r.image_id),
        "vmpl": r.vmpl,
        "sig_algo": r.sig_algo,
        "platform_info": hex_u64(r.platform_info),
        "signing_key": signing_key,
        "author_key_en": r.author_key_en(),
        "mask_chip_key": r.mask_chip_key(),
        "report_data": hex(&r.report_data),
        "measurement": hex(&r.measurement),
        "host_data": hex(&r.host_data),
        "id_key_digest": hex(&r.id_key_digest),
        "author_key_digest": hex(&r.author_key_digest),
        "report_id": hex(&r.report_id),
        "report_id_ma": hex(&r.report_id_ma),
        "cpuid": cpuid,
        "chip_id": hex(&r.chip_id),
        "tcb_layout": match r.current_tcb.layout {
            TcbLayout::PreTurin => "pre_turin",
            TcbLayout::Turin => "turin",
        },
        "current_tcb": tcb_json(&r.current_tcb),
        "reported_tcb": tcb_json(&r.reported_tcb),
        "committed_tcb": tcb_json(&r.committed_tcb),
        "launch_tcb": tcb_json(&r.launch_tcb),
        "current_version": version(r.current_version),
        "committed_version": version(r.committed_version),
        "signature": signature,
    });
    if let (Some(launch), Some(current)) = (r.launch_mit_vector, r.current_mit_vector) {
        insert(&mut v, "launch_mit_vector", hex_u64(launch));
        insert(&mut v, "current_mit_vector", hex_u64(current));
    }
    v
}

fn tcb_json(t: &Tcb) -> Value {
    let mut v = json!({
        "raw": hex_u64(t.raw),
        "bootloader": t.bootloader,
        "tee": t.tee,
        "snp": t.snp,
        "microcode": t.microcode,
    });
    if let Some(fmc) = t.fmc {
        insert(&mut v, "fmc", json!(fmc));
    }
    v
}

fn tdx_quote_json(q: &TdxQuote) -> Value {
    let b = &q.body;
    let mut body = json!({
        "tee_tcb_svn": hex(&b.tee_tcb_svn),
        "mr_seam": hex(&b.mr_seam),
        "mr_signer_seam": hex(&b.mr_signer_seam),
        "seam_attributes": hex(&b.seam_attributes),
        "td_attributes": hex(&b.td_attributes),
        "debug": b.debug(),
        "xfam": hex(&b.xfam),
        "mr_td": hex(&b.mr_td),
        "mr_config_id": hex(&b.mr_config_id),
        "mr_owner": hex(&b.mr_owner),
        "mr_owner_config": hex(&b.mr_owner_config),
        "report_data": hex(&b.report_data),
    });
    for (i, rtmr) in b.rtmrs.iter().enumerate() {
        insert(&mut body, &format!("rtmr{i}"), hex(rtmr));
    }
    if let Some(svn2) = &b.tee_tcb_svn2 {
        insert(&mut body, "tee_tcb_svn2", hex(svn2));
    }
    if let Some(servicetd) = &b.mr_servicetd {
        insert(&mut body, "mr_servicetd", hex(servicetd));
    }
    json!({
        "header": {
            "version": q.header.version,
            "att_key_type": q.header.att_key_type,
            "tee_type": format!("{:#x}", q.header.tee_type),
            "qe_vendor_id": hex(&q.header.qe_vendor_id),
            "user_data": hex(&q.header.user_data),
        },
        "body_type": q.body_type,
        "body": body,
        "signed_length": q.signed_bytes.len(),
        "signature_data": {
            "length": q.signature.length,
            "signature": hex(&q.signature.signature),
            "attestation_key": hex(&q.signature.attestation_key),
            "certification": certification_json(&q.signature.certification),
        },
    })
}

fn certification_json(c: &CertificationData) -> Value {
    match c {
        CertificationData::QeReport(qe) => {
            let r = &qe.qe_report;
            json!({
                "type": c.cert_type(),
                "qe_report": {
                    "cpu_svn": hex(&r.cpu_svn),
                    "misc_select": r.misc_select,
                    "attributes": hex(&r.attributes),
                    "mr_enclave": hex(&r.mr_enclave),
                    "mr_signer": hex(&r.mr_signer),
                    "isv_prod_id": r.isv_prod_id,
                    "isv_svn": r.isv_svn,
                    "report_data": hex(&r.report_data),
                },
                "qe_report_signature": hex(&qe.qe_report_signature),
                "qe_auth_data": hex(&qe.qe_auth_data),
                "certification": certification_json(&qe.certification),
            })
        }
        CertificationData::PckChain(pem) => {
            let text = String::from_utf8_lossy(pem);
            json!({
                "type": c.cert_type(),
                "pem_bytes": pem.len(),
                "certificates": text.matches("-----BEGIN CERTIFICATE-----").count(),
            })
        }
        CertificationData::Other { cert_type, data } => json!({
            "type": cert_type,
            "size": data.len(),
        }),
    }
}

fn td_report_json(r: &TdReport) -> Value {
    let mut v = json!({
        "report_type": hex(&r.report_type),
        "cpu_svn": hex(&r.cpu_svn),
        "tee_tcb_info_hash": hex(&r.tee_tcb_info_hash),
        "tee_info_hash": hex(&r.tee_info_hash),
        "report_data": hex(&r.report_data),
        "mac": hex(&r.mac),
        "tcb_valid": hex(&r.tcb_valid),
        "tee_tcb_svn": hex(&r.tee_tcb_svn),
        "mr_seam": hex(&r.mr_seam),
        "mr_signer_seam": hex(&r.mr_signer_seam),
        "seam_attributes": hex(&r.seam_attributes),
        "td_attributes": hex(&r.td_attributes),
        "xfam": hex(&r.xfam),
        "mr_td": hex(&r.mr_td),
        "mr_config_id": hex(&r.mr_config_id),
        "mr_owner": hex(&r.mr_owner),
        "mr_owner_config": hex(&r.mr_owner_config),
        "servtd_hash": hex(&r.servtd_hash),
    });
    for (i, rtmr) in r.rtmrs.iter().enumerate() {
        insert(&mut v, &format!("rtmr{i}"), hex(rtmr));
    }
    v
}

fn hcl_json(h: &HclReport) -> Value {
    let (hw_type, hw) = match &h.hw_report {
        HwReport::Snp(r) => ("snp", snp_json(r)),
        HwReport::Tdx(r) => ("tdx", td_report_json(r)),
    };
    json!({
        "header": {
            "version": h.header.version,
            "report_size": h.header.report_size,
            "request_type": h.header.request_type,
            "status": h.header.status,
        },
        "request_data": {
            "data_size": h.request.data_size,
            "version": h.request.version,
            "report_type": h.request.report_type,
            "hash_type": h.request.hash_type.name(),
            "variable_data_size": h.request.variable_data_size,
        },
        "hw_report_type": hw_type,
        "hw_report": hw,
        "var_data_hash": hex(&h.var_data_hash()),
        "var_data_hash_matches": h.var_data_hash_matches(),
        "ak_pub_present": h.ak_pub().is_some(),
        "runtime_claims": h.runtime_claims.clone(),
        "padding_bytes": h.padding,
    })
}

fn tpms_attest_json(a: &TpmsAttest) -> Value {
    let selection: Vec<Value> = a
        .quote
        .pcr_select
        .iter()
        .map(|s| json!({ "hash": s.hash.name(), "pcrs": s.pcrs() }))
        .collect();
    json!({
        "type": "quote",
        "qualified_signer": hex(&a.qualified_signer),
        "extra_data": hex(&a.extra_data),
        "clock": a.clock_info.clock,
        "reset_count": a.clock_info.reset_count,
        "restart_count": a.clock_info.restart_count,
        "safe": a.clock_info.safe,
        "firmware_version": hex_u64(a.firmware_version),
        "pcr_selection": selection,
        "pcr_digest": hex(&a.quote.pcr_digest),
    })
}

fn tpmt_signature_json(s: &TpmtSignature) -> Value {
    let mut v = json!({ "scheme": s.scheme(), "hash": s.hash().name() });
    match s {
        TpmtSignature::RsaSsa { signature, .. } | TpmtSignature::RsaPss { signature, .. } => {
            insert(&mut v, "signature", hex(signature));
        }
        TpmtSignature::Ecdsa { r, s, .. } => {
            insert(&mut v, "r", hex(r));
            insert(&mut v, "s", hex(s));
        }
    }
    v
}

fn spec_id_json(spec: &Option<SpecIdEvent>) -> Value {
    spec.as_ref().map_or(Value::Null, |s| {
        let algorithms: Vec<Value> = s
            .algorithms
            .iter()
            .map(|a| json!({ "algorithm": a.alg.name(), "digest_size": a.digest_size }))
            .collect();
        json!({
            "platform_class": s.platform_class,
            "spec_version": format!(
                "{}.{} errata {}",
                s.spec_version_major, s.spec_version_minor, s.spec_errata
            ),
            "uintn_size": s.uintn_size,
            "algorithms": algorithms,
            "vendor_info": String::from_utf8_lossy(&s.vendor_info)
                .trim_end_matches('\0')
                .to_owned(),
        })
    })
}

fn event_type_json(event_type: u32) -> Value {
    match eventlog::event_type_name(event_type) {
        Some(name) => json!(name),
        None => json!(format!("{event_type:#010x}")),
    }
}

/// One event, whole: its register (`pcr` or `mr_index`), type, digests, its data as hex, its
/// text, and the EFI variable it measured.
fn event_json(number: usize, register: &str, e: &Event) -> Value {
    let variable = eventlog::is_efi_variable_event(e.event_type)
        .then(|| eventlog::efi_variable(&e.data))
        .flatten();
    let mut v = json!({
        "number": number,
        "type": event_type_json(e.event_type),
        "data_size": e.data.len(),
        "data": hex(&e.data),
        "text": variable
            .as_ref()
            .map_or_else(|| json!(event_text(e)), |var| Value::String(var.name.clone())),
        "digests": digests_json(e),
    });
    v[register] = json!(e.index);
    if let Some(var) = variable {
        let value = e
            .data
            .get(e.data.len().saturating_sub(var.value_len)..)
            .unwrap_or_default();
        v["efi_variable"] = json!({
            "guid": var.guid,
            "name": var.name,
            "value_size": var.value_len,
        });
        if let Some(text) = boot_variable(&var.name, value, &mut v) {
            v["text"] = Value::String(text);
        }
    }
    if matches!(e.event_type, 0x8000_0003..=0x8000_0005) {
        // EV_EFI_BOOT_SERVICES_APPLICATION, _DRIVER, EV_EFI_RUNTIME_SERVICES_DRIVER.
        match devpath::image_load(&e.data) {
            Ok(i) => {
                v["text"] = Value::String(i.device_path.clone());
                v["image_load"] = json!({
                    "location": hex_u64(i.location),
                    "length": i.length,
                    "link_time_address": hex_u64(i.link_time_address),
                    "device_path": i.device_path,
                });
                if !i.trailing.is_empty() {
                    v["image_load"]["trailing_data"] = hex(&i.trailing);
                }
            }
            Err(err) => v["image_load"] = json!({"error": err.to_string()}),
        }
    }
    v
}

/// A boot variable's value decoded (`BootOrder`, `Boot####`, `BootCurrent`, `BootNext`) into
/// `v`; returns the event's text.
fn boot_variable(name: &str, value: &[u8], v: &mut Value) -> Option<String> {
    let u16s = || -> Vec<String> {
        value
            .chunks_exact(2)
            .map(|c| format!("Boot{:04X}", u16::from_le_bytes([c[0], c[1]])))
            .collect()
    };
    match name {
        "BootOrder" => {
            let order = u16s();
            v["boot_order"] = json!(order);
            Some(format!("BootOrder: {}", order.join(",")))
        }
        "BootCurrent" | "BootNext" => Some(format!("{name}: {}", u16s().join(","))),
        _ if name.len() == 8
            && name.starts_with("Boot")
            && name[4..].chars().all(|c| c.is_ascii_hexdigit()) =>
        {
            match devpath::load_option(value) {
                Ok(o) => {
                    let text = format!("{name}: {} {}", o.description, o.device_path);
                    v["load_option"] = json!({
                        "attributes": hex_u64(u64::from(o.attributes)),
                        "description": o.description,
                        "device_path": o.device_path,
                        "optional_data": hex(&o.optional_data),
                    });
                    Some(text)
                }
                Err(err) => {
                    v["load_option"] = json!({"error": err.to_string()});
                    None
                }
            }
        }
        _ => None,
    }
}

/// The whole readable form of the data of events that carry text (a firmware version, an
/// action, a boot loader line, an `EV_NO_ACTION` signature), control characters shown as
/// `.`; `None` for binary events.
pub(crate) fn event_text(e: &Event) -> Option<String> {
    const EV_POST_CODE: u32 = 0x1;
    const EV_ACTION: u32 = 0x5;
    const EV_S_CRTM_VERSION: u32 = 0x8;
    const EV_IPL: u32 = 0xD;
    const EV_EFI_ACTION: u32 = 0x8000_0007;
    let data = e.data.as_slice();
    let text = match e.event_type {
        // Firmware writes the S-CRTM version as UCS-2 (UTF-16LE), some as ASCII.
        EV_S_CRTM_VERSION if data.len().is_multiple_of(2) && data.get(1) == Some(&0) => {
            let units: Vec<u16> = data
                .chunks_exact(2)
                .map(|c| {
                    u16::from_le_bytes([
                        c.first().copied().unwrap_or(0),
                        c.get(1).copied().unwrap_or(0),
                    ])
                })
                .collect();
            String::from_utf16_lossy(&units)
        }
        eventlog::EV_NO_ACTION => {
            String::from_utf8_lossy(data.get(..16).unwrap_or(data)).into_owned()
        }
        EV_POST_CODE | EV_ACTION | EV_S_CRTM_VERSION | EV_IPL | EV_EFI_ACTION => {
            String::from_utf8_lossy(data).into_owned()
        }
        _ => return None,
    };
    Some(
        text.trim_end_matches('\0')
            .chars()
            .map(|c| if c.is_control() { '.' } else { c })
            .collect(),
    )
}

fn digests_json(e: &Event) -> Value {
    let map: Map<String, Value> = e
        .digests
        .iter()
        .map(|d| (d.alg.name(), hex(&d.value)))
        .collect();
    Value::Object(map)
}

fn event_log_json(log: &EventLog) -> Value {
    let banks: Vec<Value> = log
        .replay()
        .into_iter()
        .map(|bank| {
            let pcrs: Vec<Value> = bank
                .pcrs
                .iter()
                .map(|(index, value)| json!({ "pcr": index, "value": hex(value) }))
                .collect();
            json!({
                "algorithm": bank.alg.name(),
                "digest_size": bank.digest_size,
                "replayed": bank.replayed,
                "extend_count": bank.extend_count,
                "pcrs": pcrs,
            })
        })
        .collect();
    let events: Vec<Value> = log
        .events
        .iter()
        .enumerate()
        .map(|(number, e)| event_json(number, "pcr", e))
        .collect();
    json!({
        "format": match log.format {
            LogFormat::Sha1Legacy => "sha1_legacy",
            LogFormat::CryptoAgile => "crypto_agile",
        },
        "record_count": log.events.len(),
        "spec_id": spec_id_json(&log.spec_id),
        "startup_locality": log.startup_locality,
        "banks": banks,
        "events": events,
    })
}

fn ccel_json(c: &CcelLog) -> Value {
    let counts = c.extend_counts();
    let rtmrs: Vec<Value> = c
        .rtmrs()
        .iter()
        .zip(counts)
        .enumerate()
        .map(|(i, (value, count))| {
            json!({ "rtmr": i, "mr_index": i + 1, "extend_count": count, "value": hex(value) })
        })
        .collect();
    let events: Vec<Value> = c
        .log
        .events
        .iter()
        .enumerate()
        .map(|(number, e)| event_json(number, "mr_index", e))
        .collect();
    json!({
        "record_count": c.log.events.len(),
        "log_end": c.log_end,
        "padding_bytes": c.padding,
        "spec_id": spec_id_json(&c.log.spec_id),
        "rtmrs": rtmrs,
        "events": events,
    })
}

/// Renders the JSON of [`inspect`] as indented `key  value` lines, with arrays of flat
/// records as tables. `kind` comes first; other keys keep the JSON order.
pub fn render_text(v: &Value) -> String {
    let mut out = String::new();
    match v {
        Value::Object(map) => render_object(&mut out, map, 0),
        other => out.push_str(&scalar_text(other)),
    }
    out
}

/// The longest table cell shown in the text output; longer ones are cut, and the output says
/// so.
const MAX_CELL: usize = 64;

/// The longest line of scalars joined on one line before they go one per line.
const MAX_INLINE: usize = 100;

fn is_scalar(v: &Value) -> bool {
    !matches!(v, Value::Object(_) | Value::Array(_))
}

fn scalar_text(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn render_object(out: &mut String, map: &Map<String, Value>, indent: usize) {
    let pad = " ".repeat(indent);
    let mut keys: Vec<&String> = map.keys().collect();
    // Sorted, whatever order the map keeps (serde_json's preserve_order may be on when another
    // crate in the build enables it), then what the blob is before what it says.
    keys.sort();
    keys.sort_by_key(|k| k.as_str() != "kind");
    let width = keys.iter().map(|k| k.len()).max().unwrap_or(0);
    for key in keys {
        let Some(value) = map.get(key) else {
            continue;
        };
        match value {
            Value::Object(inner) if inner.is_empty() => {
                let _ = writeln!(out, "{pad}{key:<width$}  (empty)");
            }
            Value::Object(inner) => {
                let _ = writeln!(out, "{pad}{key}:");
                render_object(out, inner, indent + 2);
            }
            Value::Array(items) if items.is_empty() => {
                let _ = writeln!(out, "{pad}{key:<width$}  (none)");
            }
            Value::Array(items) if items.iter().all(is_scalar) => {
                let joined: Vec<String> = items.iter().map(scalar_text).collect();
                let line = joined.join(", ");
                if line.len() <= MAX_INLINE {
                    let _ = writeln!(out, "{pad}{key:<width$}  {line}");
                } else {
                    let _ = writeln!(out, "{pad}{key}:");
                    for item in joined {
                        let _ = writeln!(out, "{pad}  {item}");
                    }
                }
            }
            Value::Array(items) => {
                let _ = writeln!(out, "{pad}{key}:");
                render_array(out, items, indent + 2);
            }
            scalar => {
                let _ = writeln!(out, "{pad}{key:<width$}  {}", scalar_text(scalar));
            }
        }
    }
}

/// An array with at least one object or array in it. Objects whose members are scalars (or
/// objects, which are left out and named in a note) become one table; anything holding a
/// nested array is shown as numbered blocks instead.
fn render_array(out: &mut String, items: &[Value], indent: usize) {
    let pad = " ".repeat(indent);
    let rows: Vec<&Map<String, Value>> = items.iter().filter_map(Value::as_object).collect();
    let tabular = rows.len() == items.len()
        && rows
            .iter()
            .all(|row| row.values().all(|v| !matches!(v, Value::Array(_))));
    if !tabular {
        for (i, item) in items.iter().enumerate() {
            match item {
                Value::Object(map) => {
                    let _ = writeln!(out, "{pad}[{i}]");
                    render_object(out, map, indent + 2);
                }
                Value::Array(inner) => {
                    let _ = writeln!(out, "{pad}[{i}]");
                    render_array(out, inner, indent + 2);
                }
                scalar => {
                    let _ = writeln!(out, "{pad}[{i}] {}", scalar_text(scalar));
                }
            }
        }
        return;
    }

    let mut columns: Vec<&String> = Vec::new();
    let mut omitted: Vec<&String> = Vec::new();
    for row in &rows {
        for (key, value) in row.iter() {
            let list = if is_scalar(value) {
                &mut columns
            } else {
                &mut omitted
            };
            if !list.contains(&key) {
                list.push(key);
            }
        }
    }
    // Alphabetical, as without preserve_order.
    columns.sort();
    omitted.sort();
    let mut cut = false;
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            columns
                .iter()
                .map(|c| {
                    let text = row.get(*c).map(scalar_text).unwrap_or_default();
                    if text.chars().count() > MAX_CELL {
                        cut = true;
                        let mut short: String = text.chars().take(MAX_CELL).collect();
                        short.push('…');
                        short
                    } else {
                        text
                    }
                })
                .collect()
        })
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            cells
                .iter()
                .filter_map(|row| row.get(i).map(String::len))
                .chain([c.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<&str>| -> String {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        format!("{pad}{}", parts.join("  ").trim_end())
    };
    let _ = writeln!(
        out,
        "{}",
        line(columns.iter().map(|c| c.as_str()).collect())
    );
    for row in &cells {
        let _ = writeln!(out, "{}", line(row.iter().map(String::as_str).collect()));
    }
    if cut {
        let _ = writeln!(
            out,
            "{pad}(values over {MAX_CELL} characters are cut here; the JSON has them whole)"
        );
    }
    if !omitted.is_empty() {
        let names: Vec<&str> = omitted.iter().map(|s| s.as_str()).collect();
        let _ = writeln!(
            out,
            "{pad}(not shown here: {}; see the JSON)",
            names.join(", ")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_names_round_trip() {
        for kind in Kind::ALL {
            assert_eq!(kind.name().parse::<Kind>().unwrap(), kind);
            assert_eq!(kind.name().replace('_', "-").parse::<Kind>().unwrap(), kind);
        }
        assert_eq!("snp".parse::<Kind>().unwrap(), Kind::SnpReport);
        assert!("pdf".parse::<Kind>().is_err());
    }

    #[test]
    fn unknown_input_is_an_error() {
        assert!(matches!(
            inspect(b"hello", None),
            Err(FormatError::Invalid { what: "input", .. })
        ));
        assert!(inspect(&[], None).is_err());
    }

    #[test]
    fn renders_nested_values_and_tables() {
        let v = json!({
            "z": 1,
            "kind": "x",
            "list": [1, 2],
            "rows": [{"a": 1, "b": "xx", "d": {"n": 1}}, {"a": 22, "b": null}],
            "blocks": [{"name": "n", "items": [1]}],
            "obj": {"inner": true},
        });
        let text = render_text(&v);
        assert!(text.starts_with("kind"), "{text}");
        assert!(text.contains("list    1, 2"), "{text}");
        assert!(text.contains("  a   b\n"), "{text}");
        assert!(text.contains("  22  -\n"), "{text}");
        assert!(text.contains("(not shown here: d; see the JSON)"), "{text}");
        assert!(text.contains("  [0]\n    items  1\n"), "{text}");
        assert!(text.contains("obj:\n  inner  true\n"), "{text}");
    }
}
