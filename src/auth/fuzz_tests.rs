//! Fuzz tests of what auth reads from a client (issue 12): `Authorization`
//! headers (Basic, Bearer), token scopes and token requests, and tokens
//! themselves: a token whose bytes were changed never verifies, and the
//! claims of a validly signed token never panic the verifier nor grant more
//! than they name. The harness and how to run longer: `crate::oci::fuzzing`.

use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use jsonwebtoken::{EncodingKey, Header};
use proptest::prelude::*;
use serde_json::{json, Value};

use super::header::{basic_credentials, bearer_challenge, bearer_token, TokenRequest};
use super::scope::{parse_scopes, Action, Actions, Scope, ScopeError};
use super::token::{TokenIssuer, TokenVerifier};
use crate::oci::fuzzing::{bytes, config, corpus, mutated, text};
use crate::oci::RepositoryName;

const SIGNING_KEY: &str = include_str!("testdata/ec-p256-pkcs8.pem");
const ISSUER: &str = "berth-fuzz";
const SERVICE: &str = "registry.test";

fn issuer() -> TokenIssuer {
    TokenIssuer::from_pem(
        SIGNING_KEY.as_bytes(),
        ISSUER,
        SERVICE,
        Duration::from_secs(300),
    )
    .expect("test key")
}

fn verifier() -> TokenVerifier {
    let mut verifier = TokenVerifier::new();
    verifier.trust(&issuer());
    verifier
}

/// Signs `claims` as our issuer's key would, whatever they say.
fn sign(claims: &Value) -> String {
    let key = EncodingKey::from_ec_pem(SIGNING_KEY.as_bytes()).expect("test key");
    jsonwebtoken::encode(&Header::new(jsonwebtoken::Algorithm::ES256), claims, &key)
        .expect("signing")
}

fn now_secs() -> u64 {
    super::unix_secs(SystemTime::now())
}

/// Strings for user names and passwords: anything but what splits them.
fn credential() -> impl Strategy<Value = String> {
    prop_oneof![text("authorization"), any::<String>()]
}

proptest! {
    #![proptest_config(config(1000))]

    #[test]
    fn authorization_headers_are_read_only_as_what_they_encode(header in text("authorization")) {
        check_authorization(&header)?;
    }

    /// What a client encodes is what Basic decodes, `:` in the password and
    /// any Unicode included.
    #[test]
    fn basic_credentials_round_trip(user in credential(), password in credential(), lower in any::<bool>()) {
        let user = user.replace(':', "");
        let scheme = if lower { "basic" } else { "Basic" };
        let header = format!("{scheme} {}", STANDARD.encode(format!("{user}:{password}")));
        let (read_user, read_password) = basic_credentials(&header).expect("well-formed Basic");
        prop_assert_eq!(read_user, user);
        prop_assert_eq!(read_password.expose(), password.as_str());
    }

    #[test]
    fn scopes_round_trip_through_their_display(scope in text("scope")) {
        check_scope(&scope)?;
    }

    #[test]
    fn token_requests_parse_or_refuse_a_scope(form in text("token_request")) {
        check_token_request(&form)?;
    }

    /// Any change to a token's bytes makes it refused: the signature covers
    /// header and claims, and the signature itself is checked byte for byte.
    #[test]
    fn a_token_with_changed_bytes_never_verifies(changed in mutated(issued_token().into_bytes())) {
        let original = issued_token();
        let changed = String::from_utf8_lossy(&changed);
        prop_assume!(changed != original);
        prop_assert!(verifier().verify(&changed).is_err(), "{} verified", changed);
    }

    /// Claims our key signed but our issuer would never write (the access
    /// claim's types, names and actions, `exp` at the edges of what JSON
    /// numbers hold): the verifier never panics, and grants only valid
    /// repository names with the actions their entries name.
    #[test]
    fn signed_claims_grant_no_more_than_they_name(claims in claims()) {
        check_signed_claims(&claims)?;
    }

    /// The corpus's claim sets, mutated, and signed when still JSON.
    #[test]
    fn signed_fuzzed_claims_never_panic_the_verifier(claims in bytes("token_claims")) {
        if let Ok(claims) = serde_json::from_slice::<Value>(&claims) {
            check_signed_claims(&claims)?;
        }
    }
}

/// A fresh token for a few repositories (one per run of a property).
fn issued_token() -> String {
    static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TOKEN
        .get_or_init(|| {
            let access = parse_scopes(["repository:library/ubuntu:pull,push registry:catalog:*"])
                .expect("scopes");
            issuer()
                .issue("alice", &access)
                .expect("issued")
                .token
                .expose()
                .to_owned()
        })
        .clone()
}

fn claims() -> impl Strategy<Value = Value> {
    let kind = prop_oneof![
        proptest::sample::select(
            &[
                "repository",
                "repository(plugin)",
                "registry",
                "",
                "repository(",
                "plugin"
            ][..]
        )
        .prop_map(str::to_owned),
        text("scope"),
    ];
    let name = prop_oneof![Just("catalog".to_owned()), text("name")];
    let action = prop_oneof![
        proptest::sample::select(
            &[
                "pull",
                "push",
                "delete",
                "*",
                "",
                "PULL",
                "pull,push",
                " pull"
            ][..]
        )
        .prop_map(str::to_owned),
        text("scope"),
    ];
    let entry = (kind, name, proptest::collection::vec(action, 0..4))
        .prop_map(|(kind, name, actions)| json!({"type": kind, "name": name, "actions": actions}));
    // Read the clock per case: a long run outlives a time taken once.
    let exp = (0..7).prop_map(|choice| match choice {
        0 => json!(now_secs() + 300),
        1 => json!(u64::MAX),
        2 => json!(i64::MAX),
        3 => json!(253_402_300_800u64),
        4 => json!(1e300),
        5 => json!(now_secs() as f64 + 0.5),
        _ => json!(-1),
    });
    (proptest::collection::vec(entry, 0..4), exp, any::<bool>()).prop_map(
        |(access, exp, aud_as_list)| {
            let aud = if aud_as_list {
                json!([SERVICE])
            } else {
                json!(SERVICE)
            };
            json!({"iss": ISSUER, "sub": "fuzz", "aud": aud, "exp": exp, "access": access})
        },
    )
}

/// Basic yields a user without `:` and a password that re-encode to the
/// header's base64; Bearer yields a non-empty token the header holds as is.
fn check_authorization(header: &str) -> Result<(), TestCaseError> {
    if let Some((user, password)) = basic_credentials(header) {
        let (scheme, encoded) = header.trim().split_once(' ').expect("a scheme and a value");
        prop_assert!(scheme.eq_ignore_ascii_case("basic"));
        prop_assert!(!user.contains(':'));
        let decoded = STANDARD
            .decode(encoded.trim())
            .expect("the value is base64");
        prop_assert_eq!(
            decoded,
            format!("{user}:{}", password.expose()).into_bytes()
        );
    }
    if let Some(token) = bearer_token(header) {
        prop_assert!(!token.is_empty() && token.trim() == token);
        prop_assert!(header.trim().to_ascii_lowercase().starts_with("bearer "));
        prop_assert!(header.trim_end().ends_with(token));
        prop_assert!(basic_credentials(header).is_none());
        prop_assert!(verifier().verify(token).is_err(), "{} verified", token);
    }
    Ok(())
}

/// A parsed scope displays as a string that parses to the same scope; a
/// repository scope's name is the text between the first and last `:`.
fn check_scope(s: &str) -> Result<(), TestCaseError> {
    match Scope::parse(s) {
        Ok(scope) => {
            let shown = scope.to_string();
            prop_assert_eq!(
                Scope::parse(&shown),
                Ok(scope.clone()),
                "{:?} → {:?}",
                s,
                shown
            );
            if let Scope::Repository { name, .. } = &scope {
                let (_, rest) = s.split_once(':').expect("a type");
                let (text, _) = rest.rsplit_once(':').expect("actions");
                prop_assert_eq!(name.as_str(), text);
                prop_assert!(s.starts_with("repository"));
            }
            // A challenge built from it is a valid header whose scope reads back.
            check_challenge(std::slice::from_ref(&scope))?;
        }
        Err(ScopeError::InvalidName(_)) => {
            prop_assert!(s.starts_with("repository"));
        }
        Err(ScopeError::Malformed(_) | ScopeError::Unsupported(_)) => {}
    }
    Ok(())
}

fn check_challenge(scopes: &[Scope]) -> Result<(), TestCaseError> {
    let challenge = bearer_challenge(
        "https://registry.test/auth/token",
        SERVICE,
        scopes,
        Some("insufficient_scope"),
    );
    prop_assert!(
        axum::http::HeaderValue::from_str(&challenge).is_ok(),
        "{}",
        challenge
    );
    let quoted = challenge
        .split(",scope=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a scope parameter");
    let read = parse_scopes([quoted]).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(read.as_slice(), scopes);
    Ok(())
}

fn check_token_request(form: &str) -> Result<(), TestCaseError> {
    if let Ok(request) = TokenRequest::parse(form) {
        for scope in &request.scopes {
            prop_assert_eq!(Scope::parse(&scope.to_string()), Ok(scope.clone()));
        }
        if !request.scopes.is_empty() {
            check_challenge(&request.scopes)?;
        }
    }
    Ok(())
}

/// Signs `claims` with the trusted key and verifies them.
fn check_signed_claims(claims: &Value) -> Result<(), TestCaseError> {
    let token = sign(claims);
    let before = SystemTime::now();
    let Ok(verified) = verifier().verify(&token) else {
        return Ok(());
    };
    prop_assert_eq!(claims["iss"].as_str(), Some(ISSUER));
    let exp = claims["exp"]
        .as_f64()
        .expect("a verified token has a numeric exp");
    prop_assert!(
        exp + 30.0 >= now_secs() as f64,
        "expired exp {} verified",
        exp
    );
    // jsonwebtoken rounds a fractional exp, Berth floors it: a second apart,
    // on the safe side (a cached token is dropped that second earlier).
    let leeway = Duration::from_secs(super::token::LEEWAY_SECS + 1);
    prop_assert!(verified.expires_at + leeway >= before - Duration::from_secs(1));
    let entries = claims["access"].as_array().cloned().unwrap_or_default();
    for scope in &verified.access {
        let named = |entry: &&Value| {
            entry["name"].as_str() == Some(scope_name(scope))
                && entry["type"]
                    .as_str()
                    .is_some_and(|t| t.starts_with(scope.resource_type()))
        };
        let named_entries: Vec<&Value> = entries.iter().filter(|e| named(e)).collect();
        prop_assert!(!named_entries.is_empty(), "{:?} granted by no entry", scope);
        if let Scope::Repository { actions, .. } = scope {
            prop_assert!(!actions.is_empty());
            let mut named_actions = Actions::NONE;
            for entry in &named_entries {
                for action in entry["actions"].as_array().into_iter().flatten() {
                    named_actions =
                        named_actions.union(Actions::parse_lenient(action.as_str().unwrap_or("")));
                }
            }
            prop_assert_eq!(
                actions.intersection(named_actions),
                *actions,
                "{:?} beyond {:?}",
                scope,
                named_actions
            );
        }
    }
    Ok(())
}

fn scope_name(scope: &Scope) -> &str {
    match scope {
        Scope::Repository { name, .. } => name.as_str(),
        Scope::Catalog => "catalog",
    }
}

/// Every seed as it is, through its target's property.
#[test]
fn every_seed_satisfies_its_property() {
    let seeds = |target| {
        corpus(target)
            .into_iter()
            .map(|seed| String::from_utf8_lossy(&seed).into_owned())
    };
    for header in seeds("authorization") {
        check_authorization(&header).unwrap();
    }
    for scope in seeds("scope") {
        check_scope(&scope).unwrap();
    }
    for form in seeds("token_request") {
        check_token_request(&form).unwrap();
    }
    for claims in corpus("token_claims") {
        let claims: Value = serde_json::from_slice(&claims).expect("claim seeds are JSON");
        check_signed_claims(&claims).unwrap();
    }
    // The spec's example grants what it names.
    let example = json!({"iss": ISSUER, "aud": SERVICE, "exp": now_secs() + 60,
        "access": [{"type": "repository", "name": "samalba/my-app", "actions": ["pull", "push"]}]});
    let verified = verifier().verify(&sign(&example)).expect("verifies");
    let name = RepositoryName::parse("samalba/my-app").unwrap();
    assert!(verified.allows(&name, Action::Push) && !verified.allows(&name, Action::Delete));
}
