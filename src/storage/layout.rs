//! The one place that maps registry objects to storage keys.
//!
//! The layout is CNCF Distribution's (`registry/storage/paths.go`), so a
//! `registry:2` data directory is served as it is, and the other way round.
//! Keys are relative to `<data-dir>/docker/registry/v2/` (for an object store,
//! to the bucket's root directory):
//!
//! ```text
//! blobs/<alg>/<hex[0..2]>/<hex>/data                  content, keyed by digest, shared by all repositories
//! repositories/<name>/
//!   _layers/<alg>/<hex>/link                          "alg:hex": the blob is in this repository
//!   _manifests/revisions/<alg>/<hex>/link             the manifest is in this repository
//!   _manifests/tags/<tag>/current/link                the digest the tag points at now
//!   _manifests/tags/<tag>/index/<alg>/<hex>/link      every digest the tag has pointed at
//!   _uploads/<id>/data                                an upload's content so far
//!   _uploads/<id>/startedat                           RFC 3339 start time (as Distribution writes it)
//!   _uploads/<id>/berth-session.json                  Berth's resumable session record (offset, hash state)
//!   _referrers/<alg>/<subject-hex>/<alg>/<hex>/link   Berth: manifests whose `subject` is that digest
//!   _berth/history/<tag>/<nanos>-<alg>-<hex>          Berth: the tag was pointed at that digest at that
//!                                                     time (nanoseconds since the Unix epoch, 20 digits)
//!   _berth/history/<tag>/<nanos>-deleted              Berth: the tag was deleted at that time
//!   _berth/mirror/manifests/<alg>-<hex>               Berth: when a pull-through mirror last fetched or served
//!                                                     that manifest (milliseconds since the Unix epoch)
//!   _berth/mirror/tags/<tag>                          Berth: the digest a pull-through mirror set the tag to
//!                                                     (a `[[proxy]]` entry with `allow_push`)
//! _berth/trash/<uuid>/<key>                           Berth: an object garbage collection is removing
//!                                                     (put back at <key> if a crash leaves it here)
//! _berth/quarantine/<alg>/<hex>                       Berth: a blob whose content did not match its digest
//! _berth/gc/touches/<window>/<nanos>-<uuid>           Berth on S3: the keys one touch used (a touch marker)
//! _berth/gc/intents/<millis>-<uuid>                   Berth on S3: the keys a collector is about to remove
//! _berth/gc/active                                    Berth on S3: when a collector last wrote an intent (millis)
//! _berth/journal/{lock,a,b}                           Berth: the filesystem store's write-ahead journal
//!                                                     (storage/journal.rs), not keys
//! _berth/settings/repositories/<name>/_settings.json  Berth: a repository's settings (visibility,
//!                                                     description, grants; registry/settings.rs)
//! _berth/settings/namespaces/<name>/_settings.json    Berth: a namespace's settings
//! _berth/settings/robots/<robot>.json                 Berth: a robot account made through the API
//! _berth/settings/generation                          Berth: rewritten after every settings change,
//!                                                     so other replicas know to reload them
//! ```
//!
//! History entries are empty files: the name is the record.
//! Berth's tag history lives outside `_manifests/tags/` so that it survives a
//! tag's deletion (for rollback) without Distribution listing a deleted tag,
//! and records every change in order, including a return to an earlier
//! digest, which `_manifests/tags/<tag>/index/` cannot.
//!
//! Every segment comes from a validated [`RepositoryName`], [`Tag`] or
//! [`Digest`] (or an upload id Berth generated), so no key can escape its
//! prefix. Upload ids are checked by [`is_upload_id`] before they get here.

use crate::oci::{Algorithm, Digest, RepositoryName, Tag};

pub const REPOSITORIES: &str = "repositories";
pub const BLOBS: &str = "blobs";

/// The child of a repository directory that marks it as a repository.
pub const MANIFESTS_DIR: &str = "_manifests";

/// The children that mark a directory under `repositories/` as a repository
/// (for garbage collection and fsck): a repository can hold uploads or blob links before
/// its first manifest, so `_manifests` alone (the catalog's test) would miss it.
pub const REPOSITORY_DIRS: [&str; 5] =
    ["_manifests", "_layers", "_referrers", "_uploads", "_berth"];

/// Whether `key` is made of plain segments (none empty, `.` or `..`), so
/// that it names something below the store's root.
pub fn is_safe_key(key: &str) -> bool {
    !key.starts_with('/')
        && !key
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
}

pub fn blob_data(digest: &Digest) -> String {
    let hex = digest.hex();
    format!(
        "{BLOBS}/{}/{}/{hex}/data",
        digest.algorithm().as_str(),
        &hex[..2]
    )
}

/// The directory of every blob of one algorithm, one child per shard
/// (`hex[0..2]`), each with one child per blob (`hex`).
pub fn blobs_of(algorithm: Algorithm) -> String {
    format!("{BLOBS}/{}", algorithm.as_str())
}

pub fn blob_shard(algorithm: Algorithm, shard: &str) -> String {
    format!("{}/{shard}", blobs_of(algorithm))
}

/// Reads a blob directory's place back: the digest it holds, when `shard`
/// and `hex` are a well-formed pair.
pub fn parse_blob_dir(algorithm: Algorithm, shard: &str, hex: &str) -> Option<Digest> {
    let digest = Digest::from_parts(algorithm, hex).ok()?;
    (hex.get(..2) == Some(shard)).then_some(digest)
}

/// The digest whose content `key` holds, when `key` is a blob's data
/// ([`blob_data`]).
pub fn blob_digest_of(key: &str) -> Option<Digest> {
    let rest = key.strip_prefix(BLOBS)?.strip_prefix('/')?;
    let mut parts = rest.split('/');
    let (algorithm, shard, hex) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next() != Some("data") || parts.next().is_some() {
        return None;
    }
    parse_blob_dir(Algorithm::parse(algorithm)?, shard, hex)
}

pub fn repository(name: &RepositoryName) -> String {
    format!("{REPOSITORIES}/{name}")
}

pub fn layer_link(name: &RepositoryName, digest: &Digest) -> String {
    format!(
        "{REPOSITORIES}/{name}/_layers/{}/{}/link",
        digest.algorithm().as_str(),
        digest.hex()
    )
}

/// Every `_layers` link of `name`: `<alg>/<hex>/link` below.
pub fn layers_dir(name: &RepositoryName) -> String {
    format!("{REPOSITORIES}/{name}/_layers")
}

/// Every revision link of `name`: `<alg>/<hex>/link` below.
pub fn revisions_dir(name: &RepositoryName) -> String {
    format!("{REPOSITORIES}/{name}/_manifests/revisions")
}

/// Every referrers index of `name`: `<alg>/<subject-hex>/<alg>/<hex>/link` below.
pub fn referrers_dir(name: &RepositoryName) -> String {
    format!("{REPOSITORIES}/{name}/_referrers")
}

/// Every upload of `name`, one child per upload id.
pub fn uploads_dir(name: &RepositoryName) -> String {
    format!("{REPOSITORIES}/{name}/_uploads")
}

pub fn revision_link(name: &RepositoryName, digest: &Digest) -> String {
    format!(
        "{REPOSITORIES}/{name}/_manifests/revisions/{}/{}/link",
        digest.algorithm().as_str(),
        digest.hex()
    )
}

pub fn tags_dir(name: &RepositoryName) -> String {
    format!("{REPOSITORIES}/{name}/_manifests/tags")
}

pub fn tag_dir(name: &RepositoryName, tag: &Tag) -> String {
    format!("{REPOSITORIES}/{name}/_manifests/tags/{tag}")
}

pub fn tag_current_link(name: &RepositoryName, tag: &Tag) -> String {
    format!("{}/current/link", tag_dir(name, tag))
}

pub fn tag_index_link(name: &RepositoryName, tag: &Tag, digest: &Digest) -> String {
    format!(
        "{}/index/{}/{}/link",
        tag_dir(name, tag),
        digest.algorithm().as_str(),
        digest.hex()
    )
}

pub fn upload_dir(name: &RepositoryName, id: &str) -> String {
    format!("{REPOSITORIES}/{name}/_uploads/{id}")
}

pub fn upload_data(name: &RepositoryName, id: &str) -> String {
    format!("{}/data", upload_dir(name, id))
}

pub fn upload_started_at(name: &RepositoryName, id: &str) -> String {
    format!("{}/startedat", upload_dir(name, id))
}

pub fn upload_session(name: &RepositoryName, id: &str) -> String {
    format!("{}/{UPLOAD_SESSION}", upload_dir(name, id))
}

const UPLOAD_SESSION: &str = "berth-session.json";

/// Whether `key` is an upload's session record (see [`upload_session`]).
pub fn is_upload_session(key: &str) -> bool {
    key.strip_suffix(UPLOAD_SESSION)
        .and_then(|dir| dir.strip_suffix('/'))
        .and_then(|dir| dir.rsplit_once("/_uploads/"))
        .is_some_and(|(_, id)| is_upload_id(id))
}

pub fn referrers_of(name: &RepositoryName, subject: &Digest) -> String {
    format!(
        "{REPOSITORIES}/{name}/_referrers/{}/{}",
        subject.algorithm().as_str(),
        subject.hex()
    )
}

pub fn referrer_link(name: &RepositoryName, subject: &Digest, referrer: &Digest) -> String {
    format!(
        "{}/{}/{}/link",
        referrers_of(name, subject),
        referrer.algorithm().as_str(),
        referrer.hex()
    )
}

/// Berth's own objects inside a repository (no repository name component
/// can start with `_`).
pub fn repository_berth_dir(name: &RepositoryName) -> String {
    format!("{REPOSITORIES}/{name}/_berth")
}

/// The directory of every tag with a Berth history in `name`, one child per tag.
pub fn tag_histories(name: &RepositoryName) -> String {
    format!("{}/history", repository_berth_dir(name))
}

/// The directory of a repository's mirror pull records, one per manifest.
pub fn mirror_pull_records(name: &RepositoryName) -> String {
    format!("{}/mirror/manifests", repository_berth_dir(name))
}

/// When a pull-through mirror last fetched or served the manifest `digest`.
pub fn mirror_pull_record(name: &RepositoryName, digest: &Digest) -> String {
    format!(
        "{}/{}-{}",
        mirror_pull_records(name),
        digest.algorithm().as_str(),
        digest.hex()
    )
}

/// The digest a pull record's name (`<alg>-<hex>`) stands for.
pub fn parse_mirror_pull_record(entry: &str) -> Option<Digest> {
    let (algorithm, hex) = entry.split_once('-')?;
    format!("{algorithm}:{hex}").parse().ok()
}

/// The digest a pull-through mirror last set `tag` to from its upstream (in
/// a prefix that also takes pushes): a tag whose link says otherwise was
/// pushed here.
pub fn mirror_tag_record(name: &RepositoryName, tag: &Tag) -> String {
    format!("{}/mirror/tags/{tag}", repository_berth_dir(name))
}

pub fn tag_history_dir(name: &RepositoryName, tag: &Tag) -> String {
    format!("{}/{tag}", tag_histories(name))
}

/// The entry recording that `tag` was pointed at `digest` (or deleted, for
/// `None`) at `nanos` since the Unix epoch.
pub fn tag_history_entry(
    name: &RepositoryName,
    tag: &Tag,
    nanos: u128,
    digest: Option<&Digest>,
) -> String {
    format!(
        "{}/{}",
        tag_history_dir(name, tag),
        tag_history_entry_name(nanos, digest)
    )
}

pub fn tag_history_entry_name(nanos: u128, digest: Option<&Digest>) -> String {
    match digest {
        Some(d) => format!("{nanos:020}-{}-{}", d.algorithm().as_str(), d.hex()),
        None => format!("{nanos:020}-deleted"),
    }
}

/// Reads a history entry's name back: its time and the digest it names
/// (`None` for a deletion). Anything else is not an entry.
pub fn parse_tag_history_entry(entry: &str) -> Option<(u128, Option<Digest>)> {
    let (nanos, rest) = entry.split_once('-')?;
    if nanos.len() != 20 || !nanos.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let nanos = nanos.parse().ok()?;
    if rest == "deleted" {
        return Some((nanos, None));
    }
    let (algorithm, hex) = rest.split_once('-')?;
    let digest = format!("{algorithm}:{hex}").parse().ok()?;
    Some((nanos, Some(digest)))
}

/// Repository and namespace settings, and the robot accounts made through
/// the API (`registry/settings.rs`).
pub const SETTINGS_REPOSITORIES: &str = "_berth/settings/repositories";
pub const SETTINGS_NAMESPACES: &str = "_berth/settings/namespaces";
pub const SETTINGS_ROBOTS: &str = "_berth/settings/robots";
pub const SETTINGS_GENERATION: &str = "_berth/settings/generation";
/// The settings document's name in its directory: no name component starts
/// with `_`, so it never stands for a nested name.
pub const SETTINGS_DOCUMENT: &str = "_settings.json";

pub fn repository_settings(name: &RepositoryName) -> String {
    format!("{SETTINGS_REPOSITORIES}/{name}/{SETTINGS_DOCUMENT}")
}

pub fn namespace_settings(name: &RepositoryName) -> String {
    format!("{SETTINGS_NAMESPACES}/{name}/{SETTINGS_DOCUMENT}")
}

/// A robot account's document; `name` is a robot name the caller checked
/// (no `/`, no leading `.`).
pub fn robot_account(name: &str) -> String {
    format!("{SETTINGS_ROBOTS}/{name}.json")
}

/// The filesystem store's write-ahead journal: files, not keys.
pub const JOURNAL: &str = "_berth/journal";

/// Objects garbage collection is deciding about, each under its own key.
pub const TRASH: &str = "_berth/trash";

/// Where an object store keeps its touch markers, one folder per time
/// window (`storage/s3/collection.rs`).
pub const GC_TOUCHES: &str = "_berth/gc/touches";

/// Where a collector on an object store announces what it is about to
/// remove (`storage/s3/collection.rs`).
pub const GC_INTENTS: &str = "_berth/gc/intents";

/// Where a collector on an object store says when it last wrote an intent,
/// so that a toucher reads one small object, not a listing, while no
/// collection runs (`storage/s3/collection.rs`).
pub const GC_ACTIVE: &str = "_berth/gc/active";

/// Whether a collection may ever remove `key` through
/// `Storage::delete_if_untouched_since` with its touch-before-use promise:
/// content and repository links, not uploads (whose expiry may cut a live
/// upload short, which costs its client a restart, never an acknowledged
/// image).
pub fn is_collectable(key: &str) -> bool {
    (key.starts_with("blobs/") || key.starts_with("repositories/")) && !key.contains("/_uploads/")
}

/// Where garbage collection moves the object at `key` while it decides its
/// fate; the key is kept in the path so that the object can be put back
/// after a crash.
pub fn trash_entry(id: &uuid::Uuid, key: &str) -> String {
    format!("{TRASH}/{}/{key}", id.simple())
}

/// Where a blob whose content does not match its digest is moved.
pub fn quarantined_blob(digest: &Digest) -> String {
    format!(
        "_berth/quarantine/{}/{}",
        digest.algorithm().as_str(),
        digest.hex()
    )
}

/// Where quarantined blobs of one algorithm are, one child per blob (`hex`).
pub fn quarantine_of(algorithm: Algorithm) -> String {
    format!("_berth/quarantine/{}", algorithm.as_str())
}

/// Upload ids are UUIDs Berth generated; anything else never reaches storage.
pub fn is_upload_id(id: &str) -> bool {
    uuid::Uuid::parse_str(id).is_ok_and(|u| u.hyphenated().to_string() == id)
}

/// The contents of a link file: the digest it names.
pub fn link_body(digest: &Digest) -> bytes::Bytes {
    bytes::Bytes::from(digest.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_distributions_layout() {
        let name = RepositoryName::parse("library/ubuntu").unwrap();
        let digest: Digest = format!("sha256:ab{}", "0".repeat(62)).parse().unwrap();
        let tag = Tag::parse("latest").unwrap();
        assert_eq!(
            blob_data(&digest),
            format!("blobs/sha256/ab/ab{}/data", "0".repeat(62))
        );
        assert_eq!(
            tag_current_link(&name, &tag),
            "repositories/library/ubuntu/_manifests/tags/latest/current/link"
        );
        assert_eq!(
            layer_link(&name, &digest),
            format!(
                "repositories/library/ubuntu/_layers/sha256/ab{}/link",
                "0".repeat(62)
            )
        );
    }

    #[test]
    fn tag_history_entries_sort_by_time_and_read_back() {
        let name = RepositoryName::parse("a/b").unwrap();
        let tag = Tag::parse("v1").unwrap();
        let digest: Digest = format!("sha256:{}", "c".repeat(64)).parse().unwrap();
        let key = tag_history_entry(&name, &tag, 1_764_000_000_000_000_000, Some(&digest));
        assert_eq!(
            key,
            format!(
                "repositories/a/b/_berth/history/v1/01764000000000000000-sha256-{}",
                "c".repeat(64)
            )
        );
        let entry = key.rsplit('/').next().unwrap();
        assert_eq!(
            parse_tag_history_entry(entry),
            Some((1_764_000_000_000_000_000, Some(digest.clone())))
        );
        let deleted = tag_history_entry_name(9, None);
        assert_eq!(parse_tag_history_entry(&deleted), Some((9, None)));
        assert!(tag_history_entry_name(9, Some(&digest)) < tag_history_entry_name(10, None));
        assert_eq!(parse_tag_history_entry("1-deleted"), None);
        assert_eq!(parse_tag_history_entry(".tmp-x"), None);
    }

    #[test]
    fn blob_directories_read_back_only_when_shard_and_digest_agree() {
        let hex = format!("ab{}", "0".repeat(62));
        let digest = parse_blob_dir(Algorithm::Sha256, "ab", &hex).unwrap();
        assert_eq!(
            blob_data(&digest),
            format!("{}/ab/{hex}/data", blobs_of(Algorithm::Sha256))
        );
        assert_eq!(parse_blob_dir(Algorithm::Sha256, "cd", &hex), None);
        assert_eq!(parse_blob_dir(Algorithm::Sha512, "ab", &hex), None);
        assert_eq!(parse_blob_dir(Algorithm::Sha256, "ab", ".tmp-x"), None);
        assert_eq!(blob_digest_of(&blob_data(&digest)), Some(digest.clone()));
        for not_data in [
            format!("{}/ab/{hex}", blobs_of(Algorithm::Sha256)),
            format!("{}/ab/{hex}/data/x", blobs_of(Algorithm::Sha256)),
            format!("{}/cd/{hex}/data", blobs_of(Algorithm::Sha256)),
            format!("{BLOBS}x/sha256/ab/{hex}/data"),
            layer_link(&RepositoryName::parse("a/b").unwrap(), &digest),
        ] {
            assert_eq!(blob_digest_of(&not_data), None, "{not_data}");
        }
    }

    #[test]
    fn upload_ids_must_be_canonical_uuids() {
        assert!(is_upload_id(&uuid::Uuid::new_v4().to_string()));
        assert!(!is_upload_id("../../../etc"));
        assert!(!is_upload_id("ABCDEF00-0000-0000-0000-000000000000"));
    }

    #[test]
    fn a_session_record_is_told_from_other_upload_keys() {
        let name = RepositoryName::parse("a/b").unwrap();
        let id = uuid::Uuid::new_v4().to_string();
        assert!(is_upload_session(&upload_session(&name, &id)));
        assert!(!is_upload_session(&upload_data(&name, &id)));
        assert!(!is_upload_session(&upload_started_at(&name, &id)));
        let not_an_id = format!("{REPOSITORIES}/a/b/_uploads/x/berth-session.json");
        assert!(!is_upload_session(&not_an_id));
        assert!(!is_upload_session("berth-session.json"));
    }
}
