//! The event bus: everything the gateway wants the dashboard (or any other listener) to know.
//!
//! Publishing never blocks and never allocates when nobody listens. Listeners share one bounded
//! ring: a listener that falls more than a ring's length behind is told how many events it missed
//! (and the WebSocket layer resynchronises it) instead of making the gateway wait or grow.
//! [`EventBus`] is the seam where a Redis bridge for several instances plugs in later.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use gatehouse_core::SessionId;
use gatehouse_core::record::{CompactionRecord, RequestRecord, Session};
use serde::Serialize;
use tokio::sync::broadcast;

use crate::gauge::{AlertLevel, GaugeView};
use crate::logwatch::LogMetric;

/// One thing that happened. Serialised with a `type` tag, documented in `docs/websocket.md`.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A request was accepted and routed; its row comes with `metric` when it ends.
    RequestStarted {
        request_id: String,
        session_id: SessionId,
        model: String,
        provider: String,
        upstream_model: String,
        stream: bool,
        prompt_tokens_est: u64,
        max_context: u64,
    },
    /// A request ended (any way): its row, and the session's gauge after it.
    Metric {
        request: Box<RequestRecord>,
        gauge: Option<GaugeView>,
    },
    /// A stream broke after the client had received bytes.
    StreamingError {
        request_id: String,
        session_id: SessionId,
        model: String,
        provider: String,
        code: String,
        message: String,
    },
    /// The path a request took was not the plain one: retries, or a resend without
    /// `stream_options` for a provider that refuses it.
    Routing {
        request_id: String,
        session_id: SessionId,
        model: String,
        provider: String,
        attempts: u32,
        reason: String,
    },
    NewSession {
        session: Session,
        active: bool,
    },
    SessionRenamed {
        session: Session,
    },
    SessionActivated {
        session: Session,
    },
    SessionDeleted {
        session_id: SessionId,
    },
    /// The session's gauge crossed an alert threshold, either way. `level` is `null` when it
    /// fell back under the first threshold.
    Alert {
        session_id: SessionId,
        level: Option<AlertLevel>,
        previous: Option<AlertLevel>,
        color: Option<&'static str>,
        pct: f64,
        tokens: u64,
        max_context: u64,
        message: String,
    },
    /// Large messages were replaced by stand-ins (the sanitizer); originals are at
    /// `/api/mask/{reference}`.
    SanitizerEvent {
        request_id: String,
        session_id: SessionId,
        model: String,
        masked: Vec<MaskedSummary>,
        tokens_saved: u64,
    },
    /// Secrets were replaced by placeholders before the request left (kinds and counts only).
    Redaction {
        request_id: String,
        session_id: SessionId,
        model: String,
        found: Vec<RedactedKind>,
    },
    /// A session's history was compacted (automatically or by hand): the row, summary included.
    CompactionEvent {
        compaction: Box<CompactionRecord>,
    },
    /// A session's prompt is over its compaction threshold but automatic compaction is paused:
    /// it already compacted `consecutive` times in a row without getting under.
    CompactionPaused {
        session_id: SessionId,
        request_id: String,
        consecutive: u32,
        pct: f64,
        message: String,
    },
    /// A figure read from a client's log file, and the gauge after merging it.
    LogMetric {
        path: String,
        metric: LogMetric,
        gauge: Option<GaugeView>,
    },
    /// A virtual key's or a team's spend crossed its `soft_budget_usd` (once per budget
    /// period). `scope` is `key` or `team`; `key_id` is the key whose request crossed it, and
    /// `name` the key's or the team's.
    BudgetAlert {
        scope: &'static str,
        key_id: String,
        team_id: Option<String>,
        name: String,
        spend_usd: f64,
        soft_budget_usd: f64,
        max_budget_usd: Option<f64>,
    },
}

impl Event {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::RequestStarted { .. } => "request_started",
            Self::Metric { .. } => "metric",
            Self::StreamingError { .. } => "streaming_error",
            Self::Routing { .. } => "routing",
            Self::NewSession { .. } => "new_session",
            Self::SessionRenamed { .. } => "session_renamed",
            Self::SessionActivated { .. } => "session_activated",
            Self::SessionDeleted { .. } => "session_deleted",
            Self::Alert { .. } => "alert",
            Self::LogMetric { .. } => "log_metric",
            Self::Redaction { .. } => "redaction",
            Self::SanitizerEvent { .. } => "sanitizer_event",
            Self::CompactionEvent { .. } => "compaction_event",
            Self::CompactionPaused { .. } => "compaction_paused",
            Self::BudgetAlert { .. } => "budget_alert",
        }
    }
}

/// One message the sanitizer masked.
#[derive(Debug, Clone, Serialize)]
pub struct MaskedSummary {
    pub reference: String,
    pub role: String,
    pub tags: Vec<String>,
    pub tokens: u64,
    pub tokens_saved: u64,
}

/// How many secrets of one kind a request held.
#[derive(Debug, Clone, Serialize)]
pub struct RedactedKind {
    pub kind: &'static str,
    pub count: u32,
}

/// An event as delivered: numbered, timed, serialised at most once however many listen.
/// One event as listeners receive it: numbered in this instance's order.
#[derive(Debug)]
pub struct Envelope {
    pub seq: u64,
    pub at: i64,
    /// `None` for an event another instance published (relayed as its JSON).
    pub event: Option<Event>,
    /// The instance it happened on, when several share a live view (`[redis]`).
    instance: Option<Arc<str>>,
    json: OnceLock<Box<str>>,
}

#[derive(Serialize)]
struct Wire<'a> {
    seq: u64,
    at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    instance: Option<&'a str>,
    #[serde(flatten)]
    event: &'a Event,
}

impl Envelope {
    pub fn new(seq: u64, at: i64, event: Event) -> Self {
        Self {
            seq,
            at,
            event: Some(event),
            instance: None,
            json: OnceLock::new(),
        }
    }

    /// An event already rendered (by another instance).
    fn rendered(seq: u64, at: i64, json: String) -> Self {
        Self {
            seq,
            at,
            event: None,
            instance: None,
            json: OnceLock::from(json.into_boxed_str()),
        }
    }

    pub fn json(&self) -> &str {
        self.json.get_or_init(|| {
            let Some(event) = &self.event else {
                return "{}".into();
            };
            let wire = Wire {
                seq: self.seq,
                at: self.at,
                instance: self.instance.as_deref(),
                event,
            };
            // Every field is a plain string, number, bool or nested struct of those.
            serde_json::to_string(&wire)
                .unwrap_or_else(|e| format!(r#"{{"type":"error","message":"{e}"}}"#))
                .into_boxed_str()
        })
    }
}

pub type Subscription = broadcast::Receiver<Arc<Envelope>>;

/// Figures about the bus, for `/health`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct BusStats {
    pub capacity: usize,
    pub subscribers: usize,
    pub published: u64,
}

/// Where events go. One process uses [`LocalBus`]; a multi-instance bridge implements the same.
pub trait EventBus: Send + Sync + 'static {
    fn publish(&self, event: Event);
    fn subscribe(&self) -> Subscription;
    /// Whether anyone listens; callers skip building events nobody would read.
    fn has_subscribers(&self) -> bool;
    fn stats(&self) -> BusStats;
}

/// Builds and publishes an event only when someone listens.
pub fn emit(bus: &dyn EventBus, make: impl FnOnce() -> Event) {
    if bus.has_subscribers() {
        bus.publish(make());
    }
}

/// The in-process bus: a broadcast ring of `capacity` events.
#[derive(Debug)]
pub struct LocalBus {
    tx: broadcast::Sender<Arc<Envelope>>,
    capacity: usize,
    seq: AtomicU64,
    /// Named in each event when instances share their events.
    instance: Option<Arc<str>>,
}

impl LocalBus {
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        let (tx, _) = broadcast::channel(capacity);
        Self {
            tx,
            capacity,
            seq: AtomicU64::new(0),
            instance: None,
        }
    }

    /// A bus whose events name `instance` (several instances, one live view).
    pub fn for_instance(capacity: usize, instance: &str) -> Self {
        Self {
            instance: Some(instance.into()),
            ..Self::new(capacity)
        }
    }

    /// Publishes `event` here; the envelope, for a bridge to pass on.
    pub fn publish_here(&self, event: Event) -> Arc<Envelope> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let mut env = Envelope::new(seq, gatehouse_core::time::now_ms(), event);
        env.instance = self.instance.clone();
        let env = Arc::new(env);
        // An error only means nobody listens right now.
        let _ = self.tx.send(env.clone());
        env
    }

    /// An event another instance published, as its JSON object: numbered in this bus's
    /// order (`seq`), its own number kept as `instance_seq`.
    pub fn relay(&self, mut fields: serde_json::Map<String, serde_json::Value>) {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(origin) = fields.remove("seq") {
            fields.insert("instance_seq".into(), origin);
        }
        fields.insert("seq".into(), seq.into());
        let at = fields
            .get("at")
            .and_then(serde_json::Value::as_i64)
            .unwrap_or_else(gatehouse_core::time::now_ms);
        let json = serde_json::Value::Object(fields).to_string();
        let _ = self.tx.send(Arc::new(Envelope::rendered(seq, at, json)));
    }

    /// Sequence number of the last event published (0 before any).
    pub fn last_seq(&self) -> u64 {
        self.seq.load(Ordering::Relaxed)
    }
}

impl EventBus for LocalBus {
    fn publish(&self, event: Event) {
        self.publish_here(event);
    }

    fn subscribe(&self) -> Subscription {
        self.tx.subscribe()
    }

    fn has_subscribers(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    fn stats(&self) -> BusStats {
        BusStats {
            capacity: self.capacity,
            subscribers: self.tx.receiver_count(),
            published: self.seq.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deleted(n: u32) -> Event {
        Event::SessionDeleted {
            session_id: SessionId::parse_client(&format!("s{n}")).unwrap(),
        }
    }

    #[test]
    fn nothing_is_built_without_listeners() {
        let bus = LocalBus::new(8);
        let mut built = false;
        emit(&bus, || {
            built = true;
            deleted(1)
        });
        assert!(!built);
        let _rx = bus.subscribe();
        emit(&bus, || {
            built = true;
            deleted(1)
        });
        assert!(built);
    }

    #[tokio::test]
    async fn a_slow_listener_is_told_what_it_missed() {
        let bus = LocalBus::new(4);
        let mut rx = bus.subscribe();
        for n in 0..10 {
            bus.publish(deleted(n));
        }
        match rx.recv().await {
            Err(broadcast::error::RecvError::Lagged(missed)) => assert_eq!(missed, 6),
            other => panic!("expected a lag, got {other:?}"),
        }
        let next = rx.recv().await.unwrap();
        assert_eq!(next.seq, 7);
        let v: serde_json::Value = serde_json::from_str(next.json()).unwrap();
        assert_eq!(v["type"], "session_deleted");
        assert_eq!(v["seq"], 7);
        assert_eq!(v["session_id"], "s6");
    }
}
