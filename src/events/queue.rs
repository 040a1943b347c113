//! An endpoint's queue of events on disk, and the task that delivers them.
//!
//! The queue is a directory (`<data_dir>/events/<hash of the URL>/`, so a
//! reordered config keeps each endpoint's queue) holding one file per
//! event, named by a sequence number that orders them. A file is written
//! under a temporary name and renamed into place: a crash leaves a whole
//! event or none (a leftover temporary file is removed at start). The
//! process writes it before the request is answered; the disk's own cache
//! then carries it through a restart of the process (a power cut before the
//! kernel wrote it back may lose the last events: delivery is not worth a
//! synchronous disk write on every push).

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use sha2::{Digest as _, Sha256};
use tokio::sync::Notify;

use super::{signature, EndpointConfig};
use crate::metrics::Metrics;

/// The longest wait between two tries of one event.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

pub(super) struct EndpointQueue {
    /// The endpoint as logs and metrics name it: its host and the key of
    /// its URL, never the URL (a webhook URL often holds a token).
    name: String,
    dir: PathBuf,
    max_queued: usize,
    /// The sequence numbers of the queued events, oldest first.
    queued: Mutex<VecDeque<u64>>,
    next: AtomicU64,
    arrived: Notify,
    metrics: Arc<Metrics>,
}

impl EndpointQueue {
    /// Opens (creating) `url`'s queue under `root`, with what is in it.
    pub(super) fn open(
        root: &Path,
        url: &str,
        max_queued: usize,
        metrics: Arc<Metrics>,
    ) -> io::Result<EndpointQueue> {
        let key = hex::encode(&Sha256::digest(url.as_bytes())[..8]);
        let host = reqwest::Url::parse(url)
            .ok()
            .and_then(|u| {
                u.host_str().map(|h| match u.port() {
                    Some(port) => format!("{h}:{port}"),
                    None => h.to_owned(),
                })
            })
            .unwrap_or_default();
        let name = format!("{host}/{key}");
        let dir = root.join(key);
        std::fs::create_dir_all(&dir)?;
        let mut queued = Vec::new();
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            match name
                .strip_suffix(".json")
                .and_then(|n| n.parse::<u64>().ok())
            {
                Some(seq) => queued.push(seq),
                // An event whose write a crash cut short.
                None => {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        queued.sort_unstable();
        let next = queued.last().map_or(0, |last| last + 1);
        let queue = EndpointQueue {
            name,
            dir,
            max_queued,
            queued: Mutex::new(queued.into()),
            next: AtomicU64::new(next),
            arrived: Notify::new(),
            metrics,
        };
        queue.gauge();
        Ok(queue)
    }

    pub(super) fn name(&self) -> &str {
        &self.name
    }

    fn path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:020}.json"))
    }

    /// Writes an event into the queue, dropping the oldest when it is full.
    pub(super) fn push(&self, body: &[u8]) -> io::Result<()> {
        let seq = self.next.fetch_add(1, Ordering::SeqCst);
        let temporary = self.dir.join(format!("{seq:020}.tmp"));
        std::fs::write(&temporary, body)?;
        std::fs::rename(&temporary, self.path(seq))?;
        let dropped = {
            let mut queued = self.queued.lock().expect("queue lock");
            queued.push_back(seq);
            let mut dropped = Vec::new();
            while queued.len() > self.max_queued {
                dropped.extend(queued.pop_front());
            }
            dropped
        };
        for old in &dropped {
            let _ = std::fs::remove_file(self.path(*old));
            self.metrics
                .events_dropped
                .get_or_create(&self.labels())
                .inc();
        }
        if !dropped.is_empty() {
            tracing::warn!(endpoint = %self.name, dropped = dropped.len(), max_queued = self.max_queued,
                "the event queue is full: dropped its oldest events");
        }
        self.gauge();
        self.arrived.notify_one();
        Ok(())
    }

    fn labels(&self) -> crate::metrics::EndpointLabels {
        crate::metrics::EndpointLabels {
            endpoint: self.name.clone(),
        }
    }

    fn gauge(&self) {
        let len = self.queued.lock().expect("queue lock").len();
        self.metrics
            .events_queued
            .get_or_create(&self.labels())
            .set(len as i64);
    }

    /// The oldest event, once there is one.
    async fn oldest(&self) -> (u64, Vec<u8>) {
        loop {
            let notified = self.arrived.notified();
            let head = self.queued.lock().expect("queue lock").front().copied();
            if let Some(seq) = head {
                match std::fs::read(self.path(seq)) {
                    Ok(body) => return (seq, body),
                    // Dropped meanwhile (the queue was full): the next.
                    Err(_) => {
                        self.forget(seq);
                        continue;
                    }
                }
            }
            notified.await;
        }
    }

    /// Takes a delivered event out of the queue.
    fn delivered(&self, seq: u64) {
        let _ = std::fs::remove_file(self.path(seq));
        self.forget(seq);
    }

    fn forget(&self, seq: u64) {
        let mut queued = self.queued.lock().expect("queue lock");
        if queued.front() == Some(&seq) {
            queued.pop_front();
        }
        drop(queued);
        self.gauge();
    }
}

/// The delivery task of one endpoint, stopped when dropped.
pub(super) struct DeliveryTask(tokio::task::JoinHandle<()>);

impl Drop for DeliveryTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl DeliveryTask {
    pub(super) fn spawn(
        queue: Arc<EndpointQueue>,
        config: EndpointConfig,
        http: reqwest::Client,
    ) -> DeliveryTask {
        DeliveryTask(tokio::spawn(deliver(queue, config, http)))
    }
}

/// Sends the queue's events one at a time, oldest first; an event that
/// fails is sent again after a backoff (1 s, doubling to 5 min), and the
/// ones behind it wait (each endpoint sees events in order).
async fn deliver(queue: Arc<EndpointQueue>, config: EndpointConfig, http: reqwest::Client) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let (seq, body) = queue.oldest().await;
        let outcome = send(&http, &config, body).await;
        let result = if outcome.is_ok() { "ok" } else { "error" };
        queue
            .metrics
            .events_sent
            .get_or_create(&crate::metrics::DeliveryLabels {
                endpoint: queue.name.clone(),
                result,
            })
            .inc();
        match outcome {
            Ok(()) => {
                queue.delivered(seq);
                backoff = Duration::from_secs(1);
            }
            Err(why) => {
                tracing::warn!(endpoint = %queue.name, %why, retry_in_s = backoff.as_secs(),
                    "an event was not delivered; trying again");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

async fn send(
    http: &reqwest::Client,
    config: &EndpointConfig,
    body: Vec<u8>,
) -> Result<(), String> {
    let mut request = http.post(&config.url).timeout(config.timeout).header(
        "content-type",
        "application/cloudevents+json; charset=utf-8",
    );
    for (name, value) in &config.headers {
        request = request.header(name.as_str(), value.expose());
    }
    if let Some(secret) = &config.secret {
        let t = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        request = request.header("berth-signature", signature(secret.expose(), t, &body));
    }
    match request.body(body).send().await {
        Ok(response) if response.status().is_success() => Ok(()),
        Ok(response) => Err(format!("answered {}", response.status())),
        Err(e) if e.is_timeout() => Err(format!("no answer within {:?}", config.timeout)),
        Err(e) => Err(format!("unreachable: {e}")),
    }
}
