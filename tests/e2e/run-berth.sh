#!/usr/bin/env bash
# End-to-end run against the release binary: starts Berth on a free loopback
# port with a fresh data dir, drives it with real clients (tests/e2e/clients.sh:
# buildah, podman, skopeo, docker, containerd, oras), then checks the server log
# for errors. Bounded memory is tests/e2e/run-memory.sh, on a Berth of its own.
#   tests/e2e/run-berth.sh      (BERTH_BIN defaults to target/release/berth)
set -euo pipefail
cd "$(dirname "$0")/../.."
. tests/support/lib.sh

BERTH=${BERTH_BIN:-target/release/berth}
[ -x "$BERTH" ] || cargo build --release --locked
tests/e2e/install-clients.sh

T=$(mktemp -d /tmp/berth-e2e-run.XXXXXX)
trap 'stop_all; rm -rf "$T"' EXIT
port=$(free_port)
start_bg "$T/berth.log" "$BERTH" serve --listen "127.0.0.1:$port" --data-dir "$T/data"
wait_http "http://127.0.0.1:$port/v2/"

status=0
tests/e2e/clients.sh "127.0.0.1:$port" || status=1

# Every request is logged; none may have failed inside Berth.
if grep -q ' ERROR ' "$T/berth.log"; then
  echo "FAIL berth logged errors:"
  grep ' ERROR ' "$T/berth.log" | head -20
  status=1
fi
echo "berth served $(grep -c 'berth::request' "$T/berth.log") requests"
exit $status
