//! The registry's rules, with no I/O: names, references, digests, manifest
//! validation and the spec's error codes. Nothing here knows HTTP or storage.

pub mod digest;
pub mod error;
#[cfg(test)]
mod fuzz_tests;
#[cfg(test)]
pub(crate) mod fuzzing;
pub mod manifest;
pub mod name;
pub mod pattern;

pub use digest::{Algorithm, Digest, Hasher};
pub use error::{ErrorCode, RegistryError, Result};
pub use manifest::{Manifest, ManifestKind, Requirement};
pub use name::{Reference, RepositoryName, Tag};
pub use pattern::RepositoryPattern;
