//! Live state shared by several instances through Redis (`[redis]`): the virtual keys' and
//! teams' rate limits, parallel counts, budget reservations and spend, and the changes to keys,
//! teams and logins that every instance must see at once.
//!
//! Counting happens in two Lua scripts (`shared/*.lua`) on Redis's own clock: admitting a
//! request checks and takes its place under its key and its team in one round trip, all or
//! nothing; settling it gives its reservation back and adds what it used. Each instance keeps
//! its in-memory [`Keys`](crate::Keys) registry for everything else (authentication, model
//! lists, listings), its meters' spend refreshed from Redis's totals as requests end.
//!
//! A request in flight holds a lease in Redis: an instance that dies before settling its
//! requests leaves places and reservations that go when their lease ends (`lease_secs`).
//! While Redis cannot be reached, `on_error` decides: `open` counts under this instance's own
//! meters (the same limits, per instance), `closed` refuses keys that have limits.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use gatehouse_config::{OnError, RedisConfig};
use gatehouse_core::record::{CompactionRecord, KeyRecord, KeySpend, TeamRecord};
use gatehouse_core::{ApiError, ErrorKind};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Script};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc, oneshot};

use crate::keys::{KeyEntry, Limits, MeterSettled, RateInfo, Reservation, Settled, refuse};

pub mod bus;

const COMMON: &str = include_str!("shared/common.lua");

/// Why Redis did not answer.
#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    #[error("Redis did not answer within {0} ms")]
    Timeout(u64),
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("Redis answered something this version does not understand")]
    Reply,
    #[error("Redis could not be reached a moment ago; retried shortly")]
    Down,
}

/// While Redis is down, requests do not each wait for it: one call per this long tries again.
const RETRY_MS: i64 = 1000;

/// The connection to Redis and what the counters need.
pub struct Shared {
    client: Client,
    conn: ConnectionManager,
    prefix: String,
    /// This instance, in request leases and change messages.
    instance: String,
    timeout: Duration,
    lease_ms: u64,
    pub on_error: OnError,
    /// Whether the last call reached Redis.
    up: AtomicBool,
    /// While down: when the next call may try Redis again (epoch ms).
    retry_at: AtomicI64,
    /// Calls that did not, since start.
    pub errors: AtomicU64,
    next: AtomicU64,
    /// `shared/step.lua`: settles, then an admission, in one call.
    step: Script,
    /// Settles waiting to ride along with the next admission (or the flusher's call).
    pending: Mutex<Vec<Pending>>,
    flush: Notify,
    owed: Mutex<Vec<Owed>>,
}

/// The most settles one call carries.
const MAX_BATCH: usize = 64;

/// How long a settle waits for an admission to carry it before a call of its own.
const FLUSH_AFTER: Duration = Duration::from_millis(1);

/// A finished request's settle, waiting for a call to Redis.
struct Pending {
    member: String,
    sec: i64,
    reserved_tokens: u64,
    used_tokens: u64,
    cost_nanos: u64,
    /// Per meter: its keys, period, soft budget and tpm (the settle script's arguments).
    meters: Vec<([String; 2], i64, i64, i64)>,
    done: Option<oneshot::Sender<Result<Vec<i64>, SharedError>>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("prefix", &self.prefix)
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// The shared state `[redis]` names, or none when `url` is empty. Connects lazily: an
    /// instance starts while Redis is down, and reconnects by itself.
    pub fn open(cfg: &RedisConfig, instance: &str) -> Result<Option<Arc<Self>>, String> {
        if cfg.url.is_empty() {
            return Ok(None);
        }
        let client = Client::open(cfg.url.as_str())
            .map_err(|e| format!("[redis] url is not a Redis address: {}", e.detail_or_kind()))?;
        let timeout = Duration::from_millis(cfg.timeout_ms.max(1));
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config)
            .map_err(|e| format!("cannot set up the Redis connection: {}", e.detail_or_kind()))?;
        Ok(Some(Arc::new(Self {
            client,
            conn,
            prefix: cfg.prefix.clone(),
            instance: instance.to_owned(),
            timeout,
            lease_ms: cfg.lease_secs.saturating_mul(1000).max(1000),
            on_error: cfg.on_error,
            up: AtomicBool::new(true),
            retry_at: AtomicI64::new(0),
            errors: AtomicU64::new(0),
            next: AtomicU64::new(0),
            step: Script::new(&format!("{COMMON}\n{}", include_str!("shared/step.lua"))),
            pending: Mutex::new(Vec::new()),
            flush: Notify::new(),
            owed: Mutex::new(Vec::new()),
        })))
        .inspect(|sh| {
            if let (Some(sh), Ok(rt)) = (sh, tokio::runtime::Handle::try_current()) {
                rt.spawn(flusher(Arc::downgrade(sh)));
            }
        })
    }

    /// Spend counted by this instance alone (Redis did not answer): replayed into Redis when
    /// it answers again, so its totals, which every instance shows and stores, include it.
    pub fn owe(&self, key: &Arc<KeyEntry>, cost_usd: f64) {
        let cost_nanos = usd_nanos(cost_usd);
        if cost_nanos == 0 {
            return;
        }
        let mut owed = self.owed.lock().unwrap_or_else(|e| e.into_inner());
        if owed.len() < MAX_OWED {
            owed.push(Owed {
                key: key.clone(),
                cost_nanos,
            });
        }
    }

    /// The spend owed to Redis, added to its totals now; each meter's new total becomes the
    /// instance's.
    async fn repay(&self) {
        let owed: Vec<Owed> = {
            let mut o = self.owed.lock().unwrap_or_else(|e| e.into_inner());
            let n = o.len().min(MAX_BATCH);
            o.drain(..n).collect()
        };
        if owed.is_empty() {
            return;
        }
        let now = gatehouse_core::time::now_ms();
        let mut batch = Vec::with_capacity(owed.len());
        let mut answers = Vec::with_capacity(owed.len());
        for o in &owed {
            let mut meters = vec![Meter::of('k', &o.key.id, o.key.settings(now))];
            if let Some(t) = o.key.team() {
                meters.push(Meter::of('t', &t.id, t.settings(now)));
            }
            let (tx, rx) = oneshot::channel();
            batch.push(Pending {
                // No request of that name holds a place: only the spend is added.
                member: format!("{}:owed:0", self.instance),
                sec: now.div_euclid(1000),
                reserved_tokens: 0,
                used_tokens: 0,
                cost_nanos: o.cost_nanos,
                meters: meters
                    .iter()
                    .map(|m| (self.meter_keys(m.kind, &m.id), period_ms(&m.limits), -1, -1))
                    .collect(),
                done: Some(tx),
            });
            answers.push(rx);
        }
        if self.call(batch, None).await.is_err() {
            // Still away: owed again, in the same order.
            let mut o = self.owed.lock().unwrap_or_else(|e| e.into_inner());
            let rest = std::mem::take(&mut *o);
            *o = owed;
            o.extend(rest);
            return;
        }
        for (o, rx) in owed.iter().zip(answers) {
            let Ok(Ok(values)) = rx.await else { continue };
            let spend = |i: usize| {
                Some(KeySpend {
                    spend_usd: nanos_usd(u64::try_from(*values.get(i * 3)?).unwrap_or(0)),
                    budget_reset_at: values.get(i * 3 + 1).copied().filter(|v| *v >= 0),
                })
            };
            if let Some(s) = spend(0) {
                o.key.set_spend(s);
            }
            if let (Some(t), Some(s)) = (o.key.team(), spend(1)) {
                t.set_spend(s);
            }
        }
    }

    /// Up to [`MAX_BATCH`] waiting settles.
    fn take_pending(&self) -> Vec<Pending> {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let n = p.len().min(MAX_BATCH);
        p.drain(..n).collect()
    }

    /// One call: `batch`'s settles, then the admission `admit` adds (keys and arguments after
    /// the settles'), if any. Each settle gets its values; the rest of the answer is returned.
    async fn call(
        &self,
        mut batch: Vec<Pending>,
        admit: Option<&(dyn Fn(&mut redis::ScriptInvocation<'_>) + Sync)>,
    ) -> Result<Vec<i64>, SharedError> {
        let mut inv = self.step.prepare_invoke();
        inv.arg(batch.len());
        for p in &batch {
            inv.arg(p.meters.len())
                .arg(&p.member)
                .arg(p.sec)
                .arg(p.reserved_tokens)
                .arg(p.used_tokens)
                .arg(p.cost_nanos);
            for (keys, period, soft, tpm) in &p.meters {
                inv.key(&keys[0]).key(&keys[1]);
                inv.arg(*period).arg(*soft).arg(*tpm);
            }
        }
        match admit {
            Some(f) => {
                inv.arg(1);
                f(&mut inv);
            }
            None => {
                inv.arg(0);
            }
        }
        let mut c = self.conn.clone();
        let reply: Result<Vec<i64>, SharedError> = self.bounded(inv.invoke_async(&mut c)).await;
        let reply = match reply {
            Ok(r) => r,
            Err(e) => {
                // Each caller counts its spend here meanwhile; the settles themselves wait for
                // Redis, so the places and reservations they hold there are given back when it
                // answers again, not only when their leases end.
                for p in &mut batch {
                    if let Some(done) = p.done.take() {
                        let _ = done.send(Err(SharedError::Down));
                    }
                }
                let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
                let room = MAX_OWED.saturating_sub(pending.len());
                batch.truncate(room);
                pending.splice(0..0, batch);
                return Err(e);
            }
        };
        let n = reply
            .first()
            .and_then(|n| usize::try_from(*n).ok())
            .ok_or(SharedError::Reply)?;
        let mut values = reply.get(1..=n).ok_or(SharedError::Reply)?.iter();
        for p in &mut batch {
            let mine: Vec<i64> = values.by_ref().take(p.meters.len() * 3).copied().collect();
            if let Some(done) = p.done.take() {
                let _ = done.send(Ok(mine));
            }
        }
        Ok(reply.get(n + 1..).map(<[i64]>::to_vec).unwrap_or_default())
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Whether the last call reached Redis.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// `ok`, or `degraded` while Redis cannot be reached.
    pub fn state(&self) -> &'static str {
        if self.is_up() { "ok" } else { "degraded" }
    }

    /// One round trip, bounded by `timeout_ms`; also what tells a degraded instance that Redis
    /// is back.
    pub async fn ping(&self) -> Result<(), SharedError> {
        let mut c = self.conn.clone();
        let r: Result<String, SharedError> = self
            .bounded(async move { redis::cmd("PING").query_async(&mut c).await })
            .await;
        r.map(drop)
    }

    /// Runs a call within `timeout_ms`, noting whether Redis answered.
    async fn bounded<T>(
        &self,
        f: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, SharedError> {
        let now = gatehouse_core::time::now_ms();
        if !self.is_up() {
            // Only one caller per RETRY_MS finds out whether Redis is back.
            let at = self.retry_at.load(Ordering::Relaxed);
            if now < at
                || self
                    .retry_at
                    .compare_exchange(at, now + RETRY_MS, Ordering::AcqRel, Ordering::Relaxed)
                    .is_err()
            {
                self.errors.fetch_add(1, Ordering::Relaxed);
                return Err(SharedError::Down);
            }
        }
        let r = match tokio::time::timeout(self.timeout, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(SharedError::Redis(e)),
            Err(_) => Err(SharedError::Timeout(
                u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX),
            )),
        };
        let ok = r.is_ok();
        if self.up.swap(ok, Ordering::Relaxed) != ok {
            if ok {
                tracing::info!("Redis answers again: limits and budgets are shared again");
            } else if let Err(e) = &r {
                tracing::warn!(error = %e, on_error = ?self.on_error, "Redis cannot be reached: limits are counted by this instance alone until it is back");
            }
        }
        if !ok {
            self.retry_at.store(now + RETRY_MS, Ordering::Relaxed);
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    fn meter_keys(&self, kind: char, id: &str) -> [String; 2] {
        let h = format!("{}:m:{kind}:{id}", self.prefix);
        let z = format!("{h}:f");
        [h, z]
    }

    fn channel(&self) -> String {
        format!("{}:changes", self.prefix)
    }

    fn events_channel(&self) -> String {
        format!("{}:events", self.prefix)
    }

    /// Checks and takes the request's place under its key's and its team's limits in Redis.
    /// `Ok(Err(_))` is a refusal; `Err(_)` means Redis did not answer.
    async fn try_admit(
        self: &Arc<Self>,
        key: &Arc<KeyEntry>,
        tokens: u64,
        usd: f64,
        now_ms: i64,
    ) -> Result<Result<(Ticket, RateInfo), ApiError>, SharedError> {
        let mut meters = vec![Meter::of('k', &key.id, key.settings(now_ms))];
        if let Some(t) = key.team() {
            meters.push(Meter::of('t', &t.id, t.settings(now_ms)));
        }
        let nanos = usd_nanos(usd);
        // The reservation travels in the name: what a lease that ends gives back.
        let member = format!(
            "{}:{}:{nanos}",
            self.instance,
            self.next.fetch_add(1, Ordering::Relaxed)
        );
        let keys: Vec<[String; 2]> = meters
            .iter()
            .map(|m| self.meter_keys(m.kind, &m.id))
            .collect();
        let add = |inv: &mut redis::ScriptInvocation<'_>| {
            for [h, z] in &keys {
                inv.key(h).key(z);
            }
            inv.arg(&member).arg(tokens).arg(nanos).arg(self.lease_ms);
            for m in &meters {
                let l = &m.limits;
                inv.arg(opt(l.rpm))
                    .arg(opt(l.tpm))
                    .arg(opt(l.max_parallel_requests))
                    .arg(opt_usd(l.max_budget_usd))
                    .arg(period_ms(l))
                    .arg(usd_nanos(m.spend.spend_usd))
                    .arg(m.spend.budget_reset_at.unwrap_or(-1))
                    .arg(opt_usd(l.soft_budget_usd));
            }
        };
        // The settles of requests that just ended ride along: one call per request.
        let reply = self.call(self.take_pending(), Some(&add)).await?;
        let at = |i: usize| reply.get(i).copied().ok_or(SharedError::Reply);
        let code = at(0)?;
        if code != 0 {
            let which = usize::try_from(at(1)?).unwrap_or(1).saturating_sub(1);
            let m = meters.get(which).ok_or(SharedError::Reply)?;
            let u = |i: usize| at(i).map(|v| u64::try_from(v).unwrap_or(0));
            let l = &m.limits;
            let refusal = match code {
                1 => refuse::parallel(&m.label, u(2)?),
                2 => refuse::rpm(&m.label, l.rpm.unwrap_or(0), u(2)?),
                3 => refuse::tpm(&m.label, l.tpm.unwrap_or(0), tokens, u(2)?, u(3)?),
                4 => {
                    let spend = KeySpend {
                        spend_usd: nanos_usd(u(2)?),
                        budget_reset_at: Some(at(4)?).filter(|v| *v >= 0),
                    };
                    let max = l.max_budget_usd.unwrap_or(0.0);
                    refuse::budget(&m.label, max, spend, nanos_usd(u(3)?), usd, now_ms)
                }
                _ => return Err(SharedError::Reply),
            };
            return Ok(Err(refusal));
        }
        let sec = at(1)?;
        let mut rate = RateInfo::default();
        for (i, m) in meters.iter().enumerate() {
            let b = 3 + i * 4;
            let u = |j: usize| at(b + j).map(|v| u64::try_from(v).unwrap_or(0));
            let (used_r, used_t, reset_r, reset_t) = (u(0)?, u(1)?, u(2)?, u(3)?);
            let info = RateInfo {
                requests: m
                    .limits
                    .rpm
                    .map(|l| (l, l.saturating_sub(used_r + 1), reset_r)),
                tokens: m
                    .limits
                    .tpm
                    .map(|l| (l, l.saturating_sub(used_t + tokens), reset_t)),
            };
            rate = if i == 0 { info } else { rate.tighter(info) };
        }
        Ok(Ok((
            Ticket {
                shared: self.clone(),
                member,
                sec,
                tokens,
                meters,
                done: false,
            },
            rate,
        )))
    }

    /// PUBLISH, bounded like every call.
    async fn send(&self, channel: String, message: String) -> Result<(), SharedError> {
        let mut c = self.conn.clone();
        let sent: Result<i64, SharedError> = self
            .bounded(async move {
                redis::cmd("PUBLISH")
                    .arg(channel)
                    .arg(message)
                    .query_async(&mut c)
                    .await
            })
            .await;
        sent.map(drop)
    }

    /// Tells every instance (this one included, which ignores its own) about a change.
    pub fn publish(self: &Arc<Self>, change: Change) {
        let message = match serde_json::to_string(&Envelope {
            from: self.instance.clone(),
            change: change.into_wire(),
        }) {
            Ok(m) => m,
            Err(_) => return,
        };
        let me = self.clone();
        tokio::spawn(async move {
            if let Err(e) = me.send(me.channel(), message).await {
                // The other instances still read it from the database within `auth.sync_secs`.
                tracing::warn!(error = %e, "a key change could not be announced through Redis");
            }
        });
    }

    /// Receives the changes other instances announce, until `tx` is closed. After each
    /// (re)connection it sends [`Incoming::Resync`]: messages published meanwhile were lost,
    /// and the database has them.
    pub async fn listen(self: Arc<Self>, tx: mpsc::Sender<Incoming>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let subscribed = async {
                let mut ps = self.client.get_async_pubsub().await?;
                ps.subscribe(self.channel()).await?;
                Ok::<_, redis::RedisError>(ps)
            };
            match tokio::time::timeout(self.timeout.max(Duration::from_secs(1)), subscribed).await {
                Ok(Ok(ps)) => {
                    backoff = Duration::from_millis(100);
                    if tx.send(Incoming::Resync).await.is_err() {
                        return;
                    }
                    let mut messages = ps.into_on_message();
                    while let Some(msg) = messages.next().await {
                        let Ok(text) = msg.get_payload::<String>() else {
                            continue;
                        };
                        let Ok(env) = serde_json::from_str::<Envelope>(&text) else {
                            tracing::warn!("a change message in Redis could not be read; ignored");
                            continue;
                        };
                        if env.from == self.instance {
                            continue;
                        }
                        let Some(change) = env.change.into_change() else {
                            continue;
                        };
                        if tx.send(Incoming::Change(change)).await.is_err() {
                            return;
                        }
                    }
                    tracing::warn!("the Redis subscription to key changes ended; reconnecting");
                }
                Ok(Err(e)) => {
                    tracing::debug!(error = %e.detail_or_kind(), "cannot subscribe to key changes in Redis yet")
                }
                Err(_) => tracing::debug!("subscribing to key changes in Redis timed out"),
            }
            if tx.is_closed() {
                return;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }
}

trait Detail {
    fn detail_or_kind(&self) -> String;
}

impl Detail for redis::RedisError {
    fn detail_or_kind(&self) -> String {
        self.detail()
            .map_or_else(|| self.category().to_owned(), str::to_owned)
    }
}

fn opt(v: Option<u64>) -> i64 {
    v.map_or(-1, |v| i64::try_from(v).unwrap_or(i64::MAX))
}

fn opt_usd(v: Option<f64>) -> i64 {
    v.map_or(-1, |v| i64::try_from(usd_nanos(v)).unwrap_or(i64::MAX))
}

fn period_ms(l: &Limits) -> i64 {
    l.budget_period_secs.map_or(0, |p| {
        i64::try_from(p.saturating_mul(1000)).unwrap_or(i64::MAX)
    })
}

/// Dollars in nanodollars, rounded up: a reservation is never smaller than its cost. Redis
/// counts integers, so taking every reservation back leaves exactly zero.
fn usd_nanos(usd: f64) -> u64 {
    let n = (usd.max(0.0) * 1e9).ceil();
    if n >= 9.0e15 {
        9_000_000_000_000_000
    } else {
        n as u64
    }
}

fn nanos_usd(n: u64) -> f64 {
    n as f64 / 1e9
}

/// A key's or a team's meter as the scripts see it.
#[derive(Debug, Clone)]
struct Meter {
    kind: char,
    id: String,
    label: String,
    limits: Limits,
    spend: KeySpend,
}

impl Meter {
    fn of(kind: char, id: &str, (label, limits, spend): (String, Limits, KeySpend)) -> Self {
        Self {
            kind,
            id: id.to_owned(),
            label,
            limits,
            spend,
        }
    }
}

/// A request's place and reservation in Redis: settled with what it used, or, dropped
/// unsettled (refused before upstream), given back.
pub struct Ticket {
    shared: Arc<Shared>,
    member: String,
    sec: i64,
    tokens: u64,
    meters: Vec<Meter>,
    done: bool,
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket")
            .field("member", &self.member)
            .finish_non_exhaustive()
    }
}

impl Ticket {
    /// Queues the settle for the next call to Redis; its values (per meter: spend, reset_at,
    /// crossed) when that call answers.
    fn queue(
        &mut self,
        used_tokens: u64,
        cost_usd: f64,
    ) -> oneshot::Receiver<Result<Vec<i64>, SharedError>> {
        self.done = true;
        let (tx, rx) = oneshot::channel();
        let sh = &self.shared;
        let p = Pending {
            member: std::mem::take(&mut self.member),
            sec: self.sec,
            reserved_tokens: self.tokens,
            used_tokens,
            cost_nanos: usd_nanos(cost_usd),
            meters: self
                .meters
                .iter()
                .map(|m| {
                    (
                        sh.meter_keys(m.kind, &m.id),
                        period_ms(&m.limits),
                        opt_usd(m.limits.soft_budget_usd),
                        opt(m.limits.tpm),
                    )
                })
                .collect(),
            done: Some(tx),
        };
        sh.pending.lock().unwrap_or_else(|e| e.into_inner()).push(p);
        sh.flush.notify_one();
        rx
    }

    /// Replaces the reservation by what the request used; per meter, its spend after this
    /// request and whether this request crossed its soft budget.
    async fn settle(
        mut self,
        used_tokens: u64,
        cost_usd: f64,
    ) -> Result<Vec<MeterSettled>, SharedError> {
        let reply = self
            .queue(used_tokens, cost_usd)
            .await
            .map_err(|_| SharedError::Down)??;
        let mut out = Vec::with_capacity(self.meters.len());
        for (i, m) in self.meters.iter().enumerate() {
            let at = |j: usize| reply.get(i * 3 + j).copied().ok_or(SharedError::Reply);
            let l = &m.limits;
            out.push(MeterSettled {
                spend: KeySpend {
                    spend_usd: nanos_usd(u64::try_from(at(0)?).unwrap_or(0)),
                    budget_reset_at: Some(at(1)?).filter(|v| *v >= 0),
                },
                soft_crossed: (at(2)? == 1)
                    .then(|| l.soft_budget_usd.map(|s| (s, l.max_budget_usd)))
                    .flatten(),
            });
        }
        Ok(out)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.done {
            // Refused before upstream: everything given back, nothing used.
            drop(self.queue(0, 0.0));
        }
    }
}

/// Sends the settles no admission picked up within [`FLUSH_AFTER`]. It checks every few
/// seconds whether the state is still in use, so a dropped `Shared` ends it.
async fn flusher(shared: std::sync::Weak<Shared>) {
    loop {
        let Some(sh) = shared.upgrade() else {
            return;
        };
        // Woken by a settle, or once a second while Redis is owed spend or settles.
        let owing = !sh.owed.lock().unwrap_or_else(|e| e.into_inner()).is_empty()
            || !sh
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_empty();
        let wait = if owing { 1 } else { 5 };
        let woken = tokio::time::timeout(Duration::from_secs(wait), sh.flush.notified()).await;
        if owing && sh.is_up() {
            sh.repay().await;
        }
        if woken.is_ok() {
            tokio::time::sleep(FLUSH_AFTER).await;
        }
        loop {
            let batch = sh.take_pending();
            // Unanswered, the batch goes back to wait for Redis (`call`): try again later.
            if batch.is_empty() || sh.call(batch, None).await.is_err() {
                break;
            }
        }
    }
}

/// An admitted request: its local places, the rate headers, and its Redis ticket when the
/// limits were counted there.
#[derive(Debug)]
pub struct Admitted {
    pub reservation: Reservation,
    pub rate: RateInfo,
    pub ticket: Option<Ticket>,
}

/// Admits a request of `key` reserving `tokens` and at most `price` dollars: in Redis when
/// the gateway shares its state, under this instance's meters otherwise (and, with
/// `on_error = "open"`, while Redis cannot be reached).
pub async fn admit(
    shared: Option<&Arc<Shared>>,
    key: &Arc<KeyEntry>,
    tokens: u64,
    price: Option<f64>,
    now_ms: i64,
) -> Result<Admitted, ApiError> {
    let local = || {
        key.admit(tokens, price, now_ms)
            .map(|(reservation, rate)| Admitted {
                reservation,
                rate,
                ticket: None,
            })
    };
    let Some(sh) = shared else {
        return local();
    };
    match sh.try_admit(key, tokens, price.unwrap_or(0.0), now_ms).await {
        Ok(Ok((ticket, rate))) => Ok(Admitted {
            reservation: key.place(now_ms),
            rate,
            ticket: Some(ticket),
        }),
        Ok(Err(refusal)) => Err(refusal),
        Err(_) if sh.on_error == OnError::Closed && limited(key, now_ms) => Err(ApiError::new(
            ErrorKind::LimiterUnavailable,
            "this key's limits are kept in Redis, which cannot be reached right now; try again in a moment",
        )
        .with_retry_after(1)),
        Err(_) => local(),
    }
}

fn limited(key: &Arc<KeyEntry>, now_ms: i64) -> bool {
    key.settings(now_ms).1.any() || key.team().is_some_and(|t| t.settings(now_ms).1.any())
}

/// Ends a request: its reservation replaced by what it used (`tokens`, `cost_usd`) in Redis
/// when it was admitted there, here otherwise. When Redis does not answer, the spend is
/// counted here, and the reservation left in Redis goes with its lease.
pub async fn settle(
    shared: Option<&Arc<Shared>>,
    ticket: Option<Ticket>,
    reservation: Reservation,
    tokens: u64,
    cost_usd: f64,
) -> Settled {
    let now = gatehouse_core::time::now_ms();
    let owe = |r: &Reservation| {
        if let Some(sh) = shared {
            sh.owe(r.entry(), cost_usd);
        }
    };
    let Some(t) = ticket else {
        // Admitted here while Redis was away: Redis owes the spend.
        owe(&reservation);
        return reservation.settle(tokens, cost_usd, now);
    };
    match t.settle(tokens, cost_usd).await {
        Ok(mut meters) if !meters.is_empty() => {
            let key = meters.remove(0);
            reservation.finish_shared(key, meters.pop())
        }
        // Shown here meanwhile; the settle itself reaches Redis when it answers again
        // (`Shared::call`), with its spend.
        Ok(_) | Err(_) => reservation.settle(tokens, cost_usd, gatehouse_core::time::now_ms()),
    }
}

/// Spend counted here while Redis was away, to add to Redis's totals when it is back.
struct Owed {
    key: Arc<KeyEntry>,
    cost_nanos: u64,
}

/// Past this many, the oldest debts are forgotten (their spend stays in this instance's
/// meters and the database).
const MAX_OWED: usize = 100_000;

/// A change another instance must apply.
#[derive(Debug, Clone)]
pub enum Change {
    Key(Box<KeyRecord>),
    Team(Box<TeamRecord>),
    /// A login token logged out (or a refresh family revoked), until it would have expired.
    Revoke {
        jti: String,
        expires_at: i64,
    },
    /// A provider's circuit breaker opened for `open_ms` (or closed: `None`) on an instance.
    Breaker {
        provider: String,
        open_ms: Option<u64>,
    },
    /// A session was compacted: its new compaction point.
    Compaction(Box<CompactionRecord>),
}

/// What comes out of [`Shared::listen`].
#[derive(Debug, Clone)]
pub enum Incoming {
    Change(Change),
    /// Messages may have been missed: read the database again.
    Resync,
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    from: String,
    change: Wire,
}

/// A change on the wire. A key's digests are not serialised with its record (listings must
/// never show them), so they travel beside it: digests of random keys, never the keys.
#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Wire {
    Key {
        record: serde_json::Value,
        digest: String,
        previous_digest: Option<String>,
    },
    Team {
        record: TeamRecord,
    },
    Revoke {
        jti: String,
        expires_at: i64,
    },
    /// A provider's circuit breaker opened for `open_ms` (or closed: `None`) on an instance.
    Breaker {
        provider: String,
        open_ms: Option<u64>,
    },
    Compaction {
        record: Box<CompactionRecord>,
    },
}

impl Change {
    fn into_wire(self) -> Wire {
        match self {
            Self::Key(r) => Wire::Key {
                digest: r.digest.clone(),
                previous_digest: r.previous_digest.clone(),
                record: serde_json::to_value(&r).unwrap_or(serde_json::Value::Null),
            },
            Self::Team(record) => Wire::Team { record: *record },
            Self::Revoke { jti, expires_at } => Wire::Revoke { jti, expires_at },
            Self::Breaker { provider, open_ms } => Wire::Breaker { provider, open_ms },
            Self::Compaction(record) => Wire::Compaction { record },
        }
    }
}

impl Wire {
    fn into_change(self) -> Option<Change> {
        Some(match self {
            Self::Key {
                mut record,
                digest,
                previous_digest,
            } => {
                let o = record.as_object_mut()?;
                o.insert("digest".into(), digest.into());
                o.insert("previous_digest".into(), previous_digest.into());
                Change::Key(Box::new(serde_json::from_value(record).ok()?))
            }
            Self::Team { record } => Change::Team(Box::new(record)),
            Self::Revoke { jti, expires_at } => Change::Revoke { jti, expires_at },
            Self::Breaker { provider, open_ms } => Change::Breaker { provider, open_ms },
            Self::Compaction { record } => Change::Compaction(record),
        })
    }
}
