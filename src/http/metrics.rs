//! `GET /metrics`, and the middleware that counts every request into the
//! registry's [`Metrics`]: by method, kind of resource (the route table's,
//! never the path) and status; its duration to the end of the response
//! body; the body bytes read and sent; blob uploads in progress.
//!
//! Bodies are wrapped, not copied: each frame passes through as it is (a
//! zero-copy blob's placeholder frames included, `serve/zero_copy.rs`), and
//! the size hint is the inner body's, so `Content-Length` is unchanged.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper::body::{Frame, SizeHint};
use prometheus_client::metrics::counter::Counter;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::routes::{self, Resource};
use crate::auth::Secret;
use crate::metrics::{self, Metrics, RequestLabels, RouteLabels};

/// Who may scrape: anyone (the default, like `/healthz`), or only who
/// sends `Authorization: Bearer <token>` with the token of `[metrics]
/// token_file` (Prometheus's `authorization: {credentials_file: ...}`).
#[derive(Clone, Default)]
pub struct ScrapeAccess {
    /// The token's SHA-256: compared in constant time with the offered
    /// one's, so neither its bytes nor its length leak through timing.
    token_sha256: Option<[u8; 32]>,
}

impl ScrapeAccess {
    pub fn anyone() -> ScrapeAccess {
        ScrapeAccess::default()
    }

    pub fn with_token(token: &Secret) -> ScrapeAccess {
        ScrapeAccess {
            token_sha256: Some(Sha256::digest(token.expose().as_bytes()).into()),
        }
    }

    fn allows(&self, headers: &HeaderMap) -> bool {
        let Some(expected) = &self.token_sha256 else {
            return true;
        };
        let offered = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| {
                let (scheme, token) = value.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            });
        offered.is_some_and(|token| {
            let offered: [u8; 32] = Sha256::digest(token.as_bytes()).into();
            bool::from(offered.ct_eq(expected))
        })
    }
}

/// What the scrape handler holds.
#[derive(Clone)]
pub struct ScrapeState {
    pub metrics: Arc<Metrics>,
    pub access: ScrapeAccess,
}

/// `GET /metrics`: the text a Prometheus scrape reads.
pub async fn scrape(
    State(ScrapeState { metrics, access }): State<ScrapeState>,
    headers: HeaderMap,
) -> Response {
    if !access.allows(&headers) {
        metrics
            .auth_failures
            .get_or_create(&metrics::ReasonLabels {
                reason: "metrics_token",
            })
            .inc();
        return (
            StatusCode::UNAUTHORIZED,
            [(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"metrics\""),
            )],
            "a scrape of /metrics needs the bearer token of [metrics] token_file\n",
        )
            .into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(metrics::CONTENT_TYPE),
        )],
        metrics.encode(),
    )
        .into_response()
}

/// Middleware: counts the request and its response (see the module).
pub async fn observe(
    State(metrics): State<Arc<Metrics>>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = method_label(request.method());
    let route = route_label(request.uri().path());
    let labels = RouteLabels { method, route };
    let uploading = route == "upload" && request.method() != Method::GET;
    let _in_progress = uploading.then(|| InProgress::start(&metrics));
    let received = metrics.http_received_bytes.get_or_create_owned(&labels);
    let request = request.map(|body| {
        Body::new(Counted {
            inner: body,
            bytes: received,
            timed: None,
        })
    });
    let response = next.run(request).await;
    metrics
        .http_requests
        .get_or_create(&RequestLabels {
            method,
            route,
            status: response.status().as_u16(),
        })
        .inc();
    let sent = metrics.http_sent_bytes.get_or_create_owned(&labels);
    response.map(|body| {
        Body::new(Counted {
            inner: body,
            bytes: sent,
            timed: Some(Timing {
                started,
                labels,
                metrics,
            }),
        })
    })
}

/// The method as a label: the ones the API uses, else `other` (a client's
/// made-up methods must not make new series).
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// The kind of resource a path names, from the route table (`/v2/...`) or
/// the few other routes; `other` for anything else.
fn route_label(path: &str) -> &'static str {
    match path {
        "/v2" | "/v2/" => return "base",
        "/healthz" | "/readyz" => return "health",
        "/metrics" => return "metrics",
        // The web UI: its pages (the root redirects there), assets and session.
        "/" => return "ui",
        _ if path == "/ui" || path.starts_with("/ui/") => return "ui",
        _ if path == super::token::TOKEN_PATH => return "token",
        _ => {}
    }
    routes::resource_of(path).map_or("other", Resource::label)
}

/// Counts an upload request while it is handled.
struct InProgress(Arc<Metrics>);

impl InProgress {
    fn start(metrics: &Arc<Metrics>) -> InProgress {
        metrics.uploads_in_progress.inc();
        InProgress(metrics.clone())
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.uploads_in_progress.dec();
    }
}

/// A body whose data frames are counted into `bytes` as they pass; a
/// response's also observes the request's duration when it is done with
/// (sent whole, or dropped by a client that left).
struct Counted {
    inner: Body,
    bytes: Counter,
    timed: Option<Timing>,
}

struct Timing {
    started: Instant,
    labels: RouteLabels,
    metrics: Arc<Metrics>,
}

impl HttpBody for Counted {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                self.bytes.inc_by(data.len() as u64);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        if let Some(timing) = &self.timed {
            timing
                .metrics
                .http_request_duration
                .get_or_create(&timing.labels)
                .observe(timing.started.elapsed().as_secs_f64());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_labelled_by_kind_never_by_name() {
        let label = route_label;
        assert_eq!(label("/v2/"), "base");
        assert_eq!(label("/v2/team/app/blobs/sha256:ab"), "blob");
        assert_eq!(label("/v2/team/app/blobs/uploads/"), "upload");
        assert_eq!(label("/v2/team/app/blobs/uploads/1234"), "upload");
        assert_eq!(label("/v2/a/b/c/manifests/latest"), "manifest");
        assert_eq!(label("/v2/team/app/tags/list"), "tags");
        assert_eq!(label("/v2/_catalog"), "catalog");
        assert_eq!(label("/v2/x/referrers/sha256:ab"), "referrers");
        assert_eq!(label("/v2/x/_berth/tags/1/history"), "tag_history");
        assert_eq!(label("/metrics"), "metrics");
        assert_eq!(label("/healthz"), "health");
        assert_eq!(label("/ui/r/team/app"), "ui");
        assert_eq!(label("/ui/api/session"), "ui");
        assert_eq!(label("/"), "ui");
        assert_eq!(label("/v2/x/_berth/tags"), "tags");
        assert_eq!(label("/v2/_berth/robots/ci/secret"), "robots");
        assert_eq!(label("/uix"), "other");
        assert_eq!(label("/favicon.ico"), "other");
        assert_eq!(label("/v2/nothing-here"), "other");
    }
}
