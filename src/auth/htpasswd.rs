//! Users from an Apache htpasswd file, bcrypt entries only.
//!
//! The format is what `htpasswd -B` writes: one `user:hash` per line, the hash
//! `$2y$` (also accepted: `$2a$`, `$2b$`) followed by the cost and 53
//! characters of salt and hash. Blank lines and lines starting with `#` are
//! skipped; when a user appears twice the first line counts (as in Apache).
//!
//! **Other hash kinds are refused**: MD5 (`$apr1$`), SHA-1 (`{SHA}`), crypt
//! and plain text are weak, so such a user cannot log in; loading logs a
//! warning naming the user. Re-create them with `berth user add`.
//!
//! **Changes are picked up** without a restart: every [`Htpasswd::verify`]
//! stats the file (one syscall, nothing next to bcrypt) and re-reads it when
//! its inode, length or mtime changed. If the file becomes unreadable or
//! disappears, nobody can log in until it is back (fail closed).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};

use super::files::{self, FileStamp};
use super::AuthError;

/// The bcrypt cost `berth user add` uses unless told otherwise. `htpasswd -B`
/// defaults to 5, which is too cheap today; 10 takes ~50-100 ms a check.
pub const DEFAULT_COST: u32 = 10;

/// Mode of a newly created htpasswd file: readable by the owner only.
const NEW_FILE_MODE: u32 = 0o600;

/// What [`Htpasswd::add_or_update_user`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserChange {
    Added,
    Updated,
}

#[derive(Debug)]
enum Entry {
    /// A bcrypt hash (not secret enough to hide, but never logged).
    Bcrypt(String),
    /// A hash of a kind we refuse.
    Unusable,
}

#[derive(Debug, Default)]
struct Users {
    stamp: Option<FileStamp>,
    entries: HashMap<String, Entry>,
    /// The cost of the first bcrypt entry: what a check for an unknown user
    /// pays too, so timing does not tell which users exist.
    typical_cost: Option<u32>,
}

/// An htpasswd file, re-read when it changes. Share it (`Arc`) between
/// requests; all methods take `&self`. `Debug` shows no hashes.
pub struct Htpasswd {
    path: PathBuf,
    users: RwLock<Users>,
    /// A hash of a random password at some cost, for unknown users.
    dummy: Mutex<Option<(u32, String)>>,
}

impl Htpasswd {
    /// Reads the file. Unlike later reloads, a missing or unreadable file is
    /// an error here: a typo in the config should stop the server.
    pub fn load(path: &Path) -> Result<Htpasswd, AuthError> {
        let (stamp, text) = files::read_with_stamp(path)
            .map_err(|e| AuthError::io(path, e))?
            .ok_or_else(|| {
                AuthError::io(path, std::io::Error::from(std::io::ErrorKind::NotFound))
            })?;
        let mut users = parse(&text, path);
        users.stamp = Some(stamp);
        Ok(Htpasswd {
            path: path.to_owned(),
            users: RwLock::new(users),
            dummy: Mutex::new(None),
        })
    }

    /// Does `password` belong to `user`? False for unknown users and refused
    /// hash kinds.
    ///
    /// **CPU-heavy and blocking**: a bcrypt check takes milliseconds to
    /// hundreds of milliseconds depending on the cost, and the file may be
    /// re-read. From async code, call it inside `spawn_blocking`.
    pub fn verify(&self, user: &str, password: &str) -> bool {
        self.refresh();
        let (hash, cost) = {
            let users = self.users.read().unwrap_or_else(|e| e.into_inner());
            match users.entries.get(user) {
                Some(Entry::Bcrypt(hash)) => (Some(hash.clone()), None),
                _ => (None, Some(users.typical_cost.unwrap_or(DEFAULT_COST))),
            }
        };
        match hash {
            Some(hash) => bcrypt::verify(password, &hash).unwrap_or(false),
            None => {
                // Spend the same time as for a real user, then refuse.
                let dummy = self.dummy_hash(cost.unwrap_or(DEFAULT_COST));
                let _ = bcrypt::verify(password, &dummy);
                false
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Is `user` in the file with a usable (bcrypt) entry?
    pub fn contains(&self, user: &str) -> bool {
        self.refresh();
        let users = self.users.read().unwrap_or_else(|e| e.into_inner());
        matches!(users.entries.get(user), Some(Entry::Bcrypt(_)))
    }

    /// Sets `user`'s password in the file at `path` (created if missing),
    /// hashing it with bcrypt at `cost` in the `$2y$` form Apache writes.
    /// Other lines, comments included, are kept as they are; the file is
    /// replaced atomically. CPU-heavy like `verify`.
    ///
    /// Two processes changing the file at the same moment are not serialized:
    /// the later rename wins.
    pub fn add_or_update_user(
        path: &Path,
        user: &str,
        password: &str,
        cost: u32,
    ) -> Result<UserChange, AuthError> {
        validate_user_name(user)?;
        validate_password(password)?;
        if !(4..=31).contains(&cost) {
            return Err(AuthError::InvalidCost(cost));
        }
        let hash = bcrypt::hash_with_result(password, cost)
            .map_err(|e| AuthError::Signing(e.to_string()))?
            .format_for_version(bcrypt::Version::TwoY);
        let text = read_or_empty(path)?;
        let new_line = format!("{user}:{hash}");
        let mut change = UserChange::Added;
        let mut lines: Vec<&str> = text.lines().collect();
        for line in lines.iter_mut() {
            if line_user(line) == Some(user) {
                *line = &new_line;
                change = UserChange::Updated;
                break;
            }
        }
        if change == UserChange::Added {
            lines.push(&new_line);
        }
        write_lines(path, &lines)?;
        Ok(change)
    }

    /// Removes every line of `user` from the file; false if there was none.
    pub fn remove_user(path: &Path, user: &str) -> Result<bool, AuthError> {
        let text = read_or_empty(path)?;
        let lines: Vec<&str> = text.lines().collect();
        let kept: Vec<&str> = lines
            .iter()
            .copied()
            .filter(|line| line_user(line) != Some(user))
            .collect();
        if kept.len() == lines.len() {
            return Ok(false);
        }
        write_lines(path, &kept)?;
        Ok(true)
    }

    /// Re-reads the file if it changed since it was last read.
    fn refresh(&self) {
        let current = files::stamp(&self.path);
        {
            let users = self.users.read().unwrap_or_else(|e| e.into_inner());
            if matches!(&current, Ok(Some(s)) if users.stamp == Some(*s)) {
                return;
            }
        }
        let mut users = self.users.write().unwrap_or_else(|e| e.into_inner());
        match files::read_with_stamp(&self.path) {
            Ok(Some((stamp, text))) => {
                if users.stamp != Some(stamp) {
                    *users = parse(&text, &self.path);
                    users.stamp = Some(stamp);
                    tracing::info!(path = %self.path.display(), users = users.entries.len(), "reloaded htpasswd");
                }
            }
            Ok(None) | Err(_) => {
                if users.stamp.is_some() || !users.entries.is_empty() {
                    tracing::error!(path = %self.path.display(), "htpasswd file is gone or unreadable: refusing all users until it is back");
                }
                *users = Users::default();
            }
        }
    }

    fn dummy_hash(&self, cost: u32) -> String {
        let mut dummy = self.dummy.lock().unwrap_or_else(|e| e.into_inner());
        match &*dummy {
            Some((c, hash)) if *c == cost => hash.clone(),
            _ => {
                let password = hex::encode(super::random_bytes::<16>());
                let hash = bcrypt::hash(password, cost.clamp(4, 31)).unwrap_or_default();
                *dummy = Some((cost, hash.clone()));
                hash
            }
        }
    }
}

impl std::fmt::Debug for Htpasswd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // try_read: Debug must not deadlock inside a reload.
        let users = self.users.try_read().ok().map(|u| u.entries.len());
        f.debug_struct("Htpasswd")
            .field("path", &self.path)
            .field("users", &users)
            .finish_non_exhaustive()
    }
}

/// A user name the htpasswd format and our logins can carry: not empty, at
/// most 255 bytes, no `:` (the separator), no control characters (a newline
/// would inject a line), no leading `#` (a comment to Apache), and not
/// starting with `robot$` (robot accounts' names).
pub fn validate_user_name(user: &str) -> Result<(), AuthError> {
    let reason = if user.is_empty() {
        "empty"
    } else if user.len() > 255 {
        "longer than 255 bytes"
    } else if user.contains(':') {
        "contains ':'"
    } else if user.chars().any(char::is_control) {
        "contains a control character (newline?)"
    } else if user.starts_with('#') {
        "starts with '#'"
    } else if user.trim() != user {
        "starts or ends with whitespace"
    } else if super::identity::is_robot_user(user) {
        "'robot$' names are for robot accounts"
    } else {
        return Ok(());
    };
    Err(AuthError::InvalidUserName(reason.to_owned()))
}

fn validate_password(password: &str) -> Result<(), AuthError> {
    if password.is_empty() {
        return Err(AuthError::InvalidPassword("empty"));
    }
    if password.len() > 72 {
        // bcrypt ignores everything after 72 bytes: refuse rather than
        // silently accept a longer password's tail as anything.
        return Err(AuthError::InvalidPassword(
            "longer than 72 bytes (bcrypt's limit)",
        ));
    }
    if password.contains(['\n', '\r']) {
        return Err(AuthError::InvalidPassword("contains a newline"));
    }
    Ok(())
}

fn parse(text: &str, path: &Path) -> Users {
    let mut users = Users::default();
    for (number, raw) in text.lines().enumerate() {
        let line = raw.trim_end_matches('\r');
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((user, hash)) = line.split_once(':') else {
            tracing::warn!(path = %path.display(), line = number + 1, "htpasswd line without ':' ignored");
            continue;
        };
        if users.entries.contains_key(user) {
            tracing::warn!(path = %path.display(), user, "user appears twice in htpasswd; the first line counts");
            continue;
        }
        let entry = match bcrypt_cost(hash) {
            Some(cost) => {
                users.typical_cost.get_or_insert(cost);
                Entry::Bcrypt(hash.to_owned())
            }
            None => {
                tracing::warn!(path = %path.display(), user, "htpasswd entry is not bcrypt ($2y$/$2a$/$2b$): this user cannot log in; re-create it with `berth user add`");
                Entry::Unusable
            }
        };
        users.entries.insert(user.to_owned(), entry);
    }
    users
}

/// The cost of a well-formed `$2y$`/`$2a$`/`$2b$` hash.
fn bcrypt_cost(hash: &str) -> Option<u32> {
    let rest = ["$2y$", "$2a$", "$2b$"]
        .iter()
        .find_map(|prefix| hash.strip_prefix(prefix))?;
    let (cost, salt_and_hash) = rest.split_once('$')?;
    let valid_chars = salt_and_hash
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'/');
    if cost.len() != 2 || salt_and_hash.len() != 53 || !valid_chars {
        return None;
    }
    cost.parse().ok().filter(|c| (4..=31).contains(c))
}

/// The user a line is for, if it is an entry.
fn line_user(line: &str) -> Option<&str> {
    if line.starts_with('#') {
        return None;
    }
    line.split_once(':').map(|(user, _)| user)
}

fn read_or_empty(path: &Path) -> Result<String, AuthError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(AuthError::io(path, e)),
    }
}

fn write_lines(path: &Path, lines: &[&str]) -> Result<(), AuthError> {
    let mut out = String::new();
    for line in lines {
        out.push_str(line);
        out.push('\n');
    }
    files::write_atomically(path, out.as_bytes(), NEW_FILE_MODE).map_err(|e| AuthError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Written by `htpasswd -nbB alice 'correct horse'` (Apache 2.4).
    const APACHE_ALICE: &str = "alice:$2y$05$8qsf0SDbmR/S6BDxT6OxJeqm4HoexLTdLyLhV7CAzQlhCyTXRvNmS";
    /// Written by `htpasswd -nbB -C 10 bob 's3cret:with:colons'`.
    const APACHE_BOB: &str = "bob:$2y$10$YrlaGKG0Cgqfy0mKZiRpP.2Y30CuRgi4x3svxk8J4GH6r6jDpibJ2";
    /// `htpasswd -nbm carol md5pw` and `htpasswd -nbs dave shapw`.
    const APACHE_MD5: &str = "carol:$apr1$YDGPEXxw$Kydi5uB24dQC4yzd/.o5Q.";
    const APACHE_SHA: &str = "dave:{SHA}qs67vlse11GdWHE+bbh7CYDxCOs=";

    fn file_with(lines: &[&str]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("htpasswd");
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        (dir, path)
    }

    #[test]
    fn verifies_passwords_hashed_by_apache_htpasswd() {
        let (_dir, path) = file_with(&[APACHE_ALICE, APACHE_BOB]);
        let users = Htpasswd::load(&path).unwrap();
        assert!(users.verify("alice", "correct horse"));
        assert!(!users.verify("alice", "correct horse "));
        assert!(!users.verify("alice", "Correct horse"));
        assert!(users.verify("bob", "s3cret:with:colons"));
        assert!(!users.verify("bob", "s3cret"));
        assert!(!users.verify("nobody", "correct horse"));
        assert!(users.contains("alice"));
    }

    #[test]
    fn accepts_2a_and_2b_hashes_from_the_bcrypt_crate() {
        let parts = bcrypt::hash_with_result("pw-2a", 4).unwrap();
        let line_2a = format!("erin:{}", parts.format_for_version(bcrypt::Version::TwoA));
        let line_2b = format!("frank:{}", bcrypt::hash("pw-2b", 4).unwrap());
        assert!(line_2a.starts_with("erin:$2a$04$"));
        assert!(line_2b.starts_with("frank:$2b$04$"));
        let (_dir, path) = file_with(&[&line_2a, &line_2b]);
        let users = Htpasswd::load(&path).unwrap();
        assert!(users.verify("erin", "pw-2a"));
        assert!(users.verify("frank", "pw-2b"));
        assert!(!users.verify("frank", "pw-2a"));
    }

    #[test]
    fn non_bcrypt_entries_are_unusable() {
        let (_dir, path) = file_with(&[
            APACHE_MD5,
            APACHE_SHA,
            "eve:plaintext",
            "gus:$2x$05$8qsf0SDbmR/S6BDxT6OxJeqm4HoexLTdLyLhV7CAzQlhCyTXRvNmS",
        ]);
        let users = Htpasswd::load(&path).unwrap();
        assert!(!users.verify("carol", "md5pw"));
        assert!(!users.verify("dave", "shapw"));
        assert!(!users.verify("eve", "plaintext"));
        assert!(!users.verify("gus", "correct horse"));
        assert!(!users.contains("carol"));
    }

    #[test]
    fn comments_blank_lines_and_crlf_are_handled_and_the_first_entry_wins() {
        let line = format!("{APACHE_ALICE}\r");
        let dup = format!("alice:{}", bcrypt::hash("other", 4).unwrap());
        let (_dir, path) = file_with(&["# users", "", &line, &dup, "garbage-line"]);
        let users = Htpasswd::load(&path).unwrap();
        assert!(users.verify("alice", "correct horse"));
        assert!(!users.verify("alice", "other"));
        assert!(!users.contains("# users"));
    }

    #[test]
    fn a_missing_file_is_an_error_at_load() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            Htpasswd::load(&dir.path().join("nope")),
            Err(AuthError::Io { .. })
        ));
    }

    #[test]
    fn add_creates_the_file_and_update_keeps_other_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("conf/htpasswd");
        assert_eq!(
            Htpasswd::add_or_update_user(&path, "zoe", "first", 4).unwrap(),
            UserChange::Added
        );
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("zoe:$2y$04$"), "{text}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }

        std::fs::write(
            &path,
            format!("# team\n{APACHE_ALICE}\n{text}{APACHE_MD5}\n"),
        )
        .unwrap();
        assert_eq!(
            Htpasswd::add_or_update_user(&path, "zoe", "second", 4).unwrap(),
            UserChange::Updated
        );
        let after = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = after.lines().collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[0], "# team");
        assert_eq!(lines[1], APACHE_ALICE);
        assert!(lines[2].starts_with("zoe:$2y$04$"));
        assert_ne!(lines[2], text.trim_end());
        assert_eq!(lines[3], APACHE_MD5);

        let users = Htpasswd::load(&path).unwrap();
        assert!(users.verify("zoe", "second"));
        assert!(!users.verify("zoe", "first"));
        assert!(users.verify("alice", "correct horse"));
    }

    #[test]
    fn bad_user_names_passwords_and_costs_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("htpasswd");
        for bad in [
            "",
            "a:b",
            "a\nb",
            "a\rb",
            "#x",
            " x",
            "robot$ci",
            &"a".repeat(256),
        ] {
            assert!(
                matches!(
                    Htpasswd::add_or_update_user(&path, bad, "pw", 4),
                    Err(AuthError::InvalidUserName(_))
                ),
                "{bad:?} accepted"
            );
        }
        assert!(matches!(
            Htpasswd::add_or_update_user(&path, "ok", "", 4),
            Err(AuthError::InvalidPassword(_))
        ));
        assert!(matches!(
            Htpasswd::add_or_update_user(&path, "ok", &"p".repeat(73), 4),
            Err(AuthError::InvalidPassword(_))
        ));
        assert!(matches!(
            Htpasswd::add_or_update_user(&path, "ok", "pw", 3),
            Err(AuthError::InvalidCost(3))
        ));
        assert!(!path.exists(), "a refused change must not write");
        Htpasswd::add_or_update_user(&path, "ok.user@example.com", &"p".repeat(72), 4).unwrap();
    }

    #[test]
    fn a_running_server_sees_users_added_by_another_process() {
        let (_dir, path) = file_with(&[APACHE_ALICE]);
        let users = Htpasswd::load(&path).unwrap();
        assert!(!users.verify("newbie", "welcome"));
        Htpasswd::add_or_update_user(&path, "newbie", "welcome", 4).unwrap();
        assert!(users.verify("newbie", "welcome"));
        assert!(Htpasswd::remove_user(&path, "newbie").unwrap());
        assert!(!Htpasswd::remove_user(&path, "newbie").unwrap());
        assert!(!users.verify("newbie", "welcome"));
        assert!(users.verify("alice", "correct horse"));
    }

    #[test]
    fn a_vanished_file_refuses_everyone_until_it_is_back() {
        let (_dir, path) = file_with(&[APACHE_ALICE]);
        let users = Htpasswd::load(&path).unwrap();
        assert!(users.verify("alice", "correct horse"));
        let saved = path.with_extension("bak");
        std::fs::rename(&path, &saved).unwrap();
        assert!(!users.verify("alice", "correct horse"));
        std::fs::rename(&saved, &path).unwrap();
        assert!(users.verify("alice", "correct horse"));
    }

    #[test]
    fn unknown_users_pay_a_bcrypt_check_too() {
        let (_dir, path) = file_with(&[APACHE_BOB]);
        let users = Htpasswd::load(&path).unwrap();
        assert!(!users.verify("ghost", "x"));
        let dummy = users.dummy.lock().unwrap().clone().unwrap();
        assert_eq!(dummy.0, 10, "the dummy hash uses the file's cost");
        assert!(dummy.1.starts_with("$2b$10$"));
    }
}
