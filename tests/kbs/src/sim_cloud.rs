//! Simulated cloud vTPM material for tests: what an Azure paravisor (HCL) writes to vTPM NV
//! 0x01400001, what Azure IMDS answers, and a GCE-style AK certificate authority.
//!
//! - [`snp_hcl_report`] / [`tdx_hcl_report`]: an HCL report (header, hardware report, IGVM
//!   request data, runtime claims) whose runtime claims carry a given vTPM AK as `HCLAkPub`
//!   and given user data, and whose hardware report's report data is SHA-256 of those claims:
//!   an SNP report signed by a [`SnpSigner`], or a TDREPORT that [`td_quote_for`] turns into a
//!   quote signed by a [`TdxSigner`] (what IMDS `/acc/tdquote` does on Azure).
//! - [`GceCa`]: root -> intermediate -> AK certificate, as Google's EK/AK CA issues them.
//! - [`qgs_answer`]: what Intel's TDX quote generation service sends back over vsock for a
//!   `GET_QUOTE_REQ` (`qgs_msg_lib` 1.1 messages behind a 4-byte big-endian length, as QEMU's
//!   `hw/i386/tdx-quote-generator.c` frames them), written here from that layout and not
//!   from the agent's encoder.
//!
//! The layouts follow the real artefacts (kinvolk/azure-cvm-tooling `az-cvm-vtpm/src/hcl`,
//! the Azure samples in `shared/testdata/azure`); nothing here is used by the broker's
//! verification.

use anyhow::{anyhow, ensure, Context};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
    PublicKeyData,
};
use rsa::pkcs1::EncodeRsaPublicKey;
use rsa::pkcs8::DecodePublicKey;
use rsa::traits::PublicKeyParts;
use sha2::{Digest, Sha256};

use crate::sim::{SnpReportParams, SnpSigner, TdxQuoteParams, TdxSigner};

/// The HCL report header signature.
const HCL_SIGNATURE: &[u8; 4] = b"HCLA";
/// Header, then the 1184-byte hardware report slot.
const HW_SLOT_AT: usize = 32;
const HW_SLOT_LEN: usize = 1184;
/// IGVM request data, then the runtime claims.
const REQUEST_AT: usize = HW_SLOT_AT + HW_SLOT_LEN;
const VAR_DATA_AT: usize = REQUEST_AT + 20;
/// The size of the NV index the report is written to (swtpm's `TPM2_PT_NV_INDEX_MAX`; real
/// Azure vTPMs use a larger index, zero-padded the same way).
pub const HCL_NV_SIZE: usize = 2048;
/// Hardware report types of the IGVM request data.
const REPORT_TYPE_SNP: u32 = 2;
const REPORT_TYPE_TDX: u32 = 4;
/// The size of a TDREPORT.
pub const TD_REPORT_LEN: usize = 1024;

/// The `HCLAkPub` JWK of an RSA AK given as DER SubjectPublicKeyInfo.
pub fn ak_jwk(ak_spki_der: &[u8]) -> anyhow::Result<serde_json::Value> {
    let key = rsa::RsaPublicKey::from_public_key_der(ak_spki_der)
        .map_err(|e| anyhow!("AK is not an RSA SubjectPublicKeyInfo: {e}"))?;
    Ok(serde_json::json!({
        "kid": "HCLAkPub",
        "key_ops": ["sign"],
        "kty": "RSA",
        "e": URL_SAFE_NO_PAD.encode(key.e().to_bytes_be()),
        "n": URL_SAFE_NO_PAD.encode(key.n().to_bytes_be()),
    }))
}

/// The runtime claims (HCL variable data) the paravisor writes: the AK, a VM configuration
/// and the user data as uppercase hex, compact JSON as Azure's are.
pub fn runtime_claims(ak_spki_der: &[u8], user_data: &[u8; 64]) -> anyhow::Result<Vec<u8>> {
    let claims = serde_json::json!({
        "keys": [ak_jwk(ak_spki_der)?],
        "vm-configuration": {
            "secure-boot": true,
            "tpm-enabled": true,
            "vmUniqueId": "5EC0B1E5-0000-4000-8000-A77E57000001",
        },
        "user-data": hex::encode_upper(user_data),
    });
    Ok(serde_json::to_vec(&claims)?)
}

/// Assemble an HCL report around a hardware report, zero-padded to [`HCL_NV_SIZE`].
fn assemble(hw_report: &[u8], report_type: u32, var_data: &[u8]) -> anyhow::Result<Vec<u8>> {
    ensure!(hw_report.len() <= HW_SLOT_LEN, "hardware report too large");
    let report_size = VAR_DATA_AT + var_data.len();
    ensure!(
        report_size <= HCL_NV_SIZE,
        "HCL report of {report_size} bytes does not fit the {HCL_NV_SIZE}-byte NV index"
    );
    let u32le = |v: usize| u32::try_from(v).map(u32::to_le_bytes);
    let mut b = Vec::with_capacity(HCL_NV_SIZE);
    b.extend_from_slice(HCL_SIGNATURE);
    b.extend_from_slice(&2u32.to_le_bytes()); // header version
    b.extend_from_slice(&u32le(report_size)?);
    b.extend_from_slice(&2u32.to_le_bytes()); // request type: get attestation report
    b.extend_from_slice(&0u32.to_le_bytes()); // status
    b.extend_from_slice(&[0; 12]);
    let mut slot = [0u8; HW_SLOT_LEN];
    slot[..hw_report.len()].copy_from_slice(hw_report);
    b.extend_from_slice(&slot);
    b.extend_from_slice(&u32le(20 + var_data.len())?); // data size
    b.extend_from_slice(&1u32.to_le_bytes()); // version
    b.extend_from_slice(&report_type.to_le_bytes());
    b.extend_from_slice(&1u32.to_le_bytes()); // hash type: SHA-256
    b.extend_from_slice(&u32le(var_data.len())?);
    b.extend_from_slice(var_data);
    b.resize(HCL_NV_SIZE, 0);
    Ok(b)
}

/// The report data the paravisor asks the hardware for: SHA-256 of the runtime claims, then
/// 32 zero bytes.
pub fn claims_report_data(var_data: &[u8]) -> [u8; 64] {
    let mut rd = [0u8; 64];
    rd[..32].copy_from_slice(&Sha256::digest(var_data));
    rd
}

/// An HCL report of an SNP CVM: an SNP report by `signer` (at VMPL 0, as the paravisor's)
/// over SHA-256 of runtime claims naming `ak_spki_der` and `user_data`.
pub fn snp_hcl_report(
    signer: &SnpSigner,
    params: &SnpReportParams,
    ak_spki_der: &[u8],
    user_data: &[u8; 64],
) -> anyhow::Result<Vec<u8>> {
    let var = runtime_claims(ak_spki_der, user_data)?;
    let report = signer.report(params, &claims_report_data(&var));
    assemble(&report, REPORT_TYPE_SNP, &var)
}

/// A TDREPORT (`TDREPORT_STRUCT`) carrying `params`' measurements and `report_data`. Its MAC
/// is zero: only the TDX module could check it, and IMDS (here [`td_quote_for`]) trusts it.
pub fn td_report(params: &TdxQuoteParams, report_data: &[u8; 64]) -> [u8; TD_REPORT_LEN] {
    let mut r = [0u8; TD_REPORT_LEN];
    r[0] = 0x81; // REPORTTYPE: TDX
    r[128..192].copy_from_slice(report_data);
    r[512..520].copy_from_slice(&params.td_attributes);
    r[520..528].copy_from_slice(&[0xe7, 0x42, 0x06, 0, 0, 0, 0, 0]); // XFAM
    r[528..576].copy_from_slice(&params.mr_td);
    r[576..624].copy_from_slice(&params.mr_config_id);
    for (i, rtmr) in params.rtmrs.iter().enumerate() {
        r[720 + 48 * i..768 + 48 * i].copy_from_slice(rtmr);
    }
    r
}

/// An HCL report of a TDX CVM: a TDREPORT over SHA-256 of runtime claims naming
/// `ak_spki_der` and `user_data`.
pub fn tdx_hcl_report(
    params: &TdxQuoteParams,
    ak_spki_der: &[u8],
    user_data: &[u8; 64],
) -> anyhow::Result<Vec<u8>> {
    let var = runtime_claims(ak_spki_der, user_data)?;
    let report = td_report(params, &claims_report_data(&var));
    assemble(&report, REPORT_TYPE_TDX, &var)
}

/// What Azure IMDS `/acc/tdquote` returns for a TDREPORT: a quote by `signer` of the
/// report's measurements and report data.
pub fn td_quote_for(signer: &TdxSigner, td_report: &[u8]) -> anyhow::Result<Vec<u8>> {
    ensure!(
        td_report.len() == TD_REPORT_LEN && td_report[0] == 0x81,
        "not a TDREPORT ({} bytes)",
        td_report.len()
    );
    let array = |from: usize| -> anyhow::Result<[u8; 48]> {
        td_report[from..from + 48]
            .try_into()
            .context("TDREPORT field")
    };
    let mut params = TdxQuoteParams {
        mr_td: array(528)?,
        mr_config_id: array(576)?,
        ..TdxQuoteParams::default()
    };
    params.td_attributes.copy_from_slice(&td_report[512..520]);
    for i in 0..4 {
        params.rtmrs[i] = array(720 + 48 * i)?;
    }
    let report_data: [u8; 64] = td_report[128..192].try_into().context("REPORTDATA")?;
    Ok(signer.quote(&params, &report_data))
}

/// The quote generation service's reply to one framed `GET_QUOTE_REQ` (`request`: the
/// 4-byte big-endian length, then the message): a framed `GET_QUOTE_RESP` carrying
/// `signer`'s quote of the request's TDREPORT, or with `error_code` set and no quote when
/// `error_code` is not 0. A request not laid out as the service expects is an error.
pub fn qgs_answer(signer: &TdxSigner, request: &[u8], error_code: u32) -> anyhow::Result<Vec<u8>> {
    let u16_at = |at: usize| -> anyhow::Result<u16> {
        Ok(u16::from_le_bytes(
            request.get(at..at + 2).context("short")?.try_into()?,
        ))
    };
    let u32_at = |at: usize| -> anyhow::Result<u32> {
        Ok(u32::from_le_bytes(
            request.get(at..at + 4).context("short")?.try_into()?,
        ))
    };
    let prefix = u32::from_be_bytes(request.get(..4).context("no length")?.try_into()?);
    ensure!(
        prefix as usize + 4 == request.len(),
        "length prefix {prefix} for {} bytes",
        request.len() - 4
    );
    ensure!(
        (u16_at(4)?, u16_at(6)?) == (1, 1),
        "not a qgs_msg 1.1 message"
    );
    ensure!(u32_at(8)? == 0, "type {} is not GET_QUOTE_REQ", u32_at(8)?);
    ensure!(
        u32_at(12)? == prefix,
        "header size {} != {prefix}",
        u32_at(12)?
    );
    ensure!(u32_at(16)? == 0, "a request with an error code");
    ensure!(
        u32_at(20)? as usize == TD_REPORT_LEN,
        "report size {}",
        u32_at(20)?
    );
    ensure!(u32_at(24)? == 0, "an id list");
    let report = request.get(28..).context("no report")?;
    let quote = if error_code == 0 {
        td_quote_for(signer, report)?
    } else {
        Vec::new()
    };
    let size = u32::try_from(24 + quote.len())?;
    let mut out = Vec::with_capacity(4 + size as usize);
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&1u32.to_le_bytes()); // GET_QUOTE_RESP
    out.extend_from_slice(&size.to_le_bytes());
    out.extend_from_slice(&error_code.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes()); // selected_id_size
    out.extend_from_slice(&u32::try_from(quote.len())?.to_le_bytes());
    out.extend_from_slice(&quote);
    Ok(out)
}

/// A public key given by its DER SubjectPublicKeyInfo, for rcgen to certify.
struct ForeignRsaKey {
    pkcs1: Vec<u8>,
}

impl PublicKeyData for ForeignRsaKey {
    fn der_bytes(&self) -> &[u8] {
        &self.pkcs1
    }

    fn algorithm(&self) -> &rcgen::SignatureAlgorithm {
        &rcgen::PKCS_RSA_SHA256
    }
}

/// A GCE-style AK certificate authority: root -> intermediate -> AK certificates (ECDSA
/// P-256 for the CA keys; Google's are RSA, which the broker verifies too).
pub struct GceCa {
    root: rcgen::Certificate,
    intermediate: rcgen::Certificate,
    intermediate_key: KeyPair,
}

fn ca_params(common_name: &str) -> anyhow::Result<CertificateParams> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "attest-unlock test cloud");
    p.distinguished_name = dn;
    p.not_before = rcgen::date_time_ymd(2024, 1, 1);
    p.not_after = rcgen::date_time_ymd(2049, 12, 31);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(p)
}

impl GceCa {
    /// A fresh CA.
    pub fn new() -> anyhow::Result<GceCa> {
        let alg = &rcgen::PKCS_ECDSA_P256_SHA256;
        let root_key = KeyPair::generate_for(alg)?;
        let root = ca_params("tpm_ek_v1_cloud_host_root-signer (test)")?.self_signed(&root_key)?;
        let intermediate_key = KeyPair::generate_for(alg)?;
        let intermediate = ca_params("tpm_ek_v1_cloud_host-signer (test)")?.signed_by(
            &intermediate_key,
            &root,
            &root_key,
        )?;
        Ok(GceCa {
            root,
            intermediate,
            intermediate_key,
        })
    }

    /// The root (DER), for the broker's `GcePolicy::trusted_roots`.
    pub fn root_der(&self) -> Vec<u8> {
        self.root.der().to_vec()
    }

    /// The intermediate (DER), for the broker's `GcePolicy::intermediates`.
    pub fn intermediate_der(&self) -> Vec<u8> {
        self.intermediate.der().to_vec()
    }

    /// A certificate for the RSA AK `ak_spki_der`, with an empty subject as GCE's.
    pub fn issue_ak_cert(&self, ak_spki_der: &[u8]) -> anyhow::Result<Vec<u8>> {
        let key = rsa::RsaPublicKey::from_public_key_der(ak_spki_der)
            .map_err(|e| anyhow!("AK is not an RSA SubjectPublicKeyInfo: {e}"))?;
        let pkcs1 = key
            .to_pkcs1_der()
            .map_err(|e| anyhow!("AK: {e}"))?
            .as_bytes()
            .to_vec();
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.distinguished_name = DistinguishedName::new();
        p.not_before = rcgen::date_time_ymd(2024, 1, 1);
        p.not_after = rcgen::date_time_ymd(2049, 12, 31);
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let cert = p.signed_by(
            &ForeignRsaKey { pkcs1 },
            &self.intermediate,
            &self.intermediate_key,
        )?;
        Ok(cert.der().to_vec())
    }
}
