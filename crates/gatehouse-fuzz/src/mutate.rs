//! Mutations: of JSON values where a decoder looks, of TOML tables, and of bytes.

use serde_json::{Map, Value, json};

use crate::Rng;

/// Words the decoders match on: a string field replaced by one of these reaches branches a
/// random string never does.
const WORDS: &[&str] = &[
    "user",
    "assistant",
    "system",
    "tool",
    "developer",
    "function",
    "text",
    "image",
    "image_url",
    "tool_use",
    "tool_result",
    "thinking",
    "redacted_thinking",
    "document",
    "input_json_delta",
    "text_delta",
    "message_start",
    "message_delta",
    "message_stop",
    "content_block_start",
    "content_block_delta",
    "content_block_stop",
    "error",
    "ping",
    "stop",
    "length",
    "tool_calls",
    "end_turn",
    "max_tokens",
    "STOP",
    "SAFETY",
    "auto",
    "none",
    "any",
    "required",
    "enabled",
    "ephemeral",
    "data:image/png;base64,iVBORw0KGgo=",
    "https://example.com/a.png",
    "[DONE]",
];

/// A value of any JSON type, often an awkward one.
pub fn any_value(rng: &mut Rng, depth: usize) -> Value {
    match rng.below(if depth > 3 { 14 } else { 17 }) {
        0 => Value::Null,
        1 => json!(true),
        2 => json!(0),
        3 => json!(-1),
        4 => json!(u64::MAX),
        5 => json!(i64::MIN),
        6 => json!(1e308),
        7 => json!(0.5),
        8 => json!(""),
        9 => json!(rng.pick(WORDS).copied().unwrap_or("text")),
        10 => Value::String("x".repeat(rng.below(5000))),
        11 => json!("\u{0}\u{fffd}\u{1F600}\"\\\n"),
        12 => json!([]),
        13 => json!({}),
        14 => Value::Array(
            (0..rng.below(4))
                .map(|_| any_value(rng, depth + 1))
                .collect(),
        ),
        15 => {
            let mut m = Map::new();
            for _ in 0..rng.below(4) {
                let k = rng.pick(KEYS).copied().unwrap_or("type").to_owned();
                m.insert(k, any_value(rng, depth + 1));
            }
            Value::Object(m)
        }
        _ => deep(rng.below(200)),
    }
}

/// Keys the formats use, for inserted fields.
const KEYS: &[&str] = &[
    "role",
    "content",
    "type",
    "text",
    "name",
    "id",
    "arguments",
    "input",
    "tool_calls",
    "tool_call_id",
    "tool_use_id",
    "function",
    "parameters",
    "message",
    "messages",
    "choices",
    "delta",
    "index",
    "usage",
    "prompt_tokens",
    "completion_tokens",
    "input_tokens",
    "output_tokens",
    "finish_reason",
    "stop_reason",
    "candidates",
    "parts",
    "functionCall",
    "args",
    "model",
    "stream",
    "stream_options",
    "max_tokens",
    "system",
    "tools",
    "tool_choice",
    "thinking",
    "signature",
    "image_url",
    "url",
    "source",
    "cache_control",
    "done",
    "eval_count",
    "prompt_eval_count",
];

/// `n` nested arrays: deep nesting without a deep recursion to build it.
fn deep(n: usize) -> Value {
    let mut v = Value::Null;
    for _ in 0..n {
        v = Value::Array(vec![v]);
    }
    v
}

/// Applies one to three structured mutations to `v`.
pub fn json(v: &mut Value, rng: &mut Rng) {
    for _ in 0..=rng.below(3) {
        let count = count_nodes(v);
        let target = rng.below(count);
        let mut seen = 0;
        mutate_at(v, target, &mut seen, rng);
    }
}

fn count_nodes(v: &Value) -> usize {
    1 + match v {
        Value::Array(a) => a.iter().map(count_nodes).sum(),
        Value::Object(o) => o.values().map(count_nodes).sum(),
        _ => 0,
    }
}

/// Walks to node number `target` (pre-order) and mutates it; returns true once done.
fn mutate_at(v: &mut Value, target: usize, seen: &mut usize, rng: &mut Rng) -> bool {
    if *seen == target {
        mutate_node(v, rng);
        return true;
    }
    *seen += 1;
    match v {
        Value::Array(a) => {
            for x in a.iter_mut() {
                if mutate_at(x, target, seen, rng) {
                    return true;
                }
            }
        }
        Value::Object(o) => {
            for x in o.values_mut() {
                if mutate_at(x, target, seen, rng) {
                    return true;
                }
            }
        }
        _ => {}
    }
    false
}

fn mutate_node(v: &mut Value, rng: &mut Rng) {
    match (rng.below(8), &mut *v) {
        // Another type: the commonest bug is a decoder that assumes the type.
        (0..=2, _) => *v = any_value(rng, 0),
        (3, Value::Object(o)) if !o.is_empty() => {
            let k = o.keys().nth(rng.below(o.len())).cloned();
            if let Some(k) = k {
                o.remove(&k);
            }
        }
        (4, Value::Object(o)) => {
            let k = rng.pick(KEYS).copied().unwrap_or("type").to_owned();
            o.insert(k, any_value(rng, 1));
        }
        (3 | 4, Value::Array(a)) if !a.is_empty() => {
            if rng.one_in(2) {
                a.clear();
            } else {
                let i = rng.below(a.len());
                if let Some(x) = a.get(i).cloned() {
                    for _ in 0..=rng.below(3) {
                        a.push(x.clone());
                    }
                }
            }
        }
        (5, Value::String(s)) => {
            *s = rng.pick(WORDS).copied().unwrap_or("text").to_owned();
        }
        (5, Value::Number(_)) => {
            *v = rng
                .pick(&[
                    json!(-1),
                    json!(u64::MAX),
                    json!(1.5),
                    json!(0),
                    json!(1e300),
                ])
                .cloned()
                .unwrap_or(Value::Null);
        }
        // The same value one level deeper: `[x]` where `x` was expected, or `{"k": x}`.
        (6, _) => {
            let inner = v.take();
            *v = if rng.one_in(2) {
                Value::Array(vec![inner])
            } else {
                json!({ "content": inner })
            };
        }
        _ => *v = any_value(rng, 0),
    }
}

/// Damages bytes: a cut, a changed byte, an escape or a quote inserted, a run repeated.
pub fn bytes(b: &mut Vec<u8>, rng: &mut Rng) {
    if b.is_empty() {
        b.extend_from_slice(b"{");
        return;
    }
    let at = rng.below(b.len());
    match rng.below(6) {
        0 => b.truncate(at),
        1 => {
            if let Some(x) = b.get_mut(at) {
                *x = (rng.next_u64() & 0xff) as u8;
            }
        }
        2 => {
            let insert: &[u8] = rng
                .pick(&[
                    &b"\\u00"[..],
                    b"\\",
                    b"\"",
                    b"\xff",
                    b"\xe2\x80",
                    b"\\ud800",
                    b"\n\n",
                ])
                .copied()
                .unwrap_or(b"\\");
            let tail = b.split_off(at);
            b.extend_from_slice(insert);
            b.extend_from_slice(&tail);
        }
        3 => {
            let end = (at + 1 + rng.below(64)).min(b.len());
            let run = b.get(at..end).map(<[u8]>::to_vec).unwrap_or_default();
            let tail = b.split_off(end);
            b.extend_from_slice(&run);
            b.extend_from_slice(&run);
            b.extend_from_slice(&tail);
        }
        4 => {
            let end = (at + 1 + rng.below(64)).min(b.len());
            b.drain(at..end);
        }
        _ => b.reverse(),
    }
}

/// A structured mutation of a TOML table: a value of another type, a huge or negative number,
/// a removed key, an unknown one.
pub fn toml(t: &mut toml::Table, rng: &mut Rng) {
    for _ in 0..=rng.below(3) {
        toml_at(t, rng, 0);
    }
}

fn toml_value(rng: &mut Rng) -> toml::Value {
    use toml::Value as T;
    match rng.below(12) {
        0 => T::Integer(i64::MAX),
        1 => T::Integer(-1),
        2 => T::Integer(0),
        3 => T::Float(f64::NAN),
        4 => T::Float(1e300),
        5 => T::Float(-0.5),
        6 => T::Boolean(true),
        7 => T::String(String::new()),
        8 => T::String("${NOT_SET}".to_owned()),
        9 => T::String("x".repeat(rng.below(300))),
        10 => T::Array(vec![T::Integer(1), T::String("a".into())]),
        _ => T::Table(toml::Table::new()),
    }
}

fn toml_at(t: &mut toml::Table, rng: &mut Rng, depth: usize) {
    if t.is_empty() || depth > 6 {
        t.insert("unknown_key".into(), toml_value(rng));
        return;
    }
    let Some(k) = t.keys().nth(rng.below(t.len())).cloned() else {
        return;
    };
    match t.get_mut(&k) {
        Some(toml::Value::Table(inner)) if !rng.one_in(4) => toml_at(inner, rng, depth + 1),
        Some(v) => match rng.below(4) {
            0 => {
                t.remove(&k);
            }
            1 => {
                t.insert(format!("{k}_typo"), toml_value(rng));
            }
            _ => *v = toml_value(rng),
        },
        None => {}
    }
}
