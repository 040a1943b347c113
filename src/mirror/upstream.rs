//! The upstream registry client of a mirror: manifest and blob requests to
//! another registry's `/v2/` API, anonymous (docs/design/mirror.md §4).
//! reqwest (already in the binary through object_store) brings pooling,
//! HTTP/2, timeouts and redirects that drop `Authorization` across hosts
//! (Docker Hub sends blob GETs to a CDN).

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::TryStreamExt;
use reqwest::{header, Method, StatusCode};

use crate::oci::{Digest, ErrorCode, RegistryError};
use crate::registry::ByteStream;

/// The manifest types a mirror asks for, in one fixed `Accept`, so that a
/// tag's digest does not depend on the client that asked (never Docker's
/// schema 1).
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.docker.distribution.manifest.v2+json";

/// How long a manifest request, a `HEAD` or a blob response's headers may
/// take in all.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// The longest wait between two reads of a response (a blob's body has no
/// total bound: a layer may be gigabytes).
const READ_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What the upstream answered.
pub(super) enum Answer<T> {
    Found(T),
    /// 404: the upstream does not have it.
    NotFound,
    /// Anything else: unreachable, too slow, an error status.
    Failed(Failure),
}

/// Why an upstream request failed, as the client of the mirror hears it.
#[derive(Debug, Clone)]
pub(super) struct Failure {
    /// 429 from the upstream: the mirror answers 429 too.
    pub too_many_requests: bool,
    pub why: String,
}

impl Failure {
    pub(super) fn into_error(self, upstream: &str) -> RegistryError {
        let code = if self.too_many_requests {
            ErrorCode::TooManyRequests
        } else {
            ErrorCode::Unavailable
        };
        RegistryError::with_detail(code, format!("upstream {upstream}: {}", self.why))
    }
}

/// A manifest as the upstream sent it.
pub(super) struct FetchedManifest {
    pub content_type: Option<String>,
    pub body: Bytes,
    /// `Docker-Content-Digest`, when sent.
    pub digest: Option<Digest>,
}

/// A blob response: its body and declared length.
pub(super) struct FetchedBlob {
    pub body: ByteStream,
    pub length: Option<u64>,
}

pub(super) struct Upstream {
    http: reqwest::Client,
}

impl Upstream {
    pub(super) fn new() -> Result<Upstream, String> {
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .build()
            .map_err(|e| format!("building the upstream client: {e}"))?;
        Ok(Upstream { http })
    }

    /// `HEAD` of a manifest: the digest the upstream names it by, `None`
    /// when it sent none.
    pub(super) async fn manifest_digest(&self, url: &str) -> Answer<Option<Digest>> {
        let request = self
            .http
            .request(Method::HEAD, url)
            .header(header::ACCEPT, MANIFEST_ACCEPT)
            .timeout(REQUEST_TIMEOUT);
        match send(request).await {
            Answer::Found(response) => Answer::Found(content_digest(&response)),
            Answer::NotFound => Answer::NotFound,
            Answer::Failed(f) => Answer::Failed(f),
        }
    }

    /// `GET` of a manifest, at most `limit` bytes.
    pub(super) async fn manifest(&self, url: &str, limit: usize) -> Answer<FetchedManifest> {
        let request = self
            .http
            .get(url)
            .header(header::ACCEPT, MANIFEST_ACCEPT)
            .timeout(REQUEST_TIMEOUT);
        let response = match send(request).await {
            Answer::Found(response) => response,
            Answer::NotFound => return Answer::NotFound,
            Answer::Failed(f) => return Answer::Failed(f),
        };
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|t| t.split(';').next().unwrap_or_default().trim().to_owned());
        let digest = content_digest(&response);
        let mut body = BytesMut::new();
        let mut stream = response.bytes_stream();
        loop {
            match stream.try_next().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > limit {
                        return Answer::Failed(failure(format!(
                            "a manifest over the {limit}-byte limit"
                        )));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => {
                    return Answer::Failed(failure(format!("reading a manifest: {e}")));
                }
            }
        }
        Answer::Found(FetchedManifest {
            content_type,
            body: body.freeze(),
            digest,
        })
    }

    /// `HEAD` of a blob: its size.
    pub(super) async fn blob_size(&self, url: &str) -> Answer<u64> {
        let request = self.http.head(url).timeout(REQUEST_TIMEOUT);
        match send(request).await {
            Answer::Found(response) => match content_length(&response) {
                Some(size) => Answer::Found(size),
                None => Answer::Failed(failure("a blob HEAD without Content-Length".into())),
            },
            Answer::NotFound => Answer::NotFound,
            Answer::Failed(f) => Answer::Failed(f),
        }
    }

    /// `GET` of a blob: its body as it arrives.
    pub(super) async fn blob(&self, url: &str) -> Answer<FetchedBlob> {
        // The bound covers the response's headers only: `send` returns
        // once they are in, and the body is read under `READ_TIMEOUT`.
        let request = self.http.get(url);
        let response = match tokio::time::timeout(REQUEST_TIMEOUT, send(request)).await {
            Ok(Answer::Found(response)) => response,
            Ok(Answer::NotFound) => return Answer::NotFound,
            Ok(Answer::Failed(f)) => return Answer::Failed(f),
            Err(_) => {
                return Answer::Failed(failure(format!(
                    "no answer to a blob GET in {} s",
                    REQUEST_TIMEOUT.as_secs()
                )))
            }
        };
        let length = content_length(&response);
        let body = response
            .bytes_stream()
            .map_err(|e| std::io::Error::other(format!("reading a blob from upstream: {e}")));
        Answer::Found(FetchedBlob {
            body: Box::pin(body),
            length,
        })
    }
}

fn failure(why: String) -> Failure {
    Failure {
        too_many_requests: false,
        why,
    }
}

/// Sends a request: a 2xx answer, a 404, or what went wrong.
async fn send(request: reqwest::RequestBuilder) -> Answer<reqwest::Response> {
    match request.send().await {
        Ok(response) if response.status().is_success() => Answer::Found(response),
        Ok(response) if response.status() == StatusCode::NOT_FOUND => Answer::NotFound,
        Ok(response) => Answer::Failed(Failure {
            too_many_requests: response.status() == StatusCode::TOO_MANY_REQUESTS,
            why: format!("answered {}", response.status()),
        }),
        Err(e) if e.is_timeout() => Answer::Failed(failure("timed out".into())),
        Err(e) if e.is_connect() => Answer::Failed(failure("unreachable".into())),
        Err(e) => Answer::Failed(failure(format!("request failed: {e}"))),
    }
}

fn content_digest(response: &reqwest::Response) -> Option<Digest> {
    response
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

fn content_length(response: &reqwest::Response) -> Option<u64> {
    response
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}
