//! Remembers successful htpasswd logins for a short while, so that a client
//! sending `Authorization: Basic` with every request (`challenge = "basic"`,
//! curl, some CI tools) pays for one bcrypt check a minute instead of one per
//! request: a `docker push` makes dozens of requests, and bcrypt at the
//! default cost takes ~50-100 ms of CPU each time.
//!
//! - Only htpasswd users are cached. Robot logins are one SHA-256 and a
//!   `stat` already, and stay uncached so a revocation is seen at once.
//! - An entry is keyed by a SHA-256 of a per-process random key, the user
//!   name and the password: the password itself is never kept, and the key
//!   makes the hash useless for guessing passwords offline.
//! - An entry holds for at most [`LOGIN_CACHE_TTL`], and only while the
//!   htpasswd file is the version the login was checked against
//!   ([`Auth::users_version`]): removing a user or changing a password takes
//!   effect with the next request.
//! - Only successes are cached: every failure goes through
//!   [`Auth::login`] and its brute-force limiter.
//!
//! [`Auth::users_version`]: crate::auth::Auth::users_version
//! [`Auth::login`]: crate::auth::Auth::login

use std::time::{Duration, Instant};

use quick_cache::sync::Cache;
use sha2::{Digest, Sha256};

use crate::auth::{Identity, UsersVersion};

/// How long a verified user name and password are trusted without bcrypt.
pub const LOGIN_CACHE_TTL: Duration = Duration::from_secs(60);

/// Logins remembered at most (the least recently used go first).
const CAPACITY: usize = 4096;

#[derive(Clone)]
struct Entry {
    identity: Identity,
    users_version: UsersVersion,
    verified_at: Instant,
}

pub struct LoginCache {
    key: [u8; 32],
    entries: Cache<[u8; 32], Entry>,
}

impl LoginCache {
    pub fn new() -> LoginCache {
        LoginCache {
            key: crate::auth::random_bytes::<32>(),
            entries: Cache::new(CAPACITY),
        }
    }

    /// The identity `user` logged in as with `password`, if that was checked
    /// less than [`LOGIN_CACHE_TTL`] ago against the same `users_version`.
    pub fn get(&self, user: &str, password: &str, users_version: UsersVersion) -> Option<Identity> {
        let id = self.id(user, password);
        let entry = self.entries.get(&id)?;
        if entry.users_version != users_version || entry.verified_at.elapsed() > LOGIN_CACHE_TTL {
            self.entries.remove(&id);
            return None;
        }
        Some(entry.identity)
    }

    /// Remembers a successful login checked against `users_version` (read
    /// before the check, so a change during it invalidates the entry).
    pub fn insert(
        &self,
        user: &str,
        password: &str,
        users_version: UsersVersion,
        identity: Identity,
    ) {
        let entry = Entry {
            identity,
            users_version,
            verified_at: Instant::now(),
        };
        self.entries.insert(self.id(user, password), entry);
    }

    fn id(&self, user: &str, password: &str) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(self.key);
        // Length-prefixed, so ("ab", "c") and ("a", "bc") differ.
        hasher.update((user.len() as u64).to_be_bytes());
        hasher.update(user.as_bytes());
        hasher.update(password.as_bytes());
        hasher.finalize().into()
    }
}

impl Default for LoginCache {
    fn default() -> LoginCache {
        LoginCache::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Auth, AuthConfig, Htpasswd};

    #[test]
    fn a_login_is_remembered_until_the_users_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let htpasswd = dir.path().join("htpasswd");
        Htpasswd::add_or_update_user(&htpasswd, "alice", "alice-pw", 4).unwrap();
        let config = AuthConfig {
            htpasswd: Some(htpasswd.clone()),
            ..AuthConfig::default()
        };
        let auth = Auth::from_config(&config, dir.path()).unwrap();
        let cache = LoginCache::new();
        let version = auth.users_version().unwrap();
        let alice = auth.policy().user("alice");
        cache.insert("alice", "alice-pw", version, alice.clone());

        assert_eq!(cache.get("alice", "alice-pw", version), Some(alice));
        assert_eq!(cache.get("alice", "other", version), None);
        assert_eq!(cache.get("alicealice-pw", "", version), None);

        Htpasswd::add_or_update_user(&htpasswd, "bob", "bob-pw", 4).unwrap();
        let changed = auth.users_version().unwrap();
        assert_ne!(changed, version);
        assert_eq!(cache.get("alice", "alice-pw", changed), None);
    }
}
