//! Simulated TEE hardware for tests: an SEV-SNP signer and a TDX quoting enclave that produce
//! reports and quotes in the exact binary layouts of the real ones, signed the way the real
//! ones are, under certificate chains the test makes (so the broker trusts them only when a
//! test configures their roots).
//!
//! - [`SnpSigner`]: an ARK -> ASK -> VCEK chain (ECDSA P-384; AMD's real chains are RSA-PSS,
//!   which the broker verifies too), the VCEK carrying AMD's hwID and TCB extensions, and
//!   1184-byte version 3 (Milan) reports signed with ECDSA P-384/SHA-384 over bytes
//!   `[0, 0x2A0)`, r and s little-endian in 72-byte fields at 0x2A0, as the AMD secure
//!   processor does.
//! - [`TdxSigner`]: a root -> platform CA -> PCK chain (ECDSA P-256), a QE report signed by
//!   the PCK key that binds an attestation key, and v4 quotes signed by that key over header
//!   and TD report body, with the chain in certification data type 6/5, as Intel's QE does.
//!
//! Nothing here is used by the broker's verification; it only makes evidence for tests.

use anyhow::anyhow;
use p256::pkcs8::DecodePrivateKey;
use rand_core::{OsRng, RngCore};
use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType, IsCa, KeyPair,
    KeyUsagePurpose,
};
use sev::firmware::host::{CertTableEntry, CertType};
use sha2::{Digest, Sha256};

use attest_verify::snp::{SnpTcb, REPORT_LEN, SIGNED_LEN};
use attest_verify::tdx::INTEL_QE_VENDOR_ID;

/// One certificate of a simulated chain.
struct Issued {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn params(common_name: &str, ca: bool) -> anyhow::Result<CertificateParams> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "attest-unlock test hardware");
    p.distinguished_name = dn;
    p.not_before = rcgen::date_time_ymd(2024, 1, 1);
    p.not_after = rcgen::date_time_ymd(2049, 12, 31);
    if ca {
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    } else {
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    }
    Ok(p)
}

fn issue(
    p: CertificateParams,
    alg: &'static rcgen::SignatureAlgorithm,
    issuer: Option<&Issued>,
) -> anyhow::Result<Issued> {
    let key = KeyPair::generate_for(alg)?;
    let cert = match issuer {
        Some(i) => p.signed_by(&key, &i.cert, &i.key)?,
        None => p.self_signed(&key)?,
    };
    Ok(Issued { cert, key })
}

/// A DER INTEGER holding a small value, as AMD's SPL extensions do.
fn der_u8(v: u8) -> Vec<u8> {
    if v >= 0x80 {
        vec![0x02, 0x02, 0x00, v]
    } else {
        vec![0x02, 0x01, v]
    }
}

/// The launch parameters of a simulated SNP guest.
#[derive(Clone, Debug)]
pub struct SnpReportParams {
    /// MEASUREMENT.
    pub measurement: [u8; 48],
    /// Guest POLICY (default 0x30000: SMT allowed, no debug).
    pub policy: u64,
    /// The VMPL the report is requested at.
    pub vmpl: u32,
    /// HOST_DATA.
    pub host_data: [u8; 32],
}

impl Default for SnpReportParams {
    fn default() -> Self {
        SnpReportParams {
            measurement: SIM_SNP_MEASUREMENT,
            policy: 0x30000,
            vmpl: 0,
            host_data: [0; 32],
        }
    }
}

/// The default measurement of a simulated SNP guest.
pub const SIM_SNP_MEASUREMENT: [u8; 48] = [0x5a; 48];

/// A simulated AMD secure processor with its VCEK and certificate chain.
pub struct SnpSigner {
    ark: Vec<u8>,
    ask: Vec<u8>,
    vcek: Vec<u8>,
    vcek_key: p384::ecdsa::SigningKey,
    chip_id: [u8; 64],
    tcb: SnpTcb,
}

impl SnpSigner {
    /// A new chip with a fresh ARK -> ASK -> VCEK chain, at TCB bl3/tee0/snp8/ucode115.
    pub fn new() -> anyhow::Result<SnpSigner> {
        let mut chip_id = [0u8; 64];
        OsRng.fill_bytes(&mut chip_id);
        let tcb = SnpTcb {
            bootloader: 3,
            tee: 0,
            snp: 8,
            microcode: 115,
        };
        let alg = &rcgen::PKCS_ECDSA_P384_SHA384;
        let ark = issue(params("ARK-Sim", true)?, alg, None)?;
        let ask = issue(params("SEV-Sim", true)?, alg, Some(&ark))?;
        let mut vcek_params = params("SEV-VCEK", false)?;
        let amd = |last: &[u64]| {
            let mut oid = vec![1, 3, 6, 1, 4, 1, 3704, 1];
            oid.extend_from_slice(last);
            oid
        };
        for (oid, value) in [
            (amd(&[3, 1]), der_u8(tcb.bootloader)),
            (amd(&[3, 2]), der_u8(tcb.tee)),
            (amd(&[3, 3]), der_u8(tcb.snp)),
            (amd(&[3, 8]), der_u8(tcb.microcode)),
            // hwID is the raw CHIP_ID, not DER-wrapped, as in AMD's VCEKs.
            (amd(&[4]), chip_id.to_vec()),
        ] {
            vcek_params
                .custom_extensions
                .push(CustomExtension::from_oid_content(&oid, value));
        }
        let vcek = issue(vcek_params, alg, Some(&ask))?;
        let vcek_key = p384::SecretKey::from_pkcs8_der(&vcek.key.serialize_der())
            .map_err(|e| anyhow!("VCEK key: {e}"))?
            .into();
        Ok(SnpSigner {
            ark: ark.cert.der().to_vec(),
            ask: ask.cert.der().to_vec(),
            vcek: vcek.cert.der().to_vec(),
            vcek_key,
            chip_id,
            tcb,
        })
    }

    /// The ARK (DER), to trust in the broker's `SnpPolicy::trusted_arks`.
    pub fn ark_der(&self) -> &[u8] {
        &self.ark
    }

    /// The ASK (DER).
    pub fn ask_der(&self) -> &[u8] {
        &self.ask
    }

    /// The VCEK (DER).
    pub fn vcek_der(&self) -> &[u8] {
        &self.vcek
    }

    /// The chip's CHIP_ID.
    pub fn chip_id(&self) -> [u8; 64] {
        self.chip_id
    }

    /// The TCB the chip reports (and its VCEK is for).
    pub fn tcb(&self) -> SnpTcb {
        self.tcb
    }

    /// The certificate table the host would provide (ARK, ASK, VCEK).
    pub fn cert_table(&self) -> Vec<CertTableEntry> {
        vec![
            CertTableEntry::new(CertType::ARK, self.ark.clone()),
            CertTableEntry::new(CertType::ASK, self.ask.clone()),
            CertTableEntry::new(CertType::VCEK, self.vcek.clone()),
        ]
    }

    /// The certificate table in the kernel's `auxblob` format: entries of {GUID, offset,
    /// length} ended by an all-zero entry, then the certificates.
    pub fn auxblob(&self) -> anyhow::Result<Vec<u8>> {
        CertTableEntry::cert_table_to_vec_bytes(&self.cert_table())
            .map_err(|e| anyhow!("certificate table: {e:?}"))
    }

    /// A signed 1184-byte report carrying `report_data`.
    pub fn report(&self, params: &SnpReportParams, report_data: &[u8; 64]) -> Vec<u8> {
        let mut r = vec![0u8; REPORT_LEN];
        let put = |r: &mut Vec<u8>, at: usize, bytes: &[u8]| {
            r[at..at + bytes.len()].copy_from_slice(bytes);
        };
        let tcb = {
            let mut t = [0u8; 8];
            t[0] = self.tcb.bootloader;
            t[1] = self.tcb.tee;
            t[6] = self.tcb.snp;
            t[7] = self.tcb.microcode;
            t
        };
        put(&mut r, 0x00, &3u32.to_le_bytes()); // VERSION
        put(&mut r, 0x04, &0u32.to_le_bytes()); // GUEST_SVN
        put(&mut r, 0x08, &params.policy.to_le_bytes());
        put(&mut r, 0x30, &params.vmpl.to_le_bytes());
        put(&mut r, 0x34, &1u32.to_le_bytes()); // SIGNATURE_ALGO: ECDSA P-384 SHA-384
        put(&mut r, 0x38, &tcb); // CURRENT_TCB
        put(&mut r, 0x40, &1u64.to_le_bytes()); // PLATFORM_INFO: SMT enabled
        put(&mut r, 0x48, &0u32.to_le_bytes()); // KEY_INFO: signed by the VCEK
        put(&mut r, 0x50, report_data);
        put(&mut r, 0x90, &params.measurement);
        put(&mut r, 0xC0, &params.host_data);
        let mut report_id = [0u8; 32];
        OsRng.fill_bytes(&mut report_id);
        put(&mut r, 0x140, &report_id);
        put(&mut r, 0x160, &[0xFF; 32]); // REPORT_ID_MA: no migration agent
        put(&mut r, 0x180, &tcb); // REPORTED_TCB
        put(&mut r, 0x188, &[0x19, 0x01, 0x01]); // CPUID family/model/stepping: Milan B1
        put(&mut r, 0x1A0, &self.chip_id);
        put(&mut r, 0x1E0, &tcb); // COMMITTED_TCB
        put(&mut r, 0x1E8, &[4, 52, 1]); // CURRENT_BUILD/MINOR/MAJOR: 1.52 build 4
        put(&mut r, 0x1EC, &[4, 52, 1]); // COMMITTED_BUILD/MINOR/MAJOR
        put(&mut r, 0x1F0, &tcb); // LAUNCH_TCB
        let signature: p384::ecdsa::Signature = {
            use p384::ecdsa::signature::Signer;
            self.vcek_key.sign(&r[..SIGNED_LEN])
        };
        let (sig_r, sig_s) = signature.split_bytes();
        for (i, b) in sig_r.iter().rev().enumerate() {
            r[SIGNED_LEN + i] = *b;
        }
        for (i, b) in sig_s.iter().rev().enumerate() {
            r[SIGNED_LEN + 72 + i] = *b;
        }
        r
    }
}

/// The TD measurements of a simulated TDX guest.
#[derive(Clone, Debug)]
pub struct TdxQuoteParams {
    /// MRTD.
    pub mr_td: [u8; 48],
    /// RTMR0-3.
    pub rtmrs: [[u8; 48]; 4],
    /// MRCONFIGID.
    pub mr_config_id: [u8; 48],
    /// TD_ATTRIBUTES (bit 0: DEBUG).
    pub td_attributes: [u8; 8],
}

/// The default MRTD of a simulated TDX guest.
pub const SIM_TDX_MR_TD: [u8; 48] = [0x7d; 48];

impl Default for TdxQuoteParams {
    fn default() -> Self {
        TdxQuoteParams {
            mr_td: SIM_TDX_MR_TD,
            rtmrs: [[0; 48]; 4],
            mr_config_id: [0; 48],
            // SEPT_VE_DISABLE, as real TDs usually run.
            td_attributes: [0, 0, 0, 0x10, 0, 0, 0, 0],
        }
    }
}

/// A simulated TDX platform: its PCK chain, its Quoting Enclave and attestation key.
pub struct TdxSigner {
    root: Vec<u8>,
    chain_pem: String,
    pck_key: p256::ecdsa::SigningKey,
    attestation_key: p256::ecdsa::SigningKey,
}

impl TdxSigner {
    /// A new platform with a fresh root -> platform CA -> PCK chain and attestation key.
    pub fn new() -> anyhow::Result<TdxSigner> {
        let alg = &rcgen::PKCS_ECDSA_P256_SHA256;
        let root = issue(params("Sim SGX Root CA", true)?, alg, None)?;
        let platform = issue(params("Sim SGX PCK Platform CA", true)?, alg, Some(&root))?;
        let pck = issue(
            params("Sim SGX PCK Certificate", false)?,
            alg,
            Some(&platform),
        )?;
        let pck_key = p256::SecretKey::from_pkcs8_der(&pck.key.serialize_der())
            .map_err(|e| anyhow!("PCK key: {e}"))?
            .into();
        let chain_pem = format!(
            "{}{}{}",
            pck.cert.pem(),
            platform.cert.pem(),
            root.cert.pem()
        );
        Ok(TdxSigner {
            root: root.cert.der().to_vec(),
            chain_pem,
            pck_key,
            attestation_key: p256::ecdsa::SigningKey::random(&mut OsRng),
        })
    }

    /// The root (DER), to trust in the broker's `TdxPolicy::trusted_roots`.
    pub fn root_der(&self) -> &[u8] {
        &self.root
    }

    /// A signed v4 quote carrying `report_data`.
    pub fn quote(&self, params: &TdxQuoteParams, report_data: &[u8; 64]) -> Vec<u8> {
        use p256::ecdsa::signature::Signer;
        let mut q = Vec::with_capacity(5000);
        // Header.
        q.extend_from_slice(&4u16.to_le_bytes()); // version
        q.extend_from_slice(&2u16.to_le_bytes()); // ECDSA-256-with-P-256
        q.extend_from_slice(&0x81u32.to_le_bytes()); // TDX
        q.extend_from_slice(&4u16.to_le_bytes()); // QE SVN
        q.extend_from_slice(&13u16.to_le_bytes()); // PCE SVN
        q.extend_from_slice(&INTEL_QE_VENDOR_ID);
        q.extend_from_slice(&[0u8; 20]); // user data
                                         // TD report body (TD10, 584 bytes).
        let mut body = vec![0u8; 584];
        body[0..16].copy_from_slice(&[3, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        body[16..64].copy_from_slice(&[0x2f; 48]); // MRSEAM
        body[120..128].copy_from_slice(&params.td_attributes);
        body[128..136].copy_from_slice(&[0xe7, 0x42, 0x06, 0, 0, 0, 0, 0]); // XFAM
        body[136..184].copy_from_slice(&params.mr_td);
        body[184..232].copy_from_slice(&params.mr_config_id);
        for (i, rtmr) in params.rtmrs.iter().enumerate() {
            body[328 + 48 * i..376 + 48 * i].copy_from_slice(rtmr);
        }
        body[520..584].copy_from_slice(report_data);
        q.extend_from_slice(&body);

        let quote_signature: p256::ecdsa::Signature = self.attestation_key.sign(&q);
        let point = self.attestation_key.verifying_key().to_encoded_point(false);
        let attestation_key = &point.as_bytes()[1..];
        let qe_auth_data = [0x42u8; 32];
        let mut qe_report = vec![0u8; 384];
        qe_report[256..258].copy_from_slice(&2u16.to_le_bytes()); // ISVPRODID: TD QE
        qe_report[258..260].copy_from_slice(&4u16.to_le_bytes()); // ISVSVN
        let binding = Sha256::new()
            .chain_update(attestation_key)
            .chain_update(qe_auth_data)
            .finalize();
        qe_report[320..352].copy_from_slice(&binding);
        let qe_signature: p256::ecdsa::Signature = self.pck_key.sign(&qe_report);

        let mut pck_data = self.chain_pem.as_bytes().to_vec();
        pck_data.push(0); // Intel's QE ends the PEM chain with a NUL
        let mut qe_cert_data = Vec::new();
        qe_cert_data.extend_from_slice(&qe_report);
        qe_cert_data.extend_from_slice(&qe_signature.to_bytes());
        qe_cert_data.extend_from_slice(&(qe_auth_data.len() as u16).to_le_bytes());
        qe_cert_data.extend_from_slice(&qe_auth_data);
        qe_cert_data.extend_from_slice(&5u16.to_le_bytes());
        qe_cert_data.extend_from_slice(&(pck_data.len() as u32).to_le_bytes());
        qe_cert_data.extend_from_slice(&pck_data);

        let mut sig_data = Vec::new();
        sig_data.extend_from_slice(&quote_signature.to_bytes());
        sig_data.extend_from_slice(attestation_key);
        sig_data.extend_from_slice(&6u16.to_le_bytes());
        sig_data.extend_from_slice(&(qe_cert_data.len() as u32).to_le_bytes());
        sig_data.extend_from_slice(&qe_cert_data);
        q.extend_from_slice(&(sig_data.len() as u32).to_le_bytes());
        q.extend_from_slice(&sig_data);
        q
    }
}
