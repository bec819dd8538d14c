//! Upstream rate-limit protection (the seed's): a provider with `rpm` set gets at most that many
//! requests per rolling minute from this gateway. A request over the limit waits for its turn
//! instead of being refused (the provider would answer 429 anyway, and count it); the state of
//! each limit is `GET /api/rate-limit`, with the seed's levels: warning from 87.5 %, critical
//! from 95 % of the limit.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

const WINDOW: Duration = Duration::from_secs(60);
pub const WARNING_PCT: f64 = 87.5;
pub const CRITICAL_PCT: f64 = 95.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Ok,
    Warning,
    Critical,
}

impl Level {
    fn of(pct: f64) -> Self {
        if pct >= CRITICAL_PCT {
            Self::Critical
        } else if pct >= WARNING_PCT {
            Self::Warning
        } else {
            Self::Ok
        }
    }
}

#[derive(Debug, Default)]
struct Window {
    /// Send times (some in the future: turns already handed out), oldest first.
    sends: VecDeque<Instant>,
    waits: u64,
    waited: Duration,
    level: Option<Level>,
}

/// What a request got from the limiter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Turn {
    /// How long to wait before sending.
    pub wait: Duration,
    /// The level after this request, when it changed.
    pub changed: Option<Level>,
    pub pct: f64,
}

/// One provider's limit, for `/api/rate-limit`.
#[derive(Debug, Clone, Serialize)]
pub struct LimitView {
    pub provider: String,
    pub rpm: u32,
    pub last_minute: usize,
    pub pct: f64,
    pub level: Level,
    /// Requests that had to wait, and how long in all, since start.
    pub waits: u64,
    pub waited_ms: u64,
}

#[derive(Debug)]
pub struct RateLimits {
    limits: HashMap<String, (u32, Mutex<Window>)>,
}

impl RateLimits {
    pub fn new<'a>(limits: impl Iterator<Item = (&'a String, u32)>) -> Self {
        Self {
            limits: limits
                .map(|(k, rpm)| (k.clone(), (rpm, Mutex::new(Window::default()))))
                .collect(),
        }
    }

    /// Takes the next turn for `provider`: at once while under the limit, else when the oldest
    /// send of the window leaves it. `None` for providers without a limit.
    pub fn turn(&self, provider: &str, now: Instant) -> Option<Turn> {
        let (rpm, w) = self.limits.get(provider)?;
        let mut w = w.lock().unwrap_or_else(|p| p.into_inner());
        while w
            .sends
            .front()
            .is_some_and(|t| now.duration_since(*t) >= WINDOW)
        {
            w.sends.pop_front();
        }
        let rpm_usize = usize::try_from(*rpm).unwrap_or(usize::MAX);
        let at = if w.sends.len() < rpm_usize {
            now
        } else {
            // The turn is when the send `rpm` places back leaves the window.
            let back = w.sends.len() - rpm_usize;
            w.sends.get(back).map_or(now, |t| *t + WINDOW).max(now)
        };
        w.sends.push_back(at);
        let wait = at - now;
        if !wait.is_zero() {
            w.waits += 1;
            w.waited += wait;
        }
        let pct = in_window(&w, now) as f64 * 100.0 / f64::from(*rpm);
        let level = Level::of(pct);
        let changed = (w.level != Some(level)).then_some(level);
        w.level = Some(level);
        Some(Turn { wait, changed, pct })
    }

    /// How full `provider`'s limit is now, in percent; `None` without a limit.
    pub fn pct(&self, provider: &str, now: Instant) -> Option<f64> {
        let (rpm, w) = self.limits.get(provider)?;
        let w = w.lock().unwrap_or_else(|p| p.into_inner());
        Some(in_window(&w, now) as f64 * 100.0 / f64::from(*rpm))
    }

    pub fn views(&self, now: Instant) -> Vec<LimitView> {
        let mut out: Vec<LimitView> = self
            .limits
            .iter()
            .map(|(k, (rpm, w))| {
                let w = w.lock().unwrap_or_else(|p| p.into_inner());
                let n = in_window(&w, now);
                let pct = n as f64 * 100.0 / f64::from(*rpm);
                LimitView {
                    provider: k.clone(),
                    rpm: *rpm,
                    last_minute: n,
                    pct,
                    level: Level::of(pct),
                    waits: w.waits,
                    waited_ms: u64::try_from(w.waited.as_millis()).unwrap_or(u64::MAX),
                }
            })
            .collect();
        out.sort_by(|a, b| a.provider.cmp(&b.provider));
        out
    }
}

/// Sends already made in the minute before `now` (turns handed out for later not counted).
fn in_window(w: &Window, now: Instant) -> usize {
    w.sends
        .iter()
        .filter(|t| **t <= now && now.duration_since(**t) < WINDOW)
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn under_the_limit_at_once_then_each_waits_for_a_slot() {
        let key = "p".to_owned();
        let l = RateLimits::new([(&key, 8)].into_iter());
        let t = Instant::now();
        let mut levels = Vec::new();
        for i in 0..8 {
            let turn = l.turn("p", t + Duration::from_secs(i)).unwrap();
            assert!(turn.wait.is_zero());
            if let Some(c) = turn.changed {
                levels.push(c);
            }
        }
        // 7 of 8 = 87.5 %: warning; 8 of 8: critical.
        assert_eq!(levels, [Level::Ok, Level::Warning, Level::Critical]);
        // The 9th waits until the first send (at t) is a minute old; the 10th for the second.
        let now = t + Duration::from_secs(10);
        assert_eq!(l.turn("p", now).unwrap().wait, Duration::from_secs(50));
        assert_eq!(l.turn("p", now).unwrap().wait, Duration::from_secs(51));
        let v = &l.views(now)[0];
        assert_eq!((v.last_minute, v.waits, v.waited_ms), (8, 2, 101_000));
        assert_eq!(v.level, Level::Critical);
        // Later the window slides.
        assert!(
            l.turn("p", t + Duration::from_secs(200))
                .unwrap()
                .wait
                .is_zero()
        );
        assert!(l.turn("other", t).is_none(), "no limit configured");
    }
}
