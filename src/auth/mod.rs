//! Access control: who a client is, and what it may do.
//!
//! Nothing here knows HTTP; the http layer turns headers into calls on this
//! module and its answers into status codes. The pieces:
//!
//! - [`htpasswd`]: users from an Apache htpasswd file (bcrypt only).
//! - [`robots`]: robot accounts for CI (`robot$NAME`), stored as hashes.
//! - [`identity`]: the [`Identity`] a login yields, a robot's [`Grant`]s
//!   and robot user names (below both `policy` and `robots`).
//! - [`policy`]: rules per repository pattern, groups, admins: what an
//!   [`Identity`] may do.
//! - [`scope`]: the Docker token spec's scopes (`repository:NAME:pull,push`).
//! - [`token`]: the built-in token issuer (short-lived signed JWTs) and the
//!   verifier for our own and an external issuer's tokens.
//! - [`limiter`]: refuses clients after repeated failed logins.
//! - [`header`]: `Authorization` parsing, the `WWW-Authenticate` challenge
//!   and the token endpoint's parameters.
//! - [`config`]: the `[auth]` table.
//!
//! [`Auth`] ties them together from an [`AuthConfig`]: the http layer needs
//! only it. The flow (Docker registry token specification):
//!
//! 1. A request without a valid bearer token gets 401 with
//!    [`header::bearer_challenge`] naming the realm, service and scopes.
//! 2. The client asks the token endpoint; [`Auth::login`] checks its basic
//!    credentials (or it stays [`Identity::Anonymous`]) and
//!    [`Auth::issue_token`] signs a token carrying the requested scopes cut
//!    down to what [`Policy::grant`] allows.
//! 3. The client retries with `Authorization: Bearer`; [`Auth::verify_token`]
//!    returns the access the token carries.
//!
//! Secrets (passwords, robot secrets, tokens) are held in [`Secret`], whose
//! `Debug` prints `<redacted>`; no type here prints one.

pub mod config;
mod files;
#[cfg(test)]
mod fuzz_tests;
pub mod header;
pub mod htpasswd;
pub mod identity;
pub mod limiter;
pub mod policy;
pub mod robots;
pub mod scope;
pub mod token;

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use crate::oci::RepositoryPattern;
pub use config::{
    AuthConfig, CatalogConfig, Challenge, ExternalIssuerConfig, ForwardedHeader, LoginLimitConfig,
    RuleConfig, TrustedProxy,
};
pub use htpasswd::Htpasswd;
pub use identity::{Grant, Identity};
pub use limiter::{Attempt, FailureLimiter, Refused};
pub use policy::{GrantSource, Policy};
pub use robots::{KeptRobot, Robot, RobotSource, RobotStore};
pub use scope::{parse_scopes, Action, Actions, Scope, ScopeError};
pub use token::{IssuedToken, TokenError, TokenIssuer, TokenVerifier, VerifiedToken};

/// A password, robot secret or token. `Debug` never shows the value and there
/// is no `Display`: reading it takes an explicit [`Secret::expose`].
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself: pass it on, never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A secret in a config file (a mirror's upstream password) is read as a
/// string and kept as a `Secret` from there on.
impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Secret, D::Error> {
        <String as serde::Deserialize>::deserialize(deserializer).map(Secret)
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Secret {
        Secret(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Secret {
        Secret(value.to_owned())
    }
}

/// One version of the htpasswd file (see [`Auth::users_version`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsersVersion(files::FileStamp);

/// Errors of loading, configuring and changing auth state. Meant for the
/// operator (start-up, CLI): they may name files, so the http layer logs them
/// and answers with a generic error.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {reason}", path.display())]
    BadFile { path: PathBuf, reason: String },
    #[error("auth config: {0}")]
    Config(String),
    #[error("invalid user name: {0}")]
    InvalidUserName(String),
    #[error("invalid password: {0}")]
    InvalidPassword(&'static str),
    #[error("bcrypt cost must be between 4 and 31, got {0}")]
    InvalidCost(u32),
    #[error("invalid robot name {0:?}: use lowercase letters, digits and single '.', '_' or '-' between them, at most 64 characters")]
    InvalidRobotName(String),
    #[error("robot {0:?} already exists (revoke it first)")]
    RobotExists(String),
    #[error("no robot named {0:?}")]
    RobotNotFound(String),
    #[error("invalid grant {0:?}: expected PATTERN:ACTIONS, e.g. 'team-a/*:pull,push'")]
    InvalidGrant(String),
    #[error(
        "invalid duration {0:?}: expected a positive number and unit, e.g. 90d, 12h or 1d 12h, at most 100 years"
    )]
    InvalidDuration(String),
    #[error("signing key: {0}")]
    Key(String),
    #[error("signing a token: {0}")]
    Signing(String),
}

impl AuthError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> AuthError {
        AuthError::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// Why [`Auth::login`] refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginError {
    /// Unknown user, wrong password, or a revoked or expired robot.
    InvalidCredentials,
    /// Too many failed logins from this client: answer 429 with
    /// `Retry-After` (round up to whole seconds).
    TooManyAttempts { retry_after: Duration },
}

/// Everything the http layer needs, built once from the `[auth]` table and
/// shared (`Arc<Auth>`).
#[derive(Debug)]
pub struct Auth {
    service: String,
    realm: Option<String>,
    htpasswd: Option<Htpasswd>,
    robots: RobotStore,
    /// Robots made through the API, when the registry keeps any.
    more_robots: Option<std::sync::Arc<dyn RobotSource>>,
    policy: Policy,
    issuer: TokenIssuer,
    verifier: TokenVerifier,
    limiter: FailureLimiter,
    trusted_proxies: Vec<TrustedProxy>,
    forwarded_header: ForwardedHeader,
}

impl Auth {
    /// Loads the htpasswd file, the robot store, the signing key (or makes an
    /// ephemeral one) and the external issuer's keys, and checks the rules.
    /// `data_dir` is where the robot store lives unless `robots` is set.
    pub fn from_config(config: &AuthConfig, data_dir: &Path) -> Result<Auth, AuthError> {
        config.validate()?;
        let policy = Policy::from_config(config)?;
        let htpasswd = config.htpasswd.as_deref().map(Htpasswd::load).transpose()?;
        let robots = RobotStore::open(&config.robots_path(data_dir))?;
        let issuer = TokenIssuer::from_config(config)?;
        let mut verifier = TokenVerifier::new();
        verifier.trust(&issuer);
        let (service, realm) = match &config.external {
            Some(external) => {
                let service = external.service.clone().unwrap_or(config.service.clone());
                verifier.trust_external(external, &service)?;
                (service, external.realm.clone().or(config.realm.clone()))
            }
            None => (config.service.clone(), config.realm.clone()),
        };
        Ok(Auth {
            service,
            realm,
            htpasswd,
            robots,
            more_robots: None,
            policy,
            issuer,
            verifier,
            limiter: FailureLimiter::new(&config.login_limit),
            trusted_proxies: config.trusted_proxies.clone(),
            forwarded_header: config.forwarded_header,
        })
    }

    /// Adds the grants `source` keeps (repository settings) to the
    /// configuration's rules, for every decision the policy makes.
    pub fn with_grant_source(mut self, source: std::sync::Arc<dyn GrantSource>) -> Auth {
        self.policy = self.policy.with_grant_source(source);
        self
    }

    /// Adds the robots `source` keeps (those made through the API) to the
    /// robot file's.
    pub fn with_robot_source(mut self, source: std::sync::Arc<dyn RobotSource>) -> Auth {
        self.more_robots = Some(source);
        self
    }

    /// Robot `name`, from the robot file or else the API's store.
    pub fn robot(&self, name: &str) -> Option<KeptRobot> {
        self.robots
            .kept(name)
            .or_else(|| self.more_robots.as_ref()?.robot(name))
    }

    /// Whether `user` is in the htpasswd file (with a usable entry).
    pub fn has_user(&self, user: &str) -> bool {
        self.htpasswd.as_ref().is_some_and(|h| h.contains(user))
    }

    /// The `service` for challenges: the external issuer's when one is
    /// configured, else ours.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// The `realm` for challenges when configured (the external issuer's
    /// first). `None`: the http layer derives `<scheme>://<host>/auth/token`
    /// (or wherever it serves [`Auth::issue_token`]) from the request.
    pub fn realm(&self) -> Option<&str> {
        self.realm.as_deref()
    }

    /// Checks a user name and password: `robot$NAME` against the robot
    /// stores ([`Auth::robot`]), anything else against the htpasswd file.
    ///
    /// **CPU-heavy and blocking**: a bcrypt verification costs milliseconds
    /// to hundreds of milliseconds, and the files are re-read when changed.
    /// Call it from `tokio::task::spawn_blocking`.
    pub fn authenticate(&self, user: &str, password: &str) -> Option<Identity> {
        if let Some(name) = user.strip_prefix(identity::USER_PREFIX) {
            return self.robot(name)?.login(password, SystemTime::now());
        }
        let htpasswd = self.htpasswd.as_ref()?;
        htpasswd
            .verify(user, password)
            .then(|| self.policy.user(user))
    }

    /// [`Auth::authenticate`] behind the [`FailureLimiter`]: refuses at once
    /// while `client` is blocked or its attempts in flight fill the limit
    /// (the http layer waits for a place instead: [`FailureLimiter::released`]),
    /// else reserves an attempt and goes on as [`Auth::login_with`].
    /// Blocking, like `authenticate`.
    pub fn login(
        &self,
        client: IpAddr,
        user: &str,
        password: &str,
    ) -> Result<Identity, LoginError> {
        let attempt = match self.limiter.reserve(client, user) {
            Ok(attempt) => attempt,
            Err(Refused::Blocked { retry_after }) => {
                return Err(LoginError::TooManyAttempts { retry_after })
            }
            Err(Refused::Busy) => {
                return Err(LoginError::TooManyAttempts {
                    retry_after: Duration::from_secs(1),
                })
            }
        };
        self.login_with(attempt, user, password)
    }

    /// Checks `user`'s password with an `attempt` reserved for `user`
    /// ([`FailureLimiter::reserve`]) and settles it: a failure is recorded,
    /// a success frees its place. Blocking, like `authenticate`; the attempt
    /// moves onto the blocking pool with the check, so a client that hangs
    /// up mid-check still has its failure counted.
    pub fn login_with(
        &self,
        attempt: Attempt,
        user: &str,
        password: &str,
    ) -> Result<Identity, LoginError> {
        match self.authenticate(user, password) {
            Some(identity) => {
                attempt.succeeded();
                Ok(identity)
            }
            None => {
                tracing::info!(client = %attempt.client(), user, "failed login");
                attempt.failed();
                Err(LoginError::InvalidCredentials)
            }
        }
    }

    /// Signs a token for `identity` carrying the `requested` scopes cut down
    /// to what the policy grants (possibly none: the token is still issued,
    /// as the spec asks, and the registry then refuses with 401/403).
    pub fn issue_token(
        &self,
        identity: &Identity,
        requested: &[Scope],
    ) -> Result<IssuedToken, AuthError> {
        let granted = self.policy.grant(identity, requested);
        self.issuer.issue(&identity.subject(), &granted)
    }

    /// Verifies a bearer token from our issuer or the external one.
    pub fn verify_token(&self, token: &str) -> Result<VerifiedToken, TokenError> {
        self.verifier.verify(token)
    }

    /// The htpasswd file's current version (`None` without one, or when it
    /// cannot be read): it changes with every edit of the file, so a cache
    /// of successful logins that remembers it sees any change of users or
    /// passwords. One `stat`, no parsing.
    pub fn users_version(&self) -> Option<UsersVersion> {
        let htpasswd = self.htpasswd.as_ref()?;
        files::stamp(htpasswd.path())
            .ok()
            .flatten()
            .map(UsersVersion)
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn robots(&self) -> &RobotStore {
        &self.robots
    }

    pub fn limiter(&self) -> &FailureLimiter {
        &self.limiter
    }

    /// The peers whose forwarding headers are believed (`trusted_proxies`).
    pub fn trusted_proxies(&self) -> &[TrustedProxy] {
        &self.trusted_proxies
    }

    /// The header those proxies put the client's address in.
    pub fn forwarded_header(&self) -> ForwardedHeader {
        self.forwarded_header
    }

    pub fn issuer(&self) -> &TokenIssuer {
        &self.issuer
    }
}

/// Seconds since the Unix epoch (0 before it).
pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The time `secs` after the epoch, at most the end of year 9999 (what
/// [`rfc3339`] shows): a token's `exp` is the signer's number, and adding
/// `u64::MAX` seconds to a `SystemTime` panics.
pub fn from_unix_secs(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs.min(LAST_FORMATTABLE))
}

/// 9999-12-31T23:59:59Z
const LAST_FORMATTABLE: u64 = 253_402_300_799;

/// `N` bytes from the operating system's CSPRNG.
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    aws_lc_rs::rand::fill(&mut bytes).expect("the system random number generator failed");
    bytes
}

/// RFC 3339 in UTC with whole seconds, e.g. `2023-11-14T22:13:20Z`, by
/// humantime (as the tag history's timestamps). humantime panics outside
/// 1970 to 9999; a time there (a robot expiring in 20,000 years) is shown at
/// that range's edge instead.
pub fn rfc3339(t: SystemTime) -> String {
    let clamped = from_unix_secs(unix_secs(t).min(LAST_FORMATTABLE));
    humantime::format_rfc3339_seconds(clamped).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_in_debug_output() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret:?}"), "Secret(<redacted>)");
        assert!(!format!("{:?}", Some(&secret)).contains("hunter2"));
        assert_eq!(secret.expose(), "hunter2");
    }

    #[test]
    fn rfc3339_formats_utc_dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(from_unix_secs(951_782_400)), "2000-02-29T00:00:00Z");
        assert_eq!(
            rfc3339(from_unix_secs(1_700_000_000)),
            "2023-11-14T22:13:20Z"
        );
        assert_eq!(
            rfc3339(from_unix_secs(4_102_444_799)),
            "2099-12-31T23:59:59Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH - Duration::from_secs(1)),
            "1970-01-01T00:00:00Z"
        );
        assert_eq!(
            rfc3339(from_unix_secs(u64::MAX / 4)),
            "9999-12-31T23:59:59Z"
        );
    }

    /// An Auth over a temp dir: htpasswd with alice (admin), bob (team-a)
    /// and carol (no group), password = name + "-pw".
    fn auth_with(extra: &str) -> (tempfile::TempDir, Auth) {
        let dir = tempfile::tempdir().unwrap();
        let htpasswd = dir.path().join("htpasswd");
        for user in ["alice", "bob", "carol"] {
            Htpasswd::add_or_update_user(&htpasswd, user, &format!("{user}-pw"), 4).unwrap();
        }
        let text = format!(
            r#"
            htpasswd = "{}"
            service = "registry.test"
            admins = ["alice"]
            [groups]
            team-a = ["bob"]
            [[rules]]
            repositories = ["public/*"]
            anonymous = ["pull"]
            [[rules]]
            repositories = ["team-a/*"]
            groups = {{ team-a = ["pull", "push"] }}
            {extra}
            "#,
            htpasswd.display()
        );
        let config: AuthConfig = toml::from_str(&text).unwrap();
        let auth = Auth::from_config(&config, dir.path()).unwrap();
        (dir, auth)
    }

    fn client(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    #[test]
    fn login_then_token_then_verify_grants_the_intersection() {
        let (_dir, auth) = auth_with("");
        assert_eq!(auth.service(), "registry.test");
        assert_eq!(auth.realm(), None);
        let bob = auth.login(client(1), "bob", "bob-pw").unwrap();
        assert_eq!(bob, auth.policy().user("bob"));
        let requested =
            parse_scopes(["repository:team-a/app:pull,push,delete repository:team-b/app:pull"])
                .unwrap();
        let issued = auth.issue_token(&bob, &requested).unwrap();
        let verified = auth.verify_token(issued.token.expose()).unwrap();
        assert_eq!(verified.subject, "bob");
        let shown: Vec<String> = verified.access.iter().map(Scope::to_string).collect();
        assert_eq!(shown, ["repository:team-a/app:pull,push"]);
        assert_eq!(issued.expires_in, 300);
    }

    #[test]
    fn anonymous_tokens_carry_public_access_only() {
        let (_dir, auth) = auth_with("");
        let requested =
            parse_scopes(["repository:public/nginx:pull,push repository:team-a/app:pull"]).unwrap();
        let issued = auth.issue_token(&Identity::Anonymous, &requested).unwrap();
        let verified = auth.verify_token(issued.token.expose()).unwrap();
        assert_eq!(verified.subject, "");
        let shown: Vec<String> = verified.access.iter().map(Scope::to_string).collect();
        assert_eq!(shown, ["repository:public/nginx:pull"]);
    }

    #[test]
    fn wrong_passwords_and_unknown_users_are_refused() {
        let (_dir, auth) = auth_with("");
        assert_eq!(
            auth.login(client(1), "bob", "alice-pw"),
            Err(LoginError::InvalidCredentials)
        );
        assert_eq!(
            auth.login(client(1), "mallory", "x"),
            Err(LoginError::InvalidCredentials)
        );
        assert!(auth.authenticate("alice", "alice-pw").is_some());
        assert!(auth
            .policy()
            .is_admin(&auth.authenticate("alice", "alice-pw").unwrap()));
    }

    #[test]
    fn repeated_failures_block_the_client_even_with_the_right_password() {
        let (_dir, auth) = auth_with("[login_limit]\nmax_failures = 3");
        for _ in 0..3 {
            assert_eq!(
                auth.login(client(9), "bob", "guess"),
                Err(LoginError::InvalidCredentials)
            );
        }
        match auth.login(client(9), "bob", "bob-pw") {
            Err(LoginError::TooManyAttempts { retry_after }) => {
                assert!(retry_after > Duration::from_secs(55), "{retry_after:?}");
                assert!(retry_after <= Duration::from_secs(60));
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        // Another client is not affected, and its success resets nothing;
        // nor is another user at the same address (a proxy's, say).
        assert!(auth.login(client(10), "bob", "bob-pw").is_ok());
        assert!(matches!(
            auth.login(client(9), "bob", "bob-pw"),
            Err(LoginError::TooManyAttempts { .. })
        ));
        assert!(auth.login(client(9), "carol", "carol-pw").is_ok());
    }

    #[test]
    fn robots_log_in_through_auth_and_revocation_is_immediate() {
        let (_dir, auth) = auth_with("");
        let secret = auth
            .robots()
            .create("ci", vec![Grant::parse("team-a/*:pull").unwrap()], None)
            .unwrap();
        let robot = auth.login(client(1), "robot$ci", secret.expose()).unwrap();
        let requested = parse_scopes(["repository:team-a/x:pull,push"]).unwrap();
        let issued = auth.issue_token(&robot, &requested).unwrap();
        let verified = auth.verify_token(issued.token.expose()).unwrap();
        assert_eq!(verified.subject, "robot$ci");
        assert_eq!(
            verified.access,
            parse_scopes(["repository:team-a/x:pull"]).unwrap()
        );
        // Revoked by "the CLI": another store over the same file.
        RobotStore::open(auth.robots().path())
            .unwrap()
            .revoke("ci")
            .unwrap();
        assert_eq!(
            auth.login(client(1), "robot$ci", secret.expose()),
            Err(LoginError::InvalidCredentials)
        );
    }

    #[test]
    fn an_external_issuer_sets_the_challenge_and_its_tokens_verify() {
        let dir = tempfile::tempdir().unwrap();
        let external_issuer = TokenIssuer::ephemeral(
            "https://auth.example.com",
            "registry.example.com",
            Duration::from_secs(60),
        )
        .unwrap();
        let jwks = dir.path().join("jwks.json");
        std::fs::write(&jwks, external_issuer.jwks_json()).unwrap();
        let text = format!(
            r#"
            realm = "https://ignored.example/token"
            [external]
            issuer = "https://auth.example.com"
            service = "registry.example.com"
            jwks = "{}"
            realm = "https://auth.example.com/token"
            "#,
            jwks.display()
        );
        let config: AuthConfig = toml::from_str(&text).unwrap();
        let auth = Auth::from_config(&config, dir.path()).unwrap();
        assert_eq!(auth.service(), "registry.example.com");
        assert_eq!(auth.realm(), Some("https://auth.example.com/token"));
        let scopes = parse_scopes(["repository:x:pull"]).unwrap();
        let external = external_issuer.issue("someone", &scopes).unwrap();
        let verified = auth.verify_token(external.token.expose()).unwrap();
        assert_eq!(verified.issuer, "https://auth.example.com");
        assert_eq!(verified.access, scopes);
        // Our own tokens still verify; without htpasswd nobody logs in.
        let ours = auth.issue_token(&Identity::Anonymous, &[]).unwrap();
        assert!(auth.verify_token(ours.token.expose()).is_ok());
        assert!(auth.authenticate("alice", "alice-pw").is_none());
    }

    #[test]
    fn a_bad_config_stops_start_up() {
        let dir = tempfile::tempdir().unwrap();
        let missing: AuthConfig = toml::from_str("htpasswd = \"/nonexistent/htpasswd\"").unwrap();
        assert!(Auth::from_config(&missing, dir.path()).is_err());
        let key = dir.path().join("key.pem");
        std::fs::write(&key, "garbage").unwrap();
        let bad_key: AuthConfig =
            toml::from_str(&format!("signing_key = \"{}\"", key.display())).unwrap();
        assert!(matches!(
            Auth::from_config(&bad_key, dir.path()),
            Err(AuthError::BadFile { .. })
        ));
    }

    #[test]
    fn debug_output_shows_no_hashes_or_keys() {
        let (_dir, auth) = auth_with("");
        let secret = auth.robots().create("ci", vec![], None).unwrap();
        let shown = format!("{auth:?}");
        assert!(!shown.contains("$2y$"), "{shown}");
        let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(secret.expose()));
        assert!(!shown.contains(&hash));
        assert!(!shown.contains(secret.expose()));
    }

    #[test]
    fn auth_can_be_shared_across_tasks() {
        fn shareable<T: Send + Sync + 'static>() {}
        shareable::<Auth>();
        shareable::<VerifiedToken>();
        shareable::<Identity>();
    }

    #[test]
    fn random_bytes_differ_between_calls() {
        assert_ne!(random_bytes::<16>(), random_bytes::<16>());
    }
}
