//! Phase 3, admit: whether the gateway takes this request now. Today that is the cap on
//! streamed answers in flight (`server.max_streams`); a stream past it gets 503 with
//! `Retry-After` before anything is sent upstream. Keys, limits and budgets come here.

use std::sync::atomic::Ordering;

use gatehouse_core::{ApiError, ErrorKind};

use super::Prepared;
use crate::state::AppState;

/// What admission holds for the request's lifetime: its place among the open streams.
pub(crate) struct Admission {
    _stream: Option<StreamSlot>,
}

impl Admission {
    /// Nothing held (the gateway's own calls).
    pub(crate) fn none() -> Self {
        Self { _stream: None }
    }
}

/// A place among `server.max_streams`; freed when the stream's row is written.
struct StreamSlot(AppState);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.streams_open.fetch_sub(1, Ordering::Relaxed);
    }
}

pub(super) fn admit(st: &AppState, p: &Prepared) -> Result<Admission, ApiError> {
    if !p.stream {
        return Ok(Admission { _stream: None });
    }
    let max = st.config.server.max_streams as u64;
    let open = st.streams_open.fetch_add(1, Ordering::Relaxed);
    // Taken first, checked after: two racing streams cannot both take the last place.
    let slot = StreamSlot(st.clone());
    if open >= max {
        return Err(ApiError::new(
            ErrorKind::Overloaded,
            format!(
                "the gateway is streaming {max} answers already (server.max_streams); try again in a moment"
            ),
        )
        .with_retry_after(1));
    }
    Ok(Admission {
        _stream: Some(slot),
    })
}
