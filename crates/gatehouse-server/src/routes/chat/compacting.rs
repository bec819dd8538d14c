//! Compaction on the proxy path: apply the session's point to a request that extends its
//! history, and compact automatically when the prompt reaches the session's threshold.
//!
//! The common case (no point, under the threshold) costs one short lock and two reference-count
//! bumps; the bodies are parsed again only when a point exists or the threshold is reached.

use std::sync::atomic::Ordering;

use gatehouse_core::time::now_ms;
use gatehouse_core::{ApiError, RequestId, SessionId};
use gatehouse_services::events::{Event, emit};

use super::{Prepared, use_body};
use crate::compaction::{self, Ask, Effective, Hold, Input};
use crate::state::AppState;

pub(super) async fn compaction(
    st: &AppState,
    p: &mut Prepared,
    session: &SessionId,
    request_id: &RequestId,
) -> Result<(), ApiError> {
    let cfg = &st.config.compaction;
    let input = Input {
        redacted: p.redacted_original.clone(),
        masked: p.original.clone(),
        route: p.route.clone(),
    };
    let snap = st.compaction.on_request(session, &input);
    let eff = Effective::of(cfg, &snap.settings);
    let window = p.route.max_context;
    if snap.point.is_none() && !(eff.auto_enabled && eff.reached(p.prompt_tokens, window)) {
        if !eff.reached(p.prompt_tokens, window) && snap.consecutive > 0 {
            st.compaction.under_threshold(session);
        }
        return Ok(());
    }

    if let Some(point) = &snap.point
        && let Some(b) = compaction::apply_point_async(&input, point).await
    {
        let before = p.prompt_tokens;
        use_body(st, p, b)?;
        p.spliced = Some((point.cut, point.summary.clone()));
        st.compaction.applied.fetch_add(1, Ordering::Relaxed);
        st.compaction
            .applied_saved
            .fetch_add(before.saturating_sub(p.prompt_tokens), Ordering::Relaxed);
    }
    let tokens = p.prompt_tokens;

    if !eff.reached(tokens, window) {
        st.compaction.under_threshold(session);
    } else if eff.auto_enabled {
        match st
            .compaction
            .begin_auto(session, cfg, now_ms(), tokens > window)
        {
            Ok(claim) => {
                let ask = Ask {
                    auto: true,
                    strategy: cfg.strategy,
                    keep_exchanges: cfg.keep_exchanges,
                    min_tokens: 0,
                    request_id: Some(request_id.as_str().to_owned()),
                    dry: false,
                };
                match compaction::run(st, session, &input, snap.point.clone(), &ask).await {
                    Ok(done) => {
                        compaction::finish(st, claim, &done).await;
                        let cut = usize::try_from(done.record.cut).unwrap_or(usize::MAX);
                        p.spliced = Some((cut, done.record.summary.clone()));
                        use_body(st, p, done.body)?;
                    }
                    Err(why) => {
                        tracing::debug!(session = %session, reason = why.reason, "automatic compaction skipped: {}", why.message);
                    }
                }
            }
            Err(Hold::Paused {
                consecutive,
                first_time: true,
            }) => {
                let pct = tokens.saturating_add(eff.reserved_tokens) as f64 * 100.0 / window as f64;
                tracing::warn!(session = %session, consecutive, "automatic compaction paused");
                emit(&*st.bus, || Event::CompactionPaused {
                    session_id: session.clone(),
                    request_id: request_id.as_str().to_owned(),
                    consecutive,
                    pct,
                    message: format!(
                        "the prompt is at {pct:.1} % of the window after {consecutive} automatic compactions in a row; automatic compaction pauses until it falls under {} % (or a manual compaction)",
                        eff.threshold_pct
                    ),
                });
            }
            Err(_) => {}
        }
    }
    Ok(())
}
