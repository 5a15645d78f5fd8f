//! Certificates as an operator reads them: subject, issuer, validity, key, and the vendor
//! extensions that tie a certificate to hardware: AMD's VCEK/VLEK (product, hwID, TCB SPLs,
//! CSP ID) and Intel's SGX PCK extension (PPID, TCB components, PCE SVN, CPU SVN, PCE ID,
//! FMSPC, SGX type).

use serde_json::{json, Map, Value};
use x509_cert::der::asn1::{Any, ObjectIdentifier};
use x509_cert::der::{Decode, Encode, Tag, Tagged};
use x509_cert::Certificate;

use crate::x509;

/// AMD's arc for VCEK/VLEK extensions (VCEK specification, "VCEK certificate extensions").
const AMD_ARC: &str = "1.3.6.1.4.1.3704.1.";
/// Intel's SGX extension (PCK certificate and CRL profile specification, section 1.5).
const INTEL_SGX: &str = "1.2.840.113741.1.13.1";

fn amd_name(suffix: &str) -> Option<&'static str> {
    Some(match suffix {
        "1" => "structVersion",
        "2" => "productName",
        "3.1" => "blSPL",
        "3.2" => "teeSPL",
        "3.3" => "snpSPL",
        "3.4" => "spl4",
        "3.5" => "spl5",
        "3.6" => "spl6",
        "3.7" => "spl7",
        "3.8" => "ucodeSPL",
        "3.9" => "fmcSPL",
        "4" => "hwID",
        "5" => "cspID",
        _ => return None,
    })
}

fn intel_name(suffix: &str) -> Option<String> {
    Some(match suffix {
        "1" => "PPID".into(),
        "2" => "TCB".into(),
        "2.17" => "PCESVN".into(),
        "2.18" => "CPUSVN".into(),
        "3" => "PCE-ID".into(),
        "4" => "FMSPC".into(),
        "5" => "SGXType".into(),
        "6" => "PlatformInstanceID".into(),
        "7" => "Configuration".into(),
        s => {
            let n: u8 = s.strip_prefix("2.")?.parse().ok()?;
            format!("SGXTCBComp{n:02}SVN")
        }
    })
}

/// A DER value as JSON: INTEGER and ENUMERATED as numbers (hex when wider than 64 bits),
/// strings as text, OCTET STRING as hex, anything else as the hex of its encoding.
fn der_json(any: &Any) -> Value {
    let bytes = any.value();
    match any.tag() {
        Tag::Integer | Tag::Enumerated if bytes.len() <= 8 => {
            let negative = bytes.first().is_some_and(|b| b & 0x80 != 0);
            if negative {
                return json!(hex::encode(bytes));
            }
            json!(bytes.iter().fold(0u64, |v, b| (v << 8) | u64::from(*b)))
        }
        Tag::Ia5String | Tag::Utf8String | Tag::PrintableString => {
            json!(String::from_utf8_lossy(bytes))
        }
        Tag::OctetString => json!(hex::encode(bytes)),
        Tag::Boolean => json!(bytes.first().is_some_and(|b| *b != 0)),
        _ => json!(hex::encode(any.to_der().unwrap_or_default())),
    }
}

/// Intel's SGX extension: a SEQUENCE of (OID, value) pairs, the TCB one nested.
fn intel_sgx(content: &[u8], out: &mut Map<String, Value>) -> Result<(), String> {
    let pairs = Vec::<Any>::from_der(content).map_err(|e| e.to_string())?;
    for pair in pairs {
        let fields = pair.decode_as::<Vec<Any>>().map_err(|e| e.to_string())?;
        let [oid, value] = fields.as_slice() else {
            return Err("an SGX extension entry is not (OID, value)".into());
        };
        let oid = oid
            .decode_as::<ObjectIdentifier>()
            .map_err(|e| e.to_string())?;
        let oid = oid.to_string();
        let suffix = oid
            .strip_prefix(INTEL_SGX)
            .and_then(|s| s.strip_prefix('.'));
        let name = suffix.and_then(intel_name).unwrap_or_else(|| oid.clone());
        if value.tag() == Tag::Sequence {
            let mut inner = Map::new();
            intel_sgx(&value.to_der().map_err(|e| e.to_string())?, &mut inner)?;
            out.insert(name, Value::Object(inner));
        } else {
            out.insert(name, der_json(value));
        }
    }
    Ok(())
}

/// What a certificate is, with its vendor extensions decoded.
pub fn describe(cert: &Certificate) -> Value {
    let tbs = &cert.tbs_certificate;
    let mut amd = Map::new();
    let mut intel = Map::new();
    let mut other = Vec::new();
    for ext in tbs.extensions.iter().flatten() {
        let oid = ext.extn_id.to_string();
        let content = ext.extn_value.as_bytes();
        if let Some(name) = oid.strip_prefix(AMD_ARC).and_then(amd_name) {
            // hwID is raw bytes; the others are DER values.
            let value = match Any::from_der(content) {
                Ok(any) if name != "hwID" => der_json(&any),
                _ => json!(hex::encode(content)),
            };
            amd.insert(name.to_string(), value);
        } else if oid == INTEL_SGX {
            if let Err(e) = intel_sgx(content, &mut intel) {
                intel.insert("error".into(), json!(format!("malformed: {e}")));
            }
        } else {
            other.push(json!(oid));
        }
    }
    let mut v = json!({
        "subject": x509::subject(cert),
        "issuer": tbs.issuer.to_string(),
        "serial": hex::encode(tbs.serial_number.as_bytes()),
        "not_before": tbs.validity.not_before.to_string(),
        "not_after": tbs.validity.not_after.to_string(),
        "self_issued": tbs.subject == tbs.issuer,
        "public_key": x509::key_description(cert),
        "signature_algorithm": x509::algorithm_name(&cert.signature_algorithm.oid),
    });
    if let Some(map) = v.as_object_mut() {
        if !amd.is_empty() {
            map.insert("amd".into(), Value::Object(amd));
        }
        if !intel.is_empty() {
            map.insert("intel_sgx".into(), Value::Object(intel));
        }
        if !other.is_empty() {
            map.insert("other_extensions".into(), Value::Array(other));
        }
    }
    v
}

/// Parses certificates: one DER certificate, or a PEM file of one or more.
pub fn parse_any(bytes: &[u8]) -> anyhow::Result<Vec<Certificate>> {
    if bytes.starts_with(b"-----BEGIN") || bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        x509::pem_chain(bytes)
    } else {
        Ok(vec![x509::from_der(bytes)?])
    }
}
