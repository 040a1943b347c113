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
//! ```
//!
//! Every segment comes from a validated [`RepositoryName`], [`Tag`] or
//! [`Digest`] (or an upload id Berth generated), so no key can escape its
//! prefix. Upload ids are checked by [`is_upload_id`] before they get here.

use crate::oci::{Digest, RepositoryName, Tag};

pub const REPOSITORIES: &str = "repositories";
pub const BLOBS: &str = "blobs";

/// The child of a repository directory that marks it as a repository.
pub const MANIFESTS_DIR: &str = "_manifests";

pub fn blob_data(digest: &Digest) -> String {
    let hex = digest.hex();
    format!(
        "{BLOBS}/{}/{}/{hex}/data",
        digest.algorithm().as_str(),
        &hex[..2]
    )
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
    format!("{}/berth-session.json", upload_dir(name, id))
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
    fn upload_ids_must_be_canonical_uuids() {
        assert!(is_upload_id(&uuid::Uuid::new_v4().to_string()));
        assert!(!is_upload_id("../../../etc"));
        assert!(!is_upload_id("ABCDEF00-0000-0000-0000-000000000000"));
    }
}
