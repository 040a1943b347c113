//! A counting HTTP/1.1 proxy for the benchmark: in front of Garage (the S3 pull storm counts the
//! GETs that reach the bucket) and of a mirror's upstream registry (the mirror rows count the
//! upstream's blob GETs), optionally pacing answers to a link of a given speed.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::R;

/// A request that went through the proxy.
#[derive(Debug)]
pub(super) struct ProxiedRequest {
    pub(super) method: hyper::Method,
    pub(super) path: String,
    /// The answer's Content-Length (0 when it has none).
    pub(super) bytes: u64,
}

/// A link of a fixed speed that every answer's body shares: each frame is sent once the link
/// has carried the frames before it (a token bucket without burst).
struct Link {
    bytes_per_sec: f64,
    free_at: Mutex<Instant>,
}

impl Link {
    /// Waits until the link has carried `n` more bytes.
    async fn carry(&self, n: usize) {
        let done = {
            let mut free_at = self.free_at.lock().expect("link");
            let start = (*free_at).max(Instant::now());
            *free_at = start + Duration::from_secs_f64(n as f64 / self.bytes_per_sec);
            *free_at
        };
        tokio::time::sleep_until(done.into()).await;
    }
}

/// An HTTP/1.1 proxy that forwards every request as it came (the Host header included, so SigV4
/// signatures stay valid) and records each one, so the benchmark can count the GETs of the blob
/// a workload reads. Each client connection gets one connection to the upstream, so keep-alive
/// works as it would directly. With a link speed, answers' bodies are paced to it, all
/// connections sharing the one link: an upstream across a network rather than on loopback.
pub(super) struct CountingProxy {
    pub(super) endpoint: String,
    log: Arc<Mutex<Vec<ProxiedRequest>>>,
    task: tokio::task::JoinHandle<()>,
}

impl CountingProxy {
    pub(super) async fn start(upstream: &str, bytes_per_sec: Option<f64>) -> R<CountingProxy> {
        let link = bytes_per_sec.map(|bytes_per_sec| {
            Arc::new(Link {
                bytes_per_sec,
                free_at: Mutex::new(Instant::now()),
            })
        });
        let upstream = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let log = Arc::new(Mutex::new(Vec::new()));
        let task_log = log.clone();
        let task = tokio::spawn(async move {
            // Dropped (aborted) with the proxy: its connections go with it.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((down, _)) = listener.accept().await else {
                    continue;
                };
                connections.spawn(forward(
                    down,
                    upstream.clone(),
                    task_log.clone(),
                    link.clone(),
                ));
                while connections.try_join_next().is_some() {}
            }
        });
        Ok(CountingProxy {
            endpoint,
            log,
            task,
        })
    }

    /// The requests since the last call.
    pub(super) fn take(&self) -> Vec<ProxiedRequest> {
        std::mem::take(&mut *self.log.lock().expect("proxy log"))
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves one client connection, forwarding its requests one at a time over one connection to
/// `upstream`. A failure ends the connection; the client sees it (a failed pull fails the run).
async fn forward(
    down: tokio::net::TcpStream,
    upstream: String,
    log: Arc<Mutex<Vec<ProxiedRequest>>>,
    link: Option<Arc<Link>>,
) {
    let outcome = async {
        let up = tokio::net::TcpStream::connect(&upstream).await?;
        up.set_nodelay(true)?;
        down.set_nodelay(true)?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake::<_, Incoming>(TokioIo::new(up)).await?;
        let upstream_task = tokio::spawn(connection);
        let sender = Arc::new(tokio::sync::Mutex::new(sender));
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let (sender, log, link) = (sender.clone(), log.clone(), link.clone());
            async move {
                let method = request.method().clone();
                let path = request.uri().path().to_owned();
                let response = {
                    let mut sender = sender.lock().await;
                    // The previous answer's body may still be finishing on the upstream side.
                    sender.ready().await?;
                    sender.send_request(request).await?
                };
                let bytes = response
                    .headers()
                    .get(hyper::header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok()?.parse().ok())
                    .unwrap_or(0);
                log.lock().expect("proxy log").push(ProxiedRequest {
                    method,
                    path,
                    bytes,
                });
                let Some(link) = link else {
                    return Ok::<_, hyper::Error>(response.map(BodyExt::boxed_unsync));
                };
                let (parts, body) = response.into_parts();
                let paced = body.into_data_stream().then(move |chunk| {
                    let link = link.clone();
                    async move {
                        if let Ok(bytes) = &chunk {
                            link.carry(bytes.len()).await;
                        }
                        chunk.map(hyper::body::Frame::data)
                    }
                });
                let body = http_body_util::StreamBody::new(paced).boxed_unsync();
                Ok(hyper::Response::from_parts(parts, body))
            }
        });
        let served = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(down), service)
            .await;
        upstream_task.abort();
        served?;
        Ok::<(), super::Error>(())
    }
    .await;
    // A client that closes its connection mid-answer ends here too: nothing to report.
    drop(outcome);
}
