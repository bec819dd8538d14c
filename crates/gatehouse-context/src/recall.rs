//! The memory store's logic, in process: entries of three kinds (frequent, episodic, semantic),
//! deduplicated by content hash, promoted to frequent after three accesses, cleaned up when
//! episodic, old and rarely used, and found again by BM25 similarity. No external vector
//! database: a gateway's memory is thousands of entries, which an inverted index serves in
//! microseconds.

use std::collections::HashMap;

use gatehouse_core::record::{MemoryKind, MemoryRecord};
use serde::Serialize;

/// Accesses after which an episodic entry becomes frequent.
pub const PROMOTE_AFTER: u64 = 3;
// BM25 parameters (the usual ones).
const K1: f64 = 1.2;
const B: f64 = 0.75;

fn terms(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.chars().count() > 1)
        .map(str::to_lowercase)
}

/// All entries and their inverted index.
#[derive(Debug, Default)]
pub struct Recall {
    entries: HashMap<String, MemoryRecord>,
    /// term → (entry id → term frequency)
    postings: HashMap<String, HashMap<String, u32>>,
    lengths: HashMap<String, u32>,
    total_length: u64,
}

/// A search hit.
#[derive(Debug, Clone, Serialize)]
pub struct Hit {
    pub score: f64,
    #[serde(flatten)]
    pub entry: MemoryRecord,
}

impl Recall {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, id: &str) -> Option<&MemoryRecord> {
        self.entries.get(id)
    }

    /// Adds an entry as loaded from storage (no access counted).
    pub fn load(&mut self, e: MemoryRecord) {
        self.index(&e);
        self.entries.insert(e.id.clone(), e);
    }

    fn index(&mut self, e: &MemoryRecord) {
        let mut tf: HashMap<String, u32> = HashMap::new();
        for t in terms(&e.content) {
            *tf.entry(t).or_default() += 1;
        }
        let len: u32 = tf.values().sum();
        for (t, n) in tf {
            self.postings.entry(t).or_default().insert(e.id.clone(), n);
        }
        self.lengths.insert(e.id.clone(), len);
        self.total_length += u64::from(len);
    }

    fn unindex(&mut self, id: &str) {
        if let Some(len) = self.lengths.remove(id) {
            self.total_length -= u64::from(len);
        }
        self.postings.retain(|_, docs| {
            docs.remove(id);
            !docs.is_empty()
        });
    }

    /// Stores `e`, or, when the same content is already stored, counts an access to it.
    /// Returns the stored entry and whether it was new.
    pub fn store(&mut self, e: MemoryRecord, now: i64) -> (MemoryRecord, bool) {
        if let Some(existing) = self.touch(&e.id, now) {
            return (existing, false);
        }
        self.index(&e);
        self.entries.insert(e.id.clone(), e.clone());
        (e, true)
    }

    /// Counts one access; an episodic entry reaching [`PROMOTE_AFTER`] becomes frequent.
    pub fn touch(&mut self, id: &str, now: i64) -> Option<MemoryRecord> {
        let e = self.entries.get_mut(id)?;
        e.access_count += 1;
        e.last_access_at = now;
        if e.kind == MemoryKind::Episodic && e.access_count >= PROMOTE_AFTER {
            e.kind = MemoryKind::Frequent;
        }
        Some(e.clone())
    }

    pub fn set_kind(&mut self, id: &str, kind: MemoryKind) -> Option<MemoryRecord> {
        let e = self.entries.get_mut(id)?;
        e.kind = kind;
        Some(e.clone())
    }

    /// The `limit` entries most similar to `query` (BM25), best first; each hit counts as an
    /// access (and may promote it).
    pub fn similar(&mut self, query: &str, limit: usize, now: i64) -> Vec<Hit> {
        let n = self.entries.len() as f64;
        if n == 0.0 {
            return Vec::new();
        }
        let avg = (self.total_length as f64 / n).max(1.0);
        let mut scores: HashMap<&str, f64> = HashMap::new();
        let mut seen = std::collections::HashSet::new();
        for t in terms(query) {
            if !seen.insert(t.clone()) {
                continue;
            }
            let Some(docs) = self.postings.get(&t) else {
                continue;
            };
            let df = docs.len() as f64;
            let idf = ((n - df + 0.5) / (df + 0.5) + 1.0).ln();
            for (id, tf) in docs {
                let len = f64::from(self.lengths.get(id).copied().unwrap_or(0));
                let tf = f64::from(*tf);
                let s = idf * tf * (K1 + 1.0) / (tf + K1 * (1.0 - B + B * len / avg));
                *scores.entry(id.as_str()).or_default() += s;
            }
        }
        let mut ranked: Vec<(String, f64)> = scores
            .into_iter()
            .map(|(id, s)| (id.to_owned(), s))
            .collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        ranked.truncate(limit);
        ranked
            .into_iter()
            .filter_map(|(id, score)| self.touch(&id, now).map(|entry| Hit { score, entry }))
            .collect()
    }

    /// Frequent entries, most accessed first.
    pub fn frequent(&self, limit: usize) -> Vec<MemoryRecord> {
        let mut v: Vec<MemoryRecord> = self
            .entries
            .values()
            .filter(|e| e.kind == MemoryKind::Frequent)
            .cloned()
            .collect();
        v.sort_by(|a, b| {
            b.access_count
                .cmp(&a.access_count)
                .then_with(|| a.id.cmp(&b.id))
        });
        v.truncate(limit);
        v
    }

    /// Removes episodic entries created before `older_than` with fewer than `min_access`
    /// accesses; returns their ids.
    pub fn cleanup(&mut self, older_than: i64, min_access: u64) -> Vec<String> {
        let gone: Vec<String> = self
            .entries
            .values()
            .filter(|e| {
                e.kind == MemoryKind::Episodic
                    && e.created_at < older_than
                    && e.access_count < min_access
            })
            .map(|e| e.id.clone())
            .collect();
        for id in &gone {
            self.entries.remove(id);
            self.unindex(id);
        }
        gone
    }

    /// The entries made in any of `sessions`, oldest first.
    pub fn of_sessions(&self, sessions: &[&str]) -> Vec<MemoryRecord> {
        let mut v: Vec<MemoryRecord> = self
            .entries
            .values()
            .filter(|e| {
                e.session_id
                    .as_deref()
                    .is_some_and(|s| sessions.contains(&s))
            })
            .cloned()
            .collect();
        v.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        v
    }

    /// Removes the entries made in any of `sessions`; returns their ids.
    pub fn remove_sessions(&mut self, sessions: &[&str]) -> Vec<String> {
        let gone: Vec<String> = self
            .of_sessions(sessions)
            .into_iter()
            .map(|e| e.id)
            .collect();
        for id in &gone {
            self.entries.remove(id);
            self.unindex(id);
        }
        gone
    }

    /// Entries and tokens per kind.
    pub fn stats(&self) -> HashMap<&'static str, (u64, u64)> {
        let mut out: HashMap<&'static str, (u64, u64)> = HashMap::new();
        for e in self.entries.values() {
            let s = out.entry(e.kind.as_str()).or_default();
            s.0 += 1;
            s.1 += e.tokens;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, kind: MemoryKind, content: &str, created_at: i64) -> MemoryRecord {
        MemoryRecord {
            id: id.into(),
            kind,
            content: content.into(),
            tokens: 10,
            session_id: None,
            access_count: 0,
            created_at,
            last_access_at: created_at,
        }
    }

    fn store() -> Recall {
        let mut r = Recall::new();
        r.store(
            entry(
                "a",
                MemoryKind::Episodic,
                "The user prefers tabs over spaces in Rust code",
                0,
            ),
            0,
        );
        r.store(
            entry(
                "b",
                MemoryKind::Semantic,
                "The project uses SQLite in WAL mode for storage",
                0,
            ),
            0,
        );
        r.store(
            entry(
                "c",
                MemoryKind::Episodic,
                "Yesterday we fixed the parser bug in the tokenizer",
                0,
            ),
            0,
        );
        r
    }

    #[test]
    fn similar_ranks_by_bm25() {
        let mut r = store();
        let hits = r.similar("which storage does the project use? sqlite", 2, 1);
        assert_eq!(hits[0].entry.id, "b");
        assert!(hits[0].score > 0.0);
        assert!(hits.len() <= 2);
        assert!(r.similar("zebra", 5, 1).is_empty());
    }

    #[test]
    fn duplicates_merge_and_three_accesses_promote() {
        let mut r = store();
        let (_, new) = r.store(
            entry(
                "a",
                MemoryKind::Episodic,
                "The user prefers tabs over spaces in Rust code",
                0,
            ),
            5,
        );
        assert!(!new, "same content, same id: an access, not a new entry");
        assert_eq!(r.len(), 3);
        r.similar("tabs spaces", 1, 6);
        let e = r.get("a").unwrap();
        assert_eq!((e.access_count, e.kind), (2, MemoryKind::Episodic));
        r.similar("tabs", 1, 7);
        assert_eq!(r.get("a").unwrap().kind, MemoryKind::Frequent);
        assert_eq!(r.frequent(10)[0].id, "a");
    }

    #[test]
    fn cleanup_removes_old_rarely_used_episodic_entries_only() {
        let mut r = store();
        r.touch("c", 1);
        r.touch("c", 1);
        let gone = r.cleanup(100, 2);
        assert_eq!(gone, ["a"]);
        assert!(r.get("b").is_some(), "semantic entries stay");
        assert!(r.get("c").is_some(), "used entries stay");
        assert!(
            r.similar("tabs", 5, 2).is_empty(),
            "the index forgot it too"
        );
        assert_eq!(r.stats()["semantic"], (1, 10));
    }
}
