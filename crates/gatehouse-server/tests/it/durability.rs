//! Nothing accepted is lost: a database that refuses writes (locked by another process, a
//! read-only file, a full disk) delays rows but loses none and duplicates none, and
//! `/health/ready` says so meanwhile.

use std::path::Path;
use std::time::{Duration, Instant};

use sqlx::Connection;

use crate::support::{Cuttable, Options, TestApp, user};

/// `/health/ready`'s status: `ready`, `degraded` (the database is away, requests still
/// served, 200) or `not_ready` (503).
async fn ready(app: &TestApp) -> String {
    match app.http.get(app.url("/health/ready")).send().await {
        Ok(r) => {
            let ok = r.status().is_success();
            let v: serde_json::Value = r.json().await.unwrap_or_default();
            let status = v["status"].as_str().unwrap_or("").to_owned();
            assert_eq!(ok, status != "not_ready", "{v}");
            status
        }
        Err(_) => String::new(),
    }
}

async fn wait_ready(app: &TestApp, want: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while ready(app).await != want {
        assert!(
            Instant::now() < deadline,
            "/health/ready never became {want}: {}",
            app.get_json_any("/health").await["database"]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Rows in the database file, and how many distinct row ids they have.
async fn count_rows(db: &Path) -> (i64, i64) {
    let mut c = sqlx::SqliteConnection::connect(&format!("sqlite:{}", db.display()))
        .await
        .unwrap();
    let row: (i64, i64) = sqlx::query_as("SELECT COUNT(*), COUNT(DISTINCT id) FROM requests")
        .fetch_one(&mut c)
        .await
        .unwrap();
    row
}

async fn send(app: &TestApp, n: usize) -> usize {
    let mut ok = 0;
    for i in 0..n {
        let r = app.chat(user("mock/echo", &format!("request {i}"))).await;
        assert_eq!(r.status(), 200, "the proxy keeps answering");
        ok += 1;
    }
    ok
}

#[tokio::test]
async fn a_database_locked_by_another_process_delays_rows_and_loses_none() {
    let app = TestApp::spawn().await;
    if app.on_postgres() {
        return; // a fault of SQLite's file; PostgreSQL's own are in `postgres_down`
    }
    let db = app.db_path();
    let before = send(&app, 3).await;
    app.state.writer.flush().await;
    // Another process takes the write lock and keeps it past the busy timeout (5 s).
    let mut other = sqlx::SqliteConnection::connect(&format!("sqlite:{}", db.display()))
        .await
        .unwrap();
    sqlx::raw_sql("BEGIN IMMEDIATE")
        .execute(&mut other)
        .await
        .unwrap();
    let during = send(&app, 20).await;
    wait_ready(&app, "degraded", Duration::from_secs(15)).await;
    let h = app.get_json_any("/health").await;
    assert_eq!(h["database"]["writable"], false, "{h}");
    assert!(
        h["database"]["last_error"]
            .as_str()
            .unwrap()
            .contains("locked"),
        "{h}"
    );
    assert!(h["accounting"]["failed_batches"].as_u64().unwrap() >= 1);
    sqlx::raw_sql("ROLLBACK").execute(&mut other).await.unwrap();
    drop(other);
    wait_ready(&app, "ready", Duration::from_secs(15)).await;
    app.state.writer.flush().await;
    assert_eq!(
        count_rows(&db).await,
        ((before + during) as i64, (before + during) as i64)
    );
    let h = app.get_json_any("/health").await;
    assert_eq!(h["accounting"]["lost"], 0);
    assert_eq!(h["accounting"]["dropped"], 0);
}

/// Sets or clears the immutable attribute of `files`: even root cannot write them then, through
/// descriptors already open too, which is how a read-only database file looks to SQLite.
fn immutable(files: &[std::path::PathBuf], on: bool) {
    for f in files {
        let out = std::process::Command::new("chattr")
            .arg(if on { "+i" } else { "-i" })
            .arg(f)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "this test makes the database file immutable and needs root on ext4 (CI runs as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[tokio::test]
async fn a_read_only_database_file_delays_rows_and_loses_none() {
    let app = TestApp::spawn().await;
    if app.on_postgres() {
        return; // a fault of SQLite's file; PostgreSQL's own are in `postgres_down`
    }
    let db = app.db_path();
    let before = send(&app, 2).await;
    app.state.writer.flush().await;
    // The database and its log; not the shared-memory index, which SQLite maps into memory
    // (a write to a mapped page of an immutable file is a SIGBUS, not an error).
    let files = vec![db.clone(), db.with_extension("db-wal")];
    immutable(&files, true);
    let during = send(&app, 10).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while ready(&app).await == "ready" {
        assert!(Instant::now() < deadline, "writes never failed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let h = app.get_json_any("/health").await;
    assert_eq!(h["database"]["writable"], false, "{h}");
    immutable(&files, false);
    wait_ready(&app, "ready", Duration::from_secs(10)).await;
    app.state.writer.flush().await;
    assert_eq!(
        count_rows(&db).await,
        ((before + during) as i64, (before + during) as i64)
    );
}

/// A tmpfs of `size` mounted at a new directory; unmounted on drop.
struct TinyFs(tempfile::TempDir);

impl TinyFs {
    fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "this test mounts a small tmpfs to fill it up and needs root (CI runs as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self(dir)
    }
}

impl Drop for TinyFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.0.path())
            .status();
    }
}

/// Fills the filesystem of `dir` with one file until it is full.
fn fill(dir: &Path) -> std::path::PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let block = vec![0u8; 64 * 1024];
    while f.write_all(&block).is_ok() {}
    // Whatever is left below a block.
    while f.write_all(&[0u8; 512]).is_ok() {}
    let _ = f.sync_all();
    path
}

/// A gateway whose data directory is on a small tmpfs of its own (the app drops first).
async fn app_on_tiny_fs() -> (TinyFs, TestApp) {
    let fs = TinyFs::mount("8m");
    let dir = tempfile::tempdir_in(fs.0.path()).unwrap();
    let app = TestApp::spawn_with(Options {
        dir: Some(dir),
        ..Options::default()
    })
    .await;
    (fs, app)
}

/// Frees the space `filler` took; then every one of the `sent` rows is written, once.
async fn space_back_and_every_row_written(app: TestApp, filler: &Path, db: &Path, sent: usize) {
    std::fs::remove_file(filler).unwrap();
    wait_ready(&app, "ready", Duration::from_secs(15)).await;
    app.state.writer.flush().await;
    assert_eq!(count_rows(db).await, (sent as i64, sent as i64));
    let h = app.get_json_any("/health").await;
    assert_eq!(h["accounting"]["lost"], 0, "{h}");
    drop(app);
}

#[tokio::test]
async fn a_full_disk_delays_rows_and_loses_none_once_space_is_back() {
    let (fs, app) = app_on_tiny_fs().await;
    if app.on_postgres() {
        return; // a fault of SQLite's file; PostgreSQL's own are in `postgres_down`
    }
    let db = app.db_path();
    let mut sent = send(&app, 2).await;
    app.state.writer.flush().await;
    let filler = fill(fs.0.path());
    // Rows until the database has to grow and cannot: the WAL reuses what it has first.
    let deadline = Instant::now() + Duration::from_secs(60);
    while ready(&app).await == "ready" {
        sent += send(&app, 20).await;
        assert!(
            Instant::now() < deadline,
            "the disk never filled ({sent} requests)"
        );
    }
    sent += send(&app, 5).await;
    let h = app.get_json_any("/health").await;
    assert_eq!(h["database"]["writable"], false, "{h}");
    space_back_and_every_row_written(app, &filler, &db, sent).await;
}

/// The campaign's case: a new database whose disk is already full, then many clients at once.
/// Here the COMMIT itself fails; a connection left inside a transaction it no longer tracked
/// once nested every later batch in a savepoint that never committed and held the write lock.
#[tokio::test]
async fn a_disk_full_from_the_start_under_concurrent_load_loses_no_row() {
    let (fs, app) = app_on_tiny_fs().await;
    if app.on_postgres() {
        return; // a fault of SQLite's file; PostgreSQL's own are in `postgres_down`
    }
    let db = app.db_path();
    let filler = fill(fs.0.path());
    let mut sent = 0;
    for round in 0..40 {
        let answers = futures_util::future::join_all(
            (0..32).map(|i| app.chat(user("mock/echo", &format!("round {round} client {i}")))),
        )
        .await;
        for r in answers {
            assert_eq!(r.status(), 200, "the proxy keeps answering");
            sent += 1;
        }
    }
    space_back_and_every_row_written(app, &filler, &db, sent).await;
}

/// PostgreSQL gone under load: proxying goes on, `/health` says the database is down, rows
/// wait in the queue; back, every row is written once.
#[tokio::test]
async fn postgres_down_delays_rows_and_loses_none() {
    let Some(base) = std::env::var("GATEHOUSE_TEST_STORAGE")
        .ok()
        .filter(|v| v.starts_with("postgres"))
    else {
        return; // the suite's PostgreSQL pass runs it
    };
    // The suite's server, reached through a path the test can cut.
    let rest = base.split_once('@').map_or("", |(_, r)| r);
    let (hostport, db) = rest.split_once('/').unwrap();
    let db = db.split('?').next().unwrap();
    let link = Cuttable::to(hostport).await;
    let user = base
        .split_once("://")
        .and_then(|(_, r)| r.split_once('@'))
        .map_or("postgres", |(u, _)| u);
    let schema = format!("t_{}", uuid::Uuid::now_v7().simple());
    let direct = format!("postgres://{user}@{hostport}/{db}?options[search_path]={schema}");
    let app = TestApp::spawn_with(Options {
        storage_url: Some(format!(
            "postgres://{user}@127.0.0.1:{}/{db}?options[search_path]={schema}",
            link.port
        )),
        ..Options::default()
    })
    .await;
    let mut sent = send(&app, 3).await;
    app.state.writer.flush().await;

    link.cut();
    sent += send(&app, 20).await;
    wait_ready(&app, "degraded", Duration::from_secs(15)).await;
    let h = app.get_json_any("/health").await;
    assert_eq!(h["database"]["ok"], false, "{h}");
    assert_eq!(h["database"]["engine"], "postgres", "{h}");
    sent += send(&app, 5).await;

    link.restore();
    wait_ready(&app, "ready", Duration::from_secs(30)).await;
    app.state.writer.flush().await;
    let mut c = sqlx::PgConnection::connect(&direct).await.unwrap();
    let (rows, ids): (i64, i64) =
        sqlx::query_as("SELECT COUNT(*), COUNT(DISTINCT request_id) FROM requests")
            .fetch_one(&mut c)
            .await
            .unwrap();
    assert_eq!((rows, ids), (sent as i64, sent as i64));
    let h = app.get_json_any("/health").await;
    assert_eq!(h["accounting"]["lost"], 0, "{h}");
}
