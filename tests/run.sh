#!/usr/bin/env bash
# Berth's whole test suite: the README's test command, and what CI runs.
# Installs the system tools it needs (apt, pip) itself, first, so that a fresh machine
# (Debian or Ubuntu, run as root, with only the Rust toolchain) passes in one go.
#
#   tests/run.sh            everything: lint, unit + integration tests, real-client e2e, Distribution
#                           compatibility, the crash and power-cut tests (quick), a quick run of
#                           the benchmark (that it works, not its timings), and the real-client e2e
#                           and Distribution compatibility again on S3 (Garage, two replicas)
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

# Most tests wait on sockets, fsync and timers (the transport's timeouts), not
# the CPU: one test thread per core (the default) leaves CI's two cores idle
# (the integration tests took 53 s that way, 34 s with four threads; more
# threads gain little and starve the timing-sensitive tests of CPU).
test_threads=4

if $quick; then
  step "cargo test (unit and integration tests against a real server on a real socket)"
  cargo test --locked -- --test-threads=$test_threads
  exit 0
fi

step "cargo test, built"
cargo test --locked --no-run --message-format=json-render-diagnostics >target/test-build.json
mapfile -t test_binaries < <(python3 - target/test-build.json <<'PY'
import json, sys
for line in open(sys.argv[1]):
    message = json.loads(line)
    if message.get("reason") == "compiler-artifact" and message.get("executable") \
            and message["profile"]["test"]:
        print(message["executable"])
PY
)
[ "${#test_binaries[@]}" -gt 0 ] || { echo "FAIL: cargo test built no test binary" >&2; exit 1; }

# The release build (the binary and the benchmark in one: building a bench
# turns on its dev-dependencies' features in the crates it shares with the
# binary, so `cargo build --release` then `cargo bench` would compile most of
# the dependency graph twice) runs while the tests do, at the lowest CPU
# priority: the tests mostly wait, and whenever they want the CPU they get it.
# The test binaries are run directly, since cargo would wait for the build's
# lock on target/.
nice -n 19 cargo build --release --locked --bins --bench compare >target/release-build.log 2>&1 &
release_build=$!
trap 'kill "$release_build" 2>/dev/null || true' EXIT

step "cargo test, run (unit and integration tests against a real server on a real socket), beside the release build"
for binary in "${test_binaries[@]}"; do
  printf '     Running %s\n' "${binary#"$PWD"/}"
  "$binary" --test-threads=$test_threads
done

step "release build (the binary and the benchmark): waiting for it to end"
release_status=0
wait "$release_build" || release_status=$?
trap - EXIT
tail -n 3 target/release-build.log
if [ "$release_status" != 0 ]; then
  cat target/release-build.log
  exit 1
fi

# Installed here, once, before the scripts below (which check for them) run
# side by side: two apt-gets at once would fight over dpkg's lock.
step "the real clients and Distribution (tests/e2e/install-clients.sh)"
tests/e2e/install-clients.sh

# The checks that share nothing with the client runs (each its own servers,
# ports and data directory) run beside them, in two lanes, which mostly wait
# on clients and disks; their output is printed, lane by lane, when they are
# done.
lanes=()
lane_logs=()
start_lane() {
  local log
  log=$(mktemp)
  ("$@") >"$log" 2>&1 &
  lanes+=("$!")
  lane_logs+=("$log")
}
finish_lanes() {
  local status=0 i
  for i in "${!lanes[@]}"; do
    wait "${lanes[$i]}" || status=1
    cat "${lane_logs[$i]}"
    rm -f "${lane_logs[$i]}"
  done
  lanes=()
  lane_logs=()
  return "$status"
}
# A failing step in front still waits for them (and so for their servers to stop).
trap 'finish_lanes || true' EXIT
checks_lane() {
  set -e
  step "beside the clients: CNCF Distribution compatibility, both ways (tests/compat/distribution.sh)"
  tests/compat/distribution.sh
  step "beside the clients: acknowledged pushes survive SIGKILL, quick mode (tests/e2e/crash.sh, KILLS=8)"
  KILLS=8 tests/e2e/crash.sh
  step "beside the clients: acknowledged pushes survive losing unsynced writes, quick mode (tests/e2e/powercut.sh, SNAPSHOTS=2)"
  SNAPSHOTS=2 tests/e2e/powercut.sh
}
memory_lane() {
  set -e
  step "beside the clients: bounded memory, a 1 GiB blob and 20,000 tags (tests/e2e/run-memory.sh)"
  tests/e2e/run-memory.sh
}
start_lane checks_lane
start_lane memory_lane

step "real clients against the release binary (tests/e2e/run-berth.sh)"
tests/e2e/run-berth.sh

step "real clients logging in over HTTPS (tests/e2e/run-berth-auth.sh)"
tests/e2e/run-berth-auth.sh

step "the oras Python SDK logging in: the README's workaround and limit (tests/e2e/oras_sdk_auth.sh)"
tests/e2e/oras_sdk_auth.sh

step "the request sequences of crane and helm, which cannot be installed here (tests/e2e/client_sequences.sh)"
tests/e2e/client_sequences.sh

step "the checks run beside the clients (Distribution compatibility, crash, power cut; memory): their output"
finish_lanes
trap - EXIT

step "benchmark against Distribution, quick mode (checks it still works; timings are not judged)"
cargo bench --locked --bench compare -- --quick

# Berth on S3: the real clients against two replicas on one Garage prefix
# behind a round-robin TCP balancer, plain and logging in over HTTPS, and
# Distribution on the same Garage beside them. Each script starts its own
# 1-node Garage; without a Garage binary they fail in CI and skip, loudly,
# elsewhere.
step "Garage for the S3 runs"
if declare -F wait_for_garage >/dev/null; then
  wait_for_garage
fi
tests/garage.sh find || true
s3_checks_lane() {
  set -e
  step "beside the clients on S3: CNCF Distribution's s3 driver on the same Garage, both ways (tests/compat/distribution-s3.sh)"
  tests/compat/distribution-s3.sh
}
trap 'finish_lanes || true' EXIT
start_lane s3_checks_lane

step "real clients against two replicas on Garage (E2E_STORAGE=s3 tests/e2e/run-berth.sh)"
E2E_STORAGE=s3 tests/e2e/run-berth.sh

step "real clients logging in over HTTPS to two replicas on Garage (E2E_STORAGE=s3 tests/e2e/run-berth-auth.sh)"
E2E_STORAGE=s3 tests/e2e/run-berth-auth.sh

step "the check run beside the clients on S3 (Distribution on Garage): its output"
finish_lanes
trap - EXIT

step "done"
