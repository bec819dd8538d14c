//! Virtual keys (`[auth] mode = "keys"`): who may call the gateway, which models, how often,
//! and for how much.
//!
//! The registry lives in memory and the proxy path consults only it: a request's key is
//! hashed (SHA-256), looked up, checked and its worst case reserved under one short lock of its
//! own key. The database is the record: edits arrive as [`KeyRecord`]s (from the API, or read
//! back by [`Keys::sync`] when the CLI or another instance wrote them), and spend leaves
//! through the writer as [`KeySpend`].
//!
//! Limits count in one-second buckets over a sliding minute: a request counts until the
//! minute after its second ends, at most a second longer than an exact window, never shorter,
//! so a limit is never exceeded.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use base64::Engine;
use gatehouse_core::record::{KeyRecord, KeySpend, TeamRecord};
use gatehouse_core::{ApiError, ErrorKind, Pricing};

/// What every key starts with.
pub const KEY_PREFIX: &str = "gh_";
const WINDOW_SECS: usize = 60;

type Digest = [u8; 32];

/// SHA-256 of a key.
pub fn digest(raw: &str) -> Digest {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, raw.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

pub fn digest_hex(raw: &str) -> String {
    hex(&digest(raw))
}

fn hex(d: &[u8]) -> String {
    use std::fmt::Write;
    d.iter()
        .fold(String::with_capacity(d.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

fn from_hex(s: &str) -> Option<Digest> {
    let mut out = [0u8; 32];
    if s.len() != 64 {
        return None;
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

/// A new key: `gh_` and 32 random bytes in base64url, 46 characters.
pub fn generate() -> Result<String, ApiError> {
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| {
        ApiError::new(
            ErrorKind::Internal,
            "the system's random number generator failed",
        )
    })?;
    Ok(format!(
        "{KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// What a listing shows of a key: its first characters and its last four.
pub fn shown_parts(raw: &str) -> (String, String) {
    let prefix: String = raw.chars().take(KEY_PREFIX.len() + 4).collect();
    let n = raw.chars().count();
    let last4: String = raw.chars().skip(n.saturating_sub(4)).collect();
    (prefix, last4)
}

/// `*` matches any run of characters, `?` one; everything else itself.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        match p.get(pi) {
            Some(b'*') => {
                star = Some((pi, ni));
                pi += 1;
            }
            Some(&c) if c == b'?' || Some(&c) == n.get(ni) => {
                pi += 1;
                ni += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    pi = sp + 1;
                    ni = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    p.get(pi..)
        .is_some_and(|rest| rest.iter().all(|&c| c == b'*'))
}

/// Counts per second over the last minute, with their sum kept as they change: a check reads
/// it at once instead of adding up sixty seconds, twice per meter per request.
#[derive(Debug, Clone, Copy)]
struct Window {
    /// The count of each second in `head - 59 ..= head`, at `second % 60`.
    counts: [u64; WINDOW_SECS],
    /// The newest second counted.
    head: i64,
    total: u64,
}

impl Default for Window {
    fn default() -> Self {
        Self {
            counts: [0; WINDOW_SECS],
            head: 0,
            total: 0,
        }
    }
}

const WINDOW: i64 = WINDOW_SECS as i64;

impl Window {
    fn slot(sec: i64) -> usize {
        usize::try_from(sec.rem_euclid(WINDOW)).unwrap_or(0)
    }

    fn count(&self, sec: i64) -> u64 {
        self.counts.get(Self::slot(sec)).copied().unwrap_or(0)
    }

    /// Moves the window's end to `sec`, forgetting the seconds that leave it.
    fn advance(&mut self, sec: i64) {
        if sec <= self.head {
            return;
        }
        let from = self.head.max(sec - WINDOW) + 1;
        for s in from..=sec {
            if let Some(c) = self.counts.get_mut(Self::slot(s)) {
                self.total = self.total.saturating_sub(*c);
                *c = 0;
            }
        }
        self.head = sec;
    }

    /// Requests or tokens counted in the minute up to `sec`.
    fn used(&mut self, sec: i64) -> u64 {
        self.advance(sec);
        self.total
    }

    fn add(&mut self, sec: i64, n: u64) {
        self.advance(sec);
        // A second older than the window (a clock stepped back) counts as its oldest.
        let sec = sec.max(self.head - WINDOW + 1);
        if let Some(c) = self.counts.get_mut(Self::slot(sec)) {
            *c = c.saturating_add(n);
            self.total = self.total.saturating_add(n);
        }
    }

    /// Takes back `n` counted at `sec`, if that second is still in the window.
    fn sub(&mut self, sec: i64, n: u64) {
        if sec > self.head || self.head - sec >= WINDOW {
            return;
        }
        if let Some(c) = self.counts.get_mut(Self::slot(sec)) {
            let n = n.min(*c);
            *c -= n;
            self.total = self.total.saturating_sub(n);
        }
    }

    /// Seconds, from `sec`, until the oldest second counted leaves the window: when a full
    /// window frees room. Under load the oldest second holds something, so this stops at once.
    fn reset_secs(&self, sec: i64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        (self.head - WINDOW + 1..=self.head)
            .find(|&s| self.count(s) > 0)
            .map_or(0, |s| u64::try_from(s + WINDOW - sec).unwrap_or(0))
    }
}

/// The limits a key and a team both carry.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Limits {
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub max_parallel_requests: Option<u64>,
    pub max_budget_usd: Option<f64>,
    pub budget_period_secs: Option<u64>,
    pub soft_budget_usd: Option<f64>,
}

impl Limits {
    /// Whether anything limits the requests: a key without limits is never refused by them.
    pub fn any(&self) -> bool {
        self.rpm.is_some()
            || self.tpm.is_some()
            || self.max_parallel_requests.is_some()
            || self.max_budget_usd.is_some()
    }

    fn of_key(r: &KeyRecord) -> Self {
        Self {
            rpm: r.rpm,
            tpm: r.tpm,
            max_parallel_requests: r.max_parallel_requests,
            max_budget_usd: r.max_budget_usd,
            budget_period_secs: r.budget_period_secs,
            soft_budget_usd: r.soft_budget_usd,
        }
    }

    fn of_team(r: &TeamRecord) -> Self {
        Self {
            rpm: r.rpm,
            tpm: r.tpm,
            max_parallel_requests: r.max_parallel_requests,
            max_budget_usd: r.max_budget_usd,
            budget_period_secs: r.budget_period_secs,
            soft_budget_usd: r.soft_budget_usd,
        }
    }
}

/// What a key or a team used, under its limits as last edited.
#[derive(Debug)]
struct Usage {
    /// ``key `name` `` or ``team `name` ``, for refusals.
    label: String,
    limits: Limits,
    spend: KeySpend,
    /// Worst cases of requests in flight, in nanodollars: integers, so taking every
    /// reservation back leaves exactly zero.
    reserved: u64,
    requests: Window,
    tokens: Window,
    /// The soft budget was crossed in this period (one alert per period).
    soft_alerted: bool,
}

/// What a check found, for [`Usage::take`].
struct Checked {
    sec: i64,
    used_requests: u64,
    used_tokens: u64,
    nanos: u64,
}

impl Usage {
    /// Whether a request of `tokens` costing at most `usd` fits, `in_flight` counting itself.
    fn check(
        &mut self,
        in_flight: u64,
        tokens: u64,
        usd: f64,
        now_ms: i64,
    ) -> Result<Checked, ApiError> {
        roll_period(self, now_ms);
        let l = self.limits;
        let who = &self.label;
        if let Some(max) = l.max_parallel_requests
            && in_flight > max
        {
            return Err(refuse::parallel(who, max));
        }
        let sec = now_ms.div_euclid(1000);
        let used_requests = self.requests.used(sec);
        if let Some(rpm) = l.rpm
            && used_requests >= rpm
        {
            return Err(refuse::rpm(who, rpm, self.requests.reset_secs(sec)));
        }
        let used_tokens = self.tokens.used(sec);
        if let Some(tpm) = l.tpm
            && used_tokens.saturating_add(tokens) > tpm
        {
            let wait = self.tokens.reset_secs(sec);
            return Err(refuse::tpm(who, tpm, tokens, used_tokens, wait));
        }
        let reserved_usd = nanos_usd(self.reserved);
        if let Some(max) = l.max_budget_usd
            && self.spend.spend_usd + reserved_usd + usd > max
        {
            return Err(refuse::budget(
                who,
                max,
                self.spend,
                reserved_usd,
                usd,
                now_ms,
            ));
        }
        Ok(Checked {
            sec,
            used_requests,
            used_tokens,
            nanos: usd_nanos(usd),
        })
    }

    /// Counts the checked request; what is left of the limits, for the response headers.
    fn take(&mut self, c: &Checked, tokens: u64) -> RateInfo {
        self.requests.add(c.sec, 1);
        self.tokens.add(c.sec, tokens);
        self.reserved = self.reserved.saturating_add(c.nanos);
        RateInfo {
            requests: self.limits.rpm.map(|l| {
                (
                    l,
                    l.saturating_sub(c.used_requests + 1),
                    self.requests.reset_secs(c.sec),
                )
            }),
            tokens: self.limits.tpm.map(|l| {
                (
                    l,
                    l.saturating_sub(c.used_tokens + tokens),
                    self.tokens.reset_secs(c.sec),
                )
            }),
        }
    }

    /// Gives back a reservation (`reserved_tokens` at `sec`, `nanos`).
    fn release(&mut self, sec: i64, reserved_tokens: u64, nanos: u64) {
        self.tokens.sub(sec, reserved_tokens);
        self.reserved = self.reserved.saturating_sub(nanos);
    }
}

/// The refusals of a limit, the same whether this instance or Redis counted it.
pub mod refuse {
    use gatehouse_core::record::KeySpend;
    use gatehouse_core::{ApiError, ErrorKind};

    pub fn parallel(who: &str, max: u64) -> ApiError {
        ApiError::new(
            ErrorKind::TooManyConcurrentRequests,
            format!("{who} has {max} requests in flight already (max_parallel_requests)"),
        )
        .with_retry_after(1)
    }

    /// `wait`: seconds until the window frees room.
    pub fn rpm(who: &str, rpm: u64, wait: u64) -> ApiError {
        let wait = wait.max(1);
        ApiError::new(
            ErrorKind::RateLimitExceeded,
            format!("{who} is at its limit of {rpm} requests per minute; try again in {wait} s"),
        )
        .with_retry_after(wait)
    }

    pub fn tpm(who: &str, tpm: u64, tokens: u64, used: u64, wait: u64) -> ApiError {
        let wait = wait.max(1);
        let message = if tokens > tpm {
            format!(
                "this request may use {tokens} tokens (prompt + max_tokens), more than {who}'s {tpm} tokens per minute; lower max_tokens"
            )
        } else {
            format!(
                "{who} is at its limit of {tpm} tokens per minute ({used} used or reserved, this request may use {tokens}); try again in {wait} s"
            )
        };
        ApiError::new(ErrorKind::RateLimitExceeded, message).with_retry_after(wait)
    }

    pub fn budget(
        who: &str,
        max: f64,
        spend: KeySpend,
        reserved_usd: f64,
        usd: f64,
        now_ms: i64,
    ) -> ApiError {
        let reset = match spend.budget_reset_at {
            Some(at) => format!("; it resets at {}", gatehouse_core::time::rfc3339_ms(at)),
            None => "; it does not reset (no budget_period)".to_owned(),
        };
        let mut e = ApiError::new(
            ErrorKind::BudgetExceeded,
            format!(
                "{who} has spent ${:.6} of its ${max:.6} budget (${reserved_usd:.6} reserved by requests in flight, this one may cost ${usd:.6}){reset}",
                spend.spend_usd
            ),
        );
        if let Some(at) = spend.budget_reset_at {
            e = e.with_retry_after(u64::try_from((at - now_ms).max(1000) / 1000).unwrap_or(1));
        }
        e
    }
}

/// The live state of a key or a team: its usage, and its places among
/// `max_parallel_requests`.
#[derive(Debug)]
struct Meter {
    usage: Mutex<Usage>,
    parallel: AtomicU64,
    /// Spend changed since it was last handed to the writer ([`Keys::take_dirty`]): written
    /// every few seconds, not once per request, so accounting costs the writer nothing extra.
    dirty: AtomicBool,
}

impl Meter {
    fn new(label: String, limits: Limits, spend: KeySpend) -> Arc<Self> {
        Arc::new(Self {
            usage: Mutex::new(Usage {
                label,
                limits,
                soft_alerted: limits
                    .soft_budget_usd
                    .is_some_and(|soft| spend.spend_usd >= soft),
                spend,
                reserved: 0,
                requests: Window::default(),
                tokens: Window::default(),
            }),
            parallel: AtomicU64::new(0),
            dirty: AtomicBool::new(false),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Usage> {
        self.usage.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// New limits from an edit made at `updated_at`.
    fn edit(&self, label: String, limits: Limits, updated_at: i64) {
        let mut u = self.lock();
        // A new period length counts from the edit.
        if u.limits.budget_period_secs != limits.budget_period_secs {
            u.spend.budget_reset_at = limits
                .budget_period_secs
                .map(|p| updated_at.saturating_add(secs_ms(p)));
        }
        u.label = label;
        u.limits = limits;
    }

    /// Spend in the current period, and reservations in flight.
    fn spend(&self, now_ms: i64) -> (KeySpend, f64) {
        let mut u = self.lock();
        roll_period(&mut u, now_ms);
        (u.spend, nanos_usd(u.reserved))
    }

    /// What limits and spend a shared counter starts from: `(label, limits, spend)`.
    fn settings(&self, now_ms: i64) -> (String, Limits, KeySpend) {
        let mut u = self.lock();
        roll_period(&mut u, now_ms);
        (u.label.clone(), u.limits, u.spend)
    }

    /// Spend as counted elsewhere (Redis), for listings and the database. Totals of requests
    /// settled together arrive in any order: within one budget period only a larger one
    /// replaces what the meter shows.
    fn set_spend(&self, spend: KeySpend) {
        let mut u = self.lock();
        let newer = match (spend.budget_reset_at, u.spend.budget_reset_at) {
            (a, b) if a == b => spend.spend_usd > u.spend.spend_usd,
            (Some(a), Some(b)) => a > b,
            // A period added or taken away by an edit.
            _ => true,
        };
        if newer {
            u.spend = spend;
            self.dirty.store(true, Ordering::Release);
        }
    }

    /// Replaces a reservation by what the request used; `counted` is false when the limits
    /// were counted elsewhere (Redis) and only the spend is this meter's to add.
    fn settle(
        &self,
        r: &Held,
        tokens: u64,
        cost_usd: f64,
        now_ms: i64,
        counted: bool,
    ) -> MeterSettled {
        let mut u = self.lock();
        u.release(r.sec, r.tokens, r.nanos);
        if counted {
            u.tokens.add(r.sec, tokens);
        }
        roll_period(&mut u, now_ms);
        let before = u.spend.spend_usd;
        u.spend.spend_usd += cost_usd.max(0.0);
        if cost_usd > 0.0 {
            self.dirty.store(true, Ordering::Release);
        }
        let soft_crossed = match u.limits.soft_budget_usd {
            Some(soft) if !u.soft_alerted && before < soft && u.spend.spend_usd >= soft => {
                u.soft_alerted = true;
                Some((soft, u.limits.max_budget_usd))
            }
            _ => None,
        };
        MeterSettled {
            spend: u.spend,
            soft_crossed,
        }
    }
}

fn secs_ms(secs: u64) -> i64 {
    i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX)
}

/// One key in the registry.
#[derive(Debug)]
pub struct KeyEntry {
    pub id: String,
    /// The key's settings for readers (authentication, model lists): a read lock, so the
    /// requests of one key do not queue on the meter's mutex for them.
    shown: RwLock<Arc<KeyRecord>>,
    /// The key's team, linked when either is applied.
    team: RwLock<Option<Arc<TeamEntry>>>,
    meter: Arc<Meter>,
}

/// One team in the registry.
#[derive(Debug)]
pub struct TeamEntry {
    pub id: String,
    shown: RwLock<Arc<TeamRecord>>,
    meter: Arc<Meter>,
}

impl TeamEntry {
    pub fn record(&self) -> Arc<TeamRecord> {
        self.shown.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Spend in the current period, and reservations in flight.
    pub fn spend(&self, now_ms: i64) -> (KeySpend, f64) {
        self.meter.spend(now_ms)
    }

    /// `(label, limits, spend)`, for a counter shared by instances.
    pub fn settings(&self, now_ms: i64) -> (String, Limits, KeySpend) {
        self.meter.settings(now_ms)
    }

    /// Spend as another counter (Redis) has it.
    pub fn set_spend(&self, spend: KeySpend) {
        self.meter.set_spend(spend);
    }

    /// This team as listings show it.
    pub fn view(&self, now_ms: i64) -> serde_json::Value {
        let (spend, reserved) = self.spend(now_ms);
        let r = self.record();
        let mut v = serde_json::to_value(&*r).unwrap_or_else(|_| serde_json::json!({}));
        if let Some(o) = v.as_object_mut() {
            o.insert("spend_usd".into(), spend.spend_usd.into());
            o.insert("budget_reset_at".into(), spend.budget_reset_at.into());
            o.insert("reserved_usd".into(), reserved.into());
            o.insert(
                "in_flight".into(),
                self.meter.parallel.load(Ordering::Relaxed).into(),
            );
        }
        v
    }
}

/// The tighter of a key's and its team's limits, as response headers show them
/// (`x-ratelimit-*`): `(limit, remaining, reset_secs)`.
#[derive(Debug, Clone, Copy, Default)]
pub struct RateInfo {
    pub requests: Option<(u64, u64, u64)>,
    pub tokens: Option<(u64, u64, u64)>,
}

impl RateInfo {
    pub(crate) fn tighter(self, other: Self) -> Self {
        let pick = |a: Option<(u64, u64, u64)>, b: Option<(u64, u64, u64)>| match (a, b) {
            (Some(a), Some(b)) => Some(if b.1 < a.1 { b } else { a }),
            (a, b) => a.or(b),
        };
        Self {
            requests: pick(self.requests, other.requests),
            tokens: pick(self.tokens, other.tokens),
        }
    }
}

impl KeyEntry {
    pub fn record(&self) -> Arc<KeyRecord> {
        self.shown.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn team(&self) -> Option<Arc<TeamEntry>> {
        self.team.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether the key, and its team, may use `model` (a model key, or `auto/…`).
    pub fn allows(&self, model: &str) -> bool {
        let key = self.shown.read().unwrap_or_else(|p| p.into_inner());
        if !allows(&key.models, model) {
            return false;
        }
        let team = self.team.read().unwrap_or_else(|p| p.into_inner());
        team.as_ref().is_none_or(|t| {
            allows(
                &t.shown.read().unwrap_or_else(|p| p.into_inner()).models,
                model,
            )
        })
    }

    /// The name of the key's team when it is the team's list, not the key's, that leaves
    /// `model` out.
    pub fn team_forbids(&self, model: &str) -> Option<String> {
        let key_allows = allows(
            &self.shown.read().unwrap_or_else(|p| p.into_inner()).models,
            model,
        );
        let t = self.team()?.record();
        (key_allows && !allows(&t.models, model)).then(|| t.name.clone())
    }

    /// Spend in the current period, and reservations in flight.
    pub fn spend(&self, now_ms: i64) -> (KeySpend, f64) {
        self.meter.spend(now_ms)
    }

    /// Requests of this key admitted and not finished.
    pub fn in_flight(&self) -> u64 {
        self.meter.parallel.load(Ordering::Acquire)
    }

    /// `(label, limits, spend)`, for a counter shared by instances.
    pub fn settings(&self, now_ms: i64) -> (String, Limits, KeySpend) {
        self.meter.settings(now_ms)
    }

    /// Spend as another counter (Redis) has it.
    pub fn set_spend(&self, spend: KeySpend) {
        self.meter.set_spend(spend);
    }

    /// A request admitted by a counter shared by instances (Redis): it takes its places here
    /// (so `in_flight` shows it) and reserves nothing; only its spend is added here, and only
    /// if the shared counter cannot take it ([`Reservation::finish_shared`] otherwise).
    pub fn place(self: &Arc<Self>, now_ms: i64) -> Reservation {
        let team = self.team().map(|t| {
            let place = Parallel::take(&t.meter);
            (t, place)
        });
        Reservation {
            key: self.clone(),
            team,
            held: Held {
                sec: now_ms.div_euclid(1000),
                tokens: 0,
                nanos: 0,
            },
            settled: false,
            shared: true,
            _key_place: Parallel::take(&self.meter),
        }
    }

    /// Takes the request's place under the key's limits and its team's: `tokens` is its worst
    /// case (prompt + completion), `price` what that costs at most. Either everything is
    /// reserved, under both, or nothing.
    pub fn admit(
        self: &Arc<Self>,
        tokens: u64,
        price: Option<f64>,
        now_ms: i64,
    ) -> Result<(Reservation, RateInfo), ApiError> {
        let team = self.team();
        let usd = price.unwrap_or(0.0);
        let key_place = Parallel::take(&self.meter);
        // Always the key's lock, then the team's: no one takes them the other way round.
        let mut k = self.meter.lock();
        let kc = k.check(key_place.count, tokens, usd, now_ms)?;
        let mut held_team = None;
        let mut info = RateInfo::default();
        if let Some(t) = &team {
            // Only once the key's own limits passed: a key over them takes no team place.
            let place = Parallel::take(&t.meter);
            let mut tu = t.meter.lock();
            let tc = tu.check(place.count, tokens, usd, now_ms)?;
            info = tu.take(&tc, tokens);
            held_team = Some((t.clone(), place));
        }
        info = k.take(&kc, tokens).tighter(info);
        drop(k);
        Ok((
            Reservation {
                key: self.clone(),
                team: held_team,
                held: Held {
                    sec: kc.sec,
                    tokens,
                    nanos: kc.nanos,
                },
                settled: false,
                shared: false,
                _key_place: key_place,
            },
            info,
        ))
    }
}

fn allows(globs: &[String], model: &str) -> bool {
    globs.is_empty() || globs.iter().any(|g| glob_match(g, model))
}

/// Dollars in nanodollars, rounded up: a reservation is never smaller than its cost.
fn usd_nanos(usd: f64) -> u64 {
    let n = (usd.max(0.0) * 1e9).ceil();
    if n >= u64::MAX as f64 {
        u64::MAX
    } else {
        n as u64
    }
}

fn nanos_usd(n: u64) -> f64 {
    n as f64 / 1e9
}

/// A new budget period when the current one is over.
fn roll_period(u: &mut Usage, now_ms: i64) {
    let (Some(at), Some(period)) = (u.spend.budget_reset_at, u.limits.budget_period_secs) else {
        return;
    };
    if now_ms < at {
        return;
    }
    let period_ms = secs_ms(period).max(1000);
    let periods = (now_ms - at) / period_ms + 1;
    u.spend = KeySpend {
        spend_usd: 0.0,
        budget_reset_at: Some(at.saturating_add(periods.saturating_mul(period_ms))),
    };
    u.soft_alerted = false;
}

/// A place among a key's or a team's `max_parallel_requests`.
#[derive(Debug)]
struct Parallel {
    meter: Arc<Meter>,
    count: u64,
}

impl Parallel {
    fn take(meter: &Arc<Meter>) -> Self {
        // Taken first, checked after: two racing requests cannot both take the last place.
        let count = meter.parallel.fetch_add(1, Ordering::AcqRel) + 1;
        Self {
            meter: meter.clone(),
            count,
        }
    }
}

impl Drop for Parallel {
    fn drop(&mut self) {
        self.meter.parallel.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a reservation holds under each meter: the same worst case under the key and the team.
#[derive(Debug, Clone, Copy)]
struct Held {
    sec: i64,
    tokens: u64,
    nanos: u64,
}

/// A request's reservation under its key and its team: settled with what it used when its
/// row is written; dropped unsettled (refused before upstream), it gives back its tokens and
/// cost.
#[derive(Debug)]
pub struct Reservation {
    key: Arc<KeyEntry>,
    team: Option<(Arc<TeamEntry>, Parallel)>,
    held: Held,
    settled: bool,
    /// Its limits are counted in Redis ([`KeyEntry::place`]).
    shared: bool,
    _key_place: Parallel,
}

/// What settling changed for one key or team.
#[derive(Debug, Clone)]
pub struct MeterSettled {
    pub spend: KeySpend,
    /// The soft budget was crossed by this request: `(soft, max)`.
    pub soft_crossed: Option<(f64, Option<f64>)>,
}

/// What settling a reservation changed.
#[derive(Debug, Clone)]
pub struct Settled {
    pub key: MeterSettled,
    pub team: Option<(Arc<TeamEntry>, MeterSettled)>,
}

impl Reservation {
    pub fn key_id(&self) -> &str {
        &self.key.id
    }

    pub fn team_id(&self) -> Option<&str> {
        self.team.as_ref().map(|(t, _)| t.id.as_str())
    }

    pub fn entry(&self) -> &Arc<KeyEntry> {
        &self.key
    }

    /// Replaces the worst case by what the request used (`tokens`, `cost_usd`), under the key
    /// and its team.
    pub fn settle(mut self, tokens: u64, cost_usd: f64, now_ms: i64) -> Settled {
        self.settled = true;
        let counted = !self.shared;
        let (h, key) = (&self.held, &self.key);
        let key = key.meter.settle(h, tokens, cost_usd, now_ms, counted);
        let team = self.team.as_ref().map(|(t, _)| {
            (
                t.clone(),
                t.meter.settle(h, tokens, cost_usd, now_ms, counted),
            )
        });
        Settled { key, team }
    }

    /// The end of a request whose spend the shared counter took: its totals, as that counter
    /// has them, become this instance's.
    pub fn finish_shared(mut self, key: MeterSettled, team: Option<MeterSettled>) -> Settled {
        self.settled = true;
        self.key.meter.set_spend(key.spend);
        let team = self.team.as_ref().zip(team).map(|((t, _), s)| {
            t.meter.set_spend(s.spend);
            (t.clone(), s)
        });
        Settled { key, team }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let h = self.held;
        self.key.meter.lock().release(h.sec, h.tokens, h.nanos);
        if let Some((t, _)) = &self.team {
            t.meter.lock().release(h.sec, h.tokens, h.nanos);
        }
    }
}

/// Why a presented key is refused, before any limit.
fn refusal(kind: ErrorKind, message: String) -> ApiError {
    ApiError::new(kind, message)
}

/// The registry: every key by digest (its current one, and the previous one during a
/// rotation's grace) and by id, and every team by id.
#[derive(Debug, Default)]
pub struct Keys {
    by_digest: RwLock<HashMap<Digest, (Arc<KeyEntry>, bool)>>,
    by_id: RwLock<HashMap<String, Arc<KeyEntry>>>,
    teams: RwLock<HashMap<String, Arc<TeamEntry>>>,
}

impl Keys {
    pub fn new() -> Self {
        Self::default()
    }

    /// The key a request presented, if it may be used now.
    pub fn authenticate(&self, raw: &str, now_ms: i64) -> Result<Arc<KeyEntry>, ApiError> {
        let unknown = || {
            refusal(
                ErrorKind::InvalidApiKey,
                "this gateway needs a virtual key (Authorization: Bearer gh_… or x-api-key), and this one is not valid".to_owned(),
            )
        };
        if !raw.starts_with(KEY_PREFIX) {
            return Err(unknown());
        }
        let d = digest(raw);
        let found = self
            .by_digest
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&d)
            .cloned();
        let Some((entry, previous)) = found else {
            return Err(unknown());
        };
        let r = entry.record();
        if r.deleted_at.is_some() {
            return Err(unknown());
        }
        if r.blocked {
            return Err(refusal(
                ErrorKind::KeyBlocked,
                format!("key `{}` is blocked", r.name),
            ));
        }
        if let Some(team_id) = &r.team_id {
            // A key whose team this registry does not have is refused: without the team, its
            // limits and budget could not hold.
            let team = entry.team().map(|t| t.record());
            match team {
                Some(t) if t.deleted_at.is_none() && !t.blocked => {}
                Some(t) if t.deleted_at.is_none() => {
                    return Err(refusal(
                        ErrorKind::KeyBlocked,
                        format!(
                            "key `{}` belongs to team `{}`, which is blocked",
                            r.name, t.name
                        ),
                    ));
                }
                _ => {
                    return Err(refusal(
                        ErrorKind::KeyBlocked,
                        format!(
                            "key `{}` belongs to team `{team_id}`, which does not exist",
                            r.name
                        ),
                    ));
                }
            }
        }
        let expired = |at: Option<i64>| at.is_some_and(|at| now_ms >= at);
        if previous && expired(r.previous_expires_at.or(Some(0))) {
            return Err(refusal(
                ErrorKind::KeyExpired,
                format!(
                    "key `{}` was rotated and its grace period is over; use the new key",
                    r.name
                ),
            ));
        }
        if expired(r.expires_at) {
            return Err(refusal(
                ErrorKind::KeyExpired,
                format!(
                    "key `{}` expired at {}",
                    r.name,
                    gatehouse_core::time::rfc3339_ms(r.expires_at.unwrap_or(0))
                ),
            ));
        }
        Ok(entry)
    }

    pub fn get(&self, id: &str) -> Option<Arc<KeyEntry>> {
        self.by_id
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    /// Every key (deleted ones not), oldest first.
    pub fn list(&self) -> Vec<Arc<KeyEntry>> {
        let mut v: Vec<_> = self
            .by_id
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|e| e.record().deleted_at.is_none())
            .cloned()
            .collect();
        v.sort_by_key(|e| (e.record().created_at, e.id.clone()));
        v
    }

    pub fn team(&self, id: &str) -> Option<Arc<TeamEntry>> {
        self.teams
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .filter(|t| t.record().deleted_at.is_none())
            .cloned()
    }

    /// Every team (deleted ones not), oldest first.
    pub fn teams(&self) -> Vec<Arc<TeamEntry>> {
        let mut v: Vec<_> = self
            .teams
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|t| t.record().deleted_at.is_none())
            .cloned()
            .collect();
        v.sort_by_key(|t| (t.record().created_at, t.id.clone()));
        v
    }

    /// The live keys of team `id`.
    pub fn members(&self, team_id: &str) -> Vec<Arc<KeyEntry>> {
        self.list()
            .into_iter()
            .filter(|k| k.record().team_id.as_deref() == Some(team_id))
            .collect()
    }

    /// A team as created or edited; `spend` as for [`Keys::apply`]. Teams are applied before
    /// their keys at start; a team applied later links the keys already naming it.
    pub fn apply_team(&self, record: TeamRecord, spend: Option<KeySpend>) {
        let record = Arc::new(record);
        let label = format!("team `{}`", record.name);
        let mut teams = self.teams.write().unwrap_or_else(|p| p.into_inner());
        let entry = match teams.get(&record.id) {
            Some(t) => {
                let mut shown = t.shown.write().unwrap_or_else(|p| p.into_inner());
                if record.updated_at < shown.updated_at {
                    return;
                }
                t.meter
                    .edit(label, Limits::of_team(&record), record.updated_at);
                *shown = record.clone();
                t.clone()
            }
            None => {
                let spend = with_reset(record.budget_period_secs, record.created_at, spend);
                let t = Arc::new(TeamEntry {
                    id: record.id.clone(),
                    meter: Meter::new(label, Limits::of_team(&record), spend),
                    shown: RwLock::new(record.clone()),
                });
                teams.insert(record.id.clone(), t.clone());
                t
            }
        };
        drop(teams);
        // A deleted team stays linked (and refuses its keys) rather than silently freeing them
        // of its limits.
        for k in self
            .by_id
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            if k.record().team_id.as_deref() == Some(record.id.as_str()) {
                *k.team.write().unwrap_or_else(|p| p.into_inner()) = Some(entry.clone());
            }
        }
    }

    /// A key as created or edited. `spend` is the database's: taken for a key this registry
    /// does not have yet, ignored otherwise (the live count is newer).
    pub fn apply(&self, record: KeyRecord, spend: Option<KeySpend>) {
        let team = record.team_id.as_deref().and_then(|id| {
            self.teams
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(id)
                .cloned()
        });
        let mut by_id = self.by_id.write().unwrap_or_else(|p| p.into_inner());
        let mut by_digest = self.by_digest.write().unwrap_or_else(|p| p.into_inner());
        let record = Arc::new(record);
        let label = format!("key `{}`", record.name);
        let entry = match by_id.get(&record.id) {
            Some(e) => {
                let mut shown = e.shown.write().unwrap_or_else(|p| p.into_inner());
                // The database can hand back a version older than one this process applied
                // and the writer has not stored yet.
                if record.updated_at < shown.updated_at {
                    return;
                }
                for d in [Some(&shown.digest), shown.previous_digest.as_ref()]
                    .into_iter()
                    .flatten()
                    .filter_map(|h| from_hex(h))
                {
                    by_digest.remove(&d);
                }
                e.meter
                    .edit(label, Limits::of_key(&record), record.updated_at);
                *shown = record.clone();
                *e.team.write().unwrap_or_else(|p| p.into_inner()) = team;
                e.clone()
            }
            None => {
                let spend = with_reset(record.budget_period_secs, record.created_at, spend);
                let e = Arc::new(KeyEntry {
                    id: record.id.clone(),
                    meter: Meter::new(label, Limits::of_key(&record), spend),
                    shown: RwLock::new(record.clone()),
                    team: RwLock::new(team),
                });
                by_id.insert(record.id.clone(), e.clone());
                e
            }
        };
        if record.deleted_at.is_some() {
            by_id.remove(&record.id);
            return;
        }
        if let Some(d) = from_hex(&record.digest) {
            by_digest.insert(d, (entry.clone(), false));
        }
        if let Some(d) = record.previous_digest.as_deref().and_then(from_hex) {
            by_digest.insert(d, (entry, true));
        }
    }

    /// The spend of every key whose spend changed since the last call, to persist.
    pub fn take_dirty(&self) -> Vec<(String, KeySpend)> {
        self.by_id
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|e| e.meter.dirty.swap(false, Ordering::AcqRel))
            .map(|e| (e.id.clone(), e.meter.lock().spend))
            .collect()
    }

    /// As [`Keys::take_dirty`], for teams.
    pub fn take_dirty_teams(&self) -> Vec<(String, KeySpend)> {
        self.teams
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|t| t.meter.dirty.swap(false, Ordering::AcqRel))
            .map(|t| (t.id.clone(), t.meter.lock().spend))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.by_id.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `spend`, or none yet, with the end of the first budget period when nothing set one.
fn with_reset(period_secs: Option<u64>, created_at: i64, spend: Option<KeySpend>) -> KeySpend {
    let mut s = spend.unwrap_or(KeySpend {
        spend_usd: 0.0,
        budget_reset_at: None,
    });
    if s.budget_reset_at.is_none() {
        s.budget_reset_at = period_secs.map(|p| created_at.saturating_add(secs_ms(p)));
    }
    s
}

/// The most a request can cost: its prompt and its whole `max_tokens`, at the model's price.
pub fn worst_case_usd(pricing: Option<&Pricing>, prompt: u64, max_tokens: u64) -> Option<f64> {
    pricing.map(|p| p.cost(prompt, max_tokens, 0))
}

/// A key's settings as a person gives them (`gatehouse keys create|update`, `POST /api/keys`,
/// `PATCH /api/keys/{id}`): a field left out stays as it is; `null` clears it.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct KeyChange {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "some")]
    pub owner: Option<Option<String>>,
    /// The team the key belongs to (its id); `null` takes it out.
    #[serde(default, deserialize_with = "some")]
    pub team_id: Option<Option<String>>,
    #[serde(default)]
    pub models: Option<Vec<String>>,
    #[serde(flatten)]
    pub limits: LimitChange,
    /// Epoch milliseconds.
    #[serde(default, deserialize_with = "some")]
    pub expires_at: Option<Option<i64>>,
    /// From now, as `budget_period`.
    #[serde(default)]
    pub expires_in: Option<String>,
    #[serde(default)]
    pub metadata: Option<serde_json::Value>,
    #[serde(default)]
    pub blocked: Option<bool>,
    /// Refused: see [`TeamChange::unknown`].
    #[serde(flatten)]
    pub unknown: std::collections::BTreeMap<String, serde_json::Value>,
}

fn some<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    <Option<T> as serde::Deserialize>::deserialize(d).map(Some)
}

/// `30d`, `12h`, `15m`, `60s` or bare seconds, in seconds.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration: write it as 30d, 12h, 15m or 60s"))?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => {
            return Err(format!(
                "`{s}` is not a duration: write it as 30d, 12h, 15m or 60s"
            ));
        }
    };
    match n.checked_mul(mult) {
        Some(v) if v > 0 && v <= 10 * 365 * 86_400 => Ok(v),
        _ => Err(format!("`{s}` is out of range: between 1 s and 10 years")),
    }
}

fn invalid(message: String) -> ApiError {
    ApiError::new(ErrorKind::InvalidRequest, message)
}

impl KeyChange {
    /// Applies the change to `r` (a new key's defaults, or the key as it is), checking each
    /// value.
    fn apply_to(self, r: &mut KeyRecord, now_ms: i64) -> Result<(), ApiError> {
        no_unknown(&self.unknown)?;
        if let Some(name) = self.name {
            r.name = checked_name(name)?;
        }
        if let Some(owner) = self.owner {
            r.owner = owner.map(|o| o.trim().to_owned()).filter(|o| !o.is_empty());
        }
        if let Some(team) = self.team_id {
            r.team_id = team.map(|t| t.trim().to_owned()).filter(|t| !t.is_empty());
        }
        if let Some(models) = self.models {
            r.models = checked_models(models)?;
        }
        let mut l = Limits::of_key(r);
        self.limits.apply_to(&mut l)?;
        r.rpm = l.rpm;
        r.tpm = l.tpm;
        r.max_parallel_requests = l.max_parallel_requests;
        r.max_budget_usd = l.max_budget_usd;
        r.budget_period_secs = l.budget_period_secs;
        r.soft_budget_usd = l.soft_budget_usd;
        if let Some(at) = self.expires_at {
            r.expires_at = at;
        }
        if let Some(d) = self.expires_in {
            let secs = parse_duration(&d).map_err(|e| invalid(e).with_param("expires_in"))?;
            r.expires_at = Some(now_ms.saturating_add(secs_ms(secs)));
        }
        if let Some(m) = self.metadata {
            r.metadata = checked_metadata(m)?;
        }
        if let Some(b) = self.blocked {
            r.blocked = b;
        }
        r.updated_at = now_ms;
        Ok(())
    }
}

fn checked_name(name: String) -> Result<String, ApiError> {
    let name = name.trim().to_owned();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(invalid("name must be 1 to 100 characters".into()).with_param("name"));
    }
    Ok(name)
}

fn checked_models(models: Vec<String>) -> Result<Vec<String>, ApiError> {
    if models.len() > 1000 || models.iter().any(|m| m.trim().is_empty() || m.len() > 200) {
        return Err(invalid(
            "models must be a list of model keys or globs (`groq/*`), each 1 to 200 characters"
                .into(),
        )
        .with_param("models"));
    }
    Ok(models.into_iter().map(|m| m.trim().to_owned()).collect())
}

fn checked_metadata(m: serde_json::Value) -> Result<serde_json::Value, ApiError> {
    if !m.is_object() {
        return Err(invalid("metadata must be a JSON object".into()).with_param("metadata"));
    }
    Ok(m)
}

/// The limit fields of a key's or a team's change: left out stays, `null` clears.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct LimitChange {
    #[serde(default, deserialize_with = "some")]
    pub rpm: Option<Option<u64>>,
    #[serde(default, deserialize_with = "some")]
    pub tpm: Option<Option<u64>>,
    #[serde(default, deserialize_with = "some")]
    pub max_parallel_requests: Option<Option<u64>>,
    #[serde(default, deserialize_with = "some")]
    pub max_budget_usd: Option<Option<f64>>,
    /// `30d`, `12h`, `90m`, `3600s` (or a number of seconds).
    #[serde(default, deserialize_with = "some")]
    pub budget_period: Option<Option<String>>,
    #[serde(default, deserialize_with = "some")]
    pub soft_budget_usd: Option<Option<f64>>,
}

impl LimitChange {
    fn apply_to(self, l: &mut Limits) -> Result<(), ApiError> {
        let positive =
            |v: Option<Option<u64>>, name: &str| -> Result<Option<Option<u64>>, ApiError> {
                match v {
                    Some(Some(0)) => Err(invalid(format!(
                        "{name} must be at least 1 (null removes the limit)"
                    ))
                    .with_param(name)),
                    v => Ok(v),
                }
            };
        if let Some(v) = positive(self.rpm, "rpm")? {
            l.rpm = v;
        }
        if let Some(v) = positive(self.tpm, "tpm")? {
            l.tpm = v;
        }
        if let Some(v) = positive(self.max_parallel_requests, "max_parallel_requests")? {
            l.max_parallel_requests = v;
        }
        let usd = |v: Option<Option<f64>>, name: &str| -> Result<Option<Option<f64>>, ApiError> {
            match v {
                Some(Some(x)) if !x.is_finite() || x < 0.0 => Err(invalid(format!(
                    "{name} must be a number of dollars, 0 or more"
                ))
                .with_param(name)),
                v => Ok(v),
            }
        };
        if let Some(v) = usd(self.max_budget_usd, "max_budget_usd")? {
            l.max_budget_usd = v;
        }
        if let Some(v) = usd(self.soft_budget_usd, "soft_budget_usd")? {
            l.soft_budget_usd = v;
        }
        if let Some(p) = self.budget_period {
            l.budget_period_secs = match p {
                Some(p) => {
                    Some(parse_duration(&p).map_err(|e| invalid(e).with_param("budget_period"))?)
                }
                None => None,
            };
        }
        Ok(())
    }
}

/// A team's settings as a person gives them (`gatehouse teams create|update`,
/// `POST /api/teams`, `PATCH /api/teams/{id}`): as [`KeyChange`].
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct TeamChange {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub models: Option<Vec<String>>,
    #[serde(flatten)]
    pub limits: LimitChange,
    #[serde(default)]
    pub metadata: Option<serde_json::Value>,
    #[serde(default)]
    pub blocked: Option<bool>,
    /// Whatever the body holds beside the known fields: refused, as a misspelt field would
    /// otherwise be dropped in silence (`deny_unknown_fields` does not work with `flatten`).
    #[serde(flatten)]
    pub unknown: std::collections::BTreeMap<String, serde_json::Value>,
}

/// Refuses the first field nobody knows.
fn no_unknown(
    unknown: &std::collections::BTreeMap<String, serde_json::Value>,
) -> Result<(), ApiError> {
    match unknown.keys().next() {
        Some(k) => Err(invalid(format!("unknown field `{k}`")).with_param(k)),
        None => Ok(()),
    }
}

impl TeamChange {
    fn apply_to(self, r: &mut TeamRecord, now_ms: i64) -> Result<(), ApiError> {
        no_unknown(&self.unknown)?;
        if let Some(name) = self.name {
            r.name = checked_name(name)?;
        }
        if let Some(models) = self.models {
            r.models = checked_models(models)?;
        }
        let mut l = Limits::of_team(r);
        self.limits.apply_to(&mut l)?;
        r.rpm = l.rpm;
        r.tpm = l.tpm;
        r.max_parallel_requests = l.max_parallel_requests;
        r.max_budget_usd = l.max_budget_usd;
        r.budget_period_secs = l.budget_period_secs;
        r.soft_budget_usd = l.soft_budget_usd;
        if let Some(m) = self.metadata {
            r.metadata = checked_metadata(m)?;
        }
        if let Some(b) = self.blocked {
            r.blocked = b;
        }
        r.updated_at = now_ms;
        Ok(())
    }
}

/// A new team from `change` (which must name it).
pub fn create_team(change: TeamChange, now_ms: i64) -> Result<TeamRecord, ApiError> {
    if change.name.is_none() {
        return Err(invalid("a new team needs a name".into()).with_param("name"));
    }
    let mut r = TeamRecord {
        id: format!("team_{}", uuid::Uuid::now_v7().simple()),
        name: String::new(),
        models: Vec::new(),
        rpm: None,
        tpm: None,
        max_parallel_requests: None,
        max_budget_usd: None,
        budget_period_secs: None,
        soft_budget_usd: None,
        blocked: false,
        metadata: serde_json::json!({}),
        created_at: now_ms,
        updated_at: now_ms,
        deleted_at: None,
    };
    change.apply_to(&mut r, now_ms)?;
    Ok(r)
}

/// `r` with `change` applied.
pub fn update_team(
    r: &TeamRecord,
    change: TeamChange,
    now_ms: i64,
) -> Result<TeamRecord, ApiError> {
    let mut r = r.clone();
    change.apply_to(&mut r, now_ms)?;
    Ok(r)
}

/// `r`, deleted.
pub fn delete_team(r: &TeamRecord, now_ms: i64) -> TeamRecord {
    let mut n = r.clone();
    n.deleted_at = Some(now_ms);
    n.updated_at = now_ms;
    n
}

/// A new key from `change` (which must name it): the key itself, shown once, and its record.
pub fn create(change: KeyChange, now_ms: i64) -> Result<(String, KeyRecord), ApiError> {
    if change.name.is_none() {
        return Err(invalid("a new key needs a name".into()).with_param("name"));
    }
    let raw = generate()?;
    let (prefix, last4) = shown_parts(&raw);
    let mut r = KeyRecord {
        id: format!("key_{}", uuid::Uuid::now_v7().simple()),
        name: String::new(),
        digest: digest_hex(&raw),
        prefix,
        last4,
        owner: None,
        team_id: None,
        models: Vec::new(),
        rpm: None,
        tpm: None,
        max_parallel_requests: None,
        max_budget_usd: None,
        budget_period_secs: None,
        soft_budget_usd: None,
        expires_at: None,
        blocked: false,
        metadata: serde_json::json!({}),
        previous_digest: None,
        previous_expires_at: None,
        created_at: now_ms,
        updated_at: now_ms,
        deleted_at: None,
    };
    change.apply_to(&mut r, now_ms)?;
    Ok((raw, r))
}

/// `r` with `change` applied.
pub fn update(r: &KeyRecord, change: KeyChange, now_ms: i64) -> Result<KeyRecord, ApiError> {
    let mut r = r.clone();
    change.apply_to(&mut r, now_ms)?;
    Ok(r)
}

/// A new key for `r`: same id, limits and spend; the old key keeps working for `grace_secs`.
pub fn rotate(
    r: &KeyRecord,
    grace_secs: u64,
    now_ms: i64,
) -> Result<(String, KeyRecord), ApiError> {
    let raw = generate()?;
    let (prefix, last4) = shown_parts(&raw);
    let mut n = r.clone();
    n.previous_digest = (grace_secs > 0).then(|| r.digest.clone());
    n.previous_expires_at = (grace_secs > 0)
        .then(|| now_ms.saturating_add(i64::try_from(grace_secs * 1000).unwrap_or(i64::MAX)));
    n.digest = digest_hex(&raw);
    n.prefix = prefix;
    n.last4 = last4;
    n.updated_at = now_ms;
    Ok((raw, n))
}

/// `r`, deleted.
pub fn delete(r: &KeyRecord, now_ms: i64) -> KeyRecord {
    let mut n = r.clone();
    n.deleted_at = Some(now_ms);
    n.previous_digest = None;
    n.updated_at = now_ms;
    n
}

/// A key as listings show it: never the key, never its digest.
pub fn view(
    r: &KeyRecord,
    spend: &KeySpend,
    reserved_usd: f64,
    in_flight: u64,
) -> serde_json::Value {
    let mut v = serde_json::to_value(r).unwrap_or_else(|_| serde_json::json!({}));
    if let Some(o) = v.as_object_mut() {
        o.insert("shown".into(), format!("{}…{}", r.prefix, r.last4).into());
        o.insert("spend_usd".into(), spend.spend_usd.into());
        o.insert(
            "budget_reset_at".into(),
            with_reset(r.budget_period_secs, r.created_at, Some(*spend))
                .budget_reset_at
                .into(),
        );
        o.insert("reserved_usd".into(), reserved_usd.into());
        o.insert("in_flight".into(), in_flight.into());
    }
    v
}

impl KeyEntry {
    /// This key as listings show it.
    pub fn view(&self, now_ms: i64) -> serde_json::Value {
        let (spend, reserved) = self.spend(now_ms);
        view(
            &self.record(),
            &spend,
            reserved,
            self.meter.parallel.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, raw: &str) -> KeyRecord {
        let (prefix, last4) = shown_parts(raw);
        KeyRecord {
            id: id.to_owned(),
            name: id.to_owned(),
            digest: digest_hex(raw),
            prefix,
            last4,
            owner: None,
            team_id: None,
            models: vec![],
            rpm: None,
            tpm: None,
            max_parallel_requests: None,
            max_budget_usd: None,
            budget_period_secs: None,
            soft_budget_usd: None,
            expires_at: None,
            blocked: false,
            metadata: serde_json::json!({}),
            previous_digest: None,
            previous_expires_at: None,
            created_at: 0,
            updated_at: 0,
            deleted_at: None,
        }
    }

    #[test]
    fn shared_totals_arriving_out_of_order_never_lower_the_spend() {
        let keys = Keys::new();
        keys.apply(record("k", "gh_shared"), None);
        let e = keys.get("k").unwrap_or_else(|| unreachable!());
        let at = |usd: f64, reset: Option<i64>| KeySpend {
            spend_usd: usd,
            budget_reset_at: reset,
        };
        e.set_spend(at(0.5, None));
        e.set_spend(at(0.3, None));
        assert!(
            (e.spend(0).0.spend_usd - 0.5).abs() < 1e-12,
            "an older total is ignored"
        );
        e.set_spend(at(0.7, Some(1_000)));
        e.set_spend(at(0.1, Some(2_000)));
        e.set_spend(at(0.9, Some(1_000)));
        assert_eq!(e.spend(0).0, at(0.1, Some(2_000)), "a newer period wins");
    }

    #[test]
    fn globs() {
        assert!(glob_match("groq/*", "groq/llama-3.3-70b"));
        assert!(!glob_match("groq/*", "openai/gpt-4o"));
        assert!(glob_match("*", "anything"));
        assert!(glob_match("gpt-4o?", "gpt-4o1"));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("a*b*c", "aXXbYY"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("exact", "exact2"));
    }

    #[test]
    fn generated_keys_look_right() -> Result<(), ApiError> {
        let k = generate()?;
        assert!(k.starts_with("gh_"));
        assert_eq!(k.len(), 46);
        assert_ne!(k, generate()?);
        assert_eq!(from_hex(&digest_hex(&k)), Some(digest(&k)));
        Ok(())
    }

    #[test]
    fn authentication_refuses_what_it_should() -> Result<(), ApiError> {
        let keys = Keys::new();
        let raw = generate()?;
        keys.apply(record("k1", &raw), None);
        assert!(keys.authenticate(&raw, 1).is_ok());
        let other = generate()?;
        assert_eq!(
            keys.authenticate(&other, 1).map(|_| ()).unwrap_err().kind,
            ErrorKind::InvalidApiKey
        );
        let mut r = record("k1", &raw);
        r.blocked = true;
        keys.apply(r, None);
        assert_eq!(
            keys.authenticate(&raw, 1).map(|_| ()).unwrap_err().kind,
            ErrorKind::KeyBlocked
        );
        let mut r = record("k1", &raw);
        r.expires_at = Some(10);
        keys.apply(r, None);
        assert!(keys.authenticate(&raw, 9).is_ok());
        assert_eq!(
            keys.authenticate(&raw, 10).map(|_| ()).unwrap_err().kind,
            ErrorKind::KeyExpired
        );
        Ok(())
    }

    #[test]
    fn rotation_keeps_the_old_key_for_its_grace() -> Result<(), ApiError> {
        let keys = Keys::new();
        let old = generate()?;
        keys.apply(record("k1", &old), None);
        let new = generate()?;
        let mut r = record("k1", &new);
        r.previous_digest = Some(digest_hex(&old));
        r.previous_expires_at = Some(1000);
        keys.apply(r, None);
        assert!(keys.authenticate(&new, 5000).is_ok());
        assert!(keys.authenticate(&old, 999).is_ok());
        assert_eq!(
            keys.authenticate(&old, 1000).map(|_| ()).unwrap_err().kind,
            ErrorKind::KeyExpired
        );
        Ok(())
    }

    /// The running sum against a recount of every second, over a long run of adds, takebacks
    /// and idle gaps (time also stepping back a little, as two threads' clocks do).
    #[test]
    fn the_window_sum_matches_a_recount() {
        let mut w = Window::default();
        let mut events: Vec<(i64, u64)> = Vec::new();
        let mut sec = 1_700_000_000_i64;
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..20_000 {
            let r = next();
            sec += match r % 10 {
                0 => 0,
                1 => 90, // idle past the window
                2 => -1,
                _ => (r >> 8) as i64 % 3,
            };
            let head = sec.max(events.iter().map(|e| e.0).max().unwrap_or(sec));
            let n = (r >> 16) % 50;
            if r % 7 == 0 {
                if let Some(&(at, m)) = events.last() {
                    w.sub(at, m);
                    if head - at < 60 {
                        events.pop();
                    }
                }
            } else {
                w.add(sec, n);
                events.push((sec.max(head - 59), n));
            }
            let recount: u64 = events.iter().filter(|e| head - e.0 < 60).map(|e| e.1).sum();
            assert_eq!(w.used(sec), recount);
            let oldest = events
                .iter()
                .filter(|e| head - e.0 < 60 && e.1 > 0)
                .map(|e| e.0)
                .min();
            assert_eq!(
                w.reset_secs(sec),
                oldest.map_or(0, |o| u64::try_from(o + 60 - sec).unwrap())
            );
        }
    }

    #[test]
    fn rpm_holds_and_frees_after_a_minute() -> Result<(), ApiError> {
        let keys = Keys::new();
        let raw = generate()?;
        let mut r = record("k1", &raw);
        r.rpm = Some(3);
        keys.apply(r, None);
        let e = keys.authenticate(&raw, 0)?;
        let mut held = vec![];
        for i in 0..3 {
            held.push(e.admit(1, None, 1000 + i * 100)?);
        }
        let refused = e.admit(1, None, 1500).map(|_| ()).unwrap_err();
        assert_eq!(refused.kind, ErrorKind::RateLimitExceeded);
        assert_eq!(refused.retry_after_secs, Some(60));
        drop(held);
        // Finished requests still count for the minute.
        assert!(e.admit(1, None, 30_000).is_err());
        assert!(e.admit(1, None, 61_000).is_ok());
        Ok(())
    }

    #[test]
    fn budget_reserves_the_worst_case_and_settles_to_the_real_cost() -> Result<(), ApiError> {
        let keys = Keys::new();
        let raw = generate()?;
        let mut r = record("k1", &raw);
        r.max_budget_usd = Some(1.0);
        r.soft_budget_usd = Some(0.5);
        keys.apply(r, None);
        let e = keys.authenticate(&raw, 0)?;
        let (a, _) = e.admit(10, Some(0.4), 0)?;
        let (b, _) = e.admit(10, Some(0.4), 0)?;
        // A third worst case does not fit beside the two in flight.
        assert_eq!(
            e.admit(10, Some(0.4), 0).map(|_| ()).unwrap_err().kind,
            ErrorKind::BudgetExceeded
        );
        let s = a.settle(5, 0.1, 0);
        assert!((s.key.spend.spend_usd - 0.1).abs() < 1e-9);
        assert!(s.key.soft_crossed.is_none());
        // Refused later (dropped unsettled): its reservation is given back.
        drop(b);
        let (c, _) = e.admit(10, Some(0.4), 0)?;
        let s = c.settle(5, 0.45, 0);
        assert_eq!(s.key.soft_crossed, Some((0.5, Some(1.0))));
        assert!(e.admit(10, Some(0.5), 0).is_err());
        assert!(e.admit(10, Some(0.4), 0).is_ok());
        Ok(())
    }

    #[test]
    fn budget_period_starts_again() -> Result<(), ApiError> {
        let keys = Keys::new();
        let raw = generate()?;
        let mut r = record("k1", &raw);
        r.max_budget_usd = Some(1.0);
        r.budget_period_secs = Some(10);
        keys.apply(r, None);
        let e = keys.authenticate(&raw, 0)?;
        let (a, _) = e.admit(1, Some(1.0), 0)?;
        a.settle(1, 1.0, 0);
        assert!(e.admit(1, Some(0.1), 9_999).is_err());
        let (b, _) = e.admit(1, Some(0.1), 10_000)?;
        let s = b.settle(1, 0.1, 10_000);
        assert_eq!(s.key.spend.budget_reset_at, Some(20_000));
        Ok(())
    }

    #[test]
    fn parallel_and_tpm_limits() -> Result<(), ApiError> {
        let keys = Keys::new();
        let raw = generate()?;
        let mut r = record("k1", &raw);
        r.max_parallel_requests = Some(2);
        r.tpm = Some(100);
        keys.apply(r, None);
        let e = keys.authenticate(&raw, 0)?;
        let (a, _) = e.admit(40, None, 0)?;
        let (_b, _) = e.admit(40, None, 0)?;
        assert_eq!(
            e.admit(1, None, 0).map(|_| ()).unwrap_err().kind,
            ErrorKind::TooManyConcurrentRequests
        );
        // `a` used all it reserved: 80 of 100 taken, 30 more does not fit, 20 does.
        a.settle(40, 0.0, 0);
        assert_eq!(
            e.admit(30, None, 0).map(|_| ()).unwrap_err().kind,
            ErrorKind::RateLimitExceeded
        );
        let (_c, info) = e.admit(20, None, 0)?;
        assert_eq!(info.tokens.map(|t| t.1), Some(0));
        Ok(())
    }

    fn team(id: &str) -> TeamRecord {
        TeamRecord {
            id: id.to_owned(),
            name: id.to_owned(),
            models: vec![],
            rpm: None,
            tpm: None,
            max_parallel_requests: None,
            max_budget_usd: None,
            budget_period_secs: None,
            soft_budget_usd: None,
            blocked: false,
            metadata: serde_json::json!({}),
            created_at: 0,
            updated_at: 0,
            deleted_at: None,
        }
    }

    #[test]
    fn a_team_budget_holds_across_its_keys() -> Result<(), ApiError> {
        let keys = Keys::new();
        let mut t = team("t1");
        t.max_budget_usd = Some(1.0);
        t.soft_budget_usd = Some(0.5);
        keys.apply_team(t, None);
        let (a_raw, b_raw) = (generate()?, generate()?);
        for (id, raw) in [("a", &a_raw), ("b", &b_raw)] {
            let mut r = record(id, raw);
            r.team_id = Some("t1".into());
            r.max_budget_usd = Some(0.8);
            keys.apply(r, None);
        }
        let a = keys.authenticate(&a_raw, 0)?;
        let b = keys.authenticate(&b_raw, 0)?;
        let (ra, _) = a.admit(10, Some(0.6), 0)?;
        // Key b has room of its own, the team has not.
        let refused = b.admit(10, Some(0.6), 0).map(|_| ()).unwrap_err();
        assert_eq!(refused.kind, ErrorKind::BudgetExceeded);
        assert!(refused.message.contains("team `t1`"), "{}", refused.message);
        let s = ra.settle(5, 0.55, 0);
        assert!(s.key.soft_crossed.is_none());
        let (t, team_settled) = s.team.expect("the team settled too");
        assert_eq!(t.id, "t1");
        assert_eq!(team_settled.soft_crossed, Some((0.5, Some(1.0))));
        assert!(b.admit(10, Some(0.5), 0).is_err());
        let (rb, _) = b.admit(10, Some(0.4), 0)?;
        drop(rb);
        assert!((keys.team("t1").expect("team").spend(0).1).abs() < 1e-12);
        assert_eq!(keys.take_dirty_teams().len(), 1);
        Ok(())
    }

    #[test]
    fn a_team_narrows_models_and_limits_and_blocks() -> Result<(), ApiError> {
        let keys = Keys::new();
        let raw = generate()?;
        let mut r = record("k", &raw);
        r.team_id = Some("t1".into());
        keys.apply(r, None);
        // The key names a team this registry does not have: refused.
        assert_eq!(
            keys.authenticate(&raw, 0).map(|_| ()).unwrap_err().kind,
            ErrorKind::KeyBlocked
        );
        let mut t = team("t1");
        t.models = vec!["groq/*".into()];
        t.rpm = Some(1);
        t.max_parallel_requests = Some(5);
        keys.apply_team(t.clone(), None);
        let k = keys.authenticate(&raw, 0)?;
        assert!(k.allows("groq/llama"));
        assert!(!k.allows("openai/gpt-4o"));
        let (_held, info) = k.admit(1, None, 0)?;
        assert_eq!(info.requests.map(|r| (r.0, r.1)), Some((1, 0)));
        let refused = k.admit(1, None, 10).map(|_| ()).unwrap_err();
        assert_eq!(refused.kind, ErrorKind::RateLimitExceeded);
        assert!(refused.message.contains("team `t1`"));
        t.blocked = true;
        t.updated_at = 1;
        keys.apply_team(t, None);
        assert_eq!(
            keys.authenticate(&raw, 0).map(|_| ()).unwrap_err().kind,
            ErrorKind::KeyBlocked
        );
        Ok(())
    }

    #[test]
    fn changes_refuse_unknown_fields() {
        let c: Result<KeyChange, _> = serde_json::from_str(r#"{"name":"x","rmp":3}"#);
        let c = c.expect("parses");
        let mut r = record("k", "gh_x");
        assert!(c.apply_to(&mut r, 0).is_err());
        let c: TeamChange =
            serde_json::from_str(r#"{"name":"t","rpm":null,"max_budget_usd":2}"#).expect("parses");
        let t = create_team(c, 0).expect("valid");
        assert_eq!(t.max_budget_usd, Some(2.0));
        assert_eq!(t.rpm, None);
    }
}
