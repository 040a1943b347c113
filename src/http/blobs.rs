//! `GET`/`HEAD`/`DELETE /v2/<name>/blobs/<digest>` (end-2, end-10).

use axum::body::Body;
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;

use super::connection::{Download, SendFile};
use super::range::{self, RangeRequest};
use super::{digest_param, header_str, ApiResult, DOCKER_CONTENT_DIGEST};
use crate::oci::ErrorCode;
use crate::oci::RepositoryName;
use crate::registry::Registry;

pub async fn get(
    registry: &Registry,
    name: &RepositoryName,
    digest: &str,
    parts: &Parts,
    with_body: bool,
) -> ApiResult {
    let digest = digest_param(digest)?;
    let blob = registry.open_blob(name, &digest).await?;
    // With `redirect` on (an object store), bytes flow from the store: the
    // client follows a short-lived signed URL (Range and all).
    if with_body {
        if let Some(url) = registry.blob_redirect(&blob).await? {
            return Ok(Response::builder()
                .status(StatusCode::TEMPORARY_REDIRECT)
                .header(header::LOCATION, url)
                .header(DOCKER_CONTENT_DIGEST, digest.to_string())
                .header(header::CONTENT_LENGTH, 0)
                .body(Body::empty())
                .expect("valid response"));
        }
    }
    let size = blob.size;
    let range = match range::parse(header_str(&parts.headers, header::RANGE), size) {
        RangeRequest::Unsatisfiable => {
            let mut response = super::ApiError::from(ErrorCode::RangeInvalid).into_response();
            let content_range = HeaderValue::from_str(&format!("bytes */{size}")).expect("ascii");
            response
                .headers_mut()
                .insert(header::CONTENT_RANGE, content_range);
            return Ok(response);
        }
        RangeRequest::Partial(range) => Some(range),
        RangeRequest::Whole => None,
    };

    let length = range.as_ref().map_or(size, |r| r.end - r.start);
    let mut response = Response::builder()
        .status(if range.is_some() {
            StatusCode::PARTIAL_CONTENT
        } else {
            StatusCode::OK
        })
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, length)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(DOCKER_CONTENT_DIGEST, digest.to_string())
        .header(header::ETAG, format!("\"{digest}\""));
    if let Some(r) = &range {
        response = response.header(
            header::CONTENT_RANGE,
            format!("bytes {}-{}/{size}", r.start, r.end - 1),
        );
    }
    if !with_body || length == 0 {
        return Ok(response.body(Body::empty()).expect("valid response"));
    }
    let download = Download::start();
    if let Some(send_file) = parts.extensions.get::<SendFile>() {
        if send_file.pays() {
            if let Some(local) = registry.blob_file(&blob).await? {
                let body = send_file.body(local, range.unwrap_or(0..size), download);
                return Ok(response.body(body).expect("valid response"));
            }
        }
    }
    // Counted while the stream lives: the closure owns the count.
    let stream = registry.read_blob(&blob, range).await?.map(move |chunk| {
        let _counted = &download;
        chunk
    });
    Ok(response
        .body(Body::from_stream(stream))
        .expect("valid response"))
}

pub async fn delete(registry: &Registry, name: &RepositoryName, digest: &str) -> ApiResult {
    let digest = digest_param(digest)?;
    registry.delete_blob(name, &digest).await?;
    Ok((
        StatusCode::ACCEPTED,
        [(DOCKER_CONTENT_DIGEST, digest.to_string())],
    )
        .into_response())
}
