#!/usr/bin/env bash
# Berth's whole test suite: the README's test command, and what CI runs.
# Installs the system tools it needs (apt, pip) itself, first, so that a fresh machine
# (Debian or Ubuntu, run as root, with only the Rust toolchain) passes in one go.
#
#   tests/run.sh            everything: lint, unit + integration tests, real-client e2e, Distribution
#                           compatibility, the crash and power-cut tests (quick), a quick run of
#                           the benchmark (that it works, not its timings), the tests that need
#                           Garage (an S3 store; built here when missing, in the background), the
#                           integration tests again on S3 (two replicas over Garage), and the
#                           real-client e2e and Distribution compatibility on S3 (Garage, two replicas)
#   tests/run.sh --quick    lint, unit + integration tests only (installs only what they call:
#                           a C compiler, curl, procps, python3; one test needs root and is skipped
#                           without; the tests that need Garage skip loudly when it is missing)
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

# Garage, the S3 store the S3 tests run against, is found or else built
# (tests/install-tools.sh --garage: minutes of CPU), in the background from
# here on. It gets only CPU time nothing else wants (SCHED_IDLE where chrt
# can set it, else nice 19): it must not slow the release build the e2e
# steps wait for, and CI's two cores are mostly busy until the end, where
# wait_for_garage gives it the machine. Its own process group, so that an
# early exit stops cargo and its rustc children too.
garage_build=""
garage_ready=false
stop_garage_build() {
  if [ -n "$garage_build" ]; then
    kill -TERM -- "-$garage_build" 2>/dev/null || true
  fi
}
# wait_for_garage: before any step that needs Garage; fails the run loudly
# when the build failed, and exports GARAGE_BIN for what follows.
wait_for_garage() {
  $garage_ready && return 0
  if [ -z "$garage_build" ]; then
    echo "FAIL: wait_for_garage: no Garage build was started (tests/run.sh --quick starts none)" >&2
    exit 1
  fi
  local status=0
  wait "$garage_build" || status=$?
  garage_build=""
  tail -n 3 target/garage-build.log
  if [ "$status" != 0 ]; then
    cat target/garage-build.log
    echo "FAIL: the Garage build (tests/install-tools.sh --garage) failed with status $status; its log is above" >&2
    exit 1
  fi
  GARAGE_BIN=$(tests/garage.sh find)
  export GARAGE_BIN
  garage_ready=true
}
if ! $quick; then
  mkdir -p target
  idle=(nice -n 19)
  if chrt --idle 0 true 2>/dev/null; then idle=(chrt --idle 0 nice -n 19); fi
  setsid "${idle[@]}" tests/install-tools.sh --garage >target/garage-build.log 2>&1 &
  garage_build=$!
  trap stop_garage_build EXIT
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
trap 'kill "$release_build" 2>/dev/null || true; stop_garage_build' EXIT

# The tests that need Garage have "garage_" in their names (a module
# garage_*); they run at the end, once its build is done.
step "cargo test, run (unit and integration tests against a real server on a real socket), beside the release build; those that need Garage later"
for binary in "${test_binaries[@]}"; do
  printf '     Running %s\n' "${binary#"$PWD"/}"
  "$binary" --test-threads=$test_threads --skip garage_
done

step "release build (the binary and the benchmark): waiting for it to end"
release_status=0
wait "$release_build" || release_status=$?
trap stop_garage_build EXIT
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
trap 'finish_lanes || true; stop_garage_build' EXIT
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

step "the pull-through mirror: skopeo, podman, ctr (hosts.toml, ?ns=) and dockerd (registry-mirrors) through Berth, Distribution as the upstream (tests/e2e/mirror.sh)"
tests/e2e/mirror.sh

step "deployment built and run: the container image (podman, FROM scratch) and the systemd unit (tests/e2e/image.sh)"
tests/e2e/image.sh

step "the web UI in headless Chromium: browse, search, log in, settings in force for skopeo (tests/e2e/ui.sh)"
tests/e2e/ui.sh

step "the checks run beside the clients (Distribution compatibility, crash, power cut; memory): their output"
finish_lanes
trap stop_garage_build EXIT

step "benchmark against Distribution, quick mode (checks it still works; timings are not judged)"
cargo bench --locked --bench compare -- --quick

step "Garage (tests/install-tools.sh --garage): waiting for its build to end"
wait_for_garage

step "cargo test, run: the tests that need Garage"
for binary in "${test_binaries[@]}"; do
  printf '     Running %s\n' "${binary#"$PWD"/}"
  "$binary" --test-threads=$test_threads garage_
done

# The integration tests once more, on S3: every registry two replicas over a
# fresh prefix of one Garage, behind a round-robin balancer (a connection per
# request, so requests take turns between them), and every test that is not
# about the filesystem itself (those say SKIPPED). The tests that need Garage
# ran just above.
step "the integration tests again on S3: two replicas over Garage behind a balancer (BERTH_TEST_STORAGE=s3)"
it_binary=""
for binary in "${test_binaries[@]}"; do
  case "$(basename "$binary")" in it-*) it_binary=$binary ;; esac
done
[ -n "$it_binary" ] || { echo "FAIL: cargo test built no integration-test binary (it)" >&2; exit 1; }
printf '     Running %s\n' "${it_binary#"$PWD"/}"
BERTH_TEST_STORAGE=s3 "$it_binary" --test-threads=$test_threads --skip garage_

# Berth on S3: the real clients against two replicas on one Garage prefix
# behind a round-robin TCP balancer, plain and logging in over HTTPS, and
# Distribution on the same Garage beside them, then the README's
# multi-replica example as written. Each script starts its own 1-node Garage
# (the binary waited for above).
s3_checks_lane() {
  set -e
  step "beside the clients on S3: CNCF Distribution's s3 driver on the same Garage, both ways (tests/compat/distribution-s3.sh)"
  tests/compat/distribution-s3.sh
  step "beside the clients on S3: the README's example (Garage, two replicas, nginx) run as written (tests/e2e/readme-replicas.sh)"
  tests/e2e/readme-replicas.sh
}
trap 'finish_lanes || true' EXIT
start_lane s3_checks_lane

step "real clients against two replicas on Garage (E2E_STORAGE=s3 tests/e2e/run-berth.sh)"
E2E_STORAGE=s3 tests/e2e/run-berth.sh

step "real clients logging in over HTTPS to two replicas on Garage (E2E_STORAGE=s3 tests/e2e/run-berth-auth.sh)"
E2E_STORAGE=s3 tests/e2e/run-berth-auth.sh

step "the checks run beside the clients on S3 (Distribution on Garage, the README's example): their output"
finish_lanes
trap - EXIT

step "done"
