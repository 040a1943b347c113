//! What the store holds, counted for the `berth_storage_*` gauges: blobs
//! and their bytes, repositories, and manifests (revision links). A walk of
//! the store, so never per scrape: the lifecycle task takes one soon after
//! the server starts (within 30 s), after each lifecycle run, and every
//! `[metrics] inventory_interval`. Between two, the gauges are the last count (changes
//! by this process or another replica show at the next).
//!
//! On an object store the blobs come from one listing of `blobs/` with
//! their sizes (a request per thousand objects); on a filesystem the walk
//! reads each blob's size from its directory entry's inode.

use crate::oci::{Algorithm, RepositoryName, Result};
use crate::registry::{digests_under, storage_error, Registry, RepositoryWalk};
use crate::storage::{layout, Listing, TreeListing};

/// One count of the store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Inventory {
    pub blobs: u64,
    pub blob_bytes: u64,
    pub repositories: u64,
    pub manifests: u64,
}

impl Registry {
    /// Counts the store and sets the `berth_storage_*` gauges to the count.
    #[tracing::instrument(level = "debug", name = "lifecycle.inventory", skip_all)]
    pub async fn take_inventory(&self) -> Result<Inventory> {
        let (blobs, blob_bytes) = self.count_blobs().await?;
        let mut inventory = Inventory {
            blobs,
            blob_bytes,
            ..Inventory::default()
        };
        let storage = self.storage.as_ref();
        let mut walk = RepositoryWalk::new(storage);
        while let Some(dir) = walk.next().await.map_err(storage_error)? {
            let name = match RepositoryName::parse(&dir.path) {
                Some(name) if dir.is_repository() => name,
                _ => continue,
            };
            inventory.repositories += 1;
            let found = digests_under(storage, &layout::revisions_dir(&name))
                .await
                .map_err(storage_error)?;
            inventory.manifests += found.digests.len() as u64;
        }
        let stored = &self.metrics().stored;
        let set = |gauge: &std::sync::atomic::AtomicI64, value: u64| {
            gauge.store(
                i64::try_from(value).unwrap_or(i64::MAX),
                std::sync::atomic::Ordering::Relaxed,
            );
        };
        set(&stored.blobs, inventory.blobs);
        set(&stored.blob_bytes, inventory.blob_bytes);
        set(&stored.repositories, inventory.repositories);
        set(&stored.manifests, inventory.manifests);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        set(&stored.counted_at, now.as_secs());
        Ok(inventory)
    }

    /// The blobs' count and bytes: content objects (`…/<hex>/data`) only;
    /// a blob directory whose write never finished has none.
    async fn count_blobs(&self) -> Result<(u64, u64)> {
        let storage = self.storage.as_ref();
        let (mut count, mut bytes) = (0, 0);
        if let Some(mut objects) = TreeListing::start(storage, layout::BLOBS.to_owned(), None)
            .await
            .map_err(storage_error)?
        {
            while let Some((name, size)) = objects.next().await.map_err(storage_error)? {
                let parts: Vec<&str> = name.split('/').collect();
                if let [algorithm, shard, hex, "data"] = parts.as_slice() {
                    let digest = Algorithm::parse(algorithm)
                        .and_then(|a| layout::parse_blob_dir(a, shard, hex));
                    if digest.is_some() {
                        count += 1;
                        bytes += size;
                    }
                }
            }
            return Ok((count, bytes));
        }
        for algorithm in [Algorithm::Sha256, Algorithm::Sha512] {
            let mut shards = Listing::new(storage, layout::blobs_of(algorithm));
            while let Some(shard) = shards.next().await.map_err(storage_error)? {
                let shard_dir = layout::blob_shard(algorithm, &shard);
                let mut hexes = Listing::new(storage, shard_dir.as_str());
                while let Some(hex) = hexes.next().await.map_err(storage_error)? {
                    let Some(digest) = layout::parse_blob_dir(algorithm, &shard, &hex) else {
                        continue;
                    };
                    let size = storage
                        .size(&layout::blob_data(&digest))
                        .await
                        .map_err(storage_error)?;
                    if let Some(size) = size {
                        count += 1;
                        bytes += size;
                    }
                }
            }
        }
        Ok((count, bytes))
    }
}
