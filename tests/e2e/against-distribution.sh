#!/usr/bin/env bash
# Run tests/e2e/clients.sh against Debian's docker-registry (CNCF
# Distribution 2.8, i.e. registry:2) as a reference: starts it on a free
# 127.0.0.1 port with a throw-away config and storage dir, runs the client
# tests (with ALLOW_NO_REFERRERS=1: Distribution 2.8 has no referrers API),
# and stops it again, also on failure or interrupt.
#
#   tests/e2e/against-distribution.sh        # exit status = clients.sh's
#
# Install the packages first with tests/e2e/install-clients.sh.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REGISTRY_BIN="${REGISTRY_BIN:-/usr/bin/docker-registry}"
[ -x "$REGISTRY_BIN" ] || {
  echo "against-distribution: $REGISTRY_BIN missing (run tests/e2e/install-clients.sh)" >&2
  exit 1
}

WORK="$(mktemp -d /tmp/berth-distribution.XXXXXX)"
REG_PID=""
CLIENTS_PID=""
# shellcheck disable=SC2317 # invoked by the EXIT trap
cleanup() {
  local rc=$? i
  set +e
  if [ -n "$CLIENTS_PID" ] && kill -0 "$CLIENTS_PID" 2>/dev/null; then
    # Interrupted: let clients.sh run its own cleanup first.
    kill -TERM "$CLIENTS_PID"
    wait "$CLIENTS_PID" 2>/dev/null
  fi
  if [ -n "$REG_PID" ] && kill -0 "$REG_PID" 2>/dev/null; then
    kill -TERM "$REG_PID"
    for ((i = 0; i < 100; i++)); do
      kill -0 "$REG_PID" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$REG_PID" 2>/dev/null
    wait "$REG_PID" 2>/dev/null
  fi
  if [ "$rc" != 0 ] && [ -f "$WORK/registry.log" ]; then
    echo "against-distribution: registry errors (last 10):" >&2
    grep -E 'level=(error|fatal|panic)' "$WORK/registry.log" | tail -n 10 | cut -c1-400 | sed 's/^/  | /' >&2
  fi
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# The port is chosen, released and then bound by the registry, so another
# process could take it in between: retry a few times.
started=""
for attempt in 1 2 3 4 5; do
  PORT="$(free_port)"
  # Distribution's standard configuration (the keys of Debian's
  # /etc/docker/registry/config.yml, as benches/compare.rs uses), with a private
  # address and data dir; no auth, since clients.sh pushes anonymously.
  cat >"$WORK/config.yml" <<EOF
version: 0.1
log:
  level: info
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $WORK/data
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
http:
  addr: 127.0.0.1:$PORT
  headers:
    X-Content-Type-Options: [nosniff]
health:
  storagedriver:
    enabled: true
    interval: 10s
    threshold: 3
EOF
  "$REGISTRY_BIN" serve "$WORK/config.yml" >"$WORK/registry.log" 2>&1 &
  REG_PID=$!
  for ((i = 0; i < 100; i++)); do
    if curl -s -o /dev/null -f --max-time 2 "http://127.0.0.1:$PORT/v2/"; then
      started=1
      break
    fi
    kill -0 "$REG_PID" 2>/dev/null || break
    sleep 0.1
  done
  [ -n "$started" ] && break
  echo "against-distribution: attempt $attempt: registry did not come up on port $PORT" >&2
  kill -KILL "$REG_PID" 2>/dev/null || true
  wait "$REG_PID" 2>/dev/null || true
  REG_PID=""
done
[ -n "$started" ] || {
  echo "against-distribution: could not start $REGISTRY_BIN" >&2
  exit 1
}
echo "against-distribution: $("$REGISTRY_BIN" --version) on 127.0.0.1:$PORT (pid $REG_PID)"

# In the background + wait, so that a signal to this script is handled at
# once (the trap forwards it to clients.sh, which cleans up after itself).
rc=0
ALLOW_NO_REFERRERS=1 "$HERE/clients.sh" "127.0.0.1:$PORT" &
CLIENTS_PID=$!
wait "$CLIENTS_PID" || rc=$?
CLIENTS_PID=""
exit "$rc"
