#!/usr/bin/env bash
# Berth's whole test suite: the README's test command, and what CI runs.
# Installs the system tools it needs (apt, pip) itself, first, so that a fresh machine
# (Debian or Ubuntu, run as root, with only the Rust toolchain) passes in one go.
#
#   tests/run.sh            everything: lint, unit + integration tests, real-client e2e, Distribution
#                           compatibility, the crash and power-cut tests (quick), and a quick run of
#                           the benchmark (that it works, not its timings)
#   tests/run.sh --quick    lint, unit + integration tests only (installs only what they call:
#                           a C compiler, curl, procps; one test needs root and is skipped without)
set -euo pipefail
cd "$(dirname "$0")/.."

quick=false
[ "${1:-}" = "--quick" ] && quick=true

# Each step prints the seconds since the run began, so a slow step shows in the log.
started=$SECONDS
step() { printf '\n==> [%ss] %s\n' "$((SECONDS - started))" "$*"; }

step "system tools the build and the tests call (tests/install-tools.sh)"
if $quick; then
  tests/install-tools.sh
else
  tests/install-tools.sh --e2e
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --locked -- -D warnings

step "cargo test (unit and integration tests against a real server on a real socket)"
# Most tests wait on sockets, fsync and timers (the transport's timeouts), not
# the CPU: one test thread per core (the default) leaves CI's two cores idle
# (the integration tests took 53 s that way, 34 s with four threads; more
# threads gain little and starve the timing-sensitive tests of CPU).
cargo test --locked -- --test-threads=4 2>&1 | tee target/cargo-test.log
grep -q '^test result: ok' target/cargo-test.log

if $quick; then
  exit 0
fi

# The binary and the benchmark in one build: building a bench turns on its
# dev-dependencies' features in the crates it shares with the binary (tokio,
# serde, hyper...), so `cargo build --release` alone, then `cargo bench`,
# compiles most of the dependency graph twice (~130 s on CI's two cores).
step "release build (the binary and the benchmark)"
cargo build --release --locked --bins --bench compare

# Installed here, once, before the scripts below (which check for them) run
# side by side: two apt-gets at once would fight over dpkg's lock.
step "the real clients and Distribution (tests/e2e/install-clients.sh)"
tests/e2e/install-clients.sh

# The checks that share nothing with the client runs (each its own servers,
# ports and data directory) run beside them, which mostly wait on the
# clients; their output is printed, in order, when they are done.
side_log=$(mktemp)
side=""
finish_side() {
  [ -n "$side" ] || return 0
  local status=0
  wait "$side" || status=$?
  side=""
  cat "$side_log"
  rm -f "$side_log"
  return "$status"
}
# A failing step in front still waits for them (and so for their servers to stop).
trap 'finish_side || true' EXIT
(
  set -e
  step "beside the clients: CNCF Distribution compatibility, both ways (tests/compat/distribution.sh)"
  tests/compat/distribution.sh
  step "beside the clients: acknowledged pushes survive SIGKILL, quick mode (tests/e2e/crash.sh, KILLS=8)"
  KILLS=8 tests/e2e/crash.sh
  step "beside the clients: acknowledged pushes survive losing unsynced writes, quick mode (tests/e2e/powercut.sh, SNAPSHOTS=2)"
  SNAPSHOTS=2 tests/e2e/powercut.sh
) >"$side_log" 2>&1 &
side=$!

step "real clients against the release binary (tests/e2e/run-berth.sh)"
tests/e2e/run-berth.sh

step "real clients logging in over HTTPS (tests/e2e/run-berth-auth.sh)"
tests/e2e/run-berth-auth.sh

step "the oras Python SDK logging in: the README's workaround and limit (tests/e2e/oras_sdk_auth.sh)"
tests/e2e/oras_sdk_auth.sh

step "the request sequences of crane and helm, which cannot be installed here (tests/e2e/client_sequences.sh)"
tests/e2e/client_sequences.sh

step "the checks run beside the clients (Distribution compatibility, crash, power cut): their output"
finish_side

step "benchmark against Distribution, quick mode (checks it still works; timings are not judged)"
cargo bench --locked --bench compare -- --quick

step "done"
