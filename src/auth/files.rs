//! The two file operations the stores share: replacing a file atomically, and
//! noticing that another process replaced it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::time::SystemTime;

/// Replaces `path` with `contents` so that readers see the old file or the
/// new one, never a part: a temp file beside it, fsynced, renamed into place,
/// then the directory fsynced. Keeps the permissions of the file it replaces;
/// a new file gets `new_file_mode` (Unix).
pub(crate) fn write_atomically(path: &Path, contents: &[u8], new_file_mode: u32) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file path"))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        hex::encode(super::random_bytes::<6>())
    ));
    let existing = match fs::metadata(path) {
        Ok(meta) => Some(meta.permissions()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    let result = (|| {
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(new_file_mode);
        }
        #[cfg(not(unix))]
        let _ = new_file_mode;
        let mut file = options.open(&tmp)?;
        if let Some(permissions) = existing {
            file.set_permissions(permissions)?;
        }
        file.write_all(contents)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    // The rename is durable only once the directory entry is.
    #[cfg(unix)]
    File::open(dir)?.sync_all()?;
    Ok(())
}

/// What identifies one version of a file cheaply: an atomic replacement
/// always changes the inode, and an edit in place the length or the mtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileStamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

/// The file's stamp, `None` when it does not exist.
pub(crate) fn stamp(path: &Path) -> io::Result<Option<FileStamp>> {
    match fs::metadata(path) {
        Ok(meta) => {
            #[cfg(unix)]
            let inode = std::os::unix::fs::MetadataExt::ino(&meta);
            #[cfg(not(unix))]
            let inode = 0;
            Ok(Some(FileStamp {
                len: meta.len(),
                modified: meta.modified().ok(),
                inode,
            }))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Reads a file and its stamp; a missing file is `None`. The stamp is taken
/// before reading, so a change during the read is seen next time.
pub(crate) fn read_with_stamp(path: &Path) -> io::Result<Option<(FileStamp, String)>> {
    let Some(stamp) = stamp(path)? else {
        return Ok(None);
    };
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some((stamp, text))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/file.txt");
        write_atomically(&path, b"one", 0o600).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "one");
        write_atomically(&path, b"two", 0o600).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "two");
        let entries: Vec<_> = fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(entries.len(), 1);
    }

    #[cfg(unix)]
    #[test]
    fn atomic_write_keeps_the_permissions_of_the_file_it_replaces() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        write_atomically(&path, b"a", 0o600).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        write_atomically(&path, b"b", 0o600).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o640
        );
    }

    #[test]
    fn stamps_change_when_a_file_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        assert_eq!(stamp(&path).unwrap(), None);
        write_atomically(&path, b"same", 0o600).unwrap();
        let first = stamp(&path).unwrap().unwrap();
        assert_eq!(stamp(&path).unwrap(), Some(first));
        // Same length, possibly the same mtime tick: the inode still differs.
        write_atomically(&path, b"SAME", 0o600).unwrap();
        assert_ne!(stamp(&path).unwrap(), Some(first));
    }
}
