//! `berth fsck`: checks a store's integrity, and with `--repair` moves what
//! is damaged out of the way.
//!
//! What is checked:
//! - every blob's content hashes to its digest (streamed: memory stays one
//!   read chunk whatever the blob's size), and the bytes read are the size
//!   the store reports;
//! - every link names what its place says and its target is there: layer
//!   links their blob, revision links a blob that parses as a manifest, tags
//!   (current links) and Berth's tag history entries a manifest of the
//!   repository, referrer links a manifest of the repository;
//! - every manifest's references (config, layers, child manifests) are in
//!   its repository, with the sizes its descriptors state.
//!
//! Findings come in three kinds. A **problem** is damage or an inconsistency
//! a reader would meet (exit status 1). A **leftover** is debris an
//! interrupted write leaves by design (temporary files, upload directories, a
//! blob or tag directory whose write never finished): harmless, reported so
//! its space can be reclaimed, not a failure. A **repaired** line says what
//! `--repair` did. Repair never deletes content: a blob that does not match
//! its digest is moved to `_berth/quarantine/`; the only files removed are
//! temporary files old enough not to belong to a write in progress. Links
//! to what was quarantined stay, and a second run reports them: a push of the
//! same content heals them.
//!
//! In a mirrored repository (under a `[[proxy]]` prefix) a manifest is
//! fetched before its blobs, which are fetched when pulled: a reference not
//! linked there is counted as not fetched yet, not reported as a problem.
//!
//! Without `--repair` nothing is written, so it is safe beside a running
//! server; what the server changes meanwhile may show as a transient finding.

use std::collections::HashSet;
use std::fmt;
use std::io;
use std::time::{Duration, SystemTime};

use futures::StreamExt;

use crate::oci::manifest::Requirement;
use crate::oci::name::lies_below;
use crate::oci::{Algorithm, Digest, Hasher, Manifest, RepositoryName, Tag};
use crate::storage::{layout, Listing, Storage};

/// A temporary file younger than this may belong to a write in progress.
pub const LEFTOVER_MIN_AGE: Duration = Duration::from_secs(60);

/// Manifest content larger than this is not read whole (the server refuses
/// manifests over its limit, 4 MiB by default).
const MAX_MANIFEST_BYTES: u64 = 64 * 1024 * 1024;

const ALGORITHMS: [Algorithm; 2] = [Algorithm::Sha256, Algorithm::Sha512];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Problem,
    Leftover,
    Repaired,
}

/// One line of the report: what kind, which object, what is wrong or done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub kind: Kind,
    pub object: String,
    pub what: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            Kind::Problem => "PROBLEM",
            Kind::Leftover => "LEFTOVER",
            Kind::Repaired => "REPAIRED",
        };
        write!(f, "{kind} {}: {}", self.object, self.what)
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    pub repair: bool,
    /// Temporary files younger than this are reported but not removed.
    pub leftover_min_age: Duration,
    /// The prefixes of mirrored repositories (`[[proxy]]` entries).
    pub mirrored: Vec<String>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            repair: false,
            leftover_min_age: LEFTOVER_MIN_AGE,
            mirrored: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub blobs_checked: u64,
    pub bytes_hashed: u64,
    pub repositories: u64,
    pub manifests: u64,
    pub links: u64,
    pub problems: u64,
    pub leftovers: u64,
    pub repaired: u64,
    /// Blobs found in quarantine (moved there before or by this run).
    pub quarantined: u64,
    /// References of mirrored manifests whose content was never pulled.
    pub not_fetched: u64,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.problems == 0
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "fsck: {} blobs checked, {} bytes hashed, {} repositories, {} manifests, {} links; \
             {} problems, {} leftovers, {} repaired, {} blobs in quarantine",
            self.blobs_checked,
            self.bytes_hashed,
            self.repositories,
            self.manifests,
            self.links,
            self.problems,
            self.leftovers,
            self.repaired,
            self.quarantined
        )?;
        if self.not_fetched > 0 {
            write!(
                f,
                "; {} references of mirrored images not fetched yet",
                self.not_fetched
            )?;
        }
        Ok(())
    }
}

/// What the blob phase learned about a digest, for the link checks.
enum BlobState {
    Present { size: u64 },
    Missing,
    Corrupt,
    Quarantined,
}

struct Checker<'a> {
    storage: &'a dyn Storage,
    options: &'a Options,
    report: Report,
    /// Blobs found damaged (kept only for these: bounded by the damage).
    corrupt: HashSet<Digest>,
    out: &'a mut dyn FnMut(&Finding),
}

/// Checks the whole store, reporting each finding through `out` as it is
/// found, and returns the totals.
pub async fn check(
    storage: &dyn Storage,
    options: &Options,
    out: &mut dyn FnMut(&Finding),
) -> io::Result<Report> {
    let mut checker = Checker {
        storage,
        options,
        report: Report::default(),
        corrupt: HashSet::new(),
        out,
    };
    checker.blobs().await?;
    checker.repositories().await?;
    checker.temporaries().await?;
    for algorithm in ALGORITHMS {
        let mut quarantined = Listing::new(storage, layout::quarantine_of(algorithm));
        while quarantined.next().await?.is_some() {
            checker.report.quarantined += 1;
        }
    }
    Ok(checker.report)
}

fn age(modified: SystemTime) -> Duration {
    SystemTime::now()
        .duration_since(modified)
        .unwrap_or_default()
}

impl Checker<'_> {
    fn found(&mut self, kind: Kind, object: impl Into<String>, what: impl Into<String>) {
        match kind {
            Kind::Problem => self.report.problems += 1,
            Kind::Leftover => self.report.leftovers += 1,
            Kind::Repaired => self.report.repaired += 1,
        }
        let finding = Finding {
            kind,
            object: object.into(),
            what: what.into(),
        };
        (self.out)(&finding);
    }

    async fn blobs(&mut self) -> io::Result<()> {
        let mut names = Listing::new(self.storage, layout::BLOBS);
        while let Some(name) = names.next().await? {
            if Algorithm::parse(&name).is_none() {
                self.found(
                    Kind::Problem,
                    format!("{}/{name}", layout::BLOBS),
                    "not a digest algorithm Berth knows",
                );
            }
        }
        for algorithm in ALGORITHMS {
            let mut shards = Listing::new(self.storage, layout::blobs_of(algorithm));
            while let Some(shard) = shards.next().await? {
                let shard_key = layout::blob_shard(algorithm, &shard);
                let mut hexes = Listing::new(self.storage, shard_key.as_str());
                while let Some(hex) = hexes.next().await? {
                    match layout::parse_blob_dir(algorithm, &shard, &hex) {
                        Some(digest) => self.blob(&digest).await?,
                        None => self.found(
                            Kind::Problem,
                            format!("{shard_key}/{hex}"),
                            "not a blob: the name is not a digest of its shard",
                        ),
                    }
                }
            }
        }
        Ok(())
    }

    async fn blob(&mut self, digest: &Digest) -> io::Result<()> {
        let key = layout::blob_data(digest);
        let Some(read) = self.storage.read(&key, None).await? else {
            // An interrupted first write of this content leaves its directory.
            self.found(
                Kind::Leftover,
                format!("blob {digest}"),
                "directory without content (an interrupted write)",
            );
            return Ok(());
        };
        let mut stream = read.stream;
        let mut hasher = Hasher::new(digest.algorithm());
        let mut seen = 0u64;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(chunk) => {
                    hasher.update(&chunk);
                    seen += chunk.len() as u64;
                }
                Err(e) => {
                    self.report.blobs_checked += 1;
                    self.report.bytes_hashed += seen;
                    self.found(
                        Kind::Problem,
                        format!("blob {digest}"),
                        format!("could not be read: {e}"),
                    );
                    return Ok(());
                }
            }
        }
        self.report.blobs_checked += 1;
        self.report.bytes_hashed += seen;
        let actual = hasher.finish();
        if seen == read.size && &actual == digest {
            return Ok(());
        }
        let what = if seen != read.size {
            format!(
                "read {seen} bytes of {} (changed while reading?)",
                read.size
            )
        } else {
            format!("content ({seen} bytes) hashes to {actual}: corrupt or truncated")
        };
        self.found(Kind::Problem, format!("blob {digest}"), what);
        self.corrupt.insert(digest.clone());
        if self.options.repair {
            let to = layout::quarantined_blob(digest);
            if self.storage.rename(&key, &to).await? {
                self.found(
                    Kind::Repaired,
                    format!("blob {digest}"),
                    format!("moved to {to}; no longer served (a push of the content heals it)"),
                );
            }
        }
        Ok(())
    }

    async fn blob_state(&self, digest: &Digest) -> io::Result<BlobState> {
        if self.corrupt.contains(digest) {
            return Ok(BlobState::Corrupt);
        }
        if let Some(info) = self.storage.stat(&layout::blob_data(digest)).await? {
            return Ok(BlobState::Present { size: info.size });
        }
        if self
            .storage
            .stat(&layout::quarantined_blob(digest))
            .await?
            .is_some()
        {
            return Ok(BlobState::Quarantined);
        }
        Ok(BlobState::Missing)
    }

    /// The size of `digest`'s content, or a description of why it cannot be
    /// used.
    async fn usable_blob(&self, digest: &Digest) -> io::Result<Result<u64, String>> {
        Ok(match self.blob_state(digest).await? {
            BlobState::Present { size } => Ok(size),
            BlobState::Missing => Err(format!("{digest} is missing from the blob store")),
            BlobState::Corrupt => Err(format!("{digest} is corrupt")),
            BlobState::Quarantined => Err(format!("{digest} is in quarantine (it was corrupt)")),
        })
    }

    /// Reads a link: `Ok(None)` when there is none (a directory an
    /// interrupted write left), `Err` with the problem when it is unusable.
    async fn link(
        &mut self,
        key: &str,
        expected: Option<&Digest>,
    ) -> io::Result<Result<Option<Digest>, String>> {
        let Some(body) = self.storage.get(key).await? else {
            return Ok(Ok(None));
        };
        self.report.links += 1;
        let text = std::str::from_utf8(&body).unwrap_or_default().trim();
        let Ok(digest) = text.parse::<Digest>() else {
            return Ok(Err(format!("link does not hold a digest: {text:?}")));
        };
        if let Some(expected) = expected {
            if &digest != expected {
                return Ok(Err(format!(
                    "link names {digest}, its place says {expected}"
                )));
            }
        }
        Ok(Ok(Some(digest)))
    }

    async fn repositories(&mut self) -> io::Result<()> {
        let mut walk = crate::registry::RepositoryWalk::new(self.storage);
        while let Some(dir) = walk.next().await? {
            if !dir.is_repository() {
                continue;
            }
            match RepositoryName::parse(&dir.path) {
                Some(repository) => self.repository(&repository).await?,
                None => self.found(
                    Kind::Problem,
                    format!("repository {:?}", dir.path),
                    "not a valid repository name",
                ),
            }
        }
        Ok(())
    }

    async fn repository(&mut self, name: &RepositoryName) -> io::Result<()> {
        self.report.repositories += 1;
        self.layer_links(name).await?;
        self.revisions(name).await?;
        self.tags(name).await?;
        self.histories(name).await?;
        self.referrers(name).await?;
        self.uploads(name).await
    }

    /// The digests of `<dir>/<alg>/<hex>/…`, and problems for names that are
    /// not digests.
    async fn digests_under(&mut self, dir: &str) -> io::Result<Vec<Digest>> {
        let found = crate::registry::digests_under(self.storage, dir).await?;
        for stray in found.strays {
            self.found(Kind::Problem, stray, "not a digest");
        }
        Ok(found.digests)
    }

    async fn layer_links(&mut self, name: &RepositoryName) -> io::Result<()> {
        for digest in self.digests_under(&layout::layers_dir(name)).await? {
            let object = format!("layer link {name}@{digest}");
            match self
                .link(&layout::layer_link(name, &digest), Some(&digest))
                .await?
            {
                Err(problem) => self.found(Kind::Problem, object, problem),
                Ok(None) => {}
                Ok(Some(_)) => {
                    if let Err(problem) = self.usable_blob(&digest).await? {
                        self.found(Kind::Problem, object, format!("blob {problem}"));
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether `name` holds manifest `digest`: its revision link and content.
    async fn has_manifest(
        &self,
        name: &RepositoryName,
        digest: &Digest,
    ) -> io::Result<Result<(), String>> {
        if self
            .storage
            .get(&layout::revision_link(name, digest))
            .await?
            .is_none()
        {
            return Ok(Err(format!("{digest} is not a manifest of {name}")));
        }
        Ok(self
            .usable_blob(digest)
            .await?
            .map(drop)
            .map_err(|problem| format!("manifest {problem}")))
    }

    async fn revisions(&mut self, name: &RepositoryName) -> io::Result<()> {
        for digest in self.digests_under(&layout::revisions_dir(name)).await? {
            let object = format!("manifest {name}@{digest}");
            match self
                .link(&layout::revision_link(name, &digest), Some(&digest))
                .await?
            {
                Err(problem) => self.found(Kind::Problem, object, problem),
                Ok(None) => {}
                Ok(Some(_)) => {
                    self.report.manifests += 1;
                    match self.usable_blob(&digest).await? {
                        Err(problem) => {
                            self.found(Kind::Problem, object, format!("content {problem}"))
                        }
                        Ok(size) if size > MAX_MANIFEST_BYTES => self.found(
                            Kind::Problem,
                            object,
                            format!("content is {size} bytes, too large for a manifest"),
                        ),
                        Ok(_) => self.manifest(name, &digest, object).await?,
                    }
                }
            }
        }
        Ok(())
    }

    async fn manifest(
        &mut self,
        name: &RepositoryName,
        digest: &Digest,
        object: String,
    ) -> io::Result<()> {
        let Some(body) = self.storage.get(&layout::blob_data(digest)).await? else {
            return Ok(());
        };
        let manifest = match Manifest::parse(&body, None) {
            Ok(manifest) => manifest,
            Err(e) => {
                self.found(
                    Kind::Problem,
                    object,
                    format!("content is not a manifest: {e}"),
                );
                return Ok(());
            }
        };
        let mut unusable = HashSet::new();
        let mirrored = self
            .options
            .mirrored
            .iter()
            .any(|prefix| lies_below(name.as_str(), prefix.as_str()));
        for requirement in &manifest.requirements {
            let (required, problem) = match requirement {
                Requirement::Blob(d) => {
                    let linked = self
                        .storage
                        .get(&layout::layer_link(name, d))
                        .await?
                        .is_some();
                    let problem = if !linked && mirrored {
                        self.report.not_fetched += 1;
                        unusable.insert(d.clone());
                        continue;
                    } else if !linked {
                        Some(format!(
                            "references blob {d}, which is not linked in {name}"
                        ))
                    } else {
                        self.usable_blob(d)
                            .await?
                            .err()
                            .map(|p| format!("references blob {p}"))
                    };
                    (d, problem)
                }
                Requirement::Manifest(d) => {
                    let fetched = || async {
                        let link = self.storage.get(&layout::revision_link(name, d)).await?;
                        io::Result::Ok(link.is_some())
                    };
                    if mirrored && !fetched().await? {
                        self.report.not_fetched += 1;
                        unusable.insert(d.clone());
                        continue;
                    }
                    let problem = self
                        .has_manifest(name, d)
                        .await?
                        .err()
                        .map(|p| format!("references {p}"));
                    (d, problem)
                }
            };
            if let Some(problem) = problem {
                self.found(Kind::Problem, object.clone(), problem);
                unusable.insert(required.clone());
            }
        }
        // The same rule as a push (registry/manifests.rs): every descriptor
        // of required content states its size. The others (a
        // non-distributable layer, the subject) are checked at push only if
        // their content is there then; they may arrive later, so a
        // difference here would not be damage.
        for declared in manifest.descriptors.iter().filter(|d| d.required) {
            if unusable.contains(&declared.digest) {
                continue;
            }
            if let BlobState::Present { size } = self.blob_state(&declared.digest).await? {
                if declared.size != size {
                    self.found(
                        Kind::Problem,
                        object.clone(),
                        format!(
                            "{} states size {} for {}, which has {size} bytes",
                            declared.role, declared.size, declared.digest
                        ),
                    );
                }
            }
        }
        Ok(())
    }

    async fn tags(&mut self, name: &RepositoryName) -> io::Result<()> {
        let mut tags = Listing::new(self.storage, layout::tags_dir(name));
        while let Some(tag) = tags.next().await? {
            let Some(tag) = Tag::parse(&tag) else {
                self.found(
                    Kind::Problem,
                    format!("tag {name}:{tag}"),
                    "not a valid tag",
                );
                continue;
            };
            let object = format!("tag {name}:{tag}");
            match self
                .link(&layout::tag_current_link(name, &tag), None)
                .await?
            {
                Err(problem) => self.found(Kind::Problem, object, problem),
                // The tag's first write was interrupted before its current
                // link: listed, but it resolves to nothing.
                Ok(None) => self.found(
                    Kind::Leftover,
                    object,
                    "no current link (an interrupted first write of the tag)",
                ),
                Ok(Some(digest)) => {
                    if let Err(problem) = self.has_manifest(name, &digest).await? {
                        self.found(Kind::Problem, object, format!("points at {problem}"));
                    }
                }
            }
        }
        Ok(())
    }

    async fn histories(&mut self, name: &RepositoryName) -> io::Result<()> {
        let mut tags = Listing::new(self.storage, layout::tag_histories(name));
        while let Some(tag) = tags.next().await? {
            let Some(tag) = Tag::parse(&tag) else {
                let dir = layout::tag_histories(name);
                self.found(Kind::Problem, format!("{dir}/{tag}"), "not a valid tag");
                continue;
            };
            let dir = layout::tag_history_dir(name, &tag);
            let mut entries = Listing::new(self.storage, dir.as_str());
            while let Some(entry) = entries.next().await? {
                let object = format!("tag history {name}:{tag} {entry}");
                match layout::parse_tag_history_entry(&entry) {
                    None => self.found(Kind::Problem, object, "not a history entry"),
                    Some((_, None)) => {}
                    Some((_, Some(digest))) => {
                        self.report.links += 1;
                        if let Err(problem) = self.has_manifest(name, &digest).await? {
                            self.found(Kind::Problem, object, format!("names {problem}"));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    async fn referrers(&mut self, name: &RepositoryName) -> io::Result<()> {
        for subject in self.digests_under(&layout::referrers_dir(name)).await? {
            let dir = layout::referrers_of(name, &subject);
            for referrer in self.digests_under(&dir).await? {
                let object = format!("referrer link {name}@{subject} <- {referrer}");
                let key = layout::referrer_link(name, &subject, &referrer);
                match self.link(&key, Some(&referrer)).await? {
                    Err(problem) => self.found(Kind::Problem, object, problem),
                    Ok(None) => {}
                    Ok(Some(_)) => {
                        if let Err(problem) = self.has_manifest(name, &referrer).await? {
                            self.found(Kind::Problem, object, format!("names {problem}"));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    async fn uploads(&mut self, name: &RepositoryName) -> io::Result<()> {
        let mut ids = Listing::new(self.storage, layout::uploads_dir(name));
        while let Some(id) = ids.next().await? {
            let object = format!("upload {name} {id}");
            if !layout::is_upload_id(&id) {
                self.found(Kind::Problem, object, "not an upload id");
                continue;
            }
            let session = self
                .storage
                .stat(&layout::upload_session(name, &id))
                .await?;
            let data = self.storage.stat(&layout::upload_data(name, &id)).await?;
            let what = match (session, data) {
                (Some(s), _) => format!(
                    "in progress or abandoned, last written {} s ago (upload expiry removes it)",
                    age(s.modified).as_secs()
                ),
                (None, Some(d)) => format!(
                    "no session record, {} bytes (an interrupted single-request upload)",
                    d.size
                ),
                (None, None) => "empty upload directory".to_owned(),
            };
            self.found(Kind::Leftover, object, what);
        }
        Ok(())
    }

    /// Debris of interrupted writes, where the backend leaves any (a
    /// filesystem's temporary files; see [`Storage::leftovers`]).
    async fn temporaries(&mut self) -> io::Result<()> {
        let Some(debris) = self.storage.leftovers() else {
            return Ok(());
        };
        let mut leftovers = debris.list_leftovers().await?;
        leftovers.sort_by(|a, b| a.name.cmp(&b.name));
        for leftover in leftovers {
            let age = age(leftover.modified);
            let object = format!("temporary file {}", leftover.name);
            self.found(
                Kind::Leftover,
                object.clone(),
                format!("{} bytes, {} s old", leftover.size, age.as_secs()),
            );
            if !self.options.repair {
                continue;
            }
            if age < self.options.leftover_min_age {
                continue;
            }
            if debris.remove_leftover(&leftover.name).await? {
                self.found(Kind::Repaired, object, "removed");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::fs::FsStorage;
    use crate::storage::{Leftovers, WriteMode};
    use bytes::Bytes;

    async fn run(storage: &FsStorage, repair: bool) -> (Report, Vec<Finding>) {
        let mut findings = Vec::new();
        let options = Options {
            repair,
            leftover_min_age: Duration::from_secs(60),
            ..Options::default()
        };
        let report = check(storage, &options, &mut |f| findings.push(f.clone()))
            .await
            .unwrap();
        (report, findings)
    }

    async fn put(storage: &FsStorage, key: &str, data: impl Into<Bytes>) {
        storage
            .put(key, data.into(), WriteMode::Overwrite)
            .await
            .unwrap();
    }

    async fn blob(storage: &FsStorage, content: &[u8]) -> Digest {
        let digest = Digest::of(Algorithm::Sha256, content);
        put(storage, &layout::blob_data(&digest), content.to_vec()).await;
        digest
    }

    #[tokio::test]
    async fn an_empty_store_is_clean() {
        let dir = tempfile::tempdir().unwrap();
        let storage = FsStorage::open(dir.path()).unwrap();
        let (report, findings) = run(&storage, false).await;
        assert!(findings.is_empty(), "{findings:?}");
        assert!(report.is_clean());
        assert_eq!(report.blobs_checked, 0);
    }

    #[tokio::test]
    async fn a_blob_is_hashed_whole_and_a_mismatch_is_quarantined_on_repair() {
        let dir = tempfile::tempdir().unwrap();
        let storage = FsStorage::open(dir.path()).unwrap();
        let content = vec![7u8; 3 * 1024 * 1024 + 5];
        let good = blob(&storage, &content).await;
        let bad = Digest::of(Algorithm::Sha256, b"what it should be");
        put(&storage, &layout::blob_data(&bad), "something else").await;

        let (report, findings) = run(&storage, false).await;
        assert_eq!(report.blobs_checked, 2);
        assert_eq!(report.bytes_hashed, content.len() as u64 + 14);
        assert_eq!(report.problems, 1);
        assert_eq!(findings[0].kind, Kind::Problem);
        assert_eq!(findings[0].object, format!("blob {bad}"));
        assert!(storage
            .stat(&layout::blob_data(&bad))
            .await
            .unwrap()
            .is_some());

        let (report, findings) = run(&storage, true).await;
        assert_eq!((report.problems, report.repaired), (1, 1));
        assert_eq!(findings[1].kind, Kind::Repaired);
        assert!(storage
            .stat(&layout::blob_data(&bad))
            .await
            .unwrap()
            .is_none());
        let quarantined = storage.get(&layout::quarantined_blob(&bad)).await.unwrap();
        assert_eq!(quarantined.unwrap(), "something else", "moved, not deleted");

        let (report, _) = run(&storage, false).await;
        assert!(report.is_clean());
        assert_eq!((report.blobs_checked, report.quarantined), (1, 1));
        assert!(storage
            .stat(&layout::blob_data(&good))
            .await
            .unwrap()
            .is_some());
    }

    #[tokio::test]
    async fn links_must_name_their_place_and_reach_their_target() {
        let dir = tempfile::tempdir().unwrap();
        let storage = FsStorage::open(dir.path()).unwrap();
        let name = RepositoryName::parse("team/app").unwrap();
        let present = blob(&storage, b"layer").await;
        let absent = Digest::of(Algorithm::Sha256, b"never stored");
        put(
            &storage,
            &layout::layer_link(&name, &present),
            layout::link_body(&present),
        )
        .await;
        put(
            &storage,
            &layout::layer_link(&name, &absent),
            layout::link_body(&absent),
        )
        .await;
        let elsewhere = layout::layer_link(&name, &Digest::of(Algorithm::Sha256, b"x"));
        put(&storage, &elsewhere, layout::link_body(&present)).await;
        let tag = Tag::parse("v1").unwrap();
        put(
            &storage,
            &layout::tag_current_link(&name, &tag),
            layout::link_body(&present),
        )
        .await;

        let (report, findings) = run(&storage, false).await;
        let problems: Vec<String> = findings.iter().map(|f| f.to_string()).collect();
        assert_eq!(report.repositories, 1);
        assert_eq!(report.problems, 3, "{problems:#?}");
        assert!(
            problems
                .iter()
                .any(|p| p.contains(&format!("layer link team/app@{absent}"))
                    && p.contains("missing"))
        );
        assert!(problems.iter().any(|p| p.contains("its place says")));
        assert!(problems
            .iter()
            .any(|p| p.starts_with("PROBLEM tag team/app:v1")
                && p.contains("not a manifest of team/app")));
    }

    #[tokio::test]
    async fn manifests_must_parse_and_find_what_they_reference_with_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let storage = FsStorage::open(dir.path()).unwrap();
        let name = RepositoryName::parse("app").unwrap();
        let config = blob(&storage, b"{}").await;
        let layer = blob(&storage, b"layer bytes").await;
        for d in [&config, &layer] {
            put(
                &storage,
                &layout::layer_link(&name, d),
                layout::link_body(d),
            )
            .await;
        }
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.to_string(), "size": 2},
            // The same layer twice: each descriptor is judged, not only the
            // first naming a digest (the push's rule).
            "layers": [
                {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer.to_string(), "size": 11},
                {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer.to_string(), "size": 999}
            ],
        });
        let m = blob(&storage, &serde_json::to_vec(&manifest).unwrap()).await;
        put(
            &storage,
            &layout::revision_link(&name, &m),
            layout::link_body(&m),
        )
        .await;
        let not_manifest = blob(&storage, b"not json").await;
        put(
            &storage,
            &layout::revision_link(&name, &not_manifest),
            layout::link_body(&not_manifest),
        )
        .await;

        let (_, findings) = run(&storage, false).await;
        let lines: Vec<String> = findings.iter().map(|f| f.to_string()).collect();
        assert_eq!(lines.len(), 2, "{lines:#?}");
        assert!(lines
            .iter()
            .any(|l| l.contains(&format!("manifest app@{m}"))
                && l.contains(&format!(
                    "layers[1] states size 999 for {layer}, which has 11 bytes"
                ))));
        assert!(lines
            .iter()
            .any(|l| l.contains(&format!("manifest app@{not_manifest}"))
                && l.contains("not a manifest")));

        storage
            .delete(&layout::layer_link(&name, &layer))
            .await
            .unwrap();
        let (_, findings) = run(&storage, false).await;
        assert!(findings.iter().any(|f| f
            .what
            .contains(&format!("references blob {layer}, which is not linked"))));
    }

    #[tokio::test]
    async fn only_old_temporary_files_are_removed_and_debris_is_not_a_problem() {
        let dir = tempfile::tempdir().unwrap();
        let storage = FsStorage::open(dir.path()).unwrap();
        let old = dir.path().join("blobs/sha256/ab/.tmp-old");
        let new = dir.path().join("repositories/a/_layers/.tmp-new");
        for path in [&old, &new] {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, b"partial").unwrap();
        }
        let long_ago = SystemTime::now() - Duration::from_secs(3600);
        filetime::set_file_mtime(&old, long_ago.into()).unwrap();

        let (report, findings) = run(&storage, true).await;
        assert!(report.is_clean(), "{findings:?}");
        assert_eq!((report.leftovers, report.repaired), (2, 1));
        assert!(!old.exists() && new.exists());
        assert!(storage
            .remove_leftover("blobs/sha256/ab/data")
            .await
            .is_err());
    }
}
