//! Reading and writing a store by key through the `Storage` trait, the same
//! on every backend: what tests use to look at what the registry stored, to
//! damage it, or to write behind the servers' backs (as another process or
//! an offline tool would).

use std::collections::BTreeMap;

use berth::storage::{Listing, ObjectInfo, Storage, WriteMode};
use bytes::Bytes;

/// `prefix/name`, or `name` at the root.
fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_owned()
    } else {
        format!("{prefix}/{name}")
    }
}

/// The names of `prefix`'s immediate children, sorted.
pub async fn children(storage: &dyn Storage, prefix: &str) -> Vec<String> {
    Listing::new(storage, prefix)
        .collect()
        .await
        .unwrap_or_else(|e| panic!("listing {prefix}: {e}"))
}

/// Every object under `prefix` (its key and what stat says), walking the
/// listing down: a child that stats is an object, any other a prefix.
pub async fn objects(storage: &dyn Storage, prefix: &str) -> BTreeMap<String, ObjectInfo> {
    let mut found = BTreeMap::new();
    let mut pending = vec![prefix.to_owned()];
    while let Some(dir) = pending.pop() {
        for name in children(storage, &dir).await {
            let key = join(&dir, &name);
            match storage.stat(&key).await.expect("stat") {
                Some(info) => {
                    found.insert(key, info);
                }
                None => pending.push(key),
            }
        }
    }
    found
}

/// Copies every object under `from_prefix` of `from` to the same place
/// under `to_prefix` of `to`, as an offline tool filling a store would.
pub async fn copy_tree(from: &dyn Storage, from_prefix: &str, to: &dyn Storage, to_prefix: &str) {
    for key in objects(from, from_prefix).await.into_keys() {
        let body = read(from, &key).await.expect("listed, so present");
        let rest = key.strip_prefix(from_prefix).unwrap();
        let target = format!("{to_prefix}{rest}");
        to.put(&target, Bytes::from(body), WriteMode::Overwrite)
            .await
            .unwrap_or_else(|e| panic!("writing {target}: {e}"));
    }
}

/// A whole object, or `None` when it does not exist.
pub async fn read(storage: &dyn Storage, key: &str) -> Option<Vec<u8>> {
    storage
        .get(key)
        .await
        .unwrap_or_else(|e| panic!("reading {key}: {e}"))
        .map(|b| b.to_vec())
}

/// Writes `body` at `key`, replacing what is there.
pub async fn write(storage: &dyn Storage, key: &str, body: &[u8]) {
    storage
        .put(key, Bytes::copy_from_slice(body), WriteMode::Overwrite)
        .await
        .unwrap_or_else(|e| panic!("writing {key}: {e}"));
}

/// Whether an object exists at `key`.
pub async fn exists(storage: &dyn Storage, key: &str) -> bool {
    storage
        .size(key)
        .await
        .unwrap_or_else(|e| panic!("stat of {key}: {e}"))
        .is_some()
}

/// Deletes the object at `key`, which must exist.
pub async fn remove(storage: &dyn Storage, key: &str) {
    assert!(
        storage
            .delete(key)
            .await
            .unwrap_or_else(|e| panic!("deleting {key}: {e}")),
        "{key} was not there to delete"
    );
}

/// Replaces the object at `key` with its bytes changed by `damage`.
pub async fn damage(storage: &dyn Storage, key: &str, damage: impl FnOnce(&mut Vec<u8>)) {
    let mut body = read(storage, key)
        .await
        .unwrap_or_else(|| panic!("{key} is not there to damage"));
    damage(&mut body);
    write(storage, key, &body).await;
}

/// The key of a sha256 blob's content (Distribution's layout).
pub fn blob_key(digest: &str) -> String {
    let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
    format!("blobs/sha256/{}/{hex}/data", &hex[..2])
}
