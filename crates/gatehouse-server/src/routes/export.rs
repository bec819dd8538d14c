//! `GET /api/export/csv|json`: the active session, `?session=ID`, or `?all=1`, streamed.
//!
//! Rows go from the database cursor through a small channel into body chunks of about 32 KiB,
//! so an export of any size holds a few hundred rows in memory at most, and a client that reads
//! slowly slows the cursor instead of filling memory.

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, header};
use axum::response::Response;
use bytes::Bytes;
use gatehouse_core::time::{now_ms, rfc3339_ms};
use gatehouse_core::{ApiError, ErrorKind, SessionId};
use gatehouse_services::export::{self, Format};
use gatehouse_store::Scope;
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::error::HttpError;
use crate::routes::sessions::store_error;
use crate::state::AppState;

/// Rows in flight between the cursor and the body.
pub(crate) const ROW_CHANNEL: usize = 256;
/// Body chunk size to aim for.
const CHUNK: usize = 32 * 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportQuery {
    session: Option<String>,
    all: Option<String>,
}

pub async fn csv(
    actor: crate::audit::Actor,
    st: State<AppState>,
    q: Result<Query<ExportQuery>, QueryRejection>,
) -> Result<Response, HttpError> {
    audited(&st, &actor, "export.csv", &q);
    export(st, q, Format::Csv).await
}

pub async fn json(
    actor: crate::audit::Actor,
    st: State<AppState>,
    q: Result<Query<ExportQuery>, QueryRejection>,
) -> Result<Response, HttpError> {
    audited(&st, &actor, "export.json", &q);
    export(st, q, Format::Json).await
}

/// An export reads everything it covers: who took it, and which scope, is on the trail.
fn audited(
    st: &AppState,
    actor: &crate::audit::Actor,
    action: &str,
    q: &Result<Query<ExportQuery>, QueryRejection>,
) {
    let scope = match q {
        Ok(Query(q)) if q.all.as_deref().is_some_and(truthy) => "all".to_owned(),
        Ok(Query(q)) => q
            .session
            .as_ref()
            .map_or_else(|| "active session".to_owned(), |s| format!("session:{s}")),
        Err(_) => "invalid query".to_owned(),
    };
    crate::audit::record(
        st,
        actor,
        crate::audit::Change::new(action, Some(scope)),
        "ok",
    );
}

fn truthy(v: &str) -> bool {
    matches!(v, "1" | "true" | "yes")
}

async fn export(
    State(st): State<AppState>,
    q: Result<Query<ExportQuery>, QueryRejection>,
    format: Format,
) -> Result<Response, HttpError> {
    let Query(q) = q.map_err(|e| {
        HttpError(
            ApiError::new(
                ErrorKind::InvalidRequest,
                format!("{}; use ?session=ID or ?all=1", e.body_text()),
            )
            .with_param("query"),
        )
    })?;
    let (scope, session) = match (q.session, q.all.as_deref().is_some_and(truthy)) {
        (Some(_), true) => {
            return Err(HttpError(ApiError::new(
                ErrorKind::InvalidRequest,
                "give either ?session=ID or ?all=1, not both",
            )));
        }
        (_, true) => (Scope::All, None),
        (Some(raw), false) => {
            let id = SessionId::parse_client(&raw).ok_or_else(|| not_found(&raw))?;
            let s = st.sessions.find(&id).await.ok_or_else(|| not_found(&raw))?;
            (Scope::Session(s.id.clone()), Some(s))
        }
        (None, false) => {
            let s = st.sessions.active().ok_or_else(|| {
                HttpError(ApiError::new(
                    ErrorKind::NotFound,
                    "there is no active session; name one with ?session=ID or export everything with ?all=1",
                ))
            })?;
            (Scope::Session(s.id.clone()), Some(s))
        }
    };
    // The rows of requests already answered are in the database before the first is read.
    st.writer.flush().await;
    // Fail before the 200 if the database cannot be read at all.
    st.store.ping().await.map_err(store_error)?;

    let exported_at = now_ms();
    let filename = format!(
        "gatehouse-{}-{}.{}",
        session.as_ref().map_or("all", |s| s.id.as_str()),
        rfc3339_ms(exported_at).replace(':', "-"),
        format.extension()
    );
    let (tx, rx) = mpsc::channel(ROW_CHANNEL);
    let store = st.store.clone();
    tokio::spawn(async move { store.export_requests(&scope, tx).await });
    let mut head = String::new();
    match format {
        Format::Csv => export::csv_header(&mut head),
        Format::Json => export::json_head(&mut head, session.as_ref(), exported_at),
    }
    let body = Body::from_stream(chunks(rx, format, head));
    let mut r = Response::new(body);
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{filename}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}

fn not_found(raw: &str) -> HttpError {
    HttpError(ApiError::new(
        ErrorKind::NotFound,
        format!("session `{raw}` does not exist"),
    ))
}

struct Chunker {
    rx: mpsc::Receiver<gatehouse_store::StoreResult<gatehouse_core::record::RequestRecord>>,
    format: Format,
    head: Option<String>,
    first: bool,
    done: bool,
}

/// The export document as a stream of chunks: `head` (for JSON, everything up to the opening
/// of the `requests` array), the rows, the tail.
pub(crate) fn chunks(
    rx: mpsc::Receiver<gatehouse_store::StoreResult<gatehouse_core::record::RequestRecord>>,
    format: Format,
    head: String,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    let state = Chunker {
        rx,
        format,
        head: Some(head),
        first: true,
        done: false,
    };
    futures_util::stream::unfold(state, |mut c| async move {
        if c.done {
            return None;
        }
        let mut out = c.head.take().unwrap_or_default();
        out.reserve(CHUNK + 1024);
        while out.len() < CHUNK {
            match c.rx.recv().await {
                Some(Ok(row)) => {
                    match c.format {
                        Format::Csv => export::csv_row(&mut out, &row),
                        Format::Json => export::json_row(&mut out, &row, c.first),
                    }
                    c.first = false;
                }
                Some(Err(e)) => {
                    tracing::error!(error = %e, "export stopped: database read failed");
                    c.done = true;
                    if c.format == Format::Csv {
                        // CSV cannot say it is incomplete: cut the response so the client sees
                        // a failed download rather than a short file.
                        return Some((Err(std::io::Error::other("export failed")), c));
                    }
                    export::json_tail(
                        &mut out,
                        Some("the database read failed; the export is incomplete"),
                    );
                    break;
                }
                None => {
                    if c.format == Format::Json {
                        export::json_tail(&mut out, None);
                    }
                    c.done = true;
                    break;
                }
            }
        }
        Some((Ok(Bytes::from(out)), c))
    })
}
