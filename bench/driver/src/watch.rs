//! `watch`: a dashboard stand-in. Connects to `/ws`, reads every message for the given time,
//! and prints one JSON line: messages, bytes, resynchronisations (`lagged`). Used to measure what
//! an open dashboard costs the proxy path.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

pub fn main(args: &[String]) -> Result<(), String> {
    let mut url = None;
    let mut duration = 10.0_f64;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--url" => url = it.next().cloned(),
            "--duration" => {
                duration = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or("--duration takes seconds")?;
            }
            other => return Err(format!("unknown option {other}")),
        }
    }
    let url = url.ok_or("--url ws://HOST:PORT/ws is required")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .map_err(|e| format!("cannot connect to {url}: {e}"))?;
        let end = Instant::now() + Duration::from_secs_f64(duration);
        let (mut messages, mut bytes, mut lagged) = (0u64, 0u64, 0u64);
        while let Ok(Some(msg)) = tokio::time::timeout_at(end.into(), ws.next()).await {
            match msg {
                Ok(Message::Text(t)) => {
                    messages += 1;
                    bytes += t.len() as u64;
                    if t.starts_with(r#"{"type":"lagged""#) {
                        lagged += 1;
                    }
                }
                Ok(_) => {}
                Err(e) => return Err(format!("socket error: {e}")),
            }
        }
        println!(
            "{}",
            serde_json::json!({ "messages": messages, "bytes": bytes, "lagged": lagged })
        );
        Ok(())
    })
}
