//! The fuzz tests' shared harness (issue 12): seeds from the corpus, byte
//! mutations of them, fully random input, and how many cases to run.
//!
//! The fuzz tests are proptest properties next to the parsers they exercise
//! (`oci::fuzz_tests`, `auth::fuzz_tests`, `http::fuzz_tests`) and one over the
//! whole router (`tests/it/fuzz.rs`). Proptest rather than `cargo fuzz`: it
//! runs on the stable toolchain inside `cargo test`, shrinks a failure to a
//! small input and persists it under `proptest-regressions/` (committed), so a
//! failure found once is replayed first on every later run.
//!
//! **Corpus.** `tests/fuzz/corpus/<target>/` holds one seed per file: the
//! distribution-spec's and image-spec's examples, the edges of each grammar,
//! and the minimised input of every bug the fuzzing found. Every seed of a
//! target is read; an input is a seed as it is, a seed with up to eight
//! mutations (bit flips, bytes set to characters the grammars care about,
//! insertions of random bytes or of grammar tokens, deletions, duplications,
//! splices from another seed), or random bytes.
//!
//! **Bounded run.** Each target runs a fixed number of cases by default, so
//! that all of them together take about 15 s of a debug `cargo test` on two
//! cores. `BERTH_FUZZ_CASES=<n>` runs `n` cases per target instead, for a long
//! local run:
//!
//! ```text
//! BERTH_FUZZ_CASES=200000 nice -n 10 cargo test --release --lib fuzz_tests
//! BERTH_FUZZ_CASES=20000 nice -n 10 cargo test --release --test it fuzz::
//! ```
//! (`--release` keeps overflow checks off; add `-C overflow-checks` through
//! `RUSTFLAGS` to keep them, or run in debug.)

use std::path::{Path, PathBuf};
use std::sync::Arc;

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::Config;

/// Overrides every target's number of cases.
pub const CASES_VAR: &str = "BERTH_FUZZ_CASES";

/// The proptest configuration of a target that runs `default_cases` cases
/// unless [`CASES_VAR`] says otherwise. Failures persist in
/// `proptest-regressions/<module path>.txt` (proptest's default).
pub fn config(default_cases: u32) -> Config {
    let cases = match std::env::var(CASES_VAR) {
        Ok(value) => value
            .parse()
            .unwrap_or_else(|_| panic!("{CASES_VAR}={value:?} is not a number of cases")),
        Err(_) => default_cases,
    };
    Config {
        cases,
        // A shrink that never ends would hide the failure behind a timeout.
        max_shrink_iters: 4096,
        ..Config::default()
    }
}

/// `tests/fuzz/corpus/<target>/`.
pub fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz/corpus")
        .join(target)
}

/// Every seed of `target`, in file-name order. A target without seeds is a
/// mistake, not a skip.
pub fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = corpus_dir(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .map(|entry| entry.expect("corpus entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no seeds in {}", dir.display());
    files
        .iter()
        .map(|path| std::fs::read(path).expect("seed readable"))
        .collect()
}

/// Characters the grammars under test give a meaning to, and a few that
/// nothing should accept.
const INTERESTING: &[u8] = b"/:.-_,;= \t\r\n\"\\{}[]%+*()?&#@$09afzAFZ\x00\x7f\xc3\xff";

/// Tokens of the grammars under test, inserted whole.
const DICTIONARY: &[&str] = &[
    "sha256:",
    "sha512:",
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "bytes=",
    "bytes ",
    "/blobs/",
    "/blobs/uploads/",
    "/manifests/",
    "/tags/list",
    "/referrers/",
    "/_berth/tags/",
    "_catalog",
    "..",
    "//",
    "__",
    "--",
    "%2f",
    "%2B",
    "+",
    "%2e%2e",
    "18446744073709551615",
    "18446744073709551616",
    "-1",
    "Basic ",
    "Bearer ",
    "repository:",
    "registry:catalog:*",
    "pull,push",
    "\"schemaVersion\":2",
    "\"mediaType\":",
    "\"digest\":",
    "\"size\":-1",
    "\"size\":1e400",
    "\"manifests\":[]",
    "\"layers\":[]",
    "\"config\":{}",
    "\"subject\":",
    "null",
    "\\ud800",
    "\\u0000",
    "\u{feff}",
    "\u{0130}",
];

/// One change to a seed. Positions are [`Index`]es, so a mutation fits any
/// length and shrinks well.
#[derive(Debug, Clone)]
enum Mutation {
    FlipBit(Index, u8),
    Set(Index, u8),
    Insert(Index, Vec<u8>),
    Remove(Index, usize),
    Duplicate(Index, usize),
    /// Copy `len` bytes from another seed (`seed`, at `from`) to `at`.
    Splice {
        at: Index,
        seed: Index,
        from: Index,
        len: usize,
    },
}

impl Mutation {
    fn apply(&self, bytes: &mut Vec<u8>, seeds: &[Vec<u8>]) {
        let len = bytes.len();
        match self {
            Mutation::FlipBit(at, bit) if len > 0 => bytes[at.index(len)] ^= 1 << (bit % 8),
            Mutation::Set(at, value) if len > 0 => bytes[at.index(len)] = *value,
            Mutation::Insert(at, inserted) => {
                let at = at.index(len + 1);
                bytes.splice(at..at, inserted.iter().copied());
            }
            Mutation::Remove(at, n) if len > 0 => {
                let at = at.index(len);
                bytes.drain(at..(at + n).min(len));
            }
            Mutation::Duplicate(at, n) if len > 0 => {
                let at = at.index(len);
                let copy = bytes[at..(at + n).min(len)].to_vec();
                bytes.splice(at..at, copy);
            }
            Mutation::Splice {
                at,
                seed,
                from,
                len: n,
            } => {
                let other = &seeds[seed.index(seeds.len())];
                if other.is_empty() {
                    return;
                }
                let from = from.index(other.len());
                let piece = &other[from..(from + n).min(other.len())];
                let at = at.index(len + 1);
                bytes.splice(at..at, piece.iter().copied());
            }
            _ => {}
        }
    }
}

fn interesting_byte() -> impl Strategy<Value = u8> {
    prop_oneof![any::<u8>(), proptest::sample::select(INTERESTING)]
}

fn insertion() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(interesting_byte(), 1..4),
        proptest::sample::select(DICTIONARY).prop_map(|token| token.as_bytes().to_vec()),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<Index>(), 0u8..8).prop_map(|(at, bit)| Mutation::FlipBit(at, bit)),
        (any::<Index>(), interesting_byte()).prop_map(|(at, b)| Mutation::Set(at, b)),
        (any::<Index>(), insertion()).prop_map(|(at, bytes)| Mutation::Insert(at, bytes)),
        (any::<Index>(), 1usize..16).prop_map(|(at, n)| Mutation::Remove(at, n)),
        (any::<Index>(), 1usize..32).prop_map(|(at, n)| Mutation::Duplicate(at, n)),
        (any::<Index>(), any::<Index>(), any::<Index>(), 1usize..64).prop_map(
            |(at, seed, from, len)| Mutation::Splice {
                at,
                seed,
                from,
                len
            }
        ),
    ]
}

/// Inputs for `target`: its seeds, mutated seeds (most cases) and random bytes.
pub fn bytes(target: &str) -> impl Strategy<Value = Vec<u8>> {
    let seeds = Arc::new(corpus(target));
    let count = seeds.len();
    let mutated = (0..count, proptest::collection::vec(mutation(), 0..8)).prop_map(
        move |(seed, mutations)| {
            let mut bytes = seeds[seed].clone();
            for mutation in &mutations {
                mutation.apply(&mut bytes, &seeds);
            }
            bytes
        },
    );
    prop_oneof![
        8 => mutated,
        1 => proptest::collection::vec(interesting_byte(), 0..64),
        1 => proptest::collection::vec(any::<u8>(), 0..512),
    ]
}

/// `seed` changed by one to eight mutations, for inputs made at run time
/// (a freshly signed token); it may, rarely, come out unchanged.
pub fn mutated(seed: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let seeds = [seed];
    proptest::collection::vec(mutation(), 1..8).prop_map(move |mutations| {
        let mut bytes = seeds[0].clone();
        for mutation in &mutations {
            mutation.apply(&mut bytes, &seeds);
        }
        bytes
    })
}

/// [`bytes`] as text (invalid UTF-8 replaced), for parsers of `&str`.
pub fn text(target: &str) -> impl Strategy<Value = String> {
    bytes(target).prop_map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_stay_in_bounds_on_empty_and_short_inputs() {
        use proptest::strategy::ValueTree;
        let seeds = vec![b"ab".to_vec(), Vec::new()];
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        for _ in 0..2000 {
            let mutation = mutation().new_tree(&mut runner).unwrap().current();
            for input in [Vec::new(), b"q".to_vec(), b"hello".to_vec()] {
                let mut bytes = input.clone();
                mutation.apply(&mut bytes, &seeds);
                assert!(bytes.len() <= input.len() + 100, "{mutation:?}");
            }
        }
    }

    #[test]
    fn every_target_has_seeds() {
        let root = corpus_dir("");
        let mut targets = 0;
        for entry in std::fs::read_dir(&root).expect("corpus root") {
            let target = entry.expect("entry").file_name();
            assert!(!corpus(target.to_str().expect("ASCII target")).is_empty());
            targets += 1;
        }
        assert!(targets >= 10, "only {targets} corpus targets");
    }
}
