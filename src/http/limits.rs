//! Request limits (`[limits]`): a rate per client, and how many blob uploads
//! are received at once. Over either, 429 `TOOMANYREQUESTS` with
//! `Retry-After`, before the request reaches access control or storage.
//!
//! The rate is a GCRA per client address (the `governor` crate, keyed by
//! address): `requests_per_second` sustained, `burst` at once. The address
//! is the peer's, or behind `auth.trusted_proxies` the one they report
//! (`client_addr.rs`): a client cannot pick the address it is limited under
//! by sending a forwarding header itself. `/healthz`, `/readyz` and
//! `/metrics` are never limited: probes and scrapes must not be refused.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use tokio::sync::Semaphore;

use super::client_addr::client_view;
use super::routes::{self, Resource};
use super::ApiError;
use crate::auth::{ForwardedHeader, TrustedProxy};
use crate::metrics::{Metrics, ReasonLabels};
use crate::oci::{ErrorCode, RegistryError};

/// Client addresses whose rate state is kept before the idle ones are
/// dropped (an idle client's state is full again, so dropping it loses
/// nothing).
const MAX_TRACKED_CLIENTS: usize = 100_000;

/// The limits in force.
pub struct RequestLimits {
    per_client: Option<DefaultKeyedRateLimiter<IpAddr>>,
    uploads: Option<Arc<Semaphore>>,
    max_uploads: usize,
    proxies: Vec<TrustedProxy>,
    forwarded_header: ForwardedHeader,
    metrics: Arc<Metrics>,
}

impl RequestLimits {
    /// `None` when nothing is limited.
    pub fn new(
        requests_per_second: Option<u32>,
        burst: Option<u32>,
        max_uploads: Option<usize>,
        proxies: Vec<TrustedProxy>,
        forwarded_header: ForwardedHeader,
        metrics: Arc<Metrics>,
    ) -> Option<Arc<RequestLimits>> {
        let rate = requests_per_second.and_then(NonZeroU32::new);
        if rate.is_none() && max_uploads.is_none() {
            return None;
        }
        let per_client = rate.map(|rate| {
            let burst = burst.and_then(NonZeroU32::new).unwrap_or(rate);
            DefaultKeyedRateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        Some(Arc::new(RequestLimits {
            per_client,
            uploads: max_uploads.map(|n| Arc::new(Semaphore::new(n))),
            max_uploads: max_uploads.unwrap_or(0),
            proxies,
            forwarded_header,
            metrics,
        }))
    }

    /// How long `parts`' client must wait before its next request, when it
    /// is over its rate now.
    fn over_rate(&self, parts: &Parts) -> Option<Duration> {
        let limiter = self.per_client.as_ref()?;
        let client = client_view(parts, &self.proxies, self.forwarded_header).addr;
        if limiter.len() > MAX_TRACKED_CLIENTS {
            limiter.retain_recent();
        }
        limiter
            .check_key(&client)
            .err()
            .map(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    fn refuse(&self, reason: &'static str, retry_after: Duration, detail: String) -> Response {
        self.metrics
            .rate_limited
            .get_or_create(&ReasonLabels { reason })
            .inc();
        let mut response = ApiError::from(RegistryError::with_detail(
            ErrorCode::TooManyRequests,
            detail,
        ))
        .into_response();
        let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        response
    }
}

/// Middleware: the rate per client, then the uploads at once.
pub async fn limit(
    State(limits): State<Arc<RequestLimits>>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    if matches!(path, "/healthz" | "/readyz" | "/metrics") {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    if let Some(wait) = limits.over_rate(&parts) {
        return limits.refuse(
            "requests",
            wait,
            "too many requests from this client: slow down".to_owned(),
        );
    }
    let uploading = parts.method != Method::GET
        && parts.method != Method::HEAD
        && matches!(
            routes::resource_of(parts.uri.path()),
            Some(Resource::UploadStart | Resource::Upload)
        );
    let _permit = match (&limits.uploads, uploading) {
        (Some(uploads), true) => match uploads.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => {
                return limits.refuse(
                    "uploads",
                    Duration::from_secs(1),
                    format!(
                        "{} uploads are being received: try again shortly",
                        limits.max_uploads
                    ),
                )
            }
        },
        _ => None,
    };
    next.run(Request::from_parts(parts, body)).await
}
