//! An HTTP reverse proxy between Berth and what it talks to (the object store
//! in the S3 tests, an upstream registry in the mirror tests) that logs
//! every request it forwards (so a test can count the GETs of one key, as
//! the pull-storm test does) and fails the way a test asks: it can stop
//! answering (a black hole: connections accepted, requests never answered),
//! cut every connection, rate-limit, or damage, cut short or stall a blob's
//! body. A test can so make the store unreachable under running replicas (a
//! replica refuses to start on a store it cannot reach, so the store must be
//! there at start), or an upstream misbehave under a mirror.
//!
//! Requests are forwarded byte for byte, `Host` included: S3 signatures
//! (SigV4) cover the host the client addressed, which is the proxy's.
//! Each client connection gets one upstream connection (HTTP/1.1 runs one
//! request at a time on a connection), so the proxy adds no pooling of its
//! own.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// What the proxy does with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// Forwards it to the store.
    Forward = 0,
    /// Never answers (and keeps the connection open): a store that hangs.
    BlackHole = 1,
    /// Closes the connection without an answer: a store that went away.
    Cut = 2,
    /// Forwards, but answers a ranged GET (206) with its body less the last
    /// byte and a `Content-Length` to match, its `Content-Range` as the store
    /// sent it: a store (or a middlebox) that sends fewer bytes of a range
    /// than it claims.
    ShortRanges = 3,
    /// Answers an `UploadPart` sent to a presigned URL (a part streamed as
    /// its bytes arrive) with a 500 at once, without reading its body, and
    /// forwards everything else: a store that fails a streamed part.
    FailPresignedParts = 4,
    /// Never answers an `UploadPart` sent to a presigned URL (nor reads its
    /// body), and forwards everything else: a store that stalls a streamed
    /// part.
    HangPresignedParts = 5,
    /// Answers every request 429 with `Retry-After: 7`, forwarding nothing:
    /// an upstream registry's rate limit.
    TooManyRequests = 6,
    /// Forwards, but flips the first byte of the body of every successful
    /// registry blob `GET` (`/v2/.../blobs/...`): an upstream that sends
    /// bytes other than the digest's.
    FlipBlobByte = 7,
    /// Forwards, but ends the body of every successful registry blob `GET`
    /// after half of its `Content-Length`, with an error (the connection is
    /// closed mid-body): a transfer cut short.
    TruncateBlob = 8,
    /// Forwards half of the body of every successful registry blob `GET`,
    /// then holds the rest until the mode is no longer `StallBlob`: a slow
    /// upstream, to see what clients get while a fetch is under way.
    StallBlob = 9,
    /// Answers every registry tag list `GET` (`/v2/.../tags/list`) with a
    /// 200 whose body is not JSON, and forwards everything else.
    GarbageTagList = 10,
    /// Answers every tag list `GET` with one tag and a `Link` to a next
    /// page that is the same request again: a listing without end.
    EndlessTagList = 11,
    /// Answers every tag list `GET` with a 200 of 5 MiB (a valid start of
    /// a list, growing without a close): an upstream flooding the mirror.
    OversizedTagList = 12,
    /// Answers every tag list `GET` with [`NOT_TAG_NAMES`]: names a tag can
    /// never have, beside two it can.
    NotTagNames = 13,
    /// Answers every tag list `GET` with one page of 100,001 tags (400 KB):
    /// more than a mirror keeps of one list.
    TooManyTags = 14,
    /// Answers every token request (`/auth/token`) with a token that is
    /// none and an `expires_in` of 2^64 - 1 seconds, and forwards
    /// everything else.
    EndlessTokenLifetime = 15,
    /// Answers every token request with a 200 of 5 MiB, a JSON string that
    /// never closes.
    OversizedToken = 16,
}

/// The tag list [`Mode::NotTagNames`] answers with: of these, only `1` and
/// `ok_2` are tags.
pub const NOT_TAG_NAMES: &str = r#"{"name":"x","tags":["ok_2","../escape","","-lead",".dot","a b","a/b","1","aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"]}"#;

/// One request the proxy received (in any mode).
#[derive(Debug, Clone)]
pub struct Logged {
    pub method: hyper::Method,
    /// The path, bucket first (`/berth-test/<prefix>/docker/...`).
    pub path: String,
    /// The query string (`list-type=2&prefix=...` for a listing), empty
    /// when there is none.
    pub query: String,
    /// Whether it asked for a byte range.
    pub ranged: bool,
    /// The bytes it asked for, from a `Range: bytes=a-b` header (end
    /// exclusive); `None` without one or for another form.
    pub range: Option<std::ops::Range<u64>>,
    /// Whether it is a server-side copy (`x-amz-copy-source`).
    pub copy: bool,
    /// Whether it is signed in its query (a presigned URL:
    /// `X-Amz-Signature`) rather than in its headers.
    pub presigned: bool,
    /// Whether it is a conditional read (`If-None-Match`).
    pub if_none_match: bool,
    /// The status the proxy answered with (the store's, or its own); `None`
    /// before the answer, or when there was none.
    pub status: Option<u16>,
    /// When it arrived, and when the store's answer (its head) came back:
    /// how requests overlapped, for counting round trips.
    pub arrived: std::time::Instant,
    pub answered: Option<std::time::Instant>,
    /// Its number among every request the proxy received.
    seq: u64,
}

/// The range of a `Range: bytes=a-b` header, end exclusive.
fn byte_range(headers: &hyper::HeaderMap) -> Option<std::ops::Range<u64>> {
    let value = headers.get(hyper::header::RANGE)?.to_str().ok()?;
    let (start, end) = value.strip_prefix("bytes=")?.split_once('-')?;
    Some(start.parse().ok()?..end.parse::<u64>().ok()? + 1)
}

/// A proxy on `127.0.0.1:<free port>`; dropping it closes the listener and
/// every connection.
pub struct FaultProxy {
    pub addr: SocketAddr,
    mode: Arc<AtomicU8>,
    log: Arc<Mutex<Vec<Logged>>>,
    task: JoinHandle<()>,
}

impl FaultProxy {
    /// A proxy in front of `upstream` (`http://HOST:PORT`), forwarding.
    pub async fn start(upstream: &str) -> FaultProxy {
        let upstream: SocketAddr = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .expect("an http://IP:PORT endpoint");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let mode = Arc::new(AtomicU8::new(Mode::Forward as u8));
        let log = Arc::new(Mutex::new(Vec::new()));
        let task = {
            let (mode, log) = (mode.clone(), log.clone());
            tokio::spawn(async move {
                // Owned by this task: aborting it (on drop) drops the set,
                // which aborts every connection too.
                let mut connections = JoinSet::new();
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        continue;
                    };
                    let (mode, log) = (mode.clone(), log.clone());
                    connections.spawn(serve_connection(client, upstream, mode, log));
                    while connections.try_join_next().is_some() {}
                }
            })
        };
        FaultProxy {
            addr,
            mode,
            log,
            task,
        }
    }

    /// The endpoint to give a replica: `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Applies to the next request, on new and open connections alike.
    pub fn set_mode(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }

    /// Every request received so far, in order of arrival.
    pub fn requests(&self) -> Vec<Logged> {
        self.log.lock().unwrap().clone()
    }

    /// Forgets the requests logged so far.
    pub fn clear(&self) {
        self.log.lock().unwrap().clear();
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn mode_of(mode: &AtomicU8) -> Mode {
    match mode.load(Ordering::SeqCst) {
        0 => Mode::Forward,
        1 => Mode::BlackHole,
        2 => Mode::Cut,
        3 => Mode::ShortRanges,
        4 => Mode::FailPresignedParts,
        5 => Mode::HangPresignedParts,
        6 => Mode::TooManyRequests,
        7 => Mode::FlipBlobByte,
        8 => Mode::TruncateBlob,
        9 => Mode::StallBlob,
        10 => Mode::GarbageTagList,
        11 => Mode::EndlessTagList,
        12 => Mode::OversizedTagList,
        13 => Mode::NotTagNames,
        14 => Mode::TooManyTags,
        15 => Mode::EndlessTokenLifetime,
        _ => Mode::OversizedToken,
    }
}

async fn serve_connection(
    client: TcpStream,
    upstream: SocketAddr,
    mode: Arc<AtomicU8>,
    log: Arc<Mutex<Vec<Logged>>>,
) {
    let _ = client.set_nodelay(true);
    // The upstream connection, opened at the first request to forward; one
    // request at a time, as on the client's side.
    let sender: Arc<tokio::sync::Mutex<Option<SendRequest<Incoming>>>> = Arc::default();
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let (mode, log, sender) = (mode.clone(), log.clone(), sender.clone());
        async move {
            static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let seq = SEQ.fetch_add(1, Ordering::Relaxed);
            let query = request.uri().query().unwrap_or_default().to_owned();
            let presigned = query.contains("X-Amz-Signature=");
            let streamed_part = presigned
                && request.method() == hyper::Method::PUT
                && query.contains("partNumber=");
            let answered = |status: Option<u16>| {
                // Not there when the log was cleared meanwhile.
                let mut log = log.lock().unwrap();
                if let Some(entry) = log.iter_mut().rev().find(|e| e.seq == seq) {
                    entry.answered = Some(std::time::Instant::now());
                    entry.status = status;
                }
            };
            {
                log.lock().unwrap().push(Logged {
                    method: request.method().clone(),
                    path: request.uri().path().to_owned(),
                    query,
                    ranged: request.headers().contains_key(hyper::header::RANGE),
                    range: byte_range(request.headers()),
                    copy: request.headers().contains_key("x-amz-copy-source"),
                    presigned,
                    if_none_match: request.headers().contains_key(hyper::header::IF_NONE_MATCH),
                    status: None,
                    arrived: std::time::Instant::now(),
                    answered: None,
                    seq,
                });
            }
            let mode_now = mode.clone();
            match mode_of(&mode) {
                Mode::FailPresignedParts if streamed_part => {
                    answered(Some(500));
                    let body = Full::new(Bytes::from_static(
                        b"<Error><Code>InternalError</Code><Message>failed by the test proxy</Message></Error>",
                    ))
                    .map_err(|never| match never {})
                    .boxed_unsync();
                    let mut response = Response::new(body);
                    *response.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
                    Ok(response)
                }
                Mode::HangPresignedParts if streamed_part => std::future::pending().await,
                mode @ (Mode::GarbageTagList
                | Mode::EndlessTagList
                | Mode::OversizedTagList
                | Mode::NotTagNames
                | Mode::TooManyTags)
                    if request.method() == hyper::Method::GET
                        && request.uri().path().ends_with("/tags/list") =>
                {
                    answered(Some(200));
                    Ok(hostile_tag_list(mode, request.uri()))
                }
                mode @ (Mode::EndlessTokenLifetime | Mode::OversizedToken)
                    if request.uri().path().starts_with("/auth/token") =>
                {
                    answered(Some(200));
                    Ok(hostile_token(mode))
                }
                Mode::TooManyRequests => {
                    answered(Some(429));
                    let body = Full::new(Bytes::from_static(
                        br#"{"errors":[{"code":"TOOMANYREQUESTS","message":"rate limited by the test proxy"}]}"#,
                    ))
                    .map_err(|never| match never {})
                    .boxed_unsync();
                    let mut response = Response::new(body);
                    *response.status_mut() = hyper::StatusCode::TOO_MANY_REQUESTS;
                    response.headers_mut().insert(
                        hyper::header::RETRY_AFTER,
                        hyper::header::HeaderValue::from_static("7"),
                    );
                    Ok(response)
                }
                mode @ (Mode::Forward
                | Mode::ShortRanges
                | Mode::FailPresignedParts
                | Mode::HangPresignedParts
                | Mode::FlipBlobByte
                | Mode::TruncateBlob
                | Mode::StallBlob
                | Mode::GarbageTagList
                | Mode::EndlessTagList
                | Mode::OversizedTagList
                | Mode::NotTagNames
                | Mode::TooManyTags
                | Mode::EndlessTokenLifetime
                | Mode::OversizedToken) => {
                    let ranged = request.headers().contains_key(hyper::header::RANGE);
                    let blob_get = request.method() == hyper::Method::GET
                        && request.uri().path().starts_with("/v2/")
                        && request.uri().path().contains("/blobs/");
                    let answer = forward(request, upstream, &sender).await;
                    let answer = match answer {
                        Ok(response)
                            if mode == Mode::ShortRanges
                                && ranged
                                && response.status() == hyper::StatusCode::PARTIAL_CONTENT =>
                        {
                            shortened(response).await
                        }
                        Ok(response)
                            if blob_get
                                && response.status() == hyper::StatusCode::OK
                                && matches!(
                                    mode,
                                    Mode::FlipBlobByte | Mode::TruncateBlob | Mode::StallBlob
                                ) =>
                        {
                            Ok(damaged(response, mode, mode_now))
                        }
                        other => other
                            .map(|response| response.map(|b| b.map_err(Into::into).boxed_unsync())),
                    };
                    answered(answer.as_ref().ok().map(|r| r.status().as_u16()));
                    answer
                }
                Mode::BlackHole => std::future::pending().await,
                // An error from the service makes hyper close the connection
                // without an answer.
                Mode::Cut => Err(std::io::Error::other("cut by the test proxy")),
            }
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(client), service)
        .await;
}

/// A response body as the proxy sends it: the store's, or one it made.
type ProxyBody = UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// A blob `GET`'s answer (a 200) damaged as `mode` says: its first byte
/// flipped, its body cut after half its length, or its second half held
/// until `mode_now` leaves [`Mode::StallBlob`]. Headers are left as sent.
fn damaged(
    response: Response<Incoming>,
    mode: Mode,
    mode_now: Arc<AtomicU8>,
) -> Response<ProxyBody> {
    use futures::StreamExt;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    struct Sending {
        frames: std::pin::Pin<Box<dyn futures::Stream<Item = Result<Bytes, Error>> + Send>>,
        sent: u64,
        /// The second half of a stalled body, held back.
        held: Option<Bytes>,
        stalled: bool,
    }
    let (parts, body) = response.into_parts();
    let length: u64 = parts
        .headers
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(0);
    let half = length / 2;
    let start = Sending {
        frames: Box::pin(
            body.into_data_stream()
                .map(|chunk| chunk.map_err(Error::from)),
        ),
        sent: 0,
        held: None,
        stalled: false,
    };
    let damaged = futures::stream::unfold(start, move |mut at| {
        let mode_now = mode_now.clone();
        async move {
            if let Some(rest) = at.held.take() {
                while mode_of(&mode_now) == Mode::StallBlob {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                at.sent += rest.len() as u64;
                return Some((Ok(rest), at));
            }
            let mut chunk = match at.frames.next().await? {
                Ok(chunk) => chunk,
                Err(e) => return Some((Err(e), at)),
            };
            let over_half = at.sent + chunk.len() as u64 > half;
            match mode {
                Mode::FlipBlobByte if at.sent == 0 && !chunk.is_empty() => {
                    let mut flipped = chunk.to_vec();
                    flipped[0] ^= 0xff;
                    chunk = Bytes::from(flipped);
                }
                Mode::TruncateBlob if over_half => {
                    if at.sent >= half {
                        return Some((Err("cut short by the test proxy".into()), at));
                    }
                    chunk.truncate((half - at.sent) as usize);
                }
                Mode::StallBlob if over_half && !at.stalled => {
                    at.stalled = true;
                    at.held = Some(chunk.split_off((half - at.sent) as usize));
                }
                _ => {}
            }
            at.sent += chunk.len() as u64;
            Some((Ok(chunk), at))
        }
    });
    let body =
        http_body_util::StreamBody::new(damaged.map(|chunk| chunk.map(hyper::body::Frame::data)));
    Response::from_parts(parts, BodyExt::boxed_unsync(body))
}

/// A tag list `GET`'s answer from a hostile upstream, as `mode` says.
fn hostile_tag_list(mode: Mode, uri: &hyper::Uri) -> Response<ProxyBody> {
    let body = match mode {
        Mode::GarbageTagList => whole(br#"{"name":"x","tags":["1",<html>"#),
        Mode::EndlessTagList => whole(br#"{"name":"x","tags":["1"]}"#),
        // 5 MiB in 64 KiB frames: `["t","t",...` never closed.
        Mode::OversizedTagList => unending(br#"{"name":"x","tags":["#, "\"t\","),
        Mode::TooManyTags => {
            let tags = vec!["t"; 100_001];
            let body = serde_json::json!({"name": "x", "tags": tags}).to_string();
            Full::new(Bytes::from(body))
                .map_err(|never| match never {})
                .boxed_unsync()
        }
        _ => whole(NOT_TAG_NAMES.as_bytes()),
    };
    let mut response = json_answer(body);
    if mode == Mode::EndlessTagList {
        let link = format!("<{}?n=1&last=1>; rel=\"next\"", uri.path());
        response
            .headers_mut()
            .insert(hyper::header::LINK, link.parse().expect("a header value"));
    }
    response
}

/// A token request's answer from a hostile token endpoint, as `mode` says.
fn hostile_token(mode: Mode) -> Response<ProxyBody> {
    json_answer(match mode {
        Mode::EndlessTokenLifetime => {
            whole(br#"{"token":"not-a-token","expires_in":18446744073709551615}"#)
        }
        // A token that never ends: 5 MiB and counting.
        _ => unending(br#"{"token":""#, "a"),
    })
}

fn whole(body: &'static [u8]) -> ProxyBody {
    Full::new(Bytes::from_static(body))
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// `start`, then `unit` repeated for 5 MiB, in 64 KiB frames: a JSON
/// document that is never closed.
fn unending(start: &'static [u8], unit: &str) -> ProxyBody {
    let frame = Bytes::from(unit.repeat((64 << 10) / unit.len()));
    let frames = std::iter::once(Bytes::from_static(start)).chain(std::iter::repeat_n(frame, 80));
    let stream = futures::stream::iter(
        frames.map(|bytes| Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(bytes))),
    );
    http_body_util::StreamBody::new(stream)
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A 200 with `body`, as JSON.
fn json_answer(body: ProxyBody) -> Response<ProxyBody> {
    let mut response = Response::new(body);
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

/// `response` (a 206) with its body less the last byte.
async fn shortened(response: Response<Incoming>) -> Result<Response<ProxyBody>, std::io::Error> {
    let (mut parts, body) = response.into_parts();
    let mut body = body
        .collect()
        .await
        .map_err(std::io::Error::other)?
        .to_bytes();
    body.truncate(body.len().saturating_sub(1));
    parts.headers.insert(
        hyper::header::CONTENT_LENGTH,
        hyper::header::HeaderValue::from(body.len()),
    );
    let body = Full::new(body)
        .map_err(|never| match never {})
        .boxed_unsync();
    Ok(Response::from_parts(parts, body))
}

async fn forward(
    request: Request<Incoming>,
    upstream: SocketAddr,
    sender: &tokio::sync::Mutex<Option<SendRequest<Incoming>>>,
) -> Result<Response<Incoming>, std::io::Error> {
    let mut sender = sender.lock().await;
    if sender.as_ref().is_none_or(|s| s.is_closed()) {
        let stream = TcpStream::connect(upstream).await?;
        let _ = stream.set_nodelay(true);
        let (send, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(connection);
        *sender = Some(send);
    }
    let send = sender.as_mut().expect("connected");
    send.ready().await.map_err(std::io::Error::other)?;
    send.send_request(request)
        .await
        .map_err(std::io::Error::other)
}

mod checks {
    use super::*;

    /// A tiny HTTP server that answers every request with its method and
    /// path and the Host it was sent to.
    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(|request: Request<Incoming>| async move {
                            let host = request.headers()[hyper::header::HOST]
                                .to_str()
                                .unwrap()
                                .to_owned();
                            let body =
                                format!("{} {} {host}", request.method(), request.uri().path());
                            Ok::<_, std::io::Error>(Response::new(http_body_util::Full::new(
                                bytes::Bytes::from(body),
                            )))
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn forwards_with_the_clients_host_logs_and_can_stop_answering() {
        let upstream = echo_server().await;
        let proxy = FaultProxy::start(&format!("http://{upstream}")).await;
        let client = reqwest::Client::new();
        let url = format!("{}/bucket/key", proxy.endpoint());
        let answer = client.get(&url).send().await.unwrap().text().await.unwrap();
        // The Host the client addressed reaches the store unchanged.
        assert_eq!(answer, format!("GET /bucket/key {}", proxy.addr));
        let resp = client
            .head(&url)
            .header("range", "bytes=0-1")
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success());
        let log = proxy.requests();
        assert_eq!(log.len(), 2);
        assert_eq!((log[0].method.as_str(), log[0].ranged), ("GET", false));
        assert_eq!((log[1].method.as_str(), log[1].ranged), ("HEAD", true));

        // On the connection the client keeps open, too.
        proxy.set_mode(Mode::Cut);
        assert!(client.get(&url).send().await.is_err(), "a cut connection");
        proxy.set_mode(Mode::BlackHole);
        let hung = tokio::time::timeout(
            std::time::Duration::from_millis(300),
            client.get(&url).send(),
        )
        .await;
        assert!(hung.is_err(), "a black hole never answers");
        proxy.set_mode(Mode::Forward);
        let answer = client.get(&url).send().await.unwrap().text().await.unwrap();
        assert!(answer.starts_with("GET /bucket/key"));
        assert_eq!(proxy.requests().len(), 5);
    }
}
