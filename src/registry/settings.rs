//! Repository settings, kept in the store so every replica sees them, and
//! changed through the API (`http/settings.rs`) without a config edit or a
//! restart: a repository's visibility (public: anyone may pull), its
//! description and its grants (actions for users, groups and robots); and
//! namespaces, which admins create and hand to teams with grants over every
//! repository below them (`team-a` covers `team-a/app`, `team-a/tools/x`).
//!
//! What the grants mean is the access policy's business
//! (`auth::GrantSource`, fed from here by the http layer): this module
//! stores documents and keeps them in memory, and checks only their shape.
//!
//! **Robot accounts** made through the API are kept here too (one document
//! each, [`RobotAccount`]: the SHA-256 of its secret, never the secret), so
//! a robot made on one replica logs in on every other; what its grants mean
//! and how its secret is checked are the access policy's business
//! (`auth::RobotSource`).
//!
//! **Storage.** One document per repository, namespace and robot, under
//! `_berth/settings/` (`storage/layout.rs`), and a generation marker
//! rewritten after every change. Every process keeps all documents in
//! memory (they are few and small: only what someone configured). A change
//! is in force at once on the process that made it; on another replica
//! within `cache_ttl`: a request finding the last check older than that
//! reads the marker first (one small read per `cache_ttl` per process), and
//! all documents when it moved.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{storage_error, Registry};
use crate::oci::{ErrorCode, RegistryError, RepositoryName, Result};
use crate::storage::{layout, Listing, Storage, WriteMode};

/// Whether anyone may pull a repository.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Visibility {
    /// Anyone, anonymous clients included, may pull.
    Public,
    /// Only who the configuration's rules or the grants allow.
    #[default]
    Private,
}

/// Actions for a subject: `user:NAME`, `group:NAME` or `robot:NAME`, and
/// action names (`pull`, `push`, `delete`, `manage`), as the access policy
/// reads them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsGrant {
    pub subject: String,
    pub actions: Vec<String>,
}

impl SettingsGrant {
    /// The kind of subject and its name, when the subject is well formed.
    pub fn subject(&self) -> Option<(SubjectKind, &str)> {
        let (kind, name) = self.subject.split_once(':')?;
        let kind = match kind {
            "user" => SubjectKind::User,
            "group" => SubjectKind::Group,
            "robot" => SubjectKind::Robot,
            _ => return None,
        };
        valid_subject_name(name).then_some((kind, name))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubjectKind {
    User,
    Group,
    Robot,
}

/// User, group and robot names as the config and `berth robot` accept them:
/// printable, no space, no `:` or `/`, at most 128 bytes.
fn valid_subject_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_graphic() && c != ':' && c != '/')
}

/// What a change sends: the settings, without who changed them when.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SettingsChange {
    pub visibility: Visibility,
    pub description: String,
    pub grants: Vec<SettingsGrant>,
}

/// The longest description kept.
pub const MAX_DESCRIPTION: usize = 4096;
/// The most grants one document holds.
pub const MAX_GRANTS: usize = 256;

impl SettingsChange {
    /// Checks the shape: subjects well formed, no grant without an
    /// action, bounded sizes. (Whether action names are known is the
    /// caller's check, which knows them.)
    pub fn validate(&self) -> Result<()> {
        let invalid = |detail: String| {
            Err(RegistryError::with_detail(
                ErrorCode::ParameterInvalid,
                detail,
            ))
        };
        if self.description.len() > MAX_DESCRIPTION {
            return invalid(format!(
                "the description is longer than {MAX_DESCRIPTION} bytes"
            ));
        }
        if self.grants.len() > MAX_GRANTS {
            return invalid(format!("more than {MAX_GRANTS} grants"));
        }
        for grant in &self.grants {
            if grant.subject().is_none() {
                return invalid(format!(
                    "grant subject {:?} is not user:NAME, group:NAME or robot:NAME",
                    grant.subject
                ));
            }
            if grant.actions.is_empty() {
                return invalid(format!("the grant to {} has no action", grant.subject));
            }
        }
        Ok(())
    }
}

/// A repository's or a namespace's stored settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    #[serde(default)]
    pub visibility: Visibility,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub grants: Vec<SettingsGrant>,
    /// When, in RFC 3339, and by whom (a user or `robot$NAME`; empty with
    /// access control off) the settings were last changed.
    pub updated_at: String,
    #[serde(default)]
    pub updated_by: String,
}

/// A robot account made through the API, as stored. Its grants are
/// `PATTERN:ACTIONS` strings and its times Unix seconds, as in the robot
/// file of `berth robot`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RobotAccount {
    pub name: String,
    /// Hex SHA-256 of the secret (32 random bytes: a hash is enough).
    pub secret_sha256: String,
    pub grants: Vec<String>,
    /// The namespace whose managers made it and may change it; `None`: an
    /// admin's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub created_at: u64,
    /// When its secret was last renewed (`None`: never, set at creation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_set_at: Option<u64>,
    /// Who made it (a user name).
    #[serde(default)]
    pub created_by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
}

impl std::fmt::Debug for RobotAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RobotAccount")
            .field("name", &self.name)
            .field("grants", &self.grants)
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

/// Whether `name` can name a robot's document: a plain key segment. (The
/// http layer applies the robot naming rule before this.)
fn valid_robot_key(name: &str) -> bool {
    valid_subject_name(name) && !name.starts_with(['.', '_'])
}

/// Every setting this process knows, as of its last load.
#[derive(Debug, Default)]
pub struct SettingsSnapshot {
    /// The generation marker the documents were read under.
    generation: Option<Bytes>,
    pub repositories: BTreeMap<String, Settings>,
    pub namespaces: BTreeMap<String, Settings>,
    /// Robot accounts by name.
    pub robots: BTreeMap<String, RobotAccount>,
}

impl SettingsSnapshot {
    /// The namespaces `name` lies in, outermost first (`a` and `a/b` for
    /// `a/b/c`), with their settings.
    pub fn namespaces_of<'a>(
        &'a self,
        name: &'a RepositoryName,
    ) -> impl Iterator<Item = (&'a str, &'a Settings)> + 'a {
        name.namespaces().filter_map(move |namespace| {
            self.namespaces
                .get(namespace)
                .map(|settings| (namespace, settings))
        })
    }
}

/// The settings in memory, and when they were last checked against the
/// store.
#[derive(Debug)]
pub(crate) struct SettingsIndex {
    snapshot: RwLock<Arc<SettingsSnapshot>>,
    checked: Mutex<Option<Instant>>,
    /// Held while the store is read: one read at a time per process.
    refreshing: tokio::sync::Mutex<()>,
    /// How long a check of the marker stands: the registry's `cache_ttl`.
    ttl: Duration,
}

impl SettingsIndex {
    pub(crate) fn new(ttl: Duration) -> SettingsIndex {
        SettingsIndex {
            snapshot: RwLock::new(Arc::new(SettingsSnapshot::default())),
            checked: Mutex::new(None),
            refreshing: tokio::sync::Mutex::new(()),
            ttl,
        }
    }

    fn current(&self) -> Arc<SettingsSnapshot> {
        self.snapshot.read().expect("not poisoned").clone()
    }

    /// Whether the last check is older than the TTL (always, with a TTL of
    /// zero: every request checks).
    fn is_stale(&self, now: Instant) -> bool {
        self.checked
            .lock()
            .expect("not poisoned")
            .is_none_or(|checked| now.duration_since(checked) >= self.ttl)
    }

    /// Reads the marker and, when it moved since the snapshot was read (or
    /// there is none yet), every document.
    async fn refresh(&self, storage: &dyn Storage) -> std::io::Result<()> {
        let started = Instant::now();
        let generation = storage.get(layout::SETTINGS_GENERATION).await?;
        let current = self.current();
        let loaded = self.checked.lock().expect("not poisoned").is_some();
        if !loaded || generation != current.generation {
            let snapshot = load(storage, generation).await?;
            *self.snapshot.write().expect("not poisoned") = Arc::new(snapshot);
        }
        *self.checked.lock().expect("not poisoned") = Some(started);
        Ok(())
    }
}

/// Reads every settings document (those that do not parse are left out,
/// with a warning: a hand-edited document must not lock a registry).
async fn load(
    storage: &dyn Storage,
    generation: Option<Bytes>,
) -> std::io::Result<SettingsSnapshot> {
    let mut snapshot = SettingsSnapshot {
        generation,
        ..SettingsSnapshot::default()
    };
    for (root, leaf, into) in [
        (
            layout::SETTINGS_REPOSITORIES,
            layout::SETTINGS_DOCUMENT,
            &mut snapshot.repositories,
        ),
        (
            layout::SETTINGS_NAMESPACES,
            layout::SETTINGS_DOCUMENT,
            &mut snapshot.namespaces,
        ),
    ] {
        // Depth first: (directory key, the name it stands for).
        let mut open = vec![(root.to_owned(), String::new())];
        while let Some((dir, name)) = open.pop() {
            let mut children = Listing::new(storage, dir.clone());
            while let Some(child) = children.next().await? {
                if child == leaf {
                    let Some(bytes) = storage.get(&format!("{dir}/{child}")).await? else {
                        continue;
                    };
                    match serde_json::from_slice::<Settings>(&bytes) {
                        Ok(settings) if RepositoryName::parse(&name).is_some() => {
                            into.insert(name.clone(), settings);
                        }
                        Ok(_) => {
                            tracing::warn!(key = %dir, "settings under an invalid name: ignored")
                        }
                        Err(e) => {
                            tracing::warn!(key = %dir, error = %e, "unreadable settings: ignored")
                        }
                    }
                } else if !child.starts_with('_') {
                    let name = if name.is_empty() {
                        child.clone()
                    } else {
                        format!("{name}/{child}")
                    };
                    open.push((format!("{dir}/{child}"), name));
                }
            }
        }
    }
    let mut robots = Listing::new(storage, layout::SETTINGS_ROBOTS.to_owned());
    while let Some(child) = robots.next().await? {
        let Some(name) = child.strip_suffix(".json") else {
            continue;
        };
        let key = layout::robot_account(name);
        let Some(bytes) = storage.get(&key).await? else {
            continue;
        };
        match serde_json::from_slice::<RobotAccount>(&bytes) {
            Ok(account) if account.name == name && valid_robot_key(name) => {
                snapshot.robots.insert(account.name.clone(), account);
            }
            Ok(_) => tracing::warn!(%key, "a robot account under another name: ignored"),
            Err(e) => tracing::warn!(%key, error = %e, "unreadable robot account: ignored"),
        }
    }
    Ok(snapshot)
}

/// Which document a change is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettingsOf {
    Repository,
    Namespace,
}

impl Registry {
    /// Every setting as of the last check against the store (for the
    /// policy's lookups, which cannot wait: [`Registry::fresh_settings`]
    /// runs before them on the request path).
    pub fn settings(&self) -> Arc<SettingsSnapshot> {
        self.settings.current()
    }

    /// Every setting, checked against the store at most `cache_ttl` ago:
    /// when the last check is older, this one reads the generation marker
    /// (and, when it moved, every document) before answering, and requests
    /// arriving meanwhile wait for that one read. A store that cannot be
    /// read leaves the last snapshot in force (the request then fails on
    /// its own reads, if it has any).
    pub async fn fresh_settings(&self) -> Arc<SettingsSnapshot> {
        let index = &self.settings;
        if index.is_stale(Instant::now()) {
            let _refreshing = index.refreshing.lock().await;
            if index.is_stale(Instant::now()) {
                if let Err(e) = index.refresh(self.storage.as_ref()).await {
                    tracing::warn!(error = %e, "reading repository settings failed");
                }
            }
        }
        index.current()
    }

    /// Loads the settings now (at the start, before serving, and after
    /// each change this process makes): one load at a time, so a slower
    /// load never replaces a newer snapshot.
    pub async fn load_settings(&self) -> Result<()> {
        let _loading = self.settings.refreshing.lock().await;
        self.settings
            .refresh(self.storage.as_ref())
            .await
            .map_err(storage_error)
    }

    /// Stores `change` as the settings of repository or namespace `name`,
    /// changed by `by`, and puts them in force on this process at once.
    pub async fn put_settings(
        &self,
        of: SettingsOf,
        name: &RepositoryName,
        change: SettingsChange,
        by: &str,
    ) -> Result<Settings> {
        change.validate()?;
        let settings = Settings {
            visibility: change.visibility,
            description: change.description,
            grants: change.grants,
            updated_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            updated_by: by.to_owned(),
        };
        let body = serde_json::to_vec_pretty(&settings).expect("settings serialize");
        let key = settings_key(of, name);
        self.store_settings_change(vec![(key, Bytes::from(body), WriteMode::Overwrite)])
            .await?;
        Ok(settings)
    }

    /// Removes the settings of repository or namespace `name`; whether
    /// there were any.
    pub async fn delete_settings(&self, of: SettingsOf, name: &RepositoryName) -> Result<bool> {
        let key = settings_key(of, name);
        let existed = self.storage.delete(&key).await.map_err(storage_error)?;
        self.store_settings_change(Vec::new()).await?;
        Ok(existed)
    }

    /// Stores a new robot account, refusing a name already taken
    /// (`AlreadyExists`: of two replicas creating the same name at once, the
    /// store's create-if-absent lets one win).
    pub async fn create_robot_account(&self, account: &RobotAccount) -> Result<()> {
        self.write_robot_account(account, WriteMode::CreateIfAbsent)
            .await
    }

    /// Replaces robot account `previous` by `account` (a new secret): 404
    /// when it is gone, `AlreadyExists` when it changed since `previous`
    /// was read (revoked and made again, renewed meanwhile). Read just
    /// before the write: a change in between is not seen (the store has no
    /// compare-and-swap every backend honours), a window of one request.
    pub async fn replace_robot_account(
        &self,
        previous: &RobotAccount,
        account: &RobotAccount,
    ) -> Result<()> {
        let key = self.robot_key(&account.name)?;
        let stored = self.storage.get(&key).await.map_err(storage_error)?;
        let Some(stored) = stored else {
            return Err(no_robot(&account.name));
        };
        if serde_json::from_slice::<RobotAccount>(&stored)
            .ok()
            .as_ref()
            != Some(previous)
        {
            return Err(RegistryError::with_detail(
                ErrorCode::AlreadyExists,
                format!("robot {:?} changed meanwhile: try again", account.name),
            ));
        }
        self.write_robot_account(account, WriteMode::Overwrite)
            .await
    }

    /// Removes robot account `name`: its secret stops working on this
    /// process at once and on other replicas within `cache_ttl`. Whether
    /// there was one.
    pub async fn delete_robot_account(&self, name: &str) -> Result<bool> {
        let key = self.robot_key(name)?;
        let existed = self.storage.delete(&key).await.map_err(storage_error)?;
        self.store_settings_change(Vec::new()).await?;
        Ok(existed)
    }

    fn robot_key(&self, name: &str) -> Result<String> {
        if !valid_robot_key(name) {
            return Err(RegistryError::with_detail(
                ErrorCode::ParameterInvalid,
                format!("invalid robot name {name:?}"),
            ));
        }
        Ok(layout::robot_account(name))
    }

    async fn write_robot_account(&self, account: &RobotAccount, mode: WriteMode) -> Result<()> {
        let key = self.robot_key(&account.name)?;
        let body = serde_json::to_vec_pretty(account).expect("a robot account serializes");
        let written = self
            .store_settings_change(vec![(key, Bytes::from(body), mode)])
            .await?;
        if written.first() == Some(&false) {
            return Err(RegistryError::with_detail(
                ErrorCode::AlreadyExists,
                format!("a robot named {:?} already exists", account.name),
            ));
        }
        Ok(())
    }

    /// Writes `docs`, then a new generation marker (so other replicas
    /// reload), then reloads this process's snapshot.
    /// Whether each of `docs` was written, in order (a `CreateIfAbsent`
    /// one is not when it existed).
    async fn store_settings_change(
        &self,
        mut docs: Vec<(String, Bytes, WriteMode)>,
    ) -> Result<Vec<bool>> {
        let generation = uuid::Uuid::new_v4().to_string();
        docs.push((
            layout::SETTINGS_GENERATION.to_owned(),
            Bytes::from(generation),
            WriteMode::Overwrite,
        ));
        let written = self.storage.put_chain(docs).await.map_err(storage_error)?;
        self.load_settings().await?;
        Ok(written)
    }
}

fn no_robot(name: &str) -> RegistryError {
    RegistryError::with_detail(ErrorCode::NameUnknown, format!("no robot named {name:?}"))
}

fn settings_key(of: SettingsOf, name: &RepositoryName) -> String {
    match of {
        SettingsOf::Repository => layout::repository_settings(name),
        SettingsOf::Namespace => layout::namespace_settings(name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(subject: &str) -> SettingsGrant {
        SettingsGrant {
            subject: subject.to_owned(),
            actions: vec!["pull".to_owned()],
        }
    }

    #[test]
    fn subjects_are_a_kind_and_a_plain_name() {
        assert_eq!(
            grant("user:bob").subject(),
            Some((SubjectKind::User, "bob"))
        );
        assert_eq!(
            grant("group:team-a").subject(),
            Some((SubjectKind::Group, "team-a"))
        );
        assert_eq!(
            grant("robot:ci").subject(),
            Some((SubjectKind::Robot, "ci"))
        );
        for bad in [
            "bob",
            "admin:bob",
            "user:",
            "user:a b",
            "user:a/b",
            "user:a:b",
        ] {
            assert_eq!(grant(bad).subject(), None, "{bad}");
        }
    }

    #[test]
    fn a_change_is_checked_before_it_is_stored() {
        let ok = SettingsChange {
            grants: vec![grant("user:bob")],
            ..SettingsChange::default()
        };
        assert!(ok.validate().is_ok());
        let no_action = SettingsChange {
            grants: vec![SettingsGrant {
                subject: "user:bob".to_owned(),
                actions: vec![],
            }],
            ..SettingsChange::default()
        };
        assert!(no_action.validate().is_err());
        let long = SettingsChange {
            description: "x".repeat(MAX_DESCRIPTION + 1),
            ..SettingsChange::default()
        };
        assert!(long.validate().is_err());
    }

    #[test]
    fn a_name_lies_in_each_namespace_that_prefixes_it_by_whole_segments() {
        let mut snapshot = SettingsSnapshot::default();
        for namespace in ["team", "team/tools", "tea"] {
            snapshot.namespaces.insert(
                namespace.to_owned(),
                Settings {
                    visibility: Visibility::Private,
                    description: String::new(),
                    grants: Vec::new(),
                    updated_at: String::new(),
                    updated_by: String::new(),
                },
            );
        }
        let name = RepositoryName::parse("team/tools/app").unwrap();
        let found: Vec<&str> = snapshot.namespaces_of(&name).map(|(n, _)| n).collect();
        assert_eq!(found, ["team", "team/tools"]);
        let top = RepositoryName::parse("team").unwrap();
        assert_eq!(snapshot.namespaces_of(&top).count(), 0);
    }
}
