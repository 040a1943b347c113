//! Each upstream's breaker (docs/design/mirror.md §7): after a failure
//! (unreachable, too slow, a 5xx, a 429) the mirror stops asking that
//! upstream for a while, so that a miss fails at once instead of waiting
//! for the same failure again, and cached tags are served without a wait.
//! A 429's `Retry-After` sets the pause (at most 10 minutes; 60 s when it
//! names none); other failures pause 1 s, doubling to 30 s while they go
//! on. When the pause is over, requests go upstream again; the first
//! success closes the breaker. 404, 401 and 403 are answers, not failures.

use std::sync::Mutex;
use std::time::{Duration, Instant};

const FIRST_PAUSE: Duration = Duration::from_secs(1);
const LONGEST_PAUSE: Duration = Duration::from_secs(30);
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(60);
const LONGEST_RETRY_AFTER: Duration = Duration::from_secs(600);

#[derive(Default)]
pub(super) struct Breaker {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Not asked again before this.
    open_until: Option<Instant>,
    /// The last pause after a failure that was not a 429.
    pause: Duration,
    /// The upstream's own 429 opened it.
    too_many_requests: bool,
}

/// The breaker is open: how long it stays so, and whether a 429 opened it.
pub(super) struct Open {
    pub for_: Duration,
    pub too_many_requests: bool,
}

impl Breaker {
    /// `Some` while requests must not go upstream.
    pub(super) fn open(&self) -> Option<Open> {
        let state = self.state.lock().expect("lock");
        let until = state.open_until?;
        let left = until.checked_duration_since(Instant::now())?;
        Some(Open {
            for_: left,
            too_many_requests: state.too_many_requests,
        })
    }

    /// A request failed: opens the breaker (for `retry_after` after a 429).
    pub(super) fn failed(&self, too_many_requests: bool, retry_after: Option<Duration>) {
        let mut state = self.state.lock().expect("lock");
        let pause = if too_many_requests {
            retry_after
                .unwrap_or(DEFAULT_RETRY_AFTER)
                .min(LONGEST_RETRY_AFTER)
        } else {
            state.pause = (state.pause * 2).clamp(FIRST_PAUSE, LONGEST_PAUSE);
            state.pause
        };
        state.open_until = Some(Instant::now() + pause);
        state.too_many_requests = too_many_requests;
    }

    /// The upstream answered: closes the breaker.
    pub(super) fn answered(&self) {
        let mut state = self.state.lock().expect("lock");
        *state = State::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_pause_longer_each_time_and_an_answer_closes_it() {
        let breaker = Breaker::default();
        assert!(breaker.open().is_none());
        breaker.failed(false, None);
        let open = breaker.open().expect("open after a failure");
        assert!(open.for_ <= FIRST_PAUSE && !open.too_many_requests);
        breaker.failed(false, None);
        assert!(breaker.open().unwrap().for_ > FIRST_PAUSE);
        for _ in 0..10 {
            breaker.failed(false, None);
        }
        assert!(breaker.open().unwrap().for_ <= LONGEST_PAUSE);
        breaker.answered();
        assert!(breaker.open().is_none());
        // A 429 pauses as long as the upstream said, within bounds.
        breaker.failed(true, Some(Duration::from_secs(120)));
        let open = breaker.open().unwrap();
        assert!(open.too_many_requests && open.for_ > Duration::from_secs(100));
        breaker.failed(true, Some(Duration::from_secs(86_400)));
        assert!(breaker.open().unwrap().for_ <= LONGEST_RETRY_AFTER);
        breaker.failed(true, None);
        assert!(breaker.open().unwrap().for_ <= DEFAULT_RETRY_AFTER);
    }
}
