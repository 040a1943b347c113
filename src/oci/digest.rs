//! Content digests (OCI image-spec, "Digests"): `algorithm ":" encoded`.
//!
//! Berth accepts the two registered algorithms, sha256 and sha512, with
//! lowercase hex encodings of exactly the algorithm's length. Anything else is
//! `DIGEST_INVALID`: an unknown algorithm cannot be verified, and a registry
//! must never store content under a name it did not check.

use std::fmt;
use std::str::FromStr;

use sha2::digest::common::hazmat::SerializableState;
use sha2::{Digest as _, Sha256, Sha512};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }

    pub fn parse(s: &str) -> Option<Algorithm> {
        match s {
            "sha256" => Some(Algorithm::Sha256),
            "sha512" => Some(Algorithm::Sha512),
            _ => None,
        }
    }
}

/// A validated digest. Its `Display` form is the canonical `alg:hex`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: Algorithm,
    hex: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid digest: {0}")]
pub struct InvalidDigest(pub String);

impl Digest {
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The encoded part: lowercase hex, safe to use as a path segment.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    pub fn from_parts(algorithm: Algorithm, hex: &str) -> Result<Digest, InvalidDigest> {
        let valid = hex.len() == algorithm.hex_len()
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !valid {
            return Err(InvalidDigest(format!("{}:{hex}", algorithm.as_str())));
        }
        Ok(Digest {
            algorithm,
            hex: hex.to_owned(),
        })
    }

    /// Digest of an in-memory document (manifests, small test bodies).
    pub fn of(algorithm: Algorithm, data: &[u8]) -> Digest {
        let mut hasher = Hasher::new(algorithm);
        hasher.update(data);
        hasher.finish()
    }
}

impl FromStr for Digest {
    type Err = InvalidDigest;

    fn from_str(s: &str) -> Result<Digest, InvalidDigest> {
        let (alg, hex) = s
            .split_once(':')
            .ok_or_else(|| InvalidDigest(s.to_owned()))?;
        let algorithm = Algorithm::parse(alg).ok_or_else(|| InvalidDigest(s.to_owned()))?;
        Digest::from_parts(algorithm, hex)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.as_str(), self.hex)
    }
}

/// A running hash whose state can be saved between requests, so that a
/// chunked upload can continue in another request (or another process)
/// without reading back what was already received.
#[derive(Clone)]
pub enum Hasher {
    Sha256(Box<Sha256>),
    Sha512(Box<Sha512>),
}

impl Hasher {
    pub fn new(algorithm: Algorithm) -> Hasher {
        match algorithm {
            Algorithm::Sha256 => Hasher::Sha256(Box::default()),
            Algorithm::Sha512 => Hasher::Sha512(Box::default()),
        }
    }

    pub fn algorithm(&self) -> Algorithm {
        match self {
            Hasher::Sha256(_) => Algorithm::Sha256,
            Hasher::Sha512(_) => Algorithm::Sha512,
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    pub fn finish(self) -> Digest {
        let (algorithm, hex) = match self {
            Hasher::Sha256(h) => (Algorithm::Sha256, hex::encode(h.finalize())),
            Hasher::Sha512(h) => (Algorithm::Sha512, hex::encode(h.finalize())),
        };
        Digest { algorithm, hex }
    }

    /// The hash state as hex, for the upload session record.
    pub fn save_state(&self) -> String {
        match self {
            Hasher::Sha256(h) => hex::encode(h.serialize()),
            Hasher::Sha512(h) => hex::encode(h.serialize()),
        }
    }

    pub fn restore_state(algorithm: Algorithm, state: &str) -> Option<Hasher> {
        let bytes = hex::decode(state).ok()?;
        match algorithm {
            Algorithm::Sha256 => {
                let state = bytes.as_slice().try_into().ok()?;
                Some(Hasher::Sha256(Box::new(Sha256::deserialize(state).ok()?)))
            }
            Algorithm::Sha512 => {
                let state = bytes.as_slice().try_into().ok()?;
                Some(Hasher::Sha512(Box::new(Sha512::deserialize(state).ok()?)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_canonical_digests_and_rejects_the_rest() {
        let d: Digest = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
            .parse()
            .unwrap();
        assert_eq!(d.algorithm(), Algorithm::Sha256);
        assert_eq!(Digest::of(Algorithm::Sha256, b""), d);
        for bad in [
            "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
            "sha256:abc",
            "md5:d41d8cd98f00b204e9800998ecf8427e",
            "sha256",
            "sha256:../../etc/passwd",
            "",
        ] {
            assert!(bad.parse::<Digest>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn hash_state_survives_a_save_and_restore() {
        for alg in [Algorithm::Sha256, Algorithm::Sha512] {
            let mut first = Hasher::new(alg);
            first.update(b"hello, ");
            let mut resumed = Hasher::restore_state(alg, &first.save_state()).unwrap();
            resumed.update(b"world");
            assert_eq!(resumed.finish(), Digest::of(alg, b"hello, world"));
        }
    }
}
