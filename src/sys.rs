//! The one home of `unsafe` and of calls into libc: safe wrappers around
//! the system calls Berth makes beyond what `std` offers. Every other module
//! is built with `#![deny(unsafe_code)]` (lib.rs, main.rs), so a new system
//! call has to come here, with a `SAFETY:` comment on its block.
//!
//! Each wrapper takes what it works on as a Rust handle (`&File`, an
//! `AsFd`), so the descriptor is open for the whole call; offsets and
//! lengths are checked into the C types here, and failures come back as
//! `io::Error` (errno), never as a return code to interpret.
//!
//! Hand-written over libc (already a dependency) rather than through
//! `rustix`/`nix`: the calls are few, two of them (`cachestat`, `mincore` on
//! a mapping) would stay unsafe or missing there anyway, and each wrapper
//! here is a few lines one can check against its man page.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd};

use bytes::Bytes;

fn off_t(offset: u64) -> io::Result<libc::off_t> {
    libc::off_t::try_from(offset).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "offset beyond this platform's file offsets",
        )
    })
}

/// Names this boot of the machine (`/proc/sys/kernel/random/boot_id`), or
/// `None` where the kernel does not say.
pub fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|id| id.trim().to_owned())
        .filter(|id| !id.is_empty())
}

/// The size of a memory page.
pub fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).ok().filter(|&s| s > 0).unwrap_or(4096)
}

/// Takes `flock(LOCK_EX)` on `file` without waiting: `Ok(false)` when
/// another open file description holds it. Released when every descriptor
/// of this one is closed.
pub fn try_lock_exclusive(file: &File) -> io::Result<bool> {
    // SAFETY: `file` keeps the descriptor open for the call; flock only
    // reads it.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EWOULDBLOCK) => Ok(false),
        _ => Err(e),
    }
}

/// Gives `file` its first `len` bytes of disk space now
/// (`posix_fallocate`), so that later writes within them change no size or
/// allocation a data sync would have to write too. `Ok(false)` when the
/// filesystem cannot preallocate (the file is then unchanged).
pub fn preallocate(file: &File, len: u64) -> io::Result<bool> {
    let len = off_t(len)?;
    // SAFETY: `file` keeps the descriptor open for the call; no memory is
    // passed.
    match unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) } {
        0 => Ok(true),
        libc::EOPNOTSUPP | libc::EINVAL => Ok(false),
        err => Err(io::Error::from_raw_os_error(err)),
    }
}

/// Makes every write to the filesystem that holds `file` durable
/// (`syncfs`).
pub fn sync_filesystem(file: &File) -> io::Result<()> {
    // SAFETY: `file` keeps the descriptor open for the call; syncfs only
    // reads it.
    if unsafe { libc::syncfs(file.as_raw_fd()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets `file`'s modification (and access) time to now. A null `times`
/// means "now", which (unlike an explicit time, what `File::set_times`
/// passes) write access suffices for, not ownership.
pub fn touch_now(file: &File) -> io::Result<()> {
    // SAFETY: `file` keeps the descriptor open for the call; a null `times`
    // is allowed and nothing is written through it.
    if unsafe { libc::futimens(file.as_raw_fd(), std::ptr::null()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Starts writing `file`'s dirty pages without waiting for them
/// (`sync_file_range(SYNC_FILE_RANGE_WRITE)`), so that the filesystem
/// allocates their blocks now. Advice only: where it fails or is missing,
/// the data sync that follows does the work.
pub fn start_writeback(file: &File) {
    #[cfg(target_os = "linux")]
    // SAFETY: `file` keeps the descriptor open for the call; it only
    // schedules I/O and no memory is passed.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = file;
}

/// Reads exactly `len` bytes of `file` at `offset` (`pread`) into a new
/// buffer that is not zeroed first: a blob read would otherwise pass over
/// every byte one more time. A file shorter than that is `UnexpectedEof`.
pub fn read_exact_at(file: &File, len: usize, offset: u64) -> io::Result<Bytes> {
    let mut buffer = bytes::BytesMut::with_capacity(len);
    while buffer.len() < len {
        let filled = buffer.len();
        let at = off_t(offset + filled as u64)?;
        let spare = buffer.spare_capacity_mut();
        // SAFETY: `file` keeps the descriptor open for the call; the kernel
        // writes at most `len - filled` bytes into the spare capacity, which
        // has room for them (`with_capacity(len)`).
        let n = unsafe {
            libc::pread(
                file.as_raw_fd(),
                spare.as_mut_ptr().cast(),
                len - filled,
                at,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file ended before its size",
            ));
        }
        // SAFETY: the kernel initialised the `n` bytes after `filled`.
        unsafe { buffer.set_len(filled + n as usize) };
    }
    Ok(buffer.freeze())
}

/// Sends up to `count` bytes of `file` from `offset` to `socket` in the
/// kernel (`sendfile`), without passing them through this process's memory.
/// Returns how many it sent (0: the file ended); a non-blocking socket
/// that is full gives `WouldBlock`.
pub fn sendfile(socket: &impl AsFd, file: &File, offset: u64, count: usize) -> io::Result<usize> {
    let mut offset = off_t(offset)?;
    // SAFETY: both handles keep their descriptors open for the call, and
    // `offset` is a live local the kernel may update.
    let n = unsafe {
        libc::sendfile(
            socket.as_fd().as_raw_fd(),
            file.as_raw_fd(),
            &mut offset,
            count,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// How many of the pages of `file` in `len` bytes from `offset` (both page
/// aligned) are in the page cache, by `cachestat(2)` (Linux 6.5), which
/// answers without touching the file. `Unsupported` where the kernel or
/// this build lacks it.
pub fn cached_pages(file: &File, offset: u64, len: u64) -> io::Result<u64> {
    cachestat::cached_pages(file, offset, len)
}

#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
mod cachestat {
    use super::*;

    /// `cachestat`'s number in the generic syscall table, which x86-64 and
    /// aarch64 share for it; libc does not name it yet.
    const SYS_CACHESTAT: libc::c_long = 451;

    #[repr(C)]
    struct CachestatRange {
        off: u64,
        len: u64,
    }

    #[repr(C)]
    #[derive(Default)]
    struct Cachestat {
        nr_cache: u64,
        nr_dirty: u64,
        nr_writeback: u64,
        nr_evicted: u64,
        nr_recently_evicted: u64,
    }

    pub(super) fn cached_pages(file: &File, offset: u64, len: u64) -> io::Result<u64> {
        let range = CachestatRange { off: offset, len };
        let mut stat = Cachestat::default();
        // SAFETY: `file` keeps the descriptor open for the call; both
        // pointers are to live structs laid out as the kernel's
        // (`#[repr(C)]`), the first only read, the second only written.
        let result = unsafe {
            libc::syscall(
                SYS_CACHESTAT,
                file.as_raw_fd(),
                &range as *const CachestatRange,
                &mut stat as *mut Cachestat,
                0,
            )
        };
        if result == 0 {
            Ok(stat.nr_cache)
        } else {
            // ENOSYS on older kernels: the caller asks mincore instead.
            Err(io::Error::last_os_error())
        }
    }
}

#[cfg(not(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
)))]
mod cachestat {
    use super::*;

    pub(super) fn cached_pages(_file: &File, _offset: u64, _len: u64) -> io::Result<u64> {
        Err(io::ErrorKind::Unsupported.into())
    }
}

/// Whether every page of `file` in `len` bytes from `offset` (page
/// aligned) is in the page cache, by `mincore(2)` on a mapping of the range
/// that is never read. False when it cannot tell.
pub fn all_pages_resident(file: &File, offset: u64, len: usize) -> bool {
    if len == 0 {
        return true;
    }
    let Ok(offset) = off_t(offset) else {
        return false;
    };
    // SAFETY: a fresh read-only shared mapping of an open descriptor, only
    // passed to mincore and then unmapped; its memory is never read, so an
    // I/O error or a file shrunk meanwhile cannot fault. `pages` has one
    // byte for each page of `len`, as mincore writes.
    unsafe {
        let map = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            offset,
        );
        if map == libc::MAP_FAILED {
            return false;
        }
        let mut pages = vec![0u8; len.div_ceil(page_size() as usize)];
        let ok = libc::mincore(map, len, pages.as_mut_ptr()) == 0;
        libc::munmap(map, len);
        ok && pages.iter().all(|p| p & 1 == 1)
    }
}

/// The soft and hard limits on this process's open descriptors
/// (`RLIMIT_NOFILE`); `RLIM_INFINITY` comes back as `u64::MAX`.
// `rlim_t` is `u64` here but narrower on some 32-bit targets.
#[allow(clippy::useless_conversion)]
pub fn open_files_limit() -> io::Result<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `rlimit` through the pointer, which
    // points to a live, writable one.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((u64::from(limit.rlim_cur), u64::from(limit.rlim_max)))
}

/// Raises the soft limit on open descriptors to the hard one, as Go's
/// runtime does at start: the soft limit (1,024 under systemd's default)
/// exists for programs that use `select(2)`, which Berth does not. Returns
/// the soft limit in force afterwards. An unlimited hard limit is not
/// copied (the kernel refuses a soft limit above `fs.nr_open`): the soft
/// limit then goes as high as `nr_open` allows.
#[allow(clippy::useless_conversion)] // as above
pub fn raise_open_files_limit() -> io::Result<u64> {
    let (soft, hard) = open_files_limit()?;
    let target = if hard == u64::from(libc::RLIM_INFINITY) {
        std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|n| n.trim().parse::<u64>().ok())
            .unwrap_or(soft)
            .max(soft)
    } else {
        hard
    };
    if target <= soft {
        return Ok(soft);
    }
    // Both came from an `rlim_t` (or `nr_open`, an int): they fit.
    let limit = libc::rlimit {
        rlim_cur: target as libc::rlim_t,
        rlim_max: hard as libc::rlim_t,
    };
    // SAFETY: setrlimit reads one `rlimit` through the pointer, which
    // points to a live one; raising the soft limit up to the hard one needs
    // no privilege and affects only this process's later `open`s.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(open_files_limit()?.0)
}

/// Caps glibc's malloc arenas at `arenas` (`M_ARENA_MAX`): arenas made
/// afterwards share the existing ones. Call before threads start allocating.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn limit_malloc_arenas(arenas: usize) {
    let arenas = libc::c_int::try_from(arenas.max(1)).unwrap_or(libc::c_int::MAX);
    // SAFETY: mallopt only changes a malloc tunable; M_ARENA_MAX takes any
    // positive count and is safe to set at any time (it limits the arenas
    // made afterwards). Its return value only says whether the option was
    // known, and this one is in every glibc since 2.10.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, arenas);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read as _, Write as _};

    #[test]
    #[allow(clippy::useless_conversion)] // as above
    fn the_open_files_soft_limit_is_raised_to_the_hard_one() {
        let (_, hard) = open_files_limit().unwrap();
        let raised = raise_open_files_limit().unwrap();
        let (soft, hard_after) = open_files_limit().unwrap();
        assert_eq!(raised, soft);
        assert_eq!(hard_after, hard, "the hard limit is never changed");
        if hard != u64::from(libc::RLIM_INFINITY) {
            assert_eq!(soft, hard);
        }
    }

    fn file_of(content: &[u8]) -> File {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(content).unwrap();
        file
    }

    /// `#![deny(unsafe_code)]` keeps `unsafe` here unless someone allows
    /// it elsewhere, and says nothing of libc: this keeps both in this file.
    #[test]
    fn no_other_module_calls_libc_or_allows_unsafe() {
        fn sources(dir: &std::path::Path, found: &mut Vec<std::path::PathBuf>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    sources(&path, found);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    found.push(path);
                }
            }
        }
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        sources(&src, &mut files);
        assert!(files.len() > 20, "found the sources: {files:?}");
        let mut offences = Vec::new();
        for file in files.iter().filter(|f| !f.ends_with("src/sys.rs")) {
            let text = std::fs::read_to_string(file).unwrap();
            let lines: Vec<&str> = text.lines().collect();
            for (i, line) in lines.iter().enumerate() {
                let allowed_here = line.contains("allow(unsafe_code)")
                    && !(file.ends_with("src/lib.rs")
                        && lines
                            .get(i + 1)
                            .is_some_and(|next| next.trim() == "mod sys;"));
                if line.contains("libc::") || allowed_here {
                    offences.push(format!("{}:{}: {line}", file.display(), i + 1));
                }
            }
        }
        assert!(offences.is_empty(), "{offences:#?}");
    }

    #[test]
    fn read_exact_at_reads_the_range_and_refuses_to_read_past_the_end() {
        let content: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let file = file_of(&content);
        assert_eq!(
            read_exact_at(&file, 4000, 1234).unwrap(),
            &content[1234..5234]
        );
        assert!(read_exact_at(&file, 0, 10_000).unwrap().is_empty());
        let short = read_exact_at(&file, 10, 9995).unwrap_err();
        assert_eq!(short.kind(), io::ErrorKind::UnexpectedEof);
        let beyond = read_exact_at(&file, 1, u64::MAX).unwrap_err();
        assert_eq!(beyond.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn the_lock_is_held_by_one_open_file_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let open = || {
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .unwrap()
        };
        let first = open();
        assert!(try_lock_exclusive(&first).unwrap());
        let second = open();
        assert!(!try_lock_exclusive(&second).unwrap(), "held by the first");
        drop(first);
        assert!(try_lock_exclusive(&second).unwrap(), "released on close");
    }

    #[test]
    fn preallocation_gives_the_file_its_size() {
        let file = tempfile::tempfile().unwrap();
        if preallocate(&file, 1 << 20).unwrap() {
            assert_eq!(file.metadata().unwrap().len(), 1 << 20);
        } else {
            // A filesystem without fallocate: nothing changed.
            assert_eq!(file.metadata().unwrap().len(), 0);
        }
    }

    #[test]
    fn touching_sets_the_modification_time_to_now() {
        let file = file_of(b"x");
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        file.set_modified(old).unwrap();
        touch_now(&file).unwrap();
        let modified = file.metadata().unwrap().modified().unwrap();
        assert!(modified > old + std::time::Duration::from_secs(3000));
    }

    #[test]
    fn filesystem_sync_and_writeback_accept_an_open_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = File::create(dir.path().join("f")).unwrap();
        start_writeback(&file);
        sync_filesystem(&file).unwrap();
    }

    #[test]
    fn sendfile_sends_the_range_through_a_socket() {
        let content: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 256) as u8).collect();
        let file = file_of(&content);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let mut sent = 0;
        while sent < 3000 {
            sent += sendfile(&server, &file, 1000 + sent as u64, 3000 - sent).unwrap();
        }
        assert_eq!(sendfile(&server, &file, 5000, 10).unwrap(), 0, "at the end");
        drop(server);
        let mut received = Vec::new();
        (&client).read_to_end(&mut received).unwrap();
        assert_eq!(received, &content[1000..4000]);
    }

    #[test]
    fn pages_just_written_are_resident_and_evicted_ones_are_not() {
        let page = page_size();
        let file = file_of(&vec![7u8; 4 * page as usize]);
        assert!(all_pages_resident(&file, 0, 4 * page as usize));
        match cached_pages(&file, 0, 4 * page) {
            Ok(cached) => assert_eq!(cached, 4),
            Err(e) => assert!(
                matches!(e.raw_os_error(), Some(libc::ENOSYS))
                    || e.kind() == io::ErrorKind::Unsupported,
                "{e}"
            ),
        }
        // Dirty pages cannot be dropped: sync, then advise the kernel to
        // drop them (the test's only way to make a range cold).
        file.sync_all().unwrap();
        // SAFETY: `file` keeps the descriptor open; the call only advises.
        let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        assert_eq!(rc, 0);
        assert!(!all_pages_resident(&file, 0, 4 * page as usize));
        if let Ok(cached) = cached_pages(&file, 0, 4 * page) {
            assert_eq!(cached, 0);
        }
    }
}
