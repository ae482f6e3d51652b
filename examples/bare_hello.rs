//! Benchmark baseline for `bench/run.sh`.
//!
//! A bare axum server on the same tokio multi-thread runtime as keel, with no
//! middleware, no templates and no database: `GET /` answers with one fixed
//! body read from a file at start. The bench script fills that file with the
//! exact bytes keel's `/` serves, so keel's req/s divided by this server's
//! req/s measures keel's middleware + templating overhead and nothing else.
//!
//! Usage: `bare_hello <bind-addr> <body-file>`

use std::net::SocketAddr;

use anyhow::{Context, bail};
use axum::{Router, body::Bytes, http::header, routing::get};
use tokio::net::TcpListener;

const CONTENT_TYPE: &str = "text/html; charset=utf-8";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(addr), Some(body_file), None) = (args.next(), args.next(), args.next()) else {
        bail!("usage: bare_hello <bind-addr> <body-file>");
    };
    let addr: SocketAddr = addr
        .parse()
        .with_context(|| format!("invalid bind address {addr:?}"))?;
    let body =
        Bytes::from(std::fs::read(&body_file).with_context(|| format!("reading body file {body_file:?}"))?);

    let app = Router::new().route(
        "/",
        get(move || {
            let body = body.clone();
            async move { ([(header::CONTENT_TYPE, CONTENT_TYPE)], body) }
        }),
    );

    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let local = listener.local_addr().context("reading bound address")?;
    println!("listening on {local}");

    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("serving")?;
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM. If a handler cannot be installed, that
/// signal is reported once and then ignored (the other one still works).
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            eprintln!("cannot listen for Ctrl-C: {err}");
            std::future::pending::<()>().await;
        }
    };

    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut sigterm) => {
                sigterm.recv().await;
            }
            Err(err) => {
                eprintln!("cannot listen for SIGTERM: {err}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();

    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
