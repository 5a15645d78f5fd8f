//! The only code that opens devices (and talks to the cloud's instance metadata service, the
//! host-side part of a CVM's hardware interface). Everything above it sees typed results,
//! never handles.
//!
//! | module | what |
//! |---|---|
//! | [`tpm`] | TPM context, AKs (derived, persistent, from a template), quote, PCRs |
//! | [`nv`] | TPM NV indices: Azure's HCL report and user data, GCE's AK template and certificate |
//! | [`tsm`] | configfs-tsm reports (SNP, TDX) |
//! | [`qgs`] | TDX quotes without configfs-tsm: the TDREPORT ioctl, the quote service over vsock (the only `unsafe`) |
//! | [`imds`] | Azure IMDS: VCEK (THIM) and TD quotes |
//! | [`fw`] | the event logs (TCG, CCEL) read whole with a cap, the RTMR extend attribute |

pub(crate) mod fw;
pub(crate) mod imds;
pub(crate) mod nv;
pub(crate) mod qgs;
pub(crate) mod tpm;
pub(crate) mod tsm;
