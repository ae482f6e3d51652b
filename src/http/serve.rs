//! Serving connections, with hyper's HTTP/1 builder rather than `axum::serve`, which sets no
//! header-read timeout: a client that never finishes its request headers would hold its
//! connection (and a task) forever.
//!
//! - A client has [`HEADER_READ_TIMEOUT`] to send its request headers, on a new connection and
//!   on a kept-alive one. hyper runs the same deadline while a kept-alive connection waits for
//!   its next request, so an idle connection is closed after 10 s too (SPEC allows 60 s; nginx
//!   keeps no idle connections to keel, see nginx.conf).
//! - At most `max_connections` connections are served at once; more wait in the kernel's
//!   accept queue until one closes.
//! - HTTP/1.1 only (nginx speaks it to keel), so no HTTP/2 connection escapes these rules.
//!
//! On shutdown it stops accepting, lets each connection finish its request in flight, and
//! returns when all have closed.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{Router, body::Body, extract::ConnectInfo, http::Request};
use hyper::{body::Incoming, server::conn::http1};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
    service::TowerToHyperService,
};
use tokio::{net::TcpListener, sync::Semaphore};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

/// SPEC: a client that has not sent its request headers within 10 s is disconnected.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `router` on `listener` until `shutdown`, then waits for open connections to finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    max_connections: usize,
    shutdown: CancellationToken,
) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let slots = Arc::new(Semaphore::new(max_connections));
    let connections = GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = async {
                let slot = Arc::clone(&slots).acquire_owned().await;
                (slot, listener.accept().await)
            } => accepted,
        };
        let (slot, (stream, peer)) = match accepted {
            (Ok(slot), Ok(accepted)) => (slot, accepted),
            (_, Err(error)) => {
                // Out of file descriptors, or a connection reset before it was accepted:
                // wait a little rather than spin.
                tracing::warn!(%error, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            (Err(_closed), _) => unreachable!("the semaphore is never closed"),
        };
        let service = router.clone().map_request(move |request: Request<Incoming>| {
            let mut request = request.map(Body::new);
            request.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
            request
        });
        let connection = http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        let connection = connections.watch(connection);
        tokio::spawn(async move {
            // Errors here are the client's (a reset, a malformed request, the header timeout).
            if let Err(error) = connection.await {
                tracing::debug!(%peer, %error, "connection ended");
            }
            drop(slot);
        });
    }
    drop(listener);
    connections.shutdown().await;
}
