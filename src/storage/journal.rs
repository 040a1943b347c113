//! The filesystem store's write-ahead journal: a small document becomes
//! durable with one sequential data sync, shared by every writer waiting at
//! that moment, instead of a data sync and a directory sync of its own.
//!
//! A write places its documents as before (temp file, then rename or link:
//! atomic and visible, not yet durable), then appends one record naming what
//! it placed and waits until the record is synced. Writers that wait together
//! share one `fdatasync` (group commit). Deletes are recorded too, without
//! waiting, so that replaying the journal never brings back what was removed
//! after it was written.
//!
//! Two preallocated files take turns. While one takes records, the other is
//! checkpointed: `syncfs` makes every document its records name durable in
//! place, then its header gets a new generation, which voids its records.
//! Records are placed before they are appended, and a file is checkpointed
//! only after the turn has passed to the other, so the sync covers them all.
//!
//! On open, the journal's live records are returned for replay when the
//! machine restarted since they were written (the header's boot id differs
//! from this boot's): the page cache, and with it placed documents, may have
//! been lost. After a crash of the process alone the page cache holds every
//! placed document, so the opener only syncs and resets. Either way the
//! store starts with an empty journal.
//!
//! One process owns the journal (`flock`). Another process that opens the
//! same store (a `berth gc` beside a running server) gets none and writes
//! durably the direct way. A machine crash within a checkpoint interval of
//! such a process's delete can bring back what the delete removed; a delete
//! made without a journal was never synced, so this was possible before too.
//!
//! File layout: a header block (magic, generation, boot id, checksum), then
//! records `[payload length u32][generation u64][sequence u64][payload]
//! [first 16 bytes of SHA-256 of all before]`, little-endian. Reading stops at
//! the first record that is torn, of another generation or out of sequence.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

/// How big the journal's files are and how soon records are checkpointed.
#[derive(Debug, Clone, Copy)]
pub struct Tuning {
    /// The size of each of the two files.
    pub capacity: u64,
    /// Records older than this are checkpointed: it bounds how much a
    /// replay redoes, and how long a deleted object can come back after a
    /// machine crash.
    pub checkpoint_after: Duration,
    /// How often a store whose journal another process holds tries again
    /// to take it.
    pub retry_after: Duration,
}

impl Default for Tuning {
    fn default() -> Tuning {
        Tuning {
            capacity: 32 << 20,
            checkpoint_after: Duration::from_secs(1),
            retry_after: Duration::from_secs(10),
        }
    }
}

const MAGIC: &[u8; 8] = b"BERTHJ01";
const HEADER_LEN: u64 = 4096;
const FRAME_HEAD: usize = 4 + 8 + 8;
const FRAME_CHECK: usize = 16;
const FRAME_OVERHEAD: usize = FRAME_HEAD + FRAME_CHECK;

const OP_PUT: u8 = 1;
const OP_REMOVE: u8 = 2;
const OP_REMOVE_TREE: u8 = 3;
const OP_WRITTEN: u8 = 4;

/// One change a record names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The document at `key` now holds `data`.
    Put { key: String, data: Vec<u8> },
    /// The object at `key` was removed.
    Remove { key: String },
    /// Everything under `prefix` was removed.
    RemoveTree { prefix: String },
    /// The object at `key` was written durably outside the journal: earlier
    /// changes to it must not be redone.
    Written { key: String },
}

/// A change as a writer names it, without copying its data.
pub enum ChangeRef<'a> {
    Put { key: &'a str, data: &'a [u8] },
    Remove { key: &'a str },
    RemoveTree { prefix: &'a str },
    Written { key: &'a str },
}

fn record_limit(capacity: u64) -> usize {
    usize::try_from((capacity - HEADER_LEN) / 4).unwrap_or(usize::MAX) - FRAME_OVERHEAD
}

/// The encoded size of a `Put` of `data` at `key` in a record.
pub fn put_len(key: &str, data: &[u8]) -> usize {
    1 + 2 + key.len() + 4 + data.len()
}

/// The encoded size of a record of `changes`.
pub fn record_len(changes: &[ChangeRef<'_>]) -> usize {
    changes
        .iter()
        .map(|change| match change {
            ChangeRef::Put { key, data } => put_len(key, data),
            ChangeRef::Remove { key: name }
            | ChangeRef::RemoveTree { prefix: name }
            | ChangeRef::Written { key: name } => 1 + 2 + name.len(),
        })
        .sum()
}

fn encode(changes: &[ChangeRef<'_>]) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(record_len(changes));
    let name = |out: &mut Vec<u8>, op: u8, name: &str| -> io::Result<()> {
        let len = u16::try_from(name.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "key too long"))?;
        out.push(op);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        Ok(())
    };
    for change in changes {
        match change {
            ChangeRef::Put { key, data } => {
                name(&mut out, OP_PUT, key)?;
                let len = u32::try_from(data.len())
                    .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "too large"))?;
                out.extend_from_slice(&len.to_le_bytes());
                out.extend_from_slice(data);
            }
            ChangeRef::Remove { key } => name(&mut out, OP_REMOVE, key)?,
            ChangeRef::RemoveTree { prefix } => name(&mut out, OP_REMOVE_TREE, prefix)?,
            ChangeRef::Written { key } => name(&mut out, OP_WRITTEN, key)?,
        }
    }
    Ok(out)
}

fn decode(mut payload: &[u8]) -> Option<Vec<Change>> {
    fn take<'a>(input: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (input.get(..n)?, input.get(n..)?);
        *input = rest;
        Some(head)
    }
    let mut changes = Vec::new();
    while !payload.is_empty() {
        let op = take(&mut payload, 1)?[0];
        let len = u16::from_le_bytes(take(&mut payload, 2)?.try_into().ok()?);
        let name = String::from_utf8(take(&mut payload, len.into())?.to_vec()).ok()?;
        changes.push(match op {
            OP_PUT => {
                let len = u32::from_le_bytes(take(&mut payload, 4)?.try_into().ok()?);
                let data = take(&mut payload, usize::try_from(len).ok()?)?.to_vec();
                Change::Put { key: name, data }
            }
            OP_REMOVE => Change::Remove { key: name },
            OP_REMOVE_TREE => Change::RemoveTree { prefix: name },
            OP_WRITTEN => Change::Written { key: name },
            _ => return None,
        });
    }
    Some(changes)
}

fn frame(out: &mut Vec<u8>, generation: u64, sequence: u64, payload: &[u8]) {
    let start = out.len();
    let len = u32::try_from(payload.len()).expect("records are bounded by max_record");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&generation.to_le_bytes());
    out.extend_from_slice(&sequence.to_le_bytes());
    out.extend_from_slice(payload);
    let check = Sha256::digest(&out[start..]);
    out.extend_from_slice(&check[..FRAME_CHECK]);
}

fn header_bytes(generation: u64, boot_id: &str) -> Vec<u8> {
    let boot = &boot_id.as_bytes()[..boot_id.len().min(255)];
    let mut out = Vec::with_capacity(64 + boot.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&generation.to_le_bytes());
    out.push(boot.len() as u8);
    out.extend_from_slice(boot);
    let check = Sha256::digest(&out);
    out.extend_from_slice(&check[..FRAME_CHECK]);
    out
}

/// A file's header: its generation and the boot its records were written in.
fn read_header(file: &File) -> io::Result<Option<(u64, String)>> {
    let mut block = vec![0u8; 8 + 8 + 1 + 255 + FRAME_CHECK];
    let read = file.read_at(&mut block, 0)?;
    block.truncate(read);
    let parse = || -> Option<(u64, String)> {
        if block.get(..8)? != MAGIC {
            return None;
        }
        let generation = u64::from_le_bytes(block.get(8..16)?.try_into().ok()?);
        let boot_len = usize::from(*block.get(16)?);
        let end = 17 + boot_len;
        let boot = String::from_utf8(block.get(17..end)?.to_vec()).ok()?;
        let check = Sha256::digest(block.get(..end)?);
        (block.get(end..end + FRAME_CHECK)? == &check[..FRAME_CHECK]).then_some((generation, boot))
    };
    Ok(parse())
}

/// The live records of a file of `generation`: (sequence, changes), in order.
fn read_records(
    file: &File,
    generation: u64,
    capacity: u64,
) -> io::Result<Vec<(u64, Vec<Change>)>> {
    let mut records = Vec::new();
    let mut offset = HEADER_LEN;
    let mut last_sequence = 0;
    loop {
        let mut head = [0u8; FRAME_HEAD];
        if offset + FRAME_HEAD as u64 > capacity || file.read_at(&mut head, offset)? < FRAME_HEAD {
            break;
        }
        let len = u64::from(u32::from_le_bytes(head[..4].try_into().expect("4 bytes")));
        let record_generation = u64::from_le_bytes(head[4..12].try_into().expect("8 bytes"));
        let sequence = u64::from_le_bytes(head[12..20].try_into().expect("8 bytes"));
        let end = offset + FRAME_HEAD as u64 + len + FRAME_CHECK as u64;
        if record_generation != generation || sequence <= last_sequence || end > capacity {
            break;
        }
        let mut rest = vec![0u8; usize::try_from(len).expect("bounded") + FRAME_CHECK];
        if file.read_at(&mut rest, offset + FRAME_HEAD as u64)? < rest.len() {
            break;
        }
        let (payload, check) = rest.split_at(rest.len() - FRAME_CHECK);
        let mut hasher = Sha256::new();
        hasher.update(head);
        hasher.update(payload);
        if &hasher.finalize()[..FRAME_CHECK] != check {
            break;
        }
        let Some(changes) = decode(payload) else {
            break;
        };
        records.push((sequence, changes));
        last_sequence = sequence;
        offset = end;
    }
    Ok(records)
}

/// A generation for a file's next turn: random, so that no record left in
/// the file (whatever its header says after a torn write) can belong to it.
fn new_generation(current: u64) -> u64 {
    loop {
        let (generation, _) = uuid::Uuid::new_v4().as_u64_pair();
        if generation != current && generation != 0 {
            return generation;
        }
    }
}

fn sync_filesystem(dir: &File) -> io::Result<()> {
    crate::sys::sync_filesystem(dir)
}

/// One of the two files' turn state.
struct Slot {
    generation: u64,
    /// Where the next record goes.
    offset: u64,
    /// When its oldest live record was written; `None` when it has none
    /// (then it may take the turn).
    oldest: Option<Instant>,
}

struct State {
    active: usize,
    slots: [Slot; 2],
    /// Records appended but not yet written: (sequence, payload).
    pending: Vec<(u64, Vec<u8>)>,
    next_sequence: u64,
    /// Every record up to this sequence is synced.
    durable: u64,
    /// A writer is writing and syncing the active file.
    writing: bool,
    /// A journal write, sync or checkpoint failed (a failing disk): from
    /// this sequence on nothing is durable, every writer waiting for it
    /// gets the error, and no record is taken again until the store is
    /// reopened (and replays what was synced).
    failed: Option<(u64, String)>,
    stop: bool,
    /// Stop without the closing checkpoint: what a killed process leaves
    /// (tests).
    abandon: bool,
    /// Data syncs of the journal, and records they covered (for tests and
    /// the log).
    syncs: u64,
    records: u64,
}

struct Shared {
    files: [File; 2],
    /// Directories whose filesystems a checkpoint syncs.
    synced_dirs: Vec<std::path::PathBuf>,
    boot_id: String,
    tuning: Tuning,
    state: Mutex<State>,
    /// Signals writers: records became durable, or a file was checkpointed.
    changed: Condvar,
    /// Signals the checkpointer: work for it (kept apart from `changed` so
    /// that a write wakes no thread that has nothing to do).
    work: Condvar,
    /// Held for the journal's life: one process owns it.
    _lock: File,
    /// Tests hold a journal write here, to line writers up behind it.
    #[cfg(test)]
    hold: tests::WriteHold,
}

/// The open journal of one store; dropping it stops its checkpoints.
pub struct Journal {
    shared: Arc<Shared>,
    checkpointer: Option<std::thread::JoinHandle<()>>,
}

/// A journal just opened: what to replay, then [`Recovery::finish`].
pub struct Recovery {
    shared: Shared,
    /// Changes to redo, in order, before the store is used.
    pub replay: Vec<Change>,
    had_records: bool,
}

/// Outcome of one attempt to write pending records.
enum Progress {
    Wrote,
    /// The active file has no room and the other is not checkpointed yet.
    Full,
    Nothing,
}

impl Journal {
    /// Opens the journal under `root`, or `None` when another process owns it.
    pub fn open(root: &Path, boot_id: &str, tuning: Tuning) -> io::Result<Option<Recovery>> {
        let capacity = tuning.capacity;
        let dir = root.join(super::layout::JOURNAL);
        std::fs::create_dir_all(&dir)?;
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(dir.join("lock"))?;
        if !crate::sys::try_lock_exclusive(&lock)? {
            return Ok(None);
        }
        // A file made now and given its space; on a disk without room for
        // it, it is given back and the error returned (no journal then).
        let open = |name: &str| -> io::Result<(File, bool)> {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .open(dir.join(name))?;
            let had = file.metadata()?.len();
            if had >= capacity {
                return Ok((file, false));
            }
            // Preallocated, a record's sync writes its data and no size
            // change.
            match crate::sys::preallocate(&file, capacity) {
                Ok(true) => {}
                Ok(false) => file.set_len(capacity)?,
                Err(e) => {
                    file.set_len(had)?;
                    return Err(e);
                }
            }
            Ok((file, true))
        };
        let (a, a_grown) = open("a")?;
        let b = match open("b") {
            Ok((b, _)) => b,
            Err(e) => {
                if a_grown {
                    let _ = a.set_len(0);
                }
                return Err(e);
            }
        };
        let files = [a, b];
        let mut generations = [0u64; 2];
        let mut records = Vec::new();
        let mut from_other_boot = false;
        for (i, file) in files.iter().enumerate() {
            if let Some((generation, boot)) = read_header(file)? {
                generations[i] = generation;
                let live = read_records(file, generation, capacity)?;
                from_other_boot |= !live.is_empty() && boot != boot_id;
                records.extend(live);
            }
        }
        let had_records = !records.is_empty();
        records.sort_by_key(|(sequence, _)| *sequence);
        let replay = if from_other_boot {
            records
                .into_iter()
                .flat_map(|(_, changes)| changes)
                .collect()
        } else {
            Vec::new()
        };
        let slot = |generation| Slot {
            generation,
            offset: HEADER_LEN,
            oldest: None,
        };
        let synced_dirs = vec![
            root.to_path_buf(),
            root.join(super::layout::REPOSITORIES),
            root.join(super::layout::BLOBS),
        ];
        Ok(Some(Recovery {
            shared: Shared {
                files,
                synced_dirs,
                boot_id: boot_id.to_owned(),
                tuning,
                state: Mutex::new(State {
                    active: 0,
                    slots: [slot(generations[0]), slot(generations[1])],
                    pending: Vec::new(),
                    next_sequence: 0,
                    durable: 0,
                    writing: false,
                    failed: None,
                    stop: false,
                    abandon: false,
                    syncs: 0,
                    records: 0,
                }),
                changed: Condvar::new(),
                work: Condvar::new(),
                _lock: lock,
                #[cfg(test)]
                hold: tests::WriteHold::default(),
            },
            replay,
            had_records,
        }))
    }

    /// Appends a record of `changes`; with `wait`, returns once it is
    /// durable (and so is every record appended before it).
    #[cfg(test)]
    pub fn record(&self, changes: &[ChangeRef<'_>], wait: bool) -> io::Result<()> {
        let sequence = self.append(changes)?;
        if wait {
            self.wait_durable(sequence)
        } else {
            Ok(())
        }
    }

    /// Appends a record of `changes` to be written soon; its sequence, for
    /// [`Journal::wait_durable`].
    pub fn append(&self, changes: &[ChangeRef<'_>]) -> io::Result<u64> {
        let payload = encode(changes)?;
        if payload.len() > self.max_record() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "record larger than the journal takes",
            ));
        }
        let mut state = self.shared.lock();
        if let Some((_, error)) = &state.failed {
            return Err(io::Error::other(error.clone()));
        }
        state.next_sequence += 1;
        let sequence = state.next_sequence;
        state.pending.push((sequence, payload));
        // Written by the next writer that waits, or by the checkpointer.
        self.shared.work.notify_one();
        Ok(sequence)
    }

    /// Returns once every record up to `sequence` is durable, writing
    /// pending records itself when no other writer is.
    pub fn wait_durable(&self, sequence: u64) -> io::Result<()> {
        let shared = &self.shared;
        let mut state = shared.lock();
        loop {
            if let Some((from, error)) = &state.failed {
                if sequence >= *from {
                    return Err(io::Error::other(error.clone()));
                }
            }
            if state.durable >= sequence {
                return Ok(());
            }
            if state.writing {
                state = shared.wait(state);
                continue;
            }
            let progress;
            (state, progress) = shared.write_pending(state);
            if let Progress::Full = progress {
                shared.work.notify_one();
                state = shared.wait(state);
            }
        }
    }

    /// Whether every record appended so far is durable (a barrier would
    /// return at once).
    pub fn all_durable(&self) -> bool {
        let state = self.shared.lock();
        state.failed.is_none() && state.durable >= state.next_sequence
    }

    /// Returns once every record appended so far is durable: for a writer
    /// that relies on what another placed (found it unchanged) and appends
    /// nothing of its own.
    pub fn barrier(&self) -> io::Result<()> {
        let appended = self.shared.lock().next_sequence;
        self.wait_durable(appended)
    }

    /// The largest record (in [`record_len`] bytes) the journal takes: a
    /// bigger write goes the direct way.
    pub fn max_record(&self) -> usize {
        record_limit(self.shared.tuning.capacity)
    }

    /// How many syncs the journal made, and how many records they covered
    /// (tests, and `berth_journal_syncs_total`).
    pub fn counts(&self) -> (u64, u64) {
        let state = self.shared.lock();
        (state.syncs, state.records)
    }
}

impl Journal {
    /// Stops as a killed process would: no closing checkpoint, records
    /// left for the next opener (tests of recovery).
    pub fn abandon(self) {
        self.shared.lock().abandon = true;
        drop(self);
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.work.notify_one();
        if let Some(thread) = self.checkpointer.take() {
            let _ = thread.join();
        }
    }
}

impl Recovery {
    /// Makes what the old records named durable (the caller has replayed
    /// them), voids them, and starts taking records.
    pub fn finish(self) -> io::Result<Journal> {
        let shared = self.shared;
        if self.had_records {
            shared.sync_filesystems()?;
        }
        {
            let mut state = shared.lock();
            for i in 0..2 {
                let generation = new_generation(state.slots[i].generation);
                shared.reset(i, generation)?;
                state.slots[i].generation = generation;
            }
        }
        let shared = Arc::new(shared);
        let background = shared.clone();
        let checkpointer = std::thread::Builder::new()
            .name("berth-journal".into())
            .spawn(move || background.checkpoint_loop())?;
        Ok(Journal {
            shared,
            checkpointer: Some(checkpointer),
        })
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn wait<'a>(&self, state: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.changed
            .wait(state)
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Writes a new header, voiding the file's records.
    fn reset(&self, i: usize, generation: u64) -> io::Result<()> {
        let file = &self.files[i];
        file.write_all_at(&header_bytes(generation, &self.boot_id), 0)?;
        file.sync_data()
    }

    fn sync_filesystems(&self) -> io::Result<()> {
        use std::os::unix::fs::MetadataExt;
        let mut devices = Vec::new();
        for dir in &self.synced_dirs {
            let Ok(handle) = File::open(dir) else {
                continue; // not made yet: nothing in it to sync
            };
            let device = handle.metadata()?.dev();
            if !devices.contains(&device) {
                devices.push(device);
                sync_filesystem(&handle)?;
            }
        }
        Ok(())
    }

    /// Marks the journal failed from `sequence` on and wakes every writer.
    fn fail(&self, state: &mut State, sequence: u64, error: String) {
        if state.failed.is_none() {
            state.failed = Some((sequence, error));
        }
        state.pending.clear();
        self.changed.notify_all();
    }

    /// Writes and syncs as many pending records as the active file has room
    /// for, passing the turn to the other file when this one is full. Called
    /// with `writing` false; the lock is released during the I/O.
    fn write_pending<'a>(
        &'a self,
        mut state: MutexGuard<'a, State>,
    ) -> (MutexGuard<'a, State>, Progress) {
        if state.pending.is_empty() {
            return (state, Progress::Nothing);
        }
        let active = state.active;
        let room = self.tuning.capacity - state.slots[active].offset;
        let mut bytes = 0u64;
        let mut taken = 0;
        for (_, payload) in &state.pending {
            let framed = (payload.len() + FRAME_OVERHEAD) as u64;
            if bytes + framed > room {
                break;
            }
            bytes += framed;
            taken += 1;
        }
        if taken == 0 {
            let other = 1 - active;
            if state.slots[other].oldest.is_none() {
                state.active = other;
                // The full file is the checkpointer's now.
                self.work.notify_one();
                return self.write_pending(state);
            }
            return (state, Progress::Full);
        }
        let batch: Vec<(u64, Vec<u8>)> = state.pending.drain(..taken).collect();
        let (generation, offset) = (state.slots[active].generation, state.slots[active].offset);
        state.writing = true;
        drop(state);
        #[cfg(test)]
        self.hold.pass();
        let mut buffer = Vec::with_capacity(usize::try_from(bytes).unwrap_or(0));
        for (sequence, payload) in &batch {
            frame(&mut buffer, generation, *sequence, payload);
        }
        let file = &self.files[active];
        let written = file
            .write_all_at(&buffer, offset)
            .and_then(|()| file.sync_data());
        let mut state = self.lock();
        state.writing = false;
        let (first, last) = (batch[0].0, batch[batch.len() - 1].0);
        if !state.pending.is_empty() {
            // Appended meanwhile by writers that do not wait.
            self.work.notify_one();
        }
        match written {
            Ok(()) => {
                let slot = &mut state.slots[active];
                slot.offset += bytes;
                if slot.oldest.is_none() {
                    slot.oldest = Some(Instant::now());
                    // The checkpointer's clock starts.
                    self.work.notify_one();
                }
                state.durable = last;
                state.syncs += 1;
                state.records += batch.len() as u64;
            }
            Err(e) => {
                tracing::error!(
                    error = %e,
                    "the write-ahead journal could not be written: no write is acknowledged until restart"
                );
                self.fail(&mut state, first, format!("journal write failed: {e}"));
            }
        }
        self.changed.notify_all();
        (state, Progress::Wrote)
    }

    /// The background task: writes records nobody waits for, passes the
    /// turn on when the active file's records are old, and checkpoints the
    /// file that gave up its turn.
    fn checkpoint_loop(&self) {
        let mut state = self.lock();
        loop {
            if state.stop {
                if !state.abandon {
                    self.close(state);
                }
                return;
            }
            let active = state.active;
            let other = 1 - active;
            if state.failed.is_none() && state.slots[other].oldest.is_some() {
                let generation = new_generation(state.slots[other].generation);
                drop(state);
                let done = self
                    .sync_filesystems()
                    .and_then(|()| self.reset(other, generation));
                state = self.lock();
                match done {
                    Ok(()) => {
                        state.slots[other] = Slot {
                            generation,
                            offset: HEADER_LEN,
                            oldest: None,
                        };
                        self.changed.notify_all();
                    }
                    Err(e) => {
                        tracing::error!(
                            error = %e,
                            "journal checkpoint failed: no write is acknowledged until restart"
                        );
                        let from = state.durable + 1;
                        self.fail(&mut state, from, format!("journal checkpoint failed: {e}"));
                    }
                }
                continue;
            }
            if !state.writing && state.failed.is_none() {
                if let Some(oldest) = state.slots[active].oldest {
                    if oldest.elapsed() >= self.tuning.checkpoint_after {
                        state.active = other;
                        continue;
                    }
                }
                if !state.pending.is_empty() {
                    (state, _) = self.write_pending(state);
                    continue;
                }
            }
            let timeout = if !state.pending.is_empty() {
                // A writer is writing; what remains is written after it.
                Duration::from_millis(5)
            } else {
                match state.slots[active].oldest {
                    Some(oldest) => self
                        .tuning
                        .checkpoint_after
                        .saturating_sub(oldest.elapsed()),
                    None => Duration::from_secs(3600),
                }
            };
            state = self
                .work
                .wait_timeout(state, timeout.max(Duration::from_millis(1)))
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
    }

    /// A clean stop: what is pending is written, then everything is
    /// checkpointed, so that a later replay (after a machine restart) has
    /// nothing to redo, in particular no write whose removal was pending.
    fn close<'a>(&'a self, mut state: MutexGuard<'a, State>) {
        while state.failed.is_none() && !state.pending.is_empty() {
            if state.writing {
                state = self.wait(state);
                continue;
            }
            let progress;
            (state, progress) = self.write_pending(state);
            if let Progress::Full = progress {
                break; // the checkpoint below voids both files anyway
            }
        }
        if state.failed.is_some() || state.slots.iter().all(|slot| slot.oldest.is_none()) {
            return;
        }
        let generations = state
            .slots
            .each_ref()
            .map(|slot| new_generation(slot.generation));
        drop(state);
        let closed = self.sync_filesystems().and_then(|()| {
            self.reset(0, generations[0])?;
            self.reset(1, generations[1])
        });
        if let Err(e) = closed {
            tracing::warn!(error = %e, "journal not checkpointed at close: the next start replays it");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put<'a>(key: &'a str, data: &'a [u8]) -> ChangeRef<'a> {
        ChangeRef::Put { key, data }
    }

    #[test]
    fn records_round_trip_through_their_encoding() {
        let changes = [
            put("a/link", b"sha256:1"),
            ChangeRef::Remove { key: "b/link" },
            ChangeRef::RemoveTree { prefix: "c" },
            put("d/empty", b""),
            ChangeRef::Written { key: "e/data" },
        ];
        let payload = encode(&changes).unwrap();
        assert_eq!(payload.len(), record_len(&changes));
        assert_eq!(
            decode(&payload).unwrap(),
            vec![
                Change::Put {
                    key: "a/link".into(),
                    data: b"sha256:1".to_vec()
                },
                Change::Remove {
                    key: "b/link".into()
                },
                Change::RemoveTree { prefix: "c".into() },
                Change::Put {
                    key: "d/empty".into(),
                    data: Vec::new()
                },
                Change::Written {
                    key: "e/data".into()
                },
            ]
        );
        assert!(decode(&payload[..payload.len() - 1]).is_none(), "torn");
    }

    #[test]
    fn reading_stops_at_a_torn_or_stale_record() {
        let dir = tempfile::tempdir().unwrap();
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(dir.path().join("j"))
            .unwrap();
        let capacity = 64 * 1024;
        file.set_len(capacity).unwrap();
        let mut bytes = Vec::new();
        for (sequence, key) in [(1, "one"), (2, "two"), (3, "three")] {
            frame(&mut bytes, 7, sequence, &encode(&[put(key, b"x")]).unwrap());
        }
        let third = bytes.len() - (FRAME_OVERHEAD + record_len(&[put("three", b"x")]));
        // The third record is torn: its last byte never reached the disk.
        file.write_all_at(&bytes[..bytes.len() - 1], HEADER_LEN)
            .unwrap();
        let read = read_records(&file, 7, capacity).unwrap();
        assert_eq!(read.iter().map(|r| r.0).collect::<Vec<_>>(), [1, 2]);
        assert!(
            read_records(&file, 8, capacity).unwrap().is_empty(),
            "stale"
        );
        // A record of an older generation after the live ones is not live.
        let mut stale = Vec::new();
        frame(&mut stale, 6, 3, &encode(&[put("three", b"x")]).unwrap());
        file.write_all_at(&stale, HEADER_LEN + third as u64)
            .unwrap();
        assert_eq!(read_records(&file, 7, capacity).unwrap().len(), 2);
    }

    #[test]
    fn a_header_is_read_back_and_a_damaged_one_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        std::fs::write(&path, header_bytes(42, "boot-1")).unwrap();
        let file = File::open(&path).unwrap();
        assert_eq!(read_header(&file).unwrap(), Some((42, "boot-1".into())));
        let mut damaged = header_bytes(42, "boot-1");
        damaged[9] ^= 1;
        std::fs::write(&path, damaged).unwrap();
        assert_eq!(read_header(&File::open(&path).unwrap()).unwrap(), None);
    }

    /// No checkpoint by age during a test: only full files pass the turn.
    fn never_by_age(capacity: u64) -> Tuning {
        Tuning {
            capacity,
            checkpoint_after: Duration::from_secs(3600),
            ..Tuning::default()
        }
    }

    /// A journal as the first process on "boot-1" opens it.
    fn start(root: &Path) -> Journal {
        reopen(root, "boot-1", never_by_age(1 << 20)).0
    }

    /// What a process on `boot` replays, opening the journal after a stop.
    fn replayed(root: &Path, boot: &str) -> Vec<Change> {
        reopen(root, boot, never_by_age(1 << 20)).1
    }

    fn reopen(root: &Path, boot: &str, tuning: Tuning) -> (Journal, Vec<Change>) {
        let mut recovery = Journal::open(root, boot, tuning).unwrap().unwrap();
        let replay = std::mem::take(&mut recovery.replay);
        (recovery.finish().unwrap(), replay)
    }

    #[test]
    fn a_new_boot_replays_what_the_last_one_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let journal = start(dir.path());
        journal.record(&[put("k", b"1")], true).unwrap();
        journal
            .record(&[ChangeRef::Remove { key: "k" }], false)
            .unwrap();
        journal.record(&[put("j", b"2")], true).unwrap();
        stop_without_checkpoint(journal);
        let (journal, replay) = reopen(dir.path(), "boot-2", never_by_age(1 << 20));
        assert_eq!(
            replay,
            vec![
                Change::Put {
                    key: "k".into(),
                    data: b"1".to_vec()
                },
                Change::Remove { key: "k".into() },
                Change::Put {
                    key: "j".into(),
                    data: b"2".to_vec()
                },
            ]
        );
        // Reopening reset the journal: nothing is replayed twice.
        stop_without_checkpoint(journal);
        assert!(replayed(dir.path(), "boot-3").is_empty());
    }

    #[test]
    fn the_same_boot_replays_nothing_and_starts_empty() {
        let dir = tempfile::tempdir().unwrap();
        let journal = start(dir.path());
        journal.record(&[put("k", b"1")], true).unwrap();
        stop_without_checkpoint(journal);
        assert!(replayed(dir.path(), "boot-1").is_empty());
    }

    #[test]
    fn checkpointed_records_are_not_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let tuning = Tuning {
            capacity: 1 << 20,
            checkpoint_after: Duration::from_millis(50),
            ..Tuning::default()
        };
        let (journal, _) = reopen(dir.path(), "boot-1", tuning);
        journal.record(&[put("old", b"1")], true).unwrap();
        // Past the checkpoint interval the turn passes and the file with
        // "old" is synced and reset.
        let deadline = Instant::now() + Duration::from_secs(30);
        while journal
            .shared
            .lock()
            .slots
            .iter()
            .any(|s| s.oldest.is_some())
        {
            assert!(Instant::now() < deadline, "no checkpoint");
            std::thread::sleep(Duration::from_millis(10));
        }
        journal.record(&[put("new", b"2")], true).unwrap();
        stop_without_checkpoint(journal);
        let (_, replay) = reopen(dir.path(), "boot-2", tuning);
        let old = Change::Put {
            key: "old".into(),
            data: b"1".to_vec(),
        };
        assert!(!replay.contains(&old), "checkpointed: {replay:?}");
        // "new" is replayed unless a checkpoint came first.
        assert!(replay.len() <= 1);
    }

    #[test]
    fn full_files_take_turns_and_no_record_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        // Room for a few dozen records a file: writers run into full files
        // and wait for checkpoints.
        let capacity = HEADER_LEN + 4096;
        let (journal, _) = reopen(dir.path(), "boot-1", never_by_age(capacity));
        let journal = Arc::new(journal);
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let journal = journal.clone();
                std::thread::spawn(move || {
                    for i in 0..200 {
                        let key = format!("w{w}/k{i:03}");
                        journal.record(&[put(&key, b"0123456789")], true).unwrap();
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.join().unwrap();
        }
        let (syncs, records) = journal.counts();
        assert_eq!(records, 800, "every record written once");
        assert!(syncs <= records);
        let journal = Arc::into_inner(journal).unwrap();
        journal.record(&[put("last", b"x")], true).unwrap();
        stop_without_checkpoint(journal);
        let (_, replay) = reopen(dir.path(), "boot-2", never_by_age(capacity));
        assert!(
            replay.contains(&Change::Put {
                key: "last".into(),
                data: b"x".to_vec()
            }),
            "the newest record survives: {replay:?}"
        );
    }

    /// A gate tests put in front of the next journal write (with the
    /// state lock released, as a slow disk's sync would hold it).
    #[derive(Default)]
    pub(super) struct WriteHold {
        state: Mutex<HoldState>,
        changed: Condvar,
    }

    #[derive(Default, PartialEq)]
    enum HoldState {
        #[default]
        Open,
        /// The next write stops here.
        Armed,
        /// A write is stopped here.
        Holding,
    }

    impl WriteHold {
        pub(super) fn pass(&self) {
            let mut state = self.state.lock().unwrap();
            if *state != HoldState::Armed {
                return;
            }
            *state = HoldState::Holding;
            self.changed.notify_all();
            while *state == HoldState::Holding {
                state = self.changed.wait(state).unwrap();
            }
        }

        fn arm(&self) {
            *self.state.lock().unwrap() = HoldState::Armed;
        }

        fn wait_until_holding(&self) {
            let mut state = self.state.lock().unwrap();
            while *state != HoldState::Holding {
                state = self.changed.wait(state).unwrap();
            }
        }

        fn release(&self) {
            *self.state.lock().unwrap() = HoldState::Open;
            self.changed.notify_all();
        }
    }

    /// Group commit: writers that arrive while a sync is under way share
    /// the next one. The first writer's write is held (a slow sync); the
    /// others append meanwhile and wait; once it is released, one write and
    /// one sync carry all of theirs. Were each record synced on its own,
    /// there would be as many syncs as records.
    #[test]
    fn writers_waiting_behind_a_sync_share_the_next_one() {
        const WRITERS: usize = 8;
        let dir = tempfile::tempdir().unwrap();
        let journal = Arc::new(start(dir.path()));
        journal.shared.hold.arm();
        let first = {
            let journal = journal.clone();
            std::thread::spawn(move || journal.record(&[put("first", b"1")], true))
        };
        journal.shared.hold.wait_until_holding();
        let others: Vec<_> = (1..WRITERS)
            .map(|w| {
                let journal = journal.clone();
                std::thread::spawn(move || {
                    let key = format!("w{w}");
                    journal.record(&[put(&key, b"x")], true)
                })
            })
            .collect();
        // Every other writer has appended its record (and so waits, as a
        // write is under way) before the held write goes on.
        while journal.shared.lock().pending.len() < WRITERS - 1 {
            std::thread::yield_now();
        }
        assert_eq!(journal.counts(), (0, 0), "nothing synced while held");
        journal.shared.hold.release();
        first.join().unwrap().unwrap();
        for writer in others {
            writer.join().unwrap().unwrap();
        }
        let (syncs, records) = journal.counts();
        assert_eq!(records, WRITERS as u64, "every record written once");
        assert_eq!(
            syncs,
            2,
            "the held write's sync, then one shared by the {} writers that waited",
            WRITERS - 1
        );
    }

    #[test]
    fn a_second_opener_gets_no_journal() {
        let dir = tempfile::tempdir().unwrap();
        let journal = start(dir.path());
        assert!(Journal::open(dir.path(), "boot-1", never_by_age(1 << 20))
            .unwrap()
            .is_none());
        drop(journal);
        assert!(Journal::open(dir.path(), "boot-1", never_by_age(1 << 20))
            .unwrap()
            .is_some());
    }

    /// Stops the checkpointer and releases the lock without a checkpoint,
    /// as a killed process would leave the files.
    fn stop_without_checkpoint(journal: Journal) {
        journal.abandon();
    }

    #[test]
    fn a_clean_close_leaves_nothing_to_replay() {
        let dir = tempfile::tempdir().unwrap();
        let journal = start(dir.path());
        journal.record(&[put("k", b"1")], true).unwrap();
        // A removal nobody waited for is still pending when the store closes.
        journal
            .record(&[ChangeRef::Remove { key: "k" }], false)
            .unwrap();
        drop(journal);
        assert!(replayed(dir.path(), "boot-2").is_empty());
    }

    #[test]
    fn a_barrier_waits_for_records_appended_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let journal = start(dir.path());
        let sequence = journal.append(&[put("k", b"1")]).unwrap();
        journal.barrier().unwrap();
        assert!(journal.shared.lock().durable >= sequence);
        stop_without_checkpoint(journal);
        assert_eq!(replayed(dir.path(), "boot-2").len(), 1);
    }
}
