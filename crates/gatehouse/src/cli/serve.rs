//! `gatehouse serve`: load the configuration, bind, serve until SIGINT/SIGTERM.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use gatehouse_config::{Env, Overrides, load};
use tokio_util::sync::CancellationToken;

use crate::cli::demo;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Config file. Without it, ./config.toml is used when present, else the built-in catalogue.
    #[arg(long, short, env = "GATEHOUSE_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on (default 127.0.0.1).
    #[arg(long, env = "GATEHOUSE_HOST")]
    host: Option<String>,
    /// Port to listen on (default 8000; 0 picks a free one).
    #[arg(long, short, env = "GATEHOUSE_PORT")]
    port: Option<u16>,
    /// Directory of the SQLite database (default .).
    #[arg(long, env = "GATEHOUSE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Listen on a non-loopback address with `[auth] mode = "none"`, where anyone who reaches
    /// the gateway may use it (`mode = "keys"` needs no flag).
    #[arg(long)]
    unsafe_allow_remote: bool,
    /// Add a simulated provider (models demo/fast, demo/smart, demo/tiny) and a simulated
    /// client sending it requests, so the dashboard shows live traffic without any API key.
    #[arg(long)]
    demo: bool,
    /// With --demo: the demo provider only, no simulated client.
    #[arg(long, requires = "demo")]
    demo_no_traffic: bool,
}

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    init_tracing();
    let file = args.config.clone().or_else(|| {
        let default = PathBuf::from("config.toml");
        default.exists().then_some(default)
    });
    let env = Env::from_pairs(std::env::vars());
    let overrides = Overrides {
        host: args.host.clone(),
        port: args.port,
        data_dir: args.data_dir.clone(),
    };
    let mut config = load(file.as_deref(), &env, &overrides)?;
    // A Kimi Proxy file: what Gatehouse does instead of each key it does not apply.
    for k in config.seed_keys.iter().filter(|k| !k.mapped) {
        tracing::warn!(key = %k.seed, "Kimi Proxy setting accepted without effect: {}", k.gatehouse);
    }
    let ip: IpAddr = if config.server.host == "localhost" {
        IpAddr::from([127, 0, 0, 1])
    } else {
        config
            .server
            .host
            .parse()
            .context("server.host is not an IP address")?
    };
    let keys = config.auth.mode == gatehouse_config::AuthMode::Keys;
    if !ip.is_loopback() && !keys && !args.unsafe_allow_remote {
        bail!(
            "refusing to listen on {ip}: with [auth] mode = \"none\" anyone who reaches the gateway can spend every provider key, so Gatehouse stays on loopback. Set [auth] mode = \"keys\" (GATEHOUSE_AUTH__MODE=keys) and create keys with `gatehouse keys create`, or pass --unsafe-allow-remote behind your own access control"
        );
    }
    let addr = SocketAddr::new(ip, config.server.port);
    match &file {
        Some(f) => tracing::info!(config = %f.display(), "configuration loaded"),
        None => tracing::info!(
            "no config file: using the built-in catalogue (`gatehouse init` writes it out)"
        ),
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let demo_stop = CancellationToken::new();
        if args.demo {
            let url = demo::start_upstream(demo_stop.clone())
                .await
                .context("cannot start the demo provider")?;
            demo::add_to_config(&mut config, &url);
            tracing::warn!(
                provider = demo::PROVIDER,
                "DEMO MODE: models demo/fast, demo/smart and demo/tiny are simulated locally; no real provider is called for them"
            );
        }
        let traffic = args.demo && !args.demo_no_traffic;
        let stop = demo_stop.clone();
        let shutdown = async move {
            shutdown_signal().await;
            stop.cancel();
        };
        gatehouse_server::run_with(
            listener,
            config,
            gatehouse_server::RunOptions {
                demo: args.demo,
                master_key: None,
            },
            shutdown,
            |st| {
                if traffic {
                    tokio::spawn(demo::traffic(st.listen, demo_stop.clone()));
                }
            },
        )
        .await?;
        demo_stop.cancel();
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GATEHOUSE_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).try_init();
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
