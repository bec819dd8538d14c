//! The binary's commands, run as a user would.

use std::process::Command;

fn gatehouse() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gatehouse"));
    // Start from a clean slate: no inherited config or overrides.
    for (k, _) in std::env::vars() {
        if k.starts_with("GATEHOUSE_") {
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
