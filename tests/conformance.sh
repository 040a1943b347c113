#!/usr/bin/env bash
# Runs the official OCI Distribution conformance suite against a fresh Berth.
#   tests/conformance.sh PATH-TO-CONFORMANCE-BINARY
# Fails unless the suite reports zero FAIL with every optional check on.
# CONFORMANCE_AUTH=1 runs it with access control on: an htpasswd user
# (made with `berth user add`) who may pull, push and delete conformance/*,
# logging in through the Bearer token flow (OCI_USERNAME / OCI_PASSWORD).
set -euo pipefail
cd "$(dirname "$0")/.."
conformance=$1
berth=${BERTH_BIN:-target/release/berth}
[ -x "$berth" ] || cargo build --release --locked

work=$(mktemp -d)
berth_pid=
cleanup() {
  [ -n "$berth_pid" ] && kill "$berth_pid" 2>/dev/null && wait "$berth_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

auth_args=()
auth_env=()
if [ "${CONFORMANCE_AUTH:-0}" = 1 ]; then
  password=$(head -c 18 /dev/urandom | base64)
  printf '%s\n' "$password" | "$berth" user add conformance --cost 4 --htpasswd "$work/htpasswd" >/dev/null
  cat >"$work/berth.toml" <<TOML
[auth]
htpasswd = "$work/htpasswd"
[[auth.rules]]
repositories = ["conformance/*"]
users = { conformance = ["pull", "push", "delete"] }
TOML
  auth_args=(--config "$work/berth.toml")
  auth_env=(OCI_USERNAME=conformance "OCI_PASSWORD=$password")
fi

# Port 0: the kernel picks a free port; read it back from the log.
"$berth" serve "${auth_args[@]}" --listen 127.0.0.1:0 --data-dir "$work/data" --log-level warn,berth=info >"$work/berth.log" 2>&1 &
berth_pid=$!
for _ in $(seq 100); do
  addr=$(grep -o 'listen=127.0.0.1:[0-9]*' "$work/berth.log" | head -1 | cut -d= -f2) || true
  [ -n "$addr" ] && break
  sleep 0.1
done
[ -n "$addr" ] || { cat "$work/berth.log"; echo "berth did not start"; exit 1; }

cd "$work"
status=0
OCI_REGISTRY=$addr OCI_TLS=disabled OCI_VERSION=dev \
OCI_REPO1=conformance/repo1 OCI_REPO2=conformance/repo2 \
  env "${auth_env[@]}" "$conformance" >out.txt 2>err.txt || status=$?
grep -E '^\s*(Pass|FAIL|Skip|Error|Total)\.+:' out.txt
grep ': Skip' out.txt || true
grep 'failed test' err.txt | head -20 || true
fails=$(grep -E '^\s*FAIL\.+:' out.txt | grep -o '[0-9]*$')
if [ "$status" -ne 0 ] || [ "${fails:-1}" != 0 ]; then
  echo "conformance: FAIL (exit $status)"
  exit 1
fi
passed=$(grep -E '^\s*Pass\.+:' out.txt | grep -o '[0-9]*$')
echo "conformance: $passed passed, 0 failed"
