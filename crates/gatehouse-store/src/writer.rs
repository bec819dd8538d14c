//! The batching writer: the only path by which the gateway writes to its store.
//!
//! Request handlers push [`WriteOp`]s into a bounded queue and return; one task drains the queue
//! in batches, each applied in a single transaction, so throughput scales with batch size rather
//! than with fsyncs. Readers that need their own writes call [`WriterHandle::flush`], which
//! completes once everything queued before it is committed.
//!
//! A batch the database refuses (locked by another process, read-only, disk full) is kept and
//! retried, with backoff, until it is written: rows wait in the queue meanwhile (and the proxy
//! waits for room once the queue is full) and `writable` is false, which turns `/health/ready`
//! false. Only an op that breaks a constraint on its own is dropped, and counted. Ops are
//! idempotent, so a batch whose commit failed after all is stored once when retried. At
//! shutdown the retries stop after [`CLOSE_RETRY`]; what is still unwritten then is counted
//! as lost and logged.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::{Store, WriteOp};

enum Cmd {
    /// An op, and when it was queued.
    Op(WriteOp, tokio::time::Instant),
    Flush(oneshot::Sender<()>),
    /// Ends the writer once everything queued before it is written.
    Close,
}

/// How long a closing writer keeps retrying a batch the database refuses.
pub const CLOSE_RETRY: Duration = Duration::from_secs(10);
/// The longest pause between two attempts at a refused batch.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Counters the health endpoint reports.
#[derive(Debug)]
pub struct WriterStats {
    pub written: AtomicU64,
    /// Attempts at a batch that the database refused (each is retried).
    pub failed_batches: AtomicU64,
    /// Ops dropped because they broke a constraint on their own.
    pub dropped: AtomicU64,
    /// Ops given up at shutdown because the database still refused them.
    pub lost: AtomicU64,
    /// Ops that could not be queued because the writer had already closed.
    pub rejected: AtomicU64,
    /// False from a refused batch until a batch is written again.
    pub writable: AtomicBool,
    /// What the database said last time it refused a batch.
    pub last_error: Mutex<Option<String>>,
}

impl Default for WriterStats {
    fn default() -> Self {
        Self {
            written: AtomicU64::new(0),
            failed_batches: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            writable: AtomicBool::new(true),
            last_error: Mutex::new(None),
        }
    }
}

impl WriterStats {
    pub fn writable(&self) -> bool {
        self.writable.load(Ordering::Relaxed)
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// A cheap, cloneable handle for queueing writes.
#[derive(Clone)]
pub struct WriterHandle {
    tx: mpsc::Sender<Cmd>,
    /// Where [`WriterHandle::record_now`] puts an op when the queue is full. It only fills while
    /// the channel is full, so the writer is always awake to drain it; it is bounded in practice
    /// by the number of requests in flight, since only their `Drop`s use it.
    overflow: Arc<Mutex<Vec<WriteOp>>>,
    /// Wakes a gathering writer before its deadline: a full batch, a flush, a close. Ops alone
    /// don't wake it; it collects them when the batch is due. Waking the writer's thread for
    /// each op cost a context switch per request under load.
    wake: Arc<Notify>,
    batch_size: usize,
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
pub struct Permit<'a>(mpsc::Permit<'a, Cmd>, &'a WriterHandle);

impl Permit<'_> {
    pub fn send(self, op: WriteOp) {
        self.0.send(Cmd::Op(op, tokio::time::Instant::now()));
        self.1.wake_if_full();
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
        let wake = Arc::new(Notify::new());
        let batch_size = batch_size.max(1);
        let work = run(
            store,
            rx,
            overflow.clone(),
            wake.clone(),
            batch_size,
            linger,
            stats.clone(),
        );
        // A thread and a runtime of its own: on the request runtime, under full load, the
        // writer waited behind every request task at each of its awaits, its rows aged past
        // `linger` and a `kill -9` lost more than one window; and its statement building took
        // turns from requests. Timers and IO: SQLite is sqlx's threads, but PostgreSQL is
        // sockets, and a connection the pool opens for the writer is registered on this runtime.
        let task = on_own_thread(work);
        (
            WriterHandle {
                tx,
                overflow,
                wake,
                batch_size,
                stats,
            },
            task,
        )
    }
}

impl WriterHandle {
    /// Queues an op, waiting for room when the queue is full: back-pressure rather than loss.
    pub async fn record(&self, op: WriteOp) {
        if self
            .tx
            .send(Cmd::Op(op, tokio::time::Instant::now()))
            .await
            .is_err()
        {
            self.stats.rejected.fetch_add(1, Ordering::Relaxed);
            tracing::error!("accounting writer is closed; a record was dropped");
        }
        self.wake_if_full();
    }

    /// Queues an op from synchronous code (a `Drop`) without waiting; when the queue is full the
    /// op goes to the overflow list, which the writer drains with the queue.
    pub fn record_now(&self, op: WriteOp) {
        match self.tx.try_send(Cmd::Op(op, tokio::time::Instant::now())) {
            Ok(()) => self.wake_if_full(),
            Err(mpsc::error::TrySendError::Full(Cmd::Op(op, _))) => {
                match self.overflow.lock() {
                    Ok(mut o) => o.push(op),
                    Err(poisoned) => poisoned.into_inner().push(op),
                }
                self.wake.notify_one();
            }
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
        self.tx.reserve().await.ok().map(|p| Permit(p, self))
    }

    /// Waits until everything queued before this call is committed.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Cmd::Flush(tx)).await.is_ok() {
            self.wake.notify_one();
            let _ = rx.await;
        }
    }

    /// Asks the writer to finish: everything queued before this is written, then it stops.
    pub async fn close(&self) {
        if self.tx.send(Cmd::Close).await.is_ok() {
            self.wake.notify_one();
        }
    }

    fn wake_if_full(&self) {
        if self.queued() >= self.batch_size {
            self.wake.notify_one();
        }
    }

    /// Ops waiting in the queue.
    pub fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Ops the queue holds at most.
    pub fn capacity(&self) -> usize {
        self.tx.max_capacity()
    }

    pub fn stats(&self) -> &WriterStats {
        &self.stats
    }
}

/// Runs the writer on a thread of its own; the handle finishes when the writer does. A plain
/// thread, not `spawn_blocking`: a runtime waits for its blocking threads when it is dropped,
/// and a writer retrying a database that is gone would then hold it forever. If the runtime
/// that spawned it goes away without closing it (a test's, an aborted process), the writer
/// stops too, as a task of that runtime would.
fn on_own_thread(work: impl Future<Output = ()> + Send + 'static) -> JoinHandle<()> {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::warn!(error = %e, "no runtime of its own for the writer; it shares the main one");
            return tokio::spawn(work);
        }
    };
    let (done_tx, done_rx) = oneshot::channel::<()>();
    // Never sent: its sender is dropped with the task below, when that runtime goes away.
    let (alive_tx, alive_rx) = oneshot::channel::<()>();
    let spawned = std::thread::Builder::new()
        .name("gatehouse-writer".into())
        .spawn(move || {
            rt.block_on(async move {
                let work = std::pin::pin!(work);
                futures_util::future::select(work, alive_rx).await;
            });
            let _ = done_tx.send(());
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "could not start the accounting writer's thread; rows will be rejected");
    }
    tokio::spawn(async move {
        let _alive = alive_tx;
        let _ = done_rx.await;
    })
}

async fn run(
    store: Arc<dyn Store>,
    mut rx: mpsc::Receiver<Cmd>,
    overflow: Arc<Mutex<Vec<WriteOp>>>,
    wake: Arc<Notify>,
    batch_size: usize,
    linger: Duration,
    stats: Arc<WriterStats>,
) {
    let mut batch: Vec<WriteOp> = Vec::with_capacity(batch_size);
    let mut waiters: Vec<oneshot::Sender<()>> = Vec::new();
    let mut closing = false;
    // How long a batch takes to write: the gather leaves room for it.
    let mut last_write = Duration::ZERO;
    while !closing {
        let Some(first) = rx.recv().await else { break };
        // Gather until the first op is due: under load the batch fills at once; at a trickle,
        // rows share one transaction instead of paying a commit each. Due `linger` after it was
        // queued (not after now: it may have waited while the last batch was written), less the
        // time a write takes and an eighth for the writer's thread waiting for a core, so no row
        // stays unwritten longer than about `linger` and a `kill -9` loses at most about
        // `linger` of rows. A flush or close cuts it short.
        let deadline = match &first {
            Cmd::Op(_, queued) => *queued + linger.saturating_sub(last_write + linger / 8),
            _ => tokio::time::Instant::now(),
        };
        let mut next = Some(first);
        loop {
            while let Some(cmd) = next.take() {
                match cmd {
                    Cmd::Op(op, _) => batch.push(op),
                    Cmd::Flush(w) => waiters.push(w),
                    Cmd::Close => {
                        closing = true;
                        rx.close();
                    }
                }
                if batch.len() >= batch_size {
                    break;
                }
                next = rx.try_recv().ok();
            }
            if batch.len() >= batch_size
                || closing
                || !waiters.is_empty()
                || tokio::time::Instant::now() >= deadline
            {
                break;
            }
            // Not polling the queue meanwhile: a sender finds no waiting receiver to wake.
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => {}
                () = wake.notified() => {}
            }
            next = rx.try_recv().ok();
        }
        take_overflow(&overflow, &mut batch);
        let started = Instant::now();
        write(&*store, &mut batch, &stats, None).await;
        // The slowest recent write, decaying: one slow write (waiting for a core) is likely
        // followed by another, while a write that had to wait for the database (retries) says
        // nothing about the next one, hence the cap.
        last_write = started
            .elapsed()
            .min(linger / 2)
            .max(last_write.mul_f32(0.875));
        for w in waiters.drain(..) {
            let _ = w.send(());
        }
    }
    // Closed: drain whatever was queued before the close took effect.
    let give_up = Instant::now() + CLOSE_RETRY;
    while let Some(cmd) = rx.recv().await {
        match cmd {
            Cmd::Op(op, _) => batch.push(op),
            Cmd::Flush(w) => waiters.push(w),
            Cmd::Close => {}
        }
        if batch.len() >= batch_size {
            write(&*store, &mut batch, &stats, Some(give_up)).await;
        }
    }
    take_overflow(&overflow, &mut batch);
    write(&*store, &mut batch, &stats, Some(give_up)).await;
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

/// Writes `batch`, retrying while the database refuses it; past `give_up` (at shutdown) what is
/// left is counted as lost.
async fn write(
    store: &dyn Store,
    batch: &mut Vec<WriteOp>,
    stats: &WriterStats,
    give_up: Option<Instant>,
) {
    if batch.is_empty() {
        return;
    }
    // A row gets its id here, once, off the request path: a batch retried after a refused
    // commit writes the same ids again, and `ON CONFLICT (id) DO NOTHING` stores each once.
    for op in batch.iter_mut() {
        if let WriteOp::InsertRequest(r) = op
            && r.row_id.is_empty()
        {
            r.row_id = uuid::Uuid::now_v7().to_string();
        }
    }
    let mut delay = Duration::from_millis(50);
    let mut attempt = 0u64;
    loop {
        match store.apply(batch).await {
            Ok(applied) => {
                let n = batch.len() as u64;
                stats
                    .written
                    .fetch_add(n.saturating_sub(applied.dropped), Ordering::Relaxed);
                stats.dropped.fetch_add(applied.dropped, Ordering::Relaxed);
                if !stats.writable.swap(true, Ordering::Relaxed) {
                    tracing::info!(
                        rows = n,
                        "the database accepts writes again; the queued rows are written"
                    );
                }
                batch.clear();
                return;
            }
            Err(e) => {
                attempt += 1;
                stats.failed_batches.fetch_add(1, Ordering::Relaxed);
                stats.writable.store(false, Ordering::Relaxed);
                *stats.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                if give_up.is_some_and(|t| Instant::now() >= t) {
                    stats.lost.fetch_add(batch.len() as u64, Ordering::Relaxed);
                    tracing::error!(error = %e, rows = batch.len(), "shutting down and the database still refuses writes: these rows are lost");
                    batch.clear();
                    return;
                }
                // Loud once, then now and then: a full disk can last.
                if attempt == 1 || attempt.is_power_of_two() {
                    tracing::error!(error = %e, attempt, rows = batch.len(), "the database refused a write batch; keeping the rows and retrying");
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(MAX_BACKOFF);
            }
        }
    }
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
