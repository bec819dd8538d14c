//! Tool-call repair, for clients (Cline, small local models replayed in history) whose
//! assistant tool calls lack an `id` or carry arguments that are not quite JSON. Providers
//! refuse such a history outright; the seed's author found this the fix Cline needs most.
//!
//! On an OpenAI chat request: a tool call with a missing, null or empty `id` gets a stable one
//! (a hash of where it is and what it calls, so the same history gets the same ids every turn)
//! and the `tool` results after it that name no call are linked to those ids in order;
//! arguments that do not parse but are recoverable (single quotes, unquoted keys, trailing
//! commas, Python's `True`/`False`/`None`, a JSON text inside a JSON string, an object instead
//! of a string) are normalised. Anything else is left as it is.

use serde_json::Value;

/// What a repair changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Repairs {
    /// Tool calls given an id.
    pub ids: u32,
    /// Tool results linked to a call they did not name.
    pub links: u32,
    /// Arguments normalised to JSON.
    pub arguments: u32,
}

impl Repairs {
    pub fn any(&self) -> bool {
        self.ids + self.links + self.arguments > 0
    }

    /// For the row's notes: "repaired tool calls: 1 id, 2 arguments".
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        let mut say = |n: u32, one: &str, many: &str| {
            if n > 0 {
                parts.push(format!("{n} {}", if n == 1 { one } else { many }));
            }
        };
        say(self.ids, "id generated", "ids generated");
        say(self.links, "result linked", "results linked");
        say(
            self.arguments,
            "arguments normalised",
            "arguments normalised",
        );
        format!("repaired tool calls: {}", parts.join(", "))
    }
}

/// The repaired body, when anything needed repair; `None` leaves the client's bytes as sent.
pub fn repair_tool_calls(body: &[u8]) -> Option<(Vec<u8>, Repairs)> {
    // Most requests have no tool call at all: no parse for them. Agent traffic has them on
    // every turn, mostly sound: a borrowing pass that allocates nothing for the content
    // decides, and only a history that needs repair is parsed whole.
    memchr::memmem::find(body, b"\"tool_calls\"")?;
    if !needs_repair(body) {
        return None;
    }
    let mut v: Value = serde_json::from_slice(body).ok()?;
    let messages = v.get_mut("messages")?.as_array_mut()?;
    let mut r = Repairs::default();
    // Ids generated for the latest assistant turn, for the results that follow it.
    let mut unlinked: std::collections::VecDeque<String> = std::collections::VecDeque::new();
    for (mi, m) in messages.iter_mut().enumerate() {
        let Some(m) = m.as_object_mut() else { continue };
        match m.get("role").and_then(Value::as_str) {
            Some("assistant") => {
                let Some(calls) = m.get_mut("tool_calls").and_then(Value::as_array_mut) else {
                    continue;
                };
                unlinked.clear();
                for (ci, call) in calls.iter_mut().enumerate() {
                    let Some(call) = call.as_object_mut() else {
                        continue;
                    };
                    if let Some(f) = call.get_mut("function").and_then(Value::as_object_mut)
                        && let Some(args) = f.get_mut("arguments")
                        && let Some(fixed) = repair_arguments(args)
                    {
                        *args = Value::String(fixed);
                        r.arguments += 1;
                    }
                    if call
                        .get("id")
                        .and_then(Value::as_str)
                        .is_none_or(str::is_empty)
                    {
                        let id = stable_id(mi, ci, call.get("function"));
                        call.insert("id".into(), Value::String(id.clone()));
                        unlinked.push_back(id);
                        r.ids += 1;
                    }
                }
            }
            Some("tool") => {
                if m.get("tool_call_id")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
                    && let Some(id) = unlinked.pop_front()
                {
                    m.insert("tool_call_id".into(), Value::String(id));
                    r.links += 1;
                }
            }
            _ => unlinked.clear(),
        }
    }
    if !r.any() {
        return None;
    }
    Some((serde_json::to_vec(&v).ok()?, r))
}

mod lite {
    //! Just the fields repair looks at, borrowed from the body.
    use std::borrow::Cow;

    use serde::Deserialize;
    use serde_json::value::RawValue;

    #[derive(Deserialize)]
    pub struct Body<'a> {
        #[serde(borrow, default)]
        pub messages: Vec<Message<'a>>,
    }

    #[derive(Deserialize)]
    pub struct Message<'a> {
        #[serde(borrow, default)]
        pub tool_calls: Option<Vec<Call<'a>>>,
    }

    #[derive(Deserialize)]
    pub struct Call<'a> {
        #[serde(borrow, default)]
        pub id: Option<Cow<'a, str>>,
        #[serde(borrow, default)]
        pub function: Option<Function<'a>>,
    }

    #[derive(Deserialize)]
    pub struct Function<'a> {
        #[serde(borrow, default)]
        pub arguments: Option<&'a RawValue>,
    }
}

/// Whether any tool call lacks an id or has arguments that are not a JSON text in a string.
/// (A result without a call id is linked only to a call that had none, so calls decide.)
fn needs_repair(body: &[u8]) -> bool {
    let Ok(b) = serde_json::from_slice::<lite::Body<'_>>(body) else {
        return false;
    };
    b.messages
        .iter()
        .filter_map(|m| m.tool_calls.as_ref())
        .flatten()
        .any(|c| {
            c.id.as_deref().is_none_or(str::is_empty)
                || c.function
                    .as_ref()
                    .and_then(|f| f.arguments)
                    .is_some_and(|a| arguments_need_repair(a.get()))
        })
}

fn arguments_need_repair(raw: &str) -> bool {
    if !raw.starts_with('"') {
        // An object or array instead of its text; `null` and numbers are left alone.
        return raw.starts_with('{') || raw.starts_with('[');
    }
    match serde_json::from_str::<std::borrow::Cow<'_, str>>(raw) {
        Ok(text) => {
            let t = text.trim_start();
            t.starts_with('"') || serde_json::from_str::<serde::de::IgnoredAny>(&text).is_err()
        }
        Err(_) => false,
    }
}

/// `call_` and 24 hex digits of a hash of the call's place and function: the same history
/// gives the same ids on every turn, so the provider's prompt cache still matches.
fn stable_id(message: usize, call: usize, function: Option<&Value>) -> String {
    let text = format!(
        "{message}/{call}/{}",
        function.map(Value::to_string).unwrap_or_default()
    );
    let h = xxhash_rust::xxh3::xxh3_128(text.as_bytes());
    format!("call_{:024x}", h >> 32)
}

/// Normalised arguments, or `None` when they are fine as they are or cannot be recovered.
fn repair_arguments(args: &Value) -> Option<String> {
    match args {
        // Some clients replay the parsed object instead of its text.
        Value::Object(_) | Value::Array(_) => serde_json::to_string(args).ok(),
        Value::String(s) => match serde_json::from_str::<Value>(s) {
            // A JSON text inside the string: `"{\"a\": 1}"`, sent as a string of a string.
            Ok(Value::String(inner)) => match serde_json::from_str::<Value>(&inner) {
                Ok(v @ (Value::Object(_) | Value::Array(_))) => serde_json::to_string(&v).ok(),
                _ => None,
            },
            Ok(_) => None,
            Err(_) => {
                let v: Value = serde_json::from_str(&normalise(s)?).ok()?;
                matches!(v, Value::Object(_) | Value::Array(_))
                    .then(|| serde_json::to_string(&v).ok())
                    .flatten()
            }
        },
        _ => None,
    }
}

/// Almost-JSON to JSON: single-quoted strings, unquoted keys, trailing commas and Python's
/// literals. `None` for what this does not recognise (a bare word that is not a key, an
/// unterminated string); the caller still checks that the result parses.
fn normalise(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len() + 16);
    let mut it = s.chars().peekable();
    // Open brackets, to know when a bare word is a key.
    let mut stack: Vec<char> = Vec::new();
    let mut expect_key = false;
    while let Some(c) = it.next() {
        match c {
            '"' | '\'' => {
                out.push('"');
                loop {
                    let ch = it.next()?;
                    match ch {
                        '\\' => {
                            let esc = it.next()?;
                            if esc == '\'' {
                                out.push('\'');
                            } else {
                                out.push('\\');
                                out.push(esc);
                            }
                        }
                        _ if ch == c => break,
                        '"' => out.push_str("\\\""),
                        '\n' => out.push_str("\\n"),
                        '\t' => out.push_str("\\t"),
                        _ => out.push(ch),
                    }
                }
                out.push('"');
                expect_key = false;
            }
            '{' | '[' => {
                out.push(c);
                stack.push(c);
                expect_key = c == '{';
            }
            '}' | ']' => {
                let trimmed = out.trim_end().len();
                out.truncate(trimmed);
                if out.ends_with(',') {
                    out.pop();
                }
                out.push(c);
                stack.pop();
                expect_key = false;
            }
            ',' => {
                out.push(c);
                expect_key = stack.last() == Some(&'{');
            }
            c if c.is_alphabetic() || c == '_' || c == '$' => {
                let mut word = String::from(c);
                while let Some(&n) = it.peek() {
                    if n.is_alphanumeric() || n == '_' || n == '$' || n == '-' {
                        word.push(n);
                        it.next();
                    } else {
                        break;
                    }
                }
                if expect_key {
                    out.push('"');
                    out.push_str(&word);
                    out.push('"');
                } else {
                    out.push_str(match word.as_str() {
                        "true" | "True" => "true",
                        "false" | "False" => "false",
                        "null" | "None" => "null",
                        _ => return None,
                    });
                }
                expect_key = false;
            }
            c => {
                if !c.is_whitespace() && c != ':' {
                    expect_key = false;
                }
                out.push(c);
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn args(raw: &str) -> Option<String> {
        repair_arguments(&Value::String(raw.to_owned()))
    }

    #[test]
    fn recoverable_arguments_are_normalised() {
        let want = Some(r#"{"city":"Paris","n":2}"#.to_owned());
        assert_eq!(args(r#"{'city': 'Paris', 'n': 2}"#), want);
        assert_eq!(args(r#"{city: "Paris", n: 2}"#), want);
        assert_eq!(args(r#"{"city": "Paris", "n": 2,}"#), want);
        assert_eq!(args(r#""{\"city\": \"Paris\", \"n\": 2}""#), want);
        assert_eq!(
            repair_arguments(&json!({"city": "Paris", "n": 2})),
            want,
            "an object instead of its text"
        );
        assert_eq!(
            args(r#"{'ok': True, 'x': None, 'list': [1, 2,], 'q': 'it\'s "x"'}"#),
            Some(r#"{"list":[1,2],"ok":true,"q":"it's \"x\"","x":null}"#.to_owned())
        );
    }

    #[test]
    fn valid_or_unrecoverable_arguments_are_left_alone() {
        assert_eq!(args(r#"{"city": "Paris"}"#), None, "already JSON");
        assert_eq!(args(""), None);
        assert_eq!(args("{city: Paris}"), None, "a bare value");
        assert_eq!(args("{'city': 'Par"), None, "unterminated");
        assert_eq!(args("not json at all"), None);
        assert_eq!(args(r#""just a string""#), None);
        assert_eq!(repair_arguments(&json!(null)), None);
    }

    #[test]
    fn missing_ids_get_stable_ones_and_results_are_linked() {
        let body = json!({"model": "m", "messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"type": "function", "function": {"name": "w", "arguments": "{'city': 'Paris'}"}},
                {"id": null, "type": "function", "function": {"name": "w", "arguments": "{}"}}]},
            {"role": "tool", "content": "sunny"},
            {"role": "tool", "tool_call_id": "", "content": "rain"},
            {"role": "user", "content": "thanks"}]})
        .to_string();
        let (out, r) = repair_tool_calls(body.as_bytes()).unwrap();
        assert_eq!(
            r,
            Repairs {
                ids: 2,
                links: 2,
                arguments: 1
            }
        );
        let v: Value = serde_json::from_slice(&out).unwrap();
        let calls = &v["messages"][1]["tool_calls"];
        let (a, b) = (
            calls[0]["id"].as_str().unwrap(),
            calls[1]["id"].as_str().unwrap(),
        );
        assert!(a.starts_with("call_") && a.len() == 29 && a != b, "{a} {b}");
        assert_eq!(v["messages"][2]["tool_call_id"], a);
        assert_eq!(v["messages"][3]["tool_call_id"], b);
        assert_eq!(calls[0]["function"]["arguments"], r#"{"city":"Paris"}"#);
        // The same history gets the same ids next turn.
        let (again, _) = repair_tool_calls(body.as_bytes()).unwrap();
        assert_eq!(out, again);
        assert_eq!(
            r.describe(),
            "repaired tool calls: 2 ids generated, 2 results linked, 1 arguments normalised"
        );
    }

    #[test]
    fn a_clean_history_is_not_touched() {
        let body = json!({"messages": [
            {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
                "function": {"name": "w", "arguments": "{\"a\":1}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "x"}]})
        .to_string();
        assert!(repair_tool_calls(body.as_bytes()).is_none());
        assert!(repair_tool_calls(b"{\"messages\": []}").is_none());
        assert!(repair_tool_calls(b"\"tool_calls\" but not json").is_none());
    }
}
