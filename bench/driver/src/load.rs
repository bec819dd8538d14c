//! The closed-loop load generator.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper_util::rt::TokioIo;
use serde_json::json;

use crate::{flag, has, percentiles};

#[derive(Default)]
struct Worker {
    latencies_us: Vec<u64>,
    ttfb_us: Vec<u64>,
    gaps_us: Vec<u64>,
    requests: u64,
    errors: u64,
    stalls: u64,
    first_error: Option<String>,
}

struct Plan {
    addr: SocketAddr,
    host: String,
    path: String,
    body: Bytes,
    stream: bool,
    deadline: Instant,
    per_conn: Option<u64>,
    stall: Duration,
    auth: Option<String>,
}

pub fn main(args: &[String]) -> Result<(), String> {
    let url = flag(args, "--url").ok_or("--url is required")?;
    let body_file = flag(args, "--body").ok_or("--body is required")?;
    let body = std::fs::read(body_file).map_err(|e| format!("cannot read {body_file}: {e}"))?;
    let concurrency: usize = flag(args, "--concurrency")
        .unwrap_or("1")
        .parse()
        .map_err(|_| "bad --concurrency")?;
    let duration: f64 = flag(args, "--duration")
        .unwrap_or("5")
        .parse()
        .map_err(|_| "bad --duration")?;
    let per_conn: Option<u64> = flag(args, "--requests-per-conn")
        .map(str::parse)
        .transpose()
        .map_err(|_| "bad --requests-per-conn")?;
    let stall_ms: u64 = flag(args, "--stall-ms")
        .unwrap_or("1000")
        .parse()
        .map_err(|_| "bad --stall-ms")?;
    let label = flag(args, "--label").unwrap_or("run").to_owned();
    let rest = url.strip_prefix("http://").ok_or("only http:// URLs")?;
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_owned()), |(h, p)| (h, format!("/{p}")));
    let addr: SocketAddr = host.parse().map_err(|_| format!("{host} is not IP:PORT"))?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let started = Instant::now();
    let plan = std::sync::Arc::new(Plan {
        addr,
        host: host.to_owned(),
        path,
        body: Bytes::from(body),
        stream: has(args, "--stream"),
        deadline: started + Duration::from_secs_f64(duration),
        per_conn,
        stall: Duration::from_millis(stall_ms),
        auth: flag(args, "--auth").map(|t| format!("Bearer {t}")),
    });
    let workers = runtime.block_on(async {
        let mut handles = Vec::with_capacity(concurrency);
        for _ in 0..concurrency {
            handles.push(tokio::spawn(worker(plan.clone())));
        }
        let mut out = Vec::with_capacity(concurrency);
        for h in handles {
            out.push(h.await.unwrap_or_default());
        }
        out
    });
    let elapsed = started.elapsed().as_secs_f64();
    let mut all = Worker::default();
    for w in workers {
        all.latencies_us.extend(w.latencies_us);
        all.ttfb_us.extend(w.ttfb_us);
        all.gaps_us.extend(w.gaps_us);
        all.requests += w.requests;
        all.errors += w.errors;
        all.stalls += w.stalls;
        all.first_error = all.first_error.or(w.first_error);
    }
    let out = json!({
        "label": label,
        "concurrency": concurrency,
        "stream": plan.stream,
        "elapsed_s": elapsed,
        "requests": all.requests,
        "errors": all.errors,
        "first_error": all.first_error,
        "rps": all.requests as f64 / elapsed,
        "latency_us": percentiles(&mut all.latencies_us),
        "ttfb_us": percentiles(&mut all.ttfb_us),
        "gap_us": percentiles(&mut all.gaps_us),
        "stalls": all.stalls,
    });
    println!("{out}");
    Ok(())
}

async fn worker(plan: std::sync::Arc<Plan>) -> Worker {
    let mut w = Worker::default();
    let mut conn = None;
    let mut done = 0u64;
    while Instant::now() < plan.deadline && plan.per_conn.is_none_or(|k| done < k) {
        done += 1;
        if conn.is_none() {
            match connect(plan.addr).await {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    w.errors += 1;
                    w.first_error.get_or_insert(e);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        let Some(sender) = conn.as_mut() else {
            continue;
        };
        let mut req = Request::post(plan.path.as_str())
            .header(HOST, plan.host.as_str())
            .header(CONTENT_TYPE, "application/json");
        if let Some(auth) = &plan.auth {
            req = req.header(AUTHORIZATION, auth.as_str());
        }
        let req = req.body(Full::new(plan.body.clone()));
        let Ok(req) = req else {
            w.errors += 1;
            continue;
        };
        let t0 = Instant::now();
        match exchange(sender, req, plan.stream, plan.stall).await {
            Ok(Exchange {
                ok,
                ttfb,
                gaps,
                stalled,
            }) => {
                w.latencies_us.push(micros(t0.elapsed()));
                w.requests += 1;
                if !ok {
                    w.errors += 1;
                    w.first_error
                        .get_or_insert_with(|| "non-2xx status".to_owned());
                }
                if plan.stream {
                    if let Some(t) = ttfb {
                        w.ttfb_us.push(micros(t));
                    }
                    w.gaps_us.extend(gaps.into_iter().map(micros));
                    w.stalls += u64::from(stalled);
                }
            }
            Err(e) => {
                w.errors += 1;
                w.first_error.get_or_insert(e);
                conn = None;
            }
        }
    }
    w
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> Result<Sender, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    Ok(sender)
}

struct Exchange {
    ok: bool,
    ttfb: Option<Duration>,
    gaps: Vec<Duration>,
    stalled: bool,
}

async fn exchange(
    sender: &mut Sender,
    req: Request<Full<Bytes>>,
    stream: bool,
    stall: Duration,
) -> Result<Exchange, String> {
    sender
        .ready()
        .await
        .map_err(|e| format!("connection: {e}"))?;
    let t0 = Instant::now();
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let ok = resp.status().is_success();
    let mut body = resp.into_body();
    let mut ttfb = None;
    let mut gaps = Vec::new();
    let mut last = Instant::now();
    let mut stalled = false;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("body: {e}"))?;
        if frame.data_ref().is_some_and(|d| !d.is_empty()) {
            let now = Instant::now();
            match ttfb {
                None => ttfb = Some(now - t0),
                Some(_) if stream => {
                    let gap = now - last;
                    stalled |= gap > stall;
                    gaps.push(gap);
                }
                Some(_) => {}
            }
            last = now;
        }
    }
    Ok(Exchange {
        ok,
        ttfb,
        gaps,
        stalled,
    })
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
