//! Events for CI/CD (`[[events.endpoints]]`): on a push, a tag set, a
//! delete, a rollback and (when asked for) a pull, a CloudEvents 1.0 JSON
//! event is POSTed to each endpoint that wants it.
//!
//! Delivery is at least once, in order per endpoint, from a queue on disk
//! (`queue.rs`): an event is a file in its endpoint's queue directory before
//! the request that caused it is answered, so a restart loses nothing; a
//! task per endpoint sends the oldest, retrying with backoff, and removes it
//! once the endpoint answered 2xx. A slow or dead endpoint holds up only its
//! own queue, never a push. A full queue drops its oldest event (counted in
//! `berth_events_dropped_total`, and logged).
//!
//! With a `secret`, each request carries `Berth-Signature: t=<unix
//! seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`, which a receiver checks
//! (and rejects old `t`, against replays).

mod queue;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::auth::Secret;
use crate::metrics::Metrics;
use crate::oci::{RepositoryName, RepositoryPattern};
use queue::EndpointQueue;

/// The `[events]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventsConfig {
    pub endpoints: Vec<EndpointConfig>,
    /// The CloudEvents `source` of every event: this registry's name.
    pub source: String,
    /// Where the queues are kept (default: `<data_dir>/events`). On
    /// replicas whose data directory is disposable (Kubernetes `emptyDir`),
    /// a volume of their own keeps queued events across a replacement.
    pub queue_dir: Option<std::path::PathBuf>,
    /// Events kept per endpoint while it does not take them; past this the
    /// oldest are dropped.
    pub max_queued: usize,
}

impl Default for EventsConfig {
    fn default() -> EventsConfig {
        EventsConfig {
            endpoints: Vec::new(),
            source: "berth".to_owned(),
            queue_dir: None,
            max_queued: 10_000,
        }
    }
}

/// One `[[events.endpoints]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// Where events are POSTed (`http://` or `https://`).
    pub url: String,
    /// Which events it gets (default: all but `pull`).
    #[serde(default = "default_kinds")]
    pub events: Vec<EventKind>,
    /// The repositories it hears about (default: all).
    #[serde(default)]
    pub repositories: Option<RepositoryPattern>,
    /// Headers sent with each event (an `Authorization`, say).
    #[serde(default)]
    pub headers: BTreeMap<String, Secret>,
    /// The key of the `Berth-Signature` HMAC.
    #[serde(default)]
    pub secret: Option<Secret>,
    /// How long one delivery may take.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_kinds() -> Vec<EventKind> {
    vec![
        EventKind::Push,
        EventKind::Delete,
        EventKind::Tag,
        EventKind::Rollback,
    ]
}

fn default_timeout() -> Duration {
    Duration::from_secs(5)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Push,
    Delete,
    Tag,
    Rollback,
    Pull,
}

impl EventKind {
    /// The CloudEvents `type`.
    fn cloud_event_type(self) -> &'static str {
        match self {
            EventKind::Push => "dev.berth.manifest.pushed",
            EventKind::Delete => "dev.berth.manifest.deleted",
            EventKind::Tag => "dev.berth.tag.updated",
            EventKind::Rollback => "dev.berth.tag.rolledback",
            EventKind::Pull => "dev.berth.manifest.pulled",
        }
    }
}

impl EventsConfig {
    pub fn validate(&self) -> Result<(), String> {
        for endpoint in &self.endpoints {
            let url = endpoint.url.as_str();
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(format!("events.endpoints: url {url:?} is not http(s)"));
            }
            if endpoint.events.is_empty() {
                return Err(format!("events.endpoints {url:?}: events is empty"));
            }
            for name in endpoint.headers.keys() {
                axum::http::HeaderName::try_from(name.as_str())
                    .map_err(|_| format!("events.endpoints {url:?}: bad header name {name:?}"))?;
            }
        }
        if self.max_queued == 0 {
            return Err("events.max_queued must be at least 1".to_owned());
        }
        Ok(())
    }
}

/// What happened, as the HTTP layer saw it succeed.
#[derive(Debug, Clone)]
pub struct Happened {
    pub kind: EventKind,
    pub repository: RepositoryName,
    pub digest: Option<String>,
    pub tag: Option<String>,
    pub media_type: Option<String>,
    /// Who did it (user, robot or token subject; `None`: anonymous).
    pub actor: Option<String>,
}

/// A CloudEvents 1.0 event in structured JSON mode.
#[derive(Debug, Serialize, Deserialize)]
struct CloudEvent {
    specversion: String,
    id: String,
    source: String,
    #[serde(rename = "type")]
    kind: String,
    time: String,
    subject: String,
    datacontenttype: String,
    data: EventData,
}

#[derive(Debug, Serialize, Deserialize)]
struct EventData {
    repository: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    digest: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tag: Option<String>,
    #[serde(rename = "mediaType", skip_serializing_if = "Option::is_none")]
    media_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    actor: Option<String>,
}

/// The configured endpoints, each with its queue and delivery task.
pub struct Events {
    endpoints: Vec<(EndpointConfig, Arc<EndpointQueue>)>,
    source: String,
    /// The delivery tasks, stopped when this is dropped.
    _tasks: Vec<queue::DeliveryTask>,
}

impl Events {
    /// Opens each endpoint's queue under `queue_dir` or `<data_dir>/events`
    /// (what an earlier run left
    /// queued is sent first) and starts its delivery task; `None` without
    /// endpoints.
    pub fn start(
        config: &EventsConfig,
        data_dir: &Path,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Option<Arc<Events>>> {
        if config.endpoints.is_empty() {
            return Ok(None);
        }
        let default_dir = data_dir.join("events");
        let dir = config.queue_dir.as_deref().unwrap_or(&default_dir);
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(std::io::Error::other)?;
        let mut endpoints = Vec::new();
        let mut tasks = Vec::new();
        for endpoint in &config.endpoints {
            let queue = Arc::new(EndpointQueue::open(
                dir,
                &endpoint.url,
                config.max_queued,
                metrics.clone(),
            )?);
            tasks.push(queue::DeliveryTask::spawn(
                queue.clone(),
                endpoint.clone(),
                http.clone(),
            ));
            endpoints.push((endpoint.clone(), queue));
        }
        Ok(Some(Arc::new(Events {
            endpoints,
            source: config.source.clone(),
            _tasks: tasks,
        })))
    }

    /// Whether any endpoint wants events of `kind` (pulls are many: no
    /// event is built for nobody).
    pub fn wants(&self, kind: EventKind) -> bool {
        self.endpoints.iter().any(|(c, _)| c.events.contains(&kind))
    }

    /// Queues `happened` for every endpoint that wants it. Called before
    /// the response: once it returns, the event survives a restart.
    pub fn emit(&self, happened: &Happened) {
        let wanted: Vec<&Arc<EndpointQueue>> = self
            .endpoints
            .iter()
            .filter(|(config, _)| config.events.contains(&happened.kind))
            .filter(|(config, _)| {
                config
                    .repositories
                    .as_ref()
                    .is_none_or(|p| p.matches(&happened.repository))
            })
            .map(|(_, queue)| queue)
            .collect();
        if wanted.is_empty() {
            return;
        }
        let subject = match (&happened.tag, &happened.digest) {
            (Some(tag), _) => format!("{}:{tag}", happened.repository),
            (None, Some(digest)) => format!("{}@{digest}", happened.repository),
            (None, None) => happened.repository.to_string(),
        };
        let event = CloudEvent {
            specversion: "1.0".to_owned(),
            id: uuid::Uuid::new_v4().to_string(),
            source: self.source.clone(),
            kind: happened.kind.cloud_event_type().to_owned(),
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            subject,
            datacontenttype: "application/json".to_owned(),
            data: EventData {
                repository: happened.repository.to_string(),
                digest: happened.digest.clone(),
                tag: happened.tag.clone(),
                media_type: happened.media_type.clone(),
                actor: happened.actor.clone(),
            },
        };
        let Ok(body) = serde_json::to_vec(&event) else {
            return;
        };
        for queue in wanted {
            if let Err(e) = queue.push(&body) {
                tracing::error!(endpoint = %queue.name(), error = %e, "queueing an event failed");
            }
        }
    }
}

/// `Berth-Signature` for `body` sent at `t` (Unix seconds).
pub fn signature(secret: &str, t: u64, body: &[u8]) -> String {
    use hmac::{KeyInit, Mac};
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_an_hmac_of_the_time_and_the_body() {
        // As Python's hmac module computes it:
        // hmac.new(b"key", b"1700000000.{}", hashlib.sha256).hexdigest()
        let sig = signature("key", 1_700_000_000, b"{}");
        assert_eq!(
            sig,
            "t=1700000000,v1=9d713ed406bb7076d4123f0dc2c39d2df5c654ed4b0cd56b52c8b4c940bd63ae"
        );
        assert_ne!(sig, signature("other", 1_700_000_000, b"{}"));
        assert_ne!(sig, signature("key", 1_700_000_001, b"{}"));
        assert_ne!(sig, signature("key", 1_700_000_000, b"{ }"));
    }
}
