//! The upstream registry client of a mirror: manifest and blob requests to
//! another registry's `/v2/` API, anonymous or logged in through the
//! upstream's token flow or Basic (docs/design/mirror.md §4, §7).
//! reqwest (already in the binary through object_store) brings pooling,
//! HTTP/2, timeouts and redirects that drop `Authorization` across hosts
//! (Docker Hub sends blob GETs to a CDN).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use bytes::{Bytes, BytesMut};
use futures::TryStreamExt;
use reqwest::header::HeaderValue;
use reqwest::{header, Method, StatusCode};
use serde::Deserialize;

use super::health::Breaker;
use crate::auth::header::Challenge;
use crate::auth::Secret;
use crate::metrics::{Metrics, UpstreamLabels};
use crate::oci::{Digest, ErrorCode, RegistryError, Tag};
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
    /// When the client may try again: the upstream's `Retry-After`, or
    /// what is left of the breaker's pause.
    pub retry_after: Option<Duration>,
    /// The upstream answered, but not usably (credentials refused, data
    /// Berth cannot take): not a failure of the upstream, so the breaker
    /// stays closed.
    pub answered: bool,
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
    metrics: Arc<Metrics>,
}

impl Upstream {
    pub(super) fn new(metrics: Arc<Metrics>) -> Result<Upstream, String> {
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .build()
            .map_err(|e| format!("building the upstream client: {e}"))?;
        Ok(Upstream { http, metrics })
    }

    /// `HEAD` of a manifest: the digest the upstream names it by, `None`
    /// when it sent none.
    pub(super) async fn manifest_digest(&self, on: On<'_>, url: &str) -> Answer<Option<Digest>> {
        let request = || {
            self.http
                .request(Method::HEAD, url)
                .header(header::ACCEPT, MANIFEST_ACCEPT)
                .timeout(REQUEST_TIMEOUT)
        };
        match self.send(on, "manifest_head", request).await {
            Answer::Found(response) => Answer::Found(content_digest(&response)),
            Answer::NotFound => Answer::NotFound,
            Answer::Failed(f) => Answer::Failed(f),
        }
    }

    /// `GET` of a manifest, at most `limit` bytes.
    pub(super) async fn manifest(
        &self,
        on: On<'_>,
        url: &str,
        limit: usize,
    ) -> Answer<FetchedManifest> {
        let request = || {
            self.http
                .get(url)
                .header(header::ACCEPT, MANIFEST_ACCEPT)
                .timeout(REQUEST_TIMEOUT)
        };
        let response = match self.send(on, "manifest", request).await {
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
        match read_whole(response, limit, "a manifest").await {
            Ok(body) => Answer::Found(FetchedManifest {
                content_type,
                body,
                digest,
            }),
            Err(failure) => Answer::Failed(failure),
        }
    }

    /// A repository's tags (`tags/list`), every page, following the
    /// upstream's `Link`s on the same host: at most [`MAX_TAG_PAGES`] pages
    /// of at most [`MAX_TAG_PAGE_BYTES`] each, [`MAX_UPSTREAM_TAGS`] tags in
    /// all. Names that are not tags (the distribution-spec's grammar) are
    /// left out: a client would list what it can never pull, and a name
    /// like `../x` must not reach anything that makes paths of tags.
    pub(super) async fn tags(&self, on: On<'_>, base: &str, path: &str) -> Answer<Vec<String>> {
        #[derive(Deserialize)]
        struct TagList {
            // Some registries write `null` for a repository without tags.
            tags: Option<Vec<String>>,
        }
        let mut tags = Vec::new();
        let mut invalid = 0usize;
        let mut next = Some(path.to_owned());
        let mut pages = 0;
        while let Some(path) = next.take() {
            pages += 1;
            if pages > MAX_TAG_PAGES {
                return Answer::Failed(unusable(format!(
                    "a tag list of over {MAX_TAG_PAGES} pages"
                )));
            }
            let url = format!("{base}{path}");
            let request = || {
                self.http
                    .get(&url)
                    .header(header::ACCEPT, "application/json")
                    .timeout(REQUEST_TIMEOUT)
            };
            let response = match self.send(on, "tags", request).await {
                Answer::Found(response) => response,
                // A repository the upstream does not have; a later page
                // gone is a failure, not an empty list.
                Answer::NotFound if pages == 1 => return Answer::NotFound,
                Answer::NotFound => {
                    return Answer::Failed(failure("a tag list page went missing".into()))
                }
                Answer::Failed(f) => return Answer::Failed(f),
            };
            next = next_link(&response);
            let body = match read_whole(response, MAX_TAG_PAGE_BYTES, "a tag list").await {
                Ok(body) => body,
                Err(failure) => return Answer::Failed(failure),
            };
            match serde_json::from_slice::<TagList>(&body) {
                Ok(page) => {
                    for tag in page.tags.unwrap_or_default() {
                        if Tag::parse(&tag).is_some() {
                            tags.push(tag);
                        } else {
                            invalid += 1;
                        }
                    }
                }
                Err(e) => {
                    return Answer::Failed(unusable(format!("a tag list that is not one: {e}")))
                }
            }
            if tags.len() > MAX_UPSTREAM_TAGS {
                return Answer::Failed(unusable(format!(
                    "a tag list of over {MAX_UPSTREAM_TAGS} tags"
                )));
            }
        }
        if invalid > 0 {
            tracing::warn!(upstream = %base, %path, invalid, "upstream tag list: left out names that are not tags");
        }
        Answer::Found(tags)
    }

    /// `HEAD` of a blob: its size.
    pub(super) async fn blob_size(&self, on: On<'_>, url: &str) -> Answer<u64> {
        let request = || self.http.head(url).timeout(REQUEST_TIMEOUT);
        match self.send(on, "blob_head", request).await {
            Answer::Found(response) => match content_length(&response) {
                Some(size) => Answer::Found(size),
                None => Answer::Failed(unusable("a blob HEAD without Content-Length".into())),
            },
            Answer::NotFound => Answer::NotFound,
            Answer::Failed(f) => Answer::Failed(f),
        }
    }

    /// `GET` of a blob: its body as it arrives.
    pub(super) async fn blob(&self, on: On<'_>, url: &str) -> Answer<FetchedBlob> {
        // The bound covers the response's headers only: `send` returns
        // once they are in, and the body is read under `READ_TIMEOUT`.
        let request = || self.http.get(url);
        let response =
            match tokio::time::timeout(REQUEST_TIMEOUT, self.send(on, "blob", request)).await {
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
        retry_after: None,
        answered: false,
    }
}

/// The upstream answered with something unusable (see [`Failure::answered`]).
fn unusable(why: String) -> Failure {
    Failure {
        answered: true,
        ..failure(why)
    }
}

/// A 2xx answer, a 404, or what went wrong.
fn classify(sent: reqwest::Result<reqwest::Response>) -> Answer<reqwest::Response> {
    match sent {
        Ok(response) if response.status().is_success() => Answer::Found(response),
        Ok(response) if response.status() == StatusCode::NOT_FOUND => Answer::NotFound,
        Ok(response) => Answer::Failed(Failure {
            too_many_requests: response.status() == StatusCode::TOO_MANY_REQUESTS,
            why: format!("answered {}", response.status()),
            retry_after: response
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs),
            answered: false,
        }),
        Err(e) if e.is_timeout() => Answer::Failed(failure("timed out".into())),
        Err(e) if e.is_connect() => Answer::Failed(failure("unreachable".into())),
        Err(e) => Answer::Failed(failure(format!("request failed: {e}"))),
    }
}

/// Whom a request goes to the upstream as, and for which scope
/// (`repository:<upstream name>:pull`).
#[derive(Clone, Copy)]
pub(super) struct On<'a> {
    /// The entry's prefix, for the metrics' labels.
    pub prefix: &'a str,
    pub access: &'a Access,
    pub breaker: &'a Breaker,
    pub scope: &'a str,
}

impl Upstream {
    /// Sends a request with what `on` knows of the upstream's login; on a
    /// 401, logs in as its challenge says (a token for the scope, or Basic)
    /// and sends it once more.
    async fn send(
        &self,
        on: On<'_>,
        kind: &'static str,
        request: impl Fn() -> reqwest::RequestBuilder,
    ) -> Answer<reqwest::Response> {
        if let Some(open) = on.breaker.open() {
            return Answer::Failed(Failure {
                too_many_requests: open.too_many_requests,
                why: format!(
                    "failed just now{}; not asked again for {} s",
                    if open.too_many_requests { " (429)" } else { "" },
                    open.for_.as_secs() + 1
                ),
                retry_after: Some(open.for_),
                answered: false,
            });
        }
        let started = Instant::now();
        let answer = self.send_logged_in(on, request).await;
        let labels = UpstreamLabels {
            prefix: on.prefix.to_owned(),
            request: kind,
            result: match &answer {
                Answer::Found(_) => "ok",
                Answer::NotFound => "not_found",
                Answer::Failed(f) if f.too_many_requests => "too_many_requests",
                Answer::Failed(f) if f.answered => "unusable",
                Answer::Failed(_) => "error",
            },
        };
        self.metrics
            .upstream_request_duration
            .get_or_create(&labels)
            .observe(started.elapsed().as_secs_f64());
        self.metrics.upstream_requests.get_or_create(&labels).inc();
        match &answer {
            Answer::Failed(failure) if !failure.answered => on
                .breaker
                .failed(failure.too_many_requests, failure.retry_after),
            _ => on.breaker.answered(),
        }
        answer
    }

    async fn send_logged_in(
        &self,
        on: On<'_>,
        request: impl Fn() -> reqwest::RequestBuilder,
    ) -> Answer<reqwest::Response> {
        let known = match on.access.known_authorization(self, on.scope).await {
            Ok(known) => known,
            Err(failure) => return Answer::Failed(failure),
        };
        let with = |authorization: Option<&HeaderValue>| match authorization {
            Some(value) => request().header(header::AUTHORIZATION, value.clone()),
            None => request(),
        };
        let first = with(known.as_ref()).send().await;
        let challenge = match &first {
            Ok(response) if response.status() == StatusCode::UNAUTHORIZED => response
                .headers()
                .get(header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .and_then(Challenge::parse),
            _ => return classify(first),
        };
        let Some(challenge) = challenge else {
            return Answer::Failed(unusable(
                "answered 401 without a challenge Berth can follow".into(),
            ));
        };
        on.access.forget(on.scope);
        let authorization = match on.access.log_in(self, on.scope, &challenge).await {
            Ok(authorization) => authorization,
            Err(failure) => return Answer::Failed(failure),
        };
        let second = with(Some(&authorization)).send().await;
        match second {
            Ok(response) if response.status() == StatusCode::UNAUTHORIZED => {
                on.access.forget(on.scope);
                Answer::Failed(unusable(on.access.refused()))
            }
            second => classify(second),
        }
    }
}

/// The account a mirror logs in to its upstream with.
pub(super) struct Credentials {
    username: String,
    password: Password,
}

enum Password {
    Inline(Secret),
    /// Read again when the file changes (a rotated password).
    File {
        path: PathBuf,
        read: Mutex<Option<(SystemTime, Secret)>>,
    },
}

impl Credentials {
    pub(super) fn new(
        username: String,
        password: Option<Secret>,
        password_file: Option<PathBuf>,
    ) -> Credentials {
        let password = match (password, password_file) {
            (Some(secret), _) => Password::Inline(secret),
            (None, Some(path)) => Password::File {
                path,
                read: Mutex::new(None),
            },
            (None, None) => Password::Inline(Secret::new("")),
        };
        Credentials { username, password }
    }

    fn password(&self) -> Result<Secret, Failure> {
        match &self.password {
            Password::Inline(secret) => Ok(secret.clone()),
            Password::File { path, read } => {
                let changed = std::fs::metadata(path)
                    .and_then(|m| m.modified())
                    .map_err(|e| {
                        unusable(format!("reading password_file {}: {e}", path.display()))
                    })?;
                let mut read = read.lock().expect("lock");
                if let Some((at, secret)) = read.as_ref() {
                    if *at == changed {
                        return Ok(secret.clone());
                    }
                }
                let text = std::fs::read_to_string(path).map_err(|e| {
                    unusable(format!("reading password_file {}: {e}", path.display()))
                })?;
                let secret = Secret::new(text.trim_end_matches(['\n', '\r']));
                *read = Some((changed, secret.clone()));
                Ok(secret)
            }
        }
    }

    /// `Basic base64(user:password)`, marked sensitive (never logged).
    fn basic(&self) -> Result<HeaderValue, Failure> {
        let password = self.password()?;
        let encoded = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            self.username,
            password.expose()
        ));
        let mut value = HeaderValue::from_str(&format!("Basic {encoded}")).map_err(|_| {
            unusable("the upstream credentials hold characters a header cannot".into())
        })?;
        value.set_sensitive(true);
        Ok(value)
    }
}

/// How a mirror logs in to one upstream, and what it learned doing so.
pub(super) struct Access {
    credentials: Option<Credentials>,
    /// The upstream's token endpoint (realm, service), once a challenge
    /// named it: a scope seen for the first time gets its token before its
    /// first request instead of after a 401.
    bearer: Mutex<Option<(String, Option<String>)>>,
    /// The upstream asked for Basic: the credentials go with every request.
    basic: AtomicBool,
    /// Tokens by scope, and until when they are used (a tenth before they
    /// expire).
    tokens: Mutex<HashMap<String, (HeaderValue, Instant)>>,
}

/// Scopes whose tokens are kept at most; past it they are all dropped
/// (each costs a token request again, never a wrong answer).
const MAX_TOKENS: usize = 10_000;

impl Access {
    pub(super) fn new(credentials: Option<Credentials>) -> Access {
        Access {
            credentials,
            bearer: Mutex::new(None),
            basic: AtomicBool::new(false),
            tokens: Mutex::new(HashMap::new()),
        }
    }

    /// What to send before any 401: a live token for `scope`, one fetched
    /// now from a token endpoint seen before, Basic credentials, or nothing.
    async fn known_authorization(
        &self,
        upstream: &Upstream,
        scope: &str,
    ) -> Result<Option<HeaderValue>, Failure> {
        if self.basic.load(Ordering::Relaxed) {
            if let Some(credentials) = &self.credentials {
                return credentials.basic().map(Some);
            }
        }
        if let Some((token, until)) = self.tokens.lock().expect("lock").get(scope) {
            if Instant::now() < *until {
                return Ok(Some(token.clone()));
            }
        }
        let endpoint = self.bearer.lock().expect("lock").clone();
        match endpoint {
            Some((realm, service)) => self
                .fetch_token(upstream, &realm, service.as_deref(), scope)
                .await
                .map(Some),
            None => Ok(None),
        }
    }

    fn forget(&self, scope: &str) {
        self.tokens.lock().expect("lock").remove(scope);
    }

    /// What a 401 after logging in means, for the error the client gets.
    fn refused(&self) -> String {
        match &self.credentials {
            Some(_) => "refused the configured credentials".into(),
            None => "needs credentials (none are configured for it)".into(),
        }
    }

    /// Logs in as a 401's challenge asks.
    async fn log_in(
        &self,
        upstream: &Upstream,
        scope: &str,
        challenge: &Challenge,
    ) -> Result<HeaderValue, Failure> {
        match challenge.scheme.as_str() {
            "bearer" => {
                let realm = challenge
                    .param("realm")
                    .ok_or_else(|| unusable("a Bearer challenge without a realm".into()))?
                    .to_owned();
                let service = challenge.param("service").map(str::to_owned);
                *self.bearer.lock().expect("lock") = Some((realm.clone(), service.clone()));
                // The challenge's own scope where it names one: it is what
                // the upstream wants for this request.
                let wanted = challenge.param("scope").unwrap_or(scope);
                let token = self
                    .fetch_token(upstream, &realm, service.as_deref(), wanted)
                    .await?;
                if wanted != scope {
                    // Kept under the mirror's scope too, for its next request.
                    self.keep(scope, token.clone(), Duration::from_secs(60));
                }
                Ok(token)
            }
            "basic" => match &self.credentials {
                Some(credentials) => {
                    self.basic.store(true, Ordering::Relaxed);
                    credentials.basic()
                }
                None => Err(unusable(self.refused())),
            },
            other => Err(unusable(format!(
                "asks for {other} authentication, which Berth does not speak"
            ))),
        }
    }

    fn keep(&self, scope: &str, token: HeaderValue, valid: Duration) {
        let mut tokens = self.tokens.lock().expect("lock");
        if tokens.len() >= MAX_TOKENS {
            tokens.clear();
        }
        tokens.insert(scope.to_owned(), (token, Instant::now() + valid));
    }

    /// The Docker token flow: `GET <realm>?service=…&scope=…`, with Basic
    /// credentials when there are some, answered by `token` (or
    /// `access_token`) and `expires_in` (60 s when absent).
    async fn fetch_token(
        &self,
        upstream: &Upstream,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<HeaderValue, Failure> {
        let mut url = reqwest::Url::parse(realm)
            .map_err(|e| unusable(format!("its token realm {realm:?} is not a URL: {e}")))?;
        {
            let mut query = url.query_pairs_mut();
            if let Some(service) = service {
                query.append_pair("service", service);
            }
            for scope in scope.split(' ').filter(|s| !s.is_empty()) {
                query.append_pair("scope", scope);
            }
        }
        let mut request = upstream.http.get(url).timeout(REQUEST_TIMEOUT);
        if let Some(credentials) = &self.credentials {
            request = request.header(header::AUTHORIZATION, credentials.basic()?);
        }
        let sent = request.send().await;
        if let Ok(response) = &sent {
            if matches!(
                response.status(),
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
            ) {
                return Err(unusable(format!(
                    "{} (token endpoint {realm})",
                    self.refused()
                )));
            }
        }
        let response = match classify(sent) {
            Answer::Found(response) => response,
            Answer::NotFound => {
                return Err(unusable(format!("its token endpoint {realm} answered 404")))
            }
            Answer::Failed(f) => {
                return Err(Failure {
                    why: format!("token endpoint {realm}: {}", f.why),
                    ..f
                })
            }
        };
        #[derive(Deserialize)]
        struct TokenReply {
            token: Option<String>,
            access_token: Option<String>,
            expires_in: Option<u64>,
        }
        let body = read_whole(
            response,
            MAX_TOKEN_REPLY_BYTES,
            &format!("its token endpoint {realm}'s answer"),
        )
        .await?;
        let reply: TokenReply = serde_json::from_slice(&body)
            .map_err(|e| unusable(format!("its token endpoint {realm} answered no token: {e}")))?;
        let token = reply
            .token
            .or(reply.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| unusable(format!("its token endpoint {realm} answered no token")))?;
        let mut value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
            unusable(format!(
                "its token endpoint {realm} answered an unusable token"
            ))
        })?;
        value.set_sensitive(true);
        let lifetime =
            Duration::from_secs(reply.expires_in.unwrap_or(60).clamp(1, MAX_TOKEN_LIFETIME));
        self.keep(scope, value.clone(), lifetime.mul_f64(0.9));
        Ok(value)
    }
}

/// A token endpoint's answer a mirror reads at most: Docker Hub's and the
/// clouds' are a few KiB.
const MAX_TOKEN_REPLY_BYTES: usize = 1 << 20;
/// The longest a mirror keeps an upstream token, whatever its
/// `expires_in` says (Docker Hub's live 300 s): an endless one would
/// overflow the clock, and a day bounds how long a revoked one is tried.
const MAX_TOKEN_LIFETIME: u64 = 24 * 60 * 60;

/// The pages of an upstream's tag list a mirror reads at most, and the
/// bytes of each: 100 pages of Docker Hub's 1,000 tags, far beyond any
/// repository's, so that a hostile upstream cannot make one request
/// endless.
const MAX_TAG_PAGES: usize = 100;
const MAX_TAG_PAGE_BYTES: usize = 4 << 20;
/// The tags of one upstream list a mirror holds at most: a page of tiny
/// names could otherwise hold a million, each a `String` in memory.
const MAX_UPSTREAM_TAGS: usize = 100_000;

/// A response's body, whole, when it is at most `limit` bytes.
async fn read_whole(
    response: reqwest::Response,
    limit: usize,
    what: &str,
) -> Result<Bytes, Failure> {
    let mut body = BytesMut::new();
    let mut stream = response.bytes_stream();
    loop {
        match stream.try_next().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > limit {
                    return Err(unusable(format!("{what} over the {limit}-byte limit")));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body.freeze()),
            Err(e) => return Err(failure(format!("reading {what}: {e}"))),
        }
    }
}

/// The path of a listing's next page (RFC 8288 `Link: <path>; rel="next"`,
/// as the distribution-spec writes it), when it is on the same host: a
/// link elsewhere is not followed with the upstream's credentials.
fn next_link(response: &reqwest::Response) -> Option<String> {
    let link = response.headers().get(header::LINK)?.to_str().ok()?;
    link.split(',').find_map(|one| {
        let (target, params) = one.trim().split_once(';')?;
        let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        let next = params
            .split(';')
            .any(|p| matches!(p.trim(), "rel=\"next\"" | "rel=next"));
        (next && target.starts_with("/v2/")).then(|| target.to_owned())
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn with_link(link: &str) -> reqwest::Response {
        reqwest::Response::from(
            axum::http::Response::builder()
                .header(header::LINK, link)
                .body("")
                .unwrap(),
        )
    }

    #[test]
    fn the_next_page_is_followed_only_on_the_same_host() {
        let next = |link: &str| next_link(&with_link(link));
        assert_eq!(
            next(r#"</v2/library/alpine/tags/list?last=3.19&n=100>; rel="next""#).as_deref(),
            Some("/v2/library/alpine/tags/list?last=3.19&n=100")
        );
        assert_eq!(
            next(r#"<https://elsewhere.example/v2/x/tags/list?last=a>; rel="next""#),
            None
        );
        assert_eq!(next(r#"</v2/x/tags/list?last=a>; rel="prev""#), None);
        assert_eq!(
            next(r#"</v2/x/tags/list?last=a>; rel="prev", </v2/x/tags/list?last=b>; rel=next"#)
                .as_deref(),
            Some("/v2/x/tags/list?last=b")
        );
        assert_eq!(next("garbage"), None);
    }
}
