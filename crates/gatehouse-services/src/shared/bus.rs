//! The event bus's Redis bridge: a dashboard connected to any instance sees every instance's
//! events, each once, in each instance's order, named by instance.
//!
//! Each instance publishes its events on one channel, in order, from one task (a bounded queue
//! in between: publishing never waits on Redis). It does so only while some other instance has
//! a dashboard listening, which it learns from Redis every second (`PUBSUB NUMSUB`), so a
//! gateway nobody watches builds no events at all, as without Redis. An instance subscribes to
//! the channel only while its own dashboard has clients, and relays what the others publish
//! into its local bus.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::Shared;
use crate::events::{BusStats, Envelope, Event, EventBus, LocalBus, Subscription};

/// Events waiting for Redis; past this many, new ones are dropped (and counted).
const QUEUE: usize = 8192;

pub struct RedisBus {
    local: LocalBus,
    out: mpsc::Sender<Arc<Envelope>>,
    /// Held while an event is numbered and queued, so the queue is in `seq` order.
    order: Mutex<()>,
    /// Another instance has a dashboard listening.
    remote_listeners: AtomicBool,
    /// This instance is subscribed to the others' events.
    subscribed: AtomicBool,
    /// Events this instance could not pass on (the queue was full).
    pub dropped: AtomicU64,
    /// Events received from other instances.
    pub relayed: AtomicU64,
}

impl std::fmt::Debug for RedisBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBus").finish_non_exhaustive()
    }
}

impl RedisBus {
    /// The bus, and the receiving end its [`RedisBus::run`] task drains.
    pub fn new(capacity: usize, instance: &str) -> (Arc<Self>, mpsc::Receiver<Arc<Envelope>>) {
        let (out, rx) = mpsc::channel(QUEUE);
        let bus = Arc::new(Self {
            local: LocalBus::for_instance(capacity, instance),
            out,
            order: Mutex::new(()),
            remote_listeners: AtomicBool::new(false),
            subscribed: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
            relayed: AtomicU64::new(0),
        });
        (bus, rx)
    }

    /// Whether another instance's dashboard receives this one's events.
    pub fn has_remote_listeners(&self) -> bool {
        self.remote_listeners.load(Ordering::Relaxed)
    }

    /// Publishes this instance's events, watches for listeners elsewhere, and relays the other
    /// instances' events while this one has listeners. Runs until the task is dropped.
    pub async fn run(self: Arc<Self>, shared: Arc<Shared>, rx: mpsc::Receiver<Arc<Envelope>>) {
        // One task, so aborting it stops all three.
        tokio::select! {
            () = self.clone().publish_all(shared.clone(), rx) => {}
            () = self.clone().relay(shared.clone()) => {}
            () = self.clone().watch(shared) => {}
        }
    }

    /// This instance's events onto the channel, in order, one at a time.
    async fn publish_all(
        self: Arc<Self>,
        shared: Arc<Shared>,
        mut rx: mpsc::Receiver<Arc<Envelope>>,
    ) {
        let channel = shared.events_channel();
        while let Some(env) = rx.recv().await {
            let sent = shared.send(channel.clone(), env.json().to_owned()).await;
            if sent.is_err() {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Every second: does another instance listen?
    async fn watch(self: Arc<Self>, shared: Arc<Shared>) {
        let channel = shared.events_channel();
        loop {
            let mut c = shared.conn.clone();
            let ch = channel.clone();
            let counted: Result<(String, i64), _> = shared
                .bounded(async move {
                    redis::cmd("PUBSUB")
                        .arg("NUMSUB")
                        .arg(ch)
                        .query_async(&mut c)
                        .await
                })
                .await;
            let own = i64::from(self.subscribed.load(Ordering::Relaxed));
            let others = counted.map_or(0, |(_, n)| n - own);
            self.remote_listeners.store(others > 0, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// While this instance's dashboard has clients: the other instances' events, into them.
    async fn relay(self: Arc<Self>, shared: Arc<Shared>) {
        let channel = shared.events_channel();
        let me = shared.instance().to_owned();
        loop {
            while !self.local.has_subscribers() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let subscribed = async {
                let mut ps = shared.client.get_async_pubsub().await?;
                ps.subscribe(&channel).await?;
                Ok::<_, redis::RedisError>(ps)
            };
            let Ok(Ok(ps)) = tokio::time::timeout(Duration::from_secs(2), subscribed).await else {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            };
            self.subscribed.store(true, Ordering::Relaxed);
            let mut messages = ps.into_on_message();
            let mut idle = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    m = messages.next() => {
                        let Some(m) = m else { break };
                        let Ok(text) = m.get_payload::<String>() else { continue };
                        let Ok(serde_json::Value::Object(fields)) = serde_json::from_str(&text)
                        else {
                            continue;
                        };
                        if fields.get("instance").and_then(|v| v.as_str()) == Some(me.as_str()) {
                            continue;
                        }
                        self.relayed.fetch_add(1, Ordering::Relaxed);
                        self.local.relay(fields);
                    }
                    _ = idle.tick() => {
                        // Nobody here listens any more: unsubscribe (by dropping the connection).
                        if !self.local.has_subscribers() {
                            break;
                        }
                    }
                }
            }
            self.subscribed.store(false, Ordering::Relaxed);
        }
    }
}

impl EventBus for RedisBus {
    fn publish(&self, event: Event) {
        if !self.has_remote_listeners() {
            self.local.publish_here(event);
            return;
        }
        // Numbered and queued under one lock: concurrent requests' events leave in the order
        // of their numbers. Serialised later, by the publishing task.
        let _order = self.order.lock().unwrap_or_else(|p| p.into_inner());
        let env = self.local.publish_here(event);
        if self.out.try_send(env).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn subscribe(&self) -> Subscription {
        self.local.subscribe()
    }

    fn has_subscribers(&self) -> bool {
        self.local.has_subscribers() || self.has_remote_listeners()
    }

    fn stats(&self) -> BusStats {
        self.local.stats()
    }
}
