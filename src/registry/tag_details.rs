//! A repository's tags with what a person browsing them wants to see (the
//! web UI's tag list): each tag's digest, size, platforms and when it was
//! last pointed, sorted by name or newest first, filtered and paged on the
//! server, so a repository of 10,000 tags costs the browser one page.
//!
//! **Cost.** The tag names come from the tag list (cached when small).
//! Sorting by date needs every matching tag's date: its `current` link's
//! modification time, from one tree listing of the tags directory on an
//! object store (`LastModified`; a request per thousand objects, and the
//! directory holds a link per digest each tag has pointed at besides) or a
//! `stat` per tag on the filesystem (local, concurrent: 0.4 s for 10,001
//! tags in `tests/e2e/ui.sh`). That is paid on every newest-first page: a
//! cache of the dates, kept by the tag writes, is future work. Details are
//! read for the page's tags only: the manifest (cached) and, for an image,
//! its config (small and bounded) for the platform.

use std::cmp::Reverse;
use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use futures::{StreamExt, TryStreamExt};
use serde_json::Value;

use super::{paginate, storage_error, Registry};
use crate::oci::{Digest, Reference, RepositoryName, Result, Tag};
use crate::storage::{layout, TreeListing};

/// The largest page of details.
pub const MAX_TAG_DETAILS: usize = 100;
/// The largest image config read for its platform: configs are a few KiB.
/// Both the descriptor's size and the stored blob's must be within it (a
/// fetched manifest's descriptors are not checked against the blobs).
const MAX_CONFIG: u64 = 1024 * 1024;
/// Requests in flight for one page.
const CONCURRENCY: usize = 16;

/// How the tags are ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagOrder {
    /// By name, ascending (the spec's tag list order).
    Name,
    /// Most recently pointed first, then by name.
    Newest,
}

/// What a caller asks for.
#[derive(Debug, Clone)]
pub struct TagQuery {
    pub order: TagOrder,
    /// Only tags containing this text.
    pub filter: Option<String>,
    /// At most this many (1 to [`MAX_TAG_DETAILS`]).
    pub limit: usize,
    /// The `next` of the previous page.
    pub after: Option<String>,
}

/// One tag and what it points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagDetail {
    pub tag: String,
    /// `None` for a tag whose manifest is gone.
    pub digest: Option<Digest>,
    pub media_type: Option<String>,
    /// An image's manifest, config and layers, as pulled (compressed); `None`
    /// for an index (each platform has its own).
    pub size: Option<u64>,
    /// `os/architecture[/variant]`: an image's from its config, an index's
    /// from its entries (attestations left out).
    pub platforms: Vec<String>,
    /// When the tag was last pointed at its manifest.
    pub updated: Option<SystemTime>,
}

/// A page of details.
#[derive(Debug, Clone)]
pub struct TagDetailsPage {
    pub tags: Vec<TagDetail>,
    /// How many tags match, on every page.
    pub total: usize,
    /// What to ask for the next page with, when there is one.
    pub next: Option<String>,
}

/// A tag's place in the newest-first order: a cursor is written
/// `NANOS.TAG` (a tag never starts with `.`, and the nanoseconds have no
/// dot).
fn newest_key(tag: &str, updated: Option<SystemTime>) -> (Reverse<u128>, String) {
    let nanos = updated
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    (Reverse(nanos), tag.to_owned())
}

fn parse_newest_cursor(cursor: &str) -> Option<(Reverse<u128>, String)> {
    let (nanos, tag) = cursor.split_once('.')?;
    Some((Reverse(nanos.parse().ok()?), tag.to_owned()))
}

impl Registry {
    /// A page of `name`'s tags with their details, or `NAME_UNKNOWN`.
    pub async fn tag_details(
        &self,
        name: &RepositoryName,
        query: &TagQuery,
    ) -> Result<TagDetailsPage> {
        let limit = query.limit.clamp(1, MAX_TAG_DETAILS);
        let all = self.list_tags(name, None, None).await?.entries;
        let matching: Vec<String> = match &query.filter {
            Some(text) => all
                .into_iter()
                .filter(|t| t.contains(text.as_str()))
                .collect(),
            None => all,
        };
        let total = matching.len();
        let (page, more, dates) = match query.order {
            TagOrder::Name => {
                let page = paginate(&matching, Some(limit), query.after.as_deref());
                (page.entries, page.more, None)
            }
            TagOrder::Newest => {
                let dates = self.tag_dates(name, &matching).await?;
                let mut keyed: Vec<(Reverse<u128>, String)> = matching
                    .iter()
                    .map(|tag| newest_key(tag, dates.get(tag).copied()))
                    .collect();
                keyed.sort_unstable();
                let start = match query.after.as_deref().and_then(parse_newest_cursor) {
                    Some(cursor) => keyed.partition_point(|key| *key <= cursor),
                    None => 0,
                };
                let page: Vec<String> = keyed
                    .iter()
                    .skip(start)
                    .take(limit)
                    .map(|(_, tag)| tag.clone())
                    .collect();
                let more = start + page.len() < keyed.len();
                (page, more, Some(dates))
            }
        };
        let tags: Vec<TagDetail> = futures::stream::iter(page)
            .map(|tag| {
                let updated = dates.as_ref().map(|dates| dates.get(&tag).copied());
                async move { self.tag_detail(name, tag, updated).await }
            })
            .buffered(CONCURRENCY)
            .try_collect()
            .await?;
        let next = match (more, tags.last()) {
            (true, Some(last)) => Some(match query.order {
                TagOrder::Name => last.tag.clone(),
                TagOrder::Newest => {
                    let (Reverse(nanos), tag) = newest_key(&last.tag, last.updated);
                    format!("{nanos}.{tag}")
                }
            }),
            _ => None,
        };
        Ok(TagDetailsPage { tags, total, next })
    }

    /// When each of `tags` was last pointed (its `current` link's time).
    async fn tag_dates(
        &self,
        name: &RepositoryName,
        tags: &[String],
    ) -> Result<HashMap<String, SystemTime>> {
        let storage = self.storage.as_ref();
        let mut dates = HashMap::with_capacity(tags.len());
        if let Some(mut tree) = TreeListing::start(storage, layout::tags_dir(name), None)
            .await
            .map_err(storage_error)?
        {
            while let Some(object) = tree.next_object().await.map_err(storage_error)? {
                if let Some(tag) = object.name.strip_suffix("/current/link") {
                    dates.insert(tag.to_owned(), object.modified);
                }
            }
            return Ok(dates);
        }
        let parsed: Vec<Tag> = tags.iter().filter_map(|t| Tag::parse(t)).collect();
        let mut stats = futures::stream::iter(parsed)
            .map(|tag| async move {
                let info = storage.stat(&layout::tag_current_link(name, &tag)).await?;
                Ok::<_, std::io::Error>((tag, info))
            })
            .buffer_unordered(64);
        while let Some((tag, info)) = stats.try_next().await.map_err(storage_error)? {
            if let Some(info) = info {
                dates.insert(tag.as_str().to_owned(), info.modified);
            }
        }
        Ok(dates)
    }

    /// `tag`'s details; `updated` when the dates were read already.
    async fn tag_detail(
        &self,
        name: &RepositoryName,
        tag: String,
        updated: Option<Option<SystemTime>>,
    ) -> Result<TagDetail> {
        let mut detail = TagDetail {
            tag,
            digest: None,
            media_type: None,
            size: None,
            platforms: Vec::new(),
            updated: updated.flatten(),
        };
        let Some(parsed) = Tag::parse(&detail.tag) else {
            return Ok(detail);
        };
        if updated.is_none() {
            detail.updated = self
                .storage
                .stat(&layout::tag_current_link(name, &parsed))
                .await
                .map_err(storage_error)?
                .map(|info| info.modified);
        }
        // A tag whose manifest is gone is listed as it is: dangling.
        let Ok(manifest) = self.get_manifest(name, &Reference::Tag(parsed)).await else {
            return Ok(detail);
        };
        detail.digest = Some(manifest.digest);
        detail.media_type = Some(manifest.media_type);
        let Ok(body) = serde_json::from_slice::<Value>(&manifest.body) else {
            return Ok(detail);
        };
        if let Some(entries) = body["manifests"].as_array() {
            detail.platforms = entries
                .iter()
                .filter_map(|entry| platform_of(&entry["platform"]))
                .collect();
            return Ok(detail);
        }
        let size_of = |descriptor: &Value| descriptor["size"].as_u64().unwrap_or(0);
        // Sizes a fetched (mirrored) manifest declares are not checked:
        // added without overflow.
        let layers: u64 = body["layers"].as_array().map_or(0, |layers| {
            layers.iter().map(size_of).fold(0, u64::saturating_add)
        });
        let config = &body["config"];
        detail.size = Some(
            (manifest.body.len() as u64)
                .saturating_add(size_of(config))
                .saturating_add(layers),
        );
        let is_image_config = matches!(
            config["mediaType"].as_str(),
            Some(
                "application/vnd.oci.image.config.v1+json"
                    | "application/vnd.docker.container.image.v1+json"
            )
        );
        let config_digest = config["digest"]
            .as_str()
            .and_then(|d| d.parse::<Digest>().ok());
        if let (true, Some(digest)) = (
            is_image_config && size_of(config) <= MAX_CONFIG,
            config_digest,
        ) {
            // The stored blob's own size, not the descriptor's: a mirrored
            // manifest's config descriptor may name a layer of gigabytes.
            let key = layout::blob_data(&digest);
            let small = self
                .storage
                .size(&key)
                .await
                .map_err(storage_error)?
                .is_some_and(|size| size <= MAX_CONFIG);
            let read = match small {
                true => self.storage.get(&key).await.map_err(storage_error)?,
                false => None,
            };
            if let Some(config) = read.and_then(|b| serde_json::from_slice::<Value>(&b).ok()) {
                detail.platforms.extend(platform_of(&config));
            }
        }
        Ok(detail)
    }
}

/// `os/architecture[/variant]` of a platform object or an image config;
/// `None` without both, and for attestations (`unknown/unknown`).
fn platform_of(value: &Value) -> Option<String> {
    let os = value["os"].as_str()?;
    let architecture = value["architecture"].as_str()?;
    if os == "unknown" && architecture == "unknown" {
        return None;
    }
    Some(match value["variant"].as_str() {
        Some(variant) => format!("{os}/{architecture}/{variant}"),
        None => format!("{os}/{architecture}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn platforms_come_with_their_variant_and_attestations_are_left_out() {
        assert_eq!(
            platform_of(&json!({"os": "linux", "architecture": "arm64", "variant": "v8"})),
            Some("linux/arm64/v8".to_owned())
        );
        assert_eq!(
            platform_of(&json!({"os": "linux", "architecture": "amd64"})),
            Some("linux/amd64".to_owned())
        );
        assert_eq!(
            platform_of(&json!({"os": "unknown", "architecture": "unknown"})),
            None
        );
        assert_eq!(platform_of(&json!({"os": "linux"})), None);
    }

    #[test]
    fn a_newest_first_cursor_reads_back_as_the_place_it_was_written_at() {
        let at = UNIX_EPOCH + std::time::Duration::from_nanos(1_700_000_000_123_456_789);
        let (Reverse(nanos), tag) = newest_key("v1.2", Some(at));
        let cursor = format!("{nanos}.{tag}");
        assert_eq!(
            parse_newest_cursor(&cursor),
            Some(newest_key("v1.2", Some(at)))
        );
        assert_eq!(parse_newest_cursor("v1.2"), None);
        // Newer first, then by name.
        let older = newest_key("a", Some(at - std::time::Duration::from_secs(1)));
        assert!(newest_key("b", Some(at)) < older);
        assert!(newest_key("a", Some(at)) < newest_key("b", Some(at)));
    }
}
