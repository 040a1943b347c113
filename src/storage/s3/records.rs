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

/// Records kept at most: a few KiB each, a record growing by ~80 bytes per
/// part of its upload.
const CAPACITY: usize = 1024;

/// Bytes of records kept at most (a record of a 10,000-part upload is
/// ~800 KiB).
const CAPACITY_BYTES: usize = 16 * 1024 * 1024;

#[derive(Default)]
pub(super) struct SessionRecords {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    by_key: HashMap<String, Record>,
    /// The bodies' bytes in `by_key`.
    bytes: usize,
    /// Keys in the order they were first kept, for eviction (a key may
    /// appear after it was dropped; eviction skips those).
    order: VecDeque<String>,
}

impl Inner {
    fn remove(&mut self, key: &str) {
        if let Some(old) = self.by_key.remove(key) {
            self.bytes -= old.body.len();
        }
    }
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
            inner.remove(key);
            return;
        };
        inner.bytes += body.len();
        match inner.by_key.insert(key.to_owned(), Record { etag, body }) {
            Some(old) => inner.bytes -= old.body.len(),
            None => inner.order.push_back(key.to_owned()),
        }
        while inner.by_key.len() > CAPACITY || inner.bytes > CAPACITY_BYTES {
            let Some(oldest) = inner.order.pop_front() else {
                break;
            };
            inner.remove(&oldest);
        }
        if inner.order.len() > 2 * CAPACITY {
            let Inner { by_key, order, .. } = &mut *inner;
            order.retain(|key| by_key.contains_key(key));
        }
    }

    pub(super) fn forget(&self, key: &str) {
        self.lock().remove(key);
    }

    /// Forgets every record under `prefix` (which ends with `/`).
    pub(super) fn forget_under(&self, prefix: &str) {
        let mut inner = self.lock();
        let Inner { by_key, bytes, .. } = &mut *inner;
        by_key.retain(|key, record| {
            let keep = !key.starts_with(prefix);
            if !keep {
                *bytes -= record.body.len();
            }
            keep
        });
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
        assert_eq!(records.lock().bytes, 0, "every byte let go");
    }

    #[test]
    fn records_are_let_go_oldest_first_past_the_byte_bound() {
        let records = SessionRecords::default();
        let body = Bytes::from(vec![0u8; CAPACITY_BYTES / 4]);
        for n in 0..6 {
            records.keep(&format!("r/{n}"), Some(format!("e{n}")), body.clone());
        }
        assert!(records.get("r/0").is_none() && records.get("r/1").is_none());
        assert!((2..6).all(|n| records.get(&format!("r/{n}")).is_some()));
        assert_eq!(records.lock().bytes, CAPACITY_BYTES);
        records.forget("r/2");
        records.forget_under("r/");
        assert_eq!(records.lock().bytes, 0);
    }
}
