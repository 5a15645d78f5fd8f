//! The direct path to a TDX quote: the TDREPORT from `/dev/tdx_guest`
//! (`TDX_CMD_GET_REPORT0`), signed into a quote by Intel's Quote Generation Service (QGS) on
//! the host, reached over vsock (host CID 2, port 4050 by default). This is what Intel's
//! `libtdx_attest` does; configfs-tsm asks the same service through the guest driver, which
//! polls for the answer once a second, so the direct path saves about a second a quote.
//!
//! The only `unsafe` of the agent is here: the ioctl, which nix's macro declares `unsafe`
//! because the kernel writes through the pointer it is given.
//!
//! Everything the service sends is hostile (the host runs it): the reply is read with a
//! length cap and a timeout ([`crate::formats::qgs`] checks it), and the quote must carry the
//! REPORTDATA asked for. A failure here is never final: the evidence source then asks
//! configfs-tsm, when the kernel has it.
#![allow(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::formats::qgs::{self, TDREPORT_SIZE};

/// The host's vsock CID (`VMADDR_CID_HOST`).
pub(crate) const HOST_CID: u32 = 2;

/// A failure of the direct path, with what was being done.
#[derive(Debug, thiserror::Error)]
pub(crate) enum QgsError {
    /// A device or socket step failed.
    #[error("cannot {action} {what}: {source}")]
    Io {
        /// What was tried.
        action: &'static str,
        /// On what.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The service's reply is malformed, an error, or a quote over other REPORTDATA.
    #[error("{what}: {why}")]
    Reply {
        /// The service.
        what: String,
        /// What is wrong.
        why: String,
    },
}

/// A byte stream to the service: a vsock socket, or a test's socket pair.
pub(crate) trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

/// Opens a connection to the service.
pub(crate) type Connect = Box<dyn FnMut() -> Result<Box<dyn Stream>, QgsError> + Send>;
/// Gets the TDREPORT over 64 bytes of report data.
pub(crate) type Report = Box<dyn FnMut(&[u8; 64]) -> Result<[u8; TDREPORT_SIZE], QgsError> + Send>;

/// A client of the service: one connection, opened ahead of the quote when
/// [`QgsClient::connect`] is called (while the broker's challenge is on its way), else at
/// the quote.
pub(crate) struct QgsClient {
    what: String,
    connect: Connect,
    report: Report,
    timeout: Duration,
    stream: Option<Box<dyn Stream>>,
}

impl QgsClient {
    /// The service at vsock `port` of the host, TDREPORTs from `device`; the exchange ends
    /// within `timeout` (the connect within the kernel's vsock connect timeout, 2 s).
    pub(crate) fn vsock(device: PathBuf, port: u32, timeout: Duration) -> QgsClient {
        QgsClient::new(
            format!("the TDX quote generation service at vsock {HOST_CID}:{port}"),
            Box::new(move || connect_vsock(HOST_CID, port, timeout)),
            Box::new(move |data| td_report(&device, data)),
            timeout,
        )
    }

    /// A client connecting with `connect` and getting TDREPORTs from `report`; `what` names
    /// the service in messages. The whole exchange (request and reply) must end within
    /// `timeout`.
    pub(crate) fn new(
        what: String,
        connect: Connect,
        report: Report,
        timeout: Duration,
    ) -> QgsClient {
        QgsClient {
            what,
            connect,
            report,
            timeout,
            stream: None,
        }
    }

    /// The service, for messages.
    pub(crate) fn what(&self) -> &str {
        &self.what
    }

    /// Open the connection now, so the quote does not wait for it.
    pub(crate) fn connect(&mut self) -> Result<(), QgsError> {
        if self.stream.is_none() {
            self.stream = Some((self.connect)()?);
        }
        Ok(())
    }

    /// Drop the connection (the source is done with this session).
    pub(crate) fn disconnect(&mut self) {
        self.stream = None;
    }

    /// A quote over `report_data`: the TDREPORT from the device, sent to the service on the
    /// open connection (one is opened if none is). A connection serves this one request.
    pub(crate) fn quote(&mut self, report_data: &[u8; 64]) -> Result<Vec<u8>, QgsError> {
        let tdreport = (self.report)(report_data)?;
        let stream = match self.stream.take() {
            Some(s) => s,
            None => (self.connect)()?,
        };
        let quote = exchange(stream, &tdreport, &self.what, Instant::now() + self.timeout)?;
        let reply = |why: String| QgsError::Reply {
            what: self.what.clone(),
            why,
        };
        let (parsed, _) = crate::formats::tdx::parse_quote_prefix(&quote)
            .map_err(|e| reply(format!("not a TDX quote: {e}")))?;
        if parsed.body.report_data != *report_data {
            return Err(reply(
                "the quote carries other REPORTDATA than asked".into(),
            ));
        }
        Ok(quote)
    }
}

/// Send `GET_QUOTE_REQ` for `tdreport` and read the `GET_QUOTE_RESP`'s quote, all before
/// `deadline` (a service trickling its reply is cut off there, not at each read's timeout).
fn exchange(
    mut stream: Box<dyn Stream>,
    tdreport: &[u8; TDREPORT_SIZE],
    what: &str,
    deadline: Instant,
) -> Result<Vec<u8>, QgsError> {
    let io = |action: &'static str| {
        move |source| QgsError::Io {
            action,
            what: what.to_owned(),
            source,
        }
    };
    stream
        .write_all(&qgs::get_quote_request(tdreport))
        .map_err(io("send GET_QUOTE_REQ to"))?;
    let mut prefix = [0u8; qgs::PREFIX];
    read_until(&mut stream, &mut prefix, deadline).map_err(io("read the reply length from"))?;
    let reply = |e: crate::formats::FormatError| QgsError::Reply {
        what: what.to_owned(),
        why: e.to_string(),
    };
    let len = qgs::message_length(prefix).map_err(reply)?;
    let mut message = vec![0u8; len];
    read_until(&mut stream, &mut message, deadline).map_err(io("read GET_QUOTE_RESP from"))?;
    qgs::get_quote_response(&message)
        .map(<[u8]>::to_vec)
        .map_err(reply)
}

/// Fill `buf` from `stream`, failing once `deadline` has passed (each read is bounded by the
/// socket's own timeout) or at the end of the stream.
fn read_until(stream: &mut dyn Stream, buf: &mut [u8], deadline: Instant) -> std::io::Result<()> {
    use std::io::{Error, ErrorKind};
    let mut filled = 0;
    while filled < buf.len() {
        if Instant::now() >= deadline {
            return Err(Error::new(ErrorKind::TimedOut, "the reply took too long"));
        }
        match stream.read(&mut buf[filled..]) {
            Ok(0) => {
                return Err(Error::new(
                    ErrorKind::UnexpectedEof,
                    format!("the connection ended after {filled} of {} bytes", buf.len()),
                ))
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A stream socket connected to vsock `cid`:`port`, whose reads and writes time out after
/// `timeout`.
pub(crate) fn connect_vsock(
    cid: u32,
    port: u32,
    timeout: Duration,
) -> Result<Box<dyn Stream>, QgsError> {
    use nix::sys::socket::{
        connect, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, VsockAddr,
    };
    let what = format!("vsock {cid}:{port}");
    let io = |action: &'static str| {
        let what = what.clone();
        move |e: nix::Error| QgsError::Io {
            action,
            what,
            source: e.into(),
        }
    };
    let fd = socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(io("open a socket for"))?;
    let tv = nix::sys::time::TimeVal::new(
        i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX),
        i64::from(timeout.subsec_micros()),
    );
    setsockopt(&fd, sockopt::ReceiveTimeout, &tv).map_err(io("set the read timeout of"))?;
    setsockopt(&fd, sockopt::SendTimeout, &tv).map_err(io("set the write timeout of"))?;
    connect(fd.as_raw_fd(), &VsockAddr::new(cid, port)).map_err(io("connect to"))?;
    Ok(Box::new(File::from(fd)))
}

/// `struct tdx_report_req` of `include/uapi/linux/tdx-guest.h`.
#[repr(C)]
struct TdxReportReq {
    reportdata: [u8; 64],
    tdreport: [u8; TDREPORT_SIZE],
}

// TDX_CMD_GET_REPORT0: _IOWR('T', 1, struct tdx_report_req).
nix::ioctl_readwrite!(tdx_cmd_get_report0, b'T', 1, TdxReportReq);

/// The TDREPORT over `report_data`, from the TDX guest device at `device`.
pub(crate) fn td_report(
    device: &Path,
    report_data: &[u8; 64],
) -> Result<[u8; TDREPORT_SIZE], QgsError> {
    let io = |action: &'static str| {
        move |source| QgsError::Io {
            action,
            what: device.display().to_string(),
            source,
        }
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(device)
        .map_err(io("open"))?;
    let mut req = TdxReportReq {
        reportdata: *report_data,
        tdreport: [0; TDREPORT_SIZE],
    };
    // SAFETY: `file` is an open descriptor for the call's duration, and `req` is a live,
    // exclusively borrowed `struct tdx_report_req` of exactly the size the request number
    // encodes (1088 bytes), which the kernel reads and writes only within.
    unsafe { tdx_cmd_get_report0(file.as_raw_fd(), &mut req) }
        .map_err(|e| io("get a TDREPORT (TDX_CMD_GET_REPORT0) from")(e.into()))?;
    Ok(req.tdreport)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The request number the kernel header's `_IOWR('T', 1, struct tdx_report_req)` gives:
    /// direction read|write (3) << 30, size 1088 << 16, type 'T' << 8, number 1.
    #[test]
    fn the_report_ioctl_has_the_kernels_number() {
        assert_eq!(std::mem::size_of::<TdxReportReq>(), 64 + 1024);
        let number = nix::request_code_readwrite!(b'T', 1, std::mem::size_of::<TdxReportReq>());
        assert_eq!(number as u64, 0xc440_5401);
    }

    /// A device that is not the TDX guest's answers the ioctl with an error, typed.
    #[test]
    fn a_device_without_the_ioctl_is_an_error() {
        let e = td_report(Path::new("/dev/null"), &[0; 64]).unwrap_err();
        assert!(e.to_string().contains("TDX_CMD_GET_REPORT0"), "{e}");
        let e = td_report(Path::new("/nonexistent/tdx_guest"), &[0; 64]).unwrap_err();
        assert!(e.to_string().starts_with("cannot open /nonexistent"), "{e}");
    }

    /// The vsock connect fails typed where nothing listens: CID 1 is this machine's own
    /// (local loopback), never another host's.
    #[test]
    fn vsock_without_a_listener_is_an_error() {
        let e = connect_vsock(1, 4050, Duration::from_secs(1))
            .err()
            .unwrap();
        assert!(e.to_string().contains("vsock 1:4050"), "{e}");
    }
}
