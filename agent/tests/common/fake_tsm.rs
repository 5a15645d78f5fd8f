//! A fake configfs-tsm report tree (`/sys/kernel/config/tsm/report`) that behaves like the
//! kernel's towards a client, for the end-to-end tests.
//!
//! A background thread polls the report directory every millisecond. For each entry directory
//! a client creates it makes the attributes the kernel would (`provider`, `privlevel`,
//! `inblob`, `generation`, `outblob`, and `auxblob` for SNP). `inblob` and `privlevel` are
//! regular files the client writes; `outblob`, `auxblob` and `generation` are FIFOs, so a
//! client's read blocks until the "kernel" has something to say, as reading `outblob` is what
//! makes the kernel generate the report:
//!
//! 1. once `inblob` holds 64 bytes, the fake counts the writes (1, or 2 with `privlevel`),
//!    generates the report for that data with the simulated hardware, and serves it on
//!    `outblob` (then the certificate table on `auxblob`) to the client's read;
//! 2. when the client opens `generation` the fake removes every attribute file (the client
//!    keeps its open descriptor) and writes the write count, so the client's `rmdir` of the now
//!    empty entry succeeds, as with the kernel (which removes attributes itself on rmdir).
//!
//! A client that only reads `provider` (the agent's detection) leaves its entry behind: the
//! fake cannot tell when it gave up, and the agent only logs the failed rmdir at debug.
//!
//! The generation-race knob makes `generation` one more than the writes seen, as when another
//! process wrote to the same entry.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use nix::sys::stat::Mode;

/// What the simulated hardware returns for 64 bytes of report data: the `outblob` (report or
/// quote) and, for SNP, the `auxblob` (certificate table).
pub(crate) type Generate = Box<dyn Fn(&[u8; 64]) -> (Vec<u8>, Option<Vec<u8>>) + Send>;

/// Counters a test can assert on.
#[derive(Debug, Default, Clone)]
pub(crate) struct Stats {
    /// Entry directories the client created.
    pub entries: usize,
    /// Reports served on `outblob`.
    pub served: usize,
    /// Report data of every report served.
    pub report_data: Vec<[u8; 64]>,
    /// Served entries whose directory is still there (the client did not remove it).
    pub served_left: Vec<PathBuf>,
}

/// The running fake; stops its thread on drop.
pub(crate) struct FakeTsm {
    dir: PathBuf,
    stop: Arc<AtomicBool>,
    stats: Arc<Mutex<Stats>>,
    served_dirs: Arc<Mutex<Vec<PathBuf>>>,
    thread: Option<JoinHandle<()>>,
}

enum State {
    WaitInblob,
    Serve {
        out: Vec<u8>,
        aux: Option<Vec<u8>>,
        generation: u64,
    },
    ServeAux {
        aux: Vec<u8>,
        generation: u64,
    },
    ServeGeneration {
        generation: u64,
    },
    Done,
}

const ATTRIBUTES: [&str; 6] = [
    "provider",
    "privlevel",
    "inblob",
    "outblob",
    "auxblob",
    "generation",
];

fn mkfifo(path: &Path) {
    nix::unistd::mkfifo(path, Mode::S_IRUSR | Mode::S_IWUSR).unwrap();
}

/// Opens a FIFO for writing if a reader has it open (ENXIO otherwise: not yet).
fn open_writer(path: &Path) -> Option<std::fs::File> {
    match OpenOptions::new()
        .write(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(path)
    {
        Ok(f) => Some(f),
        Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ENXIO as i32) => None,
        Err(e) => panic!("fake configfs-tsm: open {}: {e}", path.display()),
    }
}

/// Writes all of `data` to a non-blocking FIFO, waiting while the pipe is full.
fn write_fifo(mut f: std::fs::File, mut data: &[u8]) {
    while !data.is_empty() {
        match f.write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(1))
            }
            // The reader went away (the client failed): nothing more to serve.
            Err(e) if e.kind() == ErrorKind::BrokenPipe => return,
            Err(e) => panic!("fake configfs-tsm: write: {e}"),
        }
    }
}

impl FakeTsm {
    /// Start serving the report directory `dir` (created if needed) as `provider`
    /// (`sev_guest` or `tdx_guest`), generating reports with `generate`. With
    /// `generation_race`, `generation` reads one more than the client's writes.
    pub(crate) fn start(
        dir: &Path,
        provider: &str,
        generate: Generate,
        generation_race: bool,
    ) -> FakeTsm {
        std::fs::create_dir_all(dir).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Mutex::new(Stats::default()));
        let served_dirs = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (dir, stop, stats, served_dirs) = (
                dir.to_owned(),
                stop.clone(),
                stats.clone(),
                served_dirs.clone(),
            );
            let provider = provider.to_owned();
            std::thread::spawn(move || {
                let mut entries: HashMap<PathBuf, State> = HashMap::new();
                while !stop.load(Ordering::Relaxed) {
                    let Ok(listing) = std::fs::read_dir(&dir) else {
                        break; // the test removed the tree
                    };
                    for path in listing.filter_map(|e| e.ok()).map(|e| e.path()) {
                        if path.is_dir() && !entries.contains_key(&path) {
                            make_attributes(&path, &provider);
                            stats.lock().unwrap().entries += 1;
                            entries.insert(path, State::WaitInblob);
                        }
                    }
                    entries.retain(|path, _| path.exists());
                    for (path, state) in entries.iter_mut() {
                        step(
                            path,
                            state,
                            &generate,
                            generation_race,
                            &stats,
                            &served_dirs,
                        );
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            })
        };
        FakeTsm {
            dir: dir.to_owned(),
            stop,
            stats,
            served_dirs,
            thread: Some(thread),
        }
    }

    /// The counters so far.
    pub(crate) fn stats(&self) -> Stats {
        let mut stats = self.stats.lock().unwrap().clone();
        stats.served_left = self
            .served_dirs
            .lock()
            .unwrap()
            .iter()
            .filter(|p| p.exists())
            .cloned()
            .collect();
        stats
    }
}

impl Drop for FakeTsm {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Creates an entry's attributes; `provider` and `inblob` last and atomically, since the
/// client proceeds as soon as both exist.
fn make_attributes(entry: &Path, provider: &str) {
    mkfifo(&entry.join("outblob"));
    if provider == "sev_guest" {
        mkfifo(&entry.join("auxblob"));
    }
    mkfifo(&entry.join("generation"));
    std::fs::write(entry.join("privlevel"), b"").unwrap();
    std::fs::write(entry.join(".inblob"), b"").unwrap();
    std::fs::rename(entry.join(".inblob"), entry.join("inblob")).unwrap();
    std::fs::write(entry.join(".provider"), format!("{provider}\n")).unwrap();
    std::fs::rename(entry.join(".provider"), entry.join("provider")).unwrap();
}

fn step(
    entry: &Path,
    state: &mut State,
    generate: &Generate,
    generation_race: bool,
    stats: &Mutex<Stats>,
    served_dirs: &Mutex<Vec<PathBuf>>,
) {
    match state {
        State::WaitInblob => {
            let Ok(data) = std::fs::read(entry.join("inblob")) else {
                return;
            };
            let Ok(data) = <[u8; 64]>::try_from(data.as_slice()) else {
                return;
            };
            let privlevel_written = std::fs::metadata(entry.join("privlevel"))
                .map(|m| m.len() > 0)
                .unwrap_or(false);
            let writes = 1 + u64::from(privlevel_written);
            let (out, aux) = generate(&data);
            let mut s = stats.lock().unwrap();
            s.served += 1;
            s.report_data.push(data);
            served_dirs.lock().unwrap().push(entry.to_owned());
            *state = State::Serve {
                out,
                aux,
                generation: writes + u64::from(generation_race),
            };
        }
        State::Serve {
            out,
            aux,
            generation,
        } => {
            if let Some(f) = open_writer(&entry.join("outblob")) {
                write_fifo(f, out);
                *state = match aux.take() {
                    Some(aux) if entry.join("auxblob").exists() => State::ServeAux {
                        aux,
                        generation: *generation,
                    },
                    _ => State::ServeGeneration {
                        generation: *generation,
                    },
                };
            }
        }
        State::ServeAux { aux, generation } => {
            if let Some(f) = open_writer(&entry.join("auxblob")) {
                write_fifo(f, aux);
                *state = State::ServeGeneration {
                    generation: *generation,
                };
            }
        }
        State::ServeGeneration { generation } => {
            if let Some(f) = open_writer(&entry.join("generation")) {
                // The client holds `generation` open; everything else it has read or written.
                for name in ATTRIBUTES {
                    let _ = std::fs::remove_file(entry.join(name));
                }
                write_fifo(f, format!("{generation}\n").as_bytes());
                *state = State::Done;
            }
        }
        State::Done => {}
    }
}
