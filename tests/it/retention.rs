//! Tag retention (`[[lifecycle.retention]]`), alone and as the first step of
//! a lifecycle run.

use std::time::Duration;

use crate::lifecycle_support::{
    age, aged_grace, collector, get_bytes, stored_blobs, uncached, Image,
};
use crate::support::{store, TestRegistry};
use berth::oci::{RepositoryName, Tag};
use berth::registry::{GcOptions, LifecycleConfig};
use reqwest::StatusCode;

fn lifecycle(toml: &str) -> LifecycleConfig {
    toml::from_str(toml).unwrap()
}

fn removed(report: &berth::registry::RetentionReport) -> Vec<String> {
    let mut tags: Vec<String> = report
        .removed
        .iter()
        .map(|r| format!("{}:{}", r.repository, r.tag))
        .collect();
    tags.sort();
    tags
}

/// Pushes one small image per tag, in this order (so later tags are newer).
async fn push_images_tagged(registry: &TestRegistry, name: &str, tags: &[&str]) {
    for tag in tags {
        Image::new(tag, &[format!("layer of {tag}").as_bytes()])
            .push(registry, name, tag)
            .await;
    }
}

#[tokio::test]
async fn keep_newest_keeps_the_most_recently_changed_tags_and_drops_the_others_history() {
    let registry = uncached().await;
    push_images_tagged(&registry, "app", &["dev-1", "dev-2", "dev-3", "latest"]).await;
    let rules = lifecycle(
        r#"
        [[retention]]
        repositories = "*"
        tags = "dev-.*"
        keep_newest = 2
        "#,
    );
    let retention = collector(&registry, rules).await;
    let report = retention.apply_retention(false).await.unwrap();
    assert_eq!(removed(&report), ["app:dev-1"]);
    // The entry of its push; its removal leaves no history behind.
    assert_eq!(report.history_entries_removed, 1);
    assert_eq!(registry.tags("app").await, ["dev-2", "dev-3", "latest"]);
    let history = retention
        .tag_history(
            &RepositoryName::parse("app").unwrap(),
            &Tag::parse("dev-1").unwrap(),
        )
        .await
        .unwrap();
    assert!(history.is_empty(), "{history:?}");
}

#[tokio::test]
async fn max_age_removes_tags_older_than_it_beyond_keep_newest() {
    let registry = uncached().await;
    push_images_tagged(&registry, "app", &["nightly-1", "nightly-2", "nightly-3"]).await;
    age(&registry, Duration::from_secs(3 * 3600)).await;
    push_images_tagged(&registry, "app", &["nightly-4"]).await;
    let report = collector(
        &registry,
        lifecycle(
            r#"
            [[retention]]
            repositories = "app"
            tags = "nightly-.*"
            max_age = "1h"
            "#,
        ),
    )
    .await
    .apply_retention(false)
    .await
    .unwrap();
    assert_eq!(
        removed(&report),
        ["app:nightly-1", "app:nightly-2", "app:nightly-3"]
    );
    assert_eq!(registry.tags("app").await, ["nightly-4"]);

    // keep_newest keeps old tags too, when they are among the newest.
    push_images_tagged(&registry, "other", &["n-1", "n-2", "n-3"]).await;
    age(&registry, Duration::from_secs(3 * 3600)).await;
    let report = collector(
        &registry,
        lifecycle(
            r#"
            [[retention]]
            repositories = "other"
            tags = "n-.*"
            keep_newest = 2
            max_age = "1h"
            "#,
        ),
    )
    .await
    .apply_retention(false)
    .await
    .unwrap();
    assert_eq!(removed(&report), ["other:n-1"]);
    assert_eq!(registry.tags("other").await, ["n-2", "n-3"]);
}

#[tokio::test]
async fn the_first_matching_rule_decides() {
    let registry = uncached().await;
    push_images_tagged(&registry, "app", &["v1", "v2", "old", "newer"]).await;
    let report = collector(
        &registry,
        lifecycle(
            r#"
            [[retention]]
            repositories = "*"
            tags = "v.*"
            [[retention]]
            repositories = "*"
            tags = ".*"
            keep_newest = 1
            "#,
        ),
    )
    .await
    .apply_retention(false)
    .await
    .unwrap();
    // v1 and v2 match the first rule (kept forever), not the catch-all.
    assert_eq!(removed(&report), ["app:old"]);
    assert_eq!(registry.tags("app").await, ["newer", "v1", "v2"]);
}

#[tokio::test]
async fn immutable_tags_are_never_removed() {
    let registry = uncached().await;
    push_images_tagged(&registry, "app", &["prod-1", "dev"]).await;
    let report = collector(
        &registry,
        lifecycle(
            r#"
            [[immutable_tags]]
            repositories = "*"
            tags = "prod-.*"
            [[retention]]
            repositories = "*"
            tags = ".*"
            keep_newest = 0
            "#,
        ),
    )
    .await
    .apply_retention(false)
    .await
    .unwrap();
    assert_eq!(removed(&report), ["app:dev"]);
    assert_eq!(registry.tags("app").await, ["prod-1"]);
}

#[tokio::test]
async fn tags_without_history_age_by_their_link() {
    let registry = uncached().await;
    push_images_tagged(&registry, "app", &["from-distribution"]).await;
    age(&registry, Duration::from_secs(3 * 3600)).await;
    push_images_tagged(&registry, "app", &["also-from-distribution"]).await;
    // Data written by Distribution has no Berth history.
    let storage = registry.storage().await;
    storage.delete_all("repositories/app/_berth").await.unwrap();
    assert!(store::objects(storage.as_ref(), "repositories/app/_berth")
        .await
        .is_empty());
    let max_age = aged_grace(&registry, Duration::from_secs(3600));
    let report = collector(
        &registry,
        lifecycle(&format!(
            r#"
            [[retention]]
            repositories = "*"
            tags = ".*"
            max_age = "{}ms"
            "#,
            max_age.as_millis()
        )),
    )
    .await
    .apply_retention(false)
    .await
    .unwrap();
    assert_eq!(removed(&report), ["app:from-distribution"]);
    assert_eq!(registry.tags("app").await, ["also-from-distribution"]);
}

#[tokio::test]
async fn a_dry_run_reports_what_retention_and_collection_would_do_and_a_run_does_it() {
    let registry = uncached().await;
    push_images_tagged(&registry, "app", &["dev-1", "dev-2"]).await;
    let gone = Image::new("dev-1", &[b"layer of dev-1"]);
    let stays = Image::new("dev-2", &[b"layer of dev-2"]);
    age(&registry, Duration::from_secs(2 * 3600)).await;
    let rules = lifecycle(
        r#"
        untagged_manifests = "delete"
        [[retention]]
        repositories = "*"
        tags = "dev-.*"
        keep_newest = 1
        "#,
    );
    let gc = collector(&registry, rules).await;
    let blobs_before = stored_blobs(&registry).await;
    let dry = gc
        .run_lifecycle(&GcOptions {
            dry_run: true,
            ..GcOptions::default()
        })
        .await
        .unwrap();
    assert_eq!(removed(&dry.retention), ["app:dev-1"]);
    assert_eq!(dry.gc.manifests_removed, 1, "the removed tag's image");
    assert_eq!(dry.gc.blobs_removed, 3);
    assert_eq!(registry.tags("app").await, ["dev-1", "dev-2"]);
    assert_eq!(stored_blobs(&registry).await, blobs_before);

    let run = gc.run_lifecycle(&GcOptions::default()).await.unwrap();
    assert_eq!(removed(&run.retention), ["app:dev-1"]);
    assert_eq!(run.gc.manifests_removed, 1);
    assert_eq!(run.gc.blobs_removed, 3);
    assert_eq!(run.gc.bytes_removed, dry.gc.bytes_removed);
    assert_eq!(registry.tags("app").await, ["dev-2"]);
    stays.assert_intact(&registry, "app").await;
    let manifest = format!("/v2/app/manifests/{}", gone.digest);
    assert_eq!(
        get_bytes(&registry, &manifest).await.0,
        StatusCode::NOT_FOUND
    );
    let summary = run.to_string();
    assert!(
        summary.contains("tags removed by retention: 1\n  app:dev-1 (sha256:"),
        "{summary}"
    );
}
