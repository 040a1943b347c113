//! The strings auth puts in and reads from HTTP, as pure functions: the
//! `Authorization` header, the `WWW-Authenticate` challenge, and the token
//! endpoint's parameters. The http layer owns everything else.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use super::scope::{format_scopes, parse_scopes, Scope, ScopeError};
use super::Secret;

/// `Basic base64(user:password)` → (user, password). The scheme is
/// case-insensitive; the password may contain `:`.
pub fn basic_credentials(authorization: &str) -> Option<(String, Secret)> {
    let (scheme, encoded) = authorization.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = STANDARD.decode(encoded.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), Secret::new(password)))
}

/// `Bearer <token>` → the token.
pub fn bearer_token(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The `WWW-Authenticate` value of a 401 (Docker token spec): `Bearer
/// realm="…",service="…"`, then `scope="…"` (space-separated) when a scope
/// is known and `error="…"` (e.g. `invalid_token`, `insufficient_scope`)
/// when given.
pub fn bearer_challenge(
    realm: &str,
    service: &str,
    scopes: &[Scope],
    error: Option<&str>,
) -> String {
    let mut challenge = format!("Bearer realm={},service={}", quote(realm), quote(service));
    if !scopes.is_empty() {
        challenge.push_str(",scope=");
        challenge.push_str(&quote(&format_scopes(scopes)));
    }
    if let Some(error) = error {
        challenge.push_str(",error=");
        challenge.push_str(&quote(error));
    }
    challenge
}

/// The `WWW-Authenticate` value of a 401 asking for Basic credentials
/// (RFC 7617): `Basic realm="…"`.
pub fn basic_challenge(realm: &str) -> String {
    format!("Basic realm={}", quote(realm))
}

/// An RFC 7230 quoted-string.
fn quote(value: &str) -> String {
    let mut quoted = String::with_capacity(value.len() + 2);
    quoted.push('"');
    for c in value.chars().filter(|c| !c.is_control()) {
        if c == '"' || c == '\\' {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('"');
    quoted
}

/// The parameters of a token request: the query of `GET /token` or the form
/// body of the OAuth2 `POST /token` (same names). `Debug` hides the
/// password and refresh token.
#[derive(Debug, Default)]
pub struct TokenRequest {
    /// Must match ours when given.
    pub service: Option<String>,
    pub scopes: Vec<Scope>,
    /// The user name the client claims (informational; the credentials
    /// decide).
    pub account: Option<String>,
    pub client_id: Option<String>,
    pub offline_token: bool,
    /// OAuth2 POST: `password` or `refresh_token`.
    pub grant_type: Option<String>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub refresh_token: Option<Secret>,
}

impl TokenRequest {
    /// Parses `application/x-www-form-urlencoded` text (a query string
    /// without `?`). Repeated `scope`s add up; a bad scope is an error (400).
    pub fn parse(form: &str) -> Result<TokenRequest, ScopeError> {
        let mut request = TokenRequest::default();
        let mut scope_values = Vec::new();
        for (key, value) in form_urlencoded::parse(form.as_bytes()) {
            let value = value.into_owned();
            match &*key {
                "service" => request.service = Some(value),
                "scope" => scope_values.push(value),
                "account" => request.account = Some(value),
                "client_id" => request.client_id = Some(value),
                "offline_token" => request.offline_token = value == "true",
                "grant_type" => request.grant_type = Some(value),
                "username" => request.username = Some(value),
                "password" => request.password = Some(Secret::new(value)),
                "refresh_token" => request.refresh_token = Some(Secret::new(value)),
                _ => {}
            }
        }
        request.scopes = parse_scopes(scope_values.iter().map(String::as_str))?;
        Ok(request)
    }
}

/// A `WWW-Authenticate` challenge (RFC 7235) as a client reads one (Berth's
/// CLI, a mirror asking its upstream): a scheme and its parameters.
#[derive(Debug, PartialEq, Eq)]
pub struct Challenge {
    /// Lower case.
    pub scheme: String,
    pub params: Vec<(String, String)>,
}

impl Challenge {
    /// Parses the first challenge of a header value: `Scheme k="v",k2=v2`.
    /// Quoted values may hold commas (`scope="repository:a:pull,push"`) and
    /// backslash escapes.
    pub fn parse(value: &str) -> Option<Challenge> {
        let value = value.trim();
        let (scheme, mut rest) = match value.split_once(' ') {
            Some((scheme, rest)) => (scheme, rest.trim_start()),
            None => (value, ""),
        };
        if scheme.is_empty() {
            return None;
        }
        let mut params = Vec::new();
        while !rest.is_empty() {
            let (key, after) = rest.split_once('=')?;
            let key = key.trim().to_ascii_lowercase();
            let after = after.trim_start();
            let (value, remaining) = if let Some(quoted) = after.strip_prefix('"') {
                let mut value = String::new();
                let mut chars = quoted.char_indices();
                let mut end = None;
                while let Some((i, c)) = chars.next() {
                    match c {
                        '\\' => value.extend(chars.next().map(|(_, c)| c)),
                        '"' => {
                            end = Some(i + 1);
                            break;
                        }
                        c => value.push(c),
                    }
                }
                (value, &quoted[end?..])
            } else {
                let end = after.find(',').unwrap_or(after.len());
                (after[..end].trim().to_owned(), &after[end..])
            };
            params.push((key, value));
            rest = remaining.trim_start().trim_start_matches(',').trim_start();
        }
        Some(Challenge {
            scheme: scheme.to_ascii_lowercase(),
            params,
        })
    }

    pub fn param(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse_with_quoted_commas_and_escapes() {
        let c = Challenge::parse(
            r#"Bearer realm="https://r.example/auth/token",service="berth",scope="repository:a/b:pull,push,delete",error="insufficient_scope""#,
        )
        .unwrap();
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.param("realm"), Some("https://r.example/auth/token"));
        assert_eq!(c.param("service"), Some("berth"));
        assert_eq!(c.param("scope"), Some("repository:a/b:pull,push,delete"));
        assert_eq!(c.param("error"), Some("insufficient_scope"));
        let c = Challenge::parse(r#"Basic realm="say \"hi\"", charset=UTF-8"#).unwrap();
        assert_eq!(c.scheme, "basic");
        assert_eq!(c.param("realm"), Some(r#"say "hi""#));
        assert_eq!(c.param("charset"), Some("UTF-8"));
        assert_eq!(Challenge::parse("Bearer").unwrap().params, []);
        assert_eq!(Challenge::parse(r#"Bearer realm="unterminated"#), None);
    }

    #[test]
    fn basic_credentials_decode() {
        let header = format!("Basic {}", STANDARD.encode("alice:pa:ss word"));
        let (user, password) = basic_credentials(&header).unwrap();
        assert_eq!(user, "alice");
        assert_eq!(password.expose(), "pa:ss word");
        let lower = format!("basic {}", STANDARD.encode("robot$ci:s"));
        assert_eq!(basic_credentials(&lower).unwrap().0, "robot$ci");
        for bad in [
            "Basic",
            "Basic !!!",
            "Bearer abc",
            &format!("Basic {}", STANDARD.encode("no-colon")),
        ] {
            assert!(basic_credentials(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn bearer_tokens_are_extracted() {
        assert_eq!(bearer_token("Bearer abc.def.ghi"), Some("abc.def.ghi"));
        assert_eq!(bearer_token("bearer  xyz "), Some("xyz"));
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("Basic abc"), None);
    }

    #[test]
    fn challenges_follow_the_token_spec() {
        let scopes = parse_scopes(["repository:team-a/app:pull,push"]).unwrap();
        assert_eq!(
            bearer_challenge("https://r.example/auth/token", "berth", &scopes, None),
            r#"Bearer realm="https://r.example/auth/token",service="berth",scope="repository:team-a/app:pull,push""#
        );
        let two = parse_scopes(["repository:a:pull registry:catalog:*"]).unwrap();
        assert_eq!(
            bearer_challenge("r", "s", &two, Some("insufficient_scope")),
            r#"Bearer realm="r",service="s",scope="repository:a:pull registry:catalog:*",error="insufficient_scope""#
        );
        assert_eq!(basic_challenge("berth"), r#"Basic realm="berth""#);
        assert_eq!(
            bearer_challenge("a\"b\\c\n", "s", &[], None),
            r#"Bearer realm="a\"b\\c",service="s""#
        );
    }

    #[test]
    fn token_requests_parse_get_and_post_forms() {
        let get = TokenRequest::parse(
            "service=berth&scope=repository%3Ateam-a%2Fapp%3Apull%2Cpush&scope=repository:b:pull&account=alice&client_id=docker&offline_token=true",
        )
        .unwrap();
        assert_eq!(get.service.as_deref(), Some("berth"));
        assert_eq!(get.scopes.len(), 2);
        assert_eq!(get.scopes[0].to_string(), "repository:team-a/app:pull,push");
        assert_eq!(get.account.as_deref(), Some("alice"));
        assert!(get.offline_token);

        let post = TokenRequest::parse(
            "grant_type=password&username=alice&password=s3cr%26t&service=berth&scope=repository%3Aa%3Apull+registry%3Acatalog%3A*&client_id=containerd",
        )
        .unwrap();
        assert_eq!(post.grant_type.as_deref(), Some("password"));
        assert_eq!(post.password.as_ref().unwrap().expose(), "s3cr&t");
        assert_eq!(
            post.scopes,
            parse_scopes(["repository:a:pull registry:catalog:*"]).unwrap()
        );
        assert!(!format!("{post:?}").contains("s3cr"));

        assert!(TokenRequest::parse("scope=repository:BAD:pull").is_err());
        assert!(TokenRequest::parse("").unwrap().scopes.is_empty());
    }
}
