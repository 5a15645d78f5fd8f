//! The listening broker: a TLS accept loop on loopback with one thread per connection.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use rustls::{ServerConfig, ServerConnection, StreamOwned};

use crate::admission::AdmissionState;
use crate::api::Kbs;
use crate::faults::FaultState;
use crate::http::{serve_connection_with, Ending};
use crate::tls::make_tls_material;
use crate::{AdmissionStats, BrokerConfig, Faults, TlsFault};

/// How long a connection may sit idle (between or inside requests) before it is closed, so a
/// client that vanishes does not pin a thread for the life of the broker.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// State the accept loop and the connection threads share with the [`Broker`] handle.
struct Shared {
    kbs: Kbs,
    tls: Arc<ServerConfig>,
    /// The faulty TLS configurations ([`TlsFault`]), same CA.
    tls_expired: Arc<ServerConfig>,
    tls_wrong_name: Arc<ServerConfig>,
    faults: FaultState,
    /// The attacker's broker in the middle, when configured: every request is relayed.
    relay: Option<crate::relay::Relay>,
    /// The load-test admission limit and the request counters.
    admission: AdmissionState,
    /// Set (under the `connections` lock) when the broker is dropped.
    stopping: AtomicBool,
    /// Open connections, so that dropping the broker can shut them down and unblock their
    /// threads.
    connections: Mutex<HashMap<u64, TcpStream>>,
    next_connection: AtomicU64,
}

/// A running test KBS on `127.0.0.1`.
///
/// Dropping it stops listening, closes every open connection and joins all its threads.
pub struct Broker {
    addr: SocketAddr,
    ca_pem: String,
    shared: Arc<Shared>,
    accept_thread: Option<JoinHandle<()>>,
}

impl Broker {
    /// Starts a broker on an ephemeral port of `127.0.0.1` with a fresh CA and server
    /// certificate (SAN `127.0.0.1`, `localhost`, `10.0.2.2`) and a fresh token key.
    pub fn start(config: BrokerConfig) -> anyhow::Result<Broker> {
        Broker::start_on_port(config, 0)
    }

    /// Like [`Broker::start`], on a chosen port (`0` for an ephemeral one); the demo uses it.
    pub fn start_on_port(config: BrokerConfig, port: u16) -> anyhow::Result<Broker> {
        let faults = FaultState::new(config.faults.clone(), config.resources.clone());
        let admission = AdmissionState::new(config.admission);
        let relay = config
            .relay
            .clone()
            .map(crate::relay::Relay::new)
            .transpose()
            .context("invalid relay configuration")?;
        let kbs = Kbs::new(config).context("invalid broker configuration")?;
        let tls = make_tls_material()?;
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port))
            .with_context(|| format!("bind 127.0.0.1:{port}"))?;
        let addr = listener.local_addr().context("listener address")?;
        let shared = Arc::new(Shared {
            kbs,
            tls: tls.server_config,
            tls_expired: tls.expired,
            tls_wrong_name: tls.wrong_name,
            faults,
            relay,
            admission,
            stopping: AtomicBool::new(false),
            connections: Mutex::new(HashMap::new()),
            next_connection: AtomicU64::new(0),
        });
        let accept_shared = Arc::clone(&shared);
        let accept_thread = std::thread::Builder::new()
            .name(format!("test-kbs-accept-{}", addr.port()))
            .spawn(move || accept_loop(&listener, &accept_shared))
            .context("spawn accept thread")?;
        Ok(Broker {
            addr,
            ca_pem: tls.ca_pem,
            shared,
            accept_thread: Some(accept_thread),
        })
    }

    /// The base URL, `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    /// The port the broker listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The PEM of the CA certificate a client must trust to talk to this broker.
    pub fn ca_pem(&self) -> String {
        self.ca_pem.clone()
    }

    /// One line per decision so far: why an auth or attestation was refused, which status an
    /// appraisal gave and why, which resource was released or denied. Never secret bytes,
    /// nonces or tokens.
    pub fn log(&self) -> Vec<String> {
        self.shared.kbs.log_lines()
    }

    /// The resource paths released so far, in order, one entry per release.
    pub fn released(&self) -> Vec<String> {
        self.shared.kbs.released()
    }

    /// Replaces [`BrokerConfig::trusted_aks`] while the broker runs (same port, same CA):
    /// every attestation from now on is appraised against `aks`; a session that already
    /// attested keeps its token. An AK that is not standard base64 is an error and changes
    /// nothing.
    pub fn set_trusted_aks(&self, aks: Vec<String>) -> anyhow::Result<()> {
        self.shared.kbs.set_trusted_aks(&aks)
    }

    /// Replaces [`BrokerConfig::expected_pcrs`] while the broker runs (a reference value that
    /// depends on the broker's own URL and CA can only be computed once it listens).
    pub fn set_expected_pcrs(&self, pcrs: BTreeMap<u8, String>) -> anyhow::Result<()> {
        let lists = pcrs.into_iter().map(|(i, v)| (i, vec![v])).collect();
        self.shared.kbs.set_expected_pcrs(&lists)
    }

    /// Like [`Broker::set_expected_pcrs`], with a list of accepted values per PCR (Trustee's
    /// reference values are lists: this boot's and the next boot's across an update).
    pub fn accept_pcr_values(&self, pcrs: BTreeMap<u8, Vec<String>>) -> anyhow::Result<()> {
        self.shared.kbs.set_expected_pcrs(&pcrs)
    }
}

impl Broker {
    /// Replaces [`BrokerConfig::faults`] while the broker runs: every request from now on (and,
    /// for [`Faults::tls`], every connection accepted from now on) sees the new knobs.
    pub fn set_faults(&self, faults: Faults) {
        self.shared
            .kbs
            .record(format!("fault: knobs replaced: {faults:?}"));
        self.shared.faults.set(faults);
    }

    /// Requests seen so far by endpoint, and what the [`crate::Admission`] limit did.
    pub fn admission_stats(&self) -> AdmissionStats {
        self.shared.admission.stats()
    }

    /// Bytes written so far by [`Faults::oversize_for`] replies: how much of an oversized
    /// reply the client took (plus what the socket buffers held).
    pub fn bytes_streamed(&self) -> u64 {
        self.shared.faults.streamed()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        {
            // Setting the flag under the lock means the accept loop either registered a
            // connection before this sweep (and it is shut down here) or sees the flag and drops
            // the connection itself.
            let connections = self
                .shared
                .connections
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            self.shared.stopping.store(true, Ordering::SeqCst);
            for stream in connections.values() {
                let _ = stream.shutdown(Shutdown::Both);
            }
        }
        // A connection of our own wakes the blocking accept so it can see the flag. If even
        // that fails, the thread is left detached rather than hanging the caller.
        let woke = TcpStream::connect_timeout(&self.addr, Duration::from_secs(2)).is_ok();
        if let Some(handle) = self.accept_thread.take() {
            if woke {
                let _ = handle.join();
            }
        }
    }
}

/// Accepts connections until the broker stops, then joins every connection thread.
fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    let mut workers: Vec<JoinHandle<()>> = Vec::new();
    for stream in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = stream else {
            // Transient accept errors (for example running out of file descriptors) must not
            // end the loop; a short pause avoids spinning on them.
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        workers.retain(|worker| !worker.is_finished());
        let id = shared.next_connection.fetch_add(1, Ordering::Relaxed);
        {
            let mut connections = shared
                .connections
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if shared.stopping.load(Ordering::SeqCst) {
                break;
            }
            let Ok(clone) = stream.try_clone() else {
                continue;
            };
            connections.insert(id, clone);
        }
        let worker_shared = Arc::clone(shared);
        let spawned = std::thread::Builder::new()
            .name(format!("test-kbs-conn-{id}"))
            .spawn(move || {
                serve_tls(stream, &worker_shared);
                worker_shared
                    .connections
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&id);
            });
        match spawned {
            Ok(worker) => workers.push(worker),
            Err(_) => {
                if let Some(stream) = shared
                    .connections
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&id)
                {
                    let _ = stream.shutdown(Shutdown::Both);
                }
            }
        }
    }
    for worker in workers {
        let _ = worker.join();
    }
}

/// One request: counted and limited by the admission knob, then the fault knobs and the KBS.
fn handle(shared: &Shared, request: &crate::http::Request) -> crate::http::Action {
    if let Some(relay) = &shared.relay {
        return crate::http::Action::Reply(relay.handle(&shared.kbs, request));
    }
    shared.admission.handle(request, &shared.stopping, || {
        shared.faults.handle(&shared.kbs, request, &shared.stopping)
    })
}

/// Runs TLS and HTTP on one accepted connection.
fn serve_tls(stream: TcpStream, shared: &Shared) {
    let _ = stream.set_read_timeout(Some(IDLE_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IDLE_TIMEOUT));
    let _ = stream.set_nodelay(true);
    let tls_config = match shared.faults.current().tls {
        None => &shared.tls,
        Some(TlsFault::Expired) => &shared.tls_expired,
        Some(TlsFault::WrongName) => &shared.tls_wrong_name,
        Some(TlsFault::PlainHttp) => return serve_plain(stream, shared),
        Some(TlsFault::Silent) => return hold_silently(stream, shared),
    };
    let Ok(connection) = ServerConnection::new(Arc::clone(tls_config)) else {
        return;
    };
    let mut tls = StreamOwned::new(connection, stream);
    let ending = serve_connection_with(&mut tls, |request| handle(shared, request));
    match ending {
        Ending::Clean => {
            // A clean TLS close tells the client the connection ended on purpose, not by
            // truncation.
            tls.conn.send_close_notify();
            let _ = tls.flush();
        }
        Ending::Abort => {
            let _ = tls.sock.shutdown(Shutdown::Both);
        }
    }
}

/// [`TlsFault::Silent`]: read and discard whatever the client sends, answer nothing, until it
/// closes the connection, the broker is dropped, or [`crate::MAX_DELAY`] passed.
fn hold_silently(mut stream: TcpStream, shared: &Shared) {
    shared
        .kbs
        .record("fault: silent TLS: holding a connection without a handshake".to_string());
    let deadline = std::time::Instant::now() + crate::MAX_DELAY;
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let mut buf = [0_u8; 4096];
    while std::time::Instant::now() < deadline && !shared.stopping.load(Ordering::SeqCst) {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
}

/// [`TlsFault::PlainHttp`]: HTTP without TLS. A client that starts a TLS handshake gets a
/// clear-text `400` and the connection is closed, as an HTTP server answers bytes that are not
/// a request line.
fn serve_plain(mut stream: TcpStream, shared: &Shared) {
    let mut first = [0_u8; 1];
    let starts_like_http =
        matches!(stream.peek(&mut first), Ok(1) if first[0].is_ascii_uppercase());
    if !starts_like_http {
        shared
            .kbs
            .record("fault: plain HTTP: a non-HTTP request (TLS?) got 400".to_string());
        let _ = stream.write_all(
            b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
        let _ = stream.shutdown(Shutdown::Both);
        return;
    }
    let ending = serve_connection_with(&mut stream, |request| handle(shared, request));
    if ending == Ending::Abort {
        let _ = stream.shutdown(Shutdown::Both);
    }
}
