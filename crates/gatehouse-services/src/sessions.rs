//! Sessions: which conversation a request belongs to.
//!
//! The rules (DESIGN.md §5): a request names its session with `X-Gatehouse-Session`, or its
//! client names the conversation (Claude Code's session id, Codex's `prompt_cache_key`);
//! otherwise a request that continues a conversation already seen (the same leading messages,
//! [`Shape::conversation`]) joins that conversation's session whatever its model, and makes it
//! active; a side request (a title, a probe: [`Shape::aside`]) for another model than the active
//! session's is kept in the active session without changing it; any other request joins the
//! active session, and a new session is opened, and made active, on the first request and when
//! a request asks for another model than the active session's. A new session is named after the
//! first user prompt (50 characters).
//!
//! Memory is bounded: sessions idle longer than `[retention] session_idle_hours` leave memory
//! ([`Sessions::evict_idle`]); their rows stay in the database, and a request that names one
//! again brings it back (the name and model are reloaded in the background, never awaited on
//! the proxy path).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use gatehouse_core::SessionId;
use gatehouse_core::record::{Session, preview};
use gatehouse_core::time::{now_ms, rfc3339_ms};
use gatehouse_store::{Store, StoreResult, WriteOp, WriterHandle};

use crate::events::{Event, EventBus, emit};

/// Length of an automatic session name (the seed's figure).
pub const NAME_CHARS: usize = 50;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SessionError {
    #[error("session `{0}` does not exist")]
    NotFound(SessionId),
    #[error("a session name must be 1 to 200 characters")]
    BadName,
}

/// The outcome of [`Sessions::resolve`].
#[derive(Debug, Clone)]
pub struct Resolved {
    pub id: SessionId,
    /// A session was opened for this request.
    pub created: bool,
    /// A side request kept in a session of another model: its row is marked, and its small
    /// prompt does not move the session's gauge.
    pub aside: bool,
}

impl Resolved {
    fn plain(id: SessionId, created: bool) -> Self {
        Self {
            id,
            created,
            aside: false,
        }
    }
}

/// What a request that names no session says about where it belongs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Shape {
    /// The identity of the conversation it continues (its leading messages).
    pub conversation: Option<u64>,
    /// It continues nothing and asks for a short answer without tools.
    pub aside: bool,
}

/// Fingerprints remembered per session: a client whose first messages change from turn to turn
/// adds one per request, and only the latest can match again.
const FINGERPRINTS_PER_SESSION: usize = 8;

#[derive(Default)]
struct State {
    active: Option<SessionId>,
    sessions: HashMap<SessionId, Session>,
    /// When each session in memory last had a request (epoch ms).
    last_used: HashMap<SessionId, i64>,
    /// Sessions that left memory; a request naming one brings it back.
    evicted: HashSet<SessionId>,
    /// Conversation fingerprint → its session, and each session's fingerprints, oldest first
    /// (the bound).
    conversations: HashMap<u64, SessionId>,
    fingerprints: HashMap<SessionId, VecDeque<u64>>,
}

impl State {
    fn remember(&mut self, fingerprint: u64, id: &SessionId) {
        if self.conversations.get(&fingerprint) == Some(id) {
            return;
        }
        if let Some(previous) = self.conversations.insert(fingerprint, id.clone())
            && let Some(fps) = self.fingerprints.get_mut(&previous)
        {
            fps.retain(|f| *f != fingerprint);
        }
        let fps = self.fingerprints.entry(id.clone()).or_default();
        fps.push_back(fingerprint);
        if fps.len() > FINGERPRINTS_PER_SESSION
            && let Some(old) = fps.pop_front()
        {
            self.conversations.remove(&old);
        }
    }

    /// A session chosen by hand is where the user wants the next requests, even those of a
    /// conversation seen before.
    fn forget_all_conversations(&mut self) {
        self.conversations.clear();
        self.fingerprints.clear();
    }

    /// Whether session `id` is kept under a model other than `model_key` (one it has).
    fn of_other_model(&self, id: &SessionId, model_key: &str) -> bool {
        self.sessions
            .get(id)
            .and_then(|s| s.model_key.as_deref())
            .is_some_and(|m| m != model_key)
    }

    fn forget_conversations_of(&mut self, id: &SessionId) {
        for fp in self.fingerprints.remove(id).unwrap_or_default() {
            self.conversations.remove(&fp);
        }
    }
}

/// Live session state, loaded from the store at start and persisted through the writer.
pub struct Sessions {
    /// Shared with the background reload of an evicted session.
    state: Arc<Mutex<State>>,
    /// Read only to bring an evicted session back, off the request path.
    store: Arc<dyn Store>,
    writer: WriterHandle,
    bus: Arc<dyn EventBus>,
    new_on_model_change: bool,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").finish_non_exhaustive()
    }
}

impl Sessions {
    pub async fn load(
        store: &Arc<dyn Store>,
        writer: WriterHandle,
        bus: Arc<dyn EventBus>,
        new_on_model_change: bool,
    ) -> StoreResult<Self> {
        let mut state = State::default();
        for s in store.list_sessions().await? {
            let used = s.last_request_at.unwrap_or(s.session.created_at);
            state.last_used.insert(s.session.id.clone(), used);
            state.sessions.insert(s.session.id.clone(), s.session);
        }
        state.active = store.active_session().await?.map(|s| s.id);
        Ok(Self {
            state: Arc::new(Mutex::new(state)),
            store: store.clone(),
            writer,
            bus,
            new_on_model_change,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the map half-updated in a way that
        // matters more than refusing every later request would.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Picks (or opens) the session of a proxied request.
    pub async fn resolve(
        &self,
        explicit: Option<SessionId>,
        model_key: &str,
        provider: &str,
        first_user_text: Option<&str>,
    ) -> Resolved {
        let mut ops = Vec::new();
        let mut opened = None;
        let mut reload = None;
        let resolved = {
            let mut st = self.lock();
            let resolved = match explicit {
                Some(id) if st.evicted.remove(&id) => {
                    // Back from the database: a stand-in until the reload lands.
                    let mut s = new_session(id.clone(), model_key, provider, first_user_text);
                    s.created_at = 0;
                    st.sessions.insert(id.clone(), s);
                    reload = Some(id.clone());
                    Resolved::plain(id, false)
                }
                Some(id) => match st.sessions.get_mut(&id) {
                    Some(s) => {
                        if s.model_key.is_none() {
                            s.model_key = Some(model_key.to_owned());
                            s.provider = Some(provider.to_owned());
                            ops.push(set_model(&id, model_key, provider));
                        }
                        Resolved::plain(id, false)
                    }
                    None => {
                        // A client-chosen id opens its session on first use; it does not change
                        // which session is active for clients that send no header.
                        let s = new_session(id.clone(), model_key, provider, first_user_text);
                        st.sessions.insert(id.clone(), s.clone());
                        opened = Some((s.clone(), false));
                        ops.push(WriteOp::CreateSession(s));
                        Resolved::plain(id, true)
                    }
                },
                None => {
                    // The common case (the active session, same model) clones only the id.
                    let active_id = st.active.clone();
                    let current = active_id.as_ref().and_then(|id| st.sessions.get_mut(id));
                    match current {
                        Some(s) if s.model_key.is_none() => {
                            s.model_key = Some(model_key.to_owned());
                            s.provider = Some(provider.to_owned());
                            ops.push(set_model(&s.id, model_key, provider));
                            Resolved::plain(s.id.clone(), false)
                        }
                        Some(s)
                            if !self.new_on_model_change
                                || s.model_key.as_deref() == Some(model_key) =>
                        {
                            Resolved::plain(s.id.clone(), false)
                        }
                        _ => {
                            let s = new_session(
                                SessionId::generate(),
                                model_key,
                                provider,
                                first_user_text,
                            );
                            let id = s.id.clone();
                            st.sessions.insert(id.clone(), s.clone());
                            st.active = Some(id.clone());
                            opened = Some((s.clone(), true));
                            ops.push(WriteOp::CreateSession(s));
                            ops.push(WriteOp::SetActiveSession(Some(id.clone())));
                            Resolved::plain(id, true)
                        }
                    }
                }
            };
            let now = now_ms();
            match st.last_used.get_mut(&resolved.id) {
                Some(t) => *t = now,
                None => {
                    st.last_used.insert(resolved.id.clone(), now);
                }
            }
            resolved
        };
        if let Some(id) = reload {
            self.reload(id);
        }
        for op in ops {
            self.writer.record(op).await;
        }
        if let Some((session, active)) = opened {
            emit(&*self.bus, || Event::NewSession { session, active });
        }
        resolved
    }

    /// The session of a conversation the client names itself (Claude Code's
    /// `X-Claude-Code-Session-Id`): one session for the whole conversation whatever model each
    /// request asks for (side requests to a small model included), and, unlike an id chosen
    /// through `X-Gatehouse-Session`, it becomes the active session: it is what the user is
    /// doing now. `aside`: the request is a side request ([`Shape::aside`]).
    pub async fn resolve_conversation(
        &self,
        id: SessionId,
        aside: bool,
        model_key: &str,
        provider: &str,
        first_user_text: Option<&str>,
    ) -> Resolved {
        let mut resolved = self
            .resolve(Some(id), model_key, provider, first_user_text)
            .await;
        let activated = {
            let mut st = self.lock();
            resolved.aside = aside && st.of_other_model(&resolved.id, model_key);
            if st.active.as_ref() == Some(&resolved.id) {
                None
            } else {
                st.active = Some(resolved.id.clone());
                st.sessions.get(&resolved.id).cloned()
            }
        };
        if let Some(session) = activated {
            self.writer
                .record(WriteOp::SetActiveSession(Some(resolved.id.clone())))
                .await;
            emit(&*self.bus, || Event::SessionActivated { session });
        }
        resolved
    }

    /// The session of a request that names none, from its [`Shape`] (the module doc's rules).
    pub async fn resolve_implicit(
        &self,
        shape: Shape,
        model_key: &str,
        provider: &str,
        first_user_text: Option<&str>,
    ) -> Resolved {
        let known = shape.conversation.and_then(|fp| {
            let st = self.lock();
            st.conversations
                .get(&fp)
                .filter(|id| st.sessions.contains_key(*id))
                .cloned()
        });
        if let Some(id) = known {
            return self
                .resolve_conversation(id, shape.aside, model_key, provider, first_user_text)
                .await;
        }
        if shape.aside {
            let mut st = self.lock();
            let active = st
                .active
                .clone()
                .filter(|id| st.of_other_model(id, model_key));
            if let Some(id) = active {
                st.last_used.insert(id.clone(), now_ms());
                return Resolved {
                    id,
                    created: false,
                    aside: true,
                };
            }
        }
        let resolved = self
            .resolve(None, model_key, provider, first_user_text)
            .await;
        if let Some(fp) = shape.conversation {
            self.lock().remember(fp, &resolved.id);
        }
        resolved
    }

    /// Takes the sessions idle since before `before_ms` out of memory (never the active one);
    /// returns them, so their gauges and compaction state can go too.
    pub fn evict_idle(&self, before_ms: i64) -> Vec<SessionId> {
        let mut st = self.lock();
        let active = st.active.clone();
        let idle: Vec<SessionId> = st
            .last_used
            .iter()
            .filter(|(id, t)| **t < before_ms && active.as_ref() != Some(*id))
            .map(|(id, _)| id.clone())
            .collect();
        for id in &idle {
            st.last_used.remove(id);
            st.sessions.remove(id);
            st.forget_conversations_of(id);
            st.evicted.insert(id.clone());
        }
        idle
    }

    /// A session, from memory or, once it has left memory, from the database (brought back
    /// then): for the management API, never the proxy path.
    pub async fn find(&self, id: &SessionId) -> Option<Session> {
        if let Some(s) = self.get(id) {
            return Some(s);
        }
        let stored = self.store.get_session(id).await.ok().flatten()?;
        let mut st = self.lock();
        st.evicted.remove(id);
        st.last_used.entry(id.clone()).or_insert(stored.created_at);
        Some(st.sessions.entry(id.clone()).or_insert(stored).clone())
    }

    /// Replaces the stand-in of a session brought back by a request with its stored record, in
    /// the background.
    fn reload(&self, id: SessionId) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (store, state) = (self.store.clone(), self.state.clone());
        handle.spawn(async move {
            if let Ok(Some(stored)) = store.get_session(&id).await {
                let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(s) = st.sessions.get_mut(&id) {
                    *s = stored;
                }
            }
        });
    }

    /// Opens a session from the API and makes it active.
    pub async fn create(
        &self,
        name: Option<String>,
        model: Option<(String, String)>,
    ) -> Result<Session, SessionError> {
        let name = match name {
            Some(n) => valid_name(&n)?,
            None => format!("Session {}", rfc3339_ms(now_ms())),
        };
        let (model_key, provider) = match model {
            Some((m, p)) => (Some(m), Some(p)),
            None => (None, None),
        };
        let s = Session {
            id: SessionId::generate(),
            name,
            model_key,
            provider,
            created_at: now_ms(),
        };
        {
            let mut st = self.lock();
            st.sessions.insert(s.id.clone(), s.clone());
            st.last_used.insert(s.id.clone(), s.created_at);
            st.active = Some(s.id.clone());
            st.forget_all_conversations();
        }
        self.writer.record(WriteOp::CreateSession(s.clone())).await;
        self.writer
            .record(WriteOp::SetActiveSession(Some(s.id.clone())))
            .await;
        emit(&*self.bus, || Event::NewSession {
            session: s.clone(),
            active: true,
        });
        Ok(s)
    }

    pub async fn activate(&self, id: &SessionId) -> Result<Session, SessionError> {
        self.find(id).await;
        let s = {
            let mut st = self.lock();
            let s = st
                .sessions
                .get(id)
                .cloned()
                .ok_or_else(|| SessionError::NotFound(id.clone()))?;
            st.active = Some(id.clone());
            st.forget_all_conversations();
            s
        };
        self.writer
            .record(WriteOp::SetActiveSession(Some(id.clone())))
            .await;
        emit(&*self.bus, || Event::SessionActivated {
            session: s.clone(),
        });
        Ok(s)
    }

    pub async fn rename(&self, id: &SessionId, name: &str) -> Result<Session, SessionError> {
        self.find(id).await;
        let name = valid_name(name)?;
        let s = {
            let mut st = self.lock();
            let s = st
                .sessions
                .get_mut(id)
                .ok_or_else(|| SessionError::NotFound(id.clone()))?;
            s.name.clone_from(&name);
            s.clone()
        };
        self.writer
            .record(WriteOp::RenameSession {
                id: id.clone(),
                name,
            })
            .await;
        emit(&*self.bus, || Event::SessionRenamed { session: s.clone() });
        Ok(s)
    }

    /// Deletes a session and its request rows.
    pub async fn delete(&self, id: &SessionId) -> Result<(), SessionError> {
        self.find(id).await;
        {
            let mut st = self.lock();
            if st.sessions.remove(id).is_none() {
                return Err(SessionError::NotFound(id.clone()));
            }
            st.last_used.remove(id);
            st.forget_conversations_of(id);
            if st.active.as_ref() == Some(id) {
                st.active = None;
            }
        }
        self.writer.record(WriteOp::DeleteSession(id.clone())).await;
        emit(&*self.bus, || Event::SessionDeleted {
            session_id: id.clone(),
        });
        Ok(())
    }

    pub fn get(&self, id: &SessionId) -> Option<Session> {
        self.lock().sessions.get(id).cloned()
    }

    pub fn active(&self) -> Option<Session> {
        let st = self.lock();
        st.active
            .as_ref()
            .and_then(|id| st.sessions.get(id).cloned())
    }

    pub fn count(&self) -> usize {
        self.lock().sessions.len()
    }
}

fn set_model(id: &SessionId, model_key: &str, provider: &str) -> WriteOp {
    WriteOp::SetSessionModel {
        id: id.clone(),
        model_key: model_key.to_owned(),
        provider: provider.to_owned(),
    }
}

fn new_session(
    id: SessionId,
    model_key: &str,
    provider: &str,
    first_user_text: Option<&str>,
) -> Session {
    let created_at = now_ms();
    let name = first_user_text
        .map(|t| preview(t, NAME_CHARS))
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| format!("Session {}", rfc3339_ms(created_at)));
    Session {
        id,
        name,
        model_key: Some(model_key.to_owned()),
        provider: Some(provider.to_owned()),
        created_at,
    }
}

fn valid_name(name: &str) -> Result<String, SessionError> {
    let n = name.trim();
    if n.is_empty() || n.chars().count() > 200 {
        return Err(SessionError::BadName);
    }
    Ok(n.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_store::{SqliteStore, Writer};

    async fn setup() -> (tempfile::TempDir, Arc<dyn Store>, WriterHandle, Sessions) {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(&dir.path().join("g.db")).await.unwrap());
        let (w, _t) = Writer::spawn(store.clone(), 64, 16, std::time::Duration::from_millis(5));
        let s = Sessions::load(&store, w.clone(), Arc::new(crate::LocalBus::new(16)), true)
            .await
            .unwrap();
        (dir, store, w, s)
    }

    #[tokio::test]
    async fn first_request_and_model_change_open_sessions() {
        let (_d, store, w, s) = setup().await;
        let long =
            "Explain   the borrow checker to me like I am five years old, please, with examples";
        let a = s.resolve(None, "p/m1", "p", Some(long)).await;
        assert!(a.created);
        assert_eq!(s.get(&a.id).unwrap().name.chars().count(), NAME_CHARS);
        assert!(s.get(&a.id).unwrap().name.starts_with("Explain the borrow"));
        let again = s.resolve(None, "p/m1", "p", Some("other")).await;
        assert_eq!(again.id, a.id);
        assert!(!again.created);
        let b = s.resolve(None, "p/m2", "p", Some("hi")).await;
        assert!(b.created);
        assert_ne!(b.id, a.id);
        assert_eq!(s.active().unwrap().id, b.id);

        // Explicit sessions open on first use and leave the active one alone.
        let mine = SessionId::new("conv-1");
        let c = s.resolve(Some(mine.clone()), "p/m9", "p", None).await;
        assert!(c.created);
        assert_eq!(s.active().unwrap().id, b.id);

        // And all of it survives a restart.
        w.flush().await;
        let reloaded = Sessions::load(&store, w.clone(), Arc::new(crate::LocalBus::new(16)), true)
            .await
            .unwrap();
        assert_eq!(reloaded.active().unwrap().id, b.id);
        assert_eq!(reloaded.count(), 3);
        assert!(reloaded.get(&mine).unwrap().name.starts_with("Session "));
    }

    fn turn(conversation: u64) -> Shape {
        Shape {
            conversation: Some(conversation),
            aside: false,
        }
    }

    const ASIDE: Shape = Shape {
        conversation: Some(999),
        aside: true,
    };

    #[tokio::test]
    async fn a_conversation_keeps_its_session_across_models_and_side_requests() {
        let (_d, _store, _w, s) = setup().await;
        let a = s
            .resolve_implicit(turn(1), "p/big", "p", Some("fix it"))
            .await;
        assert!(a.created);
        // A title request to the small model: kept in the active session, which stays.
        let title = s
            .resolve_implicit(ASIDE, "p/small", "p", Some("title"))
            .await;
        assert_eq!(
            (title.id.clone(), title.created, title.aside),
            (a.id.clone(), false, true)
        );
        assert_eq!(s.active().unwrap().model_key.as_deref(), Some("p/big"));
        // The next turn, after a `/model` switch: the same conversation, the same session.
        let switched = s.resolve_implicit(turn(1), "p/other", "p", None).await;
        assert_eq!((switched.id.clone(), switched.aside), (a.id.clone(), false));
        // Another conversation on another model opens its own session and becomes active...
        let b = s
            .resolve_implicit(turn(2), "p/other", "p", Some("new task"))
            .await;
        assert!(b.created);
        assert_eq!(s.active().unwrap().id, b.id);
        // ...and going back to the first conversation makes that one active again.
        let back = s.resolve_implicit(turn(1), "p/big", "p", None).await;
        assert_eq!(back.id, a.id);
        assert_eq!(s.active().unwrap().id, a.id);
        // A short request for the active session's own model is an ordinary request.
        let same = s.resolve_implicit(ASIDE, "p/big", "p", None).await;
        assert_eq!((same.id, same.aside), (a.id.clone(), false));
    }

    #[tokio::test]
    async fn a_session_chosen_by_hand_wins_over_a_known_conversation() {
        let (_d, _store, _w, s) = setup().await;
        let a = s.resolve_implicit(turn(1), "p/m", "p", Some("task")).await;
        let fresh = s.create(Some("fresh start".into()), None).await.unwrap();
        let next = s.resolve_implicit(turn(1), "p/m", "p", None).await;
        assert_eq!(next.id, fresh.id);
        assert_ne!(next.id, a.id);
        s.activate(&a.id).await.unwrap();
        assert_eq!(s.resolve_implicit(turn(1), "p/m", "p", None).await.id, a.id);
        // A deleted session's conversations are forgotten with it.
        s.delete(&a.id).await.unwrap();
        let after = s.resolve_implicit(turn(1), "p/m", "p", None).await;
        assert_ne!(after.id, a.id);
    }

    #[tokio::test]
    async fn fingerprints_are_bounded_per_session() {
        let (_d, _store, _w, s) = setup().await;
        let a = s.resolve_implicit(turn(0), "p/m", "p", None).await;
        for fp in 1..100 {
            assert_eq!(
                s.resolve_implicit(turn(fp), "p/m", "p", None).await.id,
                a.id
            );
        }
        let st = s.lock();
        assert_eq!(st.conversations.len(), FINGERPRINTS_PER_SESSION);
        assert!(st.conversations.contains_key(&99));
        assert!(!st.conversations.contains_key(&0));
    }

    #[tokio::test]
    async fn api_sessions_adopt_the_first_model() {
        let (_d, _store, _w, s) = setup().await;
        let created = s.create(Some("  work  ".into()), None).await.unwrap();
        assert_eq!(created.name, "work");
        let r = s.resolve(None, "p/m", "p", Some("hello")).await;
        assert_eq!(r.id, created.id);
        assert!(!r.created);
        assert_eq!(
            s.get(&created.id).unwrap().model_key.as_deref(),
            Some("p/m")
        );
        assert_eq!(
            s.create(Some(" ".into()), None).await,
            Err(SessionError::BadName)
        );
        s.delete(&created.id).await.unwrap();
        assert!(s.active().is_none());
        assert_eq!(
            s.delete(&created.id).await,
            Err(SessionError::NotFound(created.id.clone()))
        );
    }
}
