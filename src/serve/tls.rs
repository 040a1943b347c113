//! TLS termination with rustls: HTTP/1.1 and HTTP/2 (negotiated by ALPN)
//! over TLS, with the same graceful shutdown and per-connection facts
//! (TCP_NODELAY, the peer address for access control) as plain HTTP.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;

use super::conn::Monitored;
use crate::config::{ServerConfig, TlsFiles};
use crate::http::OverTls;

/// The server side of TLS from the configured PEM certificate chain and its
/// private key. Errors name the file at fault, for the operator.
pub fn server_config(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, String> {
    let (cert, key) = (files.cert.as_path(), files.key.as_path());
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect())
        .map_err(|e| format!("reading certificates from {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("no certificate in {}", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("reading the private key from {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("certificate and key do not fit together: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serves `app` over TLS until `shutdown` completes, then lets in-flight
/// requests finish within the grace.
pub async fn serve_tls(
    listener: TcpListener,
    app: Router,
    tls: Arc<rustls::ServerConfig>,
    limits: &ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let builder = Arc::new(super::builder(limits));
    let service_limits = limits.clone();
    super::accept_loop(listener, limits, shutdown, move |stream, peer, watch| {
        let acceptor = acceptor.clone();
        let service = super::service(
            app.clone(),
            watch.activity.clone(),
            &service_limits,
            move |extensions, _| {
                extensions.insert(ConnectInfo::<SocketAddr>(peer));
                extensions.insert(OverTls);
            },
        );
        let handshake_timeout = service_limits.handshake_timeout;
        let builder = builder.clone();
        async move {
            // A client that never completes the handshake (or speaks plain
            // HTTP to this port) must not hold a connection forever; one
            // still shaking hands has no request in flight, so the cap may
            // shed it and a stop closes it at once.
            let mut draining = watch.draining.clone();
            let (stream, reclaimed) = super::linger::Reclaim::new(stream);
            let handshake = tokio::time::timeout(handshake_timeout, acceptor.accept(stream));
            let stream = tokio::select! {
                shaken = handshake => match shaken {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                },
                () = watch.close.cancelled() => return,
                _ = draining.wait_for(|stopping| *stopping) => return,
            };
            let stream = Monitored::new(TokioIo::new(stream), watch.activity.clone());
            let connection = builder
                .serve_connection_with_upgrades(stream, service)
                .into_owned();
            super::serve_then_close(connection, watch, peer, reclaimed).await;
        }
    })
    .await
}
