//! Per-key async locks, so that two requests on the same upload session run
//! one after the other instead of interleaving their writes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

#[derive(Default)]
pub struct KeyedLocks {
    locks: Mutex<HashMap<String, Arc<AsyncMutex<()>>>>,
}

/// Held while the key is locked; releasing the last guard forgets the key.
pub struct KeyGuard<'a> {
    owner: &'a KeyedLocks,
    key: String,
    guard: Option<OwnedMutexGuard<()>>,
}

impl KeyedLocks {
    pub async fn lock(&self, key: &str) -> KeyGuard<'_> {
        let mutex = {
            let mut locks = self.locks.lock().expect("lock table poisoned");
            locks.entry(key.to_owned()).or_default().clone()
        };
        let guard = mutex.lock_owned().await;
        KeyGuard {
            owner: self,
            key: key.to_owned(),
            guard: Some(guard),
        }
    }
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut locks = self.owner.locks.lock().expect("lock table poisoned");
        // Only the table holds it now: nobody is waiting, forget the key.
        if locks
            .get(&self.key)
            .is_some_and(|m| Arc::strong_count(m) == 1)
        {
            locks.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn second_holder_waits_and_table_empties() {
        let locks = Arc::new(KeyedLocks::default());
        let first = locks.lock("u").await;
        let l2 = locks.clone();
        let waiter = tokio::spawn(async move {
            let _g = l2.lock("u").await;
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(first);
        waiter.await.unwrap();
        assert!(locks.locks.lock().unwrap().is_empty());
    }
}
