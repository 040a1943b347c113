#!/usr/bin/env bash
# Bounded memory against the release binary (tests/e2e/memory.sh: a 1 GiB blob
# pushed and pulled, then many HTTP/2 pulls, tags and repositories), on a Berth
# of its own with a fresh data dir, so that it can run beside the client runs;
# then checks the server log for errors.
#   tests/e2e/run-memory.sh      (BERTH_BIN defaults to target/release/berth)
set -euo pipefail
cd "$(dirname "$0")/../.."
. tests/support/lib.sh

BERTH=${BERTH_BIN:-target/release/berth}
[ -x "$BERTH" ] || cargo build --release --locked

T=$(mktemp -d /tmp/berth-e2e-memory.XXXXXX)
trap 'stop_all; rm -rf "$T"' EXIT
port=$(free_port)
start_bg "$T/berth.log" "$BERTH" serve --listen "127.0.0.1:$port" --data-dir "$T/data"
berth_pid=$LAST_PID
wait_http "http://127.0.0.1:$port/v2/"

status=0
tests/e2e/memory.sh "127.0.0.1:$port" "$berth_pid" || status=1

if grep -q ' ERROR ' "$T/berth.log"; then
  echo "FAIL berth logged errors:"
  grep ' ERROR ' "$T/berth.log" | head -20
  status=1
fi
exit $status
