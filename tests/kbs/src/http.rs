//! A minimal HTTP/1.1 server loop: request line, headers, `Content-Length` bodies, keep-alive.
//!
//! It is deliberately small: the KBS protocol needs nothing else, and clients that send chunked
//! bodies are refused rather than half supported.

use std::io::{BufRead, BufReader, Read, Write};

/// The largest request body accepted; larger ones get 413, as evidence is a few kilobytes.
pub(crate) const MAX_BODY: usize = 1024 * 1024;
/// The longest single request or header line accepted.
const MAX_LINE: u64 = 16 * 1024;
/// The most header lines accepted in one request.
const MAX_HEADERS: usize = 100;

/// One parsed HTTP request.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub method: String,
    /// The request target without the query string.
    pub path: String,
    /// Header names are lowercased; values are trimmed.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    /// All values of one header, in the order received.
    pub(crate) fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The first value of one header.
    pub(crate) fn header<'a>(&'a self, name: &'a str) -> Option<&'a str> {
        self.header_values(name).next()
    }
}

/// One response; the body is always JSON.
#[derive(Debug, Clone)]
pub(crate) struct Response {
    pub status: u16,
    pub body: Vec<u8>,
    pub set_cookie: Option<String>,
    /// A `Retry-After` header, in seconds (the admission knob's 503s).
    pub retry_after: Option<u64>,
}

impl Response {
    /// A JSON response with the given status.
    pub(crate) fn json(status: u16, body: &serde_json::Value) -> Response {
        Response {
            status,
            body: body.to_string().into_bytes(),
            set_cookie: None,
            retry_after: None,
        }
    }
}

/// Why reading a request stopped.
enum ReadOutcome {
    /// A complete request.
    Request(Request, bool),
    /// The client closed the connection (or it timed out) between requests.
    Closed,
    /// The request is unacceptable: answer with this status and close the connection, since the
    /// rest of the byte stream can no longer be framed reliably.
    Reject(u16, &'static str),
}

/// What to do with one request. [`Action::Reply`] is the protocol; the others exist for the
/// fault knobs ([`crate::Faults`]).
pub(crate) enum Action {
    /// Send this response.
    Reply(Response),
    /// Send the head and only the first `n` bytes of the body, then drop the connection.
    Truncated(Response, usize),
    /// Drop the connection without a reply.
    Drop,
    /// Send the response one byte at a time with this pause between bytes (for at most
    /// [`crate::MAX_DELAY`] in all), then drop the connection.
    Drip(Response, std::time::Duration),
    /// Answer 200 with a body of `len` filler bytes, written in chunks (never held in memory)
    /// until done or the client goes away; `sent` counts the bytes written.
    Stream {
        /// The advertised and intended body length.
        len: u64,
        /// Bytes of the body written so far.
        sent: std::sync::Arc<std::sync::atomic::AtomicU64>,
    },
}

/// How a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    /// The client closed it, asked to, or a reply could not be framed: close it politely.
    Clean,
    /// A fault asked to drop it: close the socket without any goodbye (no TLS close_notify).
    Abort,
}

/// Serves requests on one connection until the client closes it, asks for `Connection: close`,
/// or sends something that cannot be framed. (The broker itself uses
/// [`serve_connection_with`], which lets the fault knobs misbehave.)
#[cfg(test)]
pub(crate) fn serve_connection<S, H>(stream: S, mut handler: H)
where
    S: Read + Write,
    H: FnMut(&Request) -> Response,
{
    serve_connection_with(stream, |request| Action::Reply(handler(request)));
}

/// Serves requests on one connection until the client closes it, asks for `Connection: close`,
/// sends something that cannot be framed, or the handler asks to break the connection (see
/// [`Action`]).
pub(crate) fn serve_connection_with<S, H>(stream: S, mut handler: H) -> Ending
where
    S: Read + Write,
    H: FnMut(&Request) -> Action,
{
    let mut reader = BufReader::new(stream);
    loop {
        let (action, keep_alive) = match read_request(&mut reader) {
            ReadOutcome::Request(request, keep_alive) => (handler(&request), keep_alive),
            ReadOutcome::Closed => return Ending::Clean,
            ReadOutcome::Reject(status, detail) => (
                Action::Reply(Response::json(
                    status,
                    &serde_json::json!({ "type": "about:blank", "detail": detail }),
                )),
                false,
            ),
        };
        let stream = reader.get_mut();
        match action {
            Action::Reply(response) => {
                let head = response_head(&response, keep_alive);
                let written = stream
                    .write_all(head.as_bytes())
                    .and_then(|()| stream.write_all(&response.body))
                    .and_then(|()| stream.flush());
                if written.is_err() || !keep_alive {
                    return Ending::Clean;
                }
            }
            Action::Truncated(response, n) => {
                let head = response_head(&response, keep_alive);
                let cut = &response.body[..n.min(response.body.len())];
                let _ = stream
                    .write_all(head.as_bytes())
                    .and_then(|()| stream.write_all(cut))
                    .and_then(|()| stream.flush());
                return Ending::Abort;
            }
            Action::Drop => return Ending::Abort,
            Action::Drip(response, pause) => {
                let head = response_head(&response, false);
                let deadline = std::time::Instant::now() + crate::MAX_DELAY;
                for byte in head.as_bytes().iter().chain(&response.body) {
                    let sent = stream
                        .write_all(std::slice::from_ref(byte))
                        .and_then(|()| stream.flush());
                    if sent.is_err() || std::time::Instant::now() > deadline {
                        break;
                    }
                    std::thread::sleep(pause);
                }
                return Ending::Abort;
            }
            Action::Stream { len, sent } => {
                stream_filler(stream, len, &sent);
                return Ending::Abort;
            }
        }
    }
}

/// Writes a 200 head announcing `len` bytes, then the start of a JSON reply followed by filler,
/// 64 KiB at a time, until `len` bytes are written or a write fails.
fn stream_filler<S: Write>(stream: &mut S, len: u64, sent: &std::sync::atomic::AtomicU64) {
    use std::sync::atomic::Ordering;
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n"
    );
    if stream.write_all(head.as_bytes()).is_err() {
        return;
    }
    let mut chunk = vec![b'A'; 64 * 1024];
    let prefix = b"{\"token\":\"";
    chunk[..prefix.len()].copy_from_slice(prefix);
    let mut left = len;
    while left > 0 {
        let n = usize::try_from(left.min(chunk.len() as u64)).unwrap_or(chunk.len());
        if stream.write_all(&chunk[..n]).is_err() {
            return;
        }
        sent.fetch_add(n as u64, Ordering::SeqCst);
        left -= n as u64;
        chunk[..prefix.len()].fill(b'A');
    }
    let _ = stream.flush();
}

/// Formats the status line and headers of a response.
fn response_head(response: &Response, keep_alive: bool) -> String {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        response.status,
        reason(response.status),
        response.body.len()
    );
    if let Some(cookie) = &response.set_cookie {
        head.push_str("Set-Cookie: ");
        head.push_str(cookie);
        head.push_str("\r\n");
    }
    if let Some(secs) = response.retry_after {
        head.push_str(&format!("Retry-After: {secs}\r\n"));
    }
    if !keep_alive {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    head
}

/// The reason phrase for the status codes this server uses.
fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        403 => "Forbidden",
        413 => "Payload Too Large",
        417 => "Expectation Failed",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

/// Reads one line of at most [`MAX_LINE`] bytes, without its line ending.
///
/// Returns `Ok(None)` at end of stream before any byte, and an error for over-long lines,
/// truncated lines and non-UTF-8 bytes.
fn read_line<R: BufRead>(reader: &mut R) -> Result<Option<String>, LineError> {
    let mut line = Vec::new();
    let read = reader
        .by_ref()
        .take(MAX_LINE)
        .read_until(b'\n', &mut line)
        .map_err(|_| LineError::Io)?;
    if read == 0 {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') {
        // Either the limit cut the line or the stream ended inside it.
        return Err(if read as u64 >= MAX_LINE {
            LineError::TooLong
        } else {
            LineError::Io
        });
    }
    line.pop();
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    String::from_utf8(line)
        .map(Some)
        .map_err(|_| LineError::Malformed)
}

/// Why a line could not be read.
enum LineError {
    Io,
    TooLong,
    Malformed,
}

fn read_request<S: Read + Write>(reader: &mut BufReader<S>) -> ReadOutcome {
    let request_line = match read_line(reader) {
        Ok(Some(line)) => line,
        Ok(None) | Err(LineError::Io) => return ReadOutcome::Closed,
        Err(LineError::TooLong) => return ReadOutcome::Reject(431, "request line too long"),
        Err(LineError::Malformed) => return ReadOutcome::Reject(400, "request line not UTF-8"),
    };
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return ReadOutcome::Reject(400, "malformed request line");
    };
    if method.is_empty() || !target.starts_with('/') {
        return ReadOutcome::Reject(400, "malformed request line");
    }
    let http10 = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        _ => return ReadOutcome::Reject(400, "unsupported HTTP version"),
    };

    let mut headers = Vec::new();
    loop {
        let line = match read_line(reader) {
            Ok(Some(line)) => line,
            Ok(None) | Err(LineError::Io) => return ReadOutcome::Closed,
            Err(LineError::TooLong) => return ReadOutcome::Reject(431, "header line too long"),
            Err(LineError::Malformed) => return ReadOutcome::Reject(400, "header not UTF-8"),
        };
        if line.is_empty() {
            break;
        }
        if headers.len() == MAX_HEADERS {
            return ReadOutcome::Reject(431, "too many headers");
        }
        let Some((name, value)) = line.split_once(':') else {
            return ReadOutcome::Reject(400, "malformed header line");
        };
        if name.is_empty() || name.contains([' ', '\t']) {
            return ReadOutcome::Reject(400, "malformed header name");
        }
        headers.push((name.to_ascii_lowercase(), value.trim().to_string()));
    }

    let connection_tokens: Vec<String> = headers
        .iter()
        .filter(|(n, _)| n == "connection")
        .flat_map(|(_, v)| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect();
    let keep_alive = if http10 {
        connection_tokens.iter().any(|t| t == "keep-alive")
    } else {
        !connection_tokens.iter().any(|t| t == "close")
    };

    if headers.iter().any(|(n, _)| n == "transfer-encoding") {
        return ReadOutcome::Reject(501, "Transfer-Encoding is not supported");
    }
    let mut length: Option<usize> = None;
    for (_, value) in headers.iter().filter(|(n, _)| n == "content-length") {
        let Ok(parsed) = value.parse::<usize>() else {
            return ReadOutcome::Reject(400, "malformed Content-Length");
        };
        if length.is_some_and(|l| l != parsed) {
            return ReadOutcome::Reject(400, "conflicting Content-Length headers");
        }
        length = Some(parsed);
    }
    let length = length.unwrap_or(0);
    if length > MAX_BODY {
        return ReadOutcome::Reject(413, "request body larger than 1 MiB");
    }
    // curl asks for `100 Continue` before sending bodies over a size threshold; the answer
    // is only sent once the length is known to be acceptable.
    let mut expect_continue = false;
    for (_, value) in headers.iter().filter(|(n, _)| n == "expect") {
        if !value.eq_ignore_ascii_case("100-continue") {
            return ReadOutcome::Reject(417, "only Expect: 100-continue is supported");
        }
        expect_continue = true;
    }
    if expect_continue && !http10 {
        let stream = reader.get_mut();
        if stream
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .and_then(|()| stream.flush())
            .is_err()
        {
            return ReadOutcome::Closed;
        }
    }
    let mut body = vec![0; length];
    if reader.read_exact(&mut body).is_err() {
        return ReadOutcome::Closed;
    }

    let path = target.split('?').next().unwrap_or(target).to_string();
    ReadOutcome::Request(
        Request {
            method: method.to_string(),
            path,
            headers,
            body,
        },
        keep_alive,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// A fake connection: reads from a fixed input and records what is written.
    struct Duplex {
        input: Cursor<Vec<u8>>,
        output: Vec<u8>,
    }

    impl Read for Duplex {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.input.read(buf)
        }
    }

    impl Write for Duplex {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.output.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn run(input: &[u8]) -> (Vec<Request>, String) {
        let mut seen = Vec::new();
        let mut duplex = Duplex {
            input: Cursor::new(input.to_vec()),
            output: Vec::new(),
        };
        serve_connection(&mut duplex, |request| {
            seen.push(request.clone());
            Response::json(200, &serde_json::json!({}))
        });
        (seen, String::from_utf8(duplex.output).unwrap())
    }

    #[test]
    fn keep_alive_serves_several_requests_then_honours_close() {
        let input = b"POST /kbs/v0/auth?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}\
GET /kbs/v0/resource/a/b/c HTTP/1.1\r\nCookie: kbs-session-id=00\r\n\r\n\
GET /three HTTP/1.1\r\nConnection: close\r\n\r\n\
GET /never HTTP/1.1\r\n\r\n";
        let (seen, output) = run(input);
        let paths: Vec<&str> = seen.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(paths, ["/kbs/v0/auth", "/kbs/v0/resource/a/b/c", "/three"]);
        assert_eq!(seen[0].body, b"{}");
        assert_eq!(seen[1].header("cookie"), Some("kbs-session-id=00"));
        assert_eq!(output.matches("HTTP/1.1 200 OK").count(), 3);
        assert_eq!(output.matches("Connection: close").count(), 1);
        assert!(output.contains("Content-Type: application/json\r\nContent-Length: 2\r\n"));
    }

    #[test]
    fn oversized_body_is_413_and_closes() {
        let input = format!(
            "POST /kbs/v0/attest HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY + 1
        );
        let (seen, output) = run(input.as_bytes());
        assert!(seen.is_empty());
        assert!(output.starts_with("HTTP/1.1 413 "), "{output}");
        assert!(output.contains("Connection: close"));
    }

    #[test]
    fn malformed_requests_are_rejected() {
        for (input, status) in [
            (&b"GARBAGE\r\n\r\n"[..], "400"),
            (b"GET / HTTP/2\r\n\r\n", "400"),
            (b"GET / HTTP/1.1\r\nbad header\r\n\r\n", "400"),
            (b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n", "400"),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                "400",
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                "501",
            ),
        ] {
            let (seen, output) = run(input);
            assert!(seen.is_empty());
            assert!(
                output.starts_with(&format!("HTTP/1.1 {status} ")),
                "{output}"
            );
        }
    }

    #[test]
    fn expect_continue_is_answered_before_the_body() {
        let (seen, output) =
            run(b"POST /a HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n{}");
        assert_eq!(seen[0].body, b"{}");
        assert!(output.starts_with("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"));
    }

    #[test]
    fn truncated_body_closes_without_answer() {
        let (seen, output) = run(b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n{}");
        assert!(seen.is_empty());
        assert!(output.is_empty());
    }

    #[test]
    fn http10_closes_by_default() {
        let (seen, output) = run(b"GET /a HTTP/1.0\r\n\r\nGET /b HTTP/1.0\r\n\r\n");
        assert_eq!(seen.len(), 1);
        assert!(output.contains("Connection: close"));
    }
}
