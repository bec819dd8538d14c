//! Compaction on live traffic: the automatic trigger at the threshold, the remembered point on
//! later requests, cooldown and the consecutive limit, the `llm` strategy and its fallback, and
//! the manual API (compact, preview, simulate, history, stats, switches, aliases, persistence).

use serde_json::{Value, json};

use crate::support::{Options, TestApp, session_of};

const SUMMARY: &str = "[Summary of the earlier conversation, written by Gatehouse";

/// A 2,000-token model; with the default 85 % threshold compaction starts at 1,700 tokens.
fn options(compaction: &str) -> Options {
    Options {
        extra_toml: format!(
            r#"
[models."mock/small"]
provider = "mock"
model = "echo"
max_context_size = 2000

[models."mock/broken"]
provider = "mock"
model = "status:500"
max_context_size = 2000

{compaction}
"#
        ),
        retries: Some(0),
        ..Options::default()
    }
}

/// Heavy-duty fallback would move a full mock/small to mock/echo (4,096 tokens) before the
/// window check; these tests are about compaction alone.
const NO_HEAVY_DUTY: &str =
    "[proxy.heavy_duty]\nenabled = false\nthreshold_pct = 90\nwhen_none = \"forward\"\n";

/// About `words` tokens (one per word) of text for turn `k`.
fn text(k: usize, words: usize) -> String {
    const WORDS: [&str; 16] = [
        " the",
        " code",
        " file",
        " test",
        " value",
        " change",
        " update",
        " build",
        " error",
        " check",
        " run",
        " line",
        " type",
        " function",
        " return",
        " data",
    ];
    let mut s = format!("Turn {k}: please refactor src/module_{k}.rs and explain.\n");
    for i in 0..words {
        s.push_str(WORDS[(i * 7 + k) % WORDS.len()]);
    }
    s
}

const TASK: &str = "Refactor the modules under src/ one by one.";

/// System prompt, then `turns` user/assistant exchanges and a last user message.
pub(crate) fn history(turns: usize, user_words: usize) -> Vec<Value> {
    let mut m = vec![json!({"role": "system", "content": "You are a careful coding agent."})];
    for k in 0..turns {
        // The first request is the task, kept whole by every summary: short, as most are.
        let user = if k == 0 {
            TASK.to_owned()
        } else {
            text(k, user_words)
        };
        m.push(json!({"role": "user", "content": user}));
        m.push(json!({"role": "assistant", "content": format!("Done with turn {k}; I changed src/module_{k}.rs.")}));
    }
    m.push(json!({"role": "user", "content": text(turns, user_words)}));
    m
}

fn chat(messages: &[Value]) -> Value {
    json!({"model": "mock/small", "messages": messages})
}

async fn send(app: &TestApp, messages: &[Value]) -> (String, Value) {
    let r = app.chat(chat(messages)).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let sid = session_of(&r);
    r.bytes().await.unwrap();
    (sid, app.mock.captured().pop().unwrap().body)
}

async fn history_of(app: &TestApp, sid: &str) -> Vec<Value> {
    app.get_json(&format!("/api/compaction/{sid}/history"))
        .await["history"]
        .as_array()
        .cloned()
        .unwrap()
}

async fn post(app: &TestApp, path: &str, body: Value) -> (u16, Value) {
    let r = app
        .http
        .post(app.url(path))
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

pub(crate) fn is_summary(m: &Value) -> bool {
    m["role"] == "system" && m["content"].as_str().unwrap_or("").starts_with(SUMMARY)
}

#[tokio::test]
async fn auto_compaction_fires_at_the_threshold_and_the_point_holds_on_later_requests() {
    let app = TestApp::spawn_with(options("")).await;
    // ~130-token user turns: under the threshold for a while, nothing changes.
    let mut turns = 0;
    let (sid, mut seen) = send(&app, &history(turns, 100)).await;
    while !seen["messages"].as_array().unwrap().iter().any(is_summary) {
        assert_eq!(
            seen["messages"].as_array().unwrap().len(),
            turns * 2 + 2,
            "forwarded whole while under the threshold"
        );
        assert!(history_of(&app, &sid).await.is_empty());
        turns += 1;
        assert!(turns < 20, "never compacted");
        seen = send(&app, &history(turns, 100)).await.1;
    }
    let rows = history_of(&app, &sid).await;
    assert_eq!(rows.len(), 1);
    let c = &rows[0];
    assert_eq!(c["trigger"], "auto");
    assert_eq!(c["strategy"], "heuristic");
    let before = c["tokens_before"].as_u64().unwrap();
    let after = c["tokens_after"].as_u64().unwrap();
    assert!(before >= 1700, "fired at 85 % of 2000: {before}");
    assert!(after < before / 2, "{before} → {after}");
    assert_eq!(c["tokens_saved"].as_u64().unwrap(), before - after);

    // What the provider got: system, summary, the last two user turns whole.
    let msgs = seen["messages"].as_array().unwrap();
    assert_eq!(msgs[0]["content"], "You are a careful coding agent.");
    assert!(is_summary(&msgs[1]), "{}", msgs[1]);
    let summary = msgs[1]["content"].as_str().unwrap().to_owned();
    assert!(summary.contains(&compact_task_block()), "{summary}");
    assert!(summary.contains("src/module_0.rs"), "{summary}");
    assert_eq!(msgs.len(), 2 + 3, "system, summary, user, assistant, user");
    assert_eq!(msgs[2]["content"], text(turns - 1, 100));
    assert_eq!(msgs[4]["content"], text(turns, 100));
    assert_eq!(c["summary"], summary.as_str());

    // The client sends its whole history again, one turn longer: same summary, same bytes.
    let next = send(&app, &history(turns + 1, 100)).await.1;
    let m = next["messages"].as_array().unwrap();
    assert_eq!(m[1], msgs[1], "the compacted prefix is stable");
    assert_eq!(m[2]["content"], text(turns - 1, 100));
    assert_eq!(m.last().unwrap()["content"], text(turns + 1, 100));
    assert_eq!(
        history_of(&app, &sid).await.len(),
        1,
        "under the threshold again: no new compaction"
    );

    // The request rows count what was sent, not what the client held.
    let rows = crate::support::rows(&app, &sid).await;
    let last = rows[0]["prompt_tokens_est"].as_u64().unwrap();
    assert!(last < 1700, "{last}");

    // A different conversation in the same session does not get the summary.
    let other = send(
        &app,
        &[json!({"role": "user", "content": "unrelated question"})],
    )
    .await
    .1;
    assert_eq!(other["messages"].as_array().unwrap().len(), 1);

    let stats = app.get_json("/api/compaction/stats").await;
    assert_eq!(stats["global"]["count"], 1);
    assert!(stats["since_start"]["requests_rewritten"].as_u64().unwrap() >= 1);
    assert!(
        stats["since_start"]["tokens_saved_on_requests"]
            .as_u64()
            .unwrap()
            > 500
    );
}

#[tokio::test]
async fn a_history_over_the_window_is_compacted_instead_of_refused() {
    let app = TestApp::spawn_with(options(NO_HEAVY_DUTY)).await;
    // ~2,600 tokens on a 2,000-token model: compacted to fit rather than a 413.
    let (sid, seen) = send(&app, &history(8, 250)).await;
    assert!(is_summary(&seen["messages"][1]));
    assert_eq!(history_of(&app, &sid).await.len(), 1);
    // One user turn bigger than the window: nothing to summarise, so 413 as before.
    let r = app.chat(chat(&history(0, 2500))).await;
    assert_eq!(r.status(), 413);
}

/// Threshold 20 % of 2,000 (400 tokens) and one kept exchange of ~430 tokens: every compaction
/// leaves the prompt over the threshold, as with a huge last turn.
fn stubborn(extra: &str) -> Options {
    options(&format!(
        "[compaction]\nkeep_exchanges = 1\n[compaction.auto]\nthreshold_pct = 20\n{extra}"
    ))
}

#[tokio::test]
async fn cooldown_holds_back_a_second_compaction() {
    let app = TestApp::spawn_with(stubborn("")).await;
    // The task alone (the first request, kept whole by a summary) is not worth compacting.
    let (sid, first) = send(&app, &history(1, 400)).await;
    assert_eq!(
        first["messages"].as_array().unwrap().len(),
        4,
        "nothing to summarise yet"
    );
    let seen = send(&app, &history(2, 400)).await.1;
    assert!(is_summary(&seen["messages"][1]));
    for turns in 3..5 {
        let seen = send(&app, &history(turns, 400)).await.1;
        // The point still applies, but no new compaction within the 5-minute cooldown.
        let m = seen["messages"].as_array().unwrap();
        assert!(is_summary(&m[1]));
        assert_eq!(
            m.len(),
            2 * turns - 1,
            "only the first three turns are summarised"
        );
    }
    assert_eq!(history_of(&app, &sid).await.len(), 1);
    let auto = app
        .get_json(&format!("/api/compaction/{sid}/auto-status"))
        .await;
    assert!(
        auto["cooldown_remaining_ms"].as_i64().unwrap() > 200_000,
        "{auto}"
    );
    assert_eq!(auto["consecutive"], 1);
}

#[tokio::test]
async fn at_most_three_in_a_row_then_paused_until_under_the_threshold() {
    let app = TestApp::spawn_with(stubborn("cooldown_secs = 0")).await;
    let mut ws = crate::live::connect(&app).await;
    let (sid, _) = send(&app, &history(0, 400)).await;
    for turns in 1..=5 {
        send(&app, &history(turns, 400)).await;
    }
    let rows = history_of(&app, &sid).await;
    assert_eq!(rows.len(), 3, "turns 1, 2 and 3 compacted; 4 and 5 held");
    // Each compaction builds on the previous summary: its sections merged, the task kept.
    let last = rows[0]["summary"].as_str().unwrap();
    assert!(last.contains(&compact_task_block()), "{last}");
    assert!(last.contains("Turn 1: please refactor"), "{last}");
    assert!(!last.contains("Earlier summary:"), "{last}");
    let auto = app
        .get_json(&format!("/api/compaction/{sid}/auto-status"))
        .await;
    assert_eq!(auto["paused"], true);
    assert_eq!(auto["consecutive"], 3);
    let seen = crate::live::until(&mut ws, "compaction_paused").await;
    let events: Vec<&Value> = seen
        .iter()
        .filter(|e| e["type"] == "compaction_event")
        .collect();
    assert_eq!(events.len(), 3);
    assert_eq!(events[0]["compaction"]["trigger"], "auto");
    assert!(events[0]["compaction"]["tokens_saved"].as_u64().unwrap() > 0);
    let paused = seen.last().unwrap();
    assert_eq!(paused["consecutive"], 3);
    assert_eq!(paused["session_id"], sid.as_str());

    // A prompt under the threshold ends the run; the next one over compacts again.
    send(&app, &[json!({"role": "user", "content": "short"})]).await;
    let auto = app
        .get_json(&format!("/api/compaction/{sid}/auto-status"))
        .await;
    assert_eq!(auto["consecutive"], 0);
    send(&app, &history(6, 400)).await;
    assert_eq!(history_of(&app, &sid).await.len(), 4);
}

#[tokio::test]
async fn llm_strategy_asks_the_model_with_the_seed_settings_and_falls_back() {
    let app = TestApp::spawn_with(options("[compaction]\nstrategy = \"llm\"")).await;
    let (sid, _) = send(&app, &history(0, 100)).await;
    let r = app.chat(chat(&history(14, 100))).await;
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    let captured = app.mock.captured();
    let n = captured.len();
    let ask = &captured[n - 2].body;
    assert_eq!(ask["max_tokens"], 500);
    assert_eq!(ask["temperature"], 0.3);
    assert_eq!(ask["stream"], false);
    let prompt = ask["messages"][1]["content"].as_str().unwrap();
    assert!(
        prompt.starts_with("Summarize the following conversation"),
        "{prompt}"
    );
    assert!(prompt.contains(&format!("USER: {TASK}")), "{prompt}");
    let sent = &captured[n - 1].body;
    let summary = sent["messages"][1]["content"].as_str().unwrap();
    assert!(
        summary.starts_with(&format!("{SUMMARY} by mock/small")),
        "{summary}"
    );
    assert!(
        summary.contains("Hello from the"),
        "the model's words: {summary}"
    );
    let rows = history_of(&app, &sid).await;
    assert_eq!(rows[0]["strategy"], "llm");
    assert_eq!(rows[0]["summary_model"], "mock/small");

    // A summary model that fails: the heuristic summary, and why.
    let app = TestApp::spawn_with(options(
        "[compaction]\nstrategy = \"llm\"\nsummary_model = \"mock/broken\"",
    ))
    .await;
    let (sid, seen) = send(&app, &history(14, 100)).await;
    assert!(is_summary(&seen["messages"][1]));
    assert!(
        seen["messages"][1]["content"]
            .as_str()
            .unwrap()
            .contains("(heuristic)")
    );
    let rows = history_of(&app, &sid).await;
    assert_eq!(rows[0]["strategy"], "heuristic");
    assert!(
        rows[0]["fallback_reason"]
            .as_str()
            .unwrap()
            .contains("mock/broken"),
        "{}",
        rows[0]
    );
}

#[tokio::test]
async fn manual_compaction_preview_simulate_switches_and_persistence() {
    let app = TestApp::spawn_with(options("")).await;
    let (sid, _) = send(&app, &history(4, 60)).await;
    let base = format!("/api/compaction/{sid}");

    // Preview: what would happen, nothing changed.
    let p = app.get_json(&format!("{base}/preview")).await;
    assert_eq!(p["can_compact"], true, "{p}");
    assert_eq!(p["preview"]["messages_to_summarize"], 6);
    assert!(p["estimate"]["tokens_saved"].as_u64().unwrap() > 100);
    assert!(p["summary_preview"].as_str().unwrap().starts_with(SUMMARY));
    assert_eq!(p["context"]["threshold_pct"], 85.0);

    // Simulate on given messages: nothing stored either.
    let (status, s) = post(
        &app,
        &format!("{base}/simulate"),
        json!({"messages": history(3, 60)}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(s["simulated"], true);
    assert_eq!(s["compacted"], true, "{s}");
    assert_eq!(s["compaction"]["summarized"], 4);
    let (status, e) = post(&app, &format!("{base}/simulate"), json!({"messages": []})).await;
    assert_eq!(status, 400);
    assert_eq!(e["error"]["type"], "invalid_request_error");
    assert!(history_of(&app, &sid).await.is_empty());

    // Manual, under the 500-token minimum: refused without force, done with it.
    let (_, r) = post(&app, &base, json!({})).await;
    assert_eq!(r["compacted"], false);
    assert_eq!(r["reason"], "not_enough_to_summarize");
    let (status, r) = post(&app, &base, json!({"force": true})).await;
    assert_eq!(status, 200);
    assert_eq!(r["compacted"], true, "{r}");
    assert_eq!(r["compaction"]["trigger"], "manual");
    // The next request extending the history carries the summary.
    let seen = send(&app, &history(5, 60)).await.1;
    assert!(is_summary(&seen["messages"][1]));
    assert_eq!(seen["messages"].as_array().unwrap().len(), 2 + 5);

    // Switches: auto off with a threshold, reserved tokens; the seed's alias path.
    let (_, a) = post(
        &app,
        &format!("{base}/toggle-auto"),
        json!({"enabled": false, "threshold_pct": 70}),
    )
    .await;
    assert_eq!(
        (a["enabled"].clone(), a["threshold_pct"].clone()),
        (json!(false), json!(70.0))
    );
    let (_, a) = post(
        &app,
        &format!("/api/compress/{sid}/reserved"),
        json!({"reserved_tokens": 256}),
    )
    .await;
    assert_eq!(a["reserved_tokens"], 256);
    let (status, _) = post(
        &app,
        &format!("{base}/toggle-auto"),
        json!({"threshold_pct": 150}),
    )
    .await;
    assert_eq!(status, 400);
    let stats = app.get_json(&format!("/api/compress/{sid}/stats")).await;
    assert_eq!(stats["compaction"]["count"], 1);
    assert_eq!(stats["compaction"]["manual"], 1);
    assert_eq!(
        stats["point"]["cut"], 7,
        "system and the first three exchanges"
    );
    assert_eq!(
        app.get_json("/api/compress/stats").await["global"]["count"],
        1
    );

    // Unknown session: 404 in the OpenAI error shape.
    let r = app
        .http
        .get(app.url("/api/compaction/nope/stats"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "not_found"
    );

    // After a restart: settings, history and the point are still there.
    let app = app.restart(options("")).await;
    let auto = app.get_json(&format!("{base}/auto-status")).await;
    assert_eq!(auto["enabled"], false);
    assert_eq!(auto["threshold_pct"], 70.0);
    assert_eq!(auto["reserved_tokens"], 256);
    assert_eq!(history_of(&app, &sid).await.len(), 1);
    let r = app
        .chat_with(
            &[("x-gatehouse-session", sid.as_str())],
            chat(&history(6, 60)),
        )
        .await;
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    let seen = app.mock.captured().pop().unwrap().body;
    assert!(
        is_summary(&seen["messages"][1]),
        "the point survives restarts"
    );

    // Deleting the session forgets its compactions.
    let r = app
        .http
        .delete(app.url(&format!("/api/sessions/{sid}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(
        app.get_json("/api/compaction/stats").await["global"]["count"],
        0
    );
}

/// An Anthropic client's compacted request to an Anthropic provider keeps its own bytes: the
/// summarised turns are removed and the summary becomes a last `system` block, while
/// `thinking`, `top_k`, signed thinking blocks and `cache_control` markers survive.
#[tokio::test]
async fn an_anthropic_session_keeps_its_fields_once_compacted() {
    let app = TestApp::spawn_with(options(&format!(
        r#"{NO_HEAVY_DUTY}
[providers.anth]
type = "anthropic"
base_url = "MOCK_BASE_URL"
api_key = "${{MOCK_KEY}}"

[models."anth/small"]
provider = "anth"
model = "claude-x"
max_context_size = 2000
"#
    )))
    .await;
    let body = |turns: usize| {
        let mut messages = Vec::new();
        for k in 0..turns {
            messages.push(json!({"role": "user", "content": [
                {"type": "text", "text": text(k, 100), "cache_control": {"type": "ephemeral"}}]}));
            messages.push(json!({"role": "assistant", "content": [
                {"type": "thinking", "thinking": format!("thinking about turn {k}"), "signature": format!("sig-{k}")},
                {"type": "text", "text": format!("Done with turn {k}.")}]}));
        }
        messages.push(json!({"role": "user", "content": text(turns, 100)}));
        json!({
            "model": "anth/small", "max_tokens": 64, "top_k": 7,
            "thinking": {"type": "enabled", "budget_tokens": 1024},
            "metadata": {"user_id": "u-1"},
            "system": [{"type": "text", "text": "You are a careful coding agent.", "cache_control": {"type": "ephemeral"}}],
            "messages": messages,
        })
    };
    let mut turns = 0;
    let sent = loop {
        let r = app
            .http
            .post(app.url("/v1/messages"))
            .json(&body(turns))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        let sent = app.mock.captured().pop().unwrap().body;
        let systems = sent["system"].as_array().unwrap();
        if systems.len() > 1 {
            break sent;
        }
        assert!(turns < 30, "never compacted");
        turns += 1;
    };
    let system = sent["system"].as_array().unwrap();
    assert_eq!(system[0]["cache_control"]["type"], "ephemeral", "{sent}");
    assert!(
        system[1]["text"].as_str().unwrap().starts_with(SUMMARY),
        "{sent}"
    );
    assert_eq!(sent["top_k"], 7);
    assert_eq!(sent["thinking"]["budget_tokens"], 1024);
    assert_eq!(sent["metadata"]["user_id"], "u-1");
    let messages = sent["messages"].as_array().unwrap();
    assert!(
        messages.len() < 2 * turns + 1,
        "turns were summarised: {sent}"
    );
    assert_eq!(messages[0]["role"], "user");
    // The kept turns are the client's: signatures and cache markers intact.
    let kept_thinking: Vec<_> = messages
        .iter()
        .filter(|m| m["role"] == "assistant")
        .map(|m| m["content"][0].clone())
        .collect();
    assert!(!kept_thinking.is_empty());
    for t in &kept_thinking {
        assert_eq!(t["type"], "thinking");
        assert!(t["signature"].as_str().unwrap().starts_with("sig-"), "{t}");
    }
    assert!(
        messages
            .iter()
            .any(|m| m["content"][0]["cache_control"]["type"] == "ephemeral"),
        "{sent}"
    );
    // The next turn reuses the point: the same summary block, byte for byte.
    let r = app
        .http
        .post(app.url("/v1/messages"))
        .json(&body(turns + 1))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let next = app.mock.captured().pop().unwrap().body;
    assert_eq!(next["system"][1], sent["system"][1]);
}

/// An `llm` summary through a provider of another format (Anthropic here), recorded as a row of
/// the session marked as the gateway's own, with its tokens and cost.
#[tokio::test]
async fn llm_summaries_work_towards_any_provider_and_are_recorded() {
    let app = TestApp::spawn_with(options(
        r#"[compaction]
strategy = "llm"
summary_model = "anth/writer"

[providers.anth]
type = "anthropic"
base_url = "MOCK_BASE_URL"
api_key = "${MOCK_KEY}"

[models."anth/writer"]
provider = "anth"
model = "claude-writer"
max_context_size = 100000
pricing = { input = 3.0, output = 15.0 }
"#,
    ))
    .await;
    let (sid, sent) = send(&app, &history(14, 100)).await;
    let captured = app.mock.captured();
    let ask = captured
        .iter()
        .find(|c| c.body["model"] == "claude-writer")
        .expect("the summary request reached the Anthropic endpoint");
    // Anthropic's shape: a top-level system, max_tokens, no OpenAI system message.
    assert_eq!(ask.body["max_tokens"], 500, "{}", ask.body);
    assert!(ask.headers.contains_key("x-api-key"));
    assert!(ask.body["messages"][0]["role"] == "user", "{}", ask.body);
    let summary = sent["messages"][1]["content"].as_str().unwrap();
    assert!(
        summary.starts_with(&format!("{SUMMARY} by anth/writer")),
        "{summary}"
    );
    app.state.writer.flush().await;
    let rows = crate::support::rows(&app, &sid).await;
    let own = rows
        .iter()
        .find(|r| r["purpose"] == "compaction_summary")
        .expect("a row for the summary call");
    assert_eq!(own["model_key"], "anth/writer");
    assert_eq!(own["status"], 200);
    assert!(own["completion_tokens"].as_u64().unwrap() > 0, "{own}");
    assert!(own["cost_usd"].as_f64().unwrap() > 0.0, "{own}");
    let client = rows.iter().filter(|r| r["purpose"].is_null()).count();
    assert_eq!(client, 1, "the client's own request has its row too");
}

/// Cline's classic format, as in the long real session of issue 13: the task and the
/// environment in the first user message, every later user message a tool result followed by
/// the environment again.
fn cline_history(turns: usize) -> Vec<Value> {
    let env = |k: usize| {
        format!(
            "<environment_details>\n# VSCode Visible Files\nsrc/auth/middleware.ts\n\n# VSCode Open Tabs\nsrc/auth/middleware.ts\nsrc/server.ts\n\n# Current Time\n12/5/2026, 10:{k:02}:00 AM (UTC)\n\n# Current Mode\nACT MODE\n</environment_details>"
        )
    };
    let mut m = vec![
        json!({"role": "system", "content": "You are Cline, a highly skilled software engineer."}),
        json!({"role": "user", "content": format!("<task>\n{CLINE_TASK}\n</task>\n{}", env(0))}),
    ];
    for k in 0..turns {
        m.push(json!({"role": "assistant", "content": format!("<read_file>\n<path>src/auth/part_{k}.ts</path>\n</read_file>")}));
        m.push(json!({"role": "user", "content": format!("[read_file for 'src/auth/part_{k}.ts'] Result:\n{}\n{}", text(k, 90), env(k + 1))}));
    }
    m
}

const CLINE_TASK: &str = "Refactor the auth middleware in src/auth/middleware.ts so that expired JWTs return 401 with a JSON body {\"error\": \"token_expired\"} instead of 500.\nKeep the existing tests passing and add one for the expired case.\nDo not touch src/server.ts.";

#[tokio::test]
async fn every_compaction_keeps_the_task_whole_and_lists_the_environment_once() {
    let app = TestApp::spawn_with(options(
        "[compaction.auto]\nenabled = true\nthreshold_pct = 85\ncooldown_secs = 0\nmax_consecutive = 100\n",
    ))
    .await;
    let mut compacted = 0;
    for turns in 1..40 {
        let r = app
            .chat(json!({"model": "mock/small", "messages": cline_history(turns)}))
            .await;
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        r.bytes().await.unwrap();
        let body = app.mock.captured().pop().unwrap().body;
        let msgs = body["messages"].as_array().unwrap();
        let Some(summary) = msgs.iter().find(|m| is_summary(m)) else {
            continue;
        };
        compacted += 1;
        let summary = summary["content"].as_str().unwrap();
        assert!(
            summary.contains(CLINE_TASK),
            "turn {turns}: the task is not in the summary whole: {summary}"
        );
        assert!(
            !summary.contains("# VSCode Open Tabs"),
            "turn {turns}: the environment is repeated in the summary: {summary}"
        );
        assert_eq!(
            summary.matches("<environment_details>").count(),
            1,
            "turn {turns}: listed once: {summary}"
        );
        assert!(
            !summary.contains("- [read_file for"),
            "turn {turns}: tool results are not the user's requests: {summary}"
        );
    }
    let sid = {
        let r = app
            .chat(json!({"model": "mock/small", "messages": cline_history(1)}))
            .await;
        session_of(&r)
    };
    let history = history_of(&app, &sid).await;
    assert!(
        history.len() >= 2,
        "compacted more than once, so the task survived a re-summary: {}",
        history.len()
    );
    assert!(compacted >= 10, "{compacted} compacted requests");
}

fn compact_task_block() -> String {
    format!("The task (the conversation's first request, verbatim):\n{TASK}\n[end of the task]")
}
