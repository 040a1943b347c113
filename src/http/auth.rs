//! Access control for `/v2/`: who the caller is (from `Authorization`), what
//! the request needs, and the 401/403/429 answers when it may not. The rules
//! themselves live in [`crate::auth`]; this module only speaks HTTP for them.
//!
//! **What each request needs** is the right in its row of the route table
//! ([`super::routes::TABLE`]): `pull` to read, `push` to write (uploads,
//! cancelling included, and manifest `PUT`), `delete` to delete, `push` and
//! `delete` to roll a tag back; the catalog needs the catalog right and
//! then shows only the repositories the caller may pull. `GET /v2/` needs
//! valid credentials of any kind. The check runs before the registry is
//! asked anything, so a refusal never depends on whether the repository
//! exists: an anonymous client gets the same 401 for a private repository
//! and for one that was never pushed. An unknown path (404), a method the
//! resource does not have (405) and an invalid repository name (400
//! `NAME_INVALID`) are answered before the caller is looked at: they depend
//! on the path alone.
//!
//! **Credentials.**
//! - None: the anonymous identity; the policy's `anonymous` grants apply.
//! - `Bearer <jwt>`: verified by [`Auth::verify_token`] once, then
//!   remembered by [`TokenCache`] strictly until its `exp`; the token's
//!   grants decide, the policy is not consulted again (a robot revoked after
//!   the token was issued keeps its access until the token expires, at most
//!   `token_ttl_secs`).
//! - `Basic`: a user or robot login through [`Auth::login_with`]
//!   (brute-force limited: an attempt is reserved before bcrypt, which runs
//!   on the blocking pool, so parallel guesses count as they start),
//!   remembered briefly by [`LoginCache`]; the policy decides.
//!
//! **Refusals** (distribution-spec error codes, Docker token spec
//! challenges):
//! - no credentials, or invalid ones: 401 `UNAUTHORIZED` with
//!   `WWW-Authenticate` naming the realm, the service and the scope the
//!   request needs (`error="invalid_token"` for a bad token);
//! - a valid token without the needed grant: 401 with
//!   `error="insufficient_scope"`, so the client fetches a token for that
//!   scope (what Distribution does; a 403 would stop docker from trying);
//! - a token for a mount's target but not its source, held by someone the
//!   policy lets pull the source: 401 `insufficient_scope` naming both
//!   scopes (the `POST`'s first challenge named only the target);
//! - a Basic login without the right: 403 `DENIED`;
//! - a client blocked after failed logins: 429 `TOOMANYREQUESTS` with
//!   `Retry-After`.
//!
//! Credentials are never logged: only the user name of a failed login is
//! (by [`Auth::login`]).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::request::Parts;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

use super::client_addr::{client_view, ClientView};
use super::host::{request_authority, Authority};
use super::login_cache::LoginCache;
use super::token_cache::TokenCache;
use super::{query_pairs, query_value, ApiError};
use crate::auth::header::{basic_challenge, basic_credentials, bearer_challenge, bearer_token};
use crate::auth::{
    Action, Actions, Auth, Challenge, Identity, LoginError, Policy, Refused, Scope, Secret,
    VerifiedToken,
};
use crate::metrics::{Metrics, ReasonLabels};
use crate::oci::{ErrorCode, RegistryError, RepositoryName};

/// Where the built-in token endpoint is served.
pub const TOKEN_PATH: &str = "/auth/token";

/// The auth state shared by every request.
pub struct AccessControl {
    auth: Auth,
    challenge: Challenge,
    logins: LoginCache,
    tokens: TokenCache,
    /// Where refusals are counted (`berth_auth_failures_total`).
    metrics: Arc<Metrics>,
}

/// What a `/v2/` request needs of its caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    Catalog,
    /// An admin (`[auth] admins`, `admin_groups`).
    Admin,
    /// Nothing: any caller whose credentials (if any) are good; the
    /// handler applies the caller's rights itself.
    Nothing,
    /// A caller who is someone (not anonymous); the handler applies its
    /// rights itself.
    SignedIn,
    /// Every one of `actions` on `name`.
    Repository {
        name: RepositoryName,
        actions: Actions,
    },
}

impl Need {
    /// The scope a client should ask a token for. A push also asks for pull,
    /// as docker does: pushing starts by checking which blobs exist.
    fn scope(&self) -> Scope {
        match self {
            // No scope names administration: a token for the catalog gets
            // the client a token, and its subject decides.
            Need::Catalog | Need::Admin | Need::Nothing | Need::SignedIn => Scope::Catalog,
            Need::Repository { name, actions } => {
                let mut actions = *actions;
                if actions.contains(Action::Push) {
                    actions.insert(Action::Pull);
                }
                Scope::repository(name.clone(), actions)
            }
        }
    }
}

/// Who made a request, and so what it may do.
#[derive(Clone)]
pub enum Caller {
    /// Access control is off: everyone may do everything.
    Everyone,
    /// No credentials ([`Identity::Anonymous`]) or a Basic login: the policy
    /// decides.
    Identity {
        identity: Identity,
        access: Arc<AccessControl>,
    },
    /// A bearer token: its grants decide.
    Token {
        token: Arc<VerifiedToken>,
        access: Arc<AccessControl>,
    },
}

impl Caller {
    /// Who this is, by name: a user, `robot$NAME`, a token's subject;
    /// `None` for anonymous (or everyone, with access control off).
    pub fn name(&self) -> Option<String> {
        let name = match self {
            Caller::Everyone => return None,
            Caller::Identity { identity, .. } => identity.subject(),
            Caller::Token { token, .. } => token.subject.clone(),
        };
        (!name.is_empty()).then_some(name)
    }

    pub fn may(&self, name: &RepositoryName, action: Action) -> bool {
        match self {
            Caller::Everyone => true,
            Caller::Identity { identity, access } => {
                access.auth.policy().allowed(identity, name, action)
            }
            Caller::Token { token, .. } => token.allows(name, action),
        }
    }

    /// May anyone, anonymous clients included, do `action` to `name`?
    pub fn anyone_may(&self, name: &RepositoryName, action: Action) -> bool {
        match self {
            Caller::Everyone => true,
            Caller::Identity { access, .. } | Caller::Token { access, .. } => access
                .auth
                .policy()
                .allowed(&Identity::Anonymous, name, action),
        }
    }

    /// Who the caller is, as the policy sees it now (a token's subject, for
    /// our own tokens); `None` with access control off and for an external
    /// issuer's token.
    pub fn identity(&self) -> Option<Identity> {
        match self {
            Caller::Everyone => None,
            Caller::Identity { identity, .. } => Some(identity.clone()),
            Caller::Token { token, access } => access.identity_of(token),
        }
    }

    /// The access control in force; `None` when it is off.
    pub fn auth(&self) -> Option<&Auth> {
        match self {
            Caller::Everyone => None,
            Caller::Identity { access, .. } | Caller::Token { access, .. } => Some(&access.auth),
        }
    }

    /// What the caller may do to every repository below `namespace`
    /// ([`crate::auth::Policy::namespace_actions`]).
    pub fn namespace_actions(&self, namespace: &RepositoryName) -> Actions {
        match (self, self.identity()) {
            (Caller::Everyone, _) => Actions::ALL,
            (Caller::Identity { access, .. } | Caller::Token { access, .. }, Some(identity)) => {
                access.auth.policy().namespace_actions(&identity, namespace)
            }
            (_, None) => Actions::NONE,
        }
    }

    /// May settings make `name` public (`[auth] public_repositories`)?
    pub fn may_make_public(&self, name: &RepositoryName) -> bool {
        match self {
            Caller::Everyone => true,
            Caller::Identity { access, .. } | Caller::Token { access, .. } => {
                access.auth.policy().public_allowed(name)
            }
        }
    }

    /// May a namespace's settings make everything below `namespace` public?
    pub fn may_make_public_below(&self, namespace: &RepositoryName) -> bool {
        match self {
            Caller::Everyone => true,
            Caller::Identity { access, .. } | Caller::Token { access, .. } => {
                access.auth.policy().public_allowed_below(namespace)
            }
        }
    }

    /// Is the caller an admin? A token's subject is, when it is ours and
    /// the policy says so.
    pub fn is_admin(&self) -> bool {
        match self {
            Caller::Everyone => true,
            Caller::Identity { identity, access } => access.auth.policy().is_admin(identity),
            Caller::Token { token, access } => access
                .identity_of(token)
                .is_some_and(|identity| access.auth.policy().is_admin(&identity)),
        }
    }

    fn satisfies(&self, need: &Need) -> bool {
        match need {
            Need::Admin => self.is_admin(),
            Need::Nothing => true,
            Need::SignedIn => matches!(self, Caller::Everyone) || self.name().is_some(),
            Need::Repository { name, actions } => actions.iter().all(|a| self.may(name, a)),
            Need::Catalog => match self {
                Caller::Everyone => true,
                Caller::Identity { identity, access } => {
                    access.auth.policy().catalog_allowed(identity)
                }
                Caller::Token { token, .. } => token.allows_catalog(),
            },
        }
    }

    /// May a mount without `from` link a blob from wherever it is stored?
    /// That would let the caller test any digest against every repository,
    /// so only admins may (and everyone when access control is off). Others,
    /// token holders included (a token does not say "admin"), upload instead.
    pub fn may_mount_from_anywhere(&self) -> bool {
        match self {
            Caller::Everyone => true,
            Caller::Identity { identity, access } => access.auth.policy().is_admin(identity),
            Caller::Token { .. } => false,
        }
    }

    /// Which repositories the catalog shows this caller: those it may pull.
    /// For our own tokens that is decided by the policy for the token's
    /// subject (a token carries no per-repository grants for a catalog
    /// request); an external issuer's token that grants the catalog sees all
    /// of it, as that issuer decided.
    pub fn catalog_filter(&self) -> CatalogFilter<'_> {
        match self {
            Caller::Everyone => CatalogFilter::Everything,
            Caller::Identity { identity, access } => {
                CatalogFilter::PullableBy(access.auth.policy(), identity.clone())
            }
            Caller::Token { token, access } => match access.identity_of(token) {
                Some(identity) => CatalogFilter::PullableBy(access.auth.policy(), identity),
                None => CatalogFilter::Everything,
            },
        }
    }
}

/// See [`Caller::catalog_filter`].
pub enum CatalogFilter<'a> {
    Everything,
    PullableBy(&'a Policy, Identity),
}

impl CatalogFilter<'_> {
    pub fn shows(&self, name: &RepositoryName) -> bool {
        match self {
            CatalogFilter::Everything => true,
            CatalogFilter::PullableBy(policy, identity) => {
                policy.allowed(identity, name, Action::Pull)
            }
        }
    }
}

/// What the `Authorization` header holds.
enum Presented {
    Nothing,
    Basic {
        user: String,
        password: Secret,
    },
    Bearer(String),
    /// The web UI's session cookie, sent with the UI's header (never
    /// without: see [`session_cookie`]).
    Session(String),
    /// Another scheme or an undecodable value.
    Unusable,
}

/// The web UI's session cookie ([`crate::auth::TokenIssuer::issue_session`]).
pub const SESSION_COOKIE: &str = "berth_session";
/// The header the web UI sends with every request. A session cookie counts
/// only beside it: a page on another site can make a browser send the
/// cookie (a form, an image) but not a custom header (a cross-origin script
/// needs a CORS preflight, which Berth never grants), so a session cannot
/// be ridden from elsewhere (CSRF).
pub const UI_HEADER: &str = "x-berth-ui";

/// The session token in the request's cookies, when the UI's header is
/// there too.
pub fn session_cookie(parts: &Parts) -> Option<String> {
    parts.headers.get(UI_HEADER)?;
    parts
        .headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == SESSION_COOKIE && !value.is_empty()).then(|| value.to_owned())
        })
}

fn presented(parts: &Parts) -> Presented {
    let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
        return match session_cookie(parts) {
            Some(token) => Presented::Session(token),
            None => Presented::Nothing,
        };
    };
    let Ok(value) = value.to_str() else {
        return Presented::Unusable;
    };
    if let Some(token) = bearer_token(value) {
        return Presented::Bearer(token.to_owned());
    }
    match basic_credentials(value) {
        Some((user, password)) => Presented::Basic { user, password },
        None => Presented::Unusable,
    }
}

/// Why credentials were refused.
enum Refusal {
    /// Bad credentials or a bad token (`invalid_token` for tokens).
    Invalid {
        token: bool,
    },
    TooManyAttempts {
        retry_after_secs: u64,
    },
    Internal,
}

impl AccessControl {
    pub fn new(auth: Auth, challenge: Challenge, metrics: Arc<Metrics>) -> AccessControl {
        AccessControl {
            auth,
            challenge,
            logins: LoginCache::new(),
            tokens: TokenCache::new(),
            metrics,
        }
    }

    /// Counts a refusal: `reason` is one of `anonymous` (credentials
    /// needed), `bad_credentials`, `bad_token`, `insufficient_scope`,
    /// `denied` (known caller without the right), `locked_out` (too many
    /// failed logins; also counted as rate limited).
    fn count_failure(&self, reason: &'static str) {
        self.metrics
            .auth_failures
            .get_or_create(&ReasonLabels { reason })
            .inc();
        if reason == "locked_out" {
            self.metrics
                .rate_limited
                .get_or_create(&ReasonLabels {
                    reason: "login_attempts",
                })
                .inc();
        }
    }

    pub fn auth(&self) -> &Auth {
        &self.auth
    }

    /// Authorises a `/v2/` request that needs `need` (an upload start, which
    /// may carry a mount, when `starts_upload`): the caller it may proceed
    /// as, or the response refusing it (with the caller, when the
    /// credentials were good but not enough).
    pub async fn authorize(
        self: &Arc<Self>,
        need: &Need,
        starts_upload: bool,
        parts: &Parts,
    ) -> Result<Caller, (Response, Option<Caller>)> {
        let scopes = vec![need.scope()];
        let caller = self
            .identify(parts)
            .await
            .map_err(|refusal| (self.refuse(refusal, parts, &scopes), None))?;
        if caller.satisfies(need) {
            let source = starts_upload
                .then(|| self.mount_source_to_ask_for(&caller, parts))
                .flatten();
            if let Some(source) = source {
                // Not a failure: the client is asked for a token that mounts.
                let scopes =
                    [scopes, vec![Scope::repository(source, Action::Pull.into())]].concat();
                return Err((
                    self.unauthorized(parts, &scopes, Some("insufficient_scope")),
                    Some(caller),
                ));
            }
            return Ok(caller);
        }
        let response = match &caller {
            Caller::Identity {
                identity: Identity::Anonymous,
                ..
            }
            | Caller::Everyone => {
                self.count_failure("anonymous");
                self.unauthorized(parts, &scopes, None)
            }
            Caller::Token { .. } => {
                self.count_failure("insufficient_scope");
                self.unauthorized(parts, &scopes, Some("insufficient_scope"))
            }
            Caller::Identity { .. } => {
                self.count_failure("denied");
                ApiError::from(ErrorCode::Denied).into_response()
            }
        };
        Err((response, Some(caller)))
    }

    /// A mount's source the caller's token lacks `pull` on only because the
    /// client did not ask for it: clients ask for what a challenge names,
    /// and the challenge of a `POST` names its own repository. When the
    /// token's subject may pull the source, a 401 naming both scopes gets
    /// the client a token that mounts (Distribution does the same). When it
    /// may not, `None`: the upload handler starts a plain upload instead,
    /// which tells nothing about the source.
    fn mount_source_to_ask_for(&self, caller: &Caller, parts: &Parts) -> Option<RepositoryName> {
        let Caller::Token { token, .. } = caller else {
            return None;
        };
        let pairs = query_pairs(parts);
        query_value(&pairs, "mount")?;
        let source = RepositoryName::parse(query_value(&pairs, "from")?)?;
        if token.allows(&source, Action::Pull) {
            return None;
        }
        let identity = self.identity_of(token)?;
        let policy = self.auth.policy();
        policy
            .allowed(&identity, &source, Action::Pull)
            .then_some(source)
    }

    /// `GET /v2/`: any valid credentials, or a 401 that starts the client's
    /// login (the "API version check" of the token flow).
    pub async fn check_login(self: &Arc<Self>, parts: &Parts) -> Result<(), Response> {
        match self.identify(parts).await {
            Ok(Caller::Identity {
                identity: Identity::Anonymous,
                ..
            }) => Err(self.unauthorized(parts, &[], None)),
            Ok(_) => Ok(()),
            Err(refusal) => Err(self.refuse(refusal, parts, &[])),
        }
    }

    /// Who the credentials say the caller is.
    async fn identify(self: &Arc<Self>, parts: &Parts) -> Result<Caller, Refusal> {
        let access = Arc::clone(self);
        match presented(parts) {
            Presented::Nothing => Ok(Caller::Identity {
                identity: Identity::Anonymous,
                access,
            }),
            Presented::Bearer(token) => {
                if let Some(verified) = self.tokens.get(&token) {
                    return Ok(Caller::Token {
                        token: verified,
                        access,
                    });
                }
                match self.auth.verify_token(&token) {
                    // A session's token counts only as the UI's cookie.
                    Ok(verified) if verified.session => Err(Refusal::Invalid { token: true }),
                    Ok(verified) => {
                        let verified = Arc::new(verified);
                        self.tokens.insert(&token, Arc::clone(&verified));
                        Ok(Caller::Token {
                            token: verified,
                            access,
                        })
                    }
                    Err(e) => {
                        tracing::debug!(reason = %e, "refused a bearer token");
                        Err(Refusal::Invalid { token: true })
                    }
                }
            }
            Presented::Basic { user, password } => {
                let identity = self.login(self.client(parts).addr, user, password).await?;
                Ok(Caller::Identity { identity, access })
            }
            Presented::Session(token) => {
                let identity = self
                    .session_identity(&token)
                    .ok_or(Refusal::Invalid { token: true })?;
                Ok(Caller::Identity { identity, access })
            }
            Presented::Unusable => Err(Refusal::Invalid { token: false }),
        }
    }

    /// A Basic login: from the [`LoginCache`] when it was checked recently,
    /// else through [`Auth::login_with`] on the blocking pool (bcrypt). A
    /// client the limiter blocks is refused even with cached credentials.
    ///
    /// The password is checked only under an [`Attempt`](crate::auth::Attempt) reserved first, so
    /// guesses in flight count toward the limit. When the pair's places are
    /// all taken by attempts in flight, the login waits for one to settle
    /// and looks again (the cache first: a burst of parallel logins with the
    /// right password, CI jobs sharing an account, is served by the first
    /// ones' success rather than refused); wrong guesses meanwhile turn into
    /// failures, and the waiters into 429s.
    async fn login(
        self: &Arc<Self>,
        client: IpAddr,
        user: String,
        password: Secret,
    ) -> Result<Identity, Refusal> {
        let robot = crate::auth::identity::is_robot_user(&user);
        let limiter = self.auth.limiter();
        let (attempt, users_version) = loop {
            // Created before the reservation, so a release in between wakes it.
            let released = limiter.released();
            if let Err(retry_after) = limiter.check(client, &user) {
                return Err(too_many(retry_after));
            }
            // Read before the check: a change of the file during it
            // invalidates the entry.
            let users_version = self.auth.users_version().filter(|_| !robot);
            if let Some(version) = users_version {
                if let Some(identity) = self.logins.get(&user, password.expose(), version) {
                    return Ok(identity);
                }
            }
            match limiter.reserve(client, &user) {
                Ok(attempt) => break (attempt, users_version),
                Err(Refused::Blocked { retry_after }) => return Err(too_many(retry_after)),
                Err(Refused::Busy) => released.await,
            }
        };
        let access = Arc::clone(self);
        // The attempt goes with the check: it is settled when bcrypt ends,
        // even if this request's client hangs up and this future is dropped.
        let (user, password, outcome) = tokio::task::spawn_blocking(move || {
            let outcome = access.auth.login_with(attempt, &user, password.expose());
            (user, password, outcome)
        })
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "login task failed");
            Refusal::Internal
        })?;
        match outcome {
            Ok(identity) => {
                if let (Some(version), Identity::User { .. }) = (users_version, &identity) {
                    self.logins
                        .insert(&user, password.expose(), version, identity.clone());
                }
                Ok(identity)
            }
            Err(LoginError::InvalidCredentials) => Err(Refusal::Invalid { token: false }),
            Err(LoginError::TooManyAttempts { retry_after }) => Err(too_many(retry_after)),
        }
    }

    /// The identity a token from our own issuer was issued to, as the policy
    /// sees it now; `None` for an external issuer's token.
    fn identity_of(&self, token: &VerifiedToken) -> Option<Identity> {
        if token.issuer != self.auth.issuer().issuer() {
            return None;
        }
        let subject = token.subject.as_str();
        if subject.is_empty() {
            return Some(Identity::Anonymous);
        }
        let Some(robot) = subject.strip_prefix(crate::auth::identity::USER_PREFIX) else {
            return Some(self.auth.policy().user(subject));
        };
        // A robot's grants live in its store; gone or expired: anonymous.
        // So is a token issued before the robot's secret was set: it was
        // got with an older secret (since renewed), or by another robot of
        // the same name (since revoked).
        let now = std::time::SystemTime::now();
        let issued_before = |made: std::time::SystemTime| token.issued_at.is_some_and(|t| t < made);
        Some(match self.auth.robot(robot) {
            Some(kept) if !kept.robot.is_expired(now) && !issued_before(kept.secret_since) => {
                Identity::Robot {
                    name: kept.robot.name,
                    grants: kept.robot.grants,
                }
            }
            _ => Identity::Anonymous,
        })
    }

    /// Who a session token stands for, decided now: a user still in the
    /// htpasswd file, a robot still in its store and unexpired; `None` for
    /// a token that is not a valid session's, or whose subject is gone.
    pub(super) fn session_identity(&self, token: &str) -> Option<Identity> {
        let verified = self.auth.verify_token(token).ok()?;
        if !verified.session || verified.subject.is_empty() {
            return None;
        }
        match self.identity_of(&verified)? {
            Identity::Anonymous => None,
            Identity::User { name, .. } if !self.auth.has_user(&name) => None,
            identity => Some(identity),
        }
    }

    /// A login to the token endpoint with Basic credentials (shares the
    /// limiter and the cache with `/v2/`), or to the web UI.
    pub(super) async fn token_login(
        self: &Arc<Self>,
        parts: &Parts,
        user: String,
        password: Secret,
    ) -> Result<Identity, Response> {
        self.login(self.client(parts).addr, user, password)
            .await
            .map_err(|refusal| match refusal {
                Refusal::Invalid { .. } => {
                    self.count_failure("bad_credentials");
                    self.basic_unauthorized()
                }
                other => self.refuse(other, parts, &[]),
            })
    }

    fn refuse(&self, refusal: Refusal, parts: &Parts, scopes: &[Scope]) -> Response {
        self.count_failure(match refusal {
            Refusal::Invalid { token: false } => "bad_credentials",
            Refusal::Invalid { token: true } => "bad_token",
            Refusal::TooManyAttempts { .. } => "locked_out",
            Refusal::Internal => "internal",
        });
        match refusal {
            Refusal::Invalid { token } => {
                self.unauthorized(parts, scopes, token.then_some("invalid_token"))
            }
            Refusal::TooManyAttempts { retry_after_secs } => too_many_attempts(retry_after_secs),
            Refusal::Internal => ApiError::from(ErrorCode::Internal).into_response(),
        }
    }

    /// The scheme the client used, as a trusted proxy reports it.
    pub(super) fn client_proto(&self, parts: &Parts) -> Option<String> {
        self.client(parts).proto
    }

    /// The client's address as the configured trusted proxies report it.
    pub(super) fn client_addr(&self, parts: &Parts) -> IpAddr {
        self.client(parts).addr
    }

    /// The client as the configured trusted proxies report it.
    fn client(&self, parts: &Parts) -> ClientView {
        client_view(
            parts,
            self.auth.trusted_proxies(),
            self.auth.forwarded_header(),
        )
    }

    /// 401 `UNAUTHORIZED` with the configured challenge.
    fn unauthorized(&self, parts: &Parts, scopes: &[Scope], error: Option<&str>) -> Response {
        let challenge = match self.challenge {
            Challenge::Bearer => {
                let realm = match self.auth.realm() {
                    Some(realm) => realm.to_owned(),
                    None => derived_realm(parts, &self.client(parts)),
                };
                bearer_challenge(&realm, self.auth.service(), scopes, error)
            }
            Challenge::Basic => basic_challenge(self.auth.service()),
        };
        unauthorized_with(&challenge)
    }

    /// 401 for bad credentials at the token endpoint: it only takes Basic.
    pub(super) fn basic_unauthorized(&self) -> Response {
        unauthorized_with(&basic_challenge(self.auth.service()))
    }
}

fn unauthorized_with(challenge: &str) -> Response {
    let mut response = ApiError::from(ErrorCode::Unauthorized).into_response();
    if let Ok(value) = HeaderValue::from_str(challenge) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

fn too_many(retry_after: Duration) -> Refusal {
    Refusal::TooManyAttempts {
        retry_after_secs: retry_after.as_secs_f64().ceil().max(1.0) as u64,
    }
}

/// 429 `TOOMANYREQUESTS` with `Retry-After` in whole seconds.
pub(super) fn too_many_attempts(retry_after_secs: u64) -> Response {
    let mut response = ApiError::from(RegistryError::with_detail(
        ErrorCode::TooManyRequests,
        "too many failed logins from this address",
    ))
    .into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
    response
}

/// `<scheme>://<host>/auth/token` as the client addressed us: the host a
/// trusted proxy reports, else the authority the request names (HTTP/2
/// `:authority`, an absolute-form target, or `Host`); `https` when Berth
/// terminated TLS itself or a trusted proxy says the client used it. Both
/// hosts are [`Authority`]s, validated (the router refused the request
/// already if its own was invalid), so nothing a client wrote turns the
/// realm into another URL; `localhost` for an HTTP/1.0 request naming none.
fn derived_realm(parts: &Parts, client: &ClientView) -> String {
    let own = || {
        request_authority(parts.version, &parts.uri, &parts.headers)
            .ok()
            .flatten()
    };
    let host = client.host.clone().or_else(own);
    let host = host.as_ref().map_or("localhost", Authority::as_str);
    let forwarded_https = client
        .proto
        .as_deref()
        .is_some_and(|proto| proto.trim().eq_ignore_ascii_case("https"));
    let scheme = if parts.extensions.get::<super::OverTls>().is_some() || forwarded_https {
        "https"
    } else {
        "http"
    };
    format!("{scheme}://{host}{TOKEN_PATH}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on(name: &str, action: Action) -> Option<Need> {
        Some(Need::Repository {
            name: RepositoryName::parse(name).unwrap(),
            actions: action.into(),
        })
    }

    #[test]
    fn a_push_challenge_asks_for_pull_and_push() {
        let scope = |action| on("a", action).unwrap().scope().to_string();
        assert_eq!(scope(Action::Push), "repository:a:pull,push");
        assert_eq!(scope(Action::Pull), "repository:a:pull");
        assert_eq!(scope(Action::Delete), "repository:a:delete");
        let rollback = Need::Repository {
            name: RepositoryName::parse("a").unwrap(),
            actions: Actions::from_iter([Action::Push, Action::Delete]),
        };
        assert_eq!(
            rollback.scope().to_string(),
            "repository:a:pull,push,delete"
        );
        assert_eq!(Need::Catalog.scope().to_string(), "registry:catalog:*");
    }
}
