//! Offline and background work on a registry's store, apart from the
//! request path: the lifecycle rules ([`rules`]), tag retention, garbage
//! collection, upload expiry, the scheduled task that runs them inside the
//! server ([`task`]), and the integrity check ([`fsck`]).
//!
//! All of it works over the [`Storage`](crate::storage::Storage) trait, never
//! a backend, so it runs on any store; what only some backends have (a
//! filesystem's leftover temporary files) is asked for as an optional
//! capability. It walks the store a listing page at a time
//! (`storage::Listing`, `registry::RepositoryWalk`).
//!
//! Retention, collection and expiry run while clients push and pull; their
//! safety rests on the touch-before-use protocol, whose write-path side is
//! `registry/touch.rs` (argument: `docs/design/gc.md`). They return reports
//! as data; the CLI (`src/main.rs`) prints them and picks the exit status.

mod expiry;
pub mod fsck;
mod gc;
mod inventory;
mod mirror;
mod retention;
pub mod rules;
pub mod task;

pub use expiry::ExpiryReport;
pub use gc::{GcOptions, GcReport};
pub use inventory::Inventory;
pub use mirror::{EvictionReport, MirrorEviction};
pub use retention::{RemovedTag, RetentionReport};
pub use rules::{LifecycleConfig, RetentionRule, TagPattern, TagRule, UntaggedManifests};
pub use task::{LifecycleReport, LifecycleTask};

use crate::oci::{RepositoryName, Result, Tag};
use crate::registry::{storage_error, RepositoryWalk};
use crate::storage::{layout, Listing};

/// The next repository of a walk over the store: a directory under
/// `repositories/` with a registry folder (`_manifests`, `_layers`, …),
/// whether or not it has a manifest yet. Names are validated; others are
/// reported and skipped.
pub(super) async fn next_repository(
    walk: &mut RepositoryWalk<'_>,
    problems: &mut Vec<String>,
) -> Result<Option<RepositoryName>> {
    Ok(next_repository_dir(walk, problems)
        .await?
        .map(|(name, _)| name))
}

/// [`next_repository`] with the repository's registry folders (`_uploads`,
/// …) as the walk listed them: what is not among them need not be listed.
pub(super) async fn next_repository_dir(
    walk: &mut RepositoryWalk<'_>,
    problems: &mut Vec<String>,
) -> Result<Option<(RepositoryName, Vec<String>)>> {
    while let Some(dir) = walk.next().await.map_err(storage_error)? {
        if !dir.is_repository() {
            continue;
        }
        match RepositoryName::parse(&dir.path) {
            Some(name) => return Ok(Some((name, dir.children))),
            None => problems.push(format!(
                "{}/{}: not a valid repository name, skipped",
                layout::REPOSITORIES,
                dir.path
            )),
        }
    }
    Ok(None)
}

/// The next tag of repository `name` from a listing of its tags directory.
/// Tags are validated; a directory that is not one is reported and skipped.
pub(super) async fn next_tag(
    tags: &mut Listing<'_>,
    name: &RepositoryName,
    problems: &mut Vec<String>,
) -> Result<Option<Tag>> {
    while let Some(tag) = tags.next().await.map_err(storage_error)? {
        match Tag::parse(&tag) {
            Some(tag) => return Ok(Some(tag)),
            None => problems.push(format!("{name}: tag directory {tag:?} is not a valid tag")),
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;
    use crate::oci::{Algorithm, Digest, Reference, RepositoryName, Tag};
    use crate::registry::cache::CacheConfig;
    use crate::registry::{Limits, Registry};
    use crate::storage::memory::MemoryStorage;
    use crate::storage::{layout, RequestBody, Storage};

    fn body(content: &[u8]) -> RequestBody {
        let content = Bytes::copy_from_slice(content);
        RequestBody {
            length: Some(content.len() as u64),
            stream: Box::pin(futures::stream::once(async move { Ok(content) })),
        }
    }

    /// What an object store gives: the core of the trait and no capability.
    /// The request path and the whole lifecycle must work on it.
    #[tokio::test]
    async fn the_registry_and_its_lifecycle_run_on_a_store_with_only_the_core() {
        let storage = Arc::new(MemoryStorage::default());
        assert!(storage.local_files().is_none() && storage.leftovers().is_none());
        let lifecycle = LifecycleConfig {
            untagged_manifests: UntaggedManifests::Delete,
            history_keep: 0,
            ..LifecycleConfig::default()
        };
        let registry = Registry::new(
            storage.clone(),
            Limits::default(),
            &CacheConfig::default(),
            lifecycle,
        );
        let name = RepositoryName::parse("core/app").unwrap();

        // A layer pushed in two chunks, a config in one request, an image.
        let layer = vec![7u8; 300 * 1024];
        let layer_digest = Digest::of(Algorithm::Sha256, &layer);
        let session = registry
            .start_upload(&name, Algorithm::Sha256)
            .await
            .unwrap();
        let session = registry
            .append_chunk(&name, &session.id, Some(0), body(&layer[..1000]))
            .await
            .unwrap();
        assert_eq!(session.offset, 1000);
        registry
            .finish_upload(
                &name,
                &session.id,
                &layer_digest,
                Some(1000),
                Some(body(&layer[1000..])),
            )
            .await
            .unwrap();
        let config = br#"{"architecture":"amd64","os":"linux"}"#;
        let config_digest = Digest::of(Algorithm::Sha256, config);
        registry
            .upload_whole(&name, &config_digest, body(config))
            .await
            .unwrap();
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer_digest}","size":{}}}]}}"#,
            config.len(),
            layer.len()
        );
        let tag = Tag::parse("v1").unwrap();
        registry
            .put_manifest(
                &name,
                &Reference::Tag(tag.clone()),
                None,
                Bytes::from(manifest),
                &[],
            )
            .await
            .unwrap();
        // A blob nothing references.
        let stray = b"nothing names me";
        let stray_digest = Digest::of(Algorithm::Sha256, stray);
        registry
            .upload_whole(&name, &stray_digest, body(stray))
            .await
            .unwrap();

        assert_eq!(
            registry.list_tags(&name, None, None).await.unwrap().entries,
            ["v1"]
        );
        let blob = registry.open_blob(&name, &layer_digest).await.unwrap();
        assert!(registry.blob_file(&blob).await.unwrap().is_none());

        // Everything was written before the cutoff of a run without grace.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let report = registry
            .run_lifecycle(&GcOptions {
                grace_period: Some(Duration::ZERO),
                ..GcOptions::default()
            })
            .await
            .unwrap();
        assert_eq!(report.gc.repositories, 1);
        assert_eq!(report.gc.blobs_removed, 1, "{report:?}");
        assert_eq!(report.gc.layer_links_removed, 1, "{report:?}");
        assert!(report.gc.problems.is_empty(), "{report:?}");
        assert!(!storage.keys().contains(&layout::blob_data(&stray_digest)));
        assert!(storage.keys().contains(&layout::blob_data(&layer_digest)));

        let mut findings = Vec::new();
        let checked = fsck::check(storage.as_ref(), &fsck::Options::default(), &mut |f| {
            findings.push(f.to_string())
        })
        .await
        .unwrap();
        assert!(checked.is_clean(), "{findings:?}");
        assert_eq!(checked.repositories, 1);
        assert_eq!(checked.blobs_checked, 3, "{findings:?}");
        assert_eq!(checked.leftovers, 0, "{findings:?}");
    }
}
