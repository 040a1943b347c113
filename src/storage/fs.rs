//! The embedded default store: a directory tree, one file per key.
//!
//! Every write goes to a temporary file in the destination's directory, is
//! fsynced, then renamed (or hard-linked, for create-if-absent) into place and
//! the directory fsynced: a crash at any instant leaves the old object or the
//! new one under a real name, never a partial one. Temporary names start with
//! [`TEMP_PREFIX`], which no registry key segment can (names, tags, digests and
//! upload ids all start with an alphanumeric), and listings skip them.
//!
//! Small documents (links, manifests, history entries) skip the syncs when
//! the store owns its write-ahead journal ([`super::journal`]): they are
//! placed the same way, then a record of them is synced, shared with every
//! writer waiting at that moment. Blob content is synced in place.

use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use tokio::fs;

use super::journal::{self, ChangeRef, Journal, Tuning};
use super::{
    layout, page_of, ByteSource, ContentRead, DeferredDurability, Leftover, Leftovers, ListPage,
    LocalFile, LocalFiles, ObjectInfo, Storage, WriteMode,
};

pub const TEMP_PREFIX: &str = ".tmp-";

/// Blob reads go out in chunks of this size, one read ahead of the sender.
const READ_CHUNK: u64 = 512 * 1024;

/// With more blob reads than this in progress, each uses chunks of
/// [`BUSY_READ_CHUNK`]: throughput then comes from concurrency, and memory
/// (two chunks per read) stays at half of what large chunks would take.
const BUSY_READS: usize = 4;
const BUSY_READ_CHUNK: u64 = 256 * 1024;

/// Blob reads in progress, process-wide.
static ACTIVE_READS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Upload bytes are written in batches of about this size.
const UPLOAD_BATCH: usize = 512 * 1024;

/// How far file times may lag the system clock (Linux stamps files from a
/// coarse clock, a few milliseconds behind).
const TIMESTAMP_MARGIN: Duration = Duration::from_secs(1);

pub struct FsStorage {
    root: PathBuf,
    /// Names this boot of the machine: upload content that was not fsynced
    /// survives a process crash (the page cache does) but not a reboot.
    boot_id: String,
    /// The write-ahead journal, once this process owns it.
    journal: std::sync::Arc<JournalSlot>,
    key_locks: std::sync::Arc<KeyLocks>,
}

impl FsStorage {
    /// `root` is the directory keys are relative to
    /// (`<data-dir>/docker/registry/v2`); it is created if missing. Redoes
    /// what the journal holds if the machine restarted since it was written.
    pub fn open(root: impl Into<PathBuf>) -> io::Result<FsStorage> {
        let boot_id = crate::sys::boot_id()
            // Without a boot id, every process start is a new generation:
            // uploads in progress are then lost on any restart, never trusted
            // wrongly, and the journal is always replayed.
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        FsStorage::open_as(root.into(), boot_id, Tuning::default())
    }

    /// [`FsStorage::open`] as if on the boot `boot_id`: tests name another
    /// boot to see what a machine restart replays.
    pub fn open_as(root: PathBuf, boot_id: String, tuning: Tuning) -> io::Result<FsStorage> {
        std::fs::create_dir_all(&root)?;
        let store = FsStorage {
            root,
            boot_id,
            journal: std::sync::Arc::new(JournalSlot {
                journal: std::sync::OnceLock::new(),
                retry_at: std::sync::Mutex::new(None),
                tuning,
            }),
            key_locks: std::sync::Arc::new(KeyLocks::new()),
        };
        if !store.take_journal()? {
            *store
                .journal
                .retry_at
                .lock()
                .unwrap_or_else(|p| p.into_inner()) =
                Some(std::time::Instant::now() + store.journal.tuning.retry_after);
        }
        Ok(store)
    }

    /// Takes the journal (redoing what it holds after a machine restart);
    /// false when another process holds it (a later write tries again).
    fn take_journal(&self) -> io::Result<bool> {
        let slot = &self.journal;
        let recovery = match Journal::open(&self.root, &self.boot_id, slot.tuning) {
            Ok(recovery) => recovery,
            // A store this process may not write needs no journal (its
            // writes fail anyway); a full disk has no room for one, and
            // writes sync themselves.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ReadOnlyFilesystem
                        | io::ErrorKind::PermissionDenied
                        | io::ErrorKind::StorageFull
                        | io::ErrorKind::QuotaExceeded
                ) =>
            {
                tracing::warn!(error = %e, "no write-ahead journal: writes sync themselves");
                return Ok(true);
            }
            Err(e) => return Err(e),
        };
        let Some(mut recovery) = recovery else {
            tracing::info!(
                "another process holds the store's journal: writes sync themselves until it lets go"
            );
            return Ok(false);
        };
        let replay = std::mem::take(&mut recovery.replay);
        if !replay.is_empty() {
            tracing::warn!(
                changes = replay.len(),
                "the machine restarted: redoing the journal's changes"
            );
            self.redo(replay)?;
        }
        // Only this call's caller can be setting it (see `journal`).
        let _ = slot.journal.set(recovery.finish()?);
        Ok(true)
    }

    /// The journal, if this process owns it; taken now if the process that
    /// held it has let go (tried at most every `retry_after`). Called from
    /// blocking code only.
    fn journal(&self) -> Option<&Journal> {
        let slot = &self.journal;
        if let Some(journal) = slot.journal.get() {
            return Some(journal);
        }
        let mut retry_at = slot.retry_at.lock().unwrap_or_else(|p| p.into_inner());
        match *retry_at {
            Some(at) if std::time::Instant::now() >= at => *retry_at = None,
            _ => return None,
        }
        // Held while taking: one try at a time.
        match self.take_journal() {
            Ok(true) => {}
            Ok(false) => {
                *retry_at = Some(std::time::Instant::now() + slot.tuning.retry_after);
            }
            Err(e) => tracing::warn!(error = %e, "could not take the write-ahead journal"),
        }
        drop(retry_at);
        slot.journal.get()
    }

    /// Applies changes read back from the journal, in order. A change to
    /// an object written later outside the journal is skipped.
    fn redo(&self, changes: Vec<journal::Change>) -> io::Result<()> {
        use journal::Change;
        let mut last_written = std::collections::HashMap::new();
        for (i, change) in changes.iter().enumerate() {
            if let Change::Written { key } = change {
                last_written.insert(key.clone(), i);
            }
        }
        let superseded = |key: &str, i: usize| last_written.get(key).is_some_and(|&w| w > i);
        for (i, change) in changes.iter().enumerate() {
            let (Change::Put { key, .. }
            | Change::Remove { key }
            | Change::RemoveTree { prefix: key }
            | Change::Written { key }) = change;
            if !layout::is_safe_key(key) {
                tracing::warn!(key, "journal names a key outside the store; skipped");
                continue;
            }
            if superseded(key, i) {
                continue;
            }
            let path = self.root.join(key);
            match change {
                Change::Put { data, .. } => {
                    if !holds(&path, data)? {
                        make_dirs(path.parent().expect("keys have a parent"))?;
                        let temp = temp_sibling(&path);
                        std::fs::write(&temp, data)?;
                        std::fs::rename(&temp, &path)?;
                    }
                }
                Change::Remove { .. } => {
                    if not_found_is_none(std::fs::remove_file(&path))?.is_some() {
                        self.prune_empty_parents(&path);
                    }
                }
                Change::RemoveTree { .. } => {
                    not_found_is_none(std::fs::remove_dir_all(&path))?;
                }
                Change::Written { .. } => {}
            }
        }
        Ok(())
    }

    /// Stops as a killed process would: the journal is left unchecked, for
    /// the next opener (tests of recovery).
    #[cfg(test)]
    fn abandon(self) {
        let slot = std::sync::Arc::into_inner(self.journal).expect("no other handle of the store");
        if let Some(journal) = slot.journal.into_inner() {
            journal.abandon();
        }
    }

    /// Appends a record of changes made outside [`Storage::put_all`] to the
    /// journal, if this process owns one (under the keys' locks, see
    /// [`KeyLocks`]); its sequence, for [`FsStorage::wait_durable`].
    fn append(&self, changes: &[ChangeRef<'_>]) -> io::Result<Option<u64>> {
        self.journal
            .journal
            .get()
            .map(|journal| journal.append(changes))
            .transpose()
    }

    fn wait_durable(&self, sequence: Option<u64>) -> io::Result<()> {
        match (self.journal.journal.get(), sequence) {
            (Some(journal), Some(sequence)) => journal.wait_durable(sequence),
            _ => Ok(()),
        }
    }

    /// Puts back what a garbage collection had moved aside when it was
    /// killed: the object may have been touched, and restoring is always
    /// safe (the next collection decides again). Only objects moved aside
    /// more than `abandoned_after` ago are taken: a running collection
    /// decides within microseconds, so those are left by a dead one. A copy
    /// whose key holds the object again is dropped: content, links and
    /// history entries are each determined by their key. Called when a
    /// server or `berth gc` starts.
    pub fn restore_trash(&self, abandoned_after: Duration) -> io::Result<usize> {
        use std::os::unix::fs::MetadataExt;
        let trash = self.path(layout::TRASH);
        let Some(runs) = not_found_is_none(std::fs::read_dir(&trash))? else {
            return Ok(0);
        };
        let cutoff = SystemTime::now() - abandoned_after;
        let mut restored = 0;
        for run in runs {
            let run = run?.path();
            let mut pending = vec![run.clone()];
            while let Some(dir) = pending.pop() {
                // Another process's collection may remove what we list.
                let Some(entries) = not_found_is_none(std::fs::read_dir(&dir))? else {
                    continue;
                };
                for entry in entries {
                    let moved = entry?.path();
                    let Some(meta) = not_found_is_none(std::fs::symlink_metadata(&moved))? else {
                        continue;
                    };
                    if meta.is_dir() {
                        pending.push(moved);
                        continue;
                    }
                    // A rename sets the change time: when it was moved aside.
                    let moved_at = SystemTime::UNIX_EPOCH
                        + Duration::from_secs(u64::try_from(meta.ctime()).unwrap_or(0));
                    if moved_at > cutoff {
                        continue;
                    }
                    let key = moved.strip_prefix(&run).expect("walked below the run");
                    let home = self.root.join(key);
                    if home.exists() {
                        not_found_is_none(std::fs::remove_file(&moved))?;
                    } else {
                        std::fs::create_dir_all(home.parent().expect("keys have a parent"))?;
                        not_found_is_none(std::fs::rename(&moved, &home))?;
                        restored += 1;
                    }
                    self.prune_empty_parents(&moved);
                }
            }
        }
        Ok(restored)
    }

    /// Removes the now empty directories above a removed object, up to the
    /// root (Distribution's walkers treat an empty tag directory as a tag).
    fn prune_empty_parents(&self, removed: &Path) {
        let mut dir = removed.parent();
        while let Some(d) = dir {
            if d == self.root || std::fs::remove_dir(d).is_err() {
                break;
            }
            dir = d.parent();
        }
    }

    /// A handle for blocking tasks (the store is just its root).
    fn clone_handle(&self) -> FsStorage {
        FsStorage {
            root: self.root.clone(),
            boot_id: self.boot_id.clone(),
            journal: self.journal.clone(),
            key_locks: self.key_locks.clone(),
        }
    }

    fn path(&self, key: &str) -> PathBuf {
        debug_assert!(layout::is_safe_key(key));
        self.root.join(key)
    }
}

/// Opens an upload's content for appending at `offset`, dropping anything a
/// failed earlier attempt left past it (the session's offset is the truth).
fn open_upload_at(path: &Path, offset: u64) -> io::Result<std::fs::File> {
    use std::io::Seek;
    make_dirs(path.parent().expect("keys have a parent"))?;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    let existing = file.metadata()?.len();
    if existing < offset {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("upload content has {existing} bytes, session expects {offset}"),
        ));
    }
    file.set_len(offset)?;
    file.seek(io::SeekFrom::Start(offset))?;
    Ok(file)
}

/// `create_dir_all` that outlasts a concurrent prune of the directories it
/// is making (another request removing a directory that became empty).
fn make_dirs(dir: &Path) -> io::Result<()> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        match std::fs::create_dir_all(dir) {
            Ok(()) => return Ok(()),
            Err(e)
                if attempts < 5
                    && matches!(
                        e.kind(),
                        io::ErrorKind::NotFound | io::ErrorKind::AlreadyExists
                    ) => {}
            Err(e) => return Err(e),
        }
    }
}

fn temp_sibling(path: &Path) -> PathBuf {
    let name = format!("{TEMP_PREFIX}{}", uuid::Uuid::new_v4().simple());
    path.with_file_name(name)
}

fn not_found_is_none<T>(result: io::Result<T>) -> io::Result<Option<T>> {
    match result {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether the file at `path` holds exactly `data` (small documents only).
fn holds(path: &Path, data: &[u8]) -> io::Result<bool> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.len() == data.len() as u64 => Ok(std::fs::read(path)? == data),
        Ok(_) => Ok(false),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// One document of a [`write_documents`] batch.
struct DocumentWrite<'a> {
    key: &'a str,
    path: &'a Path,
    data: &'a [u8],
    mode: WriteMode,
    /// Where the content waits until it is durable, then moves into place.
    temp: Option<(PathBuf, std::fs::File)>,
    /// Whether it was written, once that is decided.
    outcome: Option<bool>,
    /// Written in place: its directory must be synced.
    placed: bool,
}

/// Refreshes the modification time of an existing object (see
/// [`Storage::touch`]); `None` when it is gone. The time is set through an
/// open handle, and the touch counts only if the name still leads to that
/// same file afterwards: a collector that moved the file aside in between
/// either saw the new time (and puts it back) or makes this return `None`.
/// Returns the size of the file touched.
fn touch_path(path: &Path) -> io::Result<Option<u64>> {
    use std::os::unix::fs::MetadataExt;
    let Some(file) = not_found_is_none(std::fs::File::open(path))? else {
        return Ok(None);
    };
    crate::sys::touch_now(&file)?;
    let touched = file.metadata()?;
    // The size comes with the fstat the check needs anyway.
    Ok(not_found_is_none(std::fs::metadata(path))?
        .filter(|now| now.dev() == touched.dev() && now.ino() == touched.ino())
        .map(|_| touched.len()))
}

/// Decides whether a document needs writing (what is there already is
/// touched instead) and, if so, writes its content to a temp file and starts
/// its writeback.
fn prepare_document(doc: &mut DocumentWrite<'_>, sync_follows: bool) -> io::Result<()> {
    use std::io::Write;
    let unchanged = match doc.mode {
        WriteMode::CreateIfAbsent | WriteMode::Record => doc.path.exists(),
        WriteMode::Overwrite => holds(doc.path, doc.data)?,
        WriteMode::Scratch => false,
    };
    // Found, then gone before the touch (a collection removed it): write it.
    if unchanged && touch_path(doc.path)?.is_some() {
        doc.outcome = Some(false);
        return Ok(());
    }
    make_dirs(doc.path.parent().expect("keys have a parent"))?;
    let create_only = matches!(doc.mode, WriteMode::CreateIfAbsent | WriteMode::Record);
    if doc.data.is_empty() && create_only {
        // An empty file appears whole: no temp file, no data sync.
        let created = match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(doc.path)
        {
            Ok(_) => true,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
            Err(e) => return Err(e),
        };
        doc.outcome = Some(created);
        doc.placed = created && doc.mode.is_durable();
        return Ok(());
    }
    let temp = temp_sibling(doc.path);
    let mut file = std::fs::File::create(&temp)?;
    let written = file.write_all(doc.data);
    if written.is_ok() && sync_follows && doc.mode.is_durable() {
        start_writeback(&file);
    }
    doc.temp = Some((temp, file));
    written
}

/// Writes documents so that each appears whole or not at all, durably, with
/// as few journal commits as the filesystem allows: all temp files are
/// written and their writeback started before the first data sync (whose
/// commit then covers them all), and all are moved into place before the
/// first directory sync (likewise). A tag push writes three documents for
/// the cost of about one. What is there already is touched, not rewritten.
fn write_documents(docs: &mut [DocumentWrite<'_>]) -> io::Result<()> {
    // Creating directories and files can wait on the disk for as long as a
    // sync does; documents in different directories are prepared side by side.
    let mut pending: Vec<&mut DocumentWrite<'_>> =
        docs.iter_mut().filter(|d| d.outcome.is_none()).collect();
    all_at_once(&mut pending, |doc| prepare_document(doc, true))?;
    let mut files: Vec<&std::fs::File> = docs
        .iter()
        .filter(|d| d.outcome.is_none() && d.mode.is_durable())
        .filter_map(|d| d.temp.as_ref().map(|(_, file)| file))
        .collect();
    all_at_once(&mut files, |file| file.sync_data())?;
    for doc in docs.iter_mut().filter(|d| d.outcome.is_none()) {
        place_document(doc)?;
    }
    let mut synced_dirs: Vec<&Path> = Vec::new();
    for doc in docs.iter().filter(|d| d.placed) {
        let parent = doc.path.parent().expect("keys have a parent");
        if !synced_dirs.contains(&parent) {
            synced_dirs.push(parent);
        }
    }
    all_at_once(&mut synced_dirs, |dir| std::fs::File::open(dir)?.sync_all())
}

/// Moves a prepared document's temp file to its name: renamed over what is
/// there, or linked only where nothing is (create-only modes).
fn place_document(doc: &mut DocumentWrite<'_>) -> io::Result<()> {
    let written = match (doc.temp.take(), doc.mode) {
        (None, _) => unreachable!("prepared documents have a temp file"),
        (Some((temp, _)), WriteMode::CreateIfAbsent | WriteMode::Record) => {
            let linked = match std::fs::hard_link(&temp, doc.path) {
                Ok(()) => true,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
                Err(e) => {
                    let _ = std::fs::remove_file(&temp);
                    return Err(e);
                }
            };
            std::fs::remove_file(&temp)?;
            linked
        }
        (Some((temp, _)), _) => {
            if let Err(e) = std::fs::rename(&temp, doc.path) {
                let _ = std::fs::remove_file(&temp);
                return Err(e);
            }
            true
        }
    };
    doc.outcome = Some(written);
    doc.placed = written && doc.mode.is_durable();
    Ok(())
}

/// Places documents without syncs (each whole or absent): the journal's
/// record of them makes them durable.
fn place_documents(docs: &mut [DocumentWrite<'_>]) -> io::Result<()> {
    for doc in docs.iter_mut().filter(|d| d.outcome.is_none()) {
        prepare_document(doc, false)?;
        if doc.outcome.is_none() {
            place_document(doc)?;
        }
    }
    Ok(())
}

/// The store's journal once this process owns it: taken when the store
/// opens, or later, when the process that held it (a `berth fsck`, a `berth
/// gc`) has let go.
struct JournalSlot {
    journal: std::sync::OnceLock<Journal>,
    /// When to try again to take a journal another process held; `None`:
    /// not to (taken, or the store cannot hold one).
    retry_at: std::sync::Mutex<Option<std::time::Instant>>,
    tuning: Tuning,
}

/// Locks that order the changes to one key with their journal records: a
/// change and the appending of its record happen under the lock of the
/// key's stripe, so records of one key are in the order its file changed,
/// and whoever finds a document another placed finds its record appended.
struct KeyLocks {
    stripes: Vec<std::sync::Mutex<()>>,
}

impl KeyLocks {
    fn new() -> KeyLocks {
        KeyLocks {
            stripes: (0..64).map(|_| std::sync::Mutex::new(())).collect(),
        }
    }

    /// Locks the stripes of `keys`, in stripe order (no deadlock between
    /// batches).
    fn lock<'k>(
        &self,
        keys: impl IntoIterator<Item = &'k str>,
    ) -> Vec<std::sync::MutexGuard<'_, ()>> {
        use std::hash::{Hash, Hasher};
        let mut stripes: Vec<usize> = keys
            .into_iter()
            .map(|key| {
                let mut hasher = std::collections::hash_map::DefaultHasher::new();
                key.hash(&mut hasher);
                (hasher.finish() % self.stripes.len() as u64) as usize
            })
            .collect();
        stripes.sort_unstable();
        stripes.dedup();
        stripes
            .into_iter()
            .map(|i| self.stripes[i].lock().unwrap_or_else(|p| p.into_inner()))
            .collect()
    }
}

/// Runs `sync` on every item, concurrently when there are several: syncs
/// that wait together share one journal commit and one device flush, while
/// a sync issued after another completed pays for a flush of its own.
fn all_at_once<T: Send>(
    items: &mut [T],
    sync: impl Fn(&mut T) -> io::Result<()> + Sync,
) -> io::Result<()> {
    match items {
        [] => Ok(()),
        [only] => sync(only),
        [first, rest @ ..] => std::thread::scope(|scope| {
            let sync = &sync;
            let others: Vec<_> = rest
                .iter_mut()
                .map(|item| scope.spawn(move || sync(item)))
                .collect();
            let mut result = sync(first);
            for other in others {
                let outcome = other
                    .join()
                    .unwrap_or_else(|_| Err(io::Error::other("sync panicked")));
                result = result.and(outcome);
            }
            result
        }),
    }
}

/// Starts writing a file's dirty pages without waiting, so that the
/// filesystem allocates their blocks now and one journal commit covers
/// several files.
fn start_writeback(file: &std::fs::File) {
    crate::sys::start_writeback(file);
}

/// Writes a batch in one blocking call: through the journal when this
/// process owns it, each document synced in place otherwise.
fn write_batch(store: &FsStorage, docs: &mut [DocumentWrite<'_>]) -> io::Result<Vec<bool>> {
    let Some(journal) = store.journal() else {
        return write_batch_with(store, docs, write_documents);
    };
    // A batch too big for one record (a huge manifest) is synced in place,
    // and recorded as written so that no older change to it is redone.
    let record_len: usize = docs.iter().map(|d| journal::put_len(d.key, d.data)).sum();
    let fits = record_len <= journal.max_record();
    let locks = store.key_locks.lock(docs.iter().map(|d| d.key));
    let written = if fits {
        write_batch_with(store, docs, place_documents)?
    } else {
        write_batch_with(store, docs, write_documents)?
    };
    let placed = || docs.iter().filter(|d| d.outcome == Some(true));
    let changes: Vec<ChangeRef<'_>> = if fits {
        placed()
            .filter(|d| d.mode != WriteMode::Scratch)
            .map(|d| ChangeRef::Put {
                key: d.key,
                data: d.data,
            })
            .collect()
    } else {
        placed()
            .map(|d| ChangeRef::Written { key: d.key })
            .collect()
    };
    let sequence = match changes.is_empty() {
        true => None,
        false => Some(journal.append(&changes)?),
    };
    drop(locks);
    let durable = |written: bool| {
        docs.iter()
            .any(|d| d.outcome == Some(written) && d.mode.is_durable())
    };
    if durable(false) {
        // Found in place, maybe placed by a writer whose record is not yet
        // synced: acknowledged only once it is.
        journal.barrier()?;
    } else if let Some(sequence) = sequence.filter(|_| durable(true) || !fits) {
        journal.wait_durable(sequence)?;
    }
    Ok(written)
}

/// Runs `write` on a batch, retrying when a concurrent delete removed a
/// directory that had just become empty between our mkdir and our create.
/// Failed writes leave no temp files and no directories they made.
fn write_batch_with(
    store: &FsStorage,
    docs: &mut [DocumentWrite<'_>],
    write: fn(&mut [DocumentWrite<'_>]) -> io::Result<()>,
) -> io::Result<Vec<bool>> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        match write(docs) {
            Ok(()) => return Ok(docs.iter().map(|d| d.outcome.unwrap_or(false)).collect()),
            Err(e) => {
                for doc in docs.iter_mut() {
                    if let Some((temp, _)) = doc.temp.take() {
                        let _ = std::fs::remove_file(temp);
                    }
                }
                if e.kind() == io::ErrorKind::NotFound && attempts < 3 {
                    continue;
                }
                // Directories made for a write that failed (a full disk)
                // would read as objects: an empty tag directory is a tag to
                // Distribution's walkers and to our tag list.
                for doc in docs.iter().filter(|d| d.outcome.is_none()) {
                    store.prune_empty_parents(doc.path);
                }
                return Err(e);
            }
        }
    }
}

/// Streams a file's range with positional reads, each of one chunk straight
/// into the buffer that is sent, and the next chunk's read already running
/// while the current one goes out: no shared cursor, no second copy, and
/// one thread hand-off per chunk.
struct ReadAhead {
    _counted: ActiveRead,
    file: std::sync::Arc<std::fs::File>,
    next: u64,
    end: u64,
    pending: Option<tokio::task::JoinHandle<io::Result<Bytes>>>,
}

impl ReadAhead {
    fn new(file: std::fs::File, range: Range<u64>) -> ReadAhead {
        let mut stream = ReadAhead {
            _counted: ActiveRead::start(),
            file: std::sync::Arc::new(file),
            next: range.start,
            end: range.end,
            pending: None,
        };
        stream.start_next();
        stream
    }

    fn start_next(&mut self) {
        if self.next >= self.end {
            return;
        }
        let chunk = if ACTIVE_READS.load(std::sync::atomic::Ordering::Relaxed) > BUSY_READS {
            BUSY_READ_CHUNK
        } else {
            READ_CHUNK
        };
        let (offset, len) = (self.next, chunk.min(self.end - self.next));
        self.next += len;
        let file = self.file.clone();
        self.pending = Some(tokio::task::spawn_blocking(move || {
            crate::sys::read_exact_at(&file, len as usize, offset)
        }));
    }
}

/// Counts a blob read in [`ACTIVE_READS`] while it lives.
struct ActiveRead;

impl ActiveRead {
    fn start() -> ActiveRead {
        ACTIVE_READS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        ActiveRead
    }
}

impl Drop for ActiveRead {
    fn drop(&mut self) {
        ACTIVE_READS.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl futures::Stream for ReadAhead {
    type Item = io::Result<Bytes>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::future::Future;
        use std::task::Poll;
        let Some(pending) = self.pending.as_mut() else {
            return Poll::Ready(None);
        };
        let chunk = match std::pin::Pin::new(pending).poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(joined) => joined.map_err(io::Error::other).and_then(|read| read),
        };
        self.pending = None;
        if chunk.is_ok() {
            self.start_next();
        }
        Poll::Ready(Some(chunk))
    }
}

impl FsStorage {
    /// The batched append loop of [`Storage::append_upload`]; the batch being
    /// written is left in `writer`, so a caller can wait for it after a failure.
    async fn append_batches(
        &self,
        path: &Path,
        offset: u64,
        data: &mut ByteSource<'_>,
        writer: &mut Option<tokio::task::JoinHandle<io::Result<std::fs::File>>>,
    ) -> io::Result<u64> {
        let mut file = None;
        let mut batch: Vec<Bytes> = Vec::new();
        let mut batch_len = 0;
        let mut written = 0u64;
        loop {
            let next = data.next().await.transpose()?;
            let done = next.is_none();
            if let Some(chunk) = next {
                batch_len += chunk.len();
                written += chunk.len() as u64;
                batch.push(chunk);
                if batch_len < UPLOAD_BATCH {
                    continue;
                }
            }
            if let Some(previous) = writer.take() {
                file = Some(previous.await.map_err(io::Error::other)??);
            }
            let chunks = std::mem::take(&mut batch);
            batch_len = 0;
            let path = path.to_path_buf();
            let open = file.take();
            *writer = Some(tokio::task::spawn_blocking(move || {
                use std::io::Write;
                let mut file = match open {
                    Some(file) => file,
                    None => open_upload_at(&path, offset)?,
                };
                for chunk in chunks {
                    file.write_all(&chunk)?;
                }
                Ok(file)
            }));
            if done {
                break;
            }
        }
        if let Some(last) = writer.take() {
            last.await.map_err(io::Error::other)??;
        }
        Ok(written)
    }
}

/// Every temporary file below `dir`, as names relative to `root`.
fn find_leftovers(root: &Path, dir: &Path, found: &mut Vec<Leftover>) -> io::Result<()> {
    let Some(entries) = not_found_is_none(std::fs::read_dir(dir))? else {
        return Ok(());
    };
    for entry in entries {
        let entry = entry?;
        let file_type = entry.file_type()?;
        let path = entry.path();
        if file_type.is_dir() {
            find_leftovers(root, &path, found)?;
        } else if file_type.is_file()
            && entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX)
        {
            // Gone meanwhile: a write in progress finished.
            let Some(meta) = not_found_is_none(entry.metadata())? else {
                continue;
            };
            let name = path.strip_prefix(root).unwrap_or(&path);
            found.push(Leftover {
                name: name.to_string_lossy().into_owned(),
                size: meta.len(),
                modified: meta.modified()?,
            });
        }
    }
    Ok(())
}

#[async_trait]
impl Storage for FsStorage {
    #[tracing::instrument(level = "debug", name = "storage.get", skip_all, fields(key = %key))]
    async fn get(&self, key: &str) -> io::Result<Option<Bytes>> {
        Ok(not_found_is_none(fs::read(self.path(key)).await)?.map(Bytes::from))
    }

    #[tracing::instrument(level = "debug", name = "storage.put", skip_all, fields(key = %key))]
    async fn put(&self, key: &str, data: Bytes, mode: WriteMode) -> io::Result<bool> {
        let written = self.put_all(vec![(key.to_owned(), data, mode)]).await?;
        Ok(written[0])
    }

    #[tracing::instrument(level = "debug", name = "storage.put_all", skip_all)]
    async fn put_all(&self, docs: Vec<(String, Bytes, WriteMode)>) -> io::Result<Vec<bool>> {
        let paths: Vec<PathBuf> = docs.iter().map(|(key, _, _)| self.path(key)).collect();
        let store = self.clone_handle();
        tokio::task::spawn_blocking(move || {
            let mut writes: Vec<DocumentWrite<'_>> = docs
                .iter()
                .zip(&paths)
                .map(|((key, data, mode), path)| DocumentWrite {
                    key,
                    path,
                    data,
                    mode: *mode,
                    temp: None,
                    outcome: None,
                    placed: false,
                })
                .collect();
            write_batch(&store, &mut writes)
        })
        .await
        .map_err(io::Error::other)?
    }

    async fn size(&self, key: &str) -> io::Result<Option<u64>> {
        let meta = not_found_is_none(fs::metadata(self.path(key)).await)?;
        Ok(meta.filter(|m| m.is_file()).map(|m| m.len()))
    }

    #[tracing::instrument(level = "debug", name = "storage.stat", skip_all, fields(key = %key))]
    async fn stat(&self, key: &str) -> io::Result<Option<ObjectInfo>> {
        let meta = not_found_is_none(fs::metadata(self.path(key)).await)?;
        meta.filter(|m| m.is_file())
            .map(|m| {
                Ok(ObjectInfo {
                    size: m.len(),
                    modified: m.modified()?,
                })
            })
            .transpose()
    }

    async fn touch(&self, key: &str) -> io::Result<bool> {
        self.touch_all(vec![key.to_owned()])
            .await
            .map(|found| found[0].is_some())
    }

    #[tracing::instrument(level = "debug", name = "storage.touch_all", skip_all)]
    async fn touch_all(&self, keys: Vec<String>) -> io::Result<Vec<Option<u64>>> {
        // One blocking call for all: a touch is a few fast syscalls, while a
        // hand-off to the blocking pool and back costs two thread switches.
        // Under the keys' locks, a document another request is placing is
        // found with its journal record appended, so the toucher's own
        // later record (or barrier) covers it.
        let paths: Vec<PathBuf> = keys.iter().map(|key| self.path(key)).collect();
        let store = self.clone_handle();
        tokio::task::spawn_blocking(move || {
            let _locks = store.key_locks.lock(keys.iter().map(String::as_str));
            paths.iter().map(|path| touch_path(path)).collect()
        })
        .await
        .map_err(io::Error::other)?
    }

    async fn delete_if_untouched_since(&self, key: &str, cutoff: SystemTime) -> io::Result<bool> {
        let path = self.path(key);
        let key = key.to_owned();
        let trash = self.path(&layout::trash_entry(&uuid::Uuid::new_v4(), &key));
        let store = self.clone_handle();
        // File times come from a coarse kernel clock that can lag the
        // collector's clock: a margin keeps a touch made just after `cutoff`
        // from looking older than it.
        let cutoff = cutoff - TIMESTAMP_MARGIN;
        tokio::task::spawn_blocking(move || {
            let _locks = store.key_locks.lock([key.as_str()]);
            let untouched = |p: &Path| -> io::Result<Option<bool>> {
                Ok(not_found_is_none(std::fs::metadata(p))?
                    .map(|m| m.modified())
                    .transpose()?
                    .map(|modified| modified < cutoff))
            };
            if untouched(&path)? != Some(true) {
                return Ok(false);
            }
            // Moved aside first, the object can no longer be touched under
            // its name: a touch either landed before the move (and shows in
            // the moved file's time, so it is put back) or fails.
            let mut attempts = 0;
            loop {
                attempts += 1;
                make_dirs(trash.parent().expect("keys have a parent"))?;
                match std::fs::rename(&path, &trash) {
                    Ok(()) => break,
                    // Another collection pruned the trash directory we made.
                    Err(e) if e.kind() == io::ErrorKind::NotFound && attempts < 5 => {
                        if !path.exists() {
                            return Ok(false);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
                    Err(e) => return Err(e),
                }
            }
            // Gone from the trash: another process opening the store put it
            // back (see `restore_trash`); the next collection decides again.
            let decided = match untouched(&trash)? {
                Some(true) => not_found_is_none(std::fs::remove_file(&trash))?.is_some(),
                Some(false) => {
                    not_found_is_none(std::fs::rename(&trash, &path))?;
                    false
                }
                None => false,
            };
            store.prune_empty_parents(&trash);
            if decided {
                store.prune_empty_parents(&path);
                store.append(&[ChangeRef::Remove { key: &key }])?;
            }
            Ok(decided)
        })
        .await
        .map_err(io::Error::other)?
    }

    async fn rename(&self, from: &str, to: &str) -> io::Result<bool> {
        let (from_key, to_key) = (from.to_owned(), to.to_owned());
        let from = self.path(from);
        let to = self.path(to);
        let store = self.clone_handle();
        tokio::task::spawn_blocking(move || {
            let locks = store.key_locks.lock([from_key.as_str(), to_key.as_str()]);
            let parent = to.parent().expect("keys have a parent");
            make_dirs(parent)?;
            if not_found_is_none(std::fs::rename(&from, &to))?.is_none() {
                return Ok(false);
            }
            std::fs::File::open(parent)?.sync_all()?;
            store.prune_empty_parents(&from);
            let sequence = store.append(&[
                ChangeRef::Remove { key: &from_key },
                ChangeRef::Written { key: &to_key },
            ])?;
            drop(locks);
            store.wait_durable(sequence)?;
            Ok(true)
        })
        .await
        .map_err(io::Error::other)?
    }

    #[tracing::instrument(level = "debug", name = "storage.read", skip_all, fields(key = %key))]
    async fn read(&self, key: &str, range: Option<Range<u64>>) -> io::Result<Option<ContentRead>> {
        let Some(LocalFile { file, size }) = self.local_file(key).await? else {
            return Ok(None);
        };
        let range = range.unwrap_or(0..size);
        if range.end > size || range.start > range.end {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "range outside object",
            ));
        }
        Ok(Some(ContentRead {
            size,
            stream: Box::pin(ReadAhead::new(file, range)),
            verified: false,
        }))
    }

    #[tracing::instrument(level = "debug", name = "storage.delete", skip_all, fields(key = %key))]
    async fn delete(&self, key: &str) -> io::Result<bool> {
        let path = self.path(key);
        let store = self.clone_handle();
        let key = key.to_owned();
        tokio::task::spawn_blocking(move || {
            let _locks = store.key_locks.lock([key.as_str()]);
            let removed = not_found_is_none(std::fs::remove_file(&path))?.is_some();
            if removed {
                store.prune_empty_parents(&path);
                store.append(&[ChangeRef::Remove { key: &key }])?;
            }
            Ok(removed)
        })
        .await
        .map_err(io::Error::other)?
    }

    async fn delete_all(&self, prefix: &str) -> io::Result<()> {
        let path = self.path(prefix);
        let store = self.clone_handle();
        let prefix = prefix.to_owned();
        // Not under key locks: a prefix removed whole (an upload's
        // directory) holds nothing another request writes.
        tokio::task::spawn_blocking(move || {
            not_found_is_none(std::fs::remove_dir_all(path))?;
            store.append(&[ChangeRef::RemoveTree { prefix: &prefix }])?;
            Ok(())
        })
        .await
        .map_err(io::Error::other)?
    }

    #[tracing::instrument(level = "debug", name = "storage.list", skip_all, fields(prefix = %prefix))]
    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> io::Result<ListPage> {
        // A directory is read whole and unsorted; the page is selected from
        // it (see `page_of`), so a walk re-reads a large directory once per
        // page: the price of a listing shaped for object stores.
        let dir = self.path(prefix);
        let start_after = start_after.map(str::to_owned);
        tokio::task::spawn_blocking(move || {
            let Some(entries) = not_found_is_none(std::fs::read_dir(dir))? else {
                return Ok(ListPage::default());
            };
            let mut names = Vec::new();
            for entry in entries {
                if let Ok(name) = entry?.file_name().into_string() {
                    if !name.starts_with(TEMP_PREFIX) {
                        names.push(name);
                    }
                }
            }
            Ok(page_of(names, start_after.as_deref(), limit))
        })
        .await
        .map_err(io::Error::other)?
    }

    #[tracing::instrument(level = "debug", name = "storage.append_upload", skip_all, fields(key = %key))]
    async fn append_upload(
        &self,
        key: &str,
        offset: u64,
        data: &mut ByteSource<'_>,
        _length: Option<u64>,
        _state: &mut String,
    ) -> io::Result<u64> {
        // Bytes are gathered into batches and each batch is written by one
        // blocking call while the next batch is received: one thread hand-off
        // per batch, not per syscall, and receiving overlaps writing. No fsync
        // here: commit_upload makes the content durable (see upload_generation).
        let path = self.path(key);
        let mut writer: Option<tokio::task::JoinHandle<io::Result<std::fs::File>>> = None;
        let received = self.append_batches(&path, offset, data, &mut writer).await;
        let Err(e) = received else {
            return received;
        };
        // Bytes past `offset` are dropped by the next append anyway, but a
        // full disk is freed only if they go now. The batch being written
        // must finish first, or it could write after the cut.
        if let Some(pending) = writer.take() {
            let _ = pending.await;
        }
        let cut = tokio::task::spawn_blocking(move || {
            let file = std::fs::OpenOptions::new().write(true).open(&path)?;
            if file.metadata()?.len() > offset {
                file.set_len(offset)?;
            }
            Ok::<(), io::Error>(())
        })
        .await
        .map_err(io::Error::other)
        .and_then(|cut| cut);
        if let Err(cut) = cut {
            if cut.kind() != io::ErrorKind::NotFound {
                tracing::warn!(error = %cut, "could not cut a failed upload chunk off");
            }
        }
        Err(e)
    }

    #[tracing::instrument(level = "debug", name = "storage.commit_upload", skip_all, fields(key = %key))]
    async fn commit_upload(
        &self,
        key: &str,
        size: u64,
        dest: &str,
        _state: &str,
    ) -> io::Result<()> {
        let source = self.path(key);
        let dest_key = dest.to_owned();
        let dest = self.path(dest);
        let store = self.clone_handle();
        tokio::task::spawn_blocking(move || {
            let file = std::fs::OpenOptions::new().write(true).open(&source)?;
            let actual = file.metadata()?.len();
            if actual < size {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("upload content has {actual} bytes, expected {size}"),
                ));
            }
            if actual > size {
                // Left over from a failed final chunk; the session's offset is the truth.
                file.set_len(size)?;
            }
            file.sync_all()?;
            drop(file);
            let parent = dest.parent().expect("keys have a parent");
            make_dirs(parent)?;
            // The content is synced; the key's lock covers only the move and
            // its record.
            let locks = store.key_locks.lock([dest_key.as_str()]);
            std::fs::rename(&source, &dest)?;
            std::fs::File::open(parent)?.sync_all()?;
            // A removal of this key still in the journal (a collection, a
            // quarantine) must not be redone over the new content.
            let sequence = store.append(&[ChangeRef::Written { key: &dest_key }])?;
            drop(locks);
            store.wait_durable(sequence)
        })
        .await
        .map_err(io::Error::other)?
    }

    fn walk_page(&self) -> usize {
        // Each page reads the whole directory (about 50 ms for 100,000
        // entries), so a walk of such a directory in S3-sized pages would
        // read it 100 times; pages of 10,000 names (about 0.5 MB) read it 10.
        10_000
    }

    fn upload_generation(&self) -> Option<&str> {
        Some(&self.boot_id)
    }

    fn local_files(&self) -> Option<&dyn LocalFiles> {
        Some(self)
    }

    fn leftovers(&self) -> Option<&dyn Leftovers> {
        Some(self)
    }

    fn deferred_durability(&self) -> Option<&dyn DeferredDurability> {
        Some(self)
    }

    async fn check_writable(&self) -> io::Result<()> {
        let probe = self.root.join(format!("{TEMP_PREFIX}readyz"));
        fs::write(&probe, b"ok").await?;
        fs::remove_file(&probe).await
    }
}

#[async_trait]
impl LocalFiles for FsStorage {
    async fn local_file(&self, key: &str) -> io::Result<Option<LocalFile>> {
        let path = self.path(key);
        tokio::task::spawn_blocking(move || {
            let file = not_found_is_none(std::fs::File::open(path))?;
            file.map(|file| {
                file.metadata().map(|m| LocalFile {
                    size: m.len(),
                    file,
                })
            })
            .transpose()
        })
        .await
        .map_err(io::Error::other)?
    }

    fn local_path(&self, key: &str) -> Option<PathBuf> {
        Some(self.path(key))
    }
}

#[async_trait]
impl Leftovers for FsStorage {
    async fn list_leftovers(&self) -> io::Result<Vec<Leftover>> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || {
            let mut found = Vec::new();
            find_leftovers(&root, &root, &mut found)?;
            Ok(found)
        })
        .await
        .map_err(io::Error::other)?
    }

    async fn remove_leftover(&self, name: &str) -> io::Result<bool> {
        let is_leftover = name
            .rsplit('/')
            .next()
            .is_some_and(|file| file.starts_with(TEMP_PREFIX))
            && !name
                .split('/')
                .any(|s| s.is_empty() || s == "." || s == "..");
        if !is_leftover {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a leftover temporary file",
            ));
        }
        let path = self.root.join(name);
        Ok(not_found_is_none(fs::remove_file(path).await)?.is_some())
    }
}

#[async_trait]
impl DeferredDurability for FsStorage {
    fn synced(&self) -> (u64, u64) {
        self.journal.journal.get().map_or((0, 0), Journal::counts)
    }

    async fn barrier(&self) -> io::Result<()> {
        let slot = self.journal.clone();
        if slot.journal.get().is_none_or(Journal::all_durable) {
            return Ok(());
        }
        tokio::task::spawn_blocking(move || match slot.journal.get() {
            Some(journal) => journal.barrier(),
            None => Ok(()),
        })
        .await
        .map_err(io::Error::other)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_only_what_is_not_there_already() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStorage::open(dir.path()).unwrap();
        let put = |data: &'static [u8], mode| store.put("a/link", Bytes::from_static(data), mode);
        assert!(put(b"one", WriteMode::Overwrite).await.unwrap());
        assert!(
            !put(b"one", WriteMode::Overwrite).await.unwrap(),
            "same bytes: no write"
        );
        assert!(put(b"two", WriteMode::Overwrite).await.unwrap());
        assert!(!put(b"three", WriteMode::CreateIfAbsent).await.unwrap());
        assert_eq!(store.get("a/link").await.unwrap().unwrap(), "two");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("a")).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary files remain");
    }

    #[tokio::test]
    async fn an_upload_is_appended_in_order_and_committed_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStorage::open(dir.path()).unwrap();
        let chunks = |parts: Vec<&'static [u8]>| {
            futures::stream::iter(parts.into_iter().map(|p| Ok(Bytes::from_static(p))))
        };
        let mut first = chunks(vec![b"hello", b", "]);
        assert_eq!(
            store
                .append_upload("u/data", 0, &mut first, None, &mut String::new())
                .await
                .unwrap(),
            7
        );
        // A failed attempt left bytes past the offset; the next append drops them.
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join("u/data"))
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"GARBAGE"))
            .unwrap();
        let mut second = chunks(vec![b"world"]);
        assert_eq!(
            store
                .append_upload("u/data", 7, &mut second, None, &mut String::new())
                .await
                .unwrap(),
            5
        );
        store
            .commit_upload("u/data", 12, "blobs/x/data", "")
            .await
            .unwrap();
        assert_eq!(
            store.get("blobs/x/data").await.unwrap().unwrap(),
            "hello, world"
        );
        assert!(store.size("u/data").await.unwrap().is_none());
    }

    /// A batch touch returns each object's size (a manifest push compares
    /// it with its descriptors'), on this backend and the trait's default.
    #[tokio::test]
    async fn touch_all_returns_the_size_of_each_object_touched() {
        let dir = tempfile::tempdir().unwrap();
        let fs = FsStorage::open(dir.path()).unwrap();
        let memory = crate::storage::memory::MemoryStorage::default();
        let stores: [&dyn Storage; 2] = [&fs, &memory];
        for store in stores {
            for (key, content) in [("blobs/a/data", "ten bytes!"), ("blobs/b/data", "")] {
                store
                    .put(
                        key,
                        Bytes::from_static(content.as_bytes()),
                        WriteMode::Overwrite,
                    )
                    .await
                    .unwrap();
            }
            let keys = ["blobs/a/data", "blobs/none/data", "blobs/b/data"];
            let found = store
                .touch_all(keys.iter().map(|k| k.to_string()).collect())
                .await
                .unwrap();
            assert_eq!(found, [Some(10), None, Some(0)]);
        }
    }

    #[tokio::test]
    async fn collection_spares_what_was_touched_after_the_cutoff() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStorage::open(dir.path()).unwrap();
        let old = SystemTime::now() - Duration::from_secs(3600);
        for key in ["blobs/a/data", "blobs/b/data"] {
            store
                .put(key, Bytes::from_static(b"x"), WriteMode::Overwrite)
                .await
                .unwrap();
            filetime::set_file_mtime(dir.path().join(key), old.into()).unwrap();
        }
        let cutoff = SystemTime::now() - Duration::from_secs(60);
        assert!(store.touch("blobs/a/data").await.unwrap());
        assert!(!store.touch("blobs/none/data").await.unwrap());
        let info = store.stat("blobs/a/data").await.unwrap().unwrap();
        assert!(info.modified > cutoff && info.size == 1);

        assert!(!store
            .delete_if_untouched_since("blobs/a/data", cutoff)
            .await
            .unwrap());
        assert!(store
            .delete_if_untouched_since("blobs/b/data", cutoff)
            .await
            .unwrap());
        assert!(!store
            .delete_if_untouched_since("blobs/b/data", cutoff)
            .await
            .unwrap());
        assert_eq!(store.get("blobs/a/data").await.unwrap().unwrap(), "x");
        assert!(store.stat("blobs/b/data").await.unwrap().is_none());
        assert!(!dir.path().join("blobs/b").exists(), "empty parents pruned");
        assert!(!dir.path().join("_berth/trash").exists(), "trash emptied");
    }

    #[tokio::test]
    async fn what_a_killed_collection_moved_aside_is_put_back() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("blobs/a")).unwrap();
        std::fs::write(root.join("blobs/a/data"), "kept").unwrap();
        // A collection killed between moving two objects aside and deciding.
        let run = root.join("_berth/trash/0123/blobs");
        for (key, body) in [("a/data", "kept"), ("b/data", "moved")] {
            std::fs::create_dir_all(run.join(key).parent().unwrap()).unwrap();
            std::fs::write(run.join(key), body).unwrap();
        }
        let store = FsStorage::open(root).unwrap();
        assert_eq!(
            store.restore_trash(Duration::from_secs(60)).unwrap(),
            0,
            "too recent"
        );
        assert_eq!(store.restore_trash(Duration::ZERO).unwrap(), 1);
        assert_eq!(store.get("blobs/b/data").await.unwrap().unwrap(), "moved");
        assert_eq!(store.get("blobs/a/data").await.unwrap().unwrap(), "kept");
        assert!(!root.join("_berth/trash").exists());
    }

    #[tokio::test]
    async fn a_listing_page_is_sorted_starts_after_and_skips_temporary_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStorage::open(dir.path()).unwrap();
        for name in ["c", "a", "e", "b", "d"] {
            let key = format!("repositories/x/{name}/link");
            store
                .put(&key, Bytes::from_static(b"1"), WriteMode::Overwrite)
                .await
                .unwrap();
        }
        std::fs::write(dir.path().join("repositories/x/.tmp-0"), b"").unwrap();
        let page = store.list("repositories/x", None, 2).await.unwrap();
        assert_eq!(
            (page.names, page.more),
            (vec!["a".into(), "b".into()], true)
        );
        let page = store.list("repositories/x", Some("b"), 10).await.unwrap();
        assert_eq!(page.names, ["c", "d", "e"]);
        assert!(!page.more);
        let page = store.list("repositories/none", None, 10).await.unwrap();
        assert_eq!(page, ListPage::default());
    }

    #[tokio::test]
    async fn rename_moves_an_object_and_reports_a_missing_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStorage::open(dir.path()).unwrap();
        store
            .put("a/b/data", Bytes::from_static(b"x"), WriteMode::Overwrite)
            .await
            .unwrap();
        assert!(store.rename("a/b/data", "q/c").await.unwrap());
        assert!(!store.rename("a/b/data", "q/c").await.unwrap());
        assert_eq!(store.get("q/c").await.unwrap().unwrap(), "x");
        assert!(!dir.path().join("a").exists());
    }

    #[tokio::test]
    async fn a_record_is_created_once_and_visible_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStorage::open(dir.path()).unwrap();
        for (key, data) in [
            ("h/t/0002-y", Bytes::new()),
            ("h/t/r", Bytes::from_static(b"r")),
        ] {
            let record = || store.put(key, data.clone(), WriteMode::Record);
            assert!(record().await.unwrap(), "{key} created");
            assert!(!record().await.unwrap(), "{key} left as it is");
            assert_eq!(store.get(key).await.unwrap().unwrap(), data);
        }
        let leftovers = store.list_leftovers().await.unwrap();
        assert!(leftovers.is_empty(), "no temp files left: {leftovers:?}");
    }

    #[tokio::test]
    async fn an_empty_document_is_created_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStorage::open(dir.path()).unwrap();
        let marker = || store.put("h/t/0001-x", Bytes::new(), WriteMode::CreateIfAbsent);
        assert!(marker().await.unwrap());
        assert!(!marker().await.unwrap());
        assert_eq!(store.stat("h/t/0001-x").await.unwrap().unwrap().size, 0);
    }

    /// A store on `root` as a process on the boot `boot` opens it.
    fn open_on_boot(root: &Path, boot: &str) -> FsStorage {
        let tuning = Tuning {
            // No checkpoint during a test: what a crash would leave.
            checkpoint_after: Duration::from_secs(3600),
            ..Tuning::default()
        };
        FsStorage::open_as(root.to_path_buf(), boot.into(), tuning).unwrap()
    }

    #[tokio::test]
    async fn a_machine_restart_redoes_acknowledged_writes_and_removals() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let store = open_on_boot(root, "boot-1");
        let link = |d: &'static [u8]| Bytes::from_static(d);
        store
            .put_all(vec![
                (
                    "r/tags/t/current/link".into(),
                    link(b"sha256:1"),
                    WriteMode::Overwrite,
                ),
                ("r/history/t/0001".into(), Bytes::new(), WriteMode::Record),
            ])
            .await
            .unwrap();
        store
            .put(
                "r/tags/gone/current/link",
                link(b"sha256:2"),
                WriteMode::Overwrite,
            )
            .await
            .unwrap();
        assert!(store.delete("r/tags/gone/current/link").await.unwrap());
        store
            .put(
                "r/tags/t/current/link",
                link(b"sha256:3"),
                WriteMode::Overwrite,
            )
            .await
            .unwrap();
        store.abandon();
        // What the power cut took: the written documents never reached the
        // disk, and the removal did not either.
        std::fs::remove_dir_all(root.join("r/tags/t")).unwrap();
        std::fs::remove_dir_all(root.join("r/history")).unwrap();
        std::fs::create_dir_all(root.join("r/tags/gone/current")).unwrap();
        std::fs::write(root.join("r/tags/gone/current/link"), "sha256:2").unwrap();

        let store = open_on_boot(root, "boot-2");
        let get = |key| std::fs::read(root.join(key)).ok();
        assert_eq!(get("r/tags/t/current/link").unwrap(), b"sha256:3");
        assert_eq!(get("r/history/t/0001").unwrap(), b"");
        assert!(get("r/tags/gone/current/link").is_none(), "removal redone");
        assert!(!root.join("r/tags/gone").exists(), "no empty tag directory");
        assert!(store.list_leftovers().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn the_same_boot_redoes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_on_boot(dir.path(), "boot-1");
        store
            .put("r/link", Bytes::from_static(b"x"), WriteMode::Overwrite)
            .await
            .unwrap();
        store.abandon();
        // Removed by hand after the process died: the page cache held the
        // write, so nothing the journal says is redone.
        std::fs::remove_file(dir.path().join("r/link")).unwrap();
        let _store = open_on_boot(dir.path(), "boot-1");
        assert!(!dir.path().join("r/link").exists());
    }

    #[tokio::test]
    async fn content_committed_after_a_removal_is_not_removed_by_a_redo() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let store = open_on_boot(root, "boot-1");
        store
            .put(
                "blobs/x/data",
                Bytes::from_static(b"old"),
                WriteMode::CreateIfAbsent,
            )
            .await
            .unwrap();
        assert!(store.delete("blobs/x/data").await.unwrap());
        let mut upload = futures::stream::iter([Ok(Bytes::from_static(b"new"))]);
        store
            .append_upload("u/data", 0, &mut upload, None, &mut String::new())
            .await
            .unwrap();
        store
            .commit_upload("u/data", 3, "blobs/x/data", "")
            .await
            .unwrap();
        drop(store);
        let _store = open_on_boot(root, "boot-2");
        assert_eq!(std::fs::read(root.join("blobs/x/data")).unwrap(), b"new");
    }

    #[tokio::test]
    async fn a_second_process_writes_durably_without_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let owner = open_on_boot(dir.path(), "boot-1");
        let other = open_on_boot(dir.path(), "boot-1");
        assert!(owner.journal.journal.get().is_some());
        assert!(other.journal.journal.get().is_none());
        assert!(other
            .put("r/link", Bytes::from_static(b"x"), WriteMode::Overwrite)
            .await
            .unwrap());
        assert_eq!(owner.get("r/link").await.unwrap().unwrap(), "x");
    }

    #[tokio::test]
    async fn a_store_takes_the_journal_once_the_process_holding_it_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let owner = open_on_boot(dir.path(), "boot-1");
        let tuning = Tuning {
            retry_after: Duration::ZERO,
            ..Tuning::default()
        };
        let later = FsStorage::open_as(dir.path().to_path_buf(), "boot-1".into(), tuning).unwrap();
        let put = |store: &FsStorage, key: &'static str| {
            let store = store.clone_handle();
            async move {
                store
                    .put(key, Bytes::from_static(b"x"), WriteMode::Overwrite)
                    .await
                    .unwrap()
            }
        };
        assert!(put(&later, "r/a").await);
        assert!(later.journal.journal.get().is_none(), "still held");
        drop(owner);
        assert!(put(&later, "r/b").await);
        assert!(
            later.journal.journal.get().is_some(),
            "taken at the next write"
        );
    }

    #[tokio::test]
    async fn a_large_document_written_in_place_is_not_undone_by_a_redo() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let store = open_on_boot(root, "boot-1");
        let key = "blobs/sha256/bb/bb/data";
        let big = Bytes::from(vec![b'{'; 9 << 20]);
        assert!(store
            .put(key, big.clone(), WriteMode::CreateIfAbsent)
            .await
            .unwrap());
        assert!(store.delete(key).await.unwrap());
        assert!(store
            .put(key, big.clone(), WriteMode::CreateIfAbsent)
            .await
            .unwrap());
        store.abandon();
        let _store = open_on_boot(root, "boot-2");
        assert_eq!(std::fs::read(root.join(key)).unwrap().len(), big.len());
    }

    #[tokio::test]
    async fn a_clean_close_then_a_machine_restart_brings_nothing_back() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let store = open_on_boot(root, "boot-1");
        store
            .put("r/link", Bytes::from_static(b"x"), WriteMode::Overwrite)
            .await
            .unwrap();
        // The removal's record is not waited for: the close writes it.
        assert!(store.delete("r/link").await.unwrap());
        drop(store);
        let _store = open_on_boot(root, "boot-2");
        assert!(!root.join("r/link").exists());
    }

    /// Concurrent writes, deletes and collections of the same few keys:
    /// replayed from an empty store, the journal rebuilds exactly the state
    /// they left, so its records are in the order the files changed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_redo_from_nothing_rebuilds_what_concurrent_changes_left() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let store = std::sync::Arc::new(open_on_boot(root, "boot-1"));
        let keys: Vec<String> = (0..2).map(|k| format!("r/k{k}/link")).collect();
        let workers: Vec<_> = (0..8u64)
            .map(|w| {
                let (store, keys) = (store.clone(), keys.clone());
                tokio::spawn(async move {
                    let mut seed = w * 7919 + 1;
                    for i in 0..300u64 {
                        seed = seed
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        let key = &keys[(seed >> 33) as usize % keys.len()];
                        match (seed >> 40) % 3 {
                            0 => {
                                let body = Bytes::from(format!("w{w}-{i}"));
                                store.put(key, body, WriteMode::Overwrite).await.unwrap();
                            }
                            1 => {
                                store.delete(key).await.unwrap();
                            }
                            _ => {
                                let cutoff = SystemTime::now() + Duration::from_secs(3600);
                                store.delete_if_untouched_since(key, cutoff).await.unwrap();
                            }
                        }
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.await.unwrap();
        }
        // A last durable write: every record before it is synced too.
        store
            .put("r/last", Bytes::from_static(b"x"), WriteMode::Overwrite)
            .await
            .unwrap();
        let live: Vec<Option<Vec<u8>>> = keys
            .iter()
            .map(|k| std::fs::read(root.join(k)).ok())
            .collect();
        std::sync::Arc::into_inner(store).unwrap().abandon();
        // The power cut took every document: only the journal remains.
        std::fs::remove_dir_all(root.join("r")).unwrap();
        let _store = open_on_boot(root, "boot-2");
        let redone: Vec<Option<Vec<u8>>> = keys
            .iter()
            .map(|k| std::fs::read(root.join(k)).ok())
            .collect();
        assert_eq!(redone, live);
        assert!(root.join("r/last").exists());
    }
}
