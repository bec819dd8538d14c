//! Token usage as reported by a provider, and how the gateway reads it.

use serde::{Deserialize, Serialize};

/// The largest token figure the gateway believes: no model's window is within a thousandth of
/// it, so a provider that reports more is wrong, and clamping keeps every sum of figures far
/// from overflowing (2^23 requests at the cap still fit in an `i64`).
pub const MAX_TOKENS: u64 = 1 << 40;

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
        self.prompt_tokens.saturating_add(self.completion_tokens)
    }

    /// Every figure at most [`MAX_TOKENS`].
    pub fn clamped(self) -> Self {
        Self {
            prompt_tokens: self.prompt_tokens.min(MAX_TOKENS),
            completion_tokens: self.completion_tokens.min(MAX_TOKENS),
            cached_tokens: self.cached_tokens.map(|t| t.min(MAX_TOKENS)),
            reasoning_tokens: self.reasoning_tokens.map(|t| t.min(MAX_TOKENS)),
        }
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

/// A model's prices in US dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Pricing {
    pub input: f64,
    pub output: f64,
    /// Price of prompt tokens served from the provider's cache; `input` when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input: Option<f64>,
}

impl Pricing {
    /// Cost of one exchange. `cached` is the part of `prompt` read from the provider's cache.
    pub fn cost(&self, prompt: u64, completion: u64, cached: u64) -> f64 {
        let cached = cached.min(prompt);
        let fresh = prompt - cached;
        (fresh as f64 * self.input
            + cached as f64 * self.cached_input.unwrap_or(self.input)
            + completion as f64 * self.output)
            / 1_000_000.0
    }
}

#[cfg(test)]
mod pricing_tests {
    use super::*;

    #[test]
    fn cached_tokens_are_billed_at_their_price() {
        let p = Pricing {
            input: 2.0,
            output: 8.0,
            cached_input: Some(0.5),
        };
        let c = p.cost(1_000_000, 500_000, 400_000);
        assert!((c - (0.6 * 2.0 + 0.4 * 0.5 + 0.5 * 8.0)).abs() < 1e-9);
        let no_cache_price = Pricing {
            cached_input: None,
            ..p
        };
        assert!((no_cache_price.cost(10, 0, 10) - 20.0 / 1e6).abs() < 1e-12);
        // A provider reporting more cached than prompt tokens does not make the cost negative.
        assert!(p.cost(5, 0, 50) >= 0.0);
    }
}
