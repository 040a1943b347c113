//! The authority a request names (`Host`, HTTP/2's `:authority`, an
//! absolute-form target), checked once for every request before it is
//! routed, and the only way client-supplied host names reach a response
//! (the derived token realm): as an [`Authority`], which only validation
//! makes.
//!
//! HTTP/1.1 (RFC 9112 §3.2): a request without `Host`, with more than one,
//! or with an invalid one is answered 400. An absolute-form target's
//! authority is used instead of `Host` (§3.2.2), and is validated the same
//! way. HTTP/1.0 may omit `Host`. HTTP/2 (RFC 9113 §8.3.1): the authority is
//! `:authority` (hyper puts it in the URI); a `Host` beside it must name the
//! same, or the request is malformed (400).
//!
//! **Valid** is narrower than RFC 3986's `uri-host [":" port]` on purpose:
//! a host is a name of letters, digits, `-`, `.`, `_` and `~` (which covers
//! DNS names and IPv4 addresses) or a bracketed IPv6 address, the port 1 to
//! 5 digits up to 65535. The grammar also allows percent-encoding and
//! `!$&'()*+,;=` in a name; no DNS name contains them, no client sends
//! them, and each is one more way to make a URL built from the host mean
//! something else, so they are refused too. Userinfo (`user@host`), paths,
//! quotes and spaces are refused by the grammar itself. Hand-written
//! because `http::uri::Authority` accepts userinfo and the rest (it parses
//! URIs, it does not judge hosts), and the check is a dozen lines.

use std::net::Ipv6Addr;

use axum::http::{header, HeaderMap, Uri, Version};

/// A validated `host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authority(String);

impl Authority {
    /// `value` if it is a valid `host[:port]` (see the module's doc).
    pub fn parse(value: &str) -> Option<Authority> {
        let port = match value.strip_prefix('[') {
            Some(literal) => {
                let (address, rest) = literal.split_once(']')?;
                address.parse::<Ipv6Addr>().ok()?;
                match rest {
                    "" => None,
                    _ => Some(rest.strip_prefix(':')?),
                }
            }
            None => {
                let (host, port) = match value.split_once(':') {
                    Some((host, port)) => (host, Some(port)),
                    None => (value, None),
                };
                let name_byte =
                    |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~');
                if host.is_empty() || host.len() > 255 || !host.bytes().all(name_byte) {
                    return None;
                }
                port
            }
        };
        if let Some(port) = port {
            let digits =
                !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit());
            if !digits || port.parse::<u32>().ok()? > 65535 {
                return None;
            }
        }
        Some(Authority(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Why a request's authority is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostError {
    Missing,
    Repeated,
    Invalid,
    /// HTTP/2 `Host` naming another authority than `:authority`.
    Disagrees,
}

impl HostError {
    pub fn detail(self) -> &'static str {
        match self {
            HostError::Missing => "the request has no Host header",
            HostError::Repeated => "the request has more than one Host header",
            HostError::Invalid => "the Host header or request target is not a valid host[:port]",
            HostError::Disagrees => "the Host header and :authority name different hosts",
        }
    }
}

/// The validated authority a request names: the target's (HTTP/2
/// `:authority`, or an HTTP/1.1 absolute-form target), else `Host`'s;
/// `None` only for an HTTP/1.0 request without either.
pub fn request_authority(
    version: Version,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Option<Authority>, HostError> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(HostError::Repeated);
    }
    let host = host
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(Authority::parse)
                .ok_or(HostError::Invalid)
        })
        .transpose()?;
    let target = uri
        .authority()
        .map(|a| Authority::parse(a.as_str()).ok_or(HostError::Invalid))
        .transpose()?;
    if version >= Version::HTTP_2 {
        if let (Some(host), Some(target)) = (&host, &target) {
            if !host.0.eq_ignore_ascii_case(&target.0) {
                return Err(HostError::Disagrees);
            }
        }
    } else if version == Version::HTTP_11 && host.is_none() {
        return Err(HostError::Missing);
    }
    match target.or(host) {
        None if version >= Version::HTTP_2 => Err(HostError::Missing),
        authority => Ok(authority),
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn names_addresses_and_ports_are_valid() {
        for valid in [
            "registry.local",
            "registry.local:5000",
            "REGISTRY.example.",
            "my_host-1~x",
            "127.0.0.1",
            "127.0.0.1:8080",
            "[::1]",
            "[2001:db8::17]:443",
            "localhost:65535",
            "h:1",
        ] {
            assert_eq!(
                Authority::parse(valid).map(|a| a.0),
                Some(valid.to_owned()),
                "{valid}"
            );
        }
    }

    #[test]
    fn userinfo_paths_quotes_and_odd_ports_are_invalid() {
        for invalid in [
            "",
            ":5000",
            "registry.local@evil.example",
            "user:pw@evil.example",
            "evil.example/steal?x=",
            "evil.example#x",
            "a\" b",
            "a b",
            "a\\b",
            "a%40b",
            "a;b",
            "a,b",
            "host:",
            "host:65536",
            "host:123456",
            "host:80:80",
            "host:8a",
            "host:+80",
            "[::1",
            "[::1]x",
            "[::1]:",
            "[not-v6]",
            "[v1.fe80::a]",
            "[fe80::1%25eth0]",
            "::1",
            "ü.example",
        ] {
            assert_eq!(Authority::parse(invalid), None, "{invalid:?}");
        }
        assert_eq!(Authority::parse(&"a".repeat(256)), None);
    }

    fn headers(hosts: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for host in hosts {
            map.append(header::HOST, HeaderValue::from_str(host).unwrap());
        }
        map
    }

    fn authority(version: Version, uri: &str, hosts: &[&str]) -> Result<Option<String>, HostError> {
        request_authority(version, &uri.parse().unwrap(), &headers(hosts)).map(|a| a.map(|a| a.0))
    }

    #[test]
    fn http1_needs_exactly_one_valid_host() {
        use Version as V;
        let ok = |host: &str| Ok(Some(host.to_owned()));
        assert_eq!(
            authority(V::HTTP_11, "/v2/", &["r.local:5000"]),
            ok("r.local:5000")
        );
        assert_eq!(authority(V::HTTP_11, "/v2/", &[]), Err(HostError::Missing));
        assert_eq!(
            authority(V::HTTP_11, "/v2/", &["a", "a"]),
            Err(HostError::Repeated)
        );
        assert_eq!(
            authority(V::HTTP_11, "/v2/", &["a@b"]),
            Err(HostError::Invalid)
        );
        // HTTP/1.0 may omit it, but not send a bad one.
        assert_eq!(authority(V::HTTP_10, "/v2/", &[]), Ok(None));
        assert_eq!(
            authority(V::HTTP_10, "/v2/", &["a b"]),
            Err(HostError::Invalid)
        );
        // An absolute-form target's authority wins, and is validated too.
        assert_eq!(
            authority(V::HTTP_11, "http://t.example/v2/", &["h.example"]),
            ok("t.example")
        );
        assert_eq!(
            authority(V::HTTP_11, "http://r.local@evil.example/v2/", &["r.local"]),
            Err(HostError::Invalid)
        );
        assert_eq!(
            authority(V::HTTP_11, "http://t.example/v2/", &[]),
            Err(HostError::Missing)
        );
    }

    #[test]
    fn http2_uses_authority_and_a_host_beside_it_must_agree() {
        use Version as V;
        let ok = |host: &str| Ok(Some(host.to_owned()));
        assert_eq!(
            authority(V::HTTP_2, "http://r.local/v2/", &[]),
            ok("r.local")
        );
        assert_eq!(
            authority(V::HTTP_2, "http://r.local/v2/", &["R.Local"]),
            ok("r.local")
        );
        assert_eq!(
            authority(V::HTTP_2, "http://r.local/v2/", &["evil.example"]),
            Err(HostError::Disagrees)
        );
        assert_eq!(authority(V::HTTP_2, "/v2/", &["r.local"]), ok("r.local"));
        assert_eq!(authority(V::HTTP_2, "/v2/", &[]), Err(HostError::Missing));
    }
}
