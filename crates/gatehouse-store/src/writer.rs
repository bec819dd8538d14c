//! The batching writer: the only path by which the gateway writes to its store.
//!
//! Request handlers push [`WriteOp`]s into a bounded queue and return; one task drains the queue
//! in batches, each applied in a single transaction, so throughput scales with batch size rather
//! than with fsyncs. Readers that need their own writes call [`WriterHandle::flush`], which
//! completes once everything queued before it is committed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::{Store, WriteOp};

enum Cmd {
    Op(WriteOp),
    Flush(oneshot::Sender<()>),
    /// Ends the writer once everything queued before it is written.
    Close,
}

/// Counters the health endpoint reports.
#[derive(Debug, Default)]
pub struct WriterStats {
    pub written: AtomicU64,
    pub failed_batches: AtomicU64,
    /// Ops that could not be queued because the writer had already closed.
    pub rejected: AtomicU64,
}

/// A cheap, cloneable handle for queueing writes.
#[derive(Clone)]
pub struct WriterHandle {
    tx: mpsc::Sender<Cmd>,
    /// Where [`WriterHandle::record_now`] puts an op when the queue is full. It only fills while
    /// the channel is full, so the writer is always awake to drain it; it is bounded in practice
    /// by the number of requests in flight, since only their `Drop`s use it.
    overflow: Arc<Mutex<Vec<WriteOp>>>,
    stats: Arc<WriterStats>,
}

impl std::fmt::Debug for WriterHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriterHandle")
            .field("queued", &self.queued())
            .finish()
    }
}

/// Room for one op in the queue, from [`WriterHandle::reserve`].
pub struct Permit<'a>(mpsc::Permit<'a, Cmd>);

impl Permit<'_> {
    pub fn send(self, op: WriteOp) {
        self.0.send(Cmd::Op(op));
    }
}

/// The writer task and its handle.
pub struct Writer;

impl Writer {
    /// `linger` is the longest a row waits for others to share its transaction.
    pub fn spawn(
        store: Arc<dyn Store>,
        capacity: usize,
        batch_size: usize,
        linger: Duration,
    ) -> (WriterHandle, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let stats = Arc::new(WriterStats::default());
        let overflow = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn(run(
            store,
            rx,
            overflow.clone(),
            batch_size.max(1),
            linger,
            stats.clone(),
        ));
        (
            WriterHandle {
                tx,
                overflow,
                stats,
            },
            task,
        )
    }
}

impl WriterHandle {
    /// Queues an op, waiting for room when the queue is full: back-pressure rather than loss.
    pub async fn record(&self, op: WriteOp) {
        if self.tx.send(Cmd::Op(op)).await.is_err() {
            self.stats.rejected.fetch_add(1, Ordering::Relaxed);
            tracing::error!("accounting writer is closed; a record was dropped");
        }
    }

    /// Queues an op from synchronous code (a `Drop`) without waiting; when the queue is full the
    /// op goes to the overflow list, which the writer drains with the queue.
    pub fn record_now(&self, op: WriteOp) {
        match self.tx.try_send(Cmd::Op(op)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(Cmd::Op(op))) => match self.overflow.lock() {
                Ok(mut o) => o.push(op),
                Err(poisoned) => poisoned.into_inner().push(op),
            },
            Err(_) => {
                self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::error!("accounting writer is closed; a record was dropped");
            }
        }
    }

    /// Waits for room in the queue; the permit then queues one op without waiting. `None` when
    /// the writer has closed (the op is then handed to [`WriterHandle::record_now`], which
    /// counts it as rejected).
    pub async fn reserve(&self) -> Option<Permit<'_>> {
        self.tx.reserve().await.ok().map(Permit)
    }

    /// Waits until everything queued before this call is committed.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Cmd::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Asks the writer to finish: everything queued before this is written, then it stops.
    pub async fn close(&self) {
        let _ = self.tx.send(Cmd::Close).await;
    }

    /// Ops waiting in the queue.
    pub fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    pub fn stats(&self) -> &WriterStats {
        &self.stats
    }
}

async fn run(
    store: Arc<dyn Store>,
    mut rx: mpsc::Receiver<Cmd>,
    overflow: Arc<Mutex<Vec<WriteOp>>>,
    batch_size: usize,
    linger: Duration,
    stats: Arc<WriterStats>,
) {
    let mut batch: Vec<WriteOp> = Vec::with_capacity(batch_size);
    let mut waiters: Vec<oneshot::Sender<()>> = Vec::new();
    let mut closing = false;
    while !closing {
        let Some(first) = rx.recv().await else { break };
        let mut next = Some(first);
        // Gather for at most `linger`: under load the batch fills at once; at a trickle, rows
        // share one transaction instead of paying a commit each. A flush or close cuts it short.
        let deadline = tokio::time::Instant::now() + linger;
        while let Some(cmd) = next.take() {
            match cmd {
                Cmd::Op(op) => batch.push(op),
                Cmd::Flush(w) => waiters.push(w),
                Cmd::Close => {
                    closing = true;
                    rx.close();
                }
            }
            if batch.len() >= batch_size {
                break;
            }
            next = match rx.try_recv() {
                Ok(cmd) => Some(cmd),
                Err(_) if closing || !waiters.is_empty() => None,
                Err(_) => tokio::time::timeout_at(deadline, rx.recv())
                    .await
                    .ok()
                    .flatten(),
            };
        }
        take_overflow(&overflow, &mut batch);
        write(&*store, &mut batch, &stats).await;
        for w in waiters.drain(..) {
            let _ = w.send(());
        }
    }
    // Closed: drain whatever was queued before the close took effect.
    while let Some(cmd) = rx.recv().await {
        match cmd {
            Cmd::Op(op) => batch.push(op),
            Cmd::Flush(w) => waiters.push(w),
            Cmd::Close => {}
        }
        if batch.len() >= batch_size {
            write(&*store, &mut batch, &stats).await;
        }
    }
    take_overflow(&overflow, &mut batch);
    write(&*store, &mut batch, &stats).await;
    for w in waiters.drain(..) {
        let _ = w.send(());
    }
    tracing::debug!(
        written = stats.written.load(Ordering::Relaxed),
        "accounting writer stopped"
    );
}

fn take_overflow(overflow: &Mutex<Vec<WriteOp>>, batch: &mut Vec<WriteOp>) {
    let mut o = match overflow.lock() {
        Ok(o) => o,
        Err(poisoned) => poisoned.into_inner(),
    };
    batch.append(&mut o);
}

async fn write(store: &dyn Store, batch: &mut Vec<WriteOp>, stats: &WriterStats) {
    if batch.is_empty() {
        return;
    }
    // A whole-batch failure is a database problem (disk full, locked file): retry a few times
    // before giving the rows up, and say so loudly.
    let mut delay = Duration::from_millis(50);
    for attempt in 1..=5 {
        match store.apply(batch).await {
            Ok(()) => {
                stats
                    .written
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                batch.clear();
                return;
            }
            Err(e) if attempt < 5 => {
                tracing::warn!(error = %e, attempt, rows = batch.len(), "write batch failed; retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(e) => {
                stats.failed_batches.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, rows = batch.len(), "write batch failed; rows lost");
            }
        }
    }
    batch.clear();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SqliteStore;
    use gatehouse_core::SessionId;
    use gatehouse_core::record::Session;

    #[tokio::test]
    async fn everything_queued_before_close_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("g.db")).await.unwrap());
        let (handle, task) = Writer::spawn(store.clone(), 64, 16, Duration::from_millis(20));
        let id = SessionId::new("s");
        handle
            .record(WriteOp::CreateSession(Session {
                id: id.clone(),
                name: "n".into(),
                model_key: None,
                provider: None,
                created_at: 0,
            }))
            .await;
        for _ in 0..1000 {
            handle.record_now(WriteOp::InsertRequest(Box::new(
                crate::sqlite::tests::record(&id, 200, 1, 1),
            )));
        }
        handle.close().await;
        task.await.unwrap();
        assert_eq!(store.count_requests(&id).await.unwrap(), 1000);
        assert_eq!(handle.stats().written.load(Ordering::Relaxed), 1001);
    }

    #[tokio::test]
    async fn flush_makes_writes_visible() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("g.db")).await.unwrap());
        let (handle, _task) = Writer::spawn(store.clone(), 8, 4, Duration::from_millis(20));
        let id = SessionId::new("s");
        for _ in 0..20 {
            handle
                .record(WriteOp::InsertRequest(Box::new(
                    crate::sqlite::tests::record(&id, 200, 1, 1),
                )))
                .await;
        }
        handle.flush().await;
        assert_eq!(store.count_requests(&id).await.unwrap(), 20);
    }
}
