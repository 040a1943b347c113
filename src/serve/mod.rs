//! Accepting connections and serving the application on them, in plain HTTP
//! (HTTP/1.1 and h2c) and, through [`tls`], over TLS: TCP_NODELAY, the
//! peer address for handlers (`ConnectInfo`: the login limiter counts
//! failures per client address), zero-copy blob downloads on plain HTTP/1.1
//! ([`zero_copy`]), graceful shutdown.
//!
//! This is the transport under the application: it takes any axum `Router`
//! and tells handlers about the connection only through the request
//! extensions `http::connection` defines (`ConnectInfo`, `OverTls`,
//! `SendFile`). `http` never imports from here.

pub mod tls;
pub mod zero_copy;

use std::future::Future;
use std::io;
use std::net::SocketAddr;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt;

use zero_copy::ZeroCopyStream;

/// Serves `app` over TLS with `tls`, or in plain HTTP without, until
/// `shutdown` completes; then lets in-flight requests finish.
pub async fn run(
    listener: TcpListener,
    app: Router,
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    match tls {
        Some(tls) => tls::serve_tls(listener, app, tls, shutdown).await,
        None => serve(listener, app, shutdown).await,
    }
}

/// Serves `app` in plain HTTP until `shutdown` completes, then lets
/// in-flight requests finish. HTTP/1 blob downloads are sent with
/// `sendfile` (see [`zero_copy`]).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    accept_loop(listener, shutdown, move |stream, peer, watcher| {
        let stream = ZeroCopyStream::new(stream);
        let send_file = stream.send_file();
        let app = app.clone();
        let service = hyper::service::service_fn(
            move |mut request: hyper::Request<hyper::body::Incoming>| {
                // HTTP/2 cuts data into frames of its own (and copies
                // small ones): placeholders would not reach the IO whole.
                let http1 = request.version() < hyper::Version::HTTP_2;
                let extensions = request.extensions_mut();
                extensions.insert(ConnectInfo::<SocketAddr>(peer));
                if http1 {
                    extensions.insert(send_file.clone());
                }
                app.clone().oneshot(request)
            },
        );
        async move {
            let mut builder = auto::Builder::new(TokioExecutor::new());
            // What zero-copy relies on, pinned rather than inferred: body
            // frames reach the IO's vectored write uncopied.
            builder.http1().writev(true).pipeline_flush(false);
            let connection = builder
                .serve_connection_with_upgrades(stream, service)
                .into_owned();
            if let Err(e) = watcher.watch(connection).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        }
    })
    .await
}

/// Accepts connections until `shutdown` completes, handing each (with
/// TCP_NODELAY set) to `connection`, whose future runs on its own task;
/// then waits for the connections to finish their requests.
pub(crate) async fn accept_loop<F, Fut>(
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    mut connection: F,
) -> io::Result<()>
where
    F: FnMut(TcpStream, SocketAddr, Watcher) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                // Out of descriptors and the like: keep serving the others,
                // after a pause so that a persistent error does not spin.
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Without TCP_NODELAY a small response written in two segments
        // waits for the peer's delayed ACK (~40 ms): small blob and manifest
        // GETs stall.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
        tokio::spawn(connection(stream, peer, graceful.watcher()));
    }
    graceful.shutdown().await;
    Ok(())
}
