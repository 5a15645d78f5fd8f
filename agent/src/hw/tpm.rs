//! TPM 2.0 access through tss-esapi: the only code that talks to a TPM.
//!
//! It knows how to load the attestation key (AK), quote the SHA-256 PCR bank and read it, and
//! nothing about the broker protocol. Every object it creates is flushed before it returns,
//! because a swtpm (and a TPM without a resource manager in general) keeps transient objects
//! alive between connections and runs out of slots after three.

use std::str::FromStr;

use rsa::pkcs8::{EncodePublicKey, LineEnding};
use rsa::{BigUint, RsaPublicKey};
use tss_esapi::attributes::ObjectAttributesBuilder;
use tss_esapi::constants::AlgorithmIdentifier;
use tss_esapi::constants::CapabilityType;
use tss_esapi::handles::{KeyHandle, ObjectHandle, PcrHandle, PersistentTpmHandle, TpmHandle};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::dynamic_handles::Persistent;
use tss_esapi::interface_types::key_bits::RsaKeyBits;
use tss_esapi::interface_types::resource_handles::{Hierarchy, Provision};
use tss_esapi::structures::{
    AttestInfo, CapabilityData, Data, Digest, DigestValues, HashScheme, PcrSelectionListBuilder,
    PcrSlot, Public, PublicBuilder, PublicKeyRsa, PublicRsaParametersBuilder, RsaExponent,
    RsaScheme, SignatureScheme, SymmetricDefinitionObject,
};
use tss_esapi::traits::{Marshall, UnMarshall};
use tss_esapi::{Context, TctiNameConf};

use crate::formats::HashAlg;

/// A failure talking to the TPM.
#[derive(Debug, thiserror::Error)]
pub enum TpmError {
    /// The TCTI string is malformed.
    #[error("invalid TPM TCTI {tcti:?}: {source}")]
    Tcti {
        /// The configured string.
        tcti: String,
        /// Why.
        #[source]
        source: tss_esapi::Error,
    },
    /// The TPM could not be opened (device absent, swtpm not listening).
    #[error("cannot open TPM via {tcti}: {source}")]
    Open {
        /// The configured string.
        tcti: String,
        /// Why.
        #[source]
        source: tss_esapi::Error,
    },
    /// A TPM command failed.
    #[error("TPM {op} failed: {source}")]
    Command {
        /// What we were doing.
        op: &'static str,
        /// The TSS error.
        #[source]
        source: tss_esapi::Error,
    },
    /// The configured persistent AK handle holds no key.
    #[error("TPM has no AK at persistent handle {handle:#010x} (tpm.ak_handle): {source}")]
    PersistentAk {
        /// The handle.
        handle: u32,
        /// The TSS error.
        #[source]
        source: tss_esapi::Error,
    },
    /// The TPM returned something we cannot use.
    #[error("TPM {0}")]
    Unexpected(String),
}

pub(super) fn cmd(op: &'static str) -> impl FnOnce(tss_esapi::Error) -> TpmError {
    move |source| TpmError::Command { op, source }
}

/// The values of SHA-256 PCRs 0-23, as read right after a quote.
pub(crate) type PcrValues = [[u8; 32]; 24];

/// A quote and the values it covers.
pub struct Quote {
    /// Marshalled TPMS_ATTEST.
    pub message: Vec<u8>,
    /// Marshalled TPMT_SIGNATURE.
    pub signature: Vec<u8>,
    /// PCR 0-23 of the SHA-256 bank, consistent with the quote's PCR digest.
    pub pcrs: PcrValues,
}

/// The AK's public key.
pub(crate) struct AkPublic {
    /// DER SubjectPublicKeyInfo.
    pub spki_der: Vec<u8>,
    /// The same as PEM.
    pub pem: String,
}

/// An open TPM.
pub(crate) struct Tpm {
    pub(super) ctx: Context,
}

/// Which attestation key to quote with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AkSource {
    /// The primary key our fixed template derives from the endorsement seed, kept at the
    /// `cache` persistent handle after its first creation (when set): a later load checks that
    /// the key there is exactly that primary before using it.
    Derived {
        /// The persistent handle the derived key is kept at.
        cache: Option<u32>,
    },
    /// A key already made persistent at this handle (Azure's `0x81000003`, or one an operator
    /// provisioned).
    Persistent(u32),
    /// A primary key in the endorsement hierarchy made from this marshalled `TPMT_PUBLIC`
    /// template (GCE stores its AK template in NV): the same template on the same TPM always
    /// yields the same key, the one the cloud's AK certificate names.
    Template(Vec<u8>),
}

impl AkSource {
    /// The AK of this config: the key at `tpm.ak_handle` when set, otherwise the derived one
    /// (kept at `tpm.ak_cache_handle` unless that is 0).
    pub(crate) fn of(config: &crate::config::Tpm) -> AkSource {
        match config.ak_handle {
            Some(h) => AkSource::Persistent(h),
            None => AkSource::Derived {
                cache: (config.ak_cache_handle != 0).then_some(config.ak_cache_handle),
            },
        }
    }
}

const ALL_PCRS: [PcrSlot; 24] = [
    PcrSlot::Slot0,
    PcrSlot::Slot1,
    PcrSlot::Slot2,
    PcrSlot::Slot3,
    PcrSlot::Slot4,
    PcrSlot::Slot5,
    PcrSlot::Slot6,
    PcrSlot::Slot7,
    PcrSlot::Slot8,
    PcrSlot::Slot9,
    PcrSlot::Slot10,
    PcrSlot::Slot11,
    PcrSlot::Slot12,
    PcrSlot::Slot13,
    PcrSlot::Slot14,
    PcrSlot::Slot15,
    PcrSlot::Slot16,
    PcrSlot::Slot17,
    PcrSlot::Slot18,
    PcrSlot::Slot19,
    PcrSlot::Slot20,
    PcrSlot::Slot21,
    PcrSlot::Slot22,
    PcrSlot::Slot23,
];

/// First handle of the transient range (TPM_HT_TRANSIENT << 24).
const TRANSIENT_FIRST: u32 = 0x8000_0000;

/// How often to re-quote when a PCR is extended between the quote and the read-back.
const QUOTE_TRIES: usize = 3;

/// The AK template: RSA-2048 restricted signing key, RSASSA-SHA256, as go-tpm-tools'
/// default AK template. As a primary key in the endorsement hierarchy it is derived from the
/// TPM's endorsement seed, so the same TPM yields the same key on every boot without storing
/// anything, and a broker can trust it by its public key.
fn ak_template() -> Result<Public, tss_esapi::Error> {
    let attrs = ObjectAttributesBuilder::new()
        .with_restricted(true)
        .with_sign_encrypt(true)
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_no_da(true)
        .build()?;
    let params = PublicRsaParametersBuilder::new()
        .with_symmetric(SymmetricDefinitionObject::Null)
        .with_scheme(RsaScheme::RsaSsa(HashScheme::new(HashingAlgorithm::Sha256)))
        .with_key_bits(RsaKeyBits::Rsa2048)
        .with_exponent(RsaExponent::default())
        .with_is_signing_key(true)
        .with_is_decryption_key(false)
        .with_restricted(true)
        .build()?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Rsa)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attrs)
        .with_rsa_parameters(params)
        .with_rsa_unique_identifier(PublicKeyRsa::default())
        .build()
}

/// A loaded AK: either a transient primary we must flush, or a persistent handle we must only
/// close.
struct Ak {
    handle: KeyHandle,
    public: Public,
    transient: bool,
}

impl Tpm {
    /// Open the TPM named by a TCTI string.
    pub(crate) fn open(tcti: &str) -> Result<Tpm, TpmError> {
        let conf = TctiNameConf::from_str(tcti).map_err(|source| TpmError::Tcti {
            tcti: tcti.to_owned(),
            source,
        })?;
        let ctx = Context::new(conf).map_err(|source| TpmError::Open {
            tcti: tcti.to_owned(),
            source,
        })?;
        let mut tpm = Tpm { ctx };
        tpm.flush_stale_transients()?;
        Ok(tpm)
    }

    /// Flush transient objects left behind by a process that died before flushing. Behind a
    /// kernel resource manager (`/dev/tpmrm0`) there are none; on a bare TPM or swtpm there
    /// can be, and three of them block every further key load.
    fn flush_stale_transients(&mut self) -> Result<(), TpmError> {
        for h in self.handles(TRANSIENT_FIRST)? {
            if let Ok(obj) = self.ctx.tr_from_tpm_public(h) {
                log::debug!("flushing stale transient TPM object {h:?}");
                self.ctx.flush_context(obj).map_err(cmd("FlushContext"))?;
            }
        }
        Ok(())
    }

    fn load_ak(&mut self, source: &AkSource) -> Result<Ak, TpmError> {
        let template = match source {
            AkSource::Persistent(h) => {
                let h = *h;
                let tpm_handle = PersistentTpmHandle::new(h)
                    .map(TpmHandle::Persistent)
                    .map_err(|_| {
                        TpmError::Unexpected(format!("{h:#x} is not a persistent handle"))
                    })?;
                let obj = self
                    .ctx
                    .tr_from_tpm_public(tpm_handle)
                    .map_err(|source| TpmError::PersistentAk { handle: h, source })?;
                let handle = KeyHandle::from(obj);
                let (public, _, _) = self.ctx.read_public(handle).map_err(cmd("ReadPublic"))?;
                return Ok(Ak {
                    handle,
                    public,
                    transient: false,
                });
            }
            AkSource::Derived { cache } => return self.derived_ak(*cache),
            AkSource::Template(bytes) => Public::unmarshall(bytes).map_err(|e| {
                TpmError::Unexpected(format!("AK template is not a marshalled TPMT_PUBLIC: {e}"))
            })?,
        };
        self.create_primary(template)
    }

    fn create_primary(&mut self, template: Public) -> Result<Ak, TpmError> {
        let res = self
            .ctx
            .execute_with_nullauth_session(|ctx| {
                ctx.create_primary(Hierarchy::Endorsement, template, None, None, None, None)
            })
            .map_err(cmd("CreatePrimary(AK)"))?;
        Ok(Ak {
            handle: res.key_handle,
            public: res.out_public,
            transient: true,
        })
    }

    /// The derived AK: the key at `cache` when it is exactly that primary, otherwise created
    /// from the template (an RSA key generation: seconds on a discrete TPM) and made
    /// persistent at `cache` for the next boots. A key at `cache` that is not the derived one
    /// is left alone and not used.
    fn derived_ak(&mut self, cache: Option<u32>) -> Result<Ak, TpmError> {
        let template = ak_template().map_err(cmd("build AK template"))?;
        let Some(handle) = cache else {
            return self.create_primary(template);
        };
        let persistent = PersistentTpmHandle::new(handle).map_err(|_| {
            TpmError::Unexpected(format!(
                "{handle:#x} is not a persistent handle (tpm.ak_cache_handle)"
            ))
        })?;
        // Asked first: loading an empty handle makes the TSS log errors on every first boot.
        let present = self
            .handles(handle)?
            .contains(&TpmHandle::Persistent(persistent));
        if let Some(obj) = present
            .then(|| {
                self.ctx
                    .tr_from_tpm_public(TpmHandle::Persistent(persistent))
            })
            .and_then(Result::ok)
        {
            let key = KeyHandle::from(obj);
            let (public, name, qualified) = self
                .ctx
                .read_public(key)
                .map_err(cmd("ReadPublic(AK cache)"))?;
            if is_derived(&public, name.value(), qualified.value(), &template)? {
                log::debug!("AK: the derived key, kept at {handle:#010x}");
                return Ok(Ak {
                    handle: key,
                    public,
                    transient: false,
                });
            }
            log::warn!(
                "TPM persistent handle {handle:#010x} (tpm.ak_cache_handle) holds a key that is not the derived AK: not used, the AK is derived instead"
            );
            let mut obj = ObjectHandle::from(key);
            self.ctx.tr_close(&mut obj).map_err(cmd("TR_Close"))?;
            return self.create_primary(template);
        }
        let ak = self.create_primary(template)?;
        let kept = self.ctx.execute_with_nullauth_session(|ctx| {
            ctx.evict_control(
                Provision::Owner,
                ObjectHandle::from(ak.handle),
                Persistent::Persistent(persistent),
            )
        });
        match kept {
            Ok(mut obj) => {
                log::info!("AK created and kept at TPM persistent handle {handle:#010x}");
                self.ctx.tr_close(&mut obj).map_err(cmd("TR_Close"))?;
            }
            Err(e) => log::warn!(
                "AK created, but not kept at {handle:#010x} (the next boot creates it again): {e}"
            ),
        }
        Ok(ak)
    }

    /// The handles in use from `first` on, in `first`'s range (up to 16).
    fn handles(&mut self, first: u32) -> Result<Vec<TpmHandle>, TpmError> {
        let (data, _) = self
            .ctx
            .get_capability(CapabilityType::Handles, first, 16)
            .map_err(cmd("GetCapability(handles)"))?;
        Ok(match data {
            CapabilityData::Handles(list) => list.into_inner(),
            _ => Vec::new(),
        })
    }

    fn release(&mut self, ak: Ak) -> Result<(), TpmError> {
        let mut obj = ObjectHandle::from(ak.handle);
        if ak.transient {
            self.ctx.flush_context(obj).map_err(cmd("FlushContext(AK)"))
        } else {
            self.ctx.tr_close(&mut obj).map_err(cmd("TR_Close(AK)"))
        }
    }

    /// The AK's public key (`tpm.ak_handle`: persistent when set, derived otherwise).
    pub(crate) fn ak_public(&mut self, config: &crate::config::Tpm) -> Result<AkPublic, TpmError> {
        self.ak_public_of(&AkSource::of(config))
    }

    /// The public key of the AK from `source`.
    pub(crate) fn ak_public_of(&mut self, source: &AkSource) -> Result<AkPublic, TpmError> {
        let ak = self.load_ak(source)?;
        let public = spki(&ak.public);
        self.release(ak)?;
        public
    }

    /// Quote SHA-256 PCRs 0-23 with `qualifying_data` and read the quoted values back.
    ///
    /// The values are read after the quote and checked against the quote's PCR digest; if a
    /// PCR was extended in between, the quote is taken again, so the evidence is always
    /// self-consistent (a broker would reject it otherwise, with a generic error).
    pub(crate) fn quote_by(
        self,
        source: &AkSource,
        qualifying_data: &[u8],
    ) -> Result<(Quote, AkPublic), TpmError> {
        Quoter::load(self, source)?.quote_once(qualifying_data)
    }

    fn quote_with(
        &mut self,
        ak: &Ak,
        qualifying_data: &[u8],
    ) -> Result<(Quote, AkPublic), TpmError> {
        let public = spki(&ak.public)?;
        let selection = PcrSelectionListBuilder::new()
            .with_selection(HashingAlgorithm::Sha256, &ALL_PCRS)
            .build()
            .map_err(cmd("build PCR selection"))?;
        let data = Data::try_from(qualifying_data.to_vec()).map_err(cmd("qualifying data"))?;
        let scheme = SignatureScheme::RsaSsa {
            hash_scheme: HashScheme::new(HashingAlgorithm::Sha256),
        };
        for _ in 0..QUOTE_TRIES {
            let (attest, signature) = self
                .ctx
                .execute_with_nullauth_session(|ctx| {
                    ctx.quote(ak.handle, data.clone(), scheme, selection.clone())
                })
                .map_err(cmd("Quote"))?;
            let pcrs = self.pcrs_sha256()?;
            let AttestInfo::Quote { info } = attest.attested() else {
                return Err(TpmError::Unexpected(
                    "returned a non-quote attestation".into(),
                ));
            };
            if info.pcr_digest().value() != pcr_digest(&pcrs) {
                log::info!("a PCR changed between quote and read-back; quoting again");
                continue;
            }
            let message = attest.marshall().map_err(cmd("marshal TPMS_ATTEST"))?;
            let signature = signature
                .marshall()
                .map_err(cmd("marshal TPMT_SIGNATURE"))?;
            return Ok((
                Quote {
                    message,
                    signature,
                    pcrs,
                },
                public,
            ));
        }
        Err(TpmError::Unexpected(format!(
            "PCRs kept changing during {QUOTE_TRIES} quotes"
        )))
    }

    /// Extend PCR `pcr` with `event` in every active PCR bank (each bank gets the event's
    /// digest in its own algorithm, as a measured-boot event would), so no bank a verifier
    /// may read is left holding a pre-release value. Returns the banks extended. An active
    /// bank whose algorithm this build cannot compute is an error, not a bank left behind.
    pub(crate) fn extend_all_banks(
        &mut self,
        pcr: u32,
        event: &[u8],
    ) -> Result<Vec<HashAlg>, TpmError> {
        let handle = PcrHandle::try_from(pcr)
            .map_err(|_| TpmError::Unexpected(format!("has no PCR {pcr}")))?;
        let banks = self.active_banks()?;
        let mut values = DigestValues::new();
        let mut algs = Vec::new();
        for bank in banks {
            let alg = HashAlg::from_id(AlgorithmIdentifier::from(bank).into());
            let digest = alg.hash(event).ok_or_else(|| {
                TpmError::Unexpected(format!(
                    "has an active {alg} PCR bank, which this build cannot extend"
                ))
            })?;
            values.set(bank, Digest::try_from(digest).map_err(cmd("digest"))?);
            algs.push(alg);
        }
        if algs.is_empty() {
            return Err(TpmError::Unexpected("has no active PCR bank".into()));
        }
        self.ctx
            .execute_with_nullauth_session(|ctx| ctx.pcr_extend(handle, values))
            .map_err(cmd("PCR_Extend"))?;
        Ok(algs)
    }

    /// The hash algorithms of the PCR banks that have PCRs allocated.
    pub(crate) fn active_banks(&mut self) -> Result<Vec<HashingAlgorithm>, TpmError> {
        let (data, _) = self
            .ctx
            .get_capability(CapabilityType::AssignedPcr, 0, 16)
            .map_err(cmd("GetCapability(PCRS)"))?;
        let CapabilityData::AssignedPcr(list) = data else {
            return Err(TpmError::Unexpected(
                "answered GetCapability(PCRS) with other data".into(),
            ));
        };
        Ok(list
            .get_selections()
            .iter()
            .filter(|s| !s.is_empty())
            .map(|s| s.hashing_algorithm())
            .collect())
    }

    /// SHA-256 PCRs 0-23, in one read.
    pub(crate) fn pcrs_sha256(&mut self) -> Result<PcrValues, TpmError> {
        let selection = PcrSelectionListBuilder::new()
            .with_selection(HashingAlgorithm::Sha256, &ALL_PCRS)
            .build()
            .map_err(cmd("build PCR selection"))?;
        let data = tss_esapi::abstraction::pcr::read_all(&mut self.ctx, selection)
            .map_err(cmd("PCR_Read"))?;
        let bank = data
            .pcr_bank(HashingAlgorithm::Sha256)
            .ok_or_else(|| TpmError::Unexpected("has no SHA-256 PCR bank".into()))?;
        let mut out = [[0u8; 32]; 24];
        for (i, slot) in ALL_PCRS.iter().enumerate() {
            let d = bank
                .get_digest(*slot)
                .ok_or_else(|| TpmError::Unexpected(format!("did not return PCR {i}")))?;
            out[i] = d
                .value()
                .try_into()
                .map_err(|_| TpmError::Unexpected(format!("PCR {i} is not 32 bytes")))?;
        }
        Ok(out)
    }
}

/// A TPM connection with the AK loaded: the part of the evidence that does not need the
/// broker's nonce, made ready while the challenge is on its way. Dropping it flushes the AK
/// and closes the connection (a TPM simulator serves one connection at a time).
pub(crate) struct Quoter {
    tpm: Tpm,
    ak: Option<Ak>,
}

impl Quoter {
    /// Open `tpm`'s AK from `source` (created, or loaded from its persistent handle).
    pub(crate) fn load(mut tpm: Tpm, source: &AkSource) -> Result<Quoter, TpmError> {
        let ak = tpm.load_ak(source)?;
        Ok(Quoter { tpm, ak: Some(ak) })
    }

    /// Quote with `qualifying_data` ([`Tpm::quote_by`]), then flush the AK and close.
    pub(crate) fn quote_once(
        mut self,
        qualifying_data: &[u8],
    ) -> Result<(Quote, AkPublic), TpmError> {
        let Some(ak) = self.ak.take() else {
            return Err(TpmError::Unexpected("the AK was already released".into()));
        };
        let result = self.tpm.quote_with(&ak, qualifying_data);
        let released = self.tpm.release(ak);
        let out = result?;
        released?;
        Ok(out)
    }
}

impl Drop for Quoter {
    fn drop(&mut self) {
        if let Some(ak) = self.ak.take() {
            if let Err(e) = self.tpm.release(ak) {
                log::warn!("{e}");
            }
        }
    }
}

/// Whether a key (its public area, Name and qualified Name as ReadPublic gives them) is the
/// primary `template` derives in the endorsement hierarchy: its public area is the template's
/// with only the key filled in, and its qualified Name says its parent is the endorsement
/// hierarchy itself (`QN = nameAlg || H(TPM_RH_ENDORSEMENT || Name)`). Only `CreatePrimary`
/// makes such an object, and it makes the same key from the same template every time.
fn is_derived(
    public: &Public,
    name: &[u8],
    qualified: &[u8],
    template: &Public,
) -> Result<bool, TpmError> {
    use sha2::{Digest as _, Sha256};
    const TPM_RH_ENDORSEMENT: u32 = 0x4000_000B;
    const SHA256_ALG: [u8; 2] = [0x00, 0x0B];
    let have = public.marshall().map_err(cmd("marshal AK public"))?;
    let want = template.marshall().map_err(cmd("marshal AK template"))?;
    // The template ends with an empty unique field (a zero size); the key fills it in.
    let Some(fixed) = want.len().checked_sub(2).and_then(|n| want.get(..n)) else {
        return Ok(false);
    };
    if !have.starts_with(fixed) {
        return Ok(false);
    }
    let mut expected = SHA256_ALG.to_vec();
    expected.extend(
        Sha256::new()
            .chain_update(TPM_RH_ENDORSEMENT.to_be_bytes())
            .chain_update(name)
            .finalize(),
    );
    Ok(qualified == expected.as_slice())
}

/// SHA-256 over the concatenated PCR values: what TPMS_QUOTE_INFO.pcrDigest holds.
pub(crate) fn pcr_digest(pcrs: &PcrValues) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for p in pcrs {
        h.update(p);
    }
    h.finalize().into()
}

fn spki(public: &Public) -> Result<AkPublic, TpmError> {
    let Public::Rsa {
        unique, parameters, ..
    } = public
    else {
        return Err(TpmError::Unexpected("AK is not an RSA key".into()));
    };
    let e = match parameters.exponent().value() {
        0 => 65_537,
        e => e,
    };
    let key = RsaPublicKey::new(BigUint::from_bytes_be(unique.value()), BigUint::from(e))
        .map_err(|e| TpmError::Unexpected(format!("AK public key is invalid: {e}")))?;
    let spki_der = key
        .to_public_key_der()
        .map_err(|e| TpmError::Unexpected(format!("AK public key: {e}")))?
        .into_vec();
    let pem = key
        .to_public_key_pem(LineEnding::LF)
        .map_err(|e| TpmError::Unexpected(format!("AK public key: {e}")))?;
    Ok(AkPublic { spki_der, pem })
}
