//! Remembers verified bearer tokens until they expire, so that a client
//! sending the same token with every request (every docker pull) pays for
//! one signature check (ECDSA/RSA: tens of microseconds, the larger part of
//! a cached manifest `GET`) instead of one per request.
//!
//! - An entry is keyed by the SHA-256 of the token: the token itself is not
//!   kept, and a token that differs in any byte (a forged signature
//!   included) misses and goes to [`Auth::verify_token`].
//! - An entry holds exactly what the verifier returned, and only strictly
//!   before the token's `exp` ([`VerifiedToken::expires_at`]): never past
//!   it, not even within the verifier's clock-skew leeway (there the token
//!   is verified again).
//! - Only successes are cached; a refused token is refused every time.
//! - Revocation: a token is not revoked today, a robot's or a user's
//!   included (its grants decide until `exp`, at most `token_ttl_secs`;
//!   see [`super::auth`]). The cache keeps exactly that promise and makes it
//!   no weaker: what the verifier would accept, the cache accepts, for no
//!   longer.
//! - Bounded: [`CAPACITY`] tokens, the least recently used go first.
//!
//! [`Auth::verify_token`]: crate::auth::Auth::verify_token

use std::sync::Arc;
use std::time::SystemTime;

use quick_cache::sync::Cache;
use sha2::{Digest, Sha256};

use crate::auth::VerifiedToken;

/// Tokens remembered at most: a few hundred bytes each.
const CAPACITY: usize = 8192;

pub struct TokenCache {
    entries: Cache<[u8; 32], Arc<VerifiedToken>>,
}

impl TokenCache {
    pub fn new() -> TokenCache {
        TokenCache {
            entries: Cache::new(CAPACITY),
        }
    }

    /// What `token` was verified to grant, if it was verified before and
    /// has not expired.
    pub fn get(&self, token: &str) -> Option<Arc<VerifiedToken>> {
        self.get_at(token, SystemTime::now())
    }

    fn get_at(&self, token: &str, now: SystemTime) -> Option<Arc<VerifiedToken>> {
        let id = id(token);
        let verified = self.entries.get(&id)?;
        if now >= verified.expires_at {
            self.entries.remove(&id);
            return None;
        }
        Some(verified)
    }

    /// Remembers what the verifier returned for `token` (nothing when it
    /// has already expired: it was accepted within the leeway).
    pub fn insert(&self, token: &str, verified: Arc<VerifiedToken>) {
        if SystemTime::now() < verified.expires_at {
            self.entries.insert(id(token), verified);
        }
    }
}

impl Default for TokenCache {
    fn default() -> TokenCache {
        TokenCache::new()
    }
}

fn id(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::auth::{parse_scopes, Auth, AuthConfig};

    fn auth(dir: &std::path::Path) -> Auth {
        let config = AuthConfig {
            token_ttl_secs: 60,
            ..AuthConfig::default()
        };
        Auth::from_config(&config, dir).unwrap()
    }

    fn issue(auth: &Auth, scopes: &[&str]) -> String {
        let identity = auth.policy().user("alice");
        let requested = parse_scopes(scopes.iter().copied()).unwrap();
        let issued = auth.issue_token(&identity, &requested).unwrap();
        issued.token.expose().to_owned()
    }

    #[test]
    fn a_cached_tokens_grants_are_exactly_the_verified_ones() {
        let dir = tempfile::tempdir().unwrap();
        let auth = auth(dir.path());
        let cache = TokenCache::new();
        let token = issue(&auth, &["repository:team/app:pull,push"]);
        let other = issue(&auth, &["repository:team/app:pull"]);
        let verified = Arc::new(auth.verify_token(&token).unwrap());
        assert!(!verified.access.is_empty(), "the policy granted something");
        cache.insert(&token, Arc::clone(&verified));

        assert_eq!(cache.get(&token).as_deref(), Some(verified.as_ref()));
        assert_eq!(
            cache.get(&token).unwrap().access,
            auth.verify_token(&token).unwrap().access
        );
        // Another token of the same user, and the token with one byte
        // changed, are not served from the entry.
        assert_eq!(cache.get(&other), None);
        let at = token.len() - 10;
        let swapped = if &token[at..at + 1] == "A" { "B" } else { "A" };
        let forged = format!("{}{swapped}{}", &token[..at], &token[at + 1..]);
        assert_eq!(cache.get(&forged), None);
    }

    #[test]
    fn an_expired_token_is_refused_even_when_cached() {
        let dir = tempfile::tempdir().unwrap();
        let auth = auth(dir.path());
        let cache = TokenCache::new();
        let token = issue(&auth, &["repository:team/app:pull"]);
        let verified = Arc::new(auth.verify_token(&token).unwrap());
        let expires_at = verified.expires_at;
        cache.insert(&token, verified);

        let before = expires_at - Duration::from_secs(1);
        assert!(cache.get_at(&token, before).is_some());
        // At `exp` itself and after: gone, and it stays gone (the entry was
        // dropped, not just skipped).
        assert_eq!(cache.get_at(&token, expires_at), None);
        assert_eq!(cache.get_at(&token, before), None);
    }

    #[test]
    fn a_token_already_past_its_exp_is_not_remembered() {
        let cache = TokenCache::new();
        let expired = VerifiedToken {
            issuer: "berth".into(),
            subject: "alice".into(),
            access: Vec::new(),
            expires_at: SystemTime::now() - Duration::from_secs(5),
            issued_at: None,
            session: false,
        };
        cache.insert("t", Arc::new(expired));
        assert_eq!(
            cache.get_at("t", SystemTime::now() - Duration::from_secs(60)),
            None
        );
    }
}
