//! Secret redaction: finds credentials in a request body before it leaves the machine.
//!
//! The scan runs on the raw JSON bytes, so every field is covered (messages, tool results, tool
//! definitions) and a body without secrets costs one Aho-Corasick pass and nothing else. Each
//! literal hit (`sk-`, `AKIA`, `ghp_`, `-----BEGIN`, `://`, `password`…) runs one anchored regex
//! at that spot. A finding never contains `"` or a partial escape sequence, so replacing it with
//! an ASCII placeholder keeps the JSON valid.
//!
//! The provider reads decoded strings, not bytes: `\u0073k-proj-…` is `sk-proj-…` to it, and so
//! is a key right after `\u201c` or a URL written `postgres:\/\/user:pass@host`. The same pass
//! notices `\u` and `\/` escapes; when a body has any, each JSON string holding one is decoded
//! (with a map from every decoded byte back to the raw bytes that made it) and scanned too, and
//! a finding there replaces the whole escape sequences it covers.

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
    SendgridKey,
    TwilioKey,
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
            Self::SendgridKey => "sendgrid_key",
            Self::TwilioKey => "twilio_key",
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
            Self::SendgridKey => "a SendGrid API key",
            Self::TwilioKey => "a Twilio API key",
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
            Self::SendgridKey => "[REDACTED:sendgrid_key]",
            Self::TwilioKey => "[REDACTED:twilio_key]",
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
        kind: SecretKind::SendgridKey,
        literals: &["SG."],
        start: Start::Literal,
        pattern: r"^(?P<s>SG\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43})",
        right_boundary: true,
    },
    Rule {
        kind: SecretKind::TwilioKey,
        literals: &["SK"],
        start: Start::Literal,
        pattern: r"^(?P<s>SK[0-9a-fA-F]{32})",
        right_boundary: true,
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
        pattern: r#"(?i)^[A-Za-z0-9_]*(?:secret|password|passwd|token|api_?key|access_?key|private_?key|credentials?)[A-Za-z0-9_]*(?:\\?["'])?(?P<sp>[ \t]*)[:=][ \t]*(?P<q>\\?["'])?(?P<s>[^\s"'\\,;(){}\[\]<>$`|:=][^\s"'\\,;(){}\[\]<>`|]{7,255})"#,
        right_boundary: false,
    },
];

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// Whether a token may start at `pos`: the byte before does not continue a word, or it is the
/// letter of a JSON escape (`\n`, `\t`, `\"`…), which ends the previous word.
fn left_boundary(text: &[u8], pos: usize) -> bool {
    let Some(before) = pos.checked_sub(1).and_then(|i| text.get(i)) else {
        return true;
    };
    !is_word(*before) || pos.checked_sub(2).and_then(|i| text.get(i)) == Some(&b'\\')
}

/// How a value was written after a secret-looking name (`NAME=value`, `name: "value"`).
#[derive(Debug, Clone, Copy)]
struct Assignment<'a> {
    value: &'a [u8],
    /// The bytes right after the value.
    after: &'a [u8],
    /// The value opens with a quote: a string literal.
    quoted: bool,
    /// `NAME=value` as `.env` files and shells write it: `=` with no space around it and a
    /// bare value. There a bare value is a literal, not an identifier.
    env_style: bool,
}

/// Whether `after` (the bytes after a value) ends the line: a newline, raw or as a JSON
/// escape, the end of the string, or the end of the text. YAML and INI values end the line;
/// code goes on with `,`, `;`, `)` or an operator.
fn ends_line(after: &[u8]) -> bool {
    match after {
        [] | [b'\n' | b'\r' | b'"', ..] => true,
        [b'\\', b'n' | b'r', ..] => true,
        [b' ' | b'\t', rest @ ..] => ends_line(rest),
        _ => false,
    }
}

/// A value assigned to a secret-looking name is reported only when it is a literal that looks
/// like a secret. Code names secrets far more often than it holds them (`apiKey:
/// z.ZodOptional<…>`, `api_key = process.env.API_KEY`, `token: Option<String>`), so a bare
/// value outside `.env` style must look random, and any value must be long, varied and not a
/// URL, a path, a template or a placeholder.
fn plausible_value(a: Assignment<'_>) -> bool {
    let v = a.value;
    let next = a.after.first().copied();
    if a.quoted {
        // The whole string literal, not its first word nor an expression inside it. In a JSON
        // body the closing quote may be escaped (`\"`); `\n` is not a quote.
        let closes = match next {
            Some(b'"' | b'\'') => true,
            Some(b'\\') => matches!(a.after.get(1), Some(b'"' | b'\'')),
            _ => false,
        };
        if !closes {
            return false;
        }
        // `"tuple.0.0".parse()`: a literal a method is called on is data, not a secret.
        let rest = a.after.get(if next == Some(b'\\') { 2 } else { 1 }..);
        if let Some([b'.', c, ..]) = rest
            && c.is_ascii_alphabetic()
        {
            return false;
        }
    } else if a.env_style {
        if matches!(next, Some(b'(' | b'<' | b'[' | b'{' | b',' | b')')) {
            return false; // a call, a generic, a keyword argument: code, not a credential
        }
    } else if !ends_line(a.after) || matches!(v.first(), Some(b'&' | b'*' | b'!')) {
        // `name: value` or `name = value` inside code (`token: &str,`, `key = cfg.key;`)
        // names a type or a variable; only a YAML- or INI-style value ending its line is a
        // literal.
        return false;
    }
    if v.windows(2).any(|w| w == b"::" || w == b"->") {
        return false; // a path or a pointer access
    }
    let digits = v.iter().filter(|b| b.is_ascii_digit()).count();
    let letters = v.iter().filter(|b| b.is_ascii_alphabetic()).count();
    let upper = v.iter().any(u8::is_ascii_uppercase);
    let lower = v.iter().any(u8::is_ascii_lowercase);
    let symbols = v.iter().any(|b| b"!@#%^&*+/=~?".contains(b));
    if digits == v.len() || letters == 0 {
        return false;
    }
    if not_a_credential(v) || entropy(v) < 2.5 {
        return false;
    }
    let literal = a.quoted || a.env_style;
    let wordy = wordy(v);
    if !literal && wordy && !symbols {
        return false; // an identifier or a member path: `process.env.GEMINI_API_KEY`
    }
    (digits > 0 && letters > 0) || symbols || (upper && lower && v.len() >= 12 && !wordy)
}

/// `user:password` in a URL is a credential when the password could be one: not a template
/// (`${PASS}`, `{password}`, `<pass>`, `%s`), not a stand-in (`password`, `pass`, `secret`),
/// not the user name again (`postgres:postgres`), and at least six characters with a digit,
/// a symbol or both cases. Documentation writes `user:pass@`, `a:b@` and `root:password@`.
fn plausible_url_password(userinfo: &[u8], host: &[u8]) -> bool {
    // Hosts reserved for documentation (RFC 2606) hold no real account.
    let host = host
        .split(|b| matches!(b, b'/' | b':' | b'"' | b'\\' | b' '))
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    if host.starts_with(b"example.")
        || host.ends_with(b".example")
        || host.ends_with(b".invalid")
        || host.windows(9).any(|w| w == b".example.")
    {
        return false;
    }
    let Some(colon) = userinfo.iter().position(|&b| b == b':') else {
        return false;
    };
    let (user, password) = (
        userinfo.get(..colon).unwrap_or_default(),
        userinfo.get(colon + 1..).unwrap_or_default(),
    );
    let templated = |p: &[u8]| {
        p.iter()
            .any(|b| matches!(b, b'$' | b'{' | b'}' | b'<' | b'>' | b'%'))
    };
    let user_like = user
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || b"._~+-".contains(b));
    // A comma separates hosts (`h1:123,user:pass@h2`): no userinfo has one.
    if !user_like || templated(password) || password.contains(&b',') {
        return false;
    }
    if password.len() < 6 || password == user {
        return false;
    }
    if not_a_credential(password) || password.eq_ignore_ascii_case(b"pass") {
        return false;
    }
    let digit = password.iter().any(u8::is_ascii_digit);
    let upper = password.iter().any(u8::is_ascii_uppercase);
    let lower = password.iter().any(u8::is_ascii_lowercase);
    let symbol = password.iter().any(|b| !b.is_ascii_alphanumeric());
    digit || symbol || (upper && lower)
}

/// A `-----BEGIN … PRIVATE KEY-----` header alone (a constant in a parser, a line of docs)
/// holds nothing; a key has a run of base64 after it.
fn holds_key_material(block: &[u8]) -> bool {
    let mut run = 0;
    for &b in block.iter().skip(b"-----BEGIN".len()) {
        if b.is_ascii_alphanumeric() || b == b'+' || b == b'/' {
            run += 1;
            if run >= 40 {
                return true;
            }
        } else {
            run = 0;
        }
    }
    false
}

/// URLs, paths, templates and placeholders: values that name where a secret is, or stand in
/// for one.
fn not_a_credential(v: &[u8]) -> bool {
    let contains = |needle: &[u8]| v.windows(needle.len()).any(|w| w == needle);
    if contains(b"://") || contains(b"{{") || contains(b"${") || contains(b"%(") {
        return true;
    }
    // Percent-encoded data (URL test vectors, form bodies), not a value someone typed.
    let percent = v
        .windows(3)
        .filter(|w| matches!(w, [b'%', a, b] if a.is_ascii_hexdigit() && b.is_ascii_hexdigit()))
        .count();
    if percent >= 2 {
        return true;
    }
    // `a=1&token=B`: the rest of a query string.
    if let Some(amp) = v.iter().position(|&b| b == b'&')
        && v.get(amp..).is_some_and(|r| r.contains(&b'='))
    {
        return true;
    }
    if v.starts_with(b"/") || v.starts_with(b"./") || v.starts_with(b"../") || v.starts_with(b"~") {
        return true;
    }
    let lowered = v.to_ascii_lowercase();
    [
        &b"changeme"[..],
        b"example",
        b"your_",
        b"your-",
        b"yourkey",
        b"xxxxxxxx",
        b"********",
        b"redacted",
        b"placeholder",
        b"password",
        b"secret",
        b"dummy",
        b"insert",
        b"replace",
        b"...",
    ]
    .iter()
    .any(|p| lowered.windows(p.len()).any(|w| w == *p))
}

/// Shannon entropy of the bytes, in bits per byte.
fn entropy(v: &[u8]) -> f64 {
    let mut counts = [0u32; 256];
    for &b in v {
        if let Some(c) = counts.get_mut(usize::from(b)) {
            *c += 1;
        }
    }
    let n = v.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum()
}

/// Whether a value reads as words (an identifier, a member path, a kebab name) rather than
/// random characters: split at `_ . - $`, at letter/digit changes and before an upper-case
/// letter that follows a lower-case one, its pieces average three characters or more.
/// `GEMINI_API_KEY`, `z.ZodOptional` and `base64Encoded` are wordy; `q8Zt3LmW9vX2` and a hex
/// digest are not.
fn wordy(v: &[u8]) -> bool {
    let mut pieces = 0usize;
    let mut chars = 0usize;
    let mut prev: Option<u8> = None;
    for &b in v {
        if matches!(b, b'_' | b'.' | b'-' | b'$') {
            prev = None;
            continue;
        }
        let starts = match prev {
            None => true,
            Some(p) => {
                p.is_ascii_digit() != b.is_ascii_digit()
                    || (p.is_ascii_lowercase() && b.is_ascii_uppercase())
            }
        };
        pieces += usize::from(starts);
        chars += 1;
        prev = Some(b);
    }
    pieces > 0 && chars >= 3 * pieces
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
    /// Literal index → rule index; `None` for the escape markers.
    literal_rule: Vec<Option<usize>>,
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
                literal_rule.push(Some(i));
            }
        }
        // Escapes that change what the provider reads: the same pass notices them.
        for escape in ["\\u", "\\/"] {
            literals.push(escape);
            literal_rule.push(None);
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

    /// Every secret in `text`, in order, without overlaps; in JSON strings with `\u` or `\/`
    /// escapes, also what their decoded text holds (see the module doc).
    pub fn scan(&self, text: &[u8]) -> Vec<Finding> {
        let (mut found, escaped) = self.scan_raw(text);
        if escaped {
            for content in escaped_strings(text) {
                let Some(raw) = text.get(content.clone()) else {
                    continue;
                };
                let (decoded, map) = decode(raw, content.start);
                for f in self.scan_raw(&decoded).0 {
                    if let (Some(&a), Some(&b)) = (map.get(f.range.start), map.get(f.range.end)) {
                        found.push(Finding {
                            kind: f.kind,
                            range: a..b,
                        });
                    }
                }
            }
        }
        resolve_overlaps(found)
    }

    /// The findings in `text` read as it is, and whether it holds a `\u` or `\/` escape.
    fn scan_raw(&self, text: &[u8]) -> (Vec<Finding>, bool) {
        let mut found: Vec<Finding> = Vec::new();
        let mut escaped = false;
        for m in self.prefilter.find_overlapping_iter(text) {
            let Some(&slot) = self.literal_rule.get(m.pattern().as_usize()) else {
                continue;
            };
            let Some((rule, re)) = slot.and_then(|i| RULES.get(i).zip(self.regexes.get(i))) else {
                escaped = true;
                continue;
            };
            let start = match rule.start {
                Start::Literal => {
                    if !left_boundary(text, m.start()) {
                        continue;
                    }
                    m.start()
                }
                Start::AfterLiteral => m.end(),
                Start::Identifier => {
                    let word = text.get(..m.start()).unwrap_or_default();
                    let back = word
                        .iter()
                        .rev()
                        .take_while(|b| b.is_ascii_alphanumeric() || **b == b'_')
                        .count();
                    let s = m.start() - back;
                    if !left_boundary(text, s) {
                        continue;
                    }
                    s
                }
            };
            let Some(hay) = text.get(start..) else {
                continue;
            };
            let Some(caps) = re.captures(hay) else {
                continue;
            };
            let (Some(s), Some(whole)) = (caps.name("s"), caps.get(0)) else {
                continue;
            };
            let after = hay.get(whole.end()).copied();
            if rule.right_boundary && after.is_some_and(|b| b.is_ascii_alphanumeric()) {
                continue;
            }
            if rule.kind == SecretKind::UrlCredentials
                && !plausible_url_password(s.as_bytes(), hay.get(whole.end()..).unwrap_or_default())
            {
                continue;
            }
            if rule.kind == SecretKind::PrivateKey && !holds_key_material(s.as_bytes()) {
                continue;
            }
            if rule.kind == SecretKind::OpenaiKey && s.as_bytes().starts_with(b"sk-ant-") {
                continue;
            }
            if rule.kind == SecretKind::SecretAssignment {
                let spaced = caps.name("sp").is_some_and(|m| !m.is_empty());
                let quoted = caps.name("q").is_some();
                let sep = hay.get(s.start().saturating_sub(1)).copied();
                let assignment = Assignment {
                    value: s.as_bytes(),
                    after: hay.get(whole.end()..).unwrap_or_default(),
                    quoted,
                    env_style: !quoted && !spaced && sep == Some(b'='),
                };
                if !plausible_value(assignment) {
                    continue;
                }
            }
            found.push(Finding {
                kind: rule.kind,
                range: start + s.start()..start + s.end(),
            });
        }
        (found, escaped)
    }

    /// `body` with each finding replaced by its placeholder. `findings` come from [`scan`] of
    /// the same bytes (ordered, not overlapping).
    ///
    /// [`scan`]: Redactor::scan
    pub fn redact(body: &[u8], findings: &[Finding]) -> Bytes {
        let mut out = BytesMut::with_capacity(body.len());
        let mut at = 0;
        for f in findings {
            let Some(kept) = body
                .get(at..f.range.start)
                .filter(|_| f.range.end <= body.len())
            else {
                continue;
            };
            out.extend_from_slice(kept);
            out.extend_from_slice(f.kind.placeholder().as_bytes());
            at = f.range.end;
        }
        out.extend_from_slice(body.get(at..).unwrap_or_default());
        out.freeze()
    }
}

/// The contents (between the quotes) of the JSON strings in `text` that hold a `\u` or `\/`
/// escape. A lexer of strings only: structure outside them is skipped, and text that is not
/// JSON yields whatever quoted runs it has.
fn escaped_strings(text: &[u8]) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(open) = text
        .get(i..)
        .and_then(|t| t.iter().position(|&b| b == b'"'))
    {
        let start = i + open + 1;
        let mut j = start;
        let mut has = false;
        let mut closed = false;
        while let Some(&b) = text.get(j) {
            match b {
                b'\\' => {
                    has |= matches!(text.get(j + 1), Some(b'u' | b'/'));
                    j += 2;
                }
                b'"' => {
                    closed = true;
                    break;
                }
                _ => j += 1,
            }
        }
        let end = j.min(text.len());
        if has {
            out.push(start..end);
        }
        if !closed {
            break;
        }
        i = end + 1;
    }
    out
}

/// The decoded bytes of a JSON string's raw contents, and for each decoded byte the offset
/// (plus `base`) of the raw bytes that made it; one more entry maps the end.
fn decode(raw: &[u8], base: usize) -> (Vec<u8>, Vec<usize>) {
    let mut out = Vec::with_capacity(raw.len());
    let mut map = Vec::with_capacity(raw.len() + 1);
    let mut i = 0;
    while let Some(&b) = raw.get(i) {
        let at = base + i;
        if b != b'\\' {
            out.push(b);
            map.push(at);
            i += 1;
            continue;
        }
        let (c, used) = match raw.get(i + 1) {
            Some(b'n') => ('\n', 2),
            Some(b't') => ('\t', 2),
            Some(b'r') => ('\r', 2),
            Some(b'b') => ('\u{8}', 2),
            Some(b'f') => ('\u{c}', 2),
            Some(b'u') => unicode_escape(raw, i),
            Some(&other) => (char::from(other), 2),
            None => ('\\', 1),
        };
        let mut buf = [0u8; 4];
        for &byte in c.encode_utf8(&mut buf).as_bytes() {
            out.push(byte);
            map.push(at);
        }
        i += used;
    }
    map.push(base + raw.len());
    (out, map)
}

/// The character of the `\uXXXX` escape at `raw[i]` (a surrogate pair when one follows), and
/// how many raw bytes it took; a broken escape reads as U+FFFD.
fn unicode_escape(raw: &[u8], i: usize) -> (char, usize) {
    let hex = |at: usize| {
        raw.get(at..at + 4)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u32::from_str_radix(h, 16).ok())
    };
    let Some(hi) = hex(i + 2) else {
        return (char::REPLACEMENT_CHARACTER, 2);
    };
    if (0xD800..0xDC00).contains(&hi)
        && raw.get(i + 6..i + 8) == Some(b"\\u")
        && let Some(lo) = hex(i + 8).filter(|lo| (0xDC00..0xE000).contains(lo))
    {
        let c = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
        return (char::from_u32(c).unwrap_or(char::REPLACEMENT_CHARACTER), 12);
    }
    (char::from_u32(hi).unwrap_or(char::REPLACEMENT_CHARACTER), 6)
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
                "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA7bq0x9Lk2mQ8vR3tY6wZ1nC4fH7jK0pS5uV8yB2eG6iN9oT3\nAbCd==\n-----END RSA PRIVATE KEY-----\nafter".into(),
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

    /// `text` as a JSON string's contents, every character written by `escape`.
    fn escaped_body(text: &str, escape: impl Fn(usize, char) -> String) -> String {
        let content: String = text
            .chars()
            .enumerate()
            .map(|(i, c)| escape(i, c))
            .collect();
        format!(r#"{{"model":"m","messages":[{{"role":"user","content":"{content}"}}]}}"#)
    }

    /// A character as JSON writes it plainly.
    fn plain(c: char) -> String {
        serde_json::to_string(&c.to_string())
            .unwrap()
            .trim_matches('"')
            .to_owned()
    }

    fn unicode(c: char) -> String {
        let mut buf = [0u16; 2];
        c.encode_utf16(&mut buf)
            .iter()
            .map(|u| format!("\\u{u:04x}"))
            .collect()
    }

    #[test]
    fn secrets_written_with_json_escapes_are_found_in_what_the_provider_reads() {
        let r = Redactor::shared().unwrap();
        let gh = format!("ghp_{}", "A1b2C3d4E5".repeat(4));
        let secrets: Vec<(String, SecretKind)> = vec![
            ("sk-proj-Abc123Def456Ghi789Jkl012Mno345".into(), SecretKind::OpenaiKey),
            ("sk-ant-api03-Abc123Def456Ghi789Jkl012-Mno345".into(), SecretKind::AnthropicKey),
            ("AIzaSyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q".into(), SecretKind::GoogleApiKey),
            ("AKIAIOSFODNN7EXAMPLE".into(), SecretKind::AwsAccessKeyId),
            (
                "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
                SecretKind::AwsSecretKey,
            ),
            (gh, SecretKind::GithubToken),
            ("glpat-A1b2C3d4E5f6G7h8I9j0".into(), SecretKind::GitlabToken),
            ("xoxb-123456789012-1234567890123-AbCdEfGhIjKl".into(), SecretKind::SlackToken),
            (
                "https://hooks.slack.com/services/T0001/B0002/AbCdEf123456".into(),
                SecretKind::SlackWebhook,
            ),
            ("sk_live_A1b2C3d4E5f6G7h8I9j0".into(), SecretKind::StripeKey),
            (
                "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U".into(),
                SecretKind::Jwt,
            ),
            (
                "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA7bq0x9Lk2mQ8vR3tY6wZ1nC4fH7jK0pS5uV8yB2eG6iN9oT3\nAbCd==\n-----END RSA PRIVATE KEY-----".into(),
                SecretKind::PrivateKey,
            ),
            ("postgres://app:s3cretPass99@db.internal:5432/app".into(), SecretKind::UrlCredentials),
            ("DB_PASSWORD=hunter2hunter2".into(), SecretKind::SecretAssignment),
        ];
        type Form = Box<dyn Fn(usize, char) -> String>;
        let forms: Vec<(&str, Form)> = vec![
            // `\u0073k-proj-…`: the first character escaped.
            (
                "first character as \\u",
                Box::new(|i, c| if i == 0 { unicode(c) } else { plain(c) }),
            ),
            // Every character escaped.
            ("every character as \\u", Box::new(|_, c| unicode(c))),
            // `\/` for every slash (URLs, base64).
            (
                "slashes as \\/",
                Box::new(|_, c| if c == '/' { "\\/".to_owned() } else { plain(c) }),
            ),
        ];
        for (secret, kind) in &secrets {
            for (name, form) in &forms {
                let b = escaped_body(secret, form);
                let found = r.scan(b.as_bytes());
                if *name == "slashes as \\/" && !secret.contains('/') {
                    continue;
                }
                assert!(
                    found.iter().any(|f| f.kind == *kind),
                    "{kind:?} written with {name} was missed: {b}"
                );
                let out = Redactor::redact(b.as_bytes(), &found);
                let v: serde_json::Value = serde_json::from_slice(&out).expect("still valid JSON");
                let content = v["messages"][0]["content"].as_str().unwrap();
                assert!(content.contains(kind.placeholder()), "{name}: {content}");
                let decoded_secret = secret.replace("\\n", "\n");
                assert!(!content.contains(&decoded_secret), "{name}: {content}");
            }
            // Right after a typographic quote written as `\u201c`.
            let b = format!(
                r#"{{"messages":[{{"role":"user","content":"the key \u201c{}\u201d"}}]}}"#,
                secret.replace('"', "\\\"")
            );
            let found = r.scan(b.as_bytes());
            assert!(
                found.iter().any(|f| f.kind == *kind),
                "{kind:?} after \\u201c: {b}"
            );
            let out = Redactor::redact(b.as_bytes(), &found);
            let v: serde_json::Value = serde_json::from_slice(&out).expect("still valid JSON");
            assert!(
                v["messages"][0]["content"]
                    .as_str()
                    .unwrap()
                    .contains(kind.placeholder())
            );
        }
        // Escapes alone are not secrets.
        let b = r#"{"messages":[{"role":"user","content":"caf\u00e9 \u201cquoted\u201d a\/b \ud83d\ude00"}]}"#;
        assert_eq!(r.scan(b.as_bytes()), []);
    }

    #[test]
    fn decoding_maps_every_byte_back_to_its_escape() {
        let raw = br#"a\u00e9\/\ud83d\ude00\n"#;
        let (text, map) = decode(raw, 10);
        assert_eq!(std::str::from_utf8(&text).unwrap(), "a\u{e9}/\u{1F600}\n");
        assert_eq!(map.len(), text.len() + 1);
        assert_eq!(map[0], 10);
        assert_eq!(map[1], 11, "é starts at its escape");
        assert_eq!(map[2], 11);
        assert_eq!(map[3], 17, "the slash");
        assert_eq!(*map.last().unwrap(), 10 + raw.len());
        // Broken escapes never panic.
        for bad in [
            &br"\u12"[..],
            br"\",
            br"\ud800",
            br"\ud800\u0041",
            br"\uzzzz",
        ] {
            let (t, m) = decode(bad, 0);
            assert_eq!(m.len(), t.len() + 1);
        }
    }

    #[test]
    fn redaction_keeps_the_rest_of_the_text() {
        assert_eq!(
            redacted("DB_PASSWORD=hunter2hunter2\nDEBUG=1"),
            "DB_PASSWORD=[REDACTED:secret]\nDEBUG=1"
        );
        assert_eq!(
            redacted("url https://bob:pa55word@git.acme.io/x"),
            "url https://[REDACTED:url_credentials]@git.acme.io/x"
        );
        assert_eq!(
            redacted(
                "-----BEGIN PRIVATE KEY-----\nMIIEpAIBAAKCAQEA7bq0x9Lk2mQ8vR3tY6wZ1nC4fH7jK0pS5uV8yB2eG6iN9oT3\nAbC=\n-----END PRIVATE KEY-----\nafter"
            ),
            "[REDACTED:private_key]\nafter"
        );
        // A truncated key is still removed.
        assert_eq!(
            redacted(
                "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAAB\nAAAA"
            ),
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

    /// Issue 13: code read by an agent (search results, files) names secrets all the time
    /// without holding one; rewriting it breaks the agent's search-and-replace edits.
    #[test]
    fn code_that_names_secrets_is_never_rewritten() {
        let code = [
            // The two cases found in a real Cline session.
            "apiKey: z.ZodOptional<z.ZodString>;",
            "const apiKey = process.env.GEMINI_API_KEY;",
            // TypeScript / JavaScript.
            "  token?: string;\n  password: string;\n  apiKey: string | undefined;",
            "const token = await getAccessToken(client);",
            "const secret = config.auth.clientSecret;",
            "export const API_KEY_ENV = \"GEMINI_API_KEY\";",
            "headers: { 'X-Api-Key': apiKey, Authorization: `Bearer ${token}` }",
            "const TOKEN_URL = \"https://oauth2.googleapis.com/token\";",
            "accessToken: PropTypes.string.isRequired,",
            "password: yup.string().min(8).required(),",
            // Python.
            "api_key = os.environ[\"OPENAI_API_KEY\"]",
            "api_key = os.getenv(\"OPENAI_API_KEY\")",
            "token = self.config.github_token",
            "client = OpenAI(api_key=api_key, base_url=base_url)",
            "password_hash = base64Encoded",
            "secret_key: Optional[str] = None",
            "token = request.headers[\"Authorization\"]",
            "self.access_token = response.json()[\"access_token\"]",
            "db_password = settings.DATABASES[\"default\"][\"PASSWORD\"]",
            // Go.
            "password := os.Getenv(\"DB_PASSWORD\")",
            "Token: cfg.GitHubToken,",
            "APIKey string `json:\"api_key\"`",
            // Rust.
            "pub api_key: Option<String>,",
            "let token: &str = &args.token;",
            "access_key_id: aws_sdk_s3::config::Credentials,",
            "let api_key = std::env::var(\"ANTHROPIC_API_KEY\")?;",
            // YAML, CI, shell, templates.
            "password: ${DB_PASSWORD}",
            "token: ${{ secrets.GITHUB_TOKEN }}",
            "apiKey: {{ .Values.apiKey }}",
            "export TOKEN=$(cat ~/.config/token)",
            "token_path: ~/.config/gh/hosts.yml",
            "SECRET_KEY_FILE=/run/secrets/django_key",
            "conn = \"host=%(host)s password=%(password)s\"",
            // Placeholders and words.
            "api_key: \"your-api-key-here\"",
            "OPENAI_API_KEY=sk-...",
            "TOKEN_HEADER = \"X-Auth-Token-Header\"",
            "\"passwordHint\": \"At least 8 characters\"",
        ];
        for c in code {
            assert_eq!(kinds(c), [], "flagged: {c}");
            assert_eq!(redacted(c), c);
        }
    }

    #[test]
    fn literal_secrets_in_every_language_are_still_caught() {
        let cases = [
            ".env: DB_PASSWORD=q8Zt3LmW9vX2",
            "TWILIO_AUTH_TOKEN=4f9c2a7e81b04d6f9a3c5e7b1d2f8a60",
            "SECRET_KEY = 'django-insecure-8k#p2@x!v$zq^7m&w9r'",
            "const apiKey = \"Zx9Qw8Er7Ty6Ui5Op4\";",
            "password: \"Tr0ub4dor&3xQ\"",
            "Token: \"f3a9c27e5b1d48e6a0c2\",",
            "let secret = \"a8F3kL9qZ2mX7vB1\";",
            "client_secret: q8Zt3LmW9vX2pR5s",
            "export API_TOKEN=ab12cd34ef56gh78",
            r#"{"password": "h7Gk2pQ9xZ4w"}"#,
        ];
        for c in cases {
            assert_eq!(kinds(c), [SecretKind::SecretAssignment], "missed: {c}");
        }
        let sg = format!(
            "SENDGRID_API_KEY=SG.{}.{}",
            "aB3dE5fG7hJ9kL1mN2pQ4r", "sT6vW8xY0zA2bC4dE6fG8hJ0kL2mN4pQ6rS8tU0vW2x"
        );
        assert_eq!(kinds(&sg), [SecretKind::SendgridKey]);
        assert_eq!(
            kinds("twilio key SK0123456789abcdef0123456789abcdef"),
            [SecretKind::TwilioKey]
        );
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
