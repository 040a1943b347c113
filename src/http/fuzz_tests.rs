//! Fuzz tests of what the HTTP layer parses itself (issue 12): `Range`, an
//! upload chunk's `Content-Range`, the `/v2/` route parser, the listing
//! query and the `Host` authority (which the token realm is built from). The whole router under arbitrary requests is `tests/it/fuzz.rs`;
//! the harness and how to run longer: `crate::oci::fuzzing`.

use std::sync::LazyLock;

use axum::http::{header, HeaderMap, HeaderValue, Method};
use proptest::prelude::*;
use regex::Regex;

use super::host::Authority;
use super::range::{parse as parse_range, RangeRequest};
use super::routes::{parse as parse_route, resolve, Path, Resource, Unrouted};
use super::uploads::chunk_start;
use crate::oci::fuzzing::{bytes, config, corpus, text};
use crate::oci::{ErrorCode, RepositoryName};

/// Blob sizes: the edges (empty, one byte), small, and anything.
fn size() -> impl Strategy<Value = u64> {
    prop_oneof![0u64..3, 0u64..2000, any::<u64>(), Just(u64::MAX)]
}

/// A number as a client might write it, overflow included.
fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        (0u64..2100).prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        Just("18446744073709551616".to_owned()),
        Just(String::new()),
        Just("+1".to_owned()),
    ]
}

fn range_header() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => text("range"),
        1 => (number(), number()).prop_map(|(a, b)| format!("bytes={a}-{b}")),
    ]
}

fn content_range() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => bytes("content_range"),
        1 => (number(), number()).prop_map(|(a, b)| format!("{a}-{b}").into_bytes()),
    ]
}

proptest! {
    #![proptest_config(config(2000))]

    #[test]
    fn ranges_are_what_rfc_9110_says_and_lie_within_the_blob(header in range_header(), size in size()) {
        check_range(&header, size)?;
    }

    #[test]
    fn chunk_ranges_follow_the_spec_and_agree_with_their_length(
        value in content_range(),
        length in proptest::option::of(prop_oneof![number(), (0u64..2100).prop_map(|n| n.to_string())]),
    ) {
        check_content_range(&value, length.as_deref())?;
    }

    #[test]
    fn routes_rebuild_their_path_and_never_name_an_invalid_repository(
        rest in text("route"),
        method in proptest::sample::select(&[Method::GET, Method::HEAD, Method::PUT, Method::POST, Method::PATCH, Method::DELETE, Method::OPTIONS][..]),
    ) {
        check_route(&rest, &method)?;
    }

    #[test]
    fn listing_numbers_are_digits_or_pagination_invalid(query in text("query")) {
        check_pagination(&query)?;
    }

    #[test]
    fn a_host_is_accepted_only_as_an_authority_that_cannot_move_the_realm(host in text("host")) {
        check_host(&host)?;
    }
}

/// `pattern` matching a whole string.
fn whole(pattern: &str) -> Regex {
    Regex::new(&format!(r"\A(?:{pattern})\z")).expect("pattern compiles")
}

/// The answer RFC 9110 §14.1.2 gives for one `bytes=` range (the parser
/// trims whitespace around each part; several ranges or another unit are
/// ignored, so the whole blob is sent), written from the RFC, not the code.
fn expected_range(header: &str, size: u64) -> RangeRequest {
    static FIRST_LAST: LazyLock<Regex> =
        LazyLock::new(|| whole(r"\s*bytes=\s*([0-9]+)\s*-\s*([0-9]*)\s*"));
    static SUFFIX: LazyLock<Regex> = LazyLock::new(|| whole(r"\s*bytes=\s*-\s*([0-9]+)\s*"));
    let (first_last, suffix) = (&*FIRST_LAST, &*SUFFIX);
    if let Some(c) = first_last.captures(header) {
        let Ok(first) = c[1].parse::<u64>() else {
            return RangeRequest::Whole;
        };
        let last = match &c[2] {
            "" => None,
            digits => match digits.parse::<u64>() {
                Ok(last) => Some(last),
                Err(_) => return RangeRequest::Whole,
            },
        };
        return match last {
            Some(last) if first > last => RangeRequest::Unsatisfiable,
            _ if first >= size => RangeRequest::Unsatisfiable,
            Some(last) => RangeRequest::Partial(first..last.min(size - 1) + 1),
            None => RangeRequest::Partial(first..size),
        };
    }
    if let Some(c) = suffix.captures(header) {
        return match c[1].parse::<u64>() {
            Err(_) => RangeRequest::Whole,
            Ok(0) => RangeRequest::Unsatisfiable,
            Ok(_) if size == 0 => RangeRequest::Unsatisfiable,
            Ok(n) => RangeRequest::Partial(size - n.min(size)..size),
        };
    }
    RangeRequest::Whole
}

fn check_range(header: &str, size: u64) -> Result<(), TestCaseError> {
    let parsed = parse_range(Some(header), size);
    if let RangeRequest::Partial(range) = &parsed {
        prop_assert!(
            range.start < range.end && range.end <= size,
            "{:?} of {}",
            range,
            size
        );
    }
    prop_assert_eq!(
        parsed,
        expected_range(header, size),
        "{:?} of {}",
        header,
        size
    );
    Ok(())
}

/// The spec's `^[0-9]+-[0-9]+$` (the `bytes ` unit, whitespace and a
/// `/total`, which is not read, are tolerated): accepted means start ≤ end, and a `Content-Length` that agrees;
/// refused is 416 `RANGE_INVALID`, never a panic (the length of `0-<u64 max>`
/// does not fit a u64).
fn check_content_range(value: &[u8], length: Option<&str>) -> Result<(), TestCaseError> {
    let Ok(header_value) = HeaderValue::from_bytes(value) else {
        // Not a header value at all: hyper refuses it before any handler.
        return Ok(());
    };
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_RANGE, header_value);
    if let Some(length) = length.and_then(|l| HeaderValue::from_str(l).ok()) {
        headers.insert(header::CONTENT_LENGTH, length);
    }
    let text = std::str::from_utf8(value).unwrap_or("");
    static SPEC: LazyLock<Regex> =
        LazyLock::new(|| whole(r"\s*(?:bytes )*\s*([0-9]+)\s*-\s*([0-9]+)\s*(?s:/.*)?"));
    let spec = &*SPEC;
    match chunk_start(&headers) {
        Ok(None) => prop_assert!(header_value_is_opaque(value)),
        Ok(Some(start)) => {
            let c = spec
                .captures(text)
                .ok_or_else(|| TestCaseError::fail(format!("accepted {text:?}")))?;
            let (first, last): (u64, u64) = (c[1].parse().unwrap(), c[2].parse().unwrap());
            prop_assert_eq!(start, first);
            prop_assert!(first <= last);
            if let Some(length) = length.and_then(|l| l.parse::<u64>().ok()) {
                prop_assert_eq!(Some(length), (last - first).checked_add(1));
            }
        }
        Err(e) => prop_assert_eq!(e.0.code, ErrorCode::RangeInvalid),
    }
    Ok(())
}

/// A header value that is not visible ASCII reads as absent.
fn header_value_is_opaque(value: &[u8]) -> bool {
    HeaderValue::from_bytes(value).is_ok_and(|v| v.to_str().is_err())
}

/// A parsed path is the route's template filled with its parts, its last
/// segment has no `/`, and a routed request's name is valid.
fn check_route(rest: &str, method: &Method) -> Result<(), TestCaseError> {
    let parsed = parse_route(rest);
    if let Some(Path {
        resource,
        name,
        last,
    }) = &parsed
    {
        let rebuilt = match resource {
            Resource::Catalog => "_catalog".to_owned(),
            Resource::UploadStart if rest.ends_with('/') => format!("{name}/blobs/uploads/"),
            Resource::UploadStart => format!("{name}/blobs/uploads"),
            Resource::Upload => format!("{name}/blobs/uploads/{last}"),
            Resource::Blob => format!("{name}/blobs/{last}"),
            Resource::Manifest => format!("{name}/manifests/{last}"),
            Resource::Tags => format!("{name}/tags/list"),
            Resource::Referrers => format!("{name}/referrers/{last}"),
            Resource::TagHistory => format!("{name}/_berth/tags/{last}/history"),
            Resource::TagRollback => format!("{name}/_berth/tags/{last}/rollback"),
            Resource::Usage => format!("{name}/_berth/usage"),
            Resource::Settings => format!("{name}/_berth/settings"),
            Resource::TagDetails => format!("{name}/_berth/tags"),
            Resource::Repositories => "_berth/repositories".to_owned(),
            Resource::Namespaces if rest.ends_with('/') => "_berth/namespaces/".to_owned(),
            Resource::Namespaces => "_berth/namespaces".to_owned(),
            Resource::Namespace => format!("_berth/namespaces/{name}"),
            Resource::Robots => "_berth/robots".to_owned(),
            Resource::Robot => format!("_berth/robots/{last}"),
            Resource::RobotSecret => format!("_berth/robots/{last}/secret"),
        };
        prop_assert_eq!(rebuilt, rest);
        prop_assert!(!last.contains('/'), "last segment {:?}", last);
    }
    match resolve(rest, method) {
        Ok(route) => {
            let path = parsed.expect("a routed path parses");
            match &route.name {
                Some(name) => {
                    prop_assert_eq!(name.as_str(), path.name);
                    prop_assert!(RepositoryName::parse(name.as_str()).is_some());
                    prop_assert!(name
                        .as_str()
                        .split('/')
                        .all(|s| !s.is_empty() && s != ".." && s != "." && !s.starts_with('_')));
                }
                None => prop_assert!(matches!(
                    path.resource,
                    Resource::Catalog
                        | Resource::Namespaces
                        | Resource::Repositories
                        | Resource::Robots
                        | Resource::Robot
                        | Resource::RobotSecret
                )),
            }
        }
        Err(Unrouted::NotFound) => prop_assert!(parsed.is_none()),
        Err(Unrouted::MethodNotAllowed(_)) => prop_assert!(parsed.is_some()),
        Err(Unrouted::InvalidName(e)) => {
            prop_assert_eq!(e.0.code, ErrorCode::NameInvalid);
            prop_assert!(RepositoryName::parse(parsed.expect("parsed").name).is_none());
        }
    }
    Ok(())
}

fn check_pagination(query: &str) -> Result<(), TestCaseError> {
    let pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let n = pairs
        .iter()
        .find(|(k, _)| k == "n")
        .map(|(_, v)| v.as_str());
    match super::pagination(&pairs) {
        Ok((Some(parsed), _)) => {
            let n = n.expect("an n");
            prop_assert!(n.bytes().all(|b| b.is_ascii_digit()), "n={:?} accepted", n);
            prop_assert_eq!(n.parse::<usize>().ok(), Some(parsed));
        }
        Ok((None, _)) => prop_assert!(n.is_none_or(str::is_empty)),
        Err(e) => prop_assert_eq!(e.0.code, ErrorCode::PaginationNumberInvalid),
    }
    Ok(())
}

/// The `Host` values the module doc of `host.rs` allows: a name of
/// unreserved characters or a bracketed IPv6 address, then an optional port
/// of at most five digits. The oracle for the grammar; the realm built from
/// an accepted host must parse back (by `http`'s URI parser, not ours) to
/// exactly that authority and the token path, so no host can add userinfo,
/// a path or a query to it.
fn check_host(host: &str) -> Result<(), TestCaseError> {
    static GRAMMAR: LazyLock<Regex> = LazyLock::new(|| {
        whole(r"(?:[A-Za-z0-9._~-]{1,255}|\[(?P<ipv6>[0-9A-Fa-f:.]+)\])(?::(?P<port>[0-9]{1,5}))?")
    });
    let expected = GRAMMAR.captures(host).is_some_and(|c| {
        c.name("ipv6")
            .is_none_or(|a| a.as_str().parse::<std::net::Ipv6Addr>().is_ok())
            && c.name("port")
                .is_none_or(|p| p.as_str().parse::<u32>().is_ok_and(|p| p <= 65535))
    });
    let parsed = Authority::parse(host);
    prop_assert_eq!(parsed.is_some(), expected, "host {:?}", host);
    if let Some(authority) = parsed {
        prop_assert_eq!(authority.as_str(), host);
        let realm = format!("http://{}/auth/token", authority.as_str());
        let uri: axum::http::Uri = realm
            .parse()
            .map_err(|e| TestCaseError::fail(format!("realm {realm:?} is not a URI: {e}")))?;
        prop_assert_eq!(uri.authority().map(|a| a.as_str()), Some(host));
        prop_assert_eq!(uri.path(), "/auth/token");
        prop_assert!(uri.query().is_none());
    }
    Ok(())
}

/// Every seed as it is, through its target's property.
#[test]
fn every_seed_satisfies_its_property() {
    let seeds = |target| {
        corpus(target)
            .into_iter()
            .map(|seed| String::from_utf8_lossy(&seed).into_owned())
    };
    for header in seeds("range") {
        for size in [0, 1, 10, 500, 1000, 10_000, u64::MAX] {
            check_range(&header, size).unwrap();
        }
    }
    for value in corpus("content_range") {
        for length in [
            None,
            Some("0"),
            Some("1"),
            Some("1024"),
            Some("18446744073709551615"),
        ] {
            check_content_range(&value, length).unwrap();
        }
    }
    for rest in seeds("route") {
        for method in [
            Method::GET,
            Method::PUT,
            Method::POST,
            Method::PATCH,
            Method::DELETE,
        ] {
            check_route(&rest, &method).unwrap();
        }
    }
    for query in seeds("query") {
        check_pagination(&query).unwrap();
    }
    for host in seeds("host") {
        check_host(&host).unwrap();
    }
}
