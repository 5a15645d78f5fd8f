//! `attest-unlock reference-values`: the PCR values a broker must accept for this boot and,
//! given the files a pending update replaces, for the next one.
//!
//! The current values are the replay of the node's TCG event log (compared with the TPM's own
//! registers unless the log was copied off the node). The next values are the same replay with
//! the digests of the replaced files substituted: for an EFI application the firmware loaded
//! (`EV_EFI_BOOT_SERVICES_APPLICATION` and the driver events) the Authenticode digest of the
//! new image, for anything measured whole (the initrd the kernel's EFI stub measures into PCR
//! 9, a file GRUB measures) the plain digest of the new file. A replaced file that the log does
//! not show as measured is an error: a prediction that silently ignored it would be wrong.
//!
//! [`predict`] is pure; [`Request::run`] reads the files (through `hw::fw`) and the TPM's
//! registers (through `hw::tpm`) around it.

use serde_json::{json, Value};

use crate::formats::eventlog::{self, EventLog};
use crate::formats::{pe, FormatError, HashAlg};

/// `EV_EFI_BOOT_SERVICES_APPLICATION`, `EV_EFI_BOOT_SERVICES_DRIVER`,
/// `EV_EFI_RUNTIME_SERVICES_DRIVER`: events whose digest is an image's Authenticode digest.
const IMAGE_EVENTS: [u32; 3] = [0x8000_0003, 0x8000_0004, 0x8000_0005];

/// Why no prediction could be made. Each message is one line.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PredictError {
    /// The log does not carry the bank asked for.
    #[error("the event log has no {0} bank")]
    NoBank(HashAlg),
    /// This build cannot compute the bank's algorithm.
    #[error("cannot compute {0} digests")]
    Algorithm(HashAlg),
    /// A file given as replaced was not measured in this boot.
    #[error(
        "{0} was not measured in this boot (neither its digest nor its Authenticode digest is in the log): a prediction without it would be wrong"
    )]
    NotMeasured(String),
    /// The replacement of an EFI application is not a PE image.
    #[error("{name} replaces an EFI application but is not a PE image: {error}")]
    NotAnImage {
        /// The replacement's name.
        name: String,
        /// What the PE parser said.
        error: FormatError,
    },
    /// A PCR index outside 0-23.
    #[error("PCR {0} is not 0-23")]
    Pcr(u32),
    /// The log's replay differs from the TPM's register.
    #[error(
        "PCR {pcr}: the event log replays to {replayed} but the TPM holds {held}: the log does not describe this boot"
    )]
    NotThisBoot {
        /// The register.
        pcr: u32,
        /// What the log replays to.
        replayed: String,
        /// What the TPM holds.
        held: String,
    },
}

/// A file the update replaces: what the running boot measured, and what the next boot will.
#[derive(Debug, Clone, Copy)]
pub struct Replacement<'a> {
    /// The current file's name (for the output).
    pub current_name: &'a str,
    /// The current file's bytes.
    pub current: &'a [u8],
    /// The new file's name.
    pub next_name: &'a str,
    /// The new file's bytes.
    pub next: &'a [u8],
}

/// One event of a predicted register.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PredictedEvent {
    /// The event's position in the log, from 0.
    pub number: usize,
    /// Its type.
    pub event_type: u32,
    /// Its readable text, if it carries any.
    pub text: Option<String>,
    /// Its digest in the bank, this boot.
    pub digest: Vec<u8>,
    /// Its digest in the next boot, when an update replaces what it measured; and the name
    /// of the replacing file.
    pub next: Option<(Vec<u8>, String)>,
}

/// The values of one register, this boot and the next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PredictedPcr {
    /// The PCR index.
    pub pcr: u32,
    /// Its value after this boot's events (the replay of the log).
    pub current: Vec<u8>,
    /// Its value in the next boot.
    pub next: Vec<u8>,
    /// The events that made it, in order.
    pub events: Vec<PredictedEvent>,
}

/// What to register at the broker for these PCRs in this bank.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prediction {
    /// The bank.
    pub bank: HashAlg,
    /// One entry per PCR asked for, in the order asked.
    pub pcrs: Vec<PredictedPcr>,
}

/// Replays `log`'s `bank` for `pcrs`, as measured and with `replacements` applied.
pub fn predict(
    log: &EventLog,
    bank: HashAlg,
    pcrs: &[u32],
    replacements: &[Replacement<'_>],
) -> Result<Prediction, PredictError> {
    if let Some(bad) = pcrs.iter().find(|p| **p >= eventlog::PCR_COUNT) {
        return Err(PredictError::Pcr(*bad));
    }
    let size = log
        .algorithms()
        .iter()
        .find(|a| a.alg == bank)
        .map(|a| usize::from(a.digest_size))
        .ok_or(PredictError::NoBank(bank))?;
    let hash = |data: &[u8]| bank.hash(data).ok_or(PredictError::Algorithm(bank));

    let mut swaps = Vec::new();
    for (index, r) in replacements.iter().enumerate() {
        swaps_of(r, index, bank, &mut swaps)?;
    }
    let mut found = vec![false; replacements.len()];
    let mut next_of: Vec<Option<(Vec<u8>, String)>> = vec![None; log.events.len()];
    for (number, e) in log.events.iter().enumerate() {
        if e.event_type == eventlog::EV_NO_ACTION {
            continue;
        }
        let Some(digest) = e.digest(bank) else {
            continue;
        };
        let image = IMAGE_EVENTS.contains(&e.event_type);
        // An image event is matched by Authenticode first; any event by its whole digest.
        let swap = swaps
            .iter()
            .find(|w| image && w.image && w.current == digest)
            .or_else(|| swaps.iter().find(|w| !w.image && w.current == digest));
        if let Some(w) = swap {
            let next = w.next.clone()?;
            if let Some(f) = found.get_mut(w.replacement) {
                *f = true;
            }
            if let Some(slot) = next_of.get_mut(number) {
                *slot = Some((next, w.by.clone()));
            }
        }
    }
    if let Some(r) = found
        .iter()
        .zip(replacements)
        .find_map(|(f, r)| (!f).then_some(r))
    {
        return Err(PredictError::NotMeasured(r.current_name.to_owned()));
    }

    let mut out = Vec::with_capacity(pcrs.len());
    for &pcr in pcrs {
        let mut current = log.initial_value(pcr, size);
        let mut next = current.clone();
        let mut events = Vec::new();
        for (number, e) in log.events.iter().enumerate() {
            if e.index != pcr || e.event_type == eventlog::EV_NO_ACTION {
                continue;
            }
            let Some(digest) = e.digest(bank) else {
                continue;
            };
            let replaced = next_of.get(number).cloned().flatten();
            current = hash(&[current.as_slice(), digest].concat())?;
            let next_digest = replaced.as_ref().map_or(digest, |(d, _)| d.as_slice());
            next = hash(&[next.as_slice(), next_digest].concat())?;
            events.push(PredictedEvent {
                number,
                event_type: e.event_type,
                text: crate::inspect::event_text(e),
                digest: digest.to_vec(),
                next: replaced,
            });
        }
        out.push(PredictedPcr {
            pcr,
            current,
            next,
            events,
        });
    }
    Ok(Prediction { bank, pcrs: out })
}

/// What one event's digest becomes: the current digest, the next one (or why it cannot be
/// computed, an error only if an event of this boot has the current digest), and its source.
struct Swap {
    /// Matched only against image events (an Authenticode digest).
    image: bool,
    current: Vec<u8>,
    next: Result<Vec<u8>, PredictError>,
    by: String,
    /// The `--replace` pair it comes from.
    replacement: usize,
}

/// The swaps of one replaced file: its whole digest; its Authenticode digest when it is a PE
/// image; and for a UKI (a PE image with a `.linux` section) what its stub makes the next
/// stages measure: each section's data (systemd-stub's PCR 11 events, the initrd the kernel's
/// EFI stub measures into PCR 9), the command line as the kernel's load options (UCS-2 with its
/// terminating NUL, PCR 9) and the embedded kernel image (Authenticode, PCR 4).
fn swaps_of(
    r: &Replacement<'_>,
    replacement: usize,
    bank: HashAlg,
    out: &mut Vec<Swap>,
) -> Result<(), PredictError> {
    let hash = |data: &[u8]| bank.hash(data).ok_or(PredictError::Algorithm(bank));
    let authenticode = |data: &[u8], name: &str| -> Result<Vec<u8>, PredictError> {
        pe::authenticode(data)
            .map_err(|error| PredictError::NotAnImage {
                name: name.to_owned(),
                error,
            })
            .and_then(|a| a.digest(data, bank).ok_or(PredictError::Algorithm(bank)))
    };
    out.push(Swap {
        image: false,
        current: hash(r.current)?,
        next: Ok(hash(r.next)?),
        by: r.next_name.to_owned(),
        replacement,
    });
    let Ok(current) = authenticode(r.current, r.current_name) else {
        return Ok(());
    };
    out.push(Swap {
        image: true,
        current,
        next: authenticode(r.next, r.next_name),
        by: r.next_name.to_owned(),
        replacement,
    });
    let sections = |image: &'_ [u8]| -> Vec<(String, Vec<u8>)> {
        pe::sections(image)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|s| Some((s.name, image.get(s.data)?.to_vec())))
            .collect()
    };
    let (now, then) = (sections(r.current), sections(r.next));
    if !now.iter().any(|(name, _)| name == ".linux") {
        return Ok(());
    }
    for (name, data) in &now {
        let next = then.iter().find(|(n, _)| n == name).map(|(_, d)| d);
        let by = format!("{} ({name})", r.next_name);
        let missing = || PredictError::NotMeasured(format!("{name} of {}", r.next_name));
        out.push(Swap {
            image: false,
            current: hash(data)?,
            next: next.ok_or_else(missing).and_then(|d| hash(d)),
            by: by.clone(),
            replacement,
        });
        if name == ".cmdline" {
            out.push(Swap {
                image: false,
                current: hash(&load_options(data))?,
                next: next
                    .ok_or_else(missing)
                    .and_then(|d| hash(&load_options(d))),
                by: format!("{} (.cmdline as load options)", r.next_name),
                replacement,
            });
        }
        if name == ".linux" {
            if let Ok(current) = authenticode(data, &by) {
                out.push(Swap {
                    image: true,
                    current,
                    next: next.ok_or_else(missing).and_then(|d| authenticode(d, &by)),
                    by,
                    replacement,
                });
            }
        }
    }
    Ok(())
}

/// A command line as a stub hands it to the kernel: each byte widened to UCS-2, then a NUL.
fn load_options(cmdline: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 * cmdline.len() + 2);
    for b in cmdline.iter().take_while(|b| **b != 0) {
        out.extend([*b, 0]);
    }
    out.extend([0, 0]);
    out
}

impl Prediction {
    /// The Trustee reference-value names (`tpm_pcr4`, as its TPM verifier's default policy
    /// and ours query them) and their accepted values: current first, then next if it differs.
    pub fn reference_values(&self) -> Vec<(String, Vec<String>)> {
        self.pcrs
            .iter()
            .map(|p| {
                let mut values = vec![hex::encode(&p.current)];
                if p.next != p.current {
                    values.push(hex::encode(&p.next));
                }
                (format!("tpm_pcr{}", p.pcr), values)
            })
            .collect()
    }

    /// The whole prediction as JSON: per PCR the current and next values with their events,
    /// then the reference values in the form Trustee's sample reference-value payload takes.
    pub(crate) fn to_json(&self) -> Value {
        let pcrs: Vec<Value> = self
            .pcrs
            .iter()
            .map(|p| {
                let events: Vec<Value> = p
                    .events
                    .iter()
                    .map(|e| {
                        let mut v = json!({
                            "number": e.number,
                            "type": eventlog::event_type_name(e.event_type)
                                .map_or_else(|| format!("{:#010x}", e.event_type), str::to_owned),
                            "text": e.text,
                            "digest": hex::encode(&e.digest),
                        });
                        if let Some((d, by)) = &e.next {
                            v["next_digest"] = json!(hex::encode(d));
                            v["replaced_by"] = json!(by);
                        }
                        v
                    })
                    .collect();
                json!({
                    "pcr": p.pcr,
                    "current": hex::encode(&p.current),
                    "next": hex::encode(&p.next),
                    "changes": p.next != p.current,
                    "events": events,
                })
            })
            .collect();
        json!({
            "bank": self.bank.name(),
            "pcrs": pcrs,
            "reference_values": self.payload(),
        })
    }

    /// The reference values as Trustee's sample payload takes them: name to list.
    fn payload(&self) -> Value {
        let map: serde_json::Map<String, Value> = self
            .reference_values()
            .into_iter()
            .map(|(name, values)| (name, json!(values)))
            .collect();
        Value::Object(map)
    }
}

/// The largest file `--replace` reads (a kernel, a UKI or an initrd).
const MAX_FILE: u64 = 1 << 30;

/// A `reference-values` run: which log, PCRs and replacements, and whether to compare with
/// the TPM.
#[derive(Debug)]
pub struct Request<'a> {
    /// The event log.
    pub log: &'a std::path::Path,
    /// The PCRs to report.
    pub pcrs: &'a [u32],
    /// Current and next file, in pairs.
    pub replace: &'a [std::path::PathBuf],
    /// The TPM's TCTI, to check the log replays to its registers; `None`: offline.
    pub tpm: Option<&'a str>,
    /// The first broker's URL, for the printed commands.
    pub kbs: Option<&'a str>,
}

/// What a run found: the prediction and how the log was checked.
#[derive(Debug)]
pub struct Report {
    prediction: Prediction,
    log: String,
    tpm: &'static str,
    kbs: String,
}

impl Request<'_> {
    /// Reads the log and the files, checks the log against the TPM, predicts.
    pub fn run(&self) -> Result<Report, crate::Error> {
        let read = |path: &std::path::Path, cap| {
            crate::hw::fw::read_input(path, cap).map_err(|source| crate::Error::Input {
                file: path.display().to_string(),
                source,
            })
        };
        let raw = read(self.log, crate::hw::fw::MAX_LOG)?;
        let log = eventlog::parse_event_log(&raw).map_err(|source| crate::Error::Format {
            file: self.log.display().to_string(),
            source,
        })?;
        let mut files = Vec::with_capacity(self.replace.len());
        for path in self.replace {
            files.push((path.display().to_string(), read(path, MAX_FILE)?));
        }
        let replacements: Vec<Replacement<'_>> = files
            .chunks_exact(2)
            .filter_map(|pair| match pair {
                [(current_name, current), (next_name, next)] => Some(Replacement {
                    current_name,
                    current,
                    next_name,
                    next,
                }),
                _ => None,
            })
            .collect();
        let prediction = predict(&log, HashAlg::Sha256, self.pcrs, &replacements)?;
        let tpm = match self.tpm {
            None => "not compared (--offline)",
            Some(tcti) => {
                let held = crate::hw::tpm::Tpm::open(tcti)
                    .and_then(|mut tpm| tpm.pcrs_sha256())
                    .map_err(crate::evidence::EvidenceError::from)?;
                for p in &prediction.pcrs {
                    let held = usize::try_from(p.pcr)
                        .ok()
                        .and_then(|i| held.get(i))
                        .ok_or(PredictError::Pcr(p.pcr))?;
                    if held.as_slice() != p.current.as_slice() {
                        return Err(PredictError::NotThisBoot {
                            pcr: p.pcr,
                            replayed: hex::encode(&p.current),
                            held: hex::encode(held),
                        }
                        .into());
                    }
                }
                "matches the event log"
            }
        };
        Ok(Report {
            prediction,
            log: self.log.display().to_string(),
            tpm,
            kbs: self.kbs.unwrap_or("https://KBS").to_owned(),
        })
    }
}

impl Report {
    /// The Trustee message that registers every value: `POST /kbs/v0/reference-value` with
    /// this body (admin authentication) stores each name's list whole. `kbs-client config
    /// set-sample-reference-value` stores one value per name, so it serves only names whose
    /// value does not change.
    fn message(&self) -> Value {
        use base64::Engine as _;
        let payload = self.prediction.payload().to_string();
        json!({
            "version": "0.1.0",
            "type": "sample",
            "payload": base64::engine::general_purpose::STANDARD.encode(payload),
        })
    }

    /// The commands that register the values: `message` posted, and `kbs-client` lines.
    fn commands(&self, message: &Value) -> Vec<String> {
        let mut out = vec![format!(
            "curl --cacert KBS-CA.pem -H 'Authorization: Bearer ADMIN-TOKEN' -H 'Content-Type: application/json' --data '{message}' {}/kbs/v0/reference-value",
            self.kbs
        )];
        for (name, values) in self.prediction.reference_values() {
            if let [only] = values.as_slice() {
                out.push(format!(
                    "kbs-client --url {} --cert-file KBS-CA.pem config set-sample-reference-value {name} {only}",
                    self.kbs
                ));
            }
        }
        out
    }

    /// The report as JSON.
    pub fn json(&self) -> Value {
        let mut v = self.prediction.to_json();
        v["event_log"] = json!(self.log);
        v["tpm"] = json!(self.tpm);
        let message = self.message();
        v["trustee"] = json!({
            "commands": self.commands(&message),
            "message": message,
            "post": "/kbs/v0/reference-value",
        });
        v
    }

    /// The report as readable text: per PCR its values and the events that made them.
    pub fn text(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let _ = writeln!(s, "event log: {} (TPM: {})", self.log, self.tpm);
        for p in &self.prediction.pcrs {
            let _ = writeln!(
                s,
                "\nPCR {} ({})\n  current {}\n  next    {}{}",
                p.pcr,
                self.prediction.bank,
                hex::encode(&p.current),
                hex::encode(&p.next),
                if p.next == p.current {
                    " (unchanged)"
                } else {
                    ""
                }
            );
            for e in &p.events {
                let name = eventlog::event_type_name(e.event_type)
                    .map_or_else(|| format!("{:#010x}", e.event_type), str::to_owned);
                let text = e
                    .text
                    .as_deref()
                    .map(|t| format!(" {:?}", crate::text::printable(t, 64)))
                    .unwrap_or_default();
                let _ = writeln!(
                    s,
                    "  #{:<4} {name}{text} {}",
                    e.number,
                    hex::encode(&e.digest)
                );
                if let Some((d, by)) = &e.next {
                    let _ = writeln!(s, "        next: {} (from {by})", hex::encode(d));
                }
            }
        }
        let _ = writeln!(
            s,
            "\nRegister every value before rebooting into the update (Trustee keeps a list per name; POST /kbs/v0/reference-value replaces a name's list whole):"
        );
        for c in self.commands(&self.message()) {
            let _ = writeln!(s, "  {c}");
        }
        s
    }
}
