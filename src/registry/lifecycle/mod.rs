//! Offline and background work on a registry's store, apart from the
//! request path: the lifecycle rules ([`rules`]), tag retention, garbage
//! collection, upload expiry, the scheduled task that runs them inside the
//! server ([`task`]), and the integrity check ([`fsck`]).
//!
//! All of it works over the [`Storage`](crate::storage::Storage) trait, never
//! a backend, so it runs on any store; what only some backends have (a
//! filesystem's leftover temporary files) is asked for as an optional
//! capability. It walks the store a listing page at a time
//! ([`crate::storage::Listing`], [`super::RepositoryWalk`]).
//!
//! Retention, collection and expiry run while clients push and pull; their
//! safety rests on the touch-before-use protocol, whose write-path side is
//! `registry/touch.rs` (argument: `docs/design/gc.md`). They return reports
//! as data; the CLI (`src/main.rs`) prints them and picks the exit status.

mod expiry;
pub mod fsck;
mod gc;
mod retention;
pub mod rules;
pub mod task;

pub use expiry::ExpiryReport;
pub use gc::{GcOptions, GcReport};
pub use retention::{RemovedTag, RetentionReport};
pub use rules::{LifecycleConfig, RetentionRule, TagPattern, TagRule, UntaggedManifests};
pub use task::{LifecycleReport, LifecycleTask};
