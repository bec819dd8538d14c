//! Tool-call repair: a history with id-less tool calls and almost-JSON arguments (what Cline
//! and small local models leave behind) reaches the provider repaired, the row says what was
//! repaired, and `proxy.repair_tool_calls = false` sends the client's bytes as they are.

use serde_json::{Value, json};

use crate::support::{Options, TestApp, rows, session_of};

fn broken_history() -> Value {
    json!({"model": "mock/echo", "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": null, "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": "{'city': 'Paris',}"}}]},
        {"role": "tool", "content": "sunny"},
        {"role": "user", "content": "And tomorrow?"}]})
}

#[tokio::test]
async fn tool_calls_without_ids_and_with_almost_json_arguments_are_repaired() {
    let app = TestApp::spawn().await;
    let r = app.chat(broken_history()).await;
    assert_eq!(r.status(), 200);
    let sid = session_of(&r);
    let sent = app.mock.captured().pop().unwrap().body;
    let call = &sent["messages"][1]["tool_calls"][0];
    let id = call["id"].as_str().unwrap();
    assert!(id.starts_with("call_"), "{sent}");
    assert_eq!(
        sent["messages"][2]["tool_call_id"], id,
        "the result is linked"
    );
    assert_eq!(call["function"]["arguments"], r#"{"city":"Paris"}"#);
    let row = &rows(&app, &sid).await[0];
    assert!(
        row["routing"].as_str().unwrap().contains(
            "repaired tool calls: 1 id generated, 1 result linked, 1 arguments normalised"
        ),
        "{row}"
    );

    // The next turn replays the same history: the same id, so the provider's cache matches.
    app.chat(broken_history()).await;
    let again = app.mock.captured().pop().unwrap().body;
    assert_eq!(again["messages"][1]["tool_calls"][0]["id"], id);
}

#[tokio::test]
async fn the_off_switch_sends_the_clients_bytes() {
    let app = TestApp::spawn_with(Options {
        proxy_toml: "repair_tool_calls = false".to_owned(),
        ..Options::default()
    })
    .await;
    let r = app.chat(broken_history()).await;
    assert_eq!(r.status(), 200);
    let sid = session_of(&r);
    let sent = app.mock.captured().pop().unwrap().body;
    assert!(sent["messages"][1]["tool_calls"][0].get("id").is_none());
    assert_eq!(
        sent["messages"][1]["tool_calls"][0]["function"]["arguments"],
        "{'city': 'Paris',}"
    );
    let row = &rows(&app, &sid).await[0];
    assert!(row["routing"].is_null(), "{row}");
}
