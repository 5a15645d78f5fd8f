//! A cloud vTPM made of a real swtpm: provisioned the way Azure and GCE provision theirs (NV
//! indices and keys written with tpm2-tools and tss-esapi, independently of the agent), and,
//! for Azure, a paravisor stand-in that rewrites the HCL report after the guest wrote user data.
//!
//! swtpm serves one client connection at a time, while on a real VM the guest's TPM commands
//! and the paravisor's NV updates interleave. [`TpmProxy`] does what the kernel's resource
//! manager does for `/dev/tpmrm0`: it accepts any number of clients and forwards their
//! commands one at a time over a single swtpm connection. Neither client creates transient
//! objects or sessions the other could trip over (the paravisor only reads and writes NV with
//! password authorization).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tss_esapi::abstraction::nv;
use tss_esapi::constants::CapabilityType;
use tss_esapi::handles::NvIndexTpmHandle;
use tss_esapi::interface_types::resource_handles::NvAuth;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::CapabilityData;
use tss_esapi::{Context, TctiNameConf};

use super::{run_ok, Swtpm};

/// Azure's NV indices and AK handle.
pub(crate) const HCL_REPORT_NV: u32 = 0x0140_0001;
pub(crate) const USER_DATA_NV: u32 = 0x0140_0002;
pub(crate) const AZURE_AK: u32 = 0x8100_0003;
/// GCE's RSA AK template and certificate indices.
pub(crate) const GCE_TEMPLATE_NV: u32 = 0x01c1_0001;
pub(crate) const GCE_CERT_NV: u32 = 0x01c1_0000;

/// tpm2-tools against `tpm`.
pub(crate) fn tpm2(tpm: &Swtpm, tool: &str) -> Command {
    let mut c = Command::new(tool);
    c.env("TPM2TOOLS_TCTI", tpm.tcti());
    c
}

/// Define NV `index` (owner read/write, `size` bytes) and write `data` at its start, with
/// tpm2-tools.
pub(crate) fn nv_define_and_write(tpm: &Swtpm, dir: &Path, index: u32, size: usize, data: &[u8]) {
    let idx = format!("{index:#010x}");
    run_ok(
        tpm2(tpm, "tpm2_nvdefine")
            .args([
                "-C",
                "o",
                "-s",
                &size.to_string(),
                "-a",
                "ownerread|ownerwrite",
            ])
            .arg(&idx),
    );
    let file = dir.join(format!("nv-{index:x}.bin"));
    std::fs::write(&file, data).unwrap();
    run_ok(
        tpm2(tpm, "tpm2_nvwrite")
            .args(["-C", "o", "-i"])
            .arg(&file)
            .arg(&idx),
    );
}

/// Make Azure's AK: an RSA-2048 restricted signing key (RSASSA-SHA256) in the endorsement
/// hierarchy, persisted at 0x81000003, with tpm2-tools. Returns its DER SubjectPublicKeyInfo.
pub(crate) fn make_azure_ak(tpm: &Swtpm, dir: &Path) -> Vec<u8> {
    let ctx = dir.join("ak.ctx");
    run_ok(
        tpm2(tpm, "tpm2_createprimary")
            .args([
                "-C",
                "e",
                "-g",
                "sha256",
                "-G",
                "rsa2048:rsassa-sha256:null",
            ])
            .args([
                "-a",
                "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|sign|noda",
            ])
            .arg("-c")
            .arg(&ctx),
    );
    run_ok(
        tpm2(tpm, "tpm2_evictcontrol")
            .args(["-C", "o", "-c"])
            .arg(&ctx)
            .arg(format!("{AZURE_AK:#010x}")),
    );
    // Without a resource manager the transient copy stays loaded: free its slot.
    run_ok(tpm2(tpm, "tpm2_flushcontext").arg("-t"));
    let der = dir.join("ak.der");
    run_ok(
        tpm2(tpm, "tpm2_readpublic")
            .args(["-c", &format!("{AZURE_AK:#010x}"), "-f", "der", "-o"])
            .arg(&der),
    );
    std::fs::read(der).unwrap()
}

/// A command-serialising proxy in front of a swtpm (see the module doc), on its own pair of
/// loopback ports (command and control, as the swtpm TCTI expects).
pub(crate) struct TpmProxy {
    pub port: u16,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

fn read_tpm_message(s: &mut impl Read) -> std::io::Result<Vec<u8>> {
    let mut header = [0u8; 10];
    s.read_exact(&mut header)?;
    let size = u32::from_be_bytes(header[2..6].try_into().unwrap()) as usize;
    if !(10..=1 << 16).contains(&size) {
        return Err(std::io::Error::other(format!("TPM message size {size}")));
    }
    let mut msg = header.to_vec();
    msg.resize(size, 0);
    s.read_exact(&mut msg[10..])?;
    Ok(msg)
}

impl TpmProxy {
    pub(crate) fn start(swtpm: &Swtpm) -> TpmProxy {
        let upstream = Arc::new(Mutex::new(
            TcpStream::connect(("127.0.0.1", swtpm.port)).unwrap(),
        ));
        let ctrl_upstream = swtpm.port + 1;
        let (data, ctrl) = loop {
            let data = TcpListener::bind("127.0.0.1:0").unwrap();
            let port = data.local_addr().unwrap().port();
            if port < u16::MAX {
                if let Ok(ctrl) = TcpListener::bind(("127.0.0.1", port + 1)) {
                    break (data, ctrl);
                }
            }
        };
        let port = data.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for (listener, is_ctrl) in [(data, false), (ctrl, true)] {
            listener.set_nonblocking(true).unwrap();
            let stop = stop.clone();
            let upstream = upstream.clone();
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((client, _)) => {
                            client.set_nonblocking(false).unwrap();
                            let upstream = upstream.clone();
                            std::thread::spawn(move || {
                                if is_ctrl {
                                    pump_ctrl(client, ctrl_upstream);
                                } else {
                                    serve(client, &upstream);
                                }
                            });
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(2)),
                    }
                }
            }));
        }
        TpmProxy {
            port,
            stop,
            threads,
        }
    }

    pub(crate) fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }
}

/// Forward one client's commands, each under the upstream lock, until it disconnects.
fn serve(mut client: TcpStream, upstream: &Mutex<TcpStream>) {
    while let Ok(cmd) = read_tpm_message(&mut client) {
        let resp = {
            let mut up = upstream.lock().unwrap();
            if up.write_all(&cmd).is_err() {
                return;
            }
            match read_tpm_message(&mut *up) {
                Ok(r) => r,
                Err(_) => return,
            }
        };
        if client.write_all(&resp).is_err() {
            return;
        }
    }
}

/// The control channel is used rarely (locality, cancel): a plain byte pump per connection.
fn pump_ctrl(client: TcpStream, upstream_port: u16) {
    let Ok(up) = TcpStream::connect(("127.0.0.1", upstream_port)) else {
        return;
    };
    let (mut c1, mut u1) = (client.try_clone().unwrap(), up.try_clone().unwrap());
    let t = std::thread::spawn(move || {
        let _ = std::io::copy(&mut c1, &mut u1);
        let _ = u1.shutdown(Shutdown::Write);
    });
    let (mut c2, mut u2) = (client, up);
    let _ = std::io::copy(&mut u2, &mut c2);
    let _ = c2.shutdown(Shutdown::Write);
    let _ = t.join();
}

impl Drop for TpmProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Makes the HCL report for the user data the guest wrote.
pub(crate) type MakeReport = Box<dyn Fn(&[u8; 64]) -> Vec<u8> + Send>;

/// The paravisor stand-in: watches NV 0x01400002 and, `delay` after it changes, writes the
/// HCL report for the new user data to NV 0x01400001 (`None`: never).
pub(crate) struct Paravisor {
    stop: Arc<AtomicBool>,
    updates: Arc<AtomicU32>,
    thread: Option<JoinHandle<()>>,
}

fn ctx(tcti: &str) -> Context {
    let mut ctx = Context::new(TctiNameConf::from_str(tcti).unwrap()).unwrap();
    ctx.set_sessions((Some(AuthSession::Password), None, None));
    ctx
}

fn defined(ctx: &mut Context, index: u32) -> bool {
    let (data, _) = ctx
        .execute_without_session(|c| c.get_capability(CapabilityType::Handles, index, 1))
        .unwrap();
    match data {
        CapabilityData::Handles(l) => l.into_inner().iter().any(|h| u32::from(*h) == index),
        _ => false,
    }
}

impl Paravisor {
    pub(crate) fn start(tcti: &str, delay: Option<Duration>, make: MakeReport) -> Paravisor {
        let stop = Arc::new(AtomicBool::new(false));
        let updates = Arc::new(AtomicU32::new(0));
        let tcti = tcti.to_owned();
        let thread = {
            let (stop, updates) = (stop.clone(), updates.clone());
            std::thread::spawn(move || {
                let mut ctx = ctx(&tcti);
                let user_idx = NvIndexTpmHandle::new(USER_DATA_NV).unwrap();
                let report_idx = NvIndexTpmHandle::new(HCL_REPORT_NV).unwrap();
                let mut seen: Option<Vec<u8>> = None;
                let mut due: Option<(Instant, [u8; 64])> = None;
                while !stop.load(Ordering::Relaxed) {
                    // Defined but not yet written (between the guest's NV_DefineSpace and
                    // NV_Write) reads as an error: try again next round.
                    let data = if defined(&mut ctx, USER_DATA_NV) {
                        nv::read_full(&mut ctx, NvAuth::Owner, user_idx).ok()
                    } else {
                        None
                    };
                    if let Some(data) = data {
                        if seen.as_ref() != Some(&data) && data.len() >= 64 {
                            if let Some(delay) = delay {
                                let mut ud = [0u8; 64];
                                ud.copy_from_slice(&data[..64]);
                                due = Some((Instant::now() + delay, ud));
                            }
                            seen = Some(data);
                        }
                    }
                    if let Some((at, ud)) = due {
                        if Instant::now() >= at {
                            let report = make(&ud);
                            let mut rw = nv::NvOpenOptions::ExistingIndex {
                                nv_index_handle: report_idx,
                                auth_handle: NvAuth::Owner,
                            }
                            .open(&mut ctx)
                            .unwrap();
                            rw.write_all(&report).unwrap();
                            drop(rw);
                            updates.fetch_add(1, Ordering::Relaxed);
                            due = None;
                        }
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
        };
        Paravisor {
            stop,
            updates,
            thread: Some(thread),
        }
    }

    /// HCL reports written so far.
    pub(crate) fn updates(&self) -> u32 {
        self.updates.load(Ordering::Relaxed)
    }
}

impl Drop for Paravisor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
