//! Robot accounts: credentials for CI with their own grants and an optional
//! expiry.
//!
//! A robot `ci` logs in (e.g. `docker login -u 'robot$ci'`) with the user
//! name `robot$ci` (Harbor's convention; `$` cannot start an htpasswd user
//! name here, so the two never collide) and the secret printed once by
//! `berth robot create`. The secret is 32 random bytes, base64url; the store
//! keeps only its SHA-256 (enough for a high-entropy secret; checked in
//! constant time).
//!
//! The store is one JSON file (default `<data_dir>/berth/robots.json`),
//! replaced atomically on every change:
//!
//! ```json
//! {"robots": [{"name": "ci", "secret_sha256": "<hex>",
//!              "grants": ["team-a/*:pull,push"],
//!              "created_at": 1700000000, "expires_at": 1707776000}]}
//! ```
//!
//! **Changes by another process take effect at once**: every
//! [`RobotStore::authenticate`] stats the file and re-reads it when its inode,
//! length or mtime changed, so `berth robot revoke` on the command line locks
//! a robot out of a running server with its next login. (Bearer tokens
//! already issued to it stay valid until they expire, at most the token TTL.)
//! If the file cannot be read or parsed, every robot is refused until it can.
//! Revoking removes the entry. Two processes changing the file at the same
//! moment are not serialized: the later rename wins.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::files::{self, FileStamp};
pub use super::identity::{is_robot_user, user_name, USER_PREFIX};

use super::identity::{Grant, Identity};
use super::{from_unix_secs, unix_secs, AuthError, Secret};

/// The store holds only hashes, but they are still nobody else's business.
const NEW_FILE_MODE: u32 = 0o600;

/// A robot as `berth robot list` shows it (no secret, no hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Robot {
    pub name: String,
    pub grants: Vec<Grant>,
    pub created_at: SystemTime,
    pub expires_at: Option<SystemTime>,
}

impl Robot {
    pub fn is_expired(&self, now: SystemTime) -> bool {
        self.expires_at.is_some_and(|t| now >= t)
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct StoreFile {
    robots: Vec<StoredRobot>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredRobot {
    name: String,
    secret_sha256: String,
    grants: Vec<String>,
    created_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_at: Option<u64>,
}

/// A robot and the hash its secret is checked against, from either store.
/// `Debug` shows no hash.
#[derive(Clone)]
pub struct KeptRobot {
    pub robot: Robot,
    pub secret_sha256: [u8; 32],
    /// When the current secret was set (its creation, or its last renewal):
    /// a session token issued before it was got with another secret.
    pub secret_since: SystemTime,
}

impl std::fmt::Debug for KeptRobot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeptRobot")
            .field("robot", &self.robot)
            .finish_non_exhaustive()
    }
}

impl KeptRobot {
    /// The robot's identity, when `secret` is its secret (compared in
    /// constant time) and it has not expired by `now`.
    pub fn login(&self, secret: &str, now: SystemTime) -> Option<Identity> {
        let offered: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        if !bool::from(self.secret_sha256.ct_eq(&offered)) {
            return None;
        }
        if self.robot.is_expired(now) {
            tracing::info!(robot = %self.robot.name, "refused an expired robot");
            return None;
        }
        Some(Identity::Robot {
            name: self.robot.name.clone(),
            grants: self.robot.grants.clone(),
        })
    }
}

/// Robot accounts kept outside the robot file: those made through the
/// registry's API, stored with its settings so that every replica sees them
/// (the http layer feeds them in). The file's robots come first: the API
/// refuses a name the file has, but `berth robot create` cannot see the
/// API's, and a file robot then shadows the API's robot of its name.
pub trait RobotSource: Send + Sync + std::fmt::Debug {
    fn robot(&self, name: &str) -> Option<KeptRobot>;
}

/// A new robot secret (32 random bytes, base64url) and the SHA-256 a store
/// keeps of it.
pub fn new_secret() -> (Secret, [u8; 32]) {
    let secret = Secret::new(
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(super::random_bytes::<32>()),
    );
    let hash = Sha256::digest(secret.expose().as_bytes()).into();
    (secret, hash)
}

#[derive(Debug, Default)]
struct Loaded {
    /// `None`: the file did not exist (or could not be read).
    stamp: Option<FileStamp>,
    robots: BTreeMap<String, KeptRobot>,
}

/// The robot accounts in one JSON file. Share it (`Arc`); methods take
/// `&self`. `Debug` shows no hashes.
pub struct RobotStore {
    path: PathBuf,
    loaded: Mutex<Loaded>,
}

impl RobotStore {
    /// Opens the store; a missing file is an empty store (created by the
    /// first [`RobotStore::create`]). A file that exists but does not parse
    /// is an error.
    pub fn open(path: &Path) -> Result<RobotStore, AuthError> {
        let loaded = load(path)?;
        Ok(RobotStore {
            path: path.to_owned(),
            loaded: Mutex::new(loaded),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates robot `name` with `grants`, valid until `expires_at` (never
    /// if `None`), and returns its secret: show it once, it is not kept.
    pub fn create(
        &self,
        name: &str,
        grants: Vec<Grant>,
        expires_at: Option<SystemTime>,
    ) -> Result<Secret, AuthError> {
        validate_name(name)?;
        let (secret, secret_sha256) = new_secret();
        let created_at = from_unix_secs(unix_secs(SystemTime::now()));
        let entry = KeptRobot {
            robot: Robot {
                name: name.to_owned(),
                grants,
                created_at,
                expires_at: expires_at.map(|t| from_unix_secs(unix_secs(t))),
            },
            secret_sha256,
            secret_since: created_at,
        };
        self.change(|robots| {
            if robots.contains_key(name) {
                return Err(AuthError::RobotExists(name.to_owned()));
            }
            robots.insert(name.to_owned(), entry);
            Ok(())
        })?;
        Ok(secret)
    }

    /// Every robot, expired ones included, sorted by name.
    pub fn list(&self) -> Result<Vec<Robot>, AuthError> {
        let loaded = load(&self.path)?;
        let robots = loaded.robots.values().map(|e| e.robot.clone()).collect();
        *self.lock() = loaded;
        Ok(robots)
    }

    /// Deletes robot `name`: its secret stops working at once, here and in
    /// every server watching the file.
    pub fn revoke(&self, name: &str) -> Result<(), AuthError> {
        self.change(|robots| match robots.remove(name) {
            Some(_) => Ok(()),
            None => Err(AuthError::RobotNotFound(name.to_owned())),
        })
    }

    /// Checks a login as `robot$NAME` with its secret. `None` for unknown,
    /// revoked or expired robots, wrong secrets and other user names. Cheap
    /// (one SHA-256 and a stat), but may re-read the file.
    pub fn authenticate(&self, user: &str, secret: &str) -> Option<Identity> {
        self.authenticate_at(user, secret, SystemTime::now())
    }

    fn authenticate_at(&self, user: &str, secret: &str, now: SystemTime) -> Option<Identity> {
        self.kept(user.strip_prefix(USER_PREFIX)?)?
            .login(secret, now)
    }

    /// Robot `name` as the file has it now (re-read when it changed).
    pub fn kept(&self, name: &str) -> Option<KeptRobot> {
        let mut loaded = self.lock();
        self.refresh(&mut loaded);
        loaded.robots.get(name).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Loaded> {
        self.loaded.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Re-reads the file if it changed; on failure, refuses every robot.
    fn refresh(&self, loaded: &mut Loaded) {
        match files::stamp(&self.path) {
            Ok(stamp) if stamp == loaded.stamp => return,
            _ => {}
        }
        match load(&self.path) {
            Ok(fresh) => {
                tracing::info!(path = %self.path.display(), robots = fresh.robots.len(), "reloaded robot accounts");
                *loaded = fresh;
            }
            Err(e) => {
                tracing::error!(error = %e, "robot store unreadable: refusing all robots until it is fixed");
                // A stamp no file has: retried on the next login.
                *loaded = Loaded {
                    stamp: None,
                    robots: BTreeMap::new(),
                };
            }
        }
    }

    /// Read-modify-write from the file as it is now (not the cache), so
    /// changes made by other processes in between are kept.
    fn change(
        &self,
        edit: impl FnOnce(&mut BTreeMap<String, KeptRobot>) -> Result<(), AuthError>,
    ) -> Result<(), AuthError> {
        let mut loaded = self.lock();
        let mut current = load(&self.path)?;
        edit(&mut current.robots)?;
        let file = StoreFile {
            robots: current
                .robots
                .values()
                .map(|e| StoredRobot {
                    name: e.robot.name.clone(),
                    secret_sha256: hex::encode(e.secret_sha256),
                    grants: e.robot.grants.iter().map(Grant::to_string).collect(),
                    created_at: unix_secs(e.robot.created_at),
                    expires_at: e.robot.expires_at.map(unix_secs),
                })
                .collect(),
        };
        let mut json = serde_json::to_string_pretty(&file).expect("robot store serializes");
        json.push('\n');
        files::write_atomically(&self.path, json.as_bytes(), NEW_FILE_MODE)
            .map_err(|e| AuthError::io(&self.path, e))?;
        current.stamp = files::stamp(&self.path).ok().flatten();
        *loaded = current;
        Ok(())
    }
}

impl std::fmt::Debug for RobotStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RobotStore")
            .field("path", &self.path)
            // try_lock: Debug must not deadlock inside a change.
            .field(
                "robots",
                &self.loaded.try_lock().ok().map(|l| l.robots.len()),
            )
            .finish_non_exhaustive()
    }
}

fn load(path: &Path) -> Result<Loaded, AuthError> {
    let Some((stamp, text)) = files::read_with_stamp(path).map_err(|e| AuthError::io(path, e))?
    else {
        return Ok(Loaded::default());
    };
    let bad = |reason: String| AuthError::BadFile {
        path: path.to_owned(),
        reason,
    };
    let file: StoreFile = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let mut robots = BTreeMap::new();
    for stored in file.robots {
        let mut secret_sha256 = [0u8; 32];
        hex::decode_to_slice(&stored.secret_sha256, &mut secret_sha256)
            .map_err(|_| bad(format!("robot {:?}: bad secret_sha256", stored.name)))?;
        let grants = stored
            .grants
            .iter()
            .map(|g| Grant::parse(g))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(format!("robot {:?}: {e}", stored.name)))?;
        let robot = Robot {
            name: stored.name.clone(),
            grants,
            created_at: from_unix_secs(stored.created_at),
            expires_at: stored.expires_at.map(from_unix_secs),
        };
        robots.insert(
            stored.name,
            KeptRobot {
                secret_since: robot.created_at,
                robot,
                secret_sha256,
            },
        );
    }
    Ok(Loaded {
        stamp: Some(stamp),
        robots,
    })
}

/// Robot names: 1-64 of lowercase letters and digits, with single `.`, `_`
/// or `-` between them.
pub fn validate_name(name: &str) -> Result<(), AuthError> {
    let bytes = name.as_bytes();
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let separators_ok = bytes.windows(2).all(|w| alnum(&w[0]) || alnum(&w[1]));
    let ok = (1..=64).contains(&bytes.len())
        && bytes.first().is_some_and(alnum)
        && bytes.last().is_some_and(alnum)
        && bytes.iter().all(|b| alnum(b) || b"._-".contains(b))
        && separators_ok;
    if ok {
        Ok(())
    } else {
        Err(AuthError::InvalidRobotName(name.to_owned()))
    }
}

/// The longest lifetime a robot is given: beyond it "never" is meant (and
/// adding a larger one to the time now could overflow).
pub const MAX_LIFETIME: Duration = Duration::from_secs(100 * 366 * 86_400);

/// Parses a lifetime like `90d`, `12h`, `30m`, `45s`, `2w` or `1d 12h` (for
/// `--expires`), with humantime, as the CLI's other durations. Zero is
/// refused (a robot that expires as it is made is a typo), and so is more
/// than [`MAX_LIFETIME`].
pub fn parse_duration(s: &str) -> Result<Duration, AuthError> {
    match humantime::parse_duration(s.trim()) {
        Ok(d) if !d.is_zero() && d <= MAX_LIFETIME => Ok(d),
        _ => Err(AuthError::InvalidDuration(s.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::scope::Action;
    use crate::oci::RepositoryName;

    fn store() -> (tempfile::TempDir, RobotStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = RobotStore::open(&dir.path().join("berth/robots.json")).unwrap();
        (dir, store)
    }

    fn grants(list: &[&str]) -> Vec<Grant> {
        list.iter().map(|g| Grant::parse(g).unwrap()).collect()
    }

    #[test]
    fn a_created_robot_logs_in_with_its_secret_only() {
        let (_dir, store) = store();
        let secret = store
            .create("ci", grants(&["team-a/*:pull,push"]), None)
            .unwrap();
        assert_eq!(secret.expose().len(), 43);
        let identity = store.authenticate("robot$ci", secret.expose()).unwrap();
        assert_eq!(
            identity,
            Identity::Robot {
                name: "ci".into(),
                grants: grants(&["team-a/*:pull,push"])
            }
        );
        assert!(store.authenticate("robot$ci", "wrong").is_none());
        assert!(store.authenticate("ci", secret.expose()).is_none());
        assert!(store.authenticate("robot$other", secret.expose()).is_none());
        let mut tampered = secret.expose().to_owned();
        tampered.pop();
        assert!(store.authenticate("robot$ci", &tampered).is_none());
    }

    #[test]
    fn the_store_keeps_a_hash_never_the_secret() {
        let (_dir, store) = store();
        let secret = store.create("ci", grants(&["a:pull"]), None).unwrap();
        let text = std::fs::read_to_string(store.path()).unwrap();
        assert!(!text.contains(secret.expose()));
        let expected = hex::encode(Sha256::digest(secret.expose().as_bytes()));
        assert!(text.contains(&expected));
        assert!(!format!("{secret:?}").contains(secret.expose()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(store.path())
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn secrets_differ_between_robots() {
        let (_dir, store) = store();
        let a = store.create("a", vec![], None).unwrap();
        let b = store.create("b", vec![], None).unwrap();
        assert_ne!(a.expose(), b.expose());
        assert!(store.authenticate("robot$a", b.expose()).is_none());
    }

    #[test]
    fn list_shows_robots_without_secrets_and_revoke_removes_them() {
        let (_dir, store) = store();
        let expiry = SystemTime::now() + Duration::from_secs(3600);
        let secret = store
            .create("ci", grants(&["a/*:pull"]), Some(expiry))
            .unwrap();
        store.create("backup", grants(&["*:pull"]), None).unwrap();
        let robots = store.list().unwrap();
        let names: Vec<&str> = robots.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["backup", "ci"]);
        assert_eq!(
            robots[1].expires_at,
            Some(from_unix_secs(unix_secs(expiry)))
        );
        assert_eq!(robots[0].expires_at, None);

        store.revoke("ci").unwrap();
        assert!(store.authenticate("robot$ci", secret.expose()).is_none());
        assert_eq!(store.list().unwrap().len(), 1);
        assert!(matches!(
            store.revoke("ci"),
            Err(AuthError::RobotNotFound(_))
        ));
    }

    #[test]
    fn names_must_be_valid_and_unique() {
        let (_dir, store) = store();
        store.create("ci", vec![], None).unwrap();
        assert!(matches!(
            store.create("ci", vec![], None),
            Err(AuthError::RobotExists(_))
        ));
        for bad in [
            "",
            "CI",
            "a$b",
            "-a",
            "a-",
            "a..b",
            "a/b",
            "a b",
            &"a".repeat(65),
        ] {
            assert!(
                matches!(
                    store.create(bad, vec![], None),
                    Err(AuthError::InvalidRobotName(_))
                ),
                "{bad:?} accepted"
            );
        }
        for good in ["a", "ci-bot", "team_a.ci", &"a".repeat(64)] {
            validate_name(good).unwrap();
        }
    }

    #[test]
    fn expired_robots_are_refused() {
        let (_dir, store) = store();
        let now = SystemTime::now();
        let expiry = now + Duration::from_secs(60);
        let secret = store.create("ci", vec![], Some(expiry)).unwrap();
        assert!(store
            .authenticate_at("robot$ci", secret.expose(), now)
            .is_some());
        let later = expiry + Duration::from_secs(1);
        assert!(store
            .authenticate_at("robot$ci", secret.expose(), later)
            .is_none());
        let past = store
            .create("old", vec![], Some(now - Duration::from_secs(1)))
            .unwrap();
        assert!(store.authenticate("robot$old", past.expose()).is_none());
        assert!(store.list().unwrap()[1].is_expired(now));
    }

    #[test]
    fn a_running_server_sees_changes_made_by_another_process() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("robots.json");
        let server = RobotStore::open(&path).unwrap();
        // The CLI is another process: another store over the same file.
        let cli = RobotStore::open(&path).unwrap();
        let secret = cli.create("ci", grants(&["a:pull"]), None).unwrap();
        assert!(server.authenticate("robot$ci", secret.expose()).is_some());
        cli.revoke("ci").unwrap();
        assert!(server.authenticate("robot$ci", secret.expose()).is_none());
        // Changes made through the server are kept by the CLI's next write.
        let second = server.create("two", vec![], None).unwrap();
        cli.create("three", vec![], None).unwrap();
        assert!(server.authenticate("robot$two", second.expose()).is_some());
        assert_eq!(cli.list().unwrap().len(), 2);
    }

    #[test]
    fn a_corrupt_store_refuses_every_robot() {
        let (_dir, store) = store();
        let secret = store.create("ci", vec![], None).unwrap();
        std::fs::write(store.path(), "{not json").unwrap();
        assert!(store.authenticate("robot$ci", secret.expose()).is_none());
        assert!(matches!(store.list(), Err(AuthError::BadFile { .. })));
        assert!(matches!(
            RobotStore::open(store.path()),
            Err(AuthError::BadFile { .. })
        ));
    }

    #[test]
    fn robot_grants_flow_into_the_policy() {
        let (_dir, store) = store();
        let secret = store
            .create("ci", grants(&["team-a/*:push"]), None)
            .unwrap();
        let robot = store.authenticate("robot$ci", secret.expose()).unwrap();
        let policy = crate::auth::Policy::from_config(&Default::default()).unwrap();
        let repo = RepositoryName::parse("team-a/app").unwrap();
        assert!(policy.allowed(&robot, &repo, Action::Push));
        assert!(!policy.allowed(&robot, &repo, Action::Pull));
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(
            parse_duration("90d").unwrap(),
            Duration::from_secs(90 * 86_400)
        );
        assert_eq!(parse_duration("12h").unwrap(), Duration::from_secs(43_200));
        assert_eq!(parse_duration("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_duration("45s").unwrap(), Duration::from_secs(45));
        assert_eq!(
            parse_duration("2w").unwrap(),
            Duration::from_secs(14 * 86_400)
        );
        assert_eq!(
            parse_duration("1d 12h").unwrap(),
            Duration::from_secs(36 * 3600)
        );
        // Past a century, or past what a clock can add: refused, not a panic.
        assert!(parse_duration("99y").is_ok());
        assert!(parse_duration("101y").is_err());
        assert!(parse_duration("300000000000y").is_err());
        assert_eq!(
            parse_duration("1.5d").unwrap(),
            Duration::from_secs(36 * 3600)
        );
        for bad in ["", "d", "90", "0d", "-1d", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
    }
}
