//! The binary's commands, run as a user would.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers fail the test where they fail"
)]

use std::process::Command;

fn gatehouse() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gatehouse"));
    // Start from a clean slate: no inherited config or overrides.
    for (k, _) in std::env::vars() {
        if k.starts_with("GATEHOUSE_") || k.to_ascii_lowercase().ends_with("_proxy") {
            c.env_remove(k);
        }
    }
    c
}

#[test]
fn init_writes_a_file_that_check_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.toml");
    let out = gatehouse()
        .args(["init", "--out"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("[models.\"mistral/codestral-2501\"]"));
    assert!(text.contains("${MISTRAL_API_KEY}"));

    let again = gatehouse()
        .args(["init", "--out"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        !again.status.success(),
        "init must not overwrite without --force"
    );

    let out = gatehouse()
        .args(["check", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("is valid"), "{stdout}");
    assert!(
        stdout.contains("MISTRAL_API_KEY"),
        "names the keys still to set: {stdout}"
    );
}

#[test]
fn check_reports_every_mistake_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        "[server]\nprot = 9000\n\n[models.\"x/y\"]\nprovider = \"nowhere\"\nmodel = \"y\"\nmax_context_size = 0\n",
    )
    .unwrap();
    let out = gatehouse()
        .args(["check", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("3 problem(s)"), "{stderr}");
    assert!(stderr.contains("line 2: server.prot"), "{stderr}");
    assert!(stderr.contains("did you mean `port`?"), "{stderr}");
    assert!(
        stderr.contains("line 5: models.\"x/y\".provider"),
        "{stderr}"
    );
    assert!(
        stderr.contains("line 7: models.\"x/y\".max_context_size"),
        "{stderr}"
    );

    let missing = gatehouse()
        .args(["check", "--config", "/nonexistent/c.toml"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(1));
}

#[test]
fn version_and_refusing_remote_binds() {
    let out = gatehouse().arg("version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("gatehouse "));
    let dir = tempfile::tempdir().unwrap();
    let out = gatehouse()
        .args(["serve", "--host", "0.0.0.0", "--port", "0", "--data-dir"])
        .arg(dir.path())
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing to listen on 0.0.0.0"));
}

/// One HTTP/1.1 exchange over a plain socket; the tests need nothing more.
fn http(port: u16, method: &str, path: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text[9..12].parse().unwrap();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_owned()
    };
    (status, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `serve` in the background on a free port, with `HOME` in `dir`; returns the child and port.
fn serve(dir: &std::path::Path, extra: &[&str]) -> (std::process::Child, u16) {
    serve_with(gatehouse(), dir, extra)
}

/// [`serve`] from a command already set up (its environment).
fn serve_with(
    mut cmd: Command,
    dir: &std::path::Path,
    extra: &[&str],
) -> (std::process::Child, u16) {
    use std::io::BufRead;
    let mut child = cmd
        .args(["serve", "--port", "0", "--data-dir"])
        .arg(dir)
        .args(extra)
        .env("HOME", dir)
        .current_dir(dir)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The log goes to standard output.
    let log = child.stdout.take().unwrap();
    let mut lines = std::io::BufReader::new(log).lines();
    let port = loop {
        let line = strip_ansi(&lines.next().unwrap().unwrap());
        if line.contains("gatehouse ready") {
            let at = line.find("listen=127.0.0.1:").unwrap() + "listen=127.0.0.1:".len();
            let digits: String = line[at..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            break digits.parse().unwrap();
        }
    };
    // Keep draining the log so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, port)
}

fn stop(mut child: std::process::Child) {
    let pid = child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "serve did not exit cleanly: {status:?}");
}

#[test]
fn demo_mode_serves_simulated_models_and_traffic_then_export_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    let (child, port) = serve(dir.path(), &["--demo"]);

    let (status, body) = http(port, "GET", "/api/providers", "");
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let demo = v["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["key"] == "demo")
        .unwrap();
    assert_eq!(demo["demo"], true);
    let (_, health) = http(port, "GET", "/health", "");
    assert!(health.contains("\"demo\":true"), "{health}");

    let (status, body) = http(
        port,
        "POST",
        "/v1/chat/completions",
        r#"{"model":"demo/fast","messages":[{"role":"user","content":"hello demo"}]}"#,
    );
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        !v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .is_empty()
    );
    assert!(v["usage"]["completion_tokens"].as_u64().unwrap() > 10);

    // The simulated client opens a demo session and talks in it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let demo_session = loop {
        let (_, body) = http(port, "GET", "/api/sessions", "");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let found = v["sessions"].as_array().unwrap().iter().find(|s| {
            s["name"].as_str().unwrap_or("").starts_with("Demo 1:")
                && s["request_count"].as_u64().unwrap_or(0) >= 2
        });
        if let Some(s) = found {
            break s["id"].as_str().unwrap().to_owned();
        }
        assert!(std::time::Instant::now() < deadline, "no demo traffic: {v}");
        std::thread::sleep(std::time::Duration::from_millis(300));
    };
    stop(child);

    let csv = dir.path().join("all.csv");
    let out = gatehouse()
        .args(["export", "--all", "--format", "csv", "--data-dir"])
        .arg(dir.path())
        .arg("--out")
        .arg(&csv)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = std::fs::read_to_string(&csv).unwrap();
    assert!(text.starts_with("id,session_id,created_at,"));
    assert!(text.lines().count() >= 4, "{text}");
    assert!(text.contains("demo/tiny") && text.contains("demo/fast"));

    let out = gatehouse()
        .args([
            "export",
            "--session",
            &demo_session,
            "--format",
            "json",
            "--data-dir",
        ])
        .arg(dir.path())
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["session"]["id"], demo_session.as_str());
    let reqs = v["requests"].as_array().unwrap();
    assert!(reqs.len() >= 2);
    assert!(reqs.iter().all(|r| r["model_key"] == "demo/tiny"));
    assert!(reqs.iter().all(|r| r["cost_usd"].as_f64().unwrap() > 0.0));

    let out = gatehouse()
        .args(["export", "--session", "nope", "--data-dir"])
        .arg(dir.path())
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));

    // Retention by hand: recent rows are kept.
    let out = gatehouse()
        .args(["prune", "--requests-days", "30", "--data-dir"])
        .arg(dir.path())
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.starts_with("pruned 0 request rows past 30 days"),
        "{said}"
    );
    let out = gatehouse()
        .args(["prune", "--data-dir"])
        .arg(dir.path().join("nowhere"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no database"));
}

/// The seed project's own file (Kimi Proxy's `config.toml`), unchanged: `check` accepts it and
/// prints what each of its settings became; `serve` starts with it and serves its models.
#[test]
fn the_kimi_proxy_config_checks_and_serves_unchanged() {
    let seed = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../gatehouse-config/tests/fixtures/kimi_proxy_config.toml"
    );
    let out = gatehouse()
        .args(["check", "--config", seed])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("Kimi Proxy settings:"), "{stdout}");
    assert!(
        stdout.contains("proxy.default_model = \"kimi-code/kimi-for-coding\""),
        "{stdout}"
    );
    assert!(
        stdout.contains("compaction.auto.cooldown_secs = 300"),
        "{stdout}"
    );
    assert!(stdout.contains("is valid"), "{stdout}");

    let dir = tempfile::tempdir().unwrap();
    let (child, port) = serve(dir.path(), &["--config", seed]);
    let (status, body) = http(port, "GET", "/v1/models", "");
    assert_eq!(status, 200);
    for m in [
        "kimi-code/kimi-for-coding",
        "nvidia/kimi-k2.5",
        "cerebras/glm-4.7",
    ] {
        assert!(body.contains(m), "{m} not served: {body}");
    }
    stop(child);
}

/// `HTTP_PROXY` and `NO_PROXY` from the environment are followed, as curl and reqwest do: the
/// provider's name is one only the proxy knows, and the proxy (answering for the provider
/// here) sees the request in absolute form.
#[test]
fn the_environments_outbound_proxy_is_followed() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy_port = listener.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            let head = String::from_utf8_lossy(&head).into_owned();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(str::to_owned)
                })
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or(0);
            let mut body = vec![0u8; length];
            conn.read_exact(&mut body).unwrap();
            let _ = tx.send(head.lines().next().unwrap_or("").to_owned());
            let answer = r#"{"id":"c1","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"via proxy"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}"#;
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                answer.len()
            );
        }
    });
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("gatehouse.toml"),
        "[proxy]\nretries = 0\n\n[providers.far]\ntype = \"openai\"\nbase_url = \"http://far.internal:8000/v1\"\napi_key = \"sk-far\"\n\n[providers.near]\ntype = \"openai\"\nbase_url = \"http://near.internal:8000/v1\"\napi_key = \"sk-near\"\n",
    )
    .unwrap();
    let mut cmd = gatehouse();
    cmd.env("HTTP_PROXY", format!("http://127.0.0.1:{proxy_port}"))
        .env("NO_PROXY", "near.internal");
    let (child, port) = serve_with(cmd, dir.path(), &["--config", "gatehouse.toml"]);
    let body = r#"{"model":"far/m","messages":[{"role":"user","content":"hi"}]}"#;
    let (status, answer) = http(port, "POST", "/v1/chat/completions", body);
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("via proxy"), "{answer}");
    let line = rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap();
    assert_eq!(
        line,
        "POST http://far.internal:8000/v1/chat/completions HTTP/1.1"
    );
    // NO_PROXY: resolved here, where the name does not exist; the proxy sees nothing.
    let body = r#"{"model":"near/m","messages":[{"role":"user","content":"hi"}]}"#;
    let (status, answer) = http(port, "POST", "/v1/chat/completions", body);
    assert_eq!(status, 502, "{answer}");
    assert!(rx.try_recv().is_err(), "NO_PROXY's host went to the proxy");
    stop(child);
}

#[test]
fn audit_verify_passes_on_the_cli_trail_and_names_the_row_edited_with_sqlite3() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        gatehouse()
            .args(args)
            .arg("--data-dir")
            .arg(dir.path())
            .env("USER", "ops")
            .output()
            .unwrap()
    };
    let out = run(&["keys", "create", "--name", "ci", "--rpm", "10"]);
    assert!(out.status.success(), "{out:?}");
    let out = run(&["keys", "block", "ci"]);
    assert!(out.status.success(), "{out:?}");
    let out = run(&["keys", "update", "ci", "--tpm", "1000"]);
    assert!(out.status.success(), "{out:?}");

    let out = run(&["audit", "verify"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("intact: 3 rows"), "{stdout}");

    let db = dir.path().join("gatehouse.db");
    let sql = |q: &str| {
        let out = Command::new("sqlite3").arg(&db).arg(q).output().unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(
        sql("SELECT group_concat(actor || ' ' || action, ', ') FROM audit_log ORDER BY seq"),
        "cli:ops key.create, cli:ops key.block, cli:ops key.update"
    );

    sql("UPDATE audit_log SET actor = 'someone-else' WHERE seq = 2");
    let out = run(&["audit", "verify"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        stdout.contains("broken at row 2") && stdout.contains("edited"),
        "{stdout}"
    );

    sql("DELETE FROM audit_log WHERE seq = 2");
    let out = run(&["audit", "verify"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        stdout.contains("broken at row 3") && stdout.contains("removed"),
        "{stdout}"
    );
}

#[test]
fn users_create_bootstraps_an_admin_with_no_default_password() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str], stdin: Option<&str>| {
        let mut child = gatehouse()
            .args(args)
            .arg("--data-dir")
            .arg(dir.path())
            .env("USER", "ops")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        if let Some(s) = stdin {
            child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
        }
        child.wait_with_output().unwrap()
    };
    // No password given: a random one, printed once.
    let out = run(&["users", "create", "alice", "--role", "admin"], None);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    let password = stdout
        .lines()
        .find_map(|l| l.strip_prefix("password (shown once): "))
        .unwrap();
    assert!(password.len() >= 24, "{stdout}");
    let out = run(
        &[
            "users",
            "create",
            "bob",
            "--role",
            "viewer",
            "--password-stdin",
        ],
        Some("bob's long passphrase\n"),
    );
    assert!(out.status.success(), "{out:?}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("passphrase"));
    let out = run(
        &["users", "create", "eve", "--password-stdin"],
        Some("short\n"),
    );
    assert!(!out.status.success(), "a short password is refused");
    let out = run(&["users", "delete", "alice"], None);
    assert!(!out.status.success(), "the last admin stays");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("last admin"),
        "{out:?}"
    );
    let out = run(&["users", "list"], None);
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(
        list.contains("alice") && list.contains("bob") && list.contains("viewer"),
        "{list}"
    );

    // Only Argon2id hashes reach the database, and the trail has the changes.
    let db = dir.path().join("gatehouse.db");
    let out = Command::new("sqlite3")
        .arg(&db)
        .arg("SELECT password_hash FROM users")
        .output()
        .unwrap();
    let hashes = String::from_utf8_lossy(&out.stdout);
    assert!(
        hashes.lines().all(|h| h.starts_with("$argon2id$")),
        "{hashes}"
    );
    assert!(!hashes.contains(password) && !hashes.contains("passphrase"));
    let out = run(&["audit", "verify"], None);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("intact: 2 rows"),
        "{out:?}"
    );
}

#[test]
fn secrets_rotate_reseals_every_stored_key_under_the_new_master_key() {
    use gatehouse_services::secrets::MasterKey;
    let dir = tempfile::tempdir().unwrap();
    let generate = || {
        let out = gatehouse().args(["secrets", "generate"]).output().unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let (old, new) = (generate(), generate());
    assert_eq!(old.len(), 64);
    assert_ne!(old, new);
    // A database with one key sealed under the old master key, as the API would store it.
    let out = gatehouse()
        .args(["users", "list", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let sealed = MasterKey::parse(&old)
        .unwrap()
        .seal("openai", "sk-rotate-me")
        .unwrap();
    let db = dir.path().join("gatehouse.db");
    let sql = |q: &str| {
        let out = Command::new("sqlite3").arg(&db).arg(q).output().unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    sql(&format!(
        "INSERT INTO provider_keys (provider, sealed, last4, updated_at) VALUES ('openai', '{sealed}', 'e-me', 1)"
    ));

    let rotate = |current: &str| {
        gatehouse()
            .args(["secrets", "rotate", "--data-dir"])
            .arg(dir.path())
            .env("GATEHOUSE_MASTER_KEY", current)
            .env("GATEHOUSE_NEW_MASTER_KEY", &new)
            .output()
            .unwrap()
    };
    let out = rotate(&"ab".repeat(32));
    assert!(
        !out.status.success(),
        "a wrong current key re-seals nothing"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("sealed with master key"),
        "{out:?}"
    );
    let out = rotate(&old);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 provider key(s) re-sealed"));
    let resealed = sql("SELECT sealed FROM provider_keys WHERE provider = 'openai'");
    let new_key = MasterKey::parse(&new).unwrap();
    assert!(
        resealed.starts_with(&format!("v1:{}:", new_key.id())),
        "{resealed}"
    );
    assert_eq!(new_key.open("openai", &resealed).unwrap(), "sk-rotate-me");
    assert!(
        MasterKey::parse(&old)
            .unwrap()
            .open("openai", &resealed)
            .is_err()
    );
    let out = gatehouse()
        .args(["audit", "verify", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("intact: 1 rows"),
        "{out:?}"
    );
}

#[test]
fn teams_hold_keys_and_refuse_deletion_while_they_do() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        gatehouse()
            .args(args)
            .arg("--data-dir")
            .arg(dir.path())
            .env("USER", "ops")
            .output()
            .unwrap()
    };
    let out = run(&[
        "teams", "create", "--name", "infra", "--budget", "5", "--rpm", "100",
    ]);
    assert!(out.status.success(), "{out:?}");
    let out = run(&["keys", "create", "--name", "ci", "--team", "infra"]);
    assert!(out.status.success(), "{out:?}");
    let out = run(&["keys", "create", "--name", "lost", "--team", "nobody"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no team"),
        "{out:?}"
    );

    let out = run(&["teams", "list"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("infra") && stdout.contains("rpm=100") && stdout.contains("keys=1"),
        "{stdout}"
    );
    let out = run(&["teams", "show", "infra", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["max_budget_usd"], 5.0);
    let team_id = v["id"].as_str().unwrap().to_owned();
    let out = run(&["keys", "show", "ci", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["team_id"], team_id.as_str());

    // A user put in the team brings the keys they own.
    let out = run(&["users", "create", "bob", "--role", "member"]);
    assert!(out.status.success(), "{out:?}");
    let out = run(&["keys", "create", "--name", "bobs", "--owner", "bob"]);
    assert!(out.status.success(), "{out:?}");
    let out = run(&["users", "team", "bob", "infra"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1 key(s) moved"),
        "{out:?}"
    );
    let out = run(&["keys", "show", "bobs", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["team_id"], team_id.as_str());
    let out = run(&["users", "team", "bob"]);
    assert!(out.status.success(), "{out:?}");

    let out = run(&["teams", "delete", "infra"]);
    assert!(!out.status.success(), "a team with keys stays: {out:?}");
    let out = run(&["keys", "update", "ci", "--clear", "team"]);
    assert!(out.status.success(), "{out:?}");
    let out = run(&["teams", "update", "infra", "--clear", "rpm"]);
    assert!(out.status.success(), "{out:?}");
    let out = run(&["teams", "delete", "infra"]);
    assert!(out.status.success(), "{out:?}");
    let out = run(&["audit", "verify"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("intact: 11 rows"),
        "{out:?}"
    );
}

/// A new schema (`PREFIX_<nanos>`) in the machine's PostgreSQL (`GATEHOUSE_TEST_STORAGE`, else
/// `default`): a real server, as in CI.
fn fresh_pg_url(default: &str, prefix: &str) -> String {
    let base = std::env::var("GATEHOUSE_TEST_STORAGE")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}options[search_path]={prefix}_{nanos}")
}

#[test]
fn migrate_and_the_cli_work_on_the_store_the_config_names_postgres_included() {
    let dir = tempfile::tempdir().unwrap();
    let out = gatehouse()
        .args(["migrate", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout.contains("sqlite store") && stdout.contains("schema version 17"),
        "{stdout}"
    );

    // A PostgreSQL url (with a password) in the config: the CLI's commands use it, and no
    // output shows the password.
    let url = fresh_pg_url("postgres://postgres:s3cret-pw@127.0.0.1:5432/test", "t_cli");
    let config = dir.path().join("pg.toml");
    std::fs::write(&config, format!("[storage]\nurl = \"{url}\"\n")).unwrap();
    let run = |args: &[&str]| {
        gatehouse()
            .args(args)
            .arg("--config")
            .arg(&config)
            .env("USER", "ops")
            .output()
            .unwrap()
    };
    for _ in 0..2 {
        let out = run(&["migrate"]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{out:?}");
        assert!(
            stdout.contains("postgres store at postgres://127.0.0.1:5432/test")
                && stdout.contains("schema version 17")
                && !stdout.contains("s3cret"),
            "{stdout}"
        );
    }
    let out = run(&["keys", "create", "--name", "pg-ci", "--rpm", "10"]);
    assert!(out.status.success(), "{out:?}");
    let out = run(&["keys", "list"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("pg-ci"),
        "{out:?}"
    );
    let out = run(&["audit", "verify"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("intact: 1 rows"),
        "{out:?}"
    );
}

#[test]
fn migrate_data_copies_a_sqlite_store_into_postgres_and_the_audit_chain_verifies_there() {
    let dir = tempfile::tempdir().unwrap();
    let local = |args: &[&str]| {
        gatehouse()
            .args(args)
            .arg("--data-dir")
            .arg(dir.path())
            .env("USER", "ops")
            .output()
            .unwrap()
    };
    for args in [
        &["keys", "create", "--name", "ci", "--rpm", "10"][..],
        &["keys", "block", "ci"],
        &["teams", "create", "--name", "platform"],
        &["users", "create", "alice"],
    ] {
        let out = local(args);
        assert!(out.status.success(), "{args:?}: {out:?}");
    }

    let to = fresh_pg_url("postgres://postgres@127.0.0.1:5432/test", "t_copy");
    let copy = || {
        gatehouse()
            .args([
                "migrate-data",
                "--from",
                "sqlite://gatehouse.db",
                "--to",
                &to,
            ])
            .arg("--data-dir")
            .arg(dir.path())
            .output()
            .unwrap()
    };
    let out = copy();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    for line in ["keys: 1 rows", "teams: 1 rows", "users: 1 rows"] {
        assert!(stdout.contains(line), "{line}: {stdout}");
    }
    assert!(
        stdout.contains("the audit trail verifies there"),
        "{stdout}"
    );

    // Copied once only: a second copy into the same schema is refused, the target unchanged.
    let again = copy();
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already holds rows"),
        "{again:?}"
    );

    // The copy is a working store: the CLI reads it, and its trail verifies.
    let config = dir.path().join("pg.toml");
    std::fs::write(&config, format!("[storage]\nurl = \"{to}\"\n")).unwrap();
    let on_pg = |args: &[&str]| {
        gatehouse()
            .args(args)
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap()
    };
    let out = on_pg(&["keys", "list"]);
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        listing.contains(" ci ") && listing.contains("BLOCKED"),
        "{out:?}"
    );
    let local_trail = String::from_utf8_lossy(&local(&["audit", "verify"]).stdout).into_owned();
    let pg_trail = String::from_utf8_lossy(&on_pg(&["audit", "verify"]).stdout).into_owned();
    assert!(pg_trail.contains("intact"), "{pg_trail}");
    assert_eq!(local_trail, pg_trail, "the same rows, the same chain");
}
