//! The messages a TD exchanges with Intel's TDX Quote Generation Service (QGS) on the host,
//! over vsock (host CID 2, port 4050 by default): `GET_QUOTE_REQ` with the TD's 1024-byte
//! TDREPORT, `GET_QUOTE_RESP` with the quote. Asking the service directly takes milliseconds;
//! configfs-tsm asks it through the guest driver, which polls for the answer once a second.
//!
//! Each message is a `qgs_msg` of Intel's `qgs_msg_lib` 1.1 (little-endian fields) behind a
//! 4-byte big-endian length prefix: the framing of Intel's libtdx_attest, and of QEMU's quote
//! generator (`hw/i386/tdx-quote-generator.c`), which talks to the same service.
//!
//! ```text
//! header (16): major_version u16 = 1, minor_version u16 = 1, type u32,
//!              size u32 (the whole message, header included), error_code u32 (replies)
//! GET_QUOTE_REQ  (type 0): header, report_size u32, id_list_size u32, report, id_list
//! GET_QUOTE_RESP (type 1): header, selected_id_size u32, quote_size u32, selected_id, quote
//! ```
//!
//! The reply comes from the host: every length in it is checked against the bytes read and
//! capped ([`MAX_MESSAGE`]).

use super::reader::Reader;
use super::{check_max, FormatError};

/// Bytes of the big-endian length in front of each message.
pub const PREFIX: usize = 4;
/// Bytes of `qgs_msg_header_t`.
const HEADER: usize = 16;
/// Bytes of a `GET_QUOTE_REQ`/`GET_QUOTE_RESP` before its variable part.
const FIXED: usize = HEADER + 8;
/// The largest message accepted: a quote with its PCK chain is 5 to 8 KiB.
pub const MAX_MESSAGE: u32 = 1 << 20;
/// A TDREPORT's size.
pub const TDREPORT_SIZE: usize = 1024;

const MAJOR: u16 = 1;
const MINOR: u16 = 1;
const GET_QUOTE_REQ: u32 = 0;
const GET_QUOTE_RESP: u32 = 1;

const WHAT: &str = "QGS GET_QUOTE_RESP";

/// The framed `GET_QUOTE_REQ` for `tdreport` (no id list: the service picks its one
/// attestation key), ready to write to the socket.
pub fn get_quote_request(tdreport: &[u8; TDREPORT_SIZE]) -> Vec<u8> {
    let size = (FIXED + TDREPORT_SIZE) as u32;
    let mut out = Vec::with_capacity(PREFIX + FIXED + TDREPORT_SIZE);
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(&MAJOR.to_le_bytes());
    out.extend_from_slice(&MINOR.to_le_bytes());
    out.extend_from_slice(&GET_QUOTE_REQ.to_le_bytes());
    out.extend_from_slice(&size.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes()); // error_code: replies only
    out.extend_from_slice(&(TDREPORT_SIZE as u32).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes()); // id_list_size
    out.extend_from_slice(tdreport);
    out
}

/// The length of the message that follows a 4-byte prefix: at least a reply's fixed part, at
/// most [`MAX_MESSAGE`].
pub fn message_length(prefix: [u8; PREFIX]) -> Result<usize, FormatError> {
    let n = u32::from_be_bytes(prefix);
    check_max("QGS message length", n.into(), MAX_MESSAGE.into())?;
    let n = n as usize;
    if n < FIXED {
        return Err(FormatError::Truncated {
            what: WHAT,
            need: FIXED,
            have: n,
        });
    }
    Ok(n)
}

/// The quote in a `GET_QUOTE_RESP` (the message after its length prefix). A reply with an
/// error code, another type or version, or lengths that do not add up to the message is an
/// error naming what is wrong.
pub fn get_quote_response(message: &[u8]) -> Result<&[u8], FormatError> {
    check_max(WHAT, message.len() as u64, MAX_MESSAGE.into())?;
    let mut r = Reader::new(message, WHAT);
    let major = r.u16_le()?;
    let minor = r.u16_le()?;
    if (major, minor) != (MAJOR, MINOR) {
        return Err(FormatError::invalid(
            WHAT,
            format!("message version {major}.{minor}, not {MAJOR}.{MINOR}"),
        ));
    }
    let kind = r.u32_le()?;
    if kind != GET_QUOTE_RESP {
        return Err(FormatError::invalid(
            WHAT,
            format!("message type {kind}, not GET_QUOTE_RESP ({GET_QUOTE_RESP})"),
        ));
    }
    let size = r.u32_le()?;
    if size as usize != message.len() {
        return Err(FormatError::invalid(
            WHAT,
            format!("header size {size}, message {} bytes", message.len()),
        ));
    }
    let code = r.u32_le()?;
    if code != 0 {
        return Err(FormatError::invalid(
            WHAT,
            format!("the quote generation service answered error {code:#010x}"),
        ));
    }
    let id_size = r.u32_le()? as usize;
    let quote_size = r.u32_le()? as usize;
    if quote_size == 0 {
        return Err(FormatError::invalid(WHAT, "empty quote"));
    }
    if id_size.checked_add(quote_size) != Some(r.remaining()) {
        return Err(FormatError::invalid(
            WHAT,
            format!(
                "selected id ({id_size}) and quote ({quote_size}) do not fill the {} bytes left",
                r.remaining()
            ),
        ));
    }
    r.skip(id_size)?;
    let quote = r.bytes(quote_size)?;
    r.finish()?;
    Ok(quote)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The request's first 28 bytes, written out from the layout in the module documentation
    /// (`qgs_msg_lib` 1.1, as QEMU's generator builds it), not from our encoder.
    #[test]
    fn the_request_is_framed_as_the_service_expects() {
        let report = [0x5a; TDREPORT_SIZE];
        let msg = get_quote_request(&report);
        #[rustfmt::skip]
        let head: [u8; 28] = [
            0x00, 0x00, 0x04, 0x18,             // 1048 = 16 + 8 + 1024, big-endian
            0x01, 0x00, 0x01, 0x00,             // version 1.1
            0x00, 0x00, 0x00, 0x00,             // GET_QUOTE_REQ
            0x18, 0x04, 0x00, 0x00,             // size 1048, little-endian
            0x00, 0x00, 0x00, 0x00,             // error_code
            0x00, 0x04, 0x00, 0x00,             // report_size 1024
            0x00, 0x00, 0x00, 0x00,             // id_list_size 0
        ];
        assert_eq!(msg[..28], head);
        assert_eq!(&msg[28..], &report[..]);
        assert_eq!(message_length([0, 0, 4, 0x18]).unwrap(), msg.len() - PREFIX);
    }

    fn reply(code: u32, id: &[u8], quote: &[u8]) -> Vec<u8> {
        let size = (FIXED + id.len() + quote.len()) as u32;
        let mut m = Vec::new();
        for w in [1u16, 1] {
            m.extend_from_slice(&w.to_le_bytes());
        }
        for w in [
            GET_QUOTE_RESP,
            size,
            code,
            id.len() as u32,
            quote.len() as u32,
        ] {
            m.extend_from_slice(&w.to_le_bytes());
        }
        m.extend_from_slice(id);
        m.extend_from_slice(quote);
        m
    }

    #[test]
    fn the_quote_is_what_follows_the_selected_id() {
        assert_eq!(
            get_quote_response(&reply(0, &[], b"quote")).unwrap(),
            b"quote"
        );
        assert_eq!(
            get_quote_response(&reply(0, b"id", b"quote")).unwrap(),
            b"quote"
        );
    }

    #[test]
    fn a_bad_reply_is_a_one_line_error() {
        let e = |m: &[u8]| get_quote_response(m).unwrap_err().to_string();
        assert!(e(&reply(0x12001, &[], b"q")).contains("answered error 0x00012001"));
        let mut v = reply(0, &[], b"q");
        v[0] = 2;
        assert!(e(&v).contains("version 2.1"));
        let mut t = reply(0, &[], b"q");
        t[4] = 0;
        assert!(e(&t).contains("message type 0"));
        let mut long = reply(0, &[], b"q");
        long.push(0);
        assert!(e(&long).contains("header size"));
        let mut lying = reply(0, &[], b"q");
        lying[20] = 9; // quote_size 9 for 1 byte
        assert!(e(&lying).contains("do not fill"));
        assert!(e(&reply(0, &[], b"")).contains("empty quote"));
        assert!(e(&[1, 0]).contains("truncated"));
        assert!(message_length([0, 0x10, 0, 1]).is_err());
        assert!(message_length([0, 0, 0, 8]).is_err());
    }
}
