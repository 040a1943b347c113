//! The `[auth]` table. Its presence turns auth on; every key has a default.
//!
//! ```toml
//! [auth]
//! htpasswd = "config/htpasswd"      # users (bcrypt); absent: robots only
//! realm = "https://registry.example.com/auth/token"  # default: from the request
//! service = "berth"                 # the tokens' audience
//! challenge = "bearer"              # or "basic": what a 401 asks clients for
//! issuer = "berth"                  # the tokens' `iss`; default: service
//! token_ttl_secs = 300
//! signing_key = "keys/token.pem"    # EC P-256 (ES256) or RSA (RS256); absent: ephemeral
//! robots = "data/berth/robots.json" # default: <data_dir>/berth/robots.json
//! admins = ["alice"]                # users who may do everything
//! admin_groups = ["ops"]            # groups whose members may do everything
//! trusted_proxies = ["10.0.0.0/8"]  # believe these peers' forwarding headers
//! forwarded_header = "x-forwarded-for"  # or "forwarded" (RFC 7239)
//!
//! [auth.groups]
//! team-a = ["bob", "carol"]
//!
//! [[auth.rules]]                    # grants add up; nothing denies
//! repositories = ["public/*"]
//! anonymous = ["pull"]
//! authenticated = ["pull"]
//!
//! [[auth.rules]]
//! repositories = ["team-a/*"]
//! groups = { team-a = ["pull", "push"] }
//! users = { dave = ["pull"] }
//!
//! [auth.catalog]                    # who may list /v2/_catalog besides admins
//! authenticated = false
//! anonymous = false
//! users = []
//! groups = []
//!
//! [auth.login_limit]
//! max_failures = 5
//! window_secs = 60
//! max_clients = 10000
//!
//! [auth.external]                   # also trust another issuer's tokens
//! issuer = "https://auth.example.com"
//! service = "registry.example.com"  # default: auth.service
//! public_key = "keys/issuer.pem"    # PEM public keys or certificates; or:
//! jwks = "keys/issuer-jwks.json"
//! realm = "https://auth.example.com/token"
//! ```
//!
//! Relative paths are relative to the working directory, like `data_dir`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::scope::Actions;
use super::AuthError;
use crate::oci::RepositoryPattern;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// An Apache htpasswd file with bcrypt entries.
    pub htpasswd: Option<PathBuf>,
    /// The token endpoint's URL for `WWW-Authenticate`.
    pub realm: Option<String>,
    /// The name tokens are issued for (`aud`) and challenges carry.
    pub service: String,
    /// The scheme a 401 asks for: bearer tokens (the Docker token flow) or
    /// basic credentials on every request.
    pub challenge: Challenge,
    /// Our tokens' `iss`; defaults to `service`.
    pub issuer: Option<String>,
    /// Lifetime of issued tokens, in seconds.
    pub token_ttl_secs: u64,
    /// PEM private key that signs tokens; absent: a new key every start.
    pub signing_key: Option<PathBuf>,
    /// The robot account store; default `<data_dir>/berth/robots.json`.
    pub robots: Option<PathBuf>,
    /// Users who may do everything.
    pub admins: Vec<String>,
    /// Groups whose members may do everything.
    pub admin_groups: Vec<String>,
    /// Group name → member user names.
    pub groups: BTreeMap<String, Vec<String>>,
    /// Access rules. None: authenticated users may pull and push everywhere.
    pub rules: Vec<RuleConfig>,
    /// Where repository settings may make a repository public (patterns);
    /// `None`: anywhere. It binds admins too (they change it here).
    pub public_repositories: Option<Vec<RepositoryPattern>>,
    pub catalog: CatalogConfig,
    pub login_limit: LoginLimitConfig,
    pub external: Option<ExternalIssuerConfig>,
    /// Peers (addresses or CIDR networks) whose forwarding headers are
    /// believed: the client address for the login limiter, and the scheme
    /// and host for a derived realm. Empty: no header is believed, the peer
    /// is the client.
    pub trusted_proxies: Vec<TrustedProxy>,
    /// The header the trusted proxies record the client's address in.
    pub forwarded_header: ForwardedHeader,
}

/// A `trusted_proxies` entry: `10.0.0.7`, `10.0.0.0/8`, `fd00::/8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrustedProxy(pub ipnet::IpNet);

impl TrustedProxy {
    pub fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4 proxy seen over an IPv6 socket is an IPv4-mapped address.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            IpAddr::V4(_) => ip,
        };
        self.0.contains(&ip)
    }
}

impl std::str::FromStr for TrustedProxy {
    type Err = String;

    fn from_str(s: &str) -> Result<TrustedProxy, String> {
        let s = s.trim();
        s.parse::<ipnet::IpNet>()
            .or_else(|_| s.parse::<IpAddr>().map(ipnet::IpNet::from))
            .map(TrustedProxy)
            .map_err(|_| format!("trusted_proxies: {s:?} is not an address or a CIDR network"))
    }
}

impl<'de> Deserialize<'de> for TrustedProxy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<TrustedProxy, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Where trusted proxies put the client's address: the de facto
/// `X-Forwarded-For` (nginx, HAProxy, cloud load balancers) or RFC 7239
/// `Forwarded`. Only the one configured is read: a proxy that sets one
/// passes the other through from the client untouched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ForwardedHeader {
    /// `X-Forwarded-For`, with `X-Forwarded-Proto` and `X-Forwarded-Host`.
    #[default]
    XForwardedFor,
    /// `Forwarded: for=…;proto=…;host=…`.
    Forwarded,
}

impl Default for AuthConfig {
    fn default() -> AuthConfig {
        AuthConfig {
            htpasswd: None,
            realm: None,
            service: "berth".to_owned(),
            challenge: Challenge::Bearer,
            issuer: None,
            token_ttl_secs: 300,
            signing_key: None,
            robots: None,
            admins: Vec::new(),
            admin_groups: Vec::new(),
            groups: BTreeMap::new(),
            rules: Vec::new(),
            public_repositories: None,
            catalog: CatalogConfig::default(),
            login_limit: LoginLimitConfig::default(),
            external: None,
            trusted_proxies: Vec::new(),
            forwarded_header: ForwardedHeader::default(),
        }
    }
}

impl AuthConfig {
    /// The `iss` of our tokens.
    pub fn issuer(&self) -> &str {
        self.issuer.as_deref().unwrap_or(&self.service)
    }

    /// Where the robot store lives.
    pub fn robots_path(&self, data_dir: &Path) -> PathBuf {
        self.robots
            .clone()
            .unwrap_or_else(|| data_dir.join("berth").join("robots.json"))
    }

    /// Checks what deserialization cannot: values in range, groups that
    /// rules name exist, the external issuer has exactly one key source.
    pub fn validate(&self) -> Result<(), AuthError> {
        let err = |m: String| Err(AuthError::Config(m));
        if self.service.is_empty() {
            return err("service must not be empty".into());
        }
        if self.token_ttl_secs == 0 || self.token_ttl_secs > 86_400 {
            return err("token_ttl_secs must be between 1 and 86400".into());
        }
        if self.login_limit.max_failures == 0
            || self.login_limit.window_secs == 0
            || self.login_limit.max_clients == 0
        {
            return err("login_limit values must be positive".into());
        }
        let undefined = |group: &String| !self.groups.contains_key(group);
        if let Some(g) = self.admin_groups.iter().find(|g| undefined(g)) {
            return err(format!("admin_groups names undefined group {g:?}"));
        }
        if let Some(g) = self.catalog.groups.iter().find(|g| undefined(g)) {
            return err(format!("catalog names undefined group {g:?}"));
        }
        for (i, rule) in self.rules.iter().enumerate() {
            if rule.repositories.is_empty() {
                return err(format!("rule {} has no repositories", i + 1));
            }
            if let Some(g) = rule.groups.keys().find(|g| undefined(g)) {
                return err(format!("rule {} names undefined group {g:?}", i + 1));
            }
        }
        if let Some(external) = &self.external {
            if external.issuer.is_empty() {
                return err("external.issuer must not be empty".into());
            }
            if external.public_key.is_some() == external.jwks.is_some() {
                return err("external needs exactly one of public_key and jwks".into());
            }
        }
        Ok(())
    }
}

/// What the `WWW-Authenticate` header of a 401 asks for. Both kinds of
/// credentials are accepted either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Challenge {
    /// `Bearer realm=…,service=…,scope=…`: clients fetch a token from the
    /// realm (the Docker registry token flow; every mainstream client).
    #[default]
    Bearer,
    /// `Basic realm=…`: clients send their user name and password with
    /// every request (simple clients such as curl or old tools).
    Basic,
}

/// One `[[auth.rules]]` entry: the actions it grants, per kind of client, on
/// the repositories matching any of its patterns.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuleConfig {
    pub repositories: Vec<RepositoryPattern>,
    /// Granted to everyone, logged in or not (and so to robots too).
    pub anonymous: Actions,
    /// Granted to every htpasswd user (not to robots).
    pub authenticated: Actions,
    pub users: BTreeMap<String, Actions>,
    pub groups: BTreeMap<String, Actions>,
}

/// Who may list the catalog (`registry:catalog:*`) besides admins.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CatalogConfig {
    pub anonymous: bool,
    pub authenticated: bool,
    pub users: Vec<String>,
    pub groups: Vec<String>,
}

/// Brute-force protection for logins.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoginLimitConfig {
    /// Failed logins within the window after which a client is refused.
    pub max_failures: u32,
    pub window_secs: u64,
    /// Clients remembered at most; the oldest are forgotten first.
    pub max_clients: usize,
}

impl Default for LoginLimitConfig {
    fn default() -> LoginLimitConfig {
        LoginLimitConfig {
            max_failures: 5,
            window_secs: 60,
            max_clients: 10_000,
        }
    }
}

/// Another token issuer whose tokens the registry accepts as they are (the
/// issuer decides the access they carry).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalIssuerConfig {
    /// Its tokens' `iss`.
    pub issuer: String,
    /// The `aud` its tokens must carry; default: `auth.service`.
    pub service: Option<String>,
    /// PEM file with its public key(s) or certificate(s).
    pub public_key: Option<PathBuf>,
    /// JSON Web Key Set file with its public keys.
    pub jwks: Option<PathBuf>,
    /// Its token endpoint, sent to clients in challenges.
    pub realm: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::scope::Action;

    const EXAMPLE: &str = r#"
        htpasswd = "config/htpasswd"
        realm = "https://registry.example.com/auth/token"
        service = "berth"
        challenge = "basic"
        token_ttl_secs = 600
        signing_key = "keys/token.pem"
        admins = ["alice"]
        admin_groups = ["ops"]
        [groups]
        team-a = ["bob", "carol"]
        ops = ["erin"]
        [[rules]]
        repositories = ["public/*"]
        anonymous = ["pull"]
        authenticated = ["pull"]
        [[rules]]
        repositories = ["team-a/*", "shared"]
        groups = { team-a = ["pull", "push"] }
        users = { dave = ["pull"] }
        [catalog]
        authenticated = true
        [login_limit]
        max_failures = 3
        [external]
        issuer = "https://auth.example.com"
        jwks = "keys/jwks.json"
        realm = "https://auth.example.com/token"
    "#;

    #[test]
    fn the_documented_example_parses() {
        let config: AuthConfig = toml::from_str(EXAMPLE).unwrap();
        config.validate().unwrap();
        assert_eq!(config.token_ttl_secs, 600);
        assert_eq!(config.challenge, Challenge::Basic);
        assert_eq!(config.issuer(), "berth");
        assert_eq!(config.groups["team-a"], ["bob", "carol"]);
        assert_eq!(config.rules.len(), 2);
        assert!(config.rules[0].anonymous.contains(Action::Pull));
        assert!(!config.rules[0].anonymous.contains(Action::Push));
        assert_eq!(config.rules[1].repositories[1].as_str(), "shared");
        assert_eq!(
            config.rules[1].groups["team-a"],
            Actions::from_iter([Action::Pull, Action::Push])
        );
        assert!(config.catalog.authenticated);
        assert_eq!(config.login_limit.max_failures, 3);
        assert_eq!(config.login_limit.window_secs, 60);
        let external = config.external.unwrap();
        assert_eq!(external.jwks, Some(PathBuf::from("keys/jwks.json")));
        assert_eq!(external.service, None);
    }

    #[test]
    fn the_module_doc_example_parses() {
        let doc = include_str!("config.rs");
        let example: String = doc
            .lines()
            .take_while(|l| l.starts_with("//!"))
            .map(|l| l.trim_start_matches("//!").trim_start())
            .skip_while(|l| !l.starts_with("```toml"))
            .skip(1)
            .take_while(|l| !l.starts_with("```"))
            .map(|l| format!("{l}\n"))
            .collect();
        let table: toml::Table = toml::from_str(&example).unwrap();
        let config: AuthConfig = table["auth"].clone().try_into().unwrap();
        // Both key sources are shown there; one of them must go.
        assert!(config.validate().is_err());
        assert_eq!(config.admin_groups, ["ops"]);
        assert_eq!(config.trusted_proxies, ["10.0.0.0/8".parse().unwrap()]);
    }

    #[test]
    fn defaults_apply_to_an_empty_table() {
        let config: AuthConfig = toml::from_str("").unwrap();
        config.validate().unwrap();
        assert_eq!(config.service, "berth");
        assert_eq!(config.challenge, Challenge::Bearer);
        assert_eq!(config.token_ttl_secs, 300);
        assert!(config.rules.is_empty());
        assert_eq!(
            config.robots_path(Path::new("/srv/data")),
            Path::new("/srv/data/berth/robots.json")
        );
    }

    #[test]
    fn bad_values_are_refused() {
        for bad in [
            "unknown_key = 1",
            "challenge = \"digest\"",
            "[[rules]]\nrepositories = [\"a/*\"]\nanonymous = [\"pul\"]",
            "[[rules]]\nrepositories = [\"Bad/*\"]",
            "[[rules]]\nrepositories = [\"a//b\"]",
        ] {
            assert!(toml::from_str::<AuthConfig>(bad).is_err(), "{bad} accepted");
        }
        for invalid in [
            "token_ttl_secs = 0",
            "admin_groups = [\"nobody\"]",
            "[[rules]]\nrepositories = [\"a\"]\ngroups = { ghosts = [\"pull\"] }",
            "[[rules]]\nanonymous = [\"pull\"]",
            "[external]\nissuer = \"x\"",
            "[external]\nissuer = \"x\"\npublic_key = \"a\"\njwks = \"b\"",
            "[login_limit]\nmax_failures = 0",
        ] {
            let config: AuthConfig = toml::from_str(invalid).unwrap();
            assert!(config.validate().is_err(), "{invalid} accepted");
        }
    }
}
