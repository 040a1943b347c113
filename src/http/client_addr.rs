//! Who the client is when proxies stand between it and Berth: its address
//! (the login limiter's key) and the scheme and host it used (a derived
//! realm). Forwarding headers are believed only from a peer in
//! `trusted_proxies`; from anyone else they are the client's own words and
//! are ignored, so a client cannot pick the address it is limited under.
//!
//! The address is the rightmost one in the configured header
//! (`X-Forwarded-For`, or RFC 7239 `Forwarded`'s `for=`) that is not itself a
//! trusted proxy: each proxy appends the address it saw, so everything left
//! of the first untrusted address may have been written by the client. When
//! every address in the chain is trusted, the leftmost is the client; an
//! entry that is not an address (`unknown`, an obfuscated name) ends the
//! walk at the last trusted hop.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::extract::ConnectInfo;
use axum::http::request::Parts;
use axum::http::HeaderMap;

use super::host::Authority;
use crate::auth::{ForwardedHeader, TrustedProxy};

/// What a request says about its client, after deciding whom to believe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientView {
    pub addr: IpAddr,
    /// The scheme the client used, as a trusted proxy reports it.
    pub proto: Option<String>,
    /// The host the client addressed, as a trusted proxy reports it, if
    /// it is a valid `host[:port]` (else ignored, and logged).
    pub host: Option<Authority>,
}

/// The client of `parts` given the configured proxies.
pub fn client_view(parts: &Parts, proxies: &[TrustedProxy], header: ForwardedHeader) -> ClientView {
    client_of(peer(parts), &parts.headers, proxies, header)
}

/// The peer address the server recorded for the connection; all clients
/// share one address only when the router is served without connect info
/// (embedding), where the limiter then counts them together.
fn peer(parts: &Parts) -> IpAddr {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip())
}

fn client_of(
    peer: IpAddr,
    headers: &HeaderMap,
    proxies: &[TrustedProxy],
    header: ForwardedHeader,
) -> ClientView {
    let trusted = |ip: IpAddr| proxies.iter().any(|p| p.contains(ip));
    if !trusted(peer) {
        return ClientView {
            addr: peer,
            proto: None,
            host: None,
        };
    }
    // (the hop's address, if it is one; its proto and host) left to right
    let hops: Vec<Hop> = match header {
        ForwardedHeader::XForwardedFor => values(headers, "x-forwarded-for")
            .map(|v| Hop {
                addr: node_addr(v),
                proto: None,
                host: None,
            })
            .collect(),
        ForwardedHeader::Forwarded => values(headers, "forwarded").map(forwarded_hop).collect(),
    };
    let mut client = Hop {
        addr: Some(peer),
        proto: None,
        host: None,
    };
    for hop in hops.into_iter().rev() {
        let Some(addr) = hop.addr else { break };
        let untrusted = !trusted(addr);
        client = hop;
        if untrusted {
            break;
        }
    }
    let (proto, host) = match header {
        // Set (or appended) by the nearest proxy: the rightmost is its.
        ForwardedHeader::XForwardedFor => (
            values(headers, "x-forwarded-proto")
                .last()
                .map(str::to_owned),
            values(headers, "x-forwarded-host")
                .last()
                .map(str::to_owned),
        ),
        // What the proxy that saw the client recorded beside its address.
        ForwardedHeader::Forwarded => (client.proto, client.host),
    };
    ClientView {
        addr: client.addr.unwrap_or(peer),
        proto,
        host: host.and_then(|host| {
            let valid = Authority::parse(&host);
            if valid.is_none() {
                // A proxy passing on what its client wrote, or a
                // misconfigured one: the request's own authority is used.
                tracing::warn!(host = ?host, "ignored an invalid forwarded host");
            }
            valid
        }),
    }
}

struct Hop {
    addr: Option<IpAddr>,
    proto: Option<String>,
    host: Option<String>,
}

/// The comma-separated values of every `name` header line, in order.
fn values<'a>(headers: &'a HeaderMap, name: &str) -> impl DoubleEndedIterator<Item = &'a str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect::<Vec<_>>()
        .into_iter()
}

/// One `Forwarded` element: `for=192.0.2.60;proto=https;by=203.0.113.43`.
fn forwarded_hop(element: &str) -> Hop {
    let mut hop = Hop {
        addr: None,
        proto: None,
        host: None,
    };
    for pair in element.split(';') {
        let Some((key, value)) = pair.split_once('=') else {
            continue;
        };
        let value = value.trim().trim_matches('"');
        match key.trim().to_ascii_lowercase().as_str() {
            "for" => hop.addr = node_addr(value),
            "proto" => hop.proto = Some(value.to_owned()),
            "host" => hop.host = Some(value.to_owned()),
            _ => {}
        }
    }
    hop
}

/// An address with or without a port: `192.0.2.1`, `192.0.2.1:8080`,
/// `2001:db8::1`, `[2001:db8::1]:4711`; `None` for `unknown` or a name.
fn node_addr(node: &str) -> Option<IpAddr> {
    let node = node.trim().trim_matches('"');
    if let Some(rest) = node.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    node.parse::<IpAddr>()
        .ok()
        .or_else(|| node.parse::<SocketAddr>().ok().map(|s| s.ip()))
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn proxies(list: &[&str]) -> Vec<TrustedProxy> {
        list.iter().map(|p| p.parse().unwrap()).collect()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    const XFF: ForwardedHeader = ForwardedHeader::XForwardedFor;

    #[test]
    fn headers_from_an_untrusted_peer_are_ignored() {
        let h = headers(&[
            ("x-forwarded-for", "198.51.100.7"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
        ]);
        let view = client_of(ip("192.0.2.9"), &h, &proxies(&["10.0.0.0/8"]), XFF);
        assert_eq!(
            view,
            ClientView {
                addr: ip("192.0.2.9"),
                proto: None,
                host: None
            }
        );
        let none = client_of(ip("10.0.0.1"), &h, &[], XFF);
        assert_eq!(none.addr, ip("10.0.0.1"));
    }

    #[test]
    fn the_rightmost_untrusted_address_is_the_client() {
        let p = proxies(&["10.0.0.0/8", "192.0.2.1"]);
        // The client wrote "1.1.1.1" itself; the edge proxy appended what
        // it saw (203.0.113.5), an inner proxy appended the edge's address.
        let h = headers(&[
            ("x-forwarded-for", "1.1.1.1, 203.0.113.5"),
            ("x-forwarded-for", "10.1.2.3"),
            ("x-forwarded-proto", "https"),
        ]);
        let view = client_of(ip("192.0.2.1"), &h, &p, XFF);
        assert_eq!(view.addr, ip("203.0.113.5"));
        assert_eq!(view.proto.as_deref(), Some("https"));
        // All trusted: the leftmost; nothing forwarded: the peer.
        let inner = headers(&[("x-forwarded-for", "10.9.9.9, 10.1.1.1")]);
        assert_eq!(
            client_of(ip("10.0.0.2"), &inner, &p, XFF).addr,
            ip("10.9.9.9")
        );
        assert_eq!(
            client_of(ip("10.0.0.2"), &HeaderMap::new(), &p, XFF).addr,
            ip("10.0.0.2")
        );
        // Garbage ends the walk at the last trusted hop.
        let odd = headers(&[("x-forwarded-for", "unknown, 10.1.1.1")]);
        assert_eq!(
            client_of(ip("10.0.0.2"), &odd, &p, XFF).addr,
            ip("10.1.1.1")
        );
    }

    #[test]
    fn forwarded_elements_give_address_scheme_and_host() {
        let p = proxies(&["10.0.0.0/8"]);
        let h = headers(&[(
            "forwarded",
            r#"for=1.1.1.1;proto=http, for="[2001:db8::17]:4711";proto=https;host=reg.example, for=10.2.2.2"#,
        )]);
        let view = client_of(ip("10.0.0.1"), &h, &p, ForwardedHeader::Forwarded);
        assert_eq!(
            view,
            ClientView {
                addr: ip("2001:db8::17"),
                proto: Some("https".into()),
                host: Authority::parse("reg.example")
            }
        );
        // In Forwarded mode X-Forwarded-For is the client's and ignored.
        let xff = headers(&[("x-forwarded-for", "1.1.1.1")]);
        let view = client_of(ip("10.0.0.1"), &xff, &p, ForwardedHeader::Forwarded);
        assert_eq!(view.addr, ip("10.0.0.1"));
    }

    #[test]
    fn proxies_are_addresses_or_networks_and_match_mapped_ipv4() {
        let p = proxies(&["127.0.0.1", "fd00::/8"]);
        assert!(p[0].contains(ip("127.0.0.1")));
        assert!(p[0].contains(ip("::ffff:127.0.0.1")));
        assert!(!p[0].contains(ip("127.0.0.2")));
        assert!(p[1].contains(ip("fd12::1")));
        assert!("10.0.0.0/33".parse::<TrustedProxy>().is_err());
        assert!("proxy.local".parse::<TrustedProxy>().is_err());
    }

    #[test]
    fn a_forwarded_host_is_used_only_when_valid() {
        let p = proxies(&["10.0.0.0/8"]);
        for bad in [
            "registry.local@evil.example",
            "evil.example/steal?x=",
            "a\" b",
        ] {
            let xfh = headers(&[("x-forwarded-host", bad)]);
            assert_eq!(client_of(ip("10.0.0.1"), &xfh, &p, XFF).host, None, "{bad}");
            let fwd = headers(&[("forwarded", &format!("for=1.1.1.1;host=\"{bad}\""))]);
            let view = client_of(ip("10.0.0.1"), &fwd, &p, ForwardedHeader::Forwarded);
            assert_eq!(view.host, None, "{bad}");
        }
        let xfh = headers(&[("x-forwarded-host", "registry.example:5000")]);
        assert_eq!(
            client_of(ip("10.0.0.1"), &xfh, &p, XFF).host,
            Authority::parse("registry.example:5000")
        );
    }
}
