//! One log line per request: method, path, status, bytes, duration. The
//! query string is left out (it can carry upload state or, with auth, tokens).

use std::time::Instant;

use axum::body::HttpBody;
use axum::extract::Request;
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;

pub async fn log_request(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let request_bytes = content_length(request.headers());
    // The request's span (exported as a trace with `[traces]`; debug level,
    // so not even created without).
    let span = tracing::debug_span!(
        "request",
        otel.name = %format!("{method} {}", route_name(&path)),
        otel.kind = "server",
        http.request.method = %method,
        url.path = %path,
        http.response.status_code = tracing::field::Empty,
    );
    if !span.is_disabled() {
        crate::traces::continue_trace(&span, request.headers());
    }
    let response = tracing::Instrument::instrument(next.run(request), span.clone()).await;
    let status = response.status().as_u16();
    span.record("http.response.status_code", status);
    // Bodies built in memory have an exact size before hyper sets the header.
    let response_bytes = HttpBody::size_hint(response.body())
        .exact()
        .unwrap_or_else(|| content_length(response.headers()));
    let duration_ms = started.elapsed().as_secs_f64() * 1000.0;
    tracing::info!(
        target: "berth::request",
        %method,
        path,
        status,
        request_bytes,
        response_bytes,
        duration_ms,
        "request"
    );
    response
}

fn content_length(headers: &axum::http::HeaderMap) -> u64 {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A span's name: the route's kind, not the path (whose names would make
/// every repository a span name of its own).
fn route_name(path: &str) -> &'static str {
    match super::routes::resource_of(path) {
        Some(resource) => resource.label(),
        None if path == "/v2" || path == "/v2/" => "base",
        None => "other",
    }
}
