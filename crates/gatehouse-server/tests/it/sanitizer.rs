//! The sanitizer on live traffic: large tool output and pasted context masked with a reference,
//! originals retrievable, identical masking on every turn, the switch.

use serde_json::{Value, json};

use crate::support::{TestApp, rows, session_of};

/// ~1,400 tokens of test log: over the 1,000-token threshold, under mock/echo's 4,096 window.
fn test_log() -> String {
    (0..170)
        .map(|i| {
            format!(
                "tests/test_orders.py::test_case_{i} PASSED [{:>3}%]\n",
                i * 100 / 170
            )
        })
        .collect()
}

fn conversation(log: &str, extra_turn: bool) -> Value {
    let mut messages = vec![
        json!({"role": "system", "content": "You are a coding agent."}),
        json!({"role": "user", "content": "Run the tests and tell me what failed."}),
        json!({"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "run_tests", "arguments": "{}"}}]}),
        json!({"role": "tool", "tool_call_id": "call_1", "content": log}),
        json!({"role": "user", "content": "Summarise."}),
    ];
    if extra_turn {
        messages.push(json!({"role": "assistant", "content": "All 170 tests passed."}));
        messages.push(json!({"role": "user", "content": "Thanks. Anything slow?"}));
    }
    json!({"model": "mock/echo", "messages": messages})
}

fn reference_in(stand_in: &str) -> String {
    let at = stand_in.find("ref ").unwrap() + 4;
    stand_in[at..at + 16].to_owned()
}

#[tokio::test]
async fn tool_output_is_masked_retrievable_and_identical_on_every_turn() {
    let app = TestApp::spawn().await;
    let log = test_log();
    let r = app.chat(conversation(&log, false)).await;
    assert_eq!(r.status(), 200);
    let sid = session_of(&r);
    let first = app.mock.captured().pop().unwrap().body;
    let stand = first["messages"][3]["content"].as_str().unwrap().to_owned();
    assert!(
        stand.starts_with("[masked by Gatehouse: tool output, "),
        "{stand}"
    );
    assert!(
        stand.contains("tests/test_orders.py::test_case_0 PASSED"),
        "keeps a preview"
    );
    assert!(stand.len() < 400, "{} bytes", stand.len());
    // The rest of the message and the conversation are untouched.
    assert_eq!(first["messages"][3]["role"], "tool");
    assert_eq!(first["messages"][3]["tool_call_id"], "call_1");
    assert_eq!(first["messages"][4]["content"], "Summarise.");

    let reference = reference_in(&stand);
    let original = app.get_json(&format!("/api/mask/{reference}")).await;
    assert_eq!(original["content"], log.as_str());
    assert_eq!(original["role"], "tool");
    assert_eq!(original["tags"], json!(["tool"]));
    assert!(original["tokens"].as_u64().unwrap() > 1000);
    let saved = original["tokens_saved"].as_u64().unwrap();
    assert!(saved > 1000, "saved {saved}");

    // Next turn: the client resends the whole history; the provider sees the same stand-in.
    let r = app.chat(conversation(&log, true)).await;
    assert_eq!(r.status(), 200);
    let second = app.mock.captured().pop().unwrap().body;
    assert_eq!(
        second["messages"][3], first["messages"][3],
        "masked identically"
    );

    // What went upstream is what was counted.
    let rows = rows(&app, &sid).await;
    assert!(
        rows[0]["prompt_tokens_est"].as_u64().unwrap() < 500,
        "{}",
        rows[0]
    );
    let stats = app.get_json("/api/sanitizer/stats").await;
    assert_eq!(stats["enabled"], true);
    assert_eq!(stats["since_start"]["masked_messages"], 2);
    assert!(stats["since_start"]["tokens_saved"].as_u64().unwrap() >= 2 * saved);
    assert_eq!(
        stats["stored"]["originals"], 1,
        "stored once, not once per turn"
    );
    let list = app.get_json("/api/mask").await;
    assert_eq!(list["total"], 1);
    assert_eq!(list["masked"][0]["hash"], reference.as_str());
    assert!(
        list["masked"][0].get("content").is_none(),
        "listings leave the text out"
    );
}

#[tokio::test]
async fn pasted_file_context_in_parts_keeps_its_images() {
    let app = TestApp::spawn().await;
    let file: String = (0..300)
        .map(|i| format!("fn f{i}() -> u32 {{ {i} }}\n"))
        .collect();
    let body = json!({"model": "mock/echo", "messages": [{"role": "user", "content": [
        {"type": "text", "text": format!("@file src/lib.rs\n{file}")},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "text", "text": "What does this do?"},
    ]}]});
    let r = app.chat(body).await;
    assert_eq!(r.status(), 200);
    let sent = app.mock.captured().pop().unwrap().body;
    let parts = sent["messages"][0]["content"].as_array().unwrap();
    assert_eq!(parts.len(), 2, "{parts:?}");
    assert!(
        parts[0]["text"]
            .as_str()
            .unwrap()
            .starts_with("[masked by Gatehouse: file context")
    );
    assert_eq!(parts[1]["type"], "image_url");
}

#[tokio::test]
async fn small_or_plain_messages_pass_unchanged_and_the_switch_works() {
    let app = TestApp::spawn().await;
    // A long plain question is not tool output, context, console output or JSON: kept.
    let question = "Why is this slow? ".repeat(400);
    let plain = json!({"model": "mock/echo", "messages": [{"role": "user", "content": question}]});
    app.chat(plain.clone()).await;
    assert_eq!(
        app.mock.captured().pop().unwrap().body["messages"],
        plain["messages"]
    );

    let r = app
        .http
        .post(app.url("/api/sanitizer/toggle"))
        .json(&json!({"enabled": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["enabled"], false);
    let log = test_log();
    app.chat(conversation(&log, false)).await;
    let sent = app.mock.captured().pop().unwrap().body;
    assert_eq!(
        sent["messages"][3]["content"],
        log.as_str(),
        "off: forwarded as sent"
    );
    assert_eq!(app.get_json("/api/sanitizer/stats").await["enabled"], false);

    // No body flips it back.
    let r = app
        .http
        .post(app.url("/api/sanitizer/toggle"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["enabled"], true);
    app.chat(conversation(&log, false)).await;
    let sent = app.mock.captured().pop().unwrap().body;
    assert!(
        sent["messages"][3]["content"]
            .as_str()
            .unwrap()
            .starts_with("[masked")
    );

    let r = app
        .http
        .get(app.url("/api/mask/0000000000000000"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = app
        .http
        .get(app.url("/api/mask/not-a-ref"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn observation_masking_hides_old_tool_results_but_keeps_errors() {
    let app = TestApp::spawn_with(crate::support::Options {
        // Every old result at once, whatever its size: the rules of what is hidden and kept.
        extra_toml: "[sanitizer]\nobservation_masking = true\nobservation_keep_turns = 2\nobservation_min_tokens = 0\nobservation_batch_tokens = 1\n".into(),
        ..crate::support::Options::default()
    })
    .await;
    let call = |id: &str, name: &str| {
        json!({"role": "assistant", "content": null, "tool_calls": [
            {"id": id, "type": "function", "function": {"name": name, "arguments": "{}"}}]})
    };
    let tool = |id: &str, text: &str| json!({"role": "tool", "tool_call_id": id, "content": text});
    let body = json!({"model": "mock/echo", "messages": [
        {"role": "system", "content": "You are a coding agent."},
        {"role": "user", "content": "Run the tests."},
        call("call_1", "run_tests"),
        tool("call_1", "12 passed in 0.4s"),
        call("call_2", "read_file"),
        tool("call_2", "Error: src/missing.rs: no such file"),
        {"role": "assistant", "content": "Tests pass; one file is missing."},
        {"role": "user", "content": "Now lint."},
        call("call_3", "lint"),
        tool("call_3", "no issues"),
        {"role": "user", "content": "Thanks."},
    ]});
    let r = app.chat(body).await;
    assert_eq!(r.status(), 200);
    let sent = app.mock.captured().pop().unwrap().body;
    let old = sent["messages"][3]["content"].as_str().unwrap();
    assert!(
        old.starts_with(
            "[old tool result hidden by Gatehouse: run_tests call call_1, 17 characters,"
        ),
        "{old}"
    );
    assert_eq!(sent["messages"][3]["tool_call_id"], "call_1");
    assert_eq!(
        sent["messages"][5]["content"], "Error: src/missing.rs: no such file",
        "errors are kept"
    );
    assert_eq!(
        sent["messages"][9]["content"], "no issues",
        "recent turns are kept"
    );
    let reference = old[old.find("/api/mask/").unwrap() + 10..][..16].to_owned();
    let original = app.get_json(&format!("/api/mask/{reference}")).await;
    assert_eq!(original["content"], "12 passed in 0.4s");
    assert_eq!(original["tags"], json!(["observation"]));
}

#[tokio::test]
async fn memory_content_is_measured_per_request() {
    let app = TestApp::spawn().await;
    let memory = format!(
        "<mcp-memory>{}</mcp-memory>",
        "The user prefers small commits, tabs, and tests next to the code. ".repeat(5)
    );
    let body = json!({"model": "mock/echo", "messages": [
        {"role": "system", "content": format!("You are a coding assistant.\n{memory}")},
        {"role": "user", "content": "Where should the new test go? See @memory[style]."},
    ]});
    let r = app.chat(body).await;
    assert_eq!(r.status(), 200);
    let sid = session_of(&r);
    let row = rows(&app, &sid).await.remove(0);
    let mem = row["memory_tokens"].as_u64().unwrap();
    let prompt = row["prompt_tokens_est"].as_u64().unwrap();
    // The block counts (70-odd tokens); the short @memory[...] reference is under 20 and does not.
    assert!((60..100).contains(&mem), "memory {mem} of {prompt}");
    assert_eq!(row["chat_tokens"].as_u64().unwrap(), prompt - mem);
    let ratio = row["memory_ratio"].as_f64().unwrap();
    assert!((ratio - mem as f64 / prompt as f64).abs() < 1e-9);

    let r = app
        .chat(json!({"model": "mock/echo", "messages": [{"role": "user", "content": "no memory here"}]}))
        .await;
    let row = rows(&app, &session_of(&r)).await.remove(0);
    assert_eq!(row["memory_tokens"], 0);
    assert_eq!(row["memory_ratio"], 0.0);
}

/// An agent loop of `turns` tool calls, each answered by a result of about `tokens` tokens.
fn agent_loop(turns: usize, tokens: usize) -> Value {
    let mut m = vec![
        json!({"role": "system", "content": "You are a coding agent."}),
        json!({"role": "user", "content": "Fix the failing test."}),
    ];
    for k in 0..turns {
        let id = format!("call_{k}");
        m.push(json!({"role": "assistant", "content": null, "tool_calls": [
            {"id": id, "type": "function", "function": {"name": "read_file", "arguments": "{}"}}]}));
        let body: String = (0..tokens / 6)
            .map(|i| format!("fn f{k}_{i}() {{}}\n"))
            .collect();
        m.push(json!({"role": "tool", "tool_call_id": id, "content": body}));
        m.push(json!({"role": "user", "content": format!("Go on ({k}).")}));
    }
    json!({"model": "mock/echo", "messages": m})
}

/// Issue 13: hiding one more result on every turn changed the cached prefix on most turns and
/// made masking cost more than it saved. Results are hidden in batches; between batches the
/// prefix the provider saw is sent again byte for byte, and a hidden result never changes.
#[tokio::test]
async fn observation_masking_hides_in_batches_and_keeps_the_prefix_stable() {
    let app = TestApp::spawn_with(crate::support::Options {
        extra_toml: "[sanitizer]\nobservation_masking = true\nobservation_keep_turns = 2\nobservation_min_tokens = 100\nobservation_batch_tokens = 2400\n\n[models.\"mock/big\"]\nprovider = \"mock\"\nmodel = \"echo\"\nmax_context_size = 1000000\n".into(),
        ..crate::support::Options::default()
    })
    .await;
    let mut previous: Option<Vec<Value>> = None;
    let (mut stable, mut changed) = (0, 0);
    let mut hidden_before: Vec<String> = Vec::new();
    for turns in 1..30 {
        let mut body = agent_loop(turns, 400);
        body["model"] = json!("mock/big");
        let r = app.chat(body).await;
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
        let sent = app.mock.captured().pop().unwrap().body;
        let msgs = sent["messages"].as_array().unwrap().clone();
        let hidden: Vec<String> = msgs
            .iter()
            .filter_map(|m| m["content"].as_str())
            .filter(|c| c.starts_with("[old tool result hidden"))
            .map(str::to_owned)
            .collect();
        // What was hidden stays hidden, with the same bytes.
        assert!(hidden.starts_with(&hidden_before), "turn {turns}");
        if let Some(prev) = &previous {
            if msgs.starts_with(prev) {
                stable += 1;
            } else {
                changed += 1;
                assert!(
                    hidden.len() > hidden_before.len(),
                    "only a new batch changes the prefix"
                );
            }
        }
        hidden_before = hidden;
        previous = Some(msgs);
    }
    assert!(!hidden_before.is_empty(), "old results were hidden");
    assert!(changed >= 2, "batches closed: {changed}");
    assert!(
        stable >= 4 * changed,
        "the prefix is stable on most turns: {stable} stable, {changed} changed"
    );
}

#[tokio::test]
async fn small_old_results_are_never_hidden_with_the_defaults() {
    let app = TestApp::spawn_with(crate::support::Options {
        extra_toml: "[sanitizer]\nobservation_masking = true\nobservation_keep_turns = 1\n".into(),
        ..crate::support::Options::default()
    })
    .await;
    // 40 old results of ~60 tokens: under observation_min_tokens, all kept.
    let r = app.chat(agent_loop(40, 60)).await;
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    let sent = app.mock.captured().pop().unwrap().body;
    assert!(
        !sent.to_string().contains("[old tool result hidden"),
        "{sent}"
    );
}

/// Issue 13: SWE-agent sends observations as user messages and Cline puts `[tool] Result:`
/// blocks in them; the tool output is masked there too, the user's own words kept.
#[tokio::test]
async fn tool_output_inside_user_messages_is_masked_and_the_words_kept() {
    let app = TestApp::spawn().await;
    let log = test_log();
    let cline = format!(
        "[execute_command for 'pytest'] Result:\n{log}\n\n<feedback>\nPlease look at test_case_3 first.\n</feedback>\n<environment_details>\n# Current Mode\nACT MODE\n</environment_details>"
    );
    let swe = format!("OBSERVATION:\n{log}");
    let body = json!({"model": "mock/echo", "messages": [
        {"role": "system", "content": "You are a coding agent."},
        {"role": "user", "content": "Fix the failing test."},
        {"role": "assistant", "content": "Running the tests."},
        {"role": "user", "content": cline},
        {"role": "assistant", "content": "Looking again."},
        {"role": "user", "content": swe},
    ]});
    let r = app.chat(body).await;
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    let sent = app.mock.captured().pop().unwrap().body;
    let c = sent["messages"][3]["content"].as_str().unwrap();
    assert!(
        c.starts_with(
            "[execute_command for 'pytest'] Result:\n[masked by Gatehouse: tool output, "
        ),
        "{c}"
    );
    assert!(c.contains("Please look at test_case_3 first."), "{c}");
    assert!(c.contains("<environment_details>\n# Current Mode"), "{c}");
    assert!(c.len() < 1000, "{} bytes", c.len());
    let s = sent["messages"][5]["content"].as_str().unwrap();
    assert!(
        s.starts_with("OBSERVATION:\n[masked by Gatehouse: tool output, "),
        "{s}"
    );
    // The same log, the same reference, retrievable whole.
    let reference = reference_in(c);
    assert_eq!(reference, reference_in(s));
    let original = app.get_json(&format!("/api/mask/{reference}")).await;
    assert_eq!(original["content"], log.trim());
}

/// Issue 13: a request masked and then refused (413) saved nothing upstream.
#[tokio::test]
async fn savings_count_only_requests_that_were_forwarded() {
    let app = TestApp::spawn_with(crate::support::Options {
        extra_toml: "[proxy.heavy_duty]\nenabled = false\nthreshold_pct = 90\nwhen_none = \"forward\"\n[models.\"mock/w300\"]\nprovider = \"mock\"\nmodel = \"echo\"\nmax_context_size = 300\n".into(),
        ..crate::support::Options::default()
    })
    .await;
    let mut body = conversation(&test_log(), false);
    body["model"] = json!("mock/w300");
    body["messages"][4]["content"] = json!("Summarise. ".repeat(400));
    let r = app.chat(body).await;
    assert_eq!(r.status(), 413, "{}", r.text().await.unwrap());
    let stats = app.get_json("/api/sanitizer/stats").await;
    assert_eq!(stats["since_start"]["tokens_saved"], 0, "{stats}");
    assert_eq!(stats["since_start"]["masked_messages"], 0, "{stats}");
    let r = app.chat(conversation(&test_log(), false)).await;
    assert_eq!(r.status(), 200);
    let stats = app.get_json("/api/sanitizer/stats").await;
    assert!(
        stats["since_start"]["tokens_saved"].as_u64().unwrap() > 1000,
        "{stats}"
    );
}
