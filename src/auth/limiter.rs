//! Brute-force protection: a client whose logins failed `max_failures` times
//! within `window` is refused until the oldest of those failures is `window`
//! old (the http layer answers 429 `TOOMANYREQUESTS` with `Retry-After`).
//!
//! - **Attempts are reserved before the password is checked.** A login takes
//!   an [`Attempt`] ([`FailureLimiter::reserve`]) before bcrypt runs, and
//!   attempts in flight count toward the limit with the recent failures: with
//!   `max_failures` = L, at most L passwords of one (address, user) are ever
//!   being checked or have failed within the window, however the guesses are
//!   timed. (Checking the limit, running bcrypt and then recording the
//!   failure let any number of parallel guesses through before the first
//!   was counted.) An attempt that fails becomes a recorded failure; one
//!   that succeeds, or is dropped unsettled (a panic, a task that never
//!   ran), only frees its place. A caller that finds every place taken by
//!   attempts in flight ([`Refused::Busy`]) may wait for
//!   [`FailureLimiter::released`] and try again: that is how a burst of
//!   parallel *correct* logins (CI jobs sharing one account and one address)
//!   is served rather than refused.
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
//! - Memory is bounded: at most `max_clients` (address, user) pairs with at
//!   most `max_failures` timestamps each, plus the pairs with an attempt in
//!   flight (bounded by the blocking pool that runs them); when full, pairs
//!   whose failures are all outside the window go first, then the one whose
//!   last failure is oldest. A pair with an attempt in flight is never
//!   evicted (its failure would be lost).

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::futures::Notified;
use tokio::sync::Notify;

use super::config::LoginLimitConfig;

#[derive(Debug)]
pub struct FailureLimiter {
    /// Shared with the [`Attempt`]s, which outlive a borrow (they move onto
    /// the blocking pool with the bcrypt check).
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    max_failures: usize,
    window: Duration,
    max_clients: usize,
    /// Keys the user-name hash (per process, so names cannot be chosen to
    /// collide).
    user_hasher: RandomState,
    entries: Mutex<HashMap<Key, Entry>>,
    /// Woken whenever an attempt is settled or dropped.
    released: Notify,
}

/// One (address, user) pair's state.
#[derive(Debug, Default)]
struct Entry {
    /// Times of its recent failures, oldest first.
    failures: VecDeque<Instant>,
    /// Attempts reserved and not yet settled.
    in_flight: usize,
}

/// An address (or IPv6 /64) and the hash of a user name.
type Key = (IpAddr, u64);

/// Why [`FailureLimiter::reserve`] gave no attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `max_failures` recent failures: refused for `retry_after`.
    Blocked { retry_after: Duration },
    /// Recent failures and attempts in flight fill the limit: one of those
    /// attempts settles soon (wait for [`FailureLimiter::released`]).
    Busy,
}

/// A reserved login attempt (RAII): it counts toward the limit until it is
/// settled with [`Attempt::failed`] (a recorded failure) or
/// [`Attempt::succeeded`], or dropped (freed, not counted as a failure).
#[derive(Debug)]
#[must_use = "an attempt counts toward the limit until settled or dropped"]
pub struct Attempt {
    shared: Arc<Shared>,
    key: Key,
    client: IpAddr,
    /// Set by [`Attempt::failed`]; the drop records it.
    failure: Option<Instant>,
}

impl Attempt {
    /// The client address this attempt was reserved for (for the log).
    pub fn client(&self) -> IpAddr {
        self.client
    }

    /// The password was wrong: the attempt becomes a failure.
    pub fn failed(self) {
        self.failed_at(Instant::now());
    }

    fn failed_at(mut self, now: Instant) {
        self.failure = Some(now);
    }

    /// The password was right: the attempt's place is freed.
    pub fn succeeded(self) {
        drop(self);
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        self.shared.settle(self.key, self.failure);
    }
}

impl FailureLimiter {
    pub fn new(config: &LoginLimitConfig) -> FailureLimiter {
        FailureLimiter {
            shared: Arc::new(Shared {
                max_failures: config.max_failures.max(1) as usize,
                window: Duration::from_secs(config.window_secs.max(1)),
                max_clients: config.max_clients.max(1),
                user_hasher: RandomState::new(),
                entries: Mutex::new(HashMap::new()),
                released: Notify::new(),
            }),
        }
    }

    /// `Ok` if `client` is not blocked from logging in as `user`; otherwise
    /// how long until it is not. Reserves nothing: for a login that checks
    /// no password (a cached one), which must still be refused while blocked.
    pub fn check(&self, client: IpAddr, user: &str) -> Result<(), Duration> {
        self.shared.check_at(self.key(client, user), Instant::now())
    }

    /// Reserves an attempt to check `user`'s password for `client`: refused
    /// while blocked, or while failures and attempts in flight fill the
    /// limit.
    pub fn reserve(&self, client: IpAddr, user: &str) -> Result<Attempt, Refused> {
        self.reserve_at(client, self.key(client, user), Instant::now())
    }

    /// Completes when an attempt is settled or dropped. Create it *before*
    /// the [`FailureLimiter::reserve`] that may answer [`Refused::Busy`], so
    /// a release between the two is not missed.
    pub fn released(&self) -> Notified<'_> {
        self.shared.released.notified()
    }

    /// Counts a failed login by `client` as `user` (as a reserved attempt
    /// that failed).
    pub fn record_failure(&self, client: IpAddr, user: &str) {
        self.shared
            .record_failure_at(self.key(client, user), Instant::now());
    }

    fn key(&self, client: IpAddr, user: &str) -> Key {
        (address_key(client), self.shared.user_hasher.hash_one(user))
    }

    fn reserve_at(&self, client: IpAddr, key: Key, now: Instant) -> Result<Attempt, Refused> {
        let shared = &self.shared;
        let mut entries = shared.lock();
        if let Some(entry) = entries.get(&key) {
            if let Err(retry_after) = shared.blocked(entry, now) {
                return Err(Refused::Blocked { retry_after });
            }
            if shared.recent(entry, now) + entry.in_flight >= shared.max_failures {
                return Err(Refused::Busy);
            }
        } else if entries.len() >= shared.max_clients {
            shared.evict(&mut entries, now);
        }
        entries.entry(key).or_default().in_flight += 1;
        Ok(Attempt {
            shared: Arc::clone(shared),
            key,
            client,
            failure: None,
        })
    }

    /// How many (address, user) pairs are remembered.
    pub fn len(&self) -> usize {
        self.shared.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many of `entry`'s failures are within the window at `now`.
    fn recent(&self, entry: &Entry, now: Instant) -> usize {
        entry
            .failures
            .iter()
            .filter(|&&t| now.saturating_duration_since(t) < self.window)
            .count()
    }

    fn blocked(&self, entry: &Entry, now: Instant) -> Result<(), Duration> {
        let recent: Vec<&Instant> = entry
            .failures
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

    fn check_at(&self, key: Key, now: Instant) -> Result<(), Duration> {
        match self.lock().get(&key) {
            Some(entry) => self.blocked(entry, now),
            None => Ok(()),
        }
    }

    /// Ends an attempt of `key`: frees its place and, if it failed (at
    /// `failure`), records the failure, under one lock (so no reservation
    /// sees the place free before the failure counts); then wakes those
    /// waiting for a place.
    fn settle(&self, key: Key, failure: Option<Instant>) {
        {
            let mut entries = self.lock();
            if let Some(entry) = entries.get_mut(&key) {
                entry.in_flight = entry.in_flight.saturating_sub(1);
            }
            match failure {
                Some(now) => self.record_failure_locked(&mut entries, key, now),
                None => {
                    if entries
                        .get(&key)
                        .is_some_and(|e| e.in_flight == 0 && e.failures.is_empty())
                    {
                        entries.remove(&key);
                    }
                }
            }
        }
        self.released.notify_waiters();
    }

    fn record_failure_at(&self, key: Key, now: Instant) {
        self.record_failure_locked(&mut self.lock(), key, now);
    }

    fn record_failure_locked(&self, entries: &mut HashMap<Key, Entry>, key: Key, now: Instant) {
        if !entries.contains_key(&key) && entries.len() >= self.max_clients {
            self.evict(entries, now);
        }
        let failures = &mut entries.entry(key).or_default().failures;
        failures.push_back(now);
        while failures.len() > self.max_failures {
            failures.pop_front();
        }
    }

    fn evict(&self, entries: &mut HashMap<Key, Entry>, now: Instant) {
        let last = |entry: &Entry| entry.failures.back().copied();
        entries.retain(|_, entry| {
            entry.in_flight > 0
                || last(entry).is_some_and(|t| now.saturating_duration_since(t) < self.window)
        });
        if entries.len() >= self.max_clients {
            let oldest = entries
                .iter()
                .filter(|(_, entry)| entry.in_flight == 0)
                .min_by_key(|(_, entry)| last(entry))
                .map(|(key, _)| *key);
            if let Some(key) = oldest {
                entries.remove(&key);
            }
        }
    }
}

#[cfg(test)]
impl FailureLimiter {
    fn check_at(&self, key: Key, now: Instant) -> Result<(), Duration> {
        self.shared.check_at(key, now)
    }

    fn record_failure_at(&self, key: Key, now: Instant) {
        self.shared.record_failure_at(key, now);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Entry>> {
        self.shared.lock()
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

    fn reserve(l: &FailureLimiter, s: &str, now: Instant) -> Result<Attempt, Refused> {
        l.reserve_at(s.parse().unwrap(), at(l, s), now)
    }

    #[test]
    fn attempts_in_flight_count_toward_the_limit_until_settled() {
        let l = limiter(3, 60, 100);
        let t0 = Instant::now();
        let ip = "192.0.2.1";
        let a = reserve(&l, ip, t0).unwrap();
        let b = reserve(&l, ip, t0).unwrap();
        let c = reserve(&l, ip, t0).unwrap();
        // Three passwords being checked: a fourth waits, it is not checked.
        assert_eq!(reserve(&l, ip, t0).unwrap_err(), Refused::Busy);
        // Another user or address is unaffected.
        assert!(l
            .reserve_at(ip.parse().unwrap(), l.key(ip.parse().unwrap(), "v"), t0)
            .is_ok());
        assert!(reserve(&l, "192.0.2.2", t0).is_ok());
        // A dropped attempt (its client hung up, its task never ran) frees
        // its place and is no failure.
        drop(a);
        assert!(l.check_at(at(&l, ip), t0).is_ok());
        let d = reserve(&l, ip, t0).unwrap();
        assert_eq!(reserve(&l, ip, t0).unwrap_err(), Refused::Busy);
        // A success frees its place too.
        b.succeeded();
        let e = reserve(&l, ip, t0).unwrap();
        // Failures turn into recorded failures: three, so blocked (not busy)
        // for the window, even though nothing is in flight.
        c.failed_at(t0);
        d.failed_at(t0 + SEC);
        assert_eq!(reserve(&l, ip, t0 + SEC).unwrap_err(), Refused::Busy);
        e.failed_at(t0 + 2 * SEC);
        assert_eq!(
            reserve(&l, ip, t0 + 2 * SEC).unwrap_err(),
            Refused::Blocked {
                retry_after: 58 * SEC
            }
        );
        assert_eq!(l.lock()[&at(&l, ip)].in_flight, 0);
        // After the window the pair may try again.
        assert!(reserve(&l, ip, t0 + 60 * SEC).is_ok());
    }

    #[test]
    fn a_pair_whose_attempts_all_succeeded_is_forgotten() {
        let l = limiter(3, 60, 100);
        let t0 = Instant::now();
        reserve(&l, "192.0.2.1", t0).unwrap().succeeded();
        drop(reserve(&l, "192.0.2.1", t0).unwrap());
        assert!(l.is_empty());
    }

    #[test]
    fn a_pair_with_an_attempt_in_flight_is_never_evicted() {
        let l = limiter(2, 60, 2);
        let t0 = Instant::now();
        let pending = reserve(&l, "192.0.2.1", t0).unwrap();
        for i in 2..50u8 {
            l.record_failure_at(at(&l, &format!("192.0.2.{i}")), t0 + SEC * u32::from(i));
        }
        assert!(l.lock().contains_key(&at(&l, "192.0.2.1")));
        pending.failed_at(t0 + 60 * SEC);
        assert_eq!(l.lock()[&at(&l, "192.0.2.1")].failures.len(), 1);
    }

    /// However the guesses are timed, at most `max_failures` passwords are
    /// checked: 64 threads race to reserve, "check" and fail.
    #[test]
    fn parallel_guesses_get_at_most_max_failures_attempts() {
        let l = Arc::new(limiter(5, 60, 100));
        let barrier = Arc::new(std::sync::Barrier::new(64));
        let threads: Vec<_> = (0..64)
            .map(|_| {
                let (l, barrier) = (Arc::clone(&l), Arc::clone(&barrier));
                std::thread::spawn(move || {
                    barrier.wait();
                    let mut checked = 0;
                    // Busy clients retry, as the http layer does on a release.
                    loop {
                        match l.reserve("192.0.2.1".parse().unwrap(), "u") {
                            Ok(attempt) => {
                                checked += 1;
                                std::thread::sleep(Duration::from_millis(2));
                                attempt.failed();
                            }
                            Err(Refused::Busy) => std::thread::yield_now(),
                            Err(Refused::Blocked { .. }) => return checked,
                        }
                    }
                })
            })
            .collect();
        let checked: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(checked, 5);
    }

    #[tokio::test]
    async fn settling_or_dropping_an_attempt_wakes_waiters() {
        use futures::FutureExt;
        let l = limiter(1, 60, 100);
        let attempt = l.reserve("192.0.2.1".parse().unwrap(), "u").unwrap();
        let released = l.released();
        assert_eq!(
            l.reserve("192.0.2.1".parse().unwrap(), "u").unwrap_err(),
            Refused::Busy
        );
        let mut released = Box::pin(released);
        assert!(released.as_mut().now_or_never().is_none());
        let released = l.released();
        drop(attempt);
        assert!(released.now_or_never().is_some());
        assert!(l.reserve("192.0.2.1".parse().unwrap(), "u").is_ok());
    }
}
