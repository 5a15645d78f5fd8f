//! Section 1b: what the AK costs in the evidence step, with the derived AK created on every
//! run (`tpm.ak_cache_handle=0`, what every boot paid before the cache) and loaded from its
//! persistent handle, on swtpm and behind a TCTI proxy that holds each `CreatePrimary`
//! response back by a fixed delay: a discrete TPM's RSA-2048 key generation, which takes
//! seconds, emulated on swtpm.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::Duration;

use anyhow::{Context, Result};

use super::measure::World;

/// `TPM_CC_CreatePrimary`.
const CC_CREATE_PRIMARY: u32 = 0x0000_0131;

/// The delay the proxy adds to each `CreatePrimary`, ms: the order of an RSA-2048 key
/// generation on a discrete TPM (reported as "several seconds"; it varies by chip and by the
/// primes drawn), an assumption stated on the page.
pub(super) const SLOW_CREATE_PRIMARY_MS: u64 = 2000;

/// The evidence step, ms, per case.
pub(super) struct AkCost {
    pub created_swtpm: Vec<f64>,
    pub cached_swtpm: Vec<f64>,
    pub created_slow: Vec<f64>,
    pub cached_slow: Vec<f64>,
}

/// Forwards the swtpm's server and control ports from two local ports, delaying every
/// `CreatePrimary` response by `delay`. Returns the proxy's server port.
fn slow_proxy(tpm_port: u16, delay: Duration) -> Result<u16> {
    let port = crate::free_port_pair()?;
    for (listen, target, frames) in [(port, tpm_port, true), (port + 1, tpm_port + 1, false)] {
        let listener = TcpListener::bind(("127.0.0.1", listen))?;
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if let Ok(upstream) = TcpStream::connect(("127.0.0.1", target)) {
                    std::thread::spawn(move || {
                        let _ = if frames {
                            forward_commands(client, upstream, delay)
                        } else {
                            forward_bytes(client, upstream)
                        };
                    });
                }
            }
        });
    }
    Ok(port)
}

/// One TPM command at a time (header: tag u16, size u32, code u32, big-endian), its
/// response held back by `delay` when it is a `CreatePrimary`.
fn forward_commands(mut client: TcpStream, mut tpm: TcpStream, delay: Duration) -> Result<()> {
    loop {
        let command = read_frame(&mut client)?;
        let code = command
            .get(6..10)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u32::from_be_bytes);
        tpm.write_all(&command)?;
        let response = read_frame(&mut tpm)?;
        if code == CC_CREATE_PRIMARY {
            std::thread::sleep(delay);
        }
        client.write_all(&response)?;
    }
}

/// A TPM command or response: the 6-byte tag and size, then the rest.
fn read_frame(from: &mut TcpStream) -> Result<Vec<u8>> {
    let mut head = [0u8; 6];
    from.read_exact(&mut head)?;
    let size = u32::from_be_bytes([head[2], head[3], head[4], head[5]]) as usize;
    anyhow::ensure!((6..=1 << 16).contains(&size), "TPM frame size {size}");
    let mut frame = head.to_vec();
    frame.resize(size, 0);
    from.read_exact(&mut frame[6..])?;
    Ok(frame)
}

/// Both directions copied as they come; when either side closes, both are shut down (swtpm
/// serves one control connection at a time: a half-open one would block the next client).
fn forward_bytes(client: TcpStream, tpm: TcpStream) -> Result<()> {
    let (mut from_client, mut to_tpm) = (client.try_clone()?, tpm.try_clone()?);
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut from_client, &mut to_tpm);
        let _ = to_tpm.shutdown(Shutdown::Both);
    });
    let (mut to_client, mut from_tpm) = (client, tpm);
    let _ = std::io::copy(&mut from_tpm, &mut to_client);
    let _ = to_client.shutdown(Shutdown::Both);
    let _ = up.join();
    Ok(())
}

/// The evidence work (`prepare`: the AK, and `evidence`: the quote) of `runs` unlocks per
/// case (after one warm-up each).
pub(super) fn ak_cost(w: &World, runs: usize) -> Result<AkCost> {
    let slow = slow_proxy(w.tpm_port, Duration::from_millis(SLOW_CREATE_PRIMARY_MS))
        .context("start the slow-CreatePrimary proxy")?;
    let direct = format!("tpm.tcti=swtpm:host=127.0.0.1,port={}", w.tpm_port);
    let proxied = format!("tpm.tcti=swtpm:host=127.0.0.1,port={slow}");
    let created = "tpm.ak_cache_handle=0".to_owned();
    let evidence = |set: &[String]| -> Result<Vec<f64>> {
        w.ours_with(set)?;
        let mut out = Vec::new();
        for _ in 0..runs {
            let (_, steps) = w.ours_with(set)?;
            // The AK is loaded (or created) by `prepare`, beside `auth`; the quote is `evidence`.
            let step = |name: &str| {
                steps
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| *v)
                    .with_context(|| format!("no {name} step in the verdict"))
            };
            out.push(step("prepare")? + step("evidence")?);
        }
        Ok(out)
    };
    let cost = AkCost {
        created_swtpm: evidence(&[direct.clone(), created.clone()])?,
        cached_swtpm: evidence(std::slice::from_ref(&direct))?,
        created_slow: evidence(&[proxied.clone(), created])?,
        cached_slow: evidence(&[proxied])?,
    };
    eprintln!(
        "bench: evidence step, median ms: swtpm created {:.1}, cached {:.1}; slow CreatePrimary created {:.1}, cached {:.1}",
        median(&cost.created_swtpm),
        median(&cost.cached_swtpm),
        median(&cost.created_slow),
        median(&cost.cached_slow),
    );
    Ok(cost)
}

fn median(v: &[f64]) -> f64 {
    super::stats::summarize(v).map_or(0.0, |s| s.median)
}
