//! Observation masking (opt-in): an agent rarely needs the full output of a tool it ran several
//! turns ago. Tool results older than the last K user turns become a one-line placeholder naming
//! the tool, the call and the size; results that report an error are kept, because the model
//! may still be working around them.
//!
//! A message only gets older, so once masked it stays masked with the same placeholder: the
//! prefix the provider sees stays stable from turn to turn.

/// Index of the first message of the last `keep_turns` user turns: messages before it are
/// "old". 0 (nothing old) when the conversation has no more than `keep_turns` user turns.
pub fn cutoff(roles: &[&str], keep_turns: usize) -> usize {
    if keep_turns == 0 {
        return roles.len();
    }
    let mut seen = 0;
    for (i, role) in roles.iter().enumerate().rev() {
        if *role == "user" {
            seen += 1;
            if seen == keep_turns {
                return i;
            }
        }
    }
    0
}

/// How many of the leading `candidates` (the token sizes of the old tool results that may be
/// hidden, in conversation order) to hide. A provider caches the prefix it has seen, so hiding
/// one more result on every turn would change the prefix, and miss the cache, on every turn.
/// Candidates are taken in batches instead: a batch closes once it holds `batch_tokens`, and
/// only closed batches are hidden. Results only ever join the end of the list (they age past
/// the cutoff in order), so a closed batch never changes: what is hidden stays hidden,
/// byte-identical, and the prefix changes once per batch.
pub fn batch_to_hide(candidates: &[u64], batch_tokens: u64) -> usize {
    let mut hidden = 0;
    let mut sum = 0u64;
    for (i, t) in candidates.iter().enumerate() {
        sum = sum.saturating_add(*t);
        if sum >= batch_tokens.max(1) {
            hidden = i + 1;
            sum = 0;
        }
    }
    hidden
}

/// How far into a result an error must show to count.
const ERROR_HEAD: usize = 300;

/// Whether a tool result reports a failure (kept even when old).
pub fn looks_like_error(text: &str) -> bool {
    let head = match text.char_indices().nth(ERROR_HEAD) {
        Some((i, _)) => &text[..i],
        None => text,
    };
    let head = head.to_ascii_lowercase();
    [
        "error",
        "traceback",
        "exception",
        "failed",
        "panicked",
        "fatal",
    ]
    .iter()
    .any(|w| head.contains(w))
}

/// The one-line placeholder of an old tool result.
pub fn placeholder(
    tool: Option<&str>,
    call_id: Option<&str>,
    text: &str,
    tokens: u64,
    reference: &str,
) -> String {
    format!(
        "[old tool result hidden by Gatehouse: {} call {}, {} characters, {tokens} tokens; full text: GET /api/mask/{reference}]",
        tool.unwrap_or("unknown tool"),
        call_id.unwrap_or("?"),
        text.chars().count(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cutoff_counts_user_turns_from_the_end() {
        let roles = [
            "system",
            "user",
            "assistant",
            "tool",
            "user",
            "assistant",
            "tool",
            "user",
        ];
        assert_eq!(cutoff(&roles, 1), 7);
        assert_eq!(cutoff(&roles, 2), 4);
        assert_eq!(cutoff(&roles, 3), 1);
        assert_eq!(
            cutoff(&roles, 4),
            0,
            "fewer turns than kept: nothing is old"
        );
        assert_eq!(cutoff(&roles, 0), roles.len(), "0 keeps no turn");
    }

    #[test]
    fn results_are_hidden_in_closed_batches_only() {
        assert_eq!(batch_to_hide(&[], 1000), 0);
        assert_eq!(batch_to_hide(&[400, 400], 1000), 0, "an open batch stays");
        assert_eq!(batch_to_hide(&[400, 400, 400], 1000), 3);
        assert_eq!(batch_to_hide(&[400, 400, 400, 900], 1000), 3);
        assert_eq!(batch_to_hide(&[400, 400, 400, 900, 200], 1000), 5);
        // A longer history never un-hides what a shorter one hid.
        let sizes = [700, 120, 3000, 50, 800, 800, 90, 2500, 10, 10];
        let mut last = 0;
        for n in 0..=sizes.len() {
            let h = batch_to_hide(&sizes[..n], 2000);
            assert!(h >= last, "{n}: {h} < {last}");
            last = h;
        }
    }

    #[test]
    fn errors_are_recognised_near_the_start_only() {
        assert!(looks_like_error(
            "Traceback (most recent call last):\n  File"
        ));
        assert!(looks_like_error("test result: FAILED. 3 passed; 1 failed"));
        assert!(looks_like_error("thread 'main' panicked at src/main.rs:3"));
        assert!(!looks_like_error("all 12 tests passed"));
        let late = format!("{}error", "ok\n".repeat(200));
        assert!(!looks_like_error(&late));
    }

    #[test]
    fn the_placeholder_names_tool_call_and_size() {
        assert_eq!(
            placeholder(
                Some("run_tests"),
                Some("call_7"),
                "ééé",
                42,
                "0123456789abcdef"
            ),
            "[old tool result hidden by Gatehouse: run_tests call call_7, 3 characters, 42 tokens; full text: GET /api/mask/0123456789abcdef]"
        );
    }
}
