//! Token usage as reported by a provider, and how the gateway reads it.

use serde::{Deserialize, Serialize};

/// Usage figures of one completion. `cached` and `reasoning` are `None` when not reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cached_tokens: Option<u64>,
    pub reasoning_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct OpenAiUsage {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
    #[serde(default)]
    prompt_tokens_details: Option<PromptDetails>,
    #[serde(default)]
    completion_tokens_details: Option<CompletionDetails>,
    // Some OpenAI-compatible providers (Moonshot, DeepSeek) report cache hits at top level.
    #[serde(default)]
    cached_tokens: Option<u64>,
    #[serde(default)]
    prompt_cache_hit_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct PromptDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct CompletionDetails {
    #[serde(default)]
    reasoning_tokens: Option<u64>,
}

impl Usage {
    /// Reads an OpenAI-style `usage` object; `None` unless it holds token counts.
    pub fn from_openai(usage: &serde_json::value::RawValue) -> Option<Self> {
        let u: OpenAiUsage = serde_json::from_str(usage.get()).ok()?;
        if u.prompt_tokens.is_none() && u.completion_tokens.is_none() {
            return None;
        }
        Some(Self {
            prompt_tokens: u.prompt_tokens.unwrap_or(0),
            completion_tokens: u.completion_tokens.unwrap_or(0),
            cached_tokens: u
                .prompt_tokens_details
                .and_then(|d| d.cached_tokens)
                .or(u.cached_tokens)
                .or(u.prompt_cache_hit_tokens),
            reasoning_tokens: u.completion_tokens_details.and_then(|d| d.reasoning_tokens),
        })
    }

    pub fn total(&self) -> u64 {
        self.prompt_tokens + self.completion_tokens
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<serde_json::value::RawValue> {
        serde_json::value::RawValue::from_string(s.to_owned()).unwrap()
    }

    #[test]
    fn reads_details() {
        let u = Usage::from_openai(&raw(
            r#"{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15,
                "prompt_tokens_details":{"cached_tokens":4},
                "completion_tokens_details":{"reasoning_tokens":2}}"#,
        ))
        .unwrap();
        assert_eq!(u.cached_tokens, Some(4));
        assert_eq!(u.reasoning_tokens, Some(2));
        assert_eq!(u.total(), 15);
        assert!(Usage::from_openai(&raw("{}")).is_none());
        assert!(Usage::from_openai(&raw("null")).is_none());
    }
}
