//! Export formats for request rows, written one row at a time so an export of any size runs in
//! constant memory: CSV (RFC 4180: CRLF line ends, fields quoted when they hold a comma, quote,
//! CR or LF, quotes doubled) and JSON (`{"exported_at", "session", "requests": [...]}`).
//! Times are ISO 8601 (RFC 3339, UTC, milliseconds). A text cell that a spreadsheet would run
//! as a formula (it starts with `=`, `+`, `-`, `@`, a tab or a carriage return: a prompt's
//! preview is the client's text) is written with a leading `'`, OWASP's neutralisation.

use std::fmt::Write as _;

use gatehouse_core::record::{RequestRecord, Session};
use gatehouse_core::time::rfc3339_ms;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Json,
}

impl Format {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "csv" => Some(Self::Csv),
            "json" => Some(Self::Json),
            _ => None,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::Csv => "text/csv; charset=utf-8",
            Self::Json => "application/json",
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            Self::Csv => "csv",
            Self::Json => "json",
        }
    }
}

pub const CSV_COLUMNS: &[&str] = &[
    "id",
    "session_id",
    "created_at",
    "provider",
    "model",
    "upstream_model",
    "stream",
    "status",
    "prompt_tokens_est",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "usage_source",
    "max_context",
    "context_pct",
    "latency_ms",
    "ttfb_ms",
    "overhead_us",
    "attempts",
    "finish_reason",
    "error_type",
    "error_message",
    "cost_usd",
    "memory_tokens",
    "memory_ratio",
    "routing",
    "requested_model",
    "purpose",
    "key_id",
    "team_id",
    "preview",
];

/// Appends one CSV field, quoted when it must be, neutralised when a spreadsheet would run it.
pub fn csv_field(out: &mut String, value: &str) {
    let formula = value.starts_with(['=', '+', '-', '@', '\t', '\r']);
    if formula || value.contains([',', '"', '\r', '\n']) {
        out.push('"');
        if formula {
            out.push('\'');
        }
        for c in value.chars() {
            if c == '"' {
                out.push('"');
            }
            out.push(c);
        }
        out.push('"');
    } else {
        out.push_str(value);
    }
}

pub fn csv_header(out: &mut String) {
    for (i, c) in CSV_COLUMNS.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(c);
    }
    out.push_str("\r\n");
}

fn opt(out: &mut String, v: Option<u64>) {
    if let Some(v) = v {
        let _ = write!(out, "{v}");
    }
}

pub fn csv_row(out: &mut String, r: &RequestRecord) {
    csv_field(out, &r.id);
    out.push(',');
    csv_field(out, r.session_id.as_str());
    out.push(',');
    out.push_str(&rfc3339_ms(r.created_at));
    out.push(',');
    csv_field(out, &r.provider);
    out.push(',');
    csv_field(out, &r.model_key);
    out.push(',');
    csv_field(out, &r.upstream_model);
    let _ = write!(out, ",{},{},{},", r.stream, r.status, r.prompt_tokens_est);
    opt(out, r.prompt_tokens);
    out.push(',');
    opt(out, r.completion_tokens);
    out.push(',');
    opt(out, r.cached_tokens);
    out.push(',');
    opt(out, r.reasoning_tokens);
    let _ = write!(
        out,
        ",{},{},{},{},",
        r.usage_source.as_str(),
        r.max_context,
        r.context_pct,
        r.latency_ms
    );
    opt(out, r.ttfb_ms);
    let _ = write!(out, ",{},{},", r.overhead_us, r.attempts);
    csv_field(out, r.finish_reason.as_deref().unwrap_or(""));
    out.push(',');
    csv_field(out, r.error_type.as_deref().unwrap_or(""));
    out.push(',');
    csv_field(out, r.error_message.as_deref().unwrap_or(""));
    out.push(',');
    if let Some(c) = r.cost_usd {
        let _ = write!(out, "{c}");
    }
    let _ = write!(out, ",{},{},", r.memory_tokens, r.memory_ratio);
    csv_field(out, r.routing.as_deref().unwrap_or(""));
    out.push(',');
    csv_field(out, r.requested_model.as_deref().unwrap_or(""));
    out.push(',');
    csv_field(out, r.purpose.as_deref().unwrap_or(""));
    out.push(',');
    csv_field(out, r.key_id.as_deref().unwrap_or(""));
    out.push(',');
    csv_field(out, r.team_id.as_deref().unwrap_or(""));
    out.push(',');
    csv_field(out, &r.preview);
    out.push_str("\r\n");
}

/// A request row in the JSON export: the stored record with its time also in ISO 8601.
#[derive(Serialize)]
struct JsonRow<'a> {
    #[serde(flatten)]
    record: &'a RequestRecord,
    created_at_iso: String,
}

/// The opening of the JSON document, up to the `[` of `requests`.
pub fn json_head(out: &mut String, session: Option<&Session>, exported_at: i64) {
    out.push_str("{\"exported_at\":");
    let _ = write!(out, "\"{}\"", rfc3339_ms(exported_at));
    out.push_str(",\"session\":");
    out.push_str(&serde_json::to_string(&session).unwrap_or_else(|_| "null".into()));
    out.push_str(",\"requests\":[");
}

/// One element of `requests`; `first` says whether a comma is needed before it.
pub fn json_row(out: &mut String, r: &RequestRecord, first: bool) {
    if !first {
        out.push(',');
    }
    out.push('\n');
    let row = JsonRow {
        record: r,
        created_at_iso: rfc3339_ms(r.created_at),
    };
    match serde_json::to_string(&row) {
        Ok(s) => out.push_str(&s),
        // Unreachable for these plain fields; keep the document valid regardless.
        Err(_) => out.push_str("null"),
    }
}

/// Closes the document; `error` is reported in it when the export stopped early.
pub fn json_tail(out: &mut String, error: Option<&str>) {
    out.push_str("\n]");
    if let Some(e) = error {
        out.push_str(",\"error\":");
        out.push_str(&serde_json::to_string(e).unwrap_or_else(|_| "\"export failed\"".into()));
    }
    out.push_str("}\n");
}

#[cfg(test)]
mod tests {
    use gatehouse_core::SessionId;
    use gatehouse_core::record::UsageSource;

    use super::*;

    fn record(preview: &str) -> RequestRecord {
        RequestRecord {
            row_id: String::new(),
            requested_model: None,
            purpose: None,
            key_id: None,
            team_id: None,
            id: "r1".into(),
            session_id: SessionId::parse_client("s1").unwrap(),
            created_at: 1_700_000_000_123,
            provider: "mistral".into(),
            model_key: "mistral/codestral".into(),
            upstream_model: "codestral-2501".into(),
            stream: true,
            status: 200,
            prompt_tokens_est: 10,
            prompt_tokens: Some(11),
            completion_tokens: Some(5),
            cached_tokens: None,
            reasoning_tokens: None,
            usage_source: UsageSource::Upstream,
            max_context: 1000,
            context_pct: 1.6,
            preview: preview.into(),
            latency_ms: 30,
            ttfb_ms: Some(3),
            overhead_us: 12,
            attempts: 1,
            finish_reason: Some("stop".into()),
            error_type: None,
            error_message: None,
            cost_usd: None,
            memory_tokens: 0,
            chat_tokens: 0,
            memory_ratio: 0.0,
            routing: None,
        }
    }

    #[test]
    fn csv_quotes_what_rfc_4180_says() {
        let mut s = String::new();
        csv_field(&mut s, "plain");
        s.push('|');
        csv_field(&mut s, "a,b");
        s.push('|');
        csv_field(&mut s, "say \"hi\"");
        s.push('|');
        csv_field(&mut s, "two\nlines");
        assert_eq!(s, "plain|\"a,b\"|\"say \"\"hi\"\"\"|\"two\nlines\"");
    }

    #[test]
    fn cells_a_spreadsheet_would_run_are_neutralised() {
        for (text, cell) in [
            (
                "=HYPERLINK(\"http://x\")",
                "\"'=HYPERLINK(\"\"http://x\"\")\"",
            ),
            ("+1+cmd", "\"'+1+cmd\""),
            ("-2", "\"'-2\""),
            ("@SUM(A1)", "\"'@SUM(A1)\""),
            ("\tx", "\"'\tx\""),
            ("a = b", "a = b"),
            ("email@example.com", "email@example.com"),
        ] {
            let mut s = String::new();
            csv_field(&mut s, text);
            assert_eq!(s, cell, "{text}");
        }
        // In a whole row: the client's preview is text.
        let mut row = String::new();
        csv_row(&mut row, &record("=cmd|' /C calc'!A0"));
        assert!(row.contains("\"'=cmd|' /C calc'!A0\""), "{row}");
    }

    #[test]
    fn a_csv_row_has_every_column_and_iso_times() {
        let mut s = String::new();
        csv_header(&mut s);
        csv_row(&mut s, &record("hello, \"world\"\nbye"));
        let mut lines = s.split("\r\n");
        let header = lines.next().unwrap();
        assert_eq!(header.split(',').count(), CSV_COLUMNS.len());
        let row = lines.next().unwrap();
        assert!(
            row.starts_with("r1,s1,2023-11-14T22:13:20.123Z,mistral,"),
            "{row}"
        );
        assert!(
            row.ends_with(",stop,,,,0,0,,,,,,\"hello, \"\"world\"\"\nbye\""),
            "{row}"
        );
    }

    #[test]
    fn json_document_is_valid_with_zero_one_or_many_rows() {
        for n in [0, 1, 3] {
            let mut s = String::new();
            json_head(&mut s, None, 0);
            for i in 0..n {
                json_row(&mut s, &record("x"), i == 0);
            }
            json_tail(&mut s, None);
            let v: serde_json::Value = serde_json::from_str(&s).unwrap();
            assert_eq!(v["requests"].as_array().unwrap().len(), n);
            assert_eq!(v["exported_at"], "1970-01-01T00:00:00.000Z");
            assert!(v["session"].is_null());
        }
        let mut s = String::new();
        json_head(&mut s, None, 0);
        json_tail(&mut s, Some("disk gone"));
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["error"], "disk gone");
    }
}
