//! Counts and times every request the object store clients send
//! (`berth_s3_requests_total`, `berth_s3_request_duration_seconds`): an
//! `object_store` HTTP connector around its own reqwest one, so retries,
//! listings and multipart calls are all seen where they leave the process.
//! Parts streamed by `parts.rs` (its own reqwest client) are recorded there.

use std::time::Instant;

use async_trait::async_trait;
use http::{HeaderMap, Method};
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpRequest, HttpResponse, HttpService, ReqwestConnector,
};
use object_store::ClientOptions;

use crate::metrics::StoreRequests;

/// The connector the backend's clients are built with.
#[derive(Debug)]
pub(super) struct CountingConnector {
    pub(super) requests: StoreRequests,
}

impl HttpConnector for CountingConnector {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        let inner = ReqwestConnector::default().connect(options)?;
        Ok(HttpClient::new(Counted {
            inner,
            requests: self.requests.clone(),
        }))
    }
}

#[derive(Debug)]
struct Counted {
    inner: HttpClient,
    requests: StoreRequests,
}

#[async_trait]
impl HttpService for Counted {
    async fn call(&self, request: HttpRequest) -> Result<HttpResponse, HttpError> {
        let operation = operation_of(request.method(), request.uri().query(), request.headers());
        let started = Instant::now();
        let answer = self.inner.execute(request).await;
        match &answer {
            Ok(response) => self.requests.record(
                operation,
                StoreRequests::result_of(response.status().as_u16()),
                Some(started.elapsed()),
            ),
            Err(_) => self.requests.record(operation, "error", None),
        }
        answer
    }
}

/// What an S3 request asks, from its method, query and headers (the S3 API
/// names operations by these, not by path).
pub(super) fn operation_of(
    method: &Method,
    query: Option<&str>,
    headers: &HeaderMap,
) -> &'static str {
    let has = |key: &str| {
        query.is_some_and(|query| {
            query
                .split('&')
                .any(|pair| pair.split('=').next() == Some(key))
        })
    };
    match *method {
        Method::HEAD => "head",
        Method::GET if has("list-type") || has("uploads") => "list",
        Method::GET => "get",
        Method::PUT if has("partNumber") => "upload_part",
        Method::PUT if headers.contains_key("x-amz-copy-source") => "copy",
        Method::PUT => "put",
        Method::POST if has("uploads") => "create_multipart",
        Method::POST if has("uploadId") => "complete_multipart",
        Method::POST if has("delete") => "delete",
        Method::DELETE if has("uploadId") => "abort_multipart",
        Method::DELETE => "delete",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_are_told_apart_by_method_query_and_headers() {
        let none = HeaderMap::new();
        let mut copy = HeaderMap::new();
        copy.insert("x-amz-copy-source", "bucket/key".parse().unwrap());
        let cases = [
            (Method::GET, Some("list-type=2&prefix=a%2F"), &none, "list"),
            (Method::GET, None, &none, "get"),
            (Method::HEAD, None, &none, "head"),
            (
                Method::PUT,
                Some("partNumber=3&uploadId=x"),
                &none,
                "upload_part",
            ),
            (Method::PUT, None, &copy, "copy"),
            (Method::PUT, None, &none, "put"),
            (Method::POST, Some("uploads"), &none, "create_multipart"),
            (
                Method::POST,
                Some("uploadId=x"),
                &none,
                "complete_multipart",
            ),
            (Method::POST, Some("delete"), &none, "delete"),
            (Method::DELETE, Some("uploadId=x"), &none, "abort_multipart"),
            (Method::DELETE, None, &none, "delete"),
            (Method::PATCH, None, &none, "other"),
        ];
        for (method, query, headers, operation) in cases {
            assert_eq!(
                operation_of(&method, query, headers),
                operation,
                "{method} ?{query:?}"
            );
        }
    }
}
