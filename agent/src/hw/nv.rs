//! TPM NV indices: what the cloud vTPMs publish there (Azure's HCL report, GCE's AK template
//! and certificate) and the one index the agent writes (Azure's HCL user data).
//!
//! Reads and writes use a password session with the empty owner (or index) authorization, as
//! every cloud vTPM leaves them. Each call closes the ESYS handles it opened, so the context
//! keeps no NV state between calls.

use tss_esapi::attributes::NvIndexAttributesBuilder;
use tss_esapi::constants::CapabilityType;
use tss_esapi::handles::{NvIndexHandle, NvIndexTpmHandle, ObjectHandle, TpmHandle};
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::resource_handles::{NvAuth, Provision};
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{CapabilityData, MaxNvBuffer, NvPublic, NvPublicBuilder};

use super::tpm::{cmd, Tpm, TpmError};

/// Azure: the HCL report (SNP report or TDREPORT plus the runtime claims).
pub(crate) const AZURE_HCL_REPORT: u32 = 0x0140_0001;
/// Azure: the user data the HCL puts into the next report's runtime claims.
pub(crate) const AZURE_USER_DATA: u32 = 0x0140_0002;
/// GCE: the RSA AK certificate (DER).
pub(crate) const GCE_AK_CERT_RSA: u32 = 0x01c1_0000;
/// GCE: the RSA AK template (a marshalled `TPMT_PUBLIC`).
pub(crate) const GCE_AK_TEMPLATE_RSA: u32 = 0x01c1_0001;
/// GCE: the ECC AK template.
pub(crate) const GCE_AK_TEMPLATE_ECC: u32 = 0x01c1_0003;

/// The largest NV index read. TPMs cap an index at `TPM2_PT_NV_INDEX_MAX` (2 KiB on swtpm,
/// a few KiB on the cloud vTPMs); this only bounds what a broken TPM could make us allocate.
const MAX_NV_READ: usize = 64 * 1024;

/// Largest chunk of one NV_Read/NV_Write (`TPM2_PT_NV_BUFFER_MAX` is 1024 on every TPM we
/// know; smaller chunks only cost round trips).
const NV_CHUNK: usize = 1024;

fn nv_handle(index: u32) -> Result<NvIndexTpmHandle, TpmError> {
    NvIndexTpmHandle::new(index)
        .map_err(|_| TpmError::Unexpected(format!("{index:#010x} is not an NV index")))
}

impl Tpm {
    /// Whether the NV index `index` is defined (`TPM2_GetCapability` of the NV handles, so a
    /// missing index is an answer, not an error).
    pub(crate) fn nv_defined(&mut self, index: u32) -> Result<bool, TpmError> {
        let (data, _) = self
            .ctx
            .execute_without_session(|ctx| ctx.get_capability(CapabilityType::Handles, index, 1))
            .map_err(cmd("GetCapability(NV handles)"))?;
        Ok(match data {
            CapabilityData::Handles(list) => {
                list.into_inner().iter().any(|h| u32::from(*h) == index)
            }
            _ => false,
        })
    }

    /// The whole content of NV index `index`, read with the owner's authorization when the
    /// index allows it, else with the index's own (both empty on cloud vTPMs).
    pub(crate) fn nv_read(&mut self, index: u32) -> Result<Vec<u8>, TpmError> {
        let (handle, public) = self.nv_open(index)?;
        let result = self.nv_read_open(handle, &public);
        self.nv_close(handle);
        result
    }

    /// Write `data` at offset 0 of NV index `index` with the owner's authorization, defining
    /// the index first (owner read/write, `data.len()` bytes) when it does not exist, as
    /// Azure's own tooling does for the HCL user-data index.
    pub(crate) fn nv_write(&mut self, index: u32, data: &[u8]) -> Result<(), TpmError> {
        let tpm_handle = nv_handle(index)?;
        let handle = if self.nv_defined(index)? {
            self.nv_open(index)?.0
        } else {
            let attributes = NvIndexAttributesBuilder::new()
                .with_owner_write(true)
                .with_owner_read(true)
                .build()
                .map_err(cmd("build NV attributes"))?;
            let public = NvPublicBuilder::new()
                .with_nv_index(tpm_handle)
                .with_index_name_algorithm(HashingAlgorithm::Sha256)
                .with_index_attributes(attributes)
                .with_data_area_size(data.len())
                .build()
                .map_err(cmd("build NV public"))?;
            log::debug!("defining NV index {index:#010x} ({} bytes)", data.len());
            self.ctx
                .execute_with_session(Some(AuthSession::Password), |ctx| {
                    ctx.nv_define_space(Provision::Owner, None, public)
                })
                .map_err(cmd("NV_DefineSpace"))?
        };
        let result = self.nv_write_open(handle, index, data);
        self.nv_close(handle);
        result
    }

    fn nv_open(&mut self, index: u32) -> Result<(NvIndexHandle, NvPublic), TpmError> {
        let tpm_handle = nv_handle(index)?;
        let obj = self
            .ctx
            .execute_without_session(|ctx| ctx.tr_from_tpm_public(TpmHandle::NvIndex(tpm_handle)))
            .map_err(cmd("NV_ReadPublic"))?;
        let handle = NvIndexHandle::from(obj);
        match self
            .ctx
            .execute_without_session(|ctx| ctx.nv_read_public(handle))
        {
            Ok((public, _)) => Ok((handle, public)),
            Err(e) => {
                self.nv_close(handle);
                Err(cmd("NV_ReadPublic")(e))
            }
        }
    }

    fn nv_close(&mut self, handle: NvIndexHandle) {
        let mut obj = ObjectHandle::from(handle);
        if let Err(e) = self.ctx.tr_close(&mut obj) {
            log::debug!("closing an NV index handle: {e}");
        }
    }

    fn nv_read_open(
        &mut self,
        handle: NvIndexHandle,
        public: &NvPublic,
    ) -> Result<Vec<u8>, TpmError> {
        let size = public.data_size();
        let index = u32::from(public.nv_index());
        if size > MAX_NV_READ {
            return Err(TpmError::Unexpected(format!(
                "NV index {index:#010x} is {size} bytes, more than the {MAX_NV_READ} read"
            )));
        }
        let attributes = public.attributes();
        let auth = if attributes.owner_read() {
            NvAuth::Owner
        } else if attributes.auth_read() {
            NvAuth::NvIndex(handle)
        } else {
            return Err(TpmError::Unexpected(format!(
                "NV index {index:#010x} is readable neither by the owner nor with its own authorization"
            )));
        };
        let mut out = Vec::with_capacity(size);
        while out.len() < size {
            let chunk = (size - out.len()).min(NV_CHUNK);
            let (chunk, offset) = (to_u16(chunk)?, to_u16(out.len())?);
            let data = self
                .ctx
                .execute_with_session(Some(AuthSession::Password), |ctx| {
                    ctx.nv_read(auth, handle, chunk, offset)
                })
                .map_err(cmd("NV_Read"))?;
            if data.value().is_empty() {
                return Err(TpmError::Unexpected(format!(
                    "NV_Read of {index:#010x} returned no data at offset {offset}"
                )));
            }
            out.extend_from_slice(data.value());
        }
        out.truncate(size);
        Ok(out)
    }

    fn nv_write_open(
        &mut self,
        handle: NvIndexHandle,
        index: u32,
        data: &[u8],
    ) -> Result<(), TpmError> {
        let (public, _) = self
            .ctx
            .execute_without_session(|ctx| ctx.nv_read_public(handle))
            .map_err(cmd("NV_ReadPublic"))?;
        if public.data_size() < data.len() {
            return Err(TpmError::Unexpected(format!(
                "NV index {index:#010x} holds {} bytes, fewer than the {} to write",
                public.data_size(),
                data.len()
            )));
        }
        let auth = if public.attributes().owner_write() {
            NvAuth::Owner
        } else if public.attributes().auth_write() {
            NvAuth::NvIndex(handle)
        } else {
            return Err(TpmError::Unexpected(format!(
                "NV index {index:#010x} is writable neither by the owner nor with its own authorization"
            )));
        };
        for (i, chunk) in data.chunks(NV_CHUNK).enumerate() {
            let offset = to_u16(i * NV_CHUNK)?;
            let buffer = MaxNvBuffer::try_from(chunk.to_vec()).map_err(cmd("NV buffer"))?;
            self.ctx
                .execute_with_session(Some(AuthSession::Password), |ctx| {
                    ctx.nv_write(auth, handle, buffer, offset)
                })
                .map_err(cmd("NV_Write"))?;
        }
        Ok(())
    }
}

fn to_u16(n: usize) -> Result<u16, TpmError> {
    u16::try_from(n).map_err(|_| TpmError::Unexpected(format!("NV offset {n} exceeds 65535")))
}
