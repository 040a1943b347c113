//! The seam between the handlers and the server that carries their
//! requests (`serve/`): what a connection offers a request, as request
//! extensions the server sets and handlers read. Defined here, on the
//! handlers' side, so that `http` imports nothing from `serve`: the server
//! depends on these types, never the other way round.

use std::ops::{Deref, Range};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::body::Body;

use crate::registry::LocalFile;

/// Marks a request that arrived over TLS terminated by Berth itself (set by
/// the TLS server), so that URLs Berth hands out use `https`.
#[derive(Debug, Clone, Copy)]
pub struct OverTls;

/// A connection's way of sending a file on this machine's disk as a
/// response body without copying it through memory (`sendfile` on plain
/// HTTP/1.1: `serve/zero_copy.rs`).
pub trait FileSender: Send + Sync {
    /// Whether sending a file this way pays now, over a copy (the server
    /// weighs it by the [`Download`]s in flight).
    fn pays(&self) -> bool;

    /// The body of `range` of `file` (which must lie within it), holding
    /// `download` while it lives. Nothing between the handler and the
    /// connection may copy or re-frame this body (no compression layer).
    fn body(&self, file: LocalFile, range: Range<u64>, download: Download) -> Body;
}

/// Request extension: the request's connection can send files with a
/// [`FileSender`]. Absent over TLS and HTTP/2, whose framing copies bodies.
#[derive(Clone)]
pub struct SendFile(pub Arc<dyn FileSender>);

impl Deref for SendFile {
    type Target = dyn FileSender;

    fn deref(&self) -> &(dyn FileSender + 'static) {
        &*self.0
    }
}

/// Blob downloads in progress, of either kind (sent from a file or
/// streamed).
static DOWNLOADS: AtomicUsize = AtomicUsize::new(0);

/// Counts a blob download while it lives.
pub struct Download(());

impl Download {
    pub fn start() -> Download {
        DOWNLOADS.fetch_add(1, Ordering::Relaxed);
        Download(())
    }
}

impl Drop for Download {
    fn drop(&mut self) {
        DOWNLOADS.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Blob downloads in progress in this process.
pub fn downloads_in_flight() -> usize {
    DOWNLOADS.load(Ordering::Relaxed)
}
