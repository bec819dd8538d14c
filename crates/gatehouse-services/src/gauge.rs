//! The context gauge of each session: the best current figure from the proxy and the client's
//! logs, merged as the seed did, and the alert level it implies.
//!
//! Sources, strongest first: `compile_chat` (the client's own count of what it sent),
//! `api_error` (a provider's rejection quoting the figure), `proxy` / `hybrid` (the gateway's
//! exact count or the provider's usage), `logs` (a loose token line in a log). A figure replaces
//! the current one when it is at least as strong, or when the current one is older than
//! [`MERGE_WINDOW`]. Proxy and log figures that agree within 20 % inside the window make the
//! source `hybrid` (the proxy's exact figure is kept).

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use gatehouse_core::SessionId;
use serde::Serialize;

use crate::logwatch::{LogMetric, MetricKind};

/// How long two figures are taken to describe the same request.
pub const MERGE_WINDOW: Duration = Duration::from_secs(5);
/// How close proxy and log figures must be to confirm each other.
const AGREEMENT: f64 = 0.20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Proxy,
    Logs,
    Hybrid,
    CompileChat,
    ApiError,
}

impl Source {
    fn priority(self) -> u8 {
        match self {
            Self::CompileChat => 4,
            Self::ApiError => 3,
            Self::Proxy | Self::Hybrid => 2,
            Self::Logs => 1,
        }
    }
}

/// Alert thresholds of DESIGN.md §5.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertLevel {
    Caution,
    Warning,
    Critical,
}

impl AlertLevel {
    pub fn of(pct: f64) -> Option<Self> {
        if pct >= 95.0 {
            Some(Self::Critical)
        } else if pct >= 90.0 {
            Some(Self::Warning)
        } else if pct >= 80.0 {
            Some(Self::Caution)
        } else {
            None
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Caution => "caution",
            Self::Warning => "warning",
            Self::Critical => "critical",
        }
    }

    pub fn threshold(self) -> u8 {
        match self {
            Self::Caution => 80,
            Self::Warning => 90,
            Self::Critical => 95,
        }
    }

    pub fn color(self) -> &'static str {
        match self {
            Self::Caution => "#eab308",
            Self::Warning => "#f97316",
            Self::Critical => "#ef4444",
        }
    }
}

/// Gauge colour bands: < 50 % green, < 80 % yellow, else red.
pub fn band(pct: f64) -> &'static str {
    if pct < 50.0 {
        "green"
    } else if pct < 80.0 {
        "yellow"
    } else {
        "red"
    }
}

/// What the dashboard draws.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GaugeView {
    pub session_id: SessionId,
    pub tokens: u64,
    pub max_context: u64,
    pub pct: f64,
    pub band: &'static str,
    pub source: Source,
}

impl GaugeView {
    /// A gauge from stored figures, for sessions with no live figure since start.
    pub fn from_stored(session: &SessionId, tokens: u64, max_context: u64) -> Self {
        let p = pct(tokens, max_context);
        Self {
            session_id: session.clone(),
            tokens,
            max_context,
            pct: p,
            band: band(p),
            source: Source::Proxy,
        }
    }
}

/// An alert level change to announce.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertChange {
    pub level: Option<AlertLevel>,
    pub previous: Option<AlertLevel>,
}

/// A figure and the window it was measured against: a figure about another window (the
/// session switched models) says nothing about this one.
#[derive(Debug, Clone, Copy)]
struct Figure {
    tokens: u64,
    max_context: u64,
    at: Instant,
}

#[derive(Debug)]
struct SessionGauge {
    touched: Instant,
    current: Option<(Figure, Source)>,
    /// The window of the session's latest model, for log figures that do not name one.
    max_context: u64,
    last_proxy: Option<Figure>,
    last_log: Option<Figure>,
    level: Option<AlertLevel>,
}

/// Sessions kept before idle ones are forgotten (their gauge then comes from the database).
const MAX_SESSIONS: usize = 4096;
/// What "idle" means when the map is full.
const IDLE: Duration = Duration::from_secs(600);

/// Gauges of the sessions seen recently.
#[derive(Debug, Default)]
pub struct Gauges {
    sessions: Mutex<HashMap<SessionId, SessionGauge>>,
}

/// The gauge of `session`, created if needed. Looks up before inserting, so the common case
/// (a known session) does not allocate a key.
fn slot<'a>(
    map: &'a mut HashMap<SessionId, SessionGauge>,
    session: &SessionId,
    now: Instant,
) -> Option<&'a mut SessionGauge> {
    if !map.contains_key(session) {
        if map.len() >= MAX_SESSIONS {
            map.retain(|_, g| now.saturating_duration_since(g.touched) < IDLE);
        }
        map.insert(
            session.clone(),
            SessionGauge {
                touched: now,
                current: None,
                max_context: 0,
                last_proxy: None,
                last_log: None,
                level: None,
            },
        );
    }
    let g = map.get_mut(session)?;
    g.touched = now;
    Some(g)
}

fn agree(a: u64, b: u64) -> bool {
    let hi = a.max(b) as f64;
    hi == 0.0 || (a.abs_diff(b) as f64) / hi <= AGREEMENT
}

fn fresh(f: Option<Figure>, now: Instant) -> Option<Figure> {
    f.filter(|f| now.saturating_duration_since(f.at) <= MERGE_WINDOW)
}

impl Gauges {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<SessionId, SessionGauge>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A request of `session` ended with `tokens` in its context (prompt + completion).
    pub fn on_proxy(
        &self,
        session: &SessionId,
        tokens: u64,
        max_context: u64,
        now: Instant,
    ) -> (GaugeView, Option<AlertChange>) {
        let mut map = self.lock();
        let Some(g) = slot(&mut map, session, now) else {
            return (GaugeView::from_stored(session, tokens, max_context), None);
        };
        if max_context > 0 {
            g.max_context = max_context;
        }
        let fig = Figure {
            tokens,
            max_context: g.max_context,
            at: now,
        };
        g.last_proxy = Some(fig);
        let source = match fresh(g.last_log, now) {
            Some(l) if agree(l.tokens, tokens) => Source::Hybrid,
            _ => Source::Proxy,
        };
        offer(g, fig, source, now);
        finish(session, g)
    }

    /// A figure read from a log, attributed to `session`.
    pub fn on_log(
        &self,
        session: &SessionId,
        metric: &LogMetric,
        now: Instant,
    ) -> Option<(GaugeView, Option<AlertChange>)> {
        let tokens = metric.context_tokens()?;
        let mut map = self.lock();
        let g = slot(&mut map, session, now)?;
        if let Some(limit) = metric.context_length.or(metric.limit)
            && limit > 0
        {
            g.max_context = limit;
        }
        let fig = Figure {
            tokens,
            max_context: g.max_context,
            at: now,
        };
        let source = match metric.kind {
            MetricKind::CompileChat => Source::CompileChat,
            MetricKind::ApiError => Source::ApiError,
            MetricKind::Tokens => {
                g.last_log = Some(fig);
                match fresh(g.last_proxy, now) {
                    Some(p) if agree(p.tokens, tokens) => {
                        // Confirmed: keep the exact proxy figure, mark it hybrid.
                        offer(g, p, Source::Hybrid, now);
                        return Some(finish(session, g));
                    }
                    _ => Source::Logs,
                }
            }
        };
        offer(g, fig, source, now);
        Some(finish(session, g))
    }

    /// The gauge of `session`, if it has a figure.
    pub fn view(&self, session: &SessionId) -> Option<GaugeView> {
        let map = self.lock();
        map.get(session).and_then(|g| view(session, g))
    }

    pub fn forget(&self, session: &SessionId) {
        self.lock().remove(session);
    }
}

fn offer(g: &mut SessionGauge, fig: Figure, source: Source, now: Instant) {
    let replace = match g.current {
        None => true,
        Some((cur, cur_source)) => {
            source.priority() >= cur_source.priority()
                || now.saturating_duration_since(cur.at) > MERGE_WINDOW
                || cur.max_context != fig.max_context
        }
    };
    if replace {
        g.current = Some((fig, source));
    }
}

fn pct(tokens: u64, max: u64) -> f64 {
    if max == 0 {
        0.0
    } else {
        (tokens as f64 * 1000.0 / max as f64).round() / 10.0
    }
}

fn view(session: &SessionId, g: &SessionGauge) -> Option<GaugeView> {
    let (fig, source) = g.current?;
    let p = pct(fig.tokens, fig.max_context);
    Some(GaugeView {
        session_id: session.clone(),
        tokens: fig.tokens,
        max_context: fig.max_context,
        pct: p,
        band: band(p),
        source,
    })
}

fn finish(session: &SessionId, g: &mut SessionGauge) -> (GaugeView, Option<AlertChange>) {
    let v = view(session, g).unwrap_or(GaugeView {
        session_id: session.clone(),
        tokens: 0,
        max_context: g.max_context,
        pct: 0.0,
        band: "green",
        source: Source::Proxy,
    });
    let level = AlertLevel::of(v.pct);
    let change = (level != g.level).then_some(AlertChange {
        level,
        previous: g.level,
    });
    g.level = level;
    (v, change)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sid() -> SessionId {
        SessionId::parse_client("s").unwrap()
    }

    fn log(kind: MetricKind, total: u64) -> LogMetric {
        LogMetric {
            kind,
            total_tokens: Some(total),
            ..LogMetric::default()
        }
    }

    #[test]
    fn bands_and_levels_follow_the_design() {
        assert_eq!(band(49.9), "green");
        assert_eq!(band(50.0), "yellow");
        assert_eq!(band(80.0), "red");
        assert_eq!(AlertLevel::of(79.9), None);
        assert_eq!(AlertLevel::of(80.0), Some(AlertLevel::Caution));
        assert_eq!(AlertLevel::of(90.0), Some(AlertLevel::Warning));
        assert_eq!(AlertLevel::of(95.0), Some(AlertLevel::Critical));
    }

    #[test]
    fn alerts_fire_on_level_changes_only() {
        let g = Gauges::new();
        let t = Instant::now();
        let (_, a) = g.on_proxy(&sid(), 500, 1000, t);
        assert_eq!(a, None);
        let (v, a) = g.on_proxy(&sid(), 810, 1000, t);
        assert_eq!(v.pct, 81.0);
        assert_eq!(a.unwrap().level, Some(AlertLevel::Caution));
        let (_, a) = g.on_proxy(&sid(), 850, 1000, t);
        assert_eq!(a, None, "same level: no new alert");
        let (_, a) = g.on_proxy(&sid(), 960, 1000, t);
        let a = a.unwrap();
        assert_eq!(
            (a.previous, a.level),
            (Some(AlertLevel::Caution), Some(AlertLevel::Critical))
        );
        let (_, a) = g.on_proxy(&sid(), 100, 1000, t);
        assert_eq!(a.unwrap().level, None, "falling back is announced too");
    }

    #[test]
    fn proxy_and_logs_that_agree_are_hybrid() {
        let g = Gauges::new();
        let t = Instant::now();
        g.on_proxy(&sid(), 1000, 10_000, t);
        let (v, _) = g
            .on_log(
                &sid(),
                &log(MetricKind::Tokens, 1100),
                t + Duration::from_secs(1),
            )
            .unwrap();
        assert_eq!((v.source, v.tokens), (Source::Hybrid, 1000));
        // Far apart in value: the log figure alone is weaker than the proxy's.
        let g = Gauges::new();
        g.on_proxy(&sid(), 1000, 10_000, t);
        let (v, _) = g.on_log(&sid(), &log(MetricKind::Tokens, 5000), t).unwrap();
        assert_eq!((v.source, v.tokens), (Source::Proxy, 1000));
        // Far apart in time: the log figure stands.
        let (v, _) = g
            .on_log(
                &sid(),
                &log(MetricKind::Tokens, 5000),
                t + Duration::from_secs(6),
            )
            .unwrap();
        assert_eq!((v.source, v.tokens), (Source::Logs, 5000));
    }

    #[test]
    fn compile_chat_outranks_the_proxy_inside_the_window() {
        let g = Gauges::new();
        let t = Instant::now();
        let mut m = log(MetricKind::CompileChat, 7000);
        m.context_length = Some(8000);
        let (v, a) = g.on_log(&sid(), &m, t).unwrap();
        assert_eq!(
            (v.source, v.tokens, v.max_context),
            (Source::CompileChat, 7000, 8000)
        );
        assert_eq!(a.unwrap().level, Some(AlertLevel::Caution));
        let (v, _) = g.on_proxy(&sid(), 6000, 8000, t + Duration::from_secs(2));
        assert_eq!(v.source, Source::CompileChat);
        let (v, _) = g.on_proxy(&sid(), 6100, 8000, t + Duration::from_secs(8));
        assert_eq!((v.source, v.tokens), (Source::Proxy, 6100));
    }

    #[test]
    fn a_figure_about_another_window_is_replaced_at_once() {
        let g = Gauges::new();
        let t = Instant::now();
        let mut m = log(MetricKind::CompileChat, 2000);
        m.context_length = Some(8192);
        g.on_log(&sid(), &m, t).unwrap();
        // The session moves to a 20-token model: the 2000-token figure is not about it.
        let (v, _) = g.on_proxy(&sid(), 19, 20, t + Duration::from_millis(100));
        assert_eq!(
            (v.source, v.tokens, v.max_context, v.pct),
            (Source::Proxy, 19, 20, 95.0)
        );
    }
}
