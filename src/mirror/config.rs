//! The `[[proxy]]` entries: which upstream registry each mirrored prefix
//! serves (docs/design/mirror.md §2).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::auth::Secret;
use crate::oci::RepositoryName;

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
}

fn default_tag_ttl() -> Duration {
    Duration::from_secs(5 * 60)
}

fn default_revalidate_timeout() -> Duration {
    Duration::from_secs(2)
}

impl ProxyConfig {
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
        match (&self.username, &self.password, &self.password_file) {
            (_, Some(_), Some(_)) => Err("give password or password_file, not both".into()),
            (None, Some(_), _) | (None, _, Some(_)) => Err("a password needs a username".into()),
            (Some(_), None, None) => Err("username needs password or password_file".into()),
            _ => Ok(()),
        }
    }
}

/// Whether names under `inner` are also under `outer` (`hub/x` in `hub`).
fn nests(inner: &str, outer: &str) -> bool {
    inner == outer
        || inner
            .strip_prefix(outer)
            .is_some_and(|rest| rest.starts_with('/'))
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
        ProxyConfig {
            prefix: prefix.into(),
            upstream: upstream.into(),
            tag_ttl: default_tag_ttl(),
            revalidate_timeout: default_revalidate_timeout(),
            username: None,
            password: None,
            password_file: None,
        }
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
        assert_eq!(
            upstream_base("https://example.com/registry/").unwrap(),
            "https://example.com/registry"
        );
    }
}
