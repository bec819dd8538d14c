//! Responses API responses kept for `previous_response_id` (`store: true`, OpenAI's default).
//!
//! Recent responses stay in memory, bounded by bytes, so continuing a conversation never waits
//! for the database: a response is in memory before its client can see it complete, while its
//! write is still queued. An older one is read back from the store: the one read a request
//! makes on the database, and only when the client continues a response that left memory.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use gatehouse_core::record::StoredResponse;
use gatehouse_store::{Store, StoreResult, WriteOp, WriterHandle};

/// Bytes of recent responses (input and output JSON) kept in memory.
pub const MEMORY_BYTES: usize = 64 << 20;

#[derive(Default)]
struct Recent {
    by_id: HashMap<String, Arc<StoredResponse>>,
    /// Oldest first, for eviction.
    order: VecDeque<String>,
    bytes: usize,
    /// Deleted ids whose delete may still be queued: not read back from the store.
    deleted: Vec<String>,
}

fn size(r: &StoredResponse) -> usize {
    r.input.len() + r.response.len() + r.id.len()
}

pub struct Responses {
    recent: Mutex<Recent>,
    store: Arc<dyn Store>,
    writer: WriterHandle,
    capacity: usize,
}

impl std::fmt::Debug for Responses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responses").finish_non_exhaustive()
    }
}

impl Responses {
    pub fn new(store: Arc<dyn Store>, writer: WriterHandle, capacity: usize) -> Self {
        Self {
            recent: Mutex::new(Recent::default()),
            store,
            writer,
            capacity,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Recent> {
        self.recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Keeps a response: in memory at once, in the database through the writer.
    pub fn put(&self, r: StoredResponse) {
        let r = Arc::new(r);
        {
            let mut g = self.lock();
            let n = size(&r);
            if let Some(old) = g.by_id.insert(r.id.clone(), r.clone()) {
                g.bytes = g.bytes.saturating_sub(size(&old));
            } else {
                g.order.push_back(r.id.clone());
            }
            g.bytes += n;
            while g.bytes > self.capacity {
                let Some(id) = g.order.pop_front() else { break };
                if let Some(old) = g.by_id.remove(&id) {
                    g.bytes = g.bytes.saturating_sub(size(&old));
                }
            }
        }
        self.writer
            .record_now(WriteOp::StoreResponse(Box::new((*r).clone())));
    }

    /// A kept response: from memory, else from the database.
    pub async fn get(&self, id: &str) -> StoreResult<Option<Arc<StoredResponse>>> {
        {
            let g = self.lock();
            if let Some(r) = g.by_id.get(id) {
                return Ok(Some(r.clone()));
            }
            if g.deleted.iter().any(|d| d == id) {
                return Ok(None);
            }
        }
        Ok(self.store.get_response(id).await?.map(Arc::new))
    }

    /// Forgets the responses of `session` held in memory (the database's go with the
    /// session's erasure).
    pub fn forget_session(&self, session: &str) {
        self.forget_where(|r| r.session_id.as_str() == session);
    }

    /// Forgets the responses made with any of `keys` held in memory.
    pub fn forget_keys<'a>(&self, keys: impl IntoIterator<Item = &'a str>) {
        let keys: Vec<&str> = keys.into_iter().collect();
        self.forget_where(|r| r.key_id.as_deref().is_some_and(|k| keys.contains(&k)));
    }

    fn forget_where(&self, gone: impl Fn(&StoredResponse) -> bool) {
        let mut g = self.lock();
        let gone: Vec<String> = g
            .by_id
            .values()
            .filter(|r| gone(r))
            .map(|r| r.id.clone())
            .collect();
        for id in gone {
            if let Some(old) = g.by_id.remove(&id) {
                g.bytes = g.bytes.saturating_sub(size(&old));
            }
            g.order.retain(|o| *o != id);
            if g.deleted.len() >= 1024 {
                g.deleted.remove(0);
            }
            g.deleted.push(id);
        }
    }

    /// Forgets a response; whether it existed.
    pub async fn delete(&self, id: &str) -> StoreResult<bool> {
        let existed = self.get(id).await?.is_some();
        {
            let mut g = self.lock();
            if let Some(old) = g.by_id.remove(id) {
                g.bytes = g.bytes.saturating_sub(size(&old));
                g.order.retain(|o| o != id);
            }
            // A bounded list: after this many deletes the first ones' writes are long done.
            if g.deleted.len() >= 1024 {
                g.deleted.remove(0);
            }
            g.deleted.push(id.to_owned());
        }
        self.writer
            .record(WriteOp::DeleteResponse(id.to_owned()))
            .await;
        Ok(existed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(id: &str, bytes: usize) -> StoredResponse {
        StoredResponse {
            id: id.to_owned(),
            session_id: gatehouse_core::SessionId::new("s"),
            created_at: 1,
            input: "x".repeat(bytes),
            response: "{}".to_owned(),
            key_id: None,
        }
    }

    #[tokio::test]
    async fn memory_is_bounded_and_the_database_answers_for_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(
            gatehouse_store::SqliteStore::open(&dir.path().join("t.db"))
                .await
                .unwrap(),
        );
        let (writer, _task) = gatehouse_store::Writer::spawn(
            store.clone(),
            64,
            16,
            std::time::Duration::from_millis(5),
        );
        let r = Responses::new(store.clone(), writer.clone(), 1000);
        r.put(response("resp_a", 600));
        r.put(response("resp_b", 600));
        // `a` left memory when `b` came in; it is read back once the writer has written it.
        assert!(!r.lock().by_id.contains_key("resp_a"));
        writer.flush().await;
        assert_eq!(r.get("resp_a").await.unwrap().unwrap().input.len(), 600);
        assert!(r.get("resp_b").await.unwrap().is_some());
        assert!(r.delete("resp_b").await.unwrap());
        assert!(r.get("resp_b").await.unwrap().is_none());
        assert!(!r.delete("resp_missing").await.unwrap());
    }
}
