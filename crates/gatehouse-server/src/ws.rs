//! `GET /ws`: the live event stream of the dashboard.
//!
//! On connect the client gets `init` (the active session, its figures, recent requests, the
//! session list), then every event of the bus as it happens. Memory per client is bounded by the
//! bus's shared ring: a client that does not read stalls only its own task (the socket's send
//! waits); when it reads again and has missed events, it gets `lagged` and a fresh `init`.
//! The server pings every `dashboard.ping_secs` and drops a client silent for three intervals.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Extension;
use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::response::Response;
use futures_util::SinkExt;
use gatehouse_core::time::now_ms;
use serde_json::json;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::time::{Instant, MissedTickBehavior};

use crate::error::HttpError;
use crate::login::Principal;
use crate::origin;
use crate::routes::sessions::{gauge_of, store_error};
use crate::state::AppState;

pub async fn upgrade(
    State(st): State<AppState>,
    headers: HeaderMap,
    login: Option<Extension<Arc<Principal>>>,
    ws: WebSocketUpgrade,
) -> Result<Response, HttpError> {
    origin::check(&st, &headers)?;
    let login = login.map(|Extension(p)| p);
    Ok(ws
        .max_message_size(64 * 1024)
        .on_upgrade(move |socket| client(st, socket, login)))
}

/// The close code a socket gets when the login that opened it ended: the dashboard refreshes
/// its login (or shows the form) before it reconnects.
pub const LOGIN_ENDED: u16 = 4401;

/// The `init` message: everything the dashboard draws, as of now.
pub(crate) async fn init_message(st: &AppState) -> Result<String, HttpError> {
    // Rows still in the writer's queue would be missing from the figures.
    st.writer.flush().await;
    let seq = st.bus.stats().published;
    let sessions = st.store.list_sessions().await.map_err(store_error)?;
    let active = st.sessions.active();
    let (stats, gauge, recent) = match &active {
        Some(s) => {
            let stats = st.store.session_stats(&s.id).await.map_err(store_error)?;
            let gauge = gauge_of(st, &s.id, &stats);
            let recent = st
                .store
                .list_requests(&s.id, st.config.dashboard.recent_requests, 0)
                .await
                .map_err(store_error)?;
            (Some(stats), Some(gauge), recent)
        }
        None => (None, None, Vec::new()),
    };
    let log_watcher = st
        .log_watch
        .get()
        .and_then(|s| s.lock().ok().map(|v| v.clone()));
    let v = json!({
        "type": "init",
        "seq": seq,
        "at": now_ms(),
        "server": {
            "version": env!("CARGO_PKG_VERSION"),
            "demo": st.demo,
            "uptime_s": st.started.elapsed().as_secs(),
        },
        "active_session": active,
        "sessions": sessions,
        "stats": stats,
        "gauge": gauge,
        "recent_requests": recent,
        "log_watcher": log_watcher,
    });
    Ok(v.to_string())
}

enum Step {
    Continue,
    Close,
    LoginEnded,
}

async fn client(st: AppState, mut socket: WebSocket, login: Option<Arc<Principal>>) {
    st.ws.clients.fetch_add(1, Ordering::Relaxed);
    st.ws.connected_total.fetch_add(1, Ordering::Relaxed);
    // Subscribe before building `init`, so nothing published in between is lost; the client
    // skips events whose `seq` is not above the `init`'s.
    let mut rx = st.bus.subscribe();
    let ping_every = Duration::from_secs(st.config.dashboard.ping_secs);
    let mut ping = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();

    let mut frame = None;
    if send_init(&st, &mut socket).await.is_ok() {
        loop {
            let step = tokio::select! {
                () = st.shutdown.cancelled() => Step::Close,
                msg = rx.recv() => match msg {
                    // Nothing more reaches a login that ended (checked in memory per batch).
                    Ok(_) if login.as_ref().is_some_and(|p| p.ended(&st, now_ms())) => {
                        Step::LoginEnded
                    }
                    Ok(env) => match forward(&st, &mut socket, &mut rx, &env).await {
                        Forwarded::Done => Step::Continue,
                        Forwarded::Lagged(missed) => resync(&st, &mut socket, missed).await,
                        Forwarded::Closed => Step::Close,
                    },
                    Err(RecvError::Lagged(missed)) => resync(&st, &mut socket, missed).await,
                    Err(RecvError::Closed) => Step::Close,
                },
                incoming = socket.recv() => match incoming {
                    Some(Ok(Message::Close(_)) | Err(_)) | None => Step::Close,
                    // Pongs, pings (answered by the library) and anything the client says count
                    // as signs of life; the dashboard sends nothing that needs an answer.
                    Some(Ok(_)) => {
                        last_heard = Instant::now();
                        Step::Continue
                    }
                },
                _ = ping.tick() => {
                    if last_heard.elapsed() > ping_every * 3 {
                        Step::Close
                    } else if let Some(p) = &login
                        && !p.still_holds(&st).await
                    {
                        Step::LoginEnded
                    } else {
                        send(&st, &mut socket, Message::Ping(Default::default())).await
                    }
                }
            };
            match step {
                Step::Continue => {}
                Step::Close => break,
                Step::LoginEnded => {
                    frame = Some(CloseFrame {
                        code: LOGIN_ENDED,
                        reason: Utf8Bytes::from_static("the login ended; log in again"),
                    });
                    break;
                }
            }
        }
    }
    let _ = socket.send(Message::Close(frame)).await;
    st.ws.clients.fetch_sub(1, Ordering::Relaxed);
}

/// Most events written before one flush.
const BATCH: usize = 64;

enum Forwarded {
    Done,
    /// Sent what was there, then found that events were lost to the ring.
    Lagged(u64),
    Closed,
}

/// Tells the client it missed events, then sends a fresh `init`.
async fn resync(st: &AppState, socket: &mut WebSocket, missed: u64) -> Step {
    st.ws.resyncs.fetch_add(1, Ordering::Relaxed);
    let note = json!({ "type": "lagged", "missed": missed, "at": now_ms() });
    match send(st, socket, Message::Text(note.to_string().into())).await {
        Step::Continue => match send_init(st, socket).await {
            Ok(()) => Step::Continue,
            Err(()) => Step::Close,
        },
        other => other,
    }
}

/// Sends `first` and whatever else is already waiting (up to [`BATCH`]) with one flush, so a
/// busy gateway writes many events per system call instead of one.
async fn forward(
    st: &AppState,
    socket: &mut WebSocket,
    rx: &mut gatehouse_services::events::Subscription,
    first: &gatehouse_services::events::Envelope,
) -> Forwarded {
    let write = async {
        socket
            .feed(Message::Text(Utf8Bytes::from(first.json())))
            .await?;
        let mut lagged = None;
        for _ in 1..BATCH {
            match rx.try_recv() {
                Ok(env) => {
                    socket
                        .feed(Message::Text(Utf8Bytes::from(env.json())))
                        .await?;
                }
                Err(TryRecvError::Lagged(missed)) => {
                    lagged = Some(missed);
                    break;
                }
                Err(TryRecvError::Empty | TryRecvError::Closed) => break,
            }
        }
        socket.flush().await.map(|()| lagged)
    };
    tokio::select! {
        r = write => match r {
            Ok(None) => Forwarded::Done,
            Ok(Some(missed)) => Forwarded::Lagged(missed),
            Err(_) => Forwarded::Closed,
        },
        () = st.shutdown.cancelled() => Forwarded::Closed,
    }
}

/// Sends one message, giving up when shutdown begins while the client is not reading.
async fn send(st: &AppState, socket: &mut WebSocket, msg: Message) -> Step {
    tokio::select! {
        r = socket.send(msg) => if r.is_ok() { Step::Continue } else { Step::Close },
        () = st.shutdown.cancelled() => Step::Close,
    }
}

async fn send_init(st: &AppState, socket: &mut WebSocket) -> Result<(), ()> {
    let text = match init_message(st).await {
        Ok(t) => t,
        Err(e) => json!({ "type": "error", "message": e.0.message }).to_string(),
    };
    match send(st, socket, Message::Text(text.into())).await {
        Step::Continue => Ok(()),
        Step::Close | Step::LoginEnded => Err(()),
    }
}
