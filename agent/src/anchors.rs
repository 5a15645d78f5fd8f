//! The trust anchors of a run as one documented measurement event (pure: no I/O).
//!
//! Before its first network byte the agent extends the measurement register its evidence
//! covers (PCR `measure.pcr`, 15 by default, in every active bank; RTMR 3 on TDX) with this
//! event, so the evidence says *which* brokers, CAs and resources this boot was pointed at. A
//! broker that checks the register against the value for its own URL and CA
//! ([`TrustAnchors::register_values`]) refuses evidence that a broker in the middle relayed: that
//! broker's URL or CA is in the event instead. The event is text, one item a line:
//!
//! ```text
//! attest-unlock:trust-anchors:v1
//! broker https://kbs.example:8080 ca-sha256=<hex of the DER of each CA certificate, comma-separated>
//! resource default/<uuid>/root
//! resource default/<uuid>/kubelet
//! init-data sha256=<hex of the init-data body> | init-data none
//! ```
//!
//! Brokers in the order tried, resources in the order fetched (the disk key first), every line
//! ending in `\n`. A register that held zero before holds `H(0^n || H(event))` after the extend.

use crate::formats::HashAlg;

/// The first line of the event, naming its format.
pub(crate) const EVENT_TAG: &str = "attest-unlock:trust-anchors:v1";

/// The event that names this run's trust anchors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustAnchors {
    text: String,
}

impl TrustAnchors {
    /// Build the event from the brokers (URL and the SHA-256 of each CA certificate's DER), the
    /// resource paths and the init-data body.
    pub fn new(
        brokers: &[(&str, Vec<[u8; 32]>)],
        resources: &[&str],
        init_data: Option<&str>,
    ) -> Self {
        use sha2::{Digest, Sha256};
        let mut text = format!("{EVENT_TAG}\n");
        for (url, cas) in brokers {
            let cas: Vec<String> = cas.iter().map(hex::encode).collect();
            let cas = if cas.is_empty() {
                "none".to_owned()
            } else {
                cas.join(",")
            };
            text.push_str(&format!("broker {url} ca-sha256={cas}\n"));
        }
        for r in resources {
            text.push_str(&format!("resource {r}\n"));
        }
        match init_data {
            Some(body) => text.push_str(&format!(
                "init-data sha256={}\n",
                hex::encode(Sha256::digest(body.as_bytes()))
            )),
            None => text.push_str("init-data none\n"),
        }
        TrustAnchors { text }
    }

    /// The event's bytes (what is hashed into the register).
    pub fn event(&self) -> &[u8] {
        self.text.as_bytes()
    }

    /// The event as text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// What each register holds after this event was its only extend: `(register, hex)` for
    /// the TPM banks a verifier reads (`pcr<N>:sha1`, `sha256`, `sha384`) and TDX's RTMR 3.
    pub(crate) fn register_values(&self, pcr: u32) -> Vec<(String, String)> {
        self.register_values_after(pcr, &[])
    }

    /// What each register holds after the events `before`, then this one, from zero (a
    /// command run on a booted node: the boot's anchors and the post-release event came
    /// first).
    pub(crate) fn register_values_after(
        &self,
        pcr: u32,
        before: &[&[u8]],
    ) -> Vec<(String, String)> {
        let events: Vec<&[u8]> = before.iter().copied().chain([self.event()]).collect();
        let mut out = Vec::new();
        for alg in [HashAlg::Sha1, HashAlg::Sha256, HashAlg::Sha384] {
            if let Some(v) = extended(alg, &events) {
                out.push((format!("pcr{pcr:02}:{alg}"), hex::encode(v)));
            }
        }
        if let Some(v) = extended(HashAlg::Sha384, &events) {
            out.push(("rtmr3:sha384".to_owned(), hex::encode(v)));
        }
        out
    }
}

/// `H(0^n || H(event))`: a register of algorithm `alg` after one extend with `event` from
/// its reset value (`None` for an algorithm this build cannot compute).
pub(crate) fn extended_once(alg: HashAlg, event: &[u8]) -> Option<Vec<u8>> {
    extended(alg, &[event])
}

/// A register of algorithm `alg` after extends with `events`, in order, from its reset value.
pub(crate) fn extended(alg: HashAlg, events: &[&[u8]]) -> Option<Vec<u8>> {
    let mut register = vec![0u8; alg.digest_size()?];
    for event in events {
        register.extend(alg.hash(event)?);
        register = alg.hash(&register)?;
    }
    Some(register)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_text_is_the_documented_one() {
        let a = TrustAnchors::new(
            &[("https://kbs:8080", vec![[0xab; 32]]), ("http://b", vec![])],
            &["default/n/root", "default/n/kubelet"],
            Some("version = \"0.1.0\"\n"),
        );
        let want = format!(
            "attest-unlock:trust-anchors:v1\nbroker https://kbs:8080 ca-sha256={}\nbroker http://b ca-sha256=none\nresource default/n/root\nresource default/n/kubelet\ninit-data sha256=",
            "ab".repeat(32)
        );
        assert!(a.text().starts_with(&want), "{}", a.text());
        // `printf 'version = "0.1.0"\n' | sha256sum`
        assert!(a.text().ends_with(
            "init-data sha256=68e1dac0bd73b8731f056297ab05245dc5bdea85cb34263e0977470ea933e20e\n"
        ));
        let none = TrustAnchors::new(&[], &[], None);
        assert!(none.text().ends_with("init-data none\n"));
    }

    #[test]
    fn extended_once_is_hash_of_zeros_and_event_hash() {
        use sha2::{Digest, Sha256};
        let e = b"x";
        let mut input = [0u8; 32].to_vec();
        input.extend(Sha256::digest(e));
        assert_eq!(
            extended_once(HashAlg::Sha256, e).unwrap(),
            Sha256::digest(&input).to_vec()
        );
        assert_eq!(extended_once(HashAlg::Sha1, e).unwrap().len(), 20);
        assert_eq!(extended_once(HashAlg::Sha384, e).unwrap().len(), 48);
    }
}
