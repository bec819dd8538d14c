//! Secret redaction: finds credentials in a request body before it leaves the machine.
//!
//! The scan runs on the raw JSON bytes, so every field is covered (messages, tool results, tool
//! definitions) and a body without secrets costs one Aho-Corasick pass and nothing else. Each
//! literal hit (`sk-`, `AKIA`, `ghp_`, `-----BEGIN`, `://`, `password`…) runs one anchored regex
//! at that spot. A finding never contains `"` or a partial escape sequence, so replacing it with
//! an ASCII placeholder keeps the JSON valid.

use std::ops::Range;
use std::sync::OnceLock;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use bytes::{Bytes, BytesMut};
use regex::bytes::Regex;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SecretKind {
    OpenaiKey,
    AnthropicKey,
    GoogleApiKey,
    AwsAccessKeyId,
    AwsSecretKey,
    GithubToken,
    GitlabToken,
    SlackToken,
    SlackWebhook,
    StripeKey,
    Jwt,
    PrivateKey,
    UrlCredentials,
    SecretAssignment,
}

impl SecretKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OpenaiKey => "openai_key",
            Self::AnthropicKey => "anthropic_key",
            Self::GoogleApiKey => "google_api_key",
            Self::AwsAccessKeyId => "aws_access_key_id",
            Self::AwsSecretKey => "aws_secret_key",
            Self::GithubToken => "github_token",
            Self::GitlabToken => "gitlab_token",
            Self::SlackToken => "slack_token",
            Self::SlackWebhook => "slack_webhook",
            Self::StripeKey => "stripe_key",
            Self::Jwt => "jwt",
            Self::PrivateKey => "private_key",
            Self::UrlCredentials => "url_credentials",
            Self::SecretAssignment => "secret_assignment",
        }
    }

    /// Words for messages: "an OpenAI API key".
    pub fn describe(self) -> &'static str {
        match self {
            Self::OpenaiKey => "an OpenAI API key",
            Self::AnthropicKey => "an Anthropic API key",
            Self::GoogleApiKey => "a Google API key",
            Self::AwsAccessKeyId => "an AWS access key id",
            Self::AwsSecretKey => "an AWS secret access key",
            Self::GithubToken => "a GitHub token",
            Self::GitlabToken => "a GitLab token",
            Self::SlackToken => "a Slack token",
            Self::SlackWebhook => "a Slack webhook URL",
            Self::StripeKey => "a Stripe key",
            Self::Jwt => "a JSON Web Token",
            Self::PrivateKey => "a private key",
            Self::UrlCredentials => "a password in a URL",
            Self::SecretAssignment => "a secret assigned to a variable",
        }
    }

    /// What replaces the secret: typed, so the model still knows a credential was there.
    pub fn placeholder(self) -> &'static str {
        match self {
            Self::OpenaiKey => "[REDACTED:openai_key]",
            Self::AnthropicKey => "[REDACTED:anthropic_key]",
            Self::GoogleApiKey => "[REDACTED:google_api_key]",
            Self::AwsAccessKeyId => "[REDACTED:aws_access_key_id]",
            Self::AwsSecretKey => "[REDACTED:aws_secret_key]",
            Self::GithubToken => "[REDACTED:github_token]",
            Self::GitlabToken => "[REDACTED:gitlab_token]",
            Self::SlackToken => "[REDACTED:slack_token]",
            Self::SlackWebhook => "[REDACTED:slack_webhook]",
            Self::StripeKey => "[REDACTED:stripe_key]",
            Self::Jwt => "[REDACTED:jwt]",
            Self::PrivateKey => "[REDACTED:private_key]",
            Self::UrlCredentials => "[REDACTED:url_credentials]",
            Self::SecretAssignment => "[REDACTED:secret]",
        }
    }
}

/// One secret found: its kind and its byte range in the scanned text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub kind: SecretKind,
    pub range: Range<usize>,
}

/// Where a rule's regex starts relative to the literal that triggered it.
#[derive(Debug, Clone, Copy)]
enum Start {
    /// At the literal, which must not continue a word.
    Literal,
    /// After the literal (`://`).
    AfterLiteral,
    /// At the start of the identifier the literal is part of (`DB_PASSWORD`).
    Identifier,
}

struct Rule {
    kind: SecretKind,
    literals: &'static [&'static str],
    start: Start,
    /// Anchored with `^`; the capture group `s` is the secret.
    pattern: &'static str,
    /// The byte after the match must not continue a token.
    right_boundary: bool,
}

const RULES: &[Rule] = &[
    Rule {
        kind: SecretKind::AnthropicKey,
        literals: &["sk-ant-"],
        start: Start::Literal,
        pattern: r"^(?P<s>sk-ant-[A-Za-z0-9_-]{20,})",
        right_boundary: false,
    },
    Rule {
        kind: SecretKind::OpenaiKey,
        literals: &["sk-"],
        start: Start::Literal,
        pattern: r"^(?P<s>sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,})",
        right_boundary: false,
    },
    Rule {
        kind: SecretKind::GoogleApiKey,
        literals: &["AIza"],
        start: Start::Literal,
        pattern: r"^(?P<s>AIza[0-9A-Za-z_-]{35})",
        right_boundary: true,
    },
    Rule {
        kind: SecretKind::AwsAccessKeyId,
        literals: &["AKIA", "ASIA"],
        start: Start::Literal,
        pattern: r"^(?P<s>(?:AKIA|ASIA)[0-9A-Z]{16})",
        right_boundary: true,
    },
    Rule {
        kind: SecretKind::AwsSecretKey,
        literals: &["aws_secret_access_key"],
        start: Start::Identifier,
        pattern: r#"(?i)^[A-Za-z0-9_]*aws_secret_access_key(?:\\?["'])?\s*[:=]\s*(?:\\?["'])?(?P<s>[A-Za-z0-9/+=]{40})"#,
        right_boundary: true,
    },
    Rule {
        kind: SecretKind::GithubToken,
        literals: &["ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"],
        start: Start::Literal,
        pattern: r"^(?P<s>gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})",
        right_boundary: true,
    },
    Rule {
        kind: SecretKind::GitlabToken,
        literals: &["glpat-"],
        start: Start::Literal,
        pattern: r"^(?P<s>glpat-[A-Za-z0-9_-]{20,})",
        right_boundary: false,
    },
    Rule {
        kind: SecretKind::SlackToken,
        literals: &["xoxb-", "xoxp-", "xoxa-", "xoxo-", "xoxr-", "xoxs-"],
        start: Start::Literal,
        pattern: r"^(?P<s>xox[abposr]-[A-Za-z0-9-]{10,})",
        right_boundary: false,
    },
    Rule {
        kind: SecretKind::SlackWebhook,
        literals: &["hooks.slack.com/services/"],
        start: Start::Literal,
        pattern: r"^hooks\.slack\.com/services/(?P<s>T[A-Za-z0-9_]+/B[A-Za-z0-9_]+/[A-Za-z0-9_]+)",
        right_boundary: false,
    },
    Rule {
        kind: SecretKind::StripeKey,
        literals: &["sk_live_", "rk_live_", "sk_test_", "rk_test_"],
        start: Start::Literal,
        pattern: r"^(?P<s>[sr]k_(?:live|test)_[A-Za-z0-9]{16,})",
        right_boundary: false,
    },
    Rule {
        kind: SecretKind::Jwt,
        literals: &["eyJ"],
        start: Start::Literal,
        pattern: r"^(?P<s>eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,})",
        right_boundary: false,
    },
    Rule {
        kind: SecretKind::PrivateKey,
        literals: &["-----BEGIN"],
        start: Start::Literal,
        // The whole block when it ends within 16 KiB; otherwise everything that still looks
        // like key material (a truncated key is still a key). `\n` is two bytes in JSON.
        pattern: r"(?s)^(?P<s>-----BEGIN[A-Z ]{0,40}PRIVATE KEY-----(?:.{0,16384}?-----END[A-Z ]{0,40}PRIVATE KEY-----|(?:\\[nr]|[A-Za-z0-9+/=:\- \t\r\n])*))",
        right_boundary: false,
    },
    Rule {
        kind: SecretKind::UrlCredentials,
        literals: &["://"],
        start: Start::AfterLiteral,
        pattern: r#"^(?P<s>[^\s/:@"'\\]{1,128}:[^\s/@"'\\]{1,256})@"#,
        right_boundary: false,
    },
    Rule {
        kind: SecretKind::SecretAssignment,
        literals: &[
            "secret",
            "password",
            "passwd",
            "token",
            "api_key",
            "apikey",
            "access_key",
            "private_key",
            "credential",
        ],
        start: Start::Identifier,
        pattern: r#"(?i)^[A-Za-z0-9_]*(?:secret|password|passwd|token|api_?key|access_?key|private_?key|credentials?)[A-Za-z0-9_]*(?:\\?["'])?[ \t]*[:=][ \t]*(?:\\?["'])?(?P<s>[^\s"'\\,;(){}\[\]<>$`|:=][^\s"'\\,;(){}\[\]<>$`|]{7,255})"#,
        right_boundary: false,
    },
];

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// Whether a token may start at `pos`: the byte before does not continue a word, or it is the
/// letter of a JSON escape (`\n`, `\t`, `\"`…), which ends the previous word.
fn left_boundary(text: &[u8], pos: usize) -> bool {
    match pos {
        0 => true,
        1 => !is_word(text[0]),
        _ => !is_word(text[pos - 1]) || text[pos - 2] == b'\\',
    }
}

/// A value assigned to a secret-looking name is reported only when it looks like a secret:
/// not a number, not a word of code, not a placeholder.
fn plausible_value(v: &[u8], followed_by: Option<u8>) -> bool {
    if followed_by == Some(b'(') || followed_by == Some(b'.') {
        return false; // a call or an attribute: code, not a credential
    }
    let digits = v.iter().filter(|b| b.is_ascii_digit()).count();
    let letters = v.iter().filter(|b| b.is_ascii_alphabetic()).count();
    let upper = v.iter().any(u8::is_ascii_uppercase);
    let lower = v.iter().any(u8::is_ascii_lowercase);
    let symbols = v.iter().any(|b| b"!@#%^&*+/=~?".contains(b));
    if digits == v.len() || letters == 0 {
        return false;
    }
    let lowered = v.to_ascii_lowercase();
    for placeholder in [
        &b"changeme"[..],
        b"example",
        b"your_",
        b"yourkey",
        b"xxxxxxxx",
        b"redacted",
        b"placeholder",
        b"password",
        b"secret",
    ] {
        if lowered.windows(placeholder.len()).any(|w| w == placeholder) {
            return false;
        }
    }
    (digits > 0 && letters > 0) || (upper && lower && v.len() >= 12) || symbols
}

/// Orders findings and removes overlaps (the same secret reached through two literals). Where
/// a generic `NAME=value` finding overlaps a specific one (`GITHUB_TOKEN=ghp_…`), the specific
/// kind wins; otherwise the first one found stays.
fn resolve_overlaps(mut found: Vec<Finding>) -> Vec<Finding> {
    found.sort_by_key(|f| (f.range.start, f.kind == SecretKind::SecretAssignment));
    let mut out: Vec<Finding> = Vec::with_capacity(found.len());
    for f in found {
        match out.last_mut() {
            Some(last) if last.range.end > f.range.start => {
                if last.kind == SecretKind::SecretAssignment
                    && f.kind != SecretKind::SecretAssignment
                {
                    *last = f;
                }
            }
            _ => out.push(f),
        }
    }
    out
}

/// The compiled rules; build once and share.
pub struct Redactor {
    prefilter: AhoCorasick,
    /// Literal index → rule index.
    literal_rule: Vec<usize>,
    regexes: Vec<Regex>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redactor")
            .field("rules", &RULES.len())
            .finish_non_exhaustive()
    }
}

impl Redactor {
    /// The built-in rules, compiled once per process. `None` only if a constant pattern were
    /// invalid, which the tests rule out; the server refuses to start rather than run without.
    pub fn shared() -> Option<&'static Self> {
        static R: OnceLock<Option<Redactor>> = OnceLock::new();
        R.get_or_init(Self::build).as_ref()
    }

    fn build() -> Option<Self> {
        let mut literals = Vec::new();
        let mut literal_rule = Vec::new();
        for (i, rule) in RULES.iter().enumerate() {
            for lit in rule.literals {
                literals.push(*lit);
                literal_rule.push(i);
            }
        }
        let prefilter = AhoCorasickBuilder::new()
            .ascii_case_insensitive(true)
            .match_kind(MatchKind::Standard)
            .build(&literals)
            .ok()?;
        let regexes = RULES
            .iter()
            // Byte-oriented classes: secrets are ASCII, and `\s` needs no Unicode tables.
            .map(|r| Regex::new(&format!("(?-u){}", r.pattern)).ok())
            .collect::<Option<Vec<_>>>()?;
        Some(Self {
            prefilter,
            literal_rule,
            regexes,
        })
    }

    /// Every secret in `text`, in order, without overlaps.
    pub fn scan(&self, text: &[u8]) -> Vec<Finding> {
        let mut found: Vec<Finding> = Vec::new();
        for m in self.prefilter.find_overlapping_iter(text) {
            let Some(&ri) = self.literal_rule.get(m.pattern().as_usize()) else {
                continue;
            };
            let rule = &RULES[ri];
            let start = match rule.start {
                Start::Literal => {
                    if !left_boundary(text, m.start()) {
                        continue;
                    }
                    m.start()
                }
                Start::AfterLiteral => m.end(),
                Start::Identifier => {
                    let mut s = m.start();
                    while s > 0 && (text[s - 1].is_ascii_alphanumeric() || text[s - 1] == b'_') {
                        s -= 1;
                    }
                    if !left_boundary(text, s) {
                        continue;
                    }
                    s
                }
            };
            let hay = &text[start..];
            let Some(caps) = self.regexes[ri].captures(hay) else {
                continue;
            };
            let (Some(s), Some(whole)) = (caps.name("s"), caps.get(0)) else {
                continue;
            };
            let after = hay.get(whole.end()).copied();
            if rule.right_boundary && after.is_some_and(|b| b.is_ascii_alphanumeric()) {
                continue;
            }
            if rule.kind == SecretKind::OpenaiKey && s.as_bytes().starts_with(b"sk-ant-") {
                continue;
            }
            if rule.kind == SecretKind::SecretAssignment && !plausible_value(s.as_bytes(), after) {
                continue;
            }
            found.push(Finding {
                kind: rule.kind,
                range: start + s.start()..start + s.end(),
            });
        }
        resolve_overlaps(found)
    }

    /// `body` with each finding replaced by its placeholder. `findings` come from [`scan`] of
    /// the same bytes (ordered, not overlapping).
    ///
    /// [`scan`]: Redactor::scan
    pub fn redact(body: &[u8], findings: &[Finding]) -> Bytes {
        let mut out = BytesMut::with_capacity(body.len());
        let mut at = 0;
        for f in findings {
            if f.range.start < at || f.range.end > body.len() {
                continue;
            }
            out.extend_from_slice(&body[at..f.range.start]);
            out.extend_from_slice(f.kind.placeholder().as_bytes());
            at = f.range.end;
        }
        out.extend_from_slice(&body[at..]);
        out.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The text as it appears inside a JSON request body (a message's content).
    fn body(content: &str) -> String {
        serde_json::json!({"model": "m", "messages": [{"role": "user", "content": content}]})
            .to_string()
    }

    fn kinds(content: &str) -> Vec<SecretKind> {
        let b = body(content);
        Redactor::shared()
            .unwrap()
            .scan(b.as_bytes())
            .into_iter()
            .map(|f| f.kind)
            .collect()
    }

    fn redacted(content: &str) -> String {
        let b = body(content);
        let r = Redactor::shared().unwrap();
        let out = Redactor::redact(b.as_bytes(), &r.scan(b.as_bytes()));
        let v: serde_json::Value = serde_json::from_slice(&out).expect("still valid JSON");
        v["messages"][0]["content"].as_str().unwrap().to_owned()
    }

    #[test]
    fn the_rules_compile() {
        assert!(Redactor::shared().is_some());
    }

    #[test]
    fn each_kind_is_found_and_replaced() {
        let gh = format!("ghp_{}", "A1b2C3d4E5".repeat(4));
        let cases: Vec<(String, SecretKind)> = vec![
            ("use sk-proj-Abc123Def456Ghi789Jkl012Mno345 please".into(), SecretKind::OpenaiKey),
            ("key=sk-ant-api03-Abc123Def456Ghi789Jkl012-Mno345".into(), SecretKind::AnthropicKey),
            ("AIzaSyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q here".into(), SecretKind::GoogleApiKey),
            ("id AKIAIOSFODNN7EXAMPLE in the log".into(), SecretKind::AwsAccessKeyId),
            (
                "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
                SecretKind::AwsSecretKey,
            ),
            (format!("token {gh} ok"), SecretKind::GithubToken),
            ("glpat-A1b2C3d4E5f6G7h8I9j0".into(), SecretKind::GitlabToken),
            ("xoxb-123456789012-1234567890123-AbCdEfGhIjKl".into(), SecretKind::SlackToken),
            (
                "post to https://hooks.slack.com/services/T0001/B0002/AbCdEf123456".into(),
                SecretKind::SlackWebhook,
            ),
            ("stripe sk_live_A1b2C3d4E5f6G7h8I9j0".into(), SecretKind::StripeKey),
            (
                "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U".into(),
                SecretKind::Jwt,
            ),
            (
                "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA7bq0\nAbCd==\n-----END RSA PRIVATE KEY-----\nafter".into(),
                SecretKind::PrivateKey,
            ),
            (
                "DATABASE_URL=postgres://app:s3cretPass99@db.internal:5432/app".into(),
                SecretKind::UrlCredentials,
            ),
            ("DB_PASSWORD=hunter2hunter2\nDEBUG=1".into(), SecretKind::SecretAssignment),
            (r#"config = {"api_key": "Zx9Qw8Er7Ty6"}"#.into(), SecretKind::SecretAssignment),
            ("export GITHUB_TOKEN='ab12cd34ef56gh78'".into(), SecretKind::SecretAssignment),
        ];
        for (text, kind) in cases {
            assert_eq!(kinds(&text), [kind], "{text}");
            let out = redacted(&text);
            assert!(out.contains(kind.placeholder()), "{text} -> {out}");
        }
    }

    #[test]
    fn redaction_keeps_the_rest_of_the_text() {
        assert_eq!(
            redacted("DB_PASSWORD=hunter2hunter2\nDEBUG=1"),
            "DB_PASSWORD=[REDACTED:secret]\nDEBUG=1"
        );
        assert_eq!(
            redacted("url https://bob:pa55word@example.com/x"),
            "url https://[REDACTED:url_credentials]@example.com/x"
        );
        assert_eq!(
            redacted("-----BEGIN PRIVATE KEY-----\nAbC=\n-----END PRIVATE KEY-----\nafter"),
            "[REDACTED:private_key]\nafter"
        );
        // A truncated key is still removed.
        assert_eq!(
            redacted("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEA\nAAAA"),
            "[REDACTED:private_key]"
        );
        // A specific kind beats the generic NAME=value reading of the same secret.
        let gh = format!("ghp_{}", "A1b2C3d4E5".repeat(4));
        assert_eq!(
            redacted(&format!("GITHUB_TOKEN={gh}")),
            "GITHUB_TOKEN=[REDACTED:github_token]"
        );
        let two = redacted("a sk-proj-Abc123Def456Ghi789Jkl012 b AKIAIOSFODNN7EXAMPLE c");
        assert_eq!(
            two,
            "a [REDACTED:openai_key] b [REDACTED:aws_access_key_id] c"
        );
    }

    #[test]
    fn ordinary_text_and_code_are_left_alone() {
        let clean = [
            // Digests, ids, images.
            "sha256 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "commit 9fceb02d0ae598e95dc970b74767f19372d61af8",
            "id 550e8400-e29b-41d4-a716-446655440000",
            "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==",
            // Code that names secrets without holding one.
            "tokenizer = AutoTokenizer.from_pretrained(name)",
            "max_tokens: 4096",
            "token = get_token2()",
            "password = input(\"Password: \")",
            "secret_key = settings.SECRET_KEY",
            "api_key = os.environ[\"OPENAI_API_KEY\"]",
            "API_KEY=${OPENAI_API_KEY}",
            "password: str",
            "DB_PASSWORD=changeme123",
            "the tokens: 1234567890",
            // Paths and comparisons, not assignments.
            "test token_cache::tests::chunk_header_41 ... ok",
            "let t = token::Kind::Ident2(x);",
            "if token == expected_token2 {",
            "assert!(secret_len >= 12345678);",
            // Words that contain a literal.
            "the risk-assessment-framework-document is done",
            "task-abcdefghijklmnopqrstuvwxyz",
            "desk-organizer",
            "ASIAN markets",
            // URLs without credentials.
            "see https://example.com:8080/path@v2 and git@github.com:org/repo.git",
            "http://user@example.com/",
            // Prose about keys.
            "Never paste your sk- key or an AKIA id into chat.",
            "The JWT starts with eyJ and has three parts.",
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----",
        ];
        for c in clean {
            assert_eq!(kinds(c), [], "flagged: {c}");
        }
    }

    #[test]
    fn the_request_itself_is_not_flagged() {
        let b = serde_json::json!({
            "model": "gpt-4o", "max_tokens": 1_000_000_000u64, "stream": true,
            "stream_options": {"include_usage": true},
            "messages": [{"role": "user", "content": "hello"}],
            "tools": [{"type": "function", "function": {"name": "get_token", "parameters": {"type": "object"}}}],
        })
        .to_string();
        assert_eq!(Redactor::shared().unwrap().scan(b.as_bytes()), []);
    }

    #[test]
    fn scanning_odd_bytes_never_panics() {
        let r = Redactor::shared().unwrap();
        let mut seed = 0x9E37_79B9_7F4A_7C15_u64;
        let alphabet = b"sk-AKIAghp_eyJ.://@=:\\\"n -----BEGIN PRIVATE KEY password_token xox";
        for len in 0..400 {
            let text: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    alphabet[(seed % alphabet.len() as u64) as usize]
                })
                .collect();
            let f = r.scan(&text);
            let _ = Redactor::redact(&text, &f);
        }
    }
}
