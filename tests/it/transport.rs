//! The transport's bounds (src/serve/conn.rs, src/serve/mod.rs): every stage
//! a client paces closes the connection when the client takes too long
//! (head, idle keep-alive, request body, a response it does not read, the
//! TLS handshake), on HTTP/1.1, HTTP/2 and TLS; progress is never cut; the
//! number of connections is capped, shedding the longest idle one (else the
//! one its client has held up longest); a
//! graceful stop closes idle connections at once and ends after its grace.
//! Timeouts are set to about a second so that each test waits little. These
//! are one server's bounds: on S3 too, the tests speak to one server, not to
//! replicas behind a balancer (which would hold connections of its own).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use reqwest::StatusCode;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{random_bytes, sha256_digest, testdata, TestRegistry, BERTH};
use berth::Config;

const MARGIN: Duration = Duration::from_secs(3);

/// Small bounds, so that a test waits about a second for each.
fn quick(config: &mut Config) {
    let server = &mut config.server;
    server.handshake_timeout = Duration::from_millis(800);
    server.header_timeout = Duration::from_millis(800);
    server.idle_timeout = Duration::from_secs(2);
    server.body_timeout = Duration::from_secs(1);
    server.send_timeout = Duration::from_secs(1);
    server.shutdown_grace = Duration::from_secs(2);
}

/// Bounds far beyond any test, so that only what a test looks at acts.
fn patient(config: &mut Config) {
    let server = &mut config.server;
    server.header_timeout = Duration::from_secs(60);
    server.idle_timeout = Duration::from_secs(60);
    server.body_timeout = Duration::from_secs(60);
    server.send_timeout = Duration::from_secs(60);
}

/// Whether the server closes `stream` (end of stream or reset) within
/// `within`, reading and dropping whatever it sends meanwhile.
async fn closed_within(stream: &mut (impl AsyncRead + Unpin), within: Duration) -> bool {
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// Whether `stream` is still open after `wait` without data from the server.
async fn still_open(stream: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 1];
    tokio::time::timeout(wait, stream.read(&mut buf))
        .await
        .is_err()
}

/// Sends one HTTP/1.1 request on `stream` and reads its response (headers
/// and a Content-Length body); returns the status code.
async fn exchange(stream: &mut TcpStream, request: &str) -> u16 {
    stream.write_all(request.as_bytes()).await.unwrap();
    read_response(stream).await
}

async fn read_response(stream: &mut (impl AsyncRead + Unpin)) -> u16 {
    read_response_head(stream).await.0
}

/// Reads one response (headers and a Content-Length body); its status code
/// and its head.
async fn read_response_head(stream: &mut (impl AsyncRead + Unpin)) -> (u16, String) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut byte).await.expect("a response");
        assert!(
            n > 0,
            "closed before a response: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let length: usize = header(&head, "content-length").map_or(0, |v| v.parse().unwrap());
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await.unwrap();
    (head[9..12].parse().unwrap(), head)
}

/// The value of header `name` (lower case) in a response head.
fn header(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.eq_ignore_ascii_case(name)
            .then(|| value.trim().to_owned())
    })
}

const GET_V2: &str = "GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n";

async fn connect(registry: &TestRegistry) -> TcpStream {
    TcpStream::connect(registry.addr).await.unwrap()
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_after_the_header_timeout() {
    let registry = TestRegistry::start_one_with(quick).await;
    let mut silent = connect(&registry).await;
    let started = Instant::now();
    assert!(still_open(&mut silent, Duration::from_millis(300)).await);
    assert!(closed_within(&mut silent, Duration::from_millis(800) + MARGIN).await);
    assert!(
        started.elapsed() >= Duration::from_millis(700),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_slowloris_head_is_closed_after_the_header_timeout_though_it_keeps_sending() {
    let registry = TestRegistry::start_one_with(quick).await;
    let mut slow = connect(&registry).await;
    slow.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    // A header byte every 100 ms: progress, but never a whole head.
    let closed = loop {
        if slow.write_all(b"X-a: b\r\n").await.is_err() {
            break true;
        }
        let mut buf = [0u8; 256];
        match tokio::time::timeout(Duration::from_millis(100), slow.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(_)) => panic!("no response to a head that never ends"),
            Err(_) if started.elapsed() > Duration::from_millis(800) + MARGIN => break false,
            Err(_) => {}
        }
    };
    assert!(closed, "the trickling head was never closed");
    assert!(started.elapsed() >= Duration::from_millis(700));
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_served_then_closed_after_the_idle_timeout() {
    let registry = TestRegistry::start_one_with(quick).await;
    let mut stream = connect(&registry).await;
    assert_eq!(exchange(&mut stream, GET_V2).await, 200);
    // Idle for longer than the head timeout (800 ms): the idle timeout (2 s)
    // applies between requests, and the connection still serves.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(exchange(&mut stream, GET_V2).await, 200);
    let idle = Instant::now();
    assert!(still_open(&mut stream, Duration::from_millis(1200)).await);
    assert!(closed_within(&mut stream, MARGIN).await);
    assert!(
        idle.elapsed() >= Duration::from_millis(1900),
        "{:?}",
        idle.elapsed()
    );
}

#[tokio::test]
async fn http2_idle_connections_are_closed_after_the_idle_timeout() {
    let registry = TestRegistry::start_one_with(quick).await;
    let tcp = connect(&registry).await;
    let (mut send, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    let mut connection = tokio::spawn(connection);
    let request = hyper::Request::get(registry.url("/v2/"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = send.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), hyper::Version::HTTP_2);
    response.into_body().collect().await.unwrap();
    let idle = Instant::now();
    // The server's keep-alive pings (answered by the client) do not keep
    // an idle connection open.
    let ended = tokio::time::timeout(Duration::from_secs(2) + MARGIN, &mut connection).await;
    assert!(ended.is_ok(), "the idle HTTP/2 connection is still open");
    assert!(
        idle.elapsed() >= Duration::from_millis(1900),
        "{:?}",
        idle.elapsed()
    );
    drop(send);
}

fn tls_connector() -> tokio_rustls::TlsConnector {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(testdata("test-ca.crt")).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

#[tokio::test]
async fn over_tls_a_stalled_handshake_and_a_half_sent_head_are_closed() {
    let registry = TestRegistry::start_one_with(|config| {
        quick(config);
        config.tls_cert = Some(testdata("server.crt"));
        config.tls_key = Some(testdata("server.key"));
    })
    .await;
    // No ClientHello at all.
    let mut silent = connect(&registry).await;
    let started = Instant::now();
    assert!(closed_within(&mut silent, Duration::from_millis(800) + MARGIN).await);
    assert!(started.elapsed() >= Duration::from_millis(700));

    // A completed handshake, a request served, then half a head.
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tls_connector()
        .connect(name, connect(&registry).await)
        .await
        .unwrap();
    tls.write_all(GET_V2.as_bytes()).await.unwrap();
    assert_eq!(read_response(&mut tls).await, 200);
    tls.write_all(b"GET /v2/ HTTP/1.1\r\nHo").await.unwrap();
    let half = Instant::now();
    assert!(closed_within(&mut tls, Duration::from_millis(800) + MARGIN).await);
    assert!(
        half.elapsed() >= Duration::from_millis(700),
        "{:?}",
        half.elapsed()
    );
}

/// Serves `app` (not Berth's API) with the `quick` bounds on a free port.
async fn serve_app(app: axum::Router) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut config = Config::default();
    quick(&mut config);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let stopped = async {
            let _ = stopped.await;
        };
        berth::serve::run(listener, app, None, &config.server, stopped).await
    });
    (addr, stop)
}

#[tokio::test]
async fn a_handler_that_works_longer_than_every_timeout_is_not_cut() {
    use axum::routing::{get, put};
    // 2.5 s of work without I/O: longer than the head (0.8 s), body (1 s),
    // send (1 s) and idle (2 s) bounds. And a handler that reads a body
    // the client sent at once, pausing 1.5 s between pieces.
    let app = axum::Router::new()
        .route(
            "/work",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(2500)).await;
                "done"
            }),
        )
        .route(
            "/slow-read",
            put(|body: axum::body::Body| async move {
                let mut stream = body.into_data_stream();
                let mut total = 0;
                while let Some(piece) = futures::StreamExt::next(&mut stream).await {
                    total += piece.unwrap().len();
                    tokio::time::sleep(Duration::from_millis(1500)).await;
                }
                total.to_string()
            }),
        );
    let (addr, _stop) = serve_app(app).await;

    let mut http1 = TcpStream::connect(addr).await.unwrap();
    assert_eq!(
        exchange(&mut http1, "GET /work HTTP/1.1\r\nHost: x\r\n\r\n").await,
        200
    );
    let body = vec![1u8; 20_000];
    let head = format!(
        "PUT /slow-read HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    http1.write_all(head.as_bytes()).await.unwrap();
    http1.write_all(&body).await.unwrap();
    assert_eq!(read_response(&mut http1).await, 200);

    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut send, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = hyper::Request::get(format!("http://{addr}/work"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = send.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"done");
}

/// Opens an upload and sends the head of a `PATCH` of `len` bytes on a
/// connection of its own.
async fn start_patch(registry: &TestRegistry, len: usize) -> (TcpStream, String) {
    let location = registry.start_upload("app").await;
    let path = location
        .trim_start_matches(&format!("http://{}", registry.addr))
        .to_owned();
    let mut stream = connect(registry).await;
    let head = format!(
        "PATCH {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    (stream, location)
}

#[tokio::test]
async fn an_upload_that_stops_sending_is_cut_and_its_session_is_intact() {
    let registry = TestRegistry::start_one_with(quick).await;
    let content = random_bytes(1 << 20, 7);
    let (mut stream, location) = start_patch(&registry, content.len()).await;
    stream.write_all(&content[..100_000]).await.unwrap();
    let stalled = Instant::now();
    assert!(closed_within(&mut stream, Duration::from_secs(1) + MARGIN).await);
    assert!(
        stalled.elapsed() >= Duration::from_millis(900),
        "{:?}",
        stalled.elapsed()
    );
    // Nothing of the cut chunk was kept: the whole blob goes in afresh.
    let url = crate::support::with_query(&location, &format!("digest={}", sha256_digest(&content)));
    let resp = registry
        .client
        .put(url)
        .body(content.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let pulled = registry
        .client
        .get(registry.url(&format!("/v2/app/blobs/{}", sha256_digest(&content))))
        .send()
        .await
        .unwrap();
    assert_eq!(pulled.bytes().await.unwrap().as_ref(), &content[..]);
}

#[tokio::test]
async fn a_slow_upload_that_keeps_sending_is_not_cut() {
    // body_timeout 2 s, not quick's 1 s: slack for a client task that waits
    // for the CPU on a loaded machine.
    let registry = TestRegistry::start_one_with(|config| {
        quick(config);
        config.server.body_timeout = Duration::from_secs(2);
    })
    .await;
    let content = random_bytes(256 * 1024, 8);
    let (mut stream, _) = start_patch(&registry, content.len()).await;
    let started = Instant::now();
    // 16 pieces 300 ms apart: 4.8 s in all, over twice the body timeout.
    for piece in content.chunks(16 * 1024) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        stream.write_all(piece).await.unwrap();
    }
    assert!(started.elapsed() > Duration::from_secs(4));
    assert_eq!(read_response(&mut stream).await, 202);
}

#[tokio::test]
async fn a_slow_reader_gets_the_whole_blob_and_a_stalled_one_is_cut() {
    // send_timeout is 2 s here, not quick's 1 s: the reader below pauses
    // 100 ms between reads, and on a loaded machine (CI runs tests side by
    // side on two cores) its task may wait for the CPU well beyond that.
    let send_timeout = Duration::from_secs(2);
    let registry = TestRegistry::start_one_with(|config| {
        quick(config);
        config.server.send_timeout = send_timeout;
    })
    .await;
    let content = random_bytes(12 << 20, 9);
    let digest = registry.push_blob("app", &content).await;
    let get = format!("GET /v2/app/blobs/{digest} HTTP/1.1\r\nHost: x\r\n\r\n");

    // At most 256 KiB every 100 ms: about 5 s for the blob, over twice the
    // send timeout, the server's writes blocking all along. (Not with a tiny receive buffer: on
    // loopback, whose segments are 64 KiB, the window then reopens only by
    // zero-window probes, whose backoff stalls the sender for seconds.)
    let mut slow = connect(&registry).await;
    slow.write_all(get.as_bytes()).await.unwrap();
    let started = Instant::now();
    let mut received = Vec::new();
    let mut buf = vec![0u8; 256 * 1024];
    while received.len() < content.len() + 100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let n = slow.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        received.extend_from_slice(&buf[..n]);
        let head_end = received.windows(4).position(|w| w == b"\r\n\r\n");
        if let Some(end) = head_end {
            if received.len() - end - 4 == content.len() {
                break;
            }
        }
    }
    assert!(
        started.elapsed() > 2 * send_timeout,
        "{:?}",
        started.elapsed()
    );
    let end = received.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(received.starts_with(b"HTTP/1.1 200"));
    assert_eq!(
        sha256_digest(&received[end..]),
        digest,
        "the slow reader got the blob whole"
    );

    // A client that stops reading is cut after the send timeout.
    let mut stalled = connect(&registry).await;
    stalled.write_all(get.as_bytes()).await.unwrap();
    tokio::time::sleep(send_timeout + MARGIN).await;
    let mut rest = Vec::new();
    let read = tokio::time::timeout(MARGIN, stalled.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the stalled download is still open");
    assert!(rest.len() < content.len(), "got {} bytes", rest.len());
}

#[tokio::test]
async fn http2_a_client_that_closes_its_window_is_cut_after_the_send_timeout() {
    // The server pings an HTTP/2 connection every idle_timeout / 2: here
    // more often than send_timeout, as with the defaults (75 s and 60 s).
    // The pings' writes go through; they must not count as the response
    // moving.
    let registry = TestRegistry::start_one_with(|config| {
        quick(config);
        config.server.idle_timeout = Duration::from_millis(800);
        config.server.send_timeout = Duration::from_secs(2);
    })
    .await;
    let content = random_bytes(4 << 20, 12);
    let digest = registry.push_blob("app", &content).await;
    let tcp = connect(&registry).await;
    let (mut send, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(64 * 1024)
        .initial_connection_window_size(64 * 1024)
        .handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    let mut connection = tokio::spawn(connection);
    let request = hyper::Request::get(registry.url(&format!("/v2/app/blobs/{digest}")))
        .body(Empty::<Bytes>::new())
        .unwrap();
    // The body is never read: the client's window stays closed after 64 KiB,
    // and the socket never refuses a write.
    let response = send.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let stalled = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(2) + MARGIN, &mut connection).await;
    assert!(ended.is_ok(), "the stalled HTTP/2 download is still open");
    assert!(
        stalled.elapsed() >= Duration::from_millis(1900),
        "{:?}",
        stalled.elapsed()
    );
    drop(response);
}

#[tokio::test]
async fn at_the_cap_the_longest_idle_connection_is_closed_for_a_new_client() {
    let registry = TestRegistry::start_one_with(|config| {
        patient(config);
        config.server.max_connections = Some(3);
    })
    .await;
    let mut idle = Vec::new();
    for _ in 0..3 {
        let mut stream = connect(&registry).await;
        assert_eq!(exchange(&mut stream, GET_V2).await, 200);
        idle.push(stream);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut newcomer = connect(&registry).await;
    assert_eq!(exchange(&mut newcomer, GET_V2).await, 200);
    assert!(
        closed_within(&mut idle[0], MARGIN).await,
        "the oldest idle one is closed"
    );
    assert!(still_open(&mut idle[1], Duration::from_millis(300)).await);
    assert_eq!(
        exchange(&mut idle[2], GET_V2).await,
        200,
        "the others still serve"
    );
}

#[tokio::test]
async fn at_the_cap_with_every_connection_busy_the_new_one_is_refused() {
    let registry = TestRegistry::start_one_with(|config| {
        patient(config);
        config.server.max_connections = Some(2);
    })
    .await;
    let content = random_bytes(64 * 1024, 10);
    let (mut first, _) = start_patch(&registry, content.len()).await;
    first.write_all(&content[..1000]).await.unwrap();
    let (mut second, _) = start_patch(&registry, content.len()).await;
    second.write_all(&content[..1000]).await.unwrap();
    // Both heads are read (their handlers wait for the body) before the next
    // client comes, which is well within the second a request must have
    // waited on its client before its connection may be shed.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut refused = connect(&registry).await;
    let _ = refused.write_all(GET_V2.as_bytes()).await;
    let mut got = Vec::new();
    let read = tokio::time::timeout(MARGIN, refused.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "the connection over the cap was kept open");
    assert!(
        got.is_empty(),
        "it was served: {}",
        String::from_utf8_lossy(&got)
    );
    // The busy ones were not shed, and finish.
    first.write_all(&content[1000..]).await.unwrap();
    assert_eq!(read_response(&mut first).await, 202);
    second.write_all(&content[1000..]).await.unwrap();
    assert_eq!(read_response(&mut second).await, 202);
}

#[tokio::test]
async fn at_the_cap_the_connection_its_client_held_up_longest_is_closed_for_a_new_client() {
    // A client can hold a place while never idle: it sends a body byte just
    // inside body_timeout. At the cap such a connection goes for a newcomer.
    let registry = TestRegistry::start_one_with(|config| {
        patient(config);
        config.server.max_connections = Some(2);
    })
    .await;
    let content = random_bytes(64 * 1024, 12);
    let (mut trickling, _) = start_patch(&registry, content.len()).await;
    trickling.write_all(&content[..1000]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (mut stalled, _) = start_patch(&registry, content.len()).await;
    stalled.write_all(&content[..1000]).await.unwrap();
    // Both have waited on their clients for over a second, the first longer.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut newcomer = connect(&registry).await;
    assert_eq!(exchange(&mut newcomer, GET_V2).await, 200);
    assert!(
        closed_within(&mut trickling, MARGIN).await,
        "the connection held up longest was kept"
    );
    stalled.write_all(&content[1000..]).await.unwrap();
    assert_eq!(
        read_response(&mut stalled).await,
        202,
        "the other upload goes on"
    );
}

#[tokio::test]
async fn a_graceful_stop_closes_idle_connections_at_once_and_ends_after_its_grace() {
    let registry = TestRegistry::start_one_with(|config| {
        patient(config);
        config.server.shutdown_grace = Duration::from_secs(2);
    })
    .await;
    let mut half_head = connect(&registry).await;
    half_head
        .write_all(b"GET /v2/ HTTP/1.1\r\nHo")
        .await
        .unwrap();
    let mut kept_alive = connect(&registry).await;
    assert_eq!(exchange(&mut kept_alive, GET_V2).await, 200);
    let content = random_bytes(64 * 1024, 11);
    let (mut uploading, _) = start_patch(&registry, content.len()).await;
    uploading.write_all(&content[..1000]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let stopping = Instant::now();
    let stopped = tokio::spawn(registry.shutdown());
    assert!(
        closed_within(&mut half_head, Duration::from_secs(1)).await,
        "half a head held the stop"
    );
    assert!(closed_within(&mut kept_alive, Duration::from_secs(1)).await);
    assert!(stopping.elapsed() < Duration::from_millis(1500));
    // The upload in flight keeps the server until the grace is over, not
    // longer, and is then closed.
    let ended = tokio::time::timeout(Duration::from_secs(2) + MARGIN, stopped).await;
    ended
        .expect("the stop ended within its grace")
        .unwrap()
        .unwrap();
    assert!(
        stopping.elapsed() >= Duration::from_millis(1900),
        "{:?}",
        stopping.elapsed()
    );
    assert!(closed_within(&mut uploading, Duration::from_secs(1)).await);
}

#[test]
fn sigterm_does_not_wait_for_a_client_holding_half_a_head() {
    use std::io::{Read as _, Write as _};
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap();
    // Default bounds: the head timeout (30 s) is not what ends it.
    let served = crate::support::ServeProcess::start(
        &["--listen", "127.0.0.1:0", "--data-dir", data_dir],
        &[],
    );
    let mut half = std::net::TcpStream::connect(&served.addr).unwrap();
    half.write_all(b"GET /v2/ HTTP/1.1\r\nHo").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let stopping = Instant::now();
    served.terminate();
    let mut served = served;
    let status = loop {
        if let Some(status) = served.child.try_wait().unwrap() {
            break status;
        }
        // Fails rather than hangs (the process is killed on drop).
        assert!(
            stopping.elapsed() < Duration::from_secs(5),
            "still running after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    let mut rest = Vec::new();
    half.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = half.read_to_end(&mut rest);
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
}

/// The shell's hard limit on open files, `None` for unlimited.
fn hard_open_files_limit() -> Option<u64> {
    let out = std::process::Command::new("sh")
        .args(["-c", "ulimit -Hn"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().parse().ok()
}

#[test]
fn the_server_raises_its_open_files_limit_to_the_hard_one() {
    let hard = hard_open_files_limit();
    let soft = hard.map_or(1024, |h| h.min(1024));
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new("prlimit")
        .arg(format!("--nofile={soft}:"))
        .arg(BERTH)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .envs(crate::support::new_store_env())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("prlimit runs (util-linux)");
    let mut log = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let field = |line: &str, name: &str| -> u64 {
        let value = line
            .split(&format!(" {name}="))
            .nth(1)
            .unwrap_or_else(|| panic!("{name} in {line}"));
        value
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    loop {
        line.clear();
        let n = std::io::BufRead::read_line(&mut log, &mut line).unwrap();
        assert!(n > 0, "berth exited without logging its open files limit");
        if line.contains("open files limit") {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(field(&line, "was"), soft, "{line}");
    let raised = field(&line, "open_files_limit");
    match hard {
        // The hard limit is the soft one: nothing to raise, and it says so.
        Some(hard) if hard == soft => assert_eq!(raised, soft, "{line}"),
        Some(hard) => assert_eq!(raised, hard, "{line}"),
        // Unlimited: raised as far as the kernel's nr_open allows.
        None => assert!(raised > soft, "{line}"),
    }
    assert_eq!(
        field(&line, "connection_cap"),
        berth::serve::connection_cap(raised) as u64,
        "{line}"
    );
}

/// The head of a `PATCH` of `len` bytes to the upload at `path` whose
/// `Content-Range` does not start at the upload's offset (0): answered 416
/// before any body byte is read.
fn out_of_order_patch_head(path: &str, len: usize) -> String {
    format!(
        "PATCH {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Range: 100-{}\r\nContent-Length: {len}\r\n\r\n",
        100 + len - 1
    )
}

/// Opens an upload over `stream`; the session's path.
async fn start_upload_over(stream: &mut (impl AsyncRead + AsyncWriteExt + Unpin)) -> String {
    let post = "POST /v2/app/blobs/uploads/ HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n";
    stream.write_all(post.as_bytes()).await.unwrap();
    let (status, head) = read_response_head(stream).await;
    assert_eq!(status, 202, "{head}");
    let location = header(&head, "location").expect("a Location");
    match location.find("/v2/") {
        Some(at) => location[at..].to_owned(),
        None => panic!("not an upload URL: {location}"),
    }
}

/// The upload at `path` still starts at 0: the answered chunk changed
/// nothing.
async fn assert_upload_untouched(
    stream: &mut (impl AsyncRead + AsyncWriteExt + Unpin),
    path: &str,
) {
    let get = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    stream.write_all(get.as_bytes()).await.unwrap();
    let (status, head) = read_response_head(stream).await;
    assert_eq!(status, 204, "{head}");
    assert_eq!(header(&head, "range").as_deref(), Some("0-0"), "{head}");
}

/// An answer sent before the request body has arrived (416 to a chunk out
/// of order) reaches a client that sends its whole body before it reads:
/// the server reads and drops the rest of the body after answering. Closed
/// with the body unread, the socket would be reset: the client's writes
/// fail, and a proxy relaying the answer drops it with the connection.
#[tokio::test]
async fn an_early_answer_reaches_a_client_that_sends_its_whole_body_first() {
    let registry = TestRegistry::start_one_with(patient).await;
    let len = 16 << 20;
    let mut stream = connect(&registry).await;
    let path = start_upload_over(&mut stream).await;
    let head = out_of_order_patch_head(&path, len);
    stream.write_all(head.as_bytes()).await.unwrap();
    // The answer is on its way before the first body byte is sent.
    stream.readable().await.unwrap();
    let sent = stream.write_all(&vec![7u8; len]).await;
    assert!(sent.is_ok(), "the body could not be sent whole: {sent:?}");
    assert_eq!(read_response(&mut stream).await, 416);
    assert!(closed_within(&mut stream, MARGIN).await);
    assert_upload_untouched(&mut connect(&registry).await, &path).await;
}

#[tokio::test]
async fn over_tls_an_early_answer_reaches_a_client_that_sends_its_whole_body_first() {
    let registry = TestRegistry::start_one_with(|config| {
        patient(config);
        config.tls_cert = Some(testdata("server.crt"));
        config.tls_key = Some(testdata("server.key"));
    })
    .await;
    let len = 16 << 20;
    let connect_tls = || async {
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        tls_connector()
            .connect(name, connect(&registry).await)
            .await
            .unwrap()
    };
    let mut tls = connect_tls().await;
    let path = start_upload_over(&mut tls).await;
    tls.write_all(out_of_order_patch_head(&path, len).as_bytes())
        .await
        .unwrap();
    tls.get_ref().0.readable().await.unwrap();
    let sent = tls.write_all(&vec![7u8; len]).await;
    assert!(sent.is_ok(), "the body could not be sent whole: {sent:?}");
    assert_eq!(read_response(&mut tls).await, 416);
    assert_upload_untouched(&mut connect_tls().await, &path).await;
}
