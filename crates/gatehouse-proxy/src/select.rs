//! Choosing among routes: load balancing across the deployments of one model (weighted,
//! latency-aware, breakers respected), and smart routing for the virtual `auto/<name>` models
//! (candidates scored on context headroom, cost, observed latency and remaining margin).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use gatehouse_config::AutoRoute;
use gatehouse_core::{ApiError, ErrorKind};

use crate::breaker::BreakerState;
use crate::route::{Route, Router};
use crate::upstream::Upstream;

/// Answers assumed when a request sets no `max_tokens`, to estimate its cost.
const ASSUMED_OUTPUT_TOKENS: u64 = 512;

/// A cheap shared random source for the weighted draw (xorshift; quality is not the point).
#[derive(Debug)]
pub struct Dice(AtomicU64);

impl Default for Dice {
    fn default() -> Self {
        Self(AtomicU64::new(0x9E37_79B9_7F4A_7C15))
    }
}

impl Dice {
    /// A number in [0, 1).
    fn roll(&self) -> f64 {
        let mut x = self.0.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0.store(x, Ordering::Relaxed);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn usable(upstream: &Upstream, r: &Route, now: Instant) -> bool {
    upstream.breakers.view(&r.provider_key, now).state != BreakerState::Open
}

/// One of `route` and its deployments: drawn with probability proportional to weight divided by
/// observed latency (a deployment not measured yet counts as the average of the others), among
/// those whose breaker is not open. `route` itself when it has no deployments, or when every
/// one is open (its breaker then answers for it).
pub fn balance(
    router: &Router,
    upstream: &Upstream,
    dice: &Dice,
    route: &Arc<Route>,
    allowed: &dyn Fn(&str) -> bool,
) -> Arc<Route> {
    if route.deployments.is_empty() {
        return route.clone();
    }
    let now = Instant::now();
    let mut pool: Vec<(Arc<Route>, f64)> = Vec::with_capacity(route.deployments.len() + 1);
    if usable(upstream, route, now) {
        pool.push((route.clone(), route.weight));
    }
    for (key, w) in &route.deployments {
        if allowed(key)
            && let Ok(r) = router.resolve(key)
            && usable(upstream, &r, now)
        {
            pool.push((r, *w));
        }
    }
    if pool.is_empty() {
        return route.clone();
    }
    let known: Vec<f64> = pool.iter().filter_map(|(r, _)| r.latency.ms()).collect();
    let mean = if known.is_empty() {
        1.0
    } else {
        known.iter().sum::<f64>() / known.len() as f64
    };
    let shares: Vec<f64> = pool
        .iter()
        .map(|(r, w)| w / r.latency.ms().unwrap_or(mean).max(0.001))
        .collect();
    let total: f64 = shares.iter().sum();
    let mut x = dice.roll() * total;
    for ((r, _), s) in pool.iter().zip(&shares) {
        if x < *s {
            return r.clone();
        }
        x -= s;
    }
    pool.last()
        .map_or_else(|| route.clone(), |(r, _)| r.clone())
}

/// One candidate's scores, each in [0, 1].
#[derive(Debug, Clone)]
pub struct Scored {
    pub route: Arc<Route>,
    pub headroom: f64,
    pub cost: f64,
    pub latency: f64,
    pub margin: f64,
    pub total: f64,
}

/// Scores the candidates of `auto/<name>` for a prompt of `tokens` and picks the best. Skipped:
/// models that cannot be resolved, whose breaker is open, or whose window cannot hold the
/// prompt. Returns the choice and a one-line account for the request row.
pub fn choose_auto(
    router: &Router,
    upstream: &Upstream,
    name: &str,
    auto: &AutoRoute,
    tokens: u64,
    max_tokens: Option<u64>,
    allowed: &dyn Fn(&str) -> bool,
) -> Result<(Arc<Route>, String), ApiError> {
    let now = Instant::now();
    let mut skipped = Vec::new();
    let mut ok: Vec<Arc<Route>> = Vec::new();
    for key in &auto.candidates {
        if !allowed(key) {
            skipped.push(format!("{key}: not allowed for this key"));
            continue;
        }
        match router.resolve(key) {
            Err(e) => skipped.push(format!("{key}: {}", e.kind.code())),
            Ok(r) if !usable(upstream, &r, now) => skipped.push(format!("{key}: breaker open")),
            Ok(r) if tokens.saturating_add(max_tokens.unwrap_or(0)) > r.max_context => {
                skipped.push(format!("{key}: window too small"));
            }
            Ok(r) => ok.push(r),
        }
    }
    if ok.is_empty() {
        return Err(ApiError::new(
            ErrorKind::UpstreamUnreachable,
            format!(
                "no candidate of `auto/{name}` can take this request ({})",
                skipped.join("; ")
            ),
        ));
    }
    let out = max_tokens.unwrap_or(ASSUMED_OUTPUT_TOKENS);
    let cost = |r: &Route| r.pricing.map(|p| p.cost(tokens, out, 0));
    let cheapest = ok
        .iter()
        .filter_map(|r| cost(r))
        .fold(f64::INFINITY, f64::min);
    let fastest = ok
        .iter()
        .filter_map(|r| r.latency.ms())
        .fold(f64::INFINITY, f64::min);
    let w = auto.weights;
    let sum = (w.headroom + w.cost + w.latency + w.margin).max(f64::MIN_POSITIVE);
    let mut scored: Vec<Scored> = ok
        .into_iter()
        .map(|r| {
            let headroom = 1.0 - tokens as f64 / r.max_context.max(1) as f64;
            // Unknown price or latency: the middle of the scale, neither rewarded nor punished.
            let cost = match cost(&r) {
                Some(c) if c > 0.0 => cheapest / c,
                Some(_) => 1.0,
                None => 0.5,
            };
            let latency = r.latency.ms().map_or(0.5, |ms| fastest / ms.max(0.001));
            let limit = upstream
                .rate_limits
                .pct(&r.provider_key, now)
                .map_or(1.0, |pct| (1.0 - pct / 100.0).max(0.0));
            let breaker = match upstream.breakers.view(&r.provider_key, now).state {
                BreakerState::HalfOpen => 0.5,
                _ => 1.0,
            };
            let margin = limit * breaker;
            let total =
                (w.headroom * headroom + w.cost * cost + w.latency * latency + w.margin * margin)
                    / sum;
            Scored {
                route: r,
                headroom,
                cost,
                latency,
                margin,
                total,
            }
        })
        .collect();
    scored.sort_by(|a, b| b.total.total_cmp(&a.total));
    let best = scored
        .first()
        .map(|s| s.route.clone())
        .ok_or_else(|| ApiError::new(ErrorKind::Internal, "no candidate scored"))?;
    let detail: Vec<String> = scored
        .iter()
        .map(|s| {
            format!(
                "{} {:.2} (headroom {:.2}, cost {:.2}, latency {:.2}, margin {:.2})",
                s.route.model_key, s.total, s.headroom, s.cost, s.latency, s.margin
            )
        })
        .collect();
    let mut note = format!(
        "auto/{name} chose `{}`: {}",
        best.model_key,
        detail.join("; ")
    );
    if !skipped.is_empty() {
        note.push_str(&format!("; skipped {}", skipped.join(", ")));
    }
    Ok((best, note))
}
