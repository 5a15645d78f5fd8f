//! The listening broker: a TLS accept loop on loopback with one thread per connection.

use std::collections::HashMap;
use std::io::Write;
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use rustls::{ServerConfig, ServerConnection, StreamOwned};

use crate::api::Kbs;
use crate::http::serve_connection;
use crate::tls::make_tls_material;
use crate::BrokerConfig;

/// How long a connection may sit idle (between or inside requests) before it is closed, so a
/// client that vanishes does not pin a thread for the life of the broker.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// State the accept loop and the connection threads share with the [`Broker`] handle.
struct Shared {
    kbs: Kbs,
    tls: Arc<ServerConfig>,
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
        let kbs = Kbs::new(config).context("invalid broker configuration")?;
        let tls = make_tls_material()?;
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port))
            .with_context(|| format!("bind 127.0.0.1:{port}"))?;
        let addr = listener.local_addr().context("listener address")?;
        let shared = Arc::new(Shared {
            kbs,
            tls: tls.server_config,
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

/// Runs TLS and HTTP on one accepted connection.
fn serve_tls(stream: TcpStream, shared: &Shared) {
    let _ = stream.set_read_timeout(Some(IDLE_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IDLE_TIMEOUT));
    let _ = stream.set_nodelay(true);
    let Ok(connection) = ServerConnection::new(Arc::clone(&shared.tls)) else {
        return;
    };
    let mut tls = StreamOwned::new(connection, stream);
    serve_connection(&mut tls, |request| shared.kbs.handle(request));
    // A clean TLS close tells the client the connection ended on purpose, not by truncation.
    tls.conn.send_close_notify();
    let _ = tls.flush();
}
