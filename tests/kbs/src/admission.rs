//! Admission control, for load tests only (`cargo xtask bench`'s boot storm): a broker that
//! processes at most [`Admission::max_in_flight`] attestations at once and answers every
//! `POST /kbs/v0/attest` beyond that with `503 Service Unavailable` at once, as a real broker
//! behind an admission limit (or a load balancer in front of a saturated one) does. Each
//! admitted attestation holds its slot for [`Admission::service_ms`] (a fixed service time that
//! stands in for a slower verifier) plus the real verification.
//!
//! With [`Admission::retry_after`] each 503 carries a `Retry-After` (whole seconds, as HTTP
//! has it) from a calendar of the slots the broker has promised: each refusal books the next
//! free share of capacity (the shortest slot time so far / C), and is told the whole seconds
//! until it.
//! That is what a load shedder that knows its capacity can say; the agent honours it.
//!
//! Off by default ([`crate::BrokerConfig::admission`] is `None`); the request counters
//! ([`AdmissionStats`]) are kept either way.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::http::{Action, Request, Response};

/// The limit: at most `max_in_flight` attestations at once, each taking at least `service_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    /// Attestations processed at once; the next one gets 503. At least 1.
    pub max_in_flight: usize,
    /// Fixed extra time an admitted attestation holds its slot, in milliseconds (at most
    /// [`crate::MAX_DELAY`]).
    pub service_ms: u64,
    /// Send `Retry-After` with each 503 (see the module's documentation).
    pub retry_after: bool,
}

/// What the broker has seen since it started (counted with or without an [`Admission`] limit).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AdmissionStats {
    /// `POST /kbs/v0/auth` requests.
    pub auth: u64,
    /// `POST /kbs/v0/attest` requests that were admitted (whatever their outcome).
    pub attest_admitted: u64,
    /// `POST /kbs/v0/attest` requests answered 503 by the limit.
    pub attest_rejected: u64,
    /// `GET /kbs/v0/resource/...` requests.
    pub resource: u64,
    /// Any other request.
    pub other: u64,
    /// The most attestations in flight at once.
    pub peak_in_flight: usize,
    /// Total time admitted attestations held a slot (service time plus verification).
    pub busy: Duration,
}

impl AdmissionStats {
    /// Every request counted.
    pub fn requests(&self) -> u64 {
        self.auth + self.attest_admitted + self.attest_rejected + self.resource + self.other
    }
}

/// The limit and the counters, shared by every connection thread.
pub(crate) struct AdmissionState {
    limit: Option<Admission>,
    in_flight: AtomicUsize,
    peak: AtomicUsize,
    auth: AtomicU64,
    admitted: AtomicU64,
    rejected: AtomicU64,
    resource: AtomicU64,
    other: AtomicU64,
    busy_us: AtomicU64,
    /// The shortest hold of an admitted attestation so far (`u64::MAX`: none done yet).
    min_hold_us: AtomicU64,
    /// The end of the capacity booked by refusals so far (the `Retry-After` calendar).
    booked: Mutex<Option<Instant>>,
}

/// Gives the slot back when the attestation is done, whatever happened.
struct Slot<'a>(&'a AtomicUsize);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl AdmissionState {
    pub(crate) fn new(limit: Option<Admission>) -> AdmissionState {
        AdmissionState {
            limit: limit.map(|l| Admission {
                max_in_flight: l.max_in_flight.max(1),
                service_ms: l.service_ms,
                retry_after: l.retry_after,
            }),
            in_flight: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            auth: AtomicU64::new(0),
            admitted: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            resource: AtomicU64::new(0),
            other: AtomicU64::new(0),
            busy_us: AtomicU64::new(0),
            min_hold_us: AtomicU64::new(u64::MAX),
            booked: Mutex::new(None),
        }
    }

    pub(crate) fn stats(&self) -> AdmissionStats {
        AdmissionStats {
            auth: self.auth.load(Ordering::SeqCst),
            attest_admitted: self.admitted.load(Ordering::SeqCst),
            attest_rejected: self.rejected.load(Ordering::SeqCst),
            resource: self.resource.load(Ordering::SeqCst),
            other: self.other.load(Ordering::SeqCst),
            peak_in_flight: self.peak.load(Ordering::SeqCst),
            busy: Duration::from_micros(self.busy_us.load(Ordering::SeqCst)),
        }
    }

    /// Takes a slot if one is free.
    fn acquire(&self, max: usize) -> Option<Slot<'_>> {
        let mut current = self.in_flight.load(Ordering::SeqCst);
        loop {
            if current >= max {
                return None;
            }
            match self.in_flight.compare_exchange(
                current,
                current + 1,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => {
                    self.peak.fetch_max(current + 1, Ordering::SeqCst);
                    return Some(Slot(&self.in_flight));
                }
                Err(now) => current = now,
            }
        }
    }

    /// Books the next free share of capacity for a refused attestation: the whole seconds
    /// until it (rounded down: the client spreads over the following second).
    fn book(&self, limit: Admission) -> u64 {
        // The broker's best case: the shortest hold so far (the service time before any is
        // done). A mean would count the start of a storm, when every node's TLS handshake
        // slows the broker, against the whole calendar: the first wave would be booked too
        // far out and the broker left idle later. Booking a little beyond the mean capacity
        // costs a few refusals instead.
        let slot = match self.min_hold_us.load(Ordering::SeqCst) {
            u64::MAX => Duration::from_millis(limit.service_ms),
            us => Duration::from_micros(us),
        };
        let share = slot / u32::try_from(limit.max_in_flight).unwrap_or(u32::MAX);
        let now = Instant::now();
        let mut booked = crate::faults::lock(&self.booked);
        let end = booked.map_or(now, |b| b.max(now)) + share;
        *booked = Some(end);
        (end - now).as_secs()
    }

    /// Counts `request`, applies the limit to attestations, and otherwise runs `inner` (the
    /// fault knobs and the real handler).
    pub(crate) fn handle(
        &self,
        request: &Request,
        stopping: &AtomicBool,
        inner: impl FnOnce() -> Action,
    ) -> Action {
        let counter = match (request.method.as_str(), request.path.as_str()) {
            ("POST", "/kbs/v0/auth") => &self.auth,
            ("POST", "/kbs/v0/attest") => return self.attest(stopping, inner),
            ("GET", p) if p.starts_with("/kbs/v0/resource/") => &self.resource,
            _ => &self.other,
        };
        counter.fetch_add(1, Ordering::SeqCst);
        inner()
    }

    fn attest(&self, stopping: &AtomicBool, inner: impl FnOnce() -> Action) -> Action {
        let Some(limit) = self.limit else {
            self.admitted.fetch_add(1, Ordering::SeqCst);
            return inner();
        };
        let Some(_slot) = self.acquire(limit.max_in_flight) else {
            self.rejected.fetch_add(1, Ordering::SeqCst);
            let mut reply = Response::json(
                503,
                &serde_json::json!({
                    "type": format!("{}ServiceUnavailable", crate::api::ERROR_TYPE_PREFIX),
                    "detail": "too many attestations in flight",
                }),
            );
            if limit.retry_after {
                reply.retry_after = Some(self.book(limit));
            }
            return Action::Reply(reply);
        };
        self.admitted.fetch_add(1, Ordering::SeqCst);
        let start = Instant::now();
        let until = start + Duration::from_millis(limit.service_ms).min(crate::MAX_DELAY);
        while Instant::now() < until && !stopping.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(5).min(until - Instant::now()));
        }
        let action = inner();
        let held = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.busy_us.fetch_add(held, Ordering::SeqCst);
        self.min_hold_us.fetch_min(held, Ordering::SeqCst);
        action
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, path: &str) -> Request {
        Request {
            method: method.into(),
            path: path.into(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    fn status(action: &Action) -> u16 {
        match action {
            Action::Reply(r) => r.status,
            _ => 0,
        }
    }

    #[test]
    fn attestations_beyond_the_limit_get_503_and_slots_come_back() {
        let state = AdmissionState::new(Some(Admission {
            max_in_flight: 1,
            service_ms: 0,
            retry_after: false,
        }));
        let stop = AtomicBool::new(false);
        let attest = request("POST", "/kbs/v0/attest");
        let ok = || Action::Reply(Response::json(200, &serde_json::json!({})));
        // While one attestation holds the only slot, a second one is refused.
        let nested = state.handle(&attest, &stop, || {
            let inner = state.handle(&attest, &stop, ok);
            assert_eq!(status(&inner), 503);
            ok()
        });
        assert_eq!(status(&nested), 200);
        // The slot is free again.
        assert_eq!(status(&state.handle(&attest, &stop, ok)), 200);
        state.handle(&request("POST", "/kbs/v0/auth"), &stop, ok);
        state.handle(&request("GET", "/kbs/v0/resource/a/b/c"), &stop, ok);
        let s = state.stats();
        assert_eq!(
            (s.auth, s.attest_admitted, s.attest_rejected, s.resource),
            (1, 2, 1, 1)
        );
        assert_eq!((s.peak_in_flight, s.requests()), (1, 5));
    }

    /// Refusals book capacity one share (slot / C) after another: the n-th refusal is told
    /// the whole seconds until its share, and a reply without the knob has no header.
    #[test]
    fn retry_after_books_the_next_free_share_of_capacity() {
        let state = AdmissionState::new(Some(Admission {
            max_in_flight: 2,
            service_ms: 1000,
            retry_after: true,
        }));
        let stop = AtomicBool::new(false);
        let attest = request("POST", "/kbs/v0/attest");
        let ok = || Action::Reply(Response::json(200, &serde_json::json!({})));
        let mut told = Vec::new();
        // Both slots held (service time 0 inside, so the test is quick): refusals nest.
        let held = state.handle(&attest, &stop, || {
            state.handle(&attest, &stop, || {
                for _ in 0..5 {
                    match state.handle(&attest, &stop, ok) {
                        Action::Reply(r) => told.push((r.status, r.retry_after)),
                        _ => panic!("not a reply"),
                    }
                }
                ok()
            })
        });
        assert_eq!(status(&held), 200);
        // Nothing done yet: the slot is the service time, a share 0.5 s.
        let secs: Vec<u64> = told
            .iter()
            .map(|(s, r)| {
                assert_eq!(*s, 503);
                r.expect("a Retry-After")
            })
            .collect();
        assert!(secs.windows(2).all(|w| w[0] <= w[1]), "{secs:?}");
        // Shares end at 0.5, 1, 1.5, 2, 2.5 s (less the microseconds between the calls).
        assert_eq!(secs, [0, 0, 1, 1, 2]);
    }

    #[test]
    fn without_a_limit_everything_is_admitted_and_counted() {
        let state = AdmissionState::new(None);
        let stop = AtomicBool::new(false);
        let ok = || Action::Reply(Response::json(200, &serde_json::json!({})));
        for _ in 0..3 {
            state.handle(&request("POST", "/kbs/v0/attest"), &stop, ok);
        }
        let s = state.stats();
        assert_eq!((s.attest_admitted, s.attest_rejected), (3, 0));
    }
}
