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
    let response = next.run(request).await;
    let status = response.status().as_u16();
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
