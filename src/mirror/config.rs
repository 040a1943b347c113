//! The `[[proxy]]` entries: which upstream registry each mirrored prefix
//! serves (docs/design/mirror.md §2).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::auth::Secret;
use crate::oci::{RepositoryName, RepositoryPattern};

/// One `[[proxy]]` entry: local names under `prefix` are the upstream's
/// names (`hub/library/alpine` is `library/alpine` at `upstream`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// The first components of every local name this entry serves.
    pub prefix: String,
    /// The upstream registry's base URL (`https://registry-1.docker.io`);
    /// a path is kept (its API is then at `<path>/v2/`).
    pub upstream: String,
    /// Registries (hosts, with a port where they have one) whose names this
    /// entry also serves when a request says so with `?ns=` (what
    /// containerd sends to a mirror): `GET /v2/library/alpine/...?ns=docker.io`
    /// is `<prefix>/library/alpine`. `docker.io`, `index.docker.io` and
    /// `registry-1.docker.io` name one registry.
    #[serde(default)]
    pub ns: Vec<String>,
    /// Hosts (with a port where clients send one) whose requests are all for
    /// this entry: `GET /v2/library/alpine/...` sent to such a host is
    /// `<prefix>/library/alpine`. This is how dockerd's `registry-mirrors`
    /// (Docker Hub only, plain names, no path) reach a mirror: give the
    /// mirror a DNS name of its own and list it here.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Pushes into the prefix are taken (else refused, 403 `DENIED`). A
    /// pushed tag shadows the upstream's: it is served as pushed and never
    /// checked upstream until the mirror sets it again.
    #[serde(default)]
    pub allow_push: bool,
    /// Cached images nobody pulled for this long are evicted by the
    /// lifecycle (`gc_interval` or `berth gc`): their tags and revision
    /// links go, then garbage collection reclaims their blobs after its
    /// grace period; the next pull fetches them again. Absent: kept.
    #[serde(default, with = "humantime_serde")]
    pub unused_for: Option<Duration>,
    /// The most the entry's cached images may hold, in bytes: beyond it the
    /// lifecycle evicts the least recently pulled (each blob counted once;
    /// met once garbage collection ran, one grace period later).
    #[serde(default)]
    pub max_bytes: Option<u64>,
    /// Upstream names that may be pulled through (`library/*`); empty: all.
    #[serde(default)]
    pub allow: Vec<RepositoryPattern>,
    /// Upstream names that may not, whatever `allow` says.
    #[serde(default)]
    pub deny: Vec<RepositoryPattern>,
    /// How long a tag's digest is trusted before the upstream is asked again
    /// (with a `HEAD`, which Docker Hub does not count as a pull); 0: on
    /// every pull of the tag.
    #[serde(default = "default_tag_ttl", with = "humantime_serde")]
    pub tag_ttl: Duration,
    /// How long a pull of a cached tag waits for the upstream's answer to
    /// its check before it is served as cached (with a `Warning`; the check
    /// goes on and moves the tag for later pulls).
    #[serde(default = "default_revalidate_timeout", with = "humantime_serde")]
    pub revalidate_timeout: Duration,
    /// The account Berth logs in to the upstream with (its token flow or
    /// Basic), with `password` or `password_file`; absent: anonymous.
    /// Whoever may pull the prefix here reads what this account can.
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<Secret>,
    /// A file holding the password (trailing newline ignored), read again
    /// when it changes, so the password rotates without a restart.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Instead of `username`: a docker `config.json` whose `auths` entry for
    /// the upstream's host gives the credentials (Docker Hub's key is
    /// `https://index.docker.io/v1/`), read at start. Credential helpers
    /// (`credsStore`, `credHelpers`) are not run.
    #[serde(default)]
    pub docker_config: Option<PathBuf>,
}

fn default_tag_ttl() -> Duration {
    Duration::from_secs(5 * 60)
}

fn default_revalidate_timeout() -> Duration {
    Duration::from_secs(2)
}

impl ProxyConfig {
    /// An entry with the defaults: anonymous, no `ns`.
    pub fn new(prefix: &str, upstream: &str) -> ProxyConfig {
        ProxyConfig {
            prefix: prefix.to_owned(),
            upstream: upstream.to_owned(),
            ns: Vec::new(),
            hosts: Vec::new(),
            allow_push: false,
            unused_for: None,
            max_bytes: None,
            allow: Vec::new(),
            deny: Vec::new(),
            tag_ttl: default_tag_ttl(),
            revalidate_timeout: default_revalidate_timeout(),
            username: None,
            password: None,
            password_file: None,
            docker_config: None,
        }
    }

    /// The registries `ns` names, each as [`registry_key`] gives it.
    pub(super) fn namespaces(&self) -> Vec<String> {
        self.ns.iter().map(|ns| registry_key(ns)).collect()
    }

    /// Checks every entry and that no two claim the same names.
    pub fn validate_all(entries: &[ProxyConfig]) -> Result<(), String> {
        for (i, entry) in entries.iter().enumerate() {
            entry
                .validate()
                .map_err(|e| format!("[[proxy]] {:?}: {e}", entry.prefix))?;
            for other in &entries[..i] {
                if nests(&entry.prefix, &other.prefix) || nests(&other.prefix, &entry.prefix) {
                    return Err(format!(
                        "[[proxy]] prefixes {:?} and {:?} overlap: one name, one entry",
                        other.prefix, entry.prefix
                    ));
                }
                if let Some(host) = entry.hosts.iter().find(|h| other.hosts.contains(h)) {
                    return Err(format!(
                        "[[proxy]] {:?} and {:?} both list host {host:?}: one host, one entry",
                        other.prefix, entry.prefix
                    ));
                }
                let theirs = other.namespaces();
                if let Some(ns) = entry.namespaces().iter().find(|ns| theirs.contains(ns)) {
                    return Err(format!(
                        "[[proxy]] {:?} and {:?} both list ns {ns:?}: one registry, one entry",
                        other.prefix, entry.prefix
                    ));
                }
            }
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), String> {
        if RepositoryName::parse(&self.prefix).is_none() {
            return Err(
                "prefix must be a valid repository name (lowercase components separated by /)"
                    .into(),
            );
        }
        upstream_base(&self.upstream)?;
        if let Some(ns) = self.ns.iter().find(|ns| !is_registry_host(ns)) {
            return Err(format!(
                "ns {ns:?} is not a registry's host (lowercase letters, digits, dots and dashes, then :port if any)"
            ));
        }
        if let Some(host) = self.hosts.iter().find(|h| !is_registry_host(h)) {
            return Err(format!(
                "host {host:?} is not a host name (lowercase letters, digits, dots and dashes, then :port if any)"
            ));
        }
        if self.docker_config.is_some()
            && (self.username.is_some() || self.password.is_some() || self.password_file.is_some())
        {
            return Err("give docker_config or username with a password, not both".into());
        }
        match (&self.username, &self.password, &self.password_file) {
            (_, Some(_), Some(_)) => Err("give password or password_file, not both".into()),
            (None, Some(_), _) | (None, _, Some(_)) => Err("a password needs a username".into()),
            (Some(_), None, None) => Err("username needs password or password_file".into()),
            _ => Ok(()),
        }
    }
}

/// The (username, password) a docker `config.json` holds for `upstream`'s
/// host: its `auths` entry, keyed by a host (`ghcr.io`), a host and port, or
/// a URL (`https://index.docker.io/v1/` for Docker Hub), with `auth`
/// (base64 of `user:password`) or `username` and `password`.
pub(super) fn docker_config_credentials(
    text: &str,
    upstream: &str,
) -> Result<(String, Secret), String> {
    #[derive(Deserialize)]
    struct DockerConfig {
        #[serde(default)]
        auths: std::collections::HashMap<String, AuthEntry>,
    }
    #[derive(Deserialize)]
    struct AuthEntry {
        auth: Option<String>,
        username: Option<String>,
        password: Option<String>,
        identitytoken: Option<String>,
    }
    let config: DockerConfig =
        serde_json::from_str(text).map_err(|e| format!("not a docker config.json: {e}"))?;
    let url = reqwest::Url::parse(upstream).map_err(|e| e.to_string())?;
    let host = match url.port() {
        Some(port) => format!("{}:{port}", url.host_str().unwrap_or_default()),
        None => url.host_str().unwrap_or_default().to_owned(),
    };
    // Docker Hub's API host is not the name its logins are kept under.
    let hub = ["registry-1.docker.io", "index.docker.io", "docker.io"];
    let wanted: Vec<&str> = if hub.contains(&host.as_str()) {
        hub.to_vec()
    } else {
        vec![host.as_str()]
    };
    let entry = config.auths.iter().find_map(|(key, entry)| {
        let key_host = key
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap_or_default();
        wanted.contains(&key_host).then_some(entry)
    });
    let Some(entry) = entry else {
        return Err(format!(
            "no auths entry for {host} (credential helpers, credsStore and credHelpers, are not run)"
        ));
    };
    if entry.identitytoken.is_some() {
        return Err(format!(
            "the auths entry for {host} holds an identity token, which Berth does not use"
        ));
    }
    if let (Some(username), Some(password)) = (&entry.username, &entry.password) {
        return Ok((username.clone(), Secret::new(password.as_str())));
    }
    use base64::Engine;
    let decoded = entry
        .auth
        .as_deref()
        .and_then(|a| {
            base64::engine::general_purpose::STANDARD
                .decode(a.trim())
                .ok()
        })
        .and_then(|d| String::from_utf8(d).ok())
        .ok_or_else(|| format!("the auths entry for {host} has no usable auth"))?;
    let (username, password) = decoded
        .split_once(':')
        .ok_or_else(|| format!("the auths entry for {host} has no usable auth"))?;
    Ok((username.to_owned(), Secret::new(password)))
}

/// Whether `host` names a registry as `?ns=` does: a DNS name or an IPv4
/// address, lowercase, and a port if any.
fn is_registry_host(host: &str) -> bool {
    let (name, port) = match host.rsplit_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (host, None),
    };
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    port_ok
        && !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

/// Whether an upstream base URL is Docker Hub's.
pub(super) fn is_docker_hub(base: &str) -> bool {
    reqwest::Url::parse(base).is_ok_and(|url| {
        url.host_str()
            .is_some_and(|host| registry_key(host) == "docker.io")
    })
}

/// One spelling per registry: Docker Hub's three names are `docker.io`.
pub(super) fn registry_key(host: &str) -> String {
    match host {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".to_owned(),
        other => other.to_owned(),
    }
}

/// Whether names under `inner` are also under `outer` (`hub/x` in `hub`).
fn nests(inner: &str, outer: &str) -> bool {
    inner == outer || crate::oci::name::lies_below(inner, outer)
}

/// The upstream's base URL without a trailing `/`, checked: `http` or
/// `https`, a host, no user info (credentials have keys of their own), no
/// query or fragment.
pub(super) fn upstream_base(upstream: &str) -> Result<String, String> {
    let url = reqwest::Url::parse(upstream)
        .map_err(|e| format!("upstream {upstream:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!(
            "upstream {upstream:?} must be an http:// or https:// URL with a host"
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "upstream {upstream:?} must not carry credentials in the URL"
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "upstream {upstream:?} must not have a query or a fragment"
        ));
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(prefix: &str, upstream: &str) -> ProxyConfig {
        ProxyConfig::new(prefix, upstream)
    }

    #[test]
    fn ns_and_hosts_values_are_host_names_each_listed_by_one_entry() {
        let mut hub = entry("hub", "https://registry-1.docker.io");
        hub.ns = vec!["docker.io".into()];
        let mut local = entry("local", "http://127.0.0.1:5001");
        local.ns = vec!["localhost:5001".into(), "127.0.0.1:5001".into()];
        assert_eq!(ProxyConfig::validate_all(&[hub.clone(), local]), Ok(()));
        for bad in [
            "",
            "Docker.io",
            "docker.io/library",
            "a..b",
            "-a.io",
            "x:",
            "x:port",
            "x:123456",
        ] {
            let mut wrong = hub.clone();
            wrong.ns = vec![bad.into()];
            let error = ProxyConfig::validate_all(&[wrong]).unwrap_err();
            assert!(
                error.contains("is not a registry's host"),
                "{bad:?}: {error}"
            );
        }
        for bad in [
            "",
            "Mirror.example",
            "mirror.example/v2",
            "mirror example",
            "x:",
        ] {
            let mut wrong = entry("hub", "https://registry-1.docker.io");
            wrong.hosts = vec![bad.into()];
            let error = ProxyConfig::validate_all(&[wrong]).unwrap_err();
            assert!(error.contains("is not a host name"), "{bad:?}: {error}");
        }
        let mut twice = entry("other", "https://quay.io");
        twice.hosts = vec!["m.example".into()];
        let mut first = entry("hub", "https://registry-1.docker.io");
        first.hosts = vec!["m.example".into()];
        let error = ProxyConfig::validate_all(&[first, twice]).unwrap_err();
        assert!(error.contains("both list host"), "{error}");
        // Docker Hub's names are one registry.
        let mut other = entry("dockerhub", "https://mirror.gcr.io");
        other.ns = vec!["registry-1.docker.io".into()];
        let error = ProxyConfig::validate_all(&[hub, other]).unwrap_err();
        assert!(error.contains("both list ns"), "{error}");
    }

    #[test]
    fn entries_are_checked_and_may_not_overlap() {
        let hub = entry("hub", "https://registry-1.docker.io");
        let ghcr = entry("ghcr", "https://ghcr.io/");
        assert_eq!(
            ProxyConfig::validate_all(&[hub.clone(), ghcr.clone()]),
            Ok(())
        );
        let hubx = entry("hub/x", "https://quay.io");
        assert!(ProxyConfig::validate_all(&[hub.clone(), hubx]).is_err());
        assert!(ProxyConfig::validate_all(&[hub.clone(), hub.clone()]).is_err());
        // `hubs` does not nest in `hub`.
        let hubs = entry("hubs", "https://quay.io");
        assert_eq!(ProxyConfig::validate_all(&[hub, hubs]), Ok(()));
        for bad in [
            entry("Hub", "https://ghcr.io"),
            entry("hub/", "https://ghcr.io"),
            entry("hub", "ftp://ghcr.io"),
            entry("hub", "ghcr.io"),
            entry("hub", "https://user:secret@ghcr.io"),
            entry("hub", "https://ghcr.io/?x=1"),
        ] {
            assert!(
                ProxyConfig::validate_all(std::slice::from_ref(&bad)).is_err(),
                "{bad:?}"
            );
        }
        let with = |user: Option<&str>, password: Option<&str>, file: Option<&str>| ProxyConfig {
            username: user.map(Into::into),
            password: password.map(Into::into),
            password_file: file.map(Into::into),
            ..entry("hub", "https://ghcr.io")
        };
        for (good, config) in [
            (true, with(Some("ci"), Some("pw"), None)),
            (true, with(Some("ci"), None, Some("/etc/pw"))),
            (false, with(Some("ci"), None, None)),
            (false, with(None, Some("pw"), None)),
            (false, with(Some("ci"), Some("pw"), Some("/etc/pw"))),
        ] {
            let checked = ProxyConfig::validate_all(std::slice::from_ref(&config));
            assert_eq!(checked.is_ok(), good, "{config:?}: {checked:?}");
        }
        assert!(!format!("{:?}", with(Some("ci"), Some("hunter2"), None)).contains("hunter2"));
        let both = ProxyConfig {
            docker_config: Some("/etc/docker.json".into()),
            ..with(Some("ci"), Some("pw"), None)
        };
        assert!(ProxyConfig::validate_all(&[both]).is_err());
        assert_eq!(
            upstream_base("https://example.com/registry/").unwrap(),
            "https://example.com/registry"
        );
    }

    #[test]
    fn docker_config_entries_are_found_by_host_and_docker_hub_by_its_login_key() {
        // base64("ci:pw:with:colons")
        let text = r#"{"auths": {
            "https://index.docker.io/v1/": {"auth": "Y2k6cHc6d2l0aDpjb2xvbnM="},
            "ghcr.io": {"username": "octo", "password": "tok"},
            "http://127.0.0.1:5000": {"auth": "YTpi"},
            "quay.io": {"identitytoken": "x"}
        }, "credsStore": "desktop"}"#;
        let (user, password) =
            docker_config_credentials(text, "https://registry-1.docker.io").unwrap();
        assert_eq!((user.as_str(), password.expose()), ("ci", "pw:with:colons"));
        let (user, password) = docker_config_credentials(text, "https://ghcr.io/").unwrap();
        assert_eq!((user.as_str(), password.expose()), ("octo", "tok"));
        let (user, _) = docker_config_credentials(text, "http://127.0.0.1:5000").unwrap();
        assert_eq!(user, "a");
        assert!(docker_config_credentials(text, "http://127.0.0.1:5001").is_err());
        assert!(docker_config_credentials(text, "https://quay.io").is_err());
        assert!(docker_config_credentials("not json", "https://ghcr.io").is_err());
    }
}
