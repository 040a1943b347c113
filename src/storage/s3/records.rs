//! Upload session records this replica wrote or read, each with the ETag the
//! store gave it, so that the next read of one is a conditional GET
//! (`If-None-Match`): a `304` without a body when no other replica wrote it
//! meanwhile, which is nearly always, since a client sends a session's
//! chunks one after another and mostly through one connection.
//!
//! Why not a plain GET: a record grows with its upload's parts (an ETag and
//! a size each) past the size Garage keeps inline in its metadata (3 KiB),
//! and Garage then sends the body in a write of its own after the headers,
//! which Nagle's algorithm holds until the client acknowledges the headers,
//! and the client delays that acknowledgement (40 ms on Linux): every chunk
//! of a large chunked push waited 40 ms for its own session record. A `304`
//! is headers only. The copy here is never trusted without the store's
//! word: another replica's write changes the ETag (the body comes with the
//! answer), a removal answers 404.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use bytes::Bytes;

/// Records kept at most: a few KiB each.
const CAPACITY: usize = 1024;

#[derive(Default)]
pub(super) struct SessionRecords {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    by_key: HashMap<String, Record>,
    /// Keys in the order they were first kept, for eviction (a key may
    /// appear after it was dropped; eviction skips those).
    order: VecDeque<String>,
}

#[derive(Clone)]
pub(super) struct Record {
    pub(super) etag: String,
    pub(super) body: Bytes,
}

impl SessionRecords {
    /// The copy of `key` and its ETag, to revalidate.
    pub(super) fn get(&self, key: &str) -> Option<Record> {
        self.lock().by_key.get(key).cloned()
    }

    /// `body` is what the store holds at `key`, under `etag`.
    pub(super) fn keep(&self, key: &str, etag: Option<String>, body: Bytes) {
        let mut inner = self.lock();
        let Some(etag) = etag else {
            inner.by_key.remove(key);
            return;
        };
        if inner
            .by_key
            .insert(key.to_owned(), Record { etag, body })
            .is_none()
        {
            inner.order.push_back(key.to_owned());
        }
        while inner.by_key.len() > CAPACITY {
            let Some(oldest) = inner.order.pop_front() else {
                break;
            };
            inner.by_key.remove(&oldest);
        }
        if inner.order.len() > 2 * CAPACITY {
            let Inner { by_key, order } = &mut *inner;
            order.retain(|key| by_key.contains_key(key));
        }
    }

    pub(super) fn forget(&self, key: &str) {
        self.lock().by_key.remove(key);
    }

    /// Forgets every record under `prefix` (which ends with `/`).
    pub(super) fn forget_under(&self, prefix: &str) {
        self.lock().by_key.retain(|key, _| !key.starts_with(prefix));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_records_go_first_and_a_forgotten_one_is_gone() {
        let records = SessionRecords::default();
        for n in 0..CAPACITY + 10 {
            records.keep(&format!("r/{n}"), Some(format!("e{n}")), Bytes::new());
        }
        assert!(records.get("r/9").is_none());
        assert_eq!(records.get("r/10").unwrap().etag, "e10");
        records.keep("r/10", Some("again".into()), Bytes::from_static(b"x"));
        assert_eq!(records.get("r/10").unwrap().body, Bytes::from_static(b"x"));
        records.forget_under("r/");
        assert!(records.get("r/10").is_none());
        records.keep("s/1", Some("e".into()), Bytes::new());
        records.keep("s/1", None, Bytes::new());
        assert!(
            records.get("s/1").is_none(),
            "a write without an ETag drops the copy"
        );
    }
}
