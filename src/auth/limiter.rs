//! Brute-force protection: a client whose logins failed `max_failures` times
//! within `window` is refused until the oldest of those failures is `window`
//! old (the http layer answers 429 `TOOMANYREQUESTS` with `Retry-After`).
//!
//! - Keyed by client address and user name: behind a proxy many users share
//!   an address (the http layer takes the address from a trusted proxy's
//!   header when one is configured), and one attacker guessing one user's
//!   password must not lock every other user out. The price: one address
//!   may try `max_failures` guesses per user name per window (password
//!   spraying is limited per user, not per address). IPv6 clients are
//!   grouped by their /64 (one host usually owns a whole /64), IPv4-mapped
//!   IPv6 as IPv4. The user name is kept as a keyed 64-bit hash, so an
//!   entry is small whatever name a client sends.
//! - Only failures count, and a success resets nothing: not another
//!   client's counter, and not its own either, so holding one valid
//!   credential does not buy unlimited guesses at others.
//! - Attempts refused while blocked are not failures: they do not extend the
//!   block.
//! - Memory is bounded: at most `max_clients` addresses with at most
//!   `max_failures` timestamps each; when full, clients whose failures are
//!   all outside the window go first, then the one whose last failure is
//!   oldest.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::config::LoginLimitConfig;

#[derive(Debug)]
pub struct FailureLimiter {
    max_failures: usize,
    window: Duration,
    max_clients: usize,
    /// Keys the user-name hash (per process, so names cannot be chosen to
    /// collide).
    user_hasher: RandomState,
    /// (address, user) → times of its recent failures, oldest first
    failures: Mutex<HashMap<Key, VecDeque<Instant>>>,
}

/// An address (or IPv6 /64) and the hash of a user name.
type Key = (IpAddr, u64);

impl FailureLimiter {
    pub fn new(config: &LoginLimitConfig) -> FailureLimiter {
        FailureLimiter {
            max_failures: config.max_failures.max(1) as usize,
            window: Duration::from_secs(config.window_secs.max(1)),
            max_clients: config.max_clients.max(1),
            user_hasher: RandomState::new(),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// `Ok` if `client` may try to log in as `user`; otherwise how long
    /// until it may.
    pub fn check(&self, client: IpAddr, user: &str) -> Result<(), Duration> {
        self.check_at(self.key(client, user), Instant::now())
    }

    /// Counts a failed login by `client` as `user`.
    pub fn record_failure(&self, client: IpAddr, user: &str) {
        self.record_failure_at(self.key(client, user), Instant::now());
    }

    fn key(&self, client: IpAddr, user: &str) -> Key {
        (address_key(client), self.user_hasher.hash_one(user))
    }

    /// How many (address, user) pairs are remembered.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, VecDeque<Instant>>> {
        self.failures.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn check_at(&self, client: Key, now: Instant) -> Result<(), Duration> {
        let failures = self.lock();
        let Some(times) = failures.get(&client) else {
            return Ok(());
        };
        let recent: Vec<&Instant> = times
            .iter()
            .filter(|&&t| now.saturating_duration_since(t) < self.window)
            .collect();
        if recent.len() < self.max_failures {
            return Ok(());
        }
        // Free once the oldest failure that still counts leaves the window.
        let oldest = *recent[recent.len() - self.max_failures];
        Err((oldest + self.window).saturating_duration_since(now))
    }

    fn record_failure_at(&self, client: Key, now: Instant) {
        let mut failures = self.lock();
        if !failures.contains_key(&client) && failures.len() >= self.max_clients {
            self.evict(&mut failures, now);
        }
        let times = failures.entry(client).or_default();
        times.push_back(now);
        while times.len() > self.max_failures {
            times.pop_front();
        }
    }

    fn evict(&self, failures: &mut HashMap<Key, VecDeque<Instant>>, now: Instant) {
        let last = |times: &VecDeque<Instant>| times.back().copied();
        failures.retain(|_, times| {
            last(times).is_some_and(|t| now.saturating_duration_since(t) < self.window)
        });
        if failures.len() >= self.max_clients {
            let oldest = failures
                .iter()
                .min_by_key(|(_, times)| last(times))
                .map(|(key, _)| *key);
            if let Some(key) = oldest {
                failures.remove(&key);
            }
        }
    }
}

/// The unit of limiting: an IPv4 address or an IPv6 /64.
fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(max_failures: u32, window_secs: u64, max_clients: usize) -> FailureLimiter {
        FailureLimiter::new(&LoginLimitConfig {
            max_failures,
            window_secs,
            max_clients,
        })
    }

    /// The key of user "u" at address `s` in limiter `l`.
    fn at(l: &FailureLimiter, s: &str) -> Key {
        l.key(s.parse().unwrap(), "u")
    }

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn a_client_is_refused_after_max_failures_until_the_window_passes() {
        let l = limiter(5, 60, 100);
        let t0 = Instant::now();
        let client = at(&l, "192.0.2.1");
        for i in 0..4 {
            l.record_failure_at(client, t0 + i * SEC);
            assert!(
                l.check_at(client, t0 + i * SEC).is_ok(),
                "after {} failures",
                i + 1
            );
        }
        l.record_failure_at(client, t0 + 4 * SEC);
        // Blocked until the first failure (t0) is 60 s old.
        assert_eq!(l.check_at(client, t0 + 4 * SEC), Err(56 * SEC));
        assert_eq!(l.check_at(client, t0 + 59 * SEC), Err(SEC));
        assert!(l.check_at(client, t0 + 60 * SEC).is_ok());
        // One more failure blocks it again until the second failure is 60 s old.
        l.record_failure_at(client, t0 + 60 * SEC);
        assert_eq!(l.check_at(client, t0 + 60 * SEC), Err(SEC));
        assert!(l.check_at(client, t0 + 61 * SEC).is_ok());
    }

    #[test]
    fn failures_spread_wider_than_the_window_never_block() {
        let l = limiter(3, 10, 100);
        let t0 = Instant::now();
        let client = at(&l, "192.0.2.1");
        for i in 0..10 {
            let now = t0 + i * 4 * SEC;
            assert!(l.check_at(client, now).is_ok(), "attempt {i}");
            l.record_failure_at(client, now);
        }
    }

    #[test]
    fn clients_are_counted_separately() {
        let l = limiter(2, 60, 100);
        let t0 = Instant::now();
        l.record_failure_at(at(&l, "192.0.2.1"), t0);
        l.record_failure_at(at(&l, "192.0.2.1"), t0);
        assert!(l.check_at(at(&l, "192.0.2.1"), t0).is_err());
        assert!(l.check_at(at(&l, "192.0.2.2"), t0).is_ok());
    }

    #[test]
    fn ipv6_clients_are_grouped_by_their_64() {
        let l = limiter(2, 60, 100);
        let t0 = Instant::now();
        l.record_failure_at(at(&l, "2001:db8:1:2::1"), t0);
        l.record_failure_at(at(&l, "2001:db8:1:2:ffff::9"), t0);
        assert!(l.check_at(at(&l, "2001:db8:1:2::abcd"), t0).is_err());
        assert!(l.check_at(at(&l, "2001:db8:1:3::1"), t0).is_ok());
        l.record_failure_at(at(&l, "::ffff:192.0.2.7"), t0);
        l.record_failure_at(at(&l, "192.0.2.7"), t0);
        assert!(l.check_at(at(&l, "192.0.2.7"), t0).is_err());
    }

    #[test]
    fn memory_is_bounded_and_stale_clients_go_first() {
        let l = limiter(5, 60, 3);
        let t0 = Instant::now();
        let blocked = at(&l, "192.0.2.1");
        for _ in 0..5 {
            l.record_failure_at(blocked, t0 + 100 * SEC);
        }
        l.record_failure_at(at(&l, "192.0.2.2"), t0); // stale by t0 + 100 s
        l.record_failure_at(at(&l, "192.0.2.3"), t0 + 90 * SEC);
        assert_eq!(l.len(), 3);
        l.record_failure_at(at(&l, "192.0.2.4"), t0 + 100 * SEC);
        assert_eq!(l.len(), 3);
        let failures = l.lock();
        assert!(!failures.contains_key(&at(&l, "192.0.2.2")));
        assert!(failures.contains_key(&at(&l, "192.0.2.3")));
        drop(failures);
        // Full of recent clients: the one whose last failure is oldest goes.
        l.record_failure_at(at(&l, "192.0.2.5"), t0 + 101 * SEC);
        assert_eq!(l.len(), 3);
        assert!(!l.lock().contains_key(&at(&l, "192.0.2.3")));
        assert!(l.check_at(blocked, t0 + 101 * SEC).is_err());
        for i in 0..1000u32 {
            let key = l.key(IpAddr::from(i.to_be_bytes()), "u");
            l.record_failure_at(key, t0 + 102 * SEC);
        }
        assert_eq!(l.len(), 3);
    }

    #[test]
    fn users_behind_one_address_are_counted_separately() {
        let l = limiter(2, 60, 100);
        let proxy: IpAddr = "192.0.2.1".parse().unwrap();
        l.record_failure(proxy, "bob");
        l.record_failure(proxy, "bob");
        assert!(l.check(proxy, "bob").is_err());
        assert!(l.check(proxy, "alice").is_ok());
        assert!(l.check("192.0.2.2".parse().unwrap(), "bob").is_ok());
    }
}
