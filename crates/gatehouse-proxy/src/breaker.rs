//! A circuit breaker per provider: after `failures` failed requests in a row it opens and the
//! provider is skipped (requests go to their fallbacks) for `open_secs`; then one request is let
//! through as a probe (half-open), and its outcome closes or reopens the breaker.
//!
//! With several instances, each breaker's openings and closings are announced
//! ([`Breakers::on_transition`]) and the other instances follow them ([`Breakers::follow`]): a
//! provider failing on one instance is skipped by all, each probing it again on its own once the
//! open period ends.
//!
//! The probe is a [`Ticket`]: a probe whose request is dropped before it reports (its client
//! left, a summary's timeout) gives its turn back when the ticket drops, so the next request
//! probes instead of the provider being refused until restart.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use gatehouse_config::CircuitBreaker;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

#[derive(Debug, Default)]
struct Entry {
    failures: u32,
    open_until: Option<Instant>,
    /// A probe is in flight (half-open).
    probing: bool,
    opened_total: u64,
}

/// What `/api/providers` and `/health` show of one breaker.
#[derive(Debug, Clone, Serialize)]
pub struct BreakerView {
    pub state: BreakerState,
    pub consecutive_failures: u32,
    /// Seconds until a probe is allowed, when open.
    pub retry_in_secs: Option<f64>,
    pub opened_total: u64,
}

/// Why a request may not go to a provider now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Refused {
    pub retry_in: Duration,
}

/// Leave to send a request, from [`Breakers::admit`]. Report the outcome with
/// [`Breakers::success`] or [`Breakers::failure`], then call [`Ticket::reported`]; a probe's
/// ticket dropped unreported hands the probe to the next request.
#[derive(Debug)]
#[must_use = "a probe's ticket must live until its outcome is reported"]
pub struct Ticket<'a> {
    probe: Option<(&'a Breakers, &'a str)>,
}

impl Ticket<'_> {
    /// The outcome was reported: nothing to undo.
    pub fn reported(mut self) {
        self.probe = None;
    }

    pub fn is_probe(&self) -> bool {
        self.probe.is_some()
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if let Some((b, provider)) = self.probe.take() {
            b.abandon_probe(provider);
        }
    }
}

/// A breaker opened (for how long) or closed here: what other instances follow.
#[derive(Debug, Clone, PartialEq)]
pub enum Transition {
    Opened {
        provider: String,
        open_for: Duration,
    },
    Closed {
        provider: String,
    },
}

type Announce = Box<dyn Fn(Transition) + Send + Sync>;

pub struct Breakers {
    cfg: CircuitBreaker,
    entries: Mutex<HashMap<String, Entry>>,
    /// Some provider has failures or an open breaker. While false (the usual state) a request
    /// checks and reports with one atomic load, no lock.
    dirty: AtomicBool,
    announce: OnceLock<Announce>,
}

impl std::fmt::Debug for Breakers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breakers")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl Breakers {
    pub fn new(cfg: CircuitBreaker) -> Self {
        Self {
            cfg,
            entries: Mutex::new(HashMap::new()),
            dirty: AtomicBool::new(false),
            announce: OnceLock::new(),
        }
    }

    /// Calls `f` on each opening and closing decided here (not on those followed).
    pub fn on_transition(&self, f: impl Fn(Transition) + Send + Sync + 'static) {
        let _ = self.announce.set(Box::new(f));
    }

    fn announce(&self, t: Transition) {
        if let Some(f) = self.announce.get() {
            f(t);
        }
    }

    /// Another instance's breaker opened or closed: this one does the same.
    pub fn follow(&self, t: &Transition, now: Instant) {
        if self.cfg.failures == 0 {
            return;
        }
        let mut m = self.lock();
        match t {
            Transition::Opened { provider, open_for } => {
                self.dirty.store(true, Ordering::Release);
                let e = m.entry(provider.clone()).or_default();
                let until = now + *open_for;
                if e.open_until.is_none_or(|u| u < until) {
                    e.open_until = Some(until);
                    e.failures = e.failures.max(self.cfg.failures);
                    e.probing = false;
                    e.opened_total += 1;
                    tracing::warn!(provider = %provider, "circuit breaker open on another instance: requests skip this provider here too");
                }
            }
            Transition::Closed { provider } => {
                if let Some(e) = m.get_mut(provider.as_str())
                    && (e.open_until.is_some() || e.failures > 0)
                {
                    e.failures = 0;
                    e.open_until = None;
                    e.probing = false;
                    tracing::info!(provider = %provider, "circuit breaker closed on another instance");
                }
                if m.values()
                    .all(|e| e.failures == 0 && e.open_until.is_none())
                {
                    self.dirty.store(false, Ordering::Release);
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a request may go to `provider` now. Past the open period, the first caller
    /// becomes the probe and the others keep being refused until it reports, or until its
    /// ticket is dropped unreported.
    pub fn admit<'a>(&'a self, provider: &'a str, now: Instant) -> Result<Ticket<'a>, Refused> {
        let plain = Ticket { probe: None };
        if self.cfg.failures == 0 || !self.dirty.load(Ordering::Acquire) {
            return Ok(plain);
        }
        let mut m = self.lock();
        let Some(e) = m.get_mut(provider) else {
            return Ok(plain);
        };
        match e.open_until {
            None => Ok(plain),
            Some(until) if now < until => Err(Refused {
                retry_in: until - now,
            }),
            Some(_) if e.probing => Err(Refused {
                retry_in: Duration::ZERO,
            }),
            Some(_) => {
                e.probing = true;
                Ok(Ticket {
                    probe: Some((self, provider)),
                })
            }
        }
    }

    /// A probe that ended without a report: the next request may probe.
    fn abandon_probe(&self, provider: &str) {
        let mut m = self.lock();
        if let Some(e) = m.get_mut(provider)
            && e.probing
        {
            e.probing = false;
            tracing::debug!(
                provider,
                "the circuit breaker's probe was abandoned; the next request probes"
            );
        }
    }

    /// A request to `provider` got an answer (a first byte, or a client error that is not the
    /// provider's fault).
    pub fn success(&self, provider: &str) {
        if !self.dirty.load(Ordering::Acquire) {
            return;
        }
        let mut m = self.lock();
        let mut closed = false;
        if let Some(e) = m.get_mut(provider) {
            if e.open_until.is_some() {
                tracing::info!(provider, "circuit breaker closed: the probe succeeded");
                closed = true;
            }
            e.failures = 0;
            e.open_until = None;
            e.probing = false;
        }
        if m.values()
            .all(|e| e.failures == 0 && e.open_until.is_none())
        {
            self.dirty.store(false, Ordering::Release);
        }
        drop(m);
        if closed {
            self.announce(Transition::Closed {
                provider: provider.to_owned(),
            });
        }
    }

    /// A request to `provider` failed after its retries.
    pub fn failure(&self, provider: &str, now: Instant) {
        if self.cfg.failures == 0 {
            return;
        }
        let mut m = self.lock();
        self.dirty.store(true, Ordering::Release);
        let e = m.entry(provider.to_owned()).or_default();
        e.failures += 1;
        let reopen = e.probing;
        let open_for = Duration::from_secs(self.cfg.open_secs);
        let opened = reopen || (e.open_until.is_none() && e.failures >= self.cfg.failures);
        if opened {
            e.open_until = Some(now + open_for);
            e.probing = false;
            e.opened_total += 1;
            tracing::warn!(
                provider,
                failures = e.failures,
                open_secs = self.cfg.open_secs,
                "circuit breaker open: requests skip this provider"
            );
        }
        drop(m);
        if opened {
            self.announce(Transition::Opened {
                provider: provider.to_owned(),
                open_for,
            });
        }
    }

    pub fn view(&self, provider: &str, now: Instant) -> BreakerView {
        let m = self.lock();
        match m.get(provider) {
            None => BreakerView {
                state: BreakerState::Closed,
                consecutive_failures: 0,
                retry_in_secs: None,
                opened_total: 0,
            },
            Some(e) => {
                let state = match e.open_until {
                    None => BreakerState::Closed,
                    Some(until) if now < until => BreakerState::Open,
                    Some(_) => BreakerState::HalfOpen,
                };
                BreakerView {
                    state,
                    consecutive_failures: e.failures,
                    retry_in_secs: e
                        .open_until
                        .filter(|u| now < *u)
                        .map(|u| (u - now).as_secs_f64()),
                    opened_total: e.opened_total,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_n_failures_probes_once_then_closes_or_reopens() {
        let b = Breakers::new(CircuitBreaker {
            failures: 3,
            open_secs: 10,
        });
        let t = Instant::now();
        for _ in 0..2 {
            b.failure("p", t);
        }
        assert!(b.admit("p", t).is_ok(), "two failures: still closed");
        b.success("p");
        for _ in 0..2 {
            b.failure("p", t);
        }
        assert!(b.admit("p", t).is_ok(), "a success resets the count");
        b.failure("p", t);
        assert_eq!(b.view("p", t).state, BreakerState::Open);
        assert!(b.admit("p", t + Duration::from_secs(9)).is_err());
        assert!(b.admit("other", t).is_ok(), "per provider");
        // Half-open: one probe, the others wait for it.
        let later = t + Duration::from_secs(11);
        assert_eq!(b.view("p", later).state, BreakerState::HalfOpen);
        let probe = b.admit("p", later).unwrap();
        assert!(probe.is_probe());
        assert!(b.admit("p", later).is_err());
        b.failure("p", later);
        probe.reported();
        assert_eq!(
            b.view("p", later).state,
            BreakerState::Open,
            "a failed probe reopens"
        );
        assert_eq!(b.view("p", later).opened_total, 2);
        let again = later + Duration::from_secs(11);
        let probe = b.admit("p", again).unwrap();
        b.success("p");
        probe.reported();
        assert_eq!(b.view("p", again).state, BreakerState::Closed);
        assert!(b.admit("p", again).is_ok());
    }

    #[test]
    fn an_abandoned_probe_hands_over_to_the_next_request() {
        let b = Breakers::new(CircuitBreaker {
            failures: 1,
            open_secs: 10,
        });
        let t = Instant::now();
        b.failure("p", t);
        let later = t + Duration::from_secs(11);
        let probe = b.admit("p", later).unwrap();
        assert!(b.admit("p", later).is_err(), "one probe at a time");
        drop(probe); // its request was cancelled before it reported
        let next = b.admit("p", later).unwrap();
        assert!(next.is_probe(), "the next request probes");
        b.success("p");
        next.reported();
        assert_eq!(b.view("p", later).state, BreakerState::Closed);
    }

    #[test]
    fn zero_failures_disables_it() {
        let b = Breakers::new(CircuitBreaker {
            failures: 0,
            open_secs: 10,
        });
        let t = Instant::now();
        for _ in 0..100 {
            b.failure("p", t);
        }
        assert!(b.admit("p", t).is_ok());
    }
}
