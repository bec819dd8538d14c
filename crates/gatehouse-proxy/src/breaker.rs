//! A circuit breaker per provider: after `failures` failed requests in a row it opens and the
//! provider is skipped (requests go to their fallbacks) for `open_secs`; then one request is let
//! through as a probe (half-open), and its outcome closes or reopens the breaker.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
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

#[derive(Debug)]
pub struct Breakers {
    cfg: CircuitBreaker,
    entries: Mutex<HashMap<String, Entry>>,
    /// Some provider has failures or an open breaker. While false (the usual state) a request
    /// checks and reports with one atomic load, no lock.
    dirty: AtomicBool,
}

impl Breakers {
    pub fn new(cfg: CircuitBreaker) -> Self {
        Self {
            cfg,
            entries: Mutex::new(HashMap::new()),
            dirty: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a request may go to `provider` now. Past the open period, the first caller
    /// becomes the probe and the others keep being refused until it reports.
    pub fn admit(&self, provider: &str, now: Instant) -> Result<(), Refused> {
        if self.cfg.failures == 0 || !self.dirty.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut m = self.lock();
        let Some(e) = m.get_mut(provider) else {
            return Ok(());
        };
        match e.open_until {
            None => Ok(()),
            Some(until) if now < until => Err(Refused {
                retry_in: until - now,
            }),
            Some(_) if e.probing => Err(Refused {
                retry_in: Duration::ZERO,
            }),
            Some(_) => {
                e.probing = true;
                Ok(())
            }
        }
    }

    /// A request to `provider` got an answer (a first byte, or a client error that is not the
    /// provider's fault).
    pub fn success(&self, provider: &str) {
        if !self.dirty.load(Ordering::Acquire) {
            return;
        }
        let mut m = self.lock();
        if let Some(e) = m.get_mut(provider) {
            if e.open_until.is_some() {
                tracing::info!(provider, "circuit breaker closed: the probe succeeded");
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
        if reopen || (e.open_until.is_none() && e.failures >= self.cfg.failures) {
            e.open_until = Some(now + Duration::from_secs(self.cfg.open_secs));
            e.probing = false;
            e.opened_total += 1;
            tracing::warn!(
                provider,
                failures = e.failures,
                open_secs = self.cfg.open_secs,
                "circuit breaker open: requests skip this provider"
            );
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
        assert!(b.admit("p", later).is_ok());
        assert!(b.admit("p", later).is_err());
        b.failure("p", later);
        assert_eq!(
            b.view("p", later).state,
            BreakerState::Open,
            "a failed probe reopens"
        );
        assert_eq!(b.view("p", later).opened_total, 2);
        let again = later + Duration::from_secs(11);
        assert!(b.admit("p", again).is_ok());
        b.success("p");
        assert_eq!(b.view("p", again).state, BreakerState::Closed);
        assert!(b.admit("p", again).is_ok());
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
