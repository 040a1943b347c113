//! Blob uploads (end-4a/4b, end-5, end-6, end-11, end-13; spec "Pushing
//! blobs"): `POST` to start, mount or upload whole; `PATCH` chunks; `PUT` to
//! finish; `GET` for the received range; `DELETE` to cancel.

use axum::body::Body;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::auth::Caller;
use super::{
    decimal, digest_param, has_body, header_str, location, query_pairs, query_value, request_body,
    ApiError, ApiResult, DOCKER_CONTENT_DIGEST, DOCKER_UPLOAD_UUID, OCI_CHUNK_MIN_LENGTH,
};
use crate::auth::Action;
use crate::oci::{Algorithm, Digest, ErrorCode, RegistryError, RepositoryName};
use crate::registry::{Registry, UploadSession, UploadStart};

pub async fn start(
    registry: &Registry,
    caller: &Caller,
    name: &RepositoryName,
    parts: &Parts,
    body: Body,
) -> ApiResult {
    let pairs = query_pairs(parts);
    if let Some(mount) = query_value(&pairs, "mount") {
        let digest = digest_param(mount)?;
        // A mount the caller may not make is not an error: nothing is mounted
        // and the client just uploads, so the answer never tells whether the
        // source holds the blob. That covers an unusable `from` (it must never
        // fall through to "mount from anywhere"), a `from` the caller may not
        // pull, and no `from` for anyone but admins.
        let from = query_value(&pairs, "from").map(RepositoryName::parse);
        let may_mount = match &from {
            Some(Some(source)) => caller.may(source, Action::Pull),
            Some(None) => false,
            None => caller.may_mount_from_anywhere(),
        };
        let start = if may_mount {
            registry
                .start_upload_with_mount(name, &digest, from.flatten().as_ref())
                .await?
        } else {
            UploadStart::Session(registry.start_upload(name, digest.algorithm()).await?)
        };
        return match start {
            UploadStart::Mounted => Ok(blob_created(name, &digest)),
            UploadStart::Session(session) => Ok(upload_accepted(
                registry,
                name,
                &session,
                StatusCode::ACCEPTED,
            )),
        };
    }
    if let Some(digest) = query_value(&pairs, "digest") {
        let digest = digest_param(digest)?;
        registry
            .upload_whole(name, &digest, request_body(&parts.headers, body))
            .await?;
        return Ok(blob_created(name, &digest));
    }
    let session = registry.start_upload(name, Algorithm::Sha256).await?;
    Ok(upload_accepted(
        registry,
        name,
        &session,
        StatusCode::ACCEPTED,
    ))
}

pub async fn patch(
    registry: &Registry,
    name: &RepositoryName,
    id: &str,
    parts: &Parts,
    body: Body,
) -> ApiResult {
    let start = chunk_start(&parts.headers)?;
    let session = registry
        .append_chunk(name, id, start, request_body(&parts.headers, body))
        .await?;
    Ok(upload_accepted(
        registry,
        name,
        &session,
        StatusCode::ACCEPTED,
    ))
}

pub async fn finish(
    registry: &Registry,
    name: &RepositoryName,
    id: &str,
    parts: &Parts,
    body: Body,
) -> ApiResult {
    let pairs = query_pairs(parts);
    let digest = query_value(&pairs, "digest").ok_or_else(|| {
        RegistryError::with_detail(ErrorCode::DigestInvalid, "the digest parameter is required")
    })?;
    let digest = digest_param(digest)?;
    let start = chunk_start(&parts.headers)?;
    let body = has_body(&parts.headers).then(|| request_body(&parts.headers, body));
    registry
        .finish_upload(name, id, &digest, start, body)
        .await?;
    Ok(blob_created(name, &digest))
}

pub async fn status(registry: &Registry, name: &RepositoryName, id: &str) -> ApiResult {
    let session = registry.upload_status(name, id).await?;
    Ok(upload_accepted(
        registry,
        name,
        &session,
        StatusCode::NO_CONTENT,
    ))
}

pub async fn cancel(registry: &Registry, name: &RepositoryName, id: &str) -> ApiResult {
    registry.cancel_upload(name, id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The first byte of a chunk from `Content-Range: <start>-<end>` (the spec's
/// form, without the `bytes ` unit, which is accepted too). The end must agree
/// with `Content-Length` when both are sent.
pub(super) fn chunk_start(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(value) = header_str(headers, header::CONTENT_RANGE) else {
        return Ok(None);
    };
    let invalid = || {
        RegistryError::with_detail(
            ErrorCode::RangeInvalid,
            format!("invalid Content-Range {value:?}"),
        )
    };
    let spec = value.trim().trim_start_matches("bytes ").trim();
    let (start, end) = spec.split_once('-').ok_or_else(invalid)?;
    let end = end.split('/').next().unwrap_or_default();
    let (start, end) = match (decimal::<u64>(start.trim()), decimal::<u64>(end.trim())) {
        (Some(s), Some(e)) if s <= e => (s, e),
        _ => return Err(invalid().into()),
    };
    if let Some(length) =
        header_str(headers, header::CONTENT_LENGTH).and_then(|l| l.parse::<u64>().ok())
    {
        // `0-<u64 max>` is a length no u64 holds (and no body has).
        if Some(length) != (end - start).checked_add(1) {
            return Err(invalid().into());
        }
    }
    Ok(Some(start))
}

fn upload_accepted(
    registry: &Registry,
    name: &RepositoryName,
    session: &UploadSession,
    status: StatusCode,
) -> Response {
    // Distribution's convention: "0-0" for an empty upload, else the inclusive end.
    let end = session.offset.saturating_sub(1);
    let mut response = (
        status,
        [
            (
                header::LOCATION,
                location(&format!("/v2/{name}/blobs/uploads/{}", session.id)),
            ),
            (header::RANGE, location(&format!("0-{end}"))),
            (DOCKER_UPLOAD_UUID, location(&session.id)),
            (header::CONTENT_LENGTH, location("0")),
        ],
    )
        .into_response();
    // The spec's hint for chunked uploads (an object store's smallest part):
    // shorter chunks still work, at the cost of carrying them over.
    if let Some(min) = registry.upload_chunk_min_length() {
        response
            .headers_mut()
            .insert(OCI_CHUNK_MIN_LENGTH, location(&min.to_string()));
    }
    response
}

fn blob_created(name: &RepositoryName, digest: &Digest) -> Response {
    (
        StatusCode::CREATED,
        [
            (
                header::LOCATION,
                location(&format!("/v2/{name}/blobs/{digest}")),
            ),
            (DOCKER_CONTENT_DIGEST, location(&digest.to_string())),
            (header::CONTENT_LENGTH, location("0")),
        ],
    )
        .into_response()
}
