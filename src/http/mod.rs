//! The HTTP API (distribution-spec `/v2/`), axum only. Handlers parse and
//! validate what the request says, call the [`Registry`], and render the
//! spec's headers and bodies; they hold no registry rules of their own.
//! With access control on, [`auth`] authorises every `/v2/` request before
//! its handler runs, and [`token`] serves the token endpoint.

mod audit;
pub mod auth;
mod blobs;
mod catalog;
mod client_addr;
pub mod connection;
mod error;
#[cfg(test)]
mod fuzz_tests;
mod host;
mod limits;
mod login_cache;
mod manifests;
mod metrics;
mod mirrors;
mod range;
mod referrers;
mod repositories;
mod request_log;
mod robots;
mod routes;
mod settings;
mod tag_history;
mod tags;
mod token;
mod token_cache;
mod ui;
mod uploads;
mod usage;

use std::io;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use futures::TryStreamExt;
use tower_http::set_header::SetResponseHeaderLayer;

pub use audit::AuditLog;
pub use connection::{downloads_in_flight, Download, FileSender, OverTls, SendFile};
pub use error::{status_of, ApiError, ApiResult};
pub use limits::RequestLimits;
pub use metrics::ScrapeAccess;
pub use robots::RegistryRobots;
pub use settings::SettingsGrants;
pub use ui::UiOptions;

use crate::events::{EventKind, Events, Happened};
use crate::mirror::Mirror;
use crate::oci::{Digest, ErrorCode, RegistryError, RepositoryName};
use crate::registry::Registry;
use crate::registry::RequestBody;
use auth::{AccessControl, Caller};

pub const DOCKER_CONTENT_DIGEST: HeaderName = HeaderName::from_static("docker-content-digest");
pub const DOCKER_UPLOAD_UUID: HeaderName = HeaderName::from_static("docker-upload-uuid");
/// The smallest chunk a registry wants in a chunked upload (distribution-spec).
pub const OCI_CHUNK_MIN_LENGTH: HeaderName = HeaderName::from_static("oci-chunk-min-length");
/// The registry a mirror served a `?ns=` request for (distribution-spec,
/// "Registry Proxying").
pub const OCI_NAMESPACE: HeaderName = HeaderName::from_static("oci-namespace");
pub const API_VERSION: HeaderName = HeaderName::from_static("docker-distribution-api-version");

/// What every handler shares: the registry, and access control when it is
/// on (`None`: everyone may do everything).
#[derive(Clone)]
pub struct AppState {
    pub registry: Arc<Registry>,
    pub access: Option<Arc<AccessControl>>,
    /// Upstream registries mirrored under local prefixes, when configured.
    pub mirror: Option<Arc<Mirror>>,
    /// Where changes and refusals are recorded, when configured.
    pub audit: Option<Arc<AuditLog>>,
    /// Where CI/CD events go, when endpoints are configured.
    pub events: Option<Arc<Events>>,
    /// The web UI, when served.
    pub ui: Option<ui::UiOptions>,
}

/// What the application serves beside the registry, each when configured.
#[derive(Default)]
pub struct Services {
    pub access: Option<Arc<AccessControl>>,
    pub mirror: Option<Arc<Mirror>>,
    pub limits: Option<Arc<RequestLimits>>,
    pub audit: Option<Arc<AuditLog>>,
    pub events: Option<Arc<Events>>,
    /// `GET /metrics` on this router, open to whom this allows.
    pub serve_metrics: Option<ScrapeAccess>,
    /// The web UI (`/`, `/ui/`), when served.
    pub ui: Option<ui::UiOptions>,
}

/// The whole HTTP application for a registry.
pub fn router(registry: Arc<Registry>, services: Services) -> Router {
    let Services {
        access,
        mirror,
        limits,
        audit,
        events,
        serve_metrics,
        ui,
    } = services;
    let metrics = registry.metrics().clone();
    let mut router = Router::new();
    if ui.is_some() {
        router = router
            .route("/", get(ui::root))
            .route(
                "/ui",
                get(|| async { axum::response::Redirect::permanent("/ui/") }),
            )
            .route("/ui/", get(ui::asset))
            .route("/ui/{*rest}", get(ui::asset))
            .route(
                "/ui/api/session",
                get(ui::whoami).post(ui::login).delete(ui::logout),
            );
    }
    if let Some(access) = serve_metrics {
        let state = metrics::ScrapeState {
            metrics: metrics.clone(),
            access,
        };
        router = router.route("/metrics", get(metrics::scrape).with_state(state));
    }
    let router = router
        .route("/v2", get(base))
        .route("/v2/", get(base))
        .route("/v2/{*rest}", any(dispatch))
        .route(token::TOKEN_PATH, get(token::get).post(token::post))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .fallback(not_found)
        // Every route, the fallback included: no handler sees a request
        // whose Host is missing, repeated or invalid.
        .layer(axum::middleware::from_fn(check_host))
        .layer(SetResponseHeaderLayer::overriding(
            API_VERSION,
            HeaderValue::from_static("registry/2.0"),
        ))
        .with_state(AppState {
            registry,
            access,
            mirror,
            audit,
            events,
            ui,
        });
    // Outermost last: a request is counted and logged even when a limit
    // refuses it.
    let router = match limits {
        Some(limits) => router.layer(axum::middleware::from_fn_with_state(limits, limits::limit)),
        None => router,
    };
    router
        .layer(axum::middleware::from_fn(request_log::log_request))
        .layer(axum::middleware::from_fn_with_state(
            metrics,
            metrics::observe,
        ))
}

/// `GET /v2/`: the API is here (end-1). With access control on, it answers
/// 401 to a client without credentials, which starts its login.
async fn base(State(state): State<AppState>, request: Request) -> Response {
    if let Some(access) = &state.access {
        // A robot made or revoked through another replica logs in here as
        // it would there.
        state.registry.fresh_settings().await;
        let (parts, _) = request.into_parts();
        if let Err(refusal) = access.check_login(&parts).await {
            return refusal;
        }
    }
    (StatusCode::OK, axum::Json(serde_json::json!({}))).into_response()
}

/// Middleware: 400 for a request whose authority is missing, repeated or
/// invalid ([`host::request_authority`]), in the form its route speaks
/// (the registry's JSON errors under `/v2/`, OAuth2's at the token
/// endpoint, text elsewhere).
async fn check_host(request: Request, next: axum::middleware::Next) -> Response {
    let Err(e) = host::request_authority(request.version(), request.uri(), request.headers())
    else {
        return next.run(request).await;
    };
    tracing::debug!(error = ?e, "refused a request's Host");
    let path = request.uri().path();
    if path == "/v2" || path.starts_with("/v2/") {
        ApiError::from(RegistryError::with_detail(
            ErrorCode::ParameterInvalid,
            e.detail(),
        ))
        .into_response()
    } else if path == token::TOKEN_PATH {
        token::oauth_error("invalid_request", e.detail())
    } else {
        (StatusCode::BAD_REQUEST, e.detail()).into_response()
    }
}

async fn ready(State(state): State<AppState>) -> Response {
    match state.registry.check_ready().await {
        Ok(()) => "ready".into_response(),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "storage not writable").into_response(),
    }
}

async fn not_found() -> Response {
    not_found_response()
}

fn not_found_response() -> Response {
    (StatusCode::NOT_FOUND, "not found").into_response()
}

/// Every `/v2/<rest>` request: the route table finds the row, access
/// control checks the row's right, the row's handler answers.
async fn dispatch(State(state): State<AppState>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let rest = parts.uri.path().strip_prefix("/v2/").unwrap_or_default();
    let mut route = match routes::resolve(rest, &parts.method) {
        Ok(route) => route,
        Err(unrouted) => return unrouted.into_response(),
    };
    // A mirror entry may serve the request under another name: the answer
    // then says so (`OCI-Namespace`) when `?ns=` picked the entry.
    let mut namespace = None;
    let asked = route.name.clone();
    if let (Some(mirror), Some(name)) = (&state.mirror, &route.name) {
        match mirrors::local_name(mirror, &parts, name, route.writes()) {
            Ok(Some((local, ns))) => {
                route.name = Some(local);
                namespace = ns;
            }
            Ok(None) => {}
            Err(refused) => return ApiError::from(refused).into_response(),
        }
    }
    let mut response = dispatch_route(&state, route, asked.as_ref(), &parts, body).await;
    if let Some(ns) = namespace {
        response.headers_mut().insert(OCI_NAMESPACE, ns);
    }
    response
}

/// [`dispatch`] once the route names the repository it serves (`asked`:
/// the name the client wrote).
async fn dispatch_route(
    state: &AppState,
    route: routes::Route<'_>,
    asked: Option<&RepositoryName>,
    parts: &Parts,
    body: axum::body::Body,
) -> Response {
    let mirror = state
        .mirror
        .as_ref()
        .zip(route.name.as_ref())
        .and_then(|(mirror, name)| Some((mirror, name, mirror.upstream_of(name)?)));
    // Names a mirror's allow and deny lists refuse, and pushes into a
    // mirrored prefix, are refused before anything else: the names there
    // are the upstream's.
    let audited = |caller: Option<&Caller>, response: &Response| {
        if let Some(audit) = &state.audit {
            let client = match &state.access {
                Some(access) => access.client_addr(parts),
                None => client_addr::client_view(parts, &[], Default::default()).addr,
            };
            audit.record(&route, caller, client, parts, response);
        }
    };
    if let Some((mirror, name, upstream)) = mirror {
        let refused = match mirror.refuses(name) {
            Some(refused) => Some(refused),
            None if route.writes() && !mirror.takes_pushes(name) => {
                Some(RegistryError::with_detail(
                    ErrorCode::Denied,
                    format!("{name} is mirrored from {upstream}: pushes are refused"),
                ))
            }
            None => None,
        };
        if let Some(refused) = refused {
            let response = ApiError::from(refused).into_response();
            audited(None, &response);
            return response;
        }
    }
    // Repository settings grant rights: current ones before deciding.
    if state.access.is_some() {
        state.registry.fresh_settings().await;
    }
    let caller = match &state.access {
        None => Caller::Everyone,
        Some(access) => match access
            .authorize(&route.need(), route.starts_upload(), parts)
            .await
        {
            Ok(caller) => caller,
            Err((refusal, caller)) => {
                audited(caller.as_ref(), &refusal);
                return refusal;
            }
        },
    };
    // A mirrored manifest or blob is made local (fetched when missing or,
    // for a tag, when due for a check), then served as any other.
    let mut warning = None;
    if let Some((mirror, name, _)) = mirror {
        let asked = asked.unwrap_or(name);
        match mirrors::prepare(mirror, &state.registry, &route, name, asked, parts).await {
            mirrors::Prepared::Serve(w) => warning = w,
            mirrors::Prepared::Answer(response) => return response,
        }
    }
    let mut response = route
        .call(&state.registry, &caller, parts, body)
        .await
        .unwrap_or_else(IntoResponse::into_response);
    audited(Some(&caller), &response);
    if let Some(events) = &state.events {
        emit_event(events, &route, &caller, parts, &response);
    }
    if let Some(warning) = warning {
        response.headers_mut().append(header::WARNING, warning);
    }
    response
}

fn repository_name(name: &str) -> Result<RepositoryName, ApiError> {
    RepositoryName::parse(name).ok_or_else(|| {
        RegistryError::with_detail(ErrorCode::NameInvalid, format!("invalid name {name:?}")).into()
    })
}

fn digest_param(digest: &str) -> Result<Digest, ApiError> {
    digest.parse().map_err(|_| {
        RegistryError::with_detail(
            ErrorCode::DigestInvalid,
            format!("invalid digest {digest:?}"),
        )
        .into()
    })
}

/// The query's parameters in order; repeated keys (`?tag=a&tag=b`) are kept.
fn query_pairs(parts: &Parts) -> Vec<(String, String)> {
    let query = parts.uri.query().unwrap_or_default();
    form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect()
}

fn query_value<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// `n` and `last` of a paginated listing.
fn pagination(pairs: &[(String, String)]) -> Result<(Option<usize>, Option<String>), ApiError> {
    let n = match query_value(pairs, "n") {
        None | Some("") => None,
        Some(n) => Some(decimal::<usize>(n).ok_or(ErrorCode::PaginationNumberInvalid)?),
    };
    let last = query_value(pairs, "last")
        .filter(|l| !l.is_empty())
        .map(str::to_owned);
    Ok((n, last))
}

/// The RFC 5988 `Link` to the next page of a listing.
fn next_page_link(path: &str, n: usize, last: &str) -> HeaderValue {
    let last: String = form_urlencoded::byte_serialize(last.as_bytes()).collect();
    HeaderValue::from_str(&format!("<{path}?n={n}&last={last}>; rel=\"next\""))
        .expect("encoded link is a valid header")
}

/// A decimal number as HTTP and the spec write one: ASCII digits only
/// (`str::parse` also takes a leading `+`, which RFC 9110's `1*DIGIT` and
/// the spec's `[0-9]+` do not).
fn decimal<T: std::str::FromStr>(s: &str) -> Option<T> {
    let digits = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    digits.then(|| s.parse().ok()).flatten()
}

fn header_str(headers: &HeaderMap, name: impl header::AsHeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The request body for the storage layer: its bytes, and their number when
/// the client declared it (hyper holds the body to its `Content-Length`).
fn request_body(headers: &HeaderMap, body: Body) -> RequestBody {
    RequestBody {
        stream: Box::pin(body.into_data_stream().map_err(io::Error::other)),
        length: header_str(headers, header::CONTENT_LENGTH).and_then(decimal),
    }
}

/// Whether the request carries a body at all (a final `PUT` may not).
fn has_body(headers: &HeaderMap) -> bool {
    match header_str(headers, header::CONTENT_LENGTH) {
        Some(len) => len.trim() != "0",
        None => headers.contains_key(header::TRANSFER_ENCODING),
    }
}

fn location(value: &str) -> HeaderValue {
    HeaderValue::from_str(value).expect("locations are built from validated parts")
}

/// The application of a separate metrics listener: `GET /metrics` only.
pub fn metrics_router(registry: &Registry, access: ScrapeAccess) -> Router {
    Router::new()
        .route("/metrics", get(metrics::scrape))
        .fallback(not_found)
        .with_state(metrics::ScrapeState {
            metrics: registry.metrics().clone(),
            access,
        })
}

/// The CI/CD events a request that succeeded causes: a manifest push (and,
/// by tag, the tag set), a delete, a rollback, a pull.
fn emit_event(
    events: &Events,
    route: &routes::Route<'_>,
    caller: &Caller,
    parts: &Parts,
    response: &Response,
) {
    use routes::Resource;
    if !response.status().is_success() {
        return;
    }
    let Some(repository) = route.name.clone() else {
        return;
    };
    let by_tag = !route.last.contains(':');
    let kinds: &[EventKind] = match (route.row.resource, &parts.method) {
        (Resource::Manifest, &axum::http::Method::PUT) if by_tag => {
            &[EventKind::Push, EventKind::Tag]
        }
        (Resource::Manifest, &axum::http::Method::PUT) => &[EventKind::Push],
        (Resource::Manifest, &axum::http::Method::DELETE) => &[EventKind::Delete],
        (Resource::TagRollback, _) => &[EventKind::Rollback],
        (Resource::Manifest, &axum::http::Method::GET) => &[EventKind::Pull],
        _ => return,
    };
    for &kind in kinds {
        if !events.wants(kind) {
            continue;
        }
        let digest = header_str(response.headers(), DOCKER_CONTENT_DIGEST)
            .or((!by_tag).then_some(route.last))
            .map(str::to_owned);
        let media_type = match kind {
            EventKind::Push => header_str(&parts.headers, header::CONTENT_TYPE),
            EventKind::Pull => header_str(response.headers(), header::CONTENT_TYPE),
            _ => None,
        };
        events.emit(&Happened {
            kind,
            repository: repository.clone(),
            digest,
            tag: by_tag.then(|| route.last.to_owned()),
            media_type: media_type.map(str::to_owned),
            actor: caller.name(),
        });
    }
}
