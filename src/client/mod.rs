//! A small client for a running registry, for the commands that act on one
//! (`berth tag …`). It logs in the way docker does: a request is sent as it
//! is; a 401 whose challenge is `Bearer realm=…,service=…,scope=…` is
//! answered by fetching a token from the realm (with Basic credentials when
//! a user is given; anonymously otherwise) and sending the request again
//! with it; a `Basic` challenge by sending the credentials.
//!
//! One HTTP/1.1 connection per request, over rustls for `https` (the system's
//! roots plus `--ca-cert`): a command makes two or three requests, so hyper's
//! connection API is all it needs, and the binary carries no second HTTP or
//! crypto stack. Passwords are [`Secret`]s and never printed.

pub mod tag;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::auth::header::Challenge;
use crate::auth::Secret;

/// The longest a request may take, connecting and reading the body included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Registry answers to these commands are small JSON documents.
const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// Who to log in as.
pub struct Credentials {
    pub username: String,
    pub password: Secret,
}

/// A registry at one base URL, e.g. `https://registry.example.com:5000`.
pub struct RegistryClient {
    base: Uri,
    credentials: Option<Credentials>,
    ca_cert: Option<PathBuf>,
    tls: OnceLock<Result<Arc<rustls::ClientConfig>, String>>,
    /// What the last successful login produced, reused while it works.
    authorization: Option<HeaderValue>,
}

/// A response, read whole.
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// What went wrong, for a person: the registry's error codes, messages
    /// and details when the body has them, else the status and the body.
    pub fn error_message(&self) -> String {
        #[derive(Deserialize)]
        struct Errors {
            errors: Vec<ErrorEntry>,
        }
        #[derive(Deserialize)]
        struct ErrorEntry {
            code: String,
            #[serde(default)]
            message: String,
            #[serde(default)]
            detail: serde_json::Value,
        }
        if let Ok(Errors { errors }) = serde_json::from_slice::<Errors>(&self.body) {
            if !errors.is_empty() {
                let described: Vec<String> = errors
                    .iter()
                    .map(|e| {
                        let detail = match &e.detail {
                            serde_json::Value::String(s) if !s.is_empty() => format!(" ({s})"),
                            serde_json::Value::Null | serde_json::Value::String(_) => String::new(),
                            other => format!(" ({other})"),
                        };
                        format!("{}: {}{detail}", e.code, e.message)
                    })
                    .collect();
                return format!("{} {}", self.status.as_u16(), described.join("; "));
            }
        }
        let text = String::from_utf8_lossy(&self.body);
        let text = text.trim();
        if text.is_empty() {
            self.status.to_string()
        } else {
            format!(
                "{}: {}",
                self.status,
                text.chars().take(500).collect::<String>()
            )
        }
    }
}

impl RegistryClient {
    /// A client for `registry` (`https://` is assumed without a scheme).
    pub fn new(
        registry: &str,
        credentials: Option<Credentials>,
        ca_cert: Option<PathBuf>,
    ) -> Result<RegistryClient, String> {
        let registry = registry.trim_end_matches('/');
        let with_scheme = if registry.contains("://") {
            registry.to_owned()
        } else {
            format!("https://{registry}")
        };
        let base: Uri = with_scheme
            .parse()
            .map_err(|e| format!("invalid registry URL {registry:?}: {e}"))?;
        if !matches!(base.scheme_str(), Some("http" | "https")) || base.host().is_none() {
            return Err(format!(
                "invalid registry URL {registry:?}: expected http(s)://HOST[:PORT]"
            ));
        }
        if base.path() != "/" && !base.path().is_empty() {
            return Err(format!(
                "invalid registry URL {registry:?}: give the registry without a path"
            ));
        }
        Ok(RegistryClient {
            base,
            credentials,
            ca_cert,
            tls: OnceLock::new(),
            authorization: None,
        })
    }

    /// Sends `method` to `path_and_query` (starting with `/v2/`), logging in
    /// when the registry challenges the request.
    pub async fn send(&mut self, method: Method, path_and_query: &str) -> Result<Reply, String> {
        let authority = self.base.authority().expect("checked in new").clone();
        let uri = Uri::builder()
            .scheme(self.base.scheme_str().expect("checked in new"))
            .authority(authority)
            .path_and_query(path_and_query)
            .build()
            .map_err(|e| format!("invalid request path {path_and_query:?}: {e}"))?;
        let reply = self
            .exchange(&method, &uri, self.authorization.as_ref())
            .await?;
        if reply.status != StatusCode::UNAUTHORIZED {
            return Ok(reply);
        }
        let Some(challenge) = reply
            .headers
            .get(header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .and_then(Challenge::parse)
        else {
            return Ok(reply);
        };
        let authorization = match challenge.scheme.as_str() {
            "bearer" => self.fetch_token(&challenge).await?,
            "basic" => match &self.credentials {
                Some(credentials) => basic(credentials),
                None => {
                    return Err(
                        "the registry asks for credentials: give --username and a password"
                            .to_owned(),
                    )
                }
            },
            other => return Err(format!("the registry asks for unsupported {other} auth")),
        };
        let reply = self.exchange(&method, &uri, Some(&authorization)).await?;
        if reply.status != StatusCode::UNAUTHORIZED {
            self.authorization = Some(authorization);
        } else if let Some(scope) = challenge.param("scope") {
            // The token was issued cut down to what the user may do.
            return Err(match &self.credentials {
                Some(c) => format!("user {} may not do this: it needs {scope}", c.username),
                None => format!(
                    "this needs {scope}, which anonymous users lack: give --username and a password"
                ),
            });
        }
        Ok(reply)
    }

    /// The Docker token flow: `GET <realm>?service=…&scope=…`, with Basic
    /// credentials when there are some, answered by `{"token": …}` (or
    /// `access_token`, the OAuth2 name).
    async fn fetch_token(&self, challenge: &Challenge) -> Result<HeaderValue, String> {
        let realm = challenge
            .param("realm")
            .ok_or("the registry's Bearer challenge names no realm")?;
        let mut query = form_urlencoded::Serializer::new(String::new());
        if let Some(service) = challenge.param("service") {
            query.append_pair("service", service);
        }
        if let Some(scopes) = challenge.param("scope") {
            // Several scopes are separated by spaces; the token endpoint
            // takes each as its own `scope` parameter.
            for scope in scopes.split(' ').filter(|s| !s.is_empty()) {
                query.append_pair("scope", scope);
            }
        }
        let query = query.finish();
        let separator = if realm.contains('?') { '&' } else { '?' };
        let url = format!("{realm}{separator}{query}");
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("the registry's token realm {realm:?} is not a URL: {e}"))?;
        let credentials = self.credentials.as_ref().map(basic);
        let reply = self
            .exchange(&Method::GET, &uri, credentials.as_ref())
            .await
            .map_err(|e| format!("fetching a token from {realm}: {e}"))?;
        if reply.status == StatusCode::UNAUTHORIZED {
            return Err(match &self.credentials {
                Some(c) => format!(
                    "login as {} failed: wrong user name or password",
                    c.username
                ),
                None => "the registry needs a login: give --username and a password".to_owned(),
            });
        }
        if !reply.status.is_success() {
            return Err(format!(
                "fetching a token from {realm}: {}",
                reply.error_message()
            ));
        }
        #[derive(Deserialize)]
        struct TokenReply {
            token: Option<String>,
            access_token: Option<String>,
        }
        let token: TokenReply = serde_json::from_slice(&reply.body)
            .map_err(|e| format!("the token endpoint {realm} answered no token: {e}"))?;
        let token = token
            .token
            .or(token.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| format!("the token endpoint {realm} answered no token"))?;
        let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| format!("the token endpoint {realm} answered an unusable token"))?;
        value.set_sensitive(true);
        Ok(value)
    }

    /// One request on a fresh connection, read whole, within the timeout.
    async fn exchange(
        &self,
        method: &Method,
        uri: &Uri,
        authorization: Option<&HeaderValue>,
    ) -> Result<Reply, String> {
        tokio::time::timeout(
            REQUEST_TIMEOUT,
            self.exchange_untimed(method, uri, authorization),
        )
        .await
        .map_err(|_| format!("{uri}: no answer within {}s", REQUEST_TIMEOUT.as_secs()))?
    }

    async fn exchange_untimed(
        &self,
        method: &Method,
        uri: &Uri,
        authorization: Option<&HeaderValue>,
    ) -> Result<Reply, String> {
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(format!("{uri}: only http and https URLs are supported")),
        };
        let authority = uri.authority().ok_or_else(|| format!("{uri}: no host"))?;
        // An IPv6 literal is bracketed in a URL, bare everywhere else.
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let mut request = Request::builder()
            .method(method.clone())
            .uri(path)
            .header(header::HOST, authority.as_str())
            .header(
                header::USER_AGENT,
                concat!("berth/", env!("CARGO_PKG_VERSION")),
            );
        if method == Method::POST || method == Method::PUT {
            request = request.header(header::CONTENT_LENGTH, "0");
        }
        if let Some(authorization) = authorization {
            request = request.header(header::AUTHORIZATION, authorization.clone());
        }
        let request = request
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("{uri}: {e}"))?;
        let tcp = TcpStream::connect((host, port))
            .await
            .map_err(|e| format!("connecting to {authority}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        if !https {
            return round_trip(tcp, request, uri).await;
        }
        let config = self.tls_config()?;
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| format!("{host} is not a valid TLS server name: {e}"))?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with {authority}: {e}"))?;
        round_trip(tls, request, uri).await
    }

    fn tls_config(&self) -> Result<Arc<rustls::ClientConfig>, String> {
        self.tls
            .get_or_init(|| tls_config(self.ca_cert.as_deref()))
            .clone()
    }
}

async fn round_trip<IO>(io: IO, request: Request<Empty<Bytes>>, uri: &Uri) -> Result<Reply, String>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let failed = |e: &dyn std::fmt::Display| format!("{uri}: {e}");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| failed(&e))?;
    let driver = tokio::spawn(connection);
    let response = sender.send_request(request).await.map_err(|e| failed(&e))?;
    let (parts, body) = response.into_parts();
    let body = Limited::new(body, MAX_BODY_BYTES)
        .collect()
        .await
        .map_err(|e| failed(&e))?
        .to_bytes();
    driver.abort();
    Ok(Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

/// The system's trusted roots and, for a registry with a private CA, the
/// certificates of `ca_cert` (PEM).
fn tls_config(ca_cert: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = ca_cert {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect())
            .map_err(|e| format!("reading certificates from {}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!("no certificate in {}", path.display()));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| format!("a certificate in {}: {e}", path.display()))?;
        }
    }
    if roots.is_empty() {
        return Err("no trusted certificates: give the registry's CA with --ca-cert".to_owned());
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn basic(credentials: &Credentials) -> HeaderValue {
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!(
        "{}:{}",
        credentials.username,
        credentials.password.expose()
    ));
    let mut value =
        HeaderValue::from_str(&format!("Basic {encoded}")).expect("base64 is a valid header");
    value.set_sensitive(true);
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_urls_need_a_host_and_default_to_https() {
        let client = RegistryClient::new("registry.example:5000/", None, None).unwrap();
        assert_eq!(client.base.scheme_str(), Some("https"));
        assert_eq!(client.base.authority().unwrap(), "registry.example:5000");
        assert!(RegistryClient::new("ftp://x", None, None).is_err());
        assert!(RegistryClient::new("http://x/v2", None, None).is_err());
    }

    #[test]
    fn error_messages_carry_the_registry_codes_and_details() {
        let reply = Reply {
            status: StatusCode::FORBIDDEN,
            headers: HeaderMap::new(),
            body: Bytes::from_static(
                br#"{"errors":[{"code":"DENIED","message":"the tag is immutable","detail":"a:v1"}]}"#,
            ),
        };
        assert_eq!(
            reply.error_message(),
            "403 DENIED: the tag is immutable (a:v1)"
        );
        let reply = Reply {
            status: StatusCode::BAD_GATEWAY,
            headers: HeaderMap::new(),
            body: Bytes::from_static(b"upstream down\n"),
        };
        assert_eq!(reply.error_message(), "502 Bad Gateway: upstream down");
    }
}
