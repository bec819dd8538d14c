//! The log watcher: follows clients' log files (Continue's `core.log` by default) and hands every
//! token figure it finds to a sink, from one background thread.

mod parse;
mod tail;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use serde::Serialize;

pub use parse::{LogMetric, LogParser, MetricKind};
pub use tail::{Tail, TailState};

/// Where one watched file stands, for `/health`.
#[derive(Debug, Clone, Serialize)]
pub struct PathStatus {
    pub path: String,
    pub state: TailState,
    pub lines: u64,
    pub metrics: u64,
    pub rotations: u64,
    pub truncations: u64,
    /// Epoch milliseconds of the last figure found.
    pub last_metric_at: Option<i64>,
    pub error: Option<String>,
}

/// Shared view of the watched files.
pub type WatchStatus = Arc<Mutex<Vec<PathStatus>>>;

/// Receives each figure with the path it came from.
pub type Sink = Box<dyn Fn(&str, LogMetric) + Send>;

/// The running watcher; stops when dropped or on [`LogWatcher::stop`].
#[derive(Debug)]
pub struct LogWatcher {
    status: Arc<Mutex<Vec<PathStatus>>>,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// `~/x` → `$HOME/x`.
pub fn expand_home(path: &str, home: Option<&Path>) -> PathBuf {
    match (path.strip_prefix("~/"), home) {
        (Some(rest), Some(h)) => h.join(rest),
        _ => PathBuf::from(path),
    }
}

impl LogWatcher {
    pub fn spawn(paths: Vec<PathBuf>, poll: Duration, sink: Sink) -> std::io::Result<Self> {
        let status = Arc::new(Mutex::new(
            paths
                .iter()
                .map(|p| PathStatus {
                    path: p.display().to_string(),
                    state: TailState::Waiting,
                    lines: 0,
                    metrics: 0,
                    rotations: 0,
                    truncations: 0,
                    last_metric_at: None,
                    error: None,
                })
                .collect(),
        ));
        let (stop, stopped) = mpsc::channel();
        let shared = status.clone();
        let thread = std::thread::Builder::new()
            .name("log-watcher".into())
            .spawn(move || run(paths, poll, sink, &shared, &stopped))?;
        Ok(Self {
            status,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    pub fn status_handle(&self) -> WatchStatus {
        self.status.clone()
    }

    pub fn status(&self) -> Vec<PathStatus> {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Stops the thread and waits for it (at most one poll).
    pub fn stop(&mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for LogWatcher {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(
    paths: Vec<PathBuf>,
    poll: Duration,
    sink: Sink,
    status: &Mutex<Vec<PathStatus>>,
    stopped: &mpsc::Receiver<()>,
) {
    let mut tails: Vec<(Tail, LogParser)> = paths
        .into_iter()
        .map(|p| (Tail::new(p), LogParser::new()))
        .collect();
    let mut lines = Vec::new();
    let mut metrics = Vec::new();
    loop {
        for (i, (tail, parser)) in tails.iter_mut().enumerate() {
            lines.clear();
            let result = tail.poll(&mut lines);
            for l in &lines {
                parser.feed(l, &mut metrics);
            }
            // A block is complete once the writer pauses: nothing more arrived in this poll.
            if lines.is_empty() {
                parser.close(&mut metrics);
            }
            let found = metrics.len() as u64;
            // The status first: whoever sees a metric's event and asks `/health` finds it counted.
            if let Ok(mut st) = status.lock()
                && let Some(s) = st.get_mut(i)
            {
                s.state = tail.state;
                s.lines += lines.len() as u64;
                s.metrics += found;
                s.rotations = tail.rotations;
                s.truncations = tail.truncations;
                if found > 0 {
                    s.last_metric_at = Some(gatehouse_core::time::now_ms());
                }
                s.error = result.err().map(|e| e.to_string());
            }
            let path = tail.path().display().to_string();
            for m in metrics.drain(..) {
                sink(&path, m);
            }
        }
        match stopped.recv_timeout(poll) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::time::Instant;

    use super::*;

    #[test]
    fn the_sample_log_yields_its_figures_across_a_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("core.log");
        std::fs::write(&p, "from before the start: prompt tokens: 1\n").unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let sink: Sink = Box::new(move |_, m| {
            let _ = tx.send(m);
        });
        let mut w = LogWatcher::spawn(vec![p.clone()], Duration::from_millis(10), sink).unwrap();
        let wait_following = Instant::now();
        while w.status()[0].state != TailState::Following {
            assert!(wait_following.elapsed() < Duration::from_secs(5));
            std::thread::sleep(Duration::from_millis(5));
        }
        let sample = include_str!("../../tests/data/continue-core.log");
        let (first, second) = sample.split_at(sample.find("# rotate").unwrap());
        std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .unwrap()
            .write_all(first.as_bytes())
            .unwrap();
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while got.len() < 4 && Instant::now() < deadline {
            if let Ok(m) = rx.recv_timeout(Duration::from_millis(50)) {
                got.push(m);
            }
        }
        std::fs::rename(&p, dir.path().join("core.log.1")).unwrap();
        std::fs::write(&p, second).unwrap();
        while got.len() < 6 && Instant::now() < deadline {
            if let Ok(m) = rx.recv_timeout(Duration::from_millis(50)) {
                got.push(m);
            }
        }
        w.stop();
        let kinds: Vec<_> = got.iter().map(|m| (m.kind, m.context_tokens())).collect();
        assert_eq!(
            kinds,
            [
                (MetricKind::Tokens, Some(1290)),
                (MetricKind::CompileChat, Some(10_540)),
                (MetricKind::Tokens, Some(11_002)),
                (MetricKind::ApiError, Some(140_000)),
                (MetricKind::Tokens, Some(512)),
                (MetricKind::CompileChat, Some(2_300)),
            ]
        );
        let st = &w.status()[0];
        assert_eq!(st.rotations, 1);
        assert_eq!(st.metrics, 6);
    }
}
