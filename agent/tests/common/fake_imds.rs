//! A fake Azure Instance Metadata Service on 127.0.0.1: `GET /metadata/THIM/amd/certification`
//! (requires `Metadata: true`) answers the simulated chip's VCEK and chain as THIM does, and
//! `POST /acc/tdquote` turns a TDREPORT into a quote with the simulated TDX platform. Plain
//! HTTP/1.1, one request per connection.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;

/// Answers a TDREPORT with a TD quote.
pub(crate) type Quoter = Box<dyn Fn(&[u8]) -> Vec<u8> + Send + Sync>;

/// What the fake serves.
pub(crate) struct Backend {
    /// The THIM reply body, when SNP.
    pub thim: Option<String>,
    /// The TD quote maker, when TDX.
    pub quoter: Option<Quoter>,
}

/// Requests seen, as `METHOD PATH`.
pub(crate) struct FakeImds {
    pub port: u16,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<String>>>,
    thread: Option<JoinHandle<()>>,
}

/// PEM of one DER certificate.
pub(crate) fn pem(der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// A THIM reply for a VCEK and its ASK/ARK.
pub(crate) fn thim_reply(vcek: &[u8], ask: &[u8], ark: &[u8]) -> String {
    serde_json::json!({
        "vcekCert": pem(vcek),
        "tcbm": "DB18000000000004",
        "certificateChain": format!("{}{}", pem(ask), pem(ark)),
    })
    .to_string()
}

impl FakeImds {
    pub(crate) fn start(backend: Backend) -> FakeImds {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let backend = Arc::new(backend);
        let thread = {
            let (stop, seen) = (stop.clone(), seen.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((s, _)) => {
                            s.set_nonblocking(false).unwrap();
                            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                            handle(s, &backend, &seen);
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(2)),
                    }
                }
            })
        };
        FakeImds {
            port,
            stop,
            seen,
            thread: Some(thread),
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub(crate) fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for FakeImds {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn respond(mut s: TcpStream, status: &str, body: &str) {
    let _ = write!(
        s,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

fn handle(s: TcpStream, backend: &Backend, seen: &Mutex<Vec<String>>) {
    let mut reader = BufReader::new(s.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).is_err() || line == "\r\n" || line.is_empty() {
            break;
        }
        headers.push(line.trim_end().to_owned());
    }
    let header = |name: &str| {
        headers.iter().find_map(|h| {
            let (k, v) = h.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    };
    let len: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    seen.lock().unwrap().push(format!("{method} {path}"));
    match (method, path) {
        ("GET", "/metadata/THIM/amd/certification") => {
            if header("metadata").as_deref() != Some("true") {
                return respond(
                    s,
                    "400 Bad Request",
                    r#"{"error":"Metadata header missing"}"#,
                );
            }
            match &backend.thim {
                Some(reply) => respond(s, "200 OK", reply),
                None => respond(s, "404 Not Found", "{}"),
            }
        }
        ("POST", "/acc/tdquote") => {
            let Some(quoter) = &backend.quoter else {
                return respond(s, "404 Not Found", "{}");
            };
            let req: serde_json::Value = match serde_json::from_slice(&body) {
                Ok(v) => v,
                Err(_) => return respond(s, "400 Bad Request", "{}"),
            };
            let report = req["report"]
                .as_str()
                .and_then(|r| URL_SAFE_NO_PAD.decode(r.trim_end_matches('=')).ok());
            match report {
                Some(r) => {
                    let quote = quoter(&r);
                    let reply = serde_json::json!({"quote": URL_SAFE.encode(quote)}).to_string();
                    respond(s, "200 OK", &reply)
                }
                None => respond(s, "400 Bad Request", "{}"),
            }
        }
        _ => respond(s, "404 Not Found", "{}"),
    }
}
