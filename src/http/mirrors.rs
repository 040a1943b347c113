//! Requests for mirrored names (`[[proxy]]` entries): the mirror makes a
//! manifest or blob local before the usual handler serves it
//! (docs/design/mirror.md §3, §7).

use std::sync::Arc;

use axum::body::Body;
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};

use super::connection::Download;
use super::host::request_authority;
use super::routes::{Resource, Route};
use super::{query_pairs, query_value, ApiError, DOCKER_CONTENT_DIGEST};
use crate::mirror::{Mirror, MirroredTags, Namespace, PreparedBlob, Refusal};
use crate::oci::{ErrorCode, RegistryError, RepositoryName};
use crate::registry::Registry;

/// The local repository a request for `name` is for, when a mirror entry
/// serves it under another name, and the `OCI-Namespace` to answer with:
/// a request sent to a host an entry lists (dockerd's `registry-mirrors`)
/// names the upstream's repositories; else `?ns=<registry>` (containerd's
/// mirror requests) picks the entry that mirrors that registry; then a
/// Docker Hub entry's one-component names are `library/` ones.
///
/// A write routed by host or `?ns=` is refused: its answers (an upload's
/// `Location`) would name the local repository, which the client would
/// send back through the same routing under yet another name. Pushes go
/// to the local name (`<prefix>/...`), as the entry's `allow_push` says.
pub(super) fn local_name(
    mirror: &Mirror,
    parts: &Parts,
    name: &RepositoryName,
    writes: bool,
) -> Result<Option<(RepositoryName, Option<HeaderValue>)>, RegistryError> {
    let by_host = request_authority(parts.version, &parts.uri, &parts.headers)
        .ok()
        .flatten()
        .and_then(|authority| mirror.by_host(authority.as_str(), name));
    let mut namespace = None;
    let local = match by_host {
        Some(local) => Some(local.map_err(|r| r.error)?),
        None => match query_value(&query_pairs(parts), "ns") {
            None => None,
            Some(ns) => match mirror.namespace(ns, name) {
                Namespace::AsIs => None,
                Namespace::Mirrored(local) => {
                    namespace = HeaderValue::from_str(ns).ok();
                    Some(local)
                }
                Namespace::Refused(error) => return Err(error),
            },
        },
    };
    if let (true, Some(local)) = (writes, &local) {
        return Err(RegistryError::with_detail(
            ErrorCode::Denied,
            format!("{name} is routed to the mirror's {local}: push to {local} by that name"),
        ));
    }
    let named = local.as_ref().unwrap_or(name);
    Ok(match (mirror.canonical(named), local) {
        (Some(canonical), _) => Some((canonical, namespace)),
        (None, Some(local)) => Some((local, namespace)),
        (None, None) => None,
    })
}

/// What the route's handler does next.
pub(super) enum Prepared {
    /// Answers as for any repository, with this `Warning` on its response
    /// when there is one (a cached tag served as cached).
    Serve(Option<HeaderValue>),
    /// This is the answer: an error, or a blob `HEAD` answered from the
    /// upstream's size (nothing fetched).
    Answer(Response),
}

/// Fetches what the request names when it is not here (or, for a tag, is
/// due for a check upstream). A blob `GET` without a `Range` is answered
/// as it is fetched.
pub(super) async fn prepare(
    mirror: &Arc<Mirror>,
    registry: &Arc<Registry>,
    route: &Route<'_>,
    name: &RepositoryName,
    asked: &RepositoryName,
    parts: &Parts,
) -> Prepared {
    let method = &route.row.method;
    if method != Method::GET && method != Method::HEAD {
        return Prepared::Serve(None);
    }
    let outcome = match route.row.resource {
        Resource::Tags => mirror
            .tags(registry, name)
            .await
            .map(|listed| match listed {
                None => Prepared::Serve(None),
                Some(MirroredTags { tags, warning }) => {
                    let mut response = super::tags::list_of(&tags, asked, parts)
                        .unwrap_or_else(IntoResponse::into_response);
                    if let Some(warning) = warning.and_then(|w| warning_header(&w)) {
                        response.headers_mut().append(header::WARNING, warning);
                    }
                    Prepared::Answer(response)
                }
            }),
        Resource::Manifest => mirror
            .prepare_manifest(registry, name, route.last)
            .await
            .map(|warning| Prepared::Serve(warning.and_then(|w| warning_header(&w)))),
        Resource::Blob => mirror
            .prepare_blob(
                registry,
                name,
                route.last,
                method == Method::GET,
                !parts.headers.contains_key(header::RANGE),
            )
            .await
            .map(|blob| blob_answer(blob, route.last)),
        _ => return Prepared::Serve(None),
    };
    outcome.unwrap_or_else(|refusal| Prepared::Answer(refused(refusal)))
}

/// A blob as the mirror has it: local (the usual handler serves it), the
/// upstream's size for a `HEAD`, or a body that follows the fetch.
fn blob_answer(blob: PreparedBlob, digest: &str) -> Prepared {
    let (size, body) = match blob {
        PreparedBlob::Local => return Prepared::Serve(None),
        PreparedBlob::UpstreamSize(size) => (size, Body::empty()),
        PreparedBlob::Following { size, body } => {
            // Counted while the stream lives, as any download.
            let download = Download::start();
            let body = futures::StreamExt::map(body, move |chunk| {
                let _counted = &download;
                chunk
            });
            (size, Body::from_stream(body))
        }
    };
    Prepared::Answer(
        Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header(header::CONTENT_LENGTH, size)
            .header(DOCKER_CONTENT_DIGEST, digest)
            .header(header::ETAG, format!("\"{digest}\""))
            .body(body)
            .expect("valid response"),
    )
}

fn refused(Refusal { error, retry_after }: Refusal) -> Response {
    let mut response = ApiError::from(error).into_response();
    if let Some(after) = retry_after {
        let seconds = after.as_secs() + u64::from(after.subsec_nanos() > 0);
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
    }
    response
}

/// `Warning: 299 - "<text>"` (RFC 7234's miscellaneous persistent warning,
/// the form the distribution-spec gives), quotes and backslashes escaped,
/// within the spec's 4096 bytes.
fn warning_header(text: &str) -> Option<HeaderValue> {
    let escaped: String = text
        .chars()
        .filter(|c| !c.is_control())
        .flat_map(|c| match c {
            '"' | '\\' => vec!['\\', c],
            c => vec![c],
        })
        .take(4000)
        .collect();
    HeaderValue::from_str(&format!("299 - \"{escaped}\"")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_warning_is_a_299_with_its_text_quoted() {
        let value = warning_header(r#"upstream "x" down: serving a\b as cached"#).unwrap();
        assert_eq!(
            value.to_str().unwrap(),
            r#"299 - "upstream \"x\" down: serving a\\b as cached""#
        );
        let long = warning_header(&"x".repeat(10_000)).unwrap();
        assert!(long.len() <= 4096);
    }
}
