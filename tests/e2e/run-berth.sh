#!/usr/bin/env bash
# End-to-end run against the release binary: starts Berth on a free loopback
# port with a fresh data dir, drives it with real clients (tests/e2e/clients.sh:
# buildah, podman, skopeo, docker, containerd, oras), then checks the server log
# for errors. Bounded memory is tests/e2e/run-memory.sh, on a Berth of its own.
#   tests/e2e/run-berth.sh      (BERTH_BIN defaults to target/release/berth)
# E2E_STORAGE=s3: the clients talk to two Berth replicas on one prefix of a
# Garage bucket behind a round-robin TCP balancer (tests/e2e/replicas.sh: each
# client connection goes to the other replica), so what one replica wrote is
# read through the other; both replicas must serve requests and log no error.
# Garage is the one $GARAGE_ENV names, else one started here; with no Garage
# binary the run fails in CI (CI=true) and is skipped, loudly, elsewhere.
set -euo pipefail
cd "$(dirname "$0")/../.."
. tests/support/lib.sh
. tests/e2e/replicas.sh

BERTH=${BERTH_BIN:-target/release/berth}
storage=${E2E_STORAGE:-filesystem}
case $storage in
  filesystem | s3) ;;
  *) echo "run-berth: E2E_STORAGE is filesystem or s3, not '$storage'" >&2; exit 2 ;;
esac
[ "$storage" = s3 ] && need_garage "the real-client e2e on S3 (E2E_STORAGE=s3 tests/e2e/run-berth.sh)"
[ -x "$BERTH" ] || cargo build --release --locked
tests/e2e/install-clients.sh

T=$(mktemp -d /tmp/berth-e2e-run.XXXXXX)
trap 'stop_all; garage_down; rm -rf "$T"' EXIT
if [ "$storage" = s3 ]; then
  garage_up "$T/garage"
  # Each replica trusts a cached answer about what may change (a tag, a
  # link) for cache_ttl_ms (its default, 2 s, made explicit here): a delete
  # through one must be seen through the other within that and the requests'
  # time (clients.sh polls for it; everything else must hold at once).
  export BERTH_CACHE_TTL_MS=2000 E2E_STALE_MS=3000
  replicas_up "$BERTH" "$T" "$(random_prefix e2e)"
  addr=$BALANCER_ADDR
  logs=("$T/replica1.log" "$T/replica2.log")
else
  port=$(free_port)
  start_bg "$T/berth.log" "$BERTH" serve --listen "127.0.0.1:$port" --data-dir "$T/data"
  addr=127.0.0.1:$port
  logs=("$T/berth.log")
fi
wait_http "http://$addr/v2/"

status=0
tests/e2e/clients.sh "$addr" || status=1

# Every request is logged; none may have failed inside Berth.
for log in "${logs[@]}"; do
  if grep -q ' ERROR ' "$log"; then
    echo "FAIL berth logged errors ($(basename "$log")):"
    grep ' ERROR ' "$log" | head -20
    status=1
  fi
  served=$(replica_requests "$log")
  echo "berth served $served requests ($(basename "$log" .log))"
  if [ "$storage" = s3 ] && [ "$served" -eq 0 ]; then
    echo "FAIL $(basename "$log" .log) served no request: the balancer did not alternate"
    status=1
  fi
done
exit $status
