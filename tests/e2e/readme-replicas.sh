#!/usr/bin/env bash
# The README's multi-replica example, run as written: the fenced `sh` blocks
# between <!-- example-replicas:begin --> and <!-- example-replicas:end --> in
# README.md ("Scale-out: replicas over S3") are extracted and run, in order,
# in one bash (set -euo pipefail), with the variables the example takes
# (DEMO_DIR, S3_PORT, RPC_PORT, R1_PORT, R2_PORT, LB_PORT, PASSWORD) set to a
# temp dir and free loopback ports, and `garage` (tests/garage.sh find) and
# `berth` (target/release/berth) first on the PATH. The example leaves a
# one-node Garage, two `berth serve` replicas and nginx running; then:
#   1. anonymous clients are refused through nginx (the example's [auth]);
#   2. skopeo pushes an image built here (tests/support/make_oci_layout.py,
#      no network) through nginx as the example's user, and pulls it back by
#      tag and by digest: the same manifest digest, every blob byte-identical;
#   3. both replicas served the image's requests (their request logs);
#   4. the client's address reaches the replicas through nginx
#      (trusted_proxies): failed logins sent from 127.0.0.2 through nginx,
#      with a forged X-Forwarded-For, are logged by both replicas as from
#      127.0.0.2; the same forged header sent straight to a replica (not a
#      trusted proxy) is ignored too.
# Everything the example started is one process group, stopped by the EXIT
# trap (and by a watchdog if this script is killed).
# Usage: tests/e2e/readme-replicas.sh   (BERTH_BIN defaults to target/release/berth)
# Without a Garage binary it fails in CI (CI=true) and is skipped, loudly,
# elsewhere.
set -euo pipefail
cd "$(dirname "$0")/../.."
. tests/support/lib.sh
. tests/e2e/replicas.sh

started=$(date +%s)
BERTH=${BERTH_BIN:-target/release/berth}
# The example starts a Garage of its own; a shared one is of no use here.
unset GARAGE_ENV
need_garage "the README's multi-replica example (tests/e2e/readme-replicas.sh)"
GARAGE=$(tests/garage.sh find)
[ -x "$BERTH" ] || cargo build --release --locked --bins
tests/e2e/install-clients.sh >/dev/null
# nginx is in /usr/sbin, which a non-root PATH may lack.
PATH=$PATH:/usr/sbin
for tool in nginx skopeo openssl curl jq timeout; do
  command -v "$tool" >/dev/null || { echo "FAIL: missing $tool: run tests/e2e/install-clients.sh" >&2; exit 1; }
done

T=$(mktemp -d /tmp/berth-readme-replicas.XXXXXX)
EXAMPLE_PGID=
# stop_example: TERM to the example's process group (Garage, the replicas,
# nginx), KILL after 10 s.
stop_example() {
  [ -n "$EXAMPLE_PGID" ] || return 0
  kill -TERM -- "-$EXAMPLE_PGID" 2>/dev/null || return 0
  for _ in $(seq 100); do
    kill -0 -- "-$EXAMPLE_PGID" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -KILL -- "-$EXAMPLE_PGID" 2>/dev/null || true
}
trap 'stop_example; stop_all; rm -rf "$T"' EXIT

# --- the README's blocks -----------------------------------------------------
# awk fails (status 2) on a fence inside the markers that is not `sh`, which
# would otherwise be left out silently, and (3) on missing or repeated markers.
awk '
  /<!-- example-replicas:begin -->/ { begins++; inside = 1; next }
  /<!-- example-replicas:end -->/ { ends++; inside = 0; next }
  inside && !block && /^```sh$/ { block = 1; blocks++; print "# --- README block " blocks; next }
  inside && block && /^```$/ { block = 0; next }
  inside && !block && /^```/ { print "a fence other than ```sh inside the markers: " $0 > "/dev/stderr"; exit 2 }
  inside && block { print }
  END {
    if (begins != 1 || ends != 1 || block) { print "want one begin and one end marker around whole blocks" > "/dev/stderr"; exit 3 }
    print "# blocks: " blocks
  }
' README.md >"$T/blocks.sh"
blocks=$(sed -n 's/^# blocks: //p' "$T/blocks.sh")
echo "README.md: $blocks sh blocks between the example-replicas markers"
[ "$blocks" -ge 1 ] || { echo "FAIL: no sh block between the markers" >&2; exit 1; }

export DEMO_DIR=$T/demo
read -r S3_PORT RPC_PORT R1_PORT R2_PORT LB_PORT <<<"$(free_ports 5)"
export S3_PORT RPC_PORT R1_PORT R2_PORT LB_PORT
PASSWORD=$(openssl rand -hex 12)
export PASSWORD
mkdir -p "$T/bin"
ln -s "$GARAGE" "$T/bin/garage"
ln -s "$(realpath "$BERTH")" "$T/bin/berth"
{
  echo 'set -euo pipefail'
  cat "$T/blocks.sh"
} >"$T/example.sh"

# In a process group of its own (job control on for this one job): what the
# blocks leave running stays in it, and stop_example ends exactly that. The
# blocks wait for each server with `until` loops; timeout bounds them all.
set -m
PATH=$T/bin:$PATH timeout 180 bash "$T/example.sh" >"$T/example.log" 2>&1 &
EXAMPLE_PGID=$!
set +m
# If this script is killed, the watchdog (its own session) stops the group.
# shellcheck disable=SC2016 # expanded by that bash, from its arguments
setsid bash -c 'while kill -0 "$1" 2>/dev/null && kill -0 -- "-$2" 2>/dev/null; do sleep 1; done
  kill -KILL -- "-$2" 2>/dev/null' watchdog "$$" "$EXAMPLE_PGID" </dev/null >/dev/null 2>&1 &
example_started=$(date +%s)
status=0
wait "$EXAMPLE_PGID" || status=$?
if [ "$status" != 0 ]; then
  echo "FAIL: the README's blocks exited with status $status (124: timed out); their output:" >&2
  cat "$T/example.log" >&2
  for log in "$DEMO_DIR"/garage/log "$DEMO_DIR"/replica*.log "$DEMO_DIR"/nginx/error.log; do
    [ -e "$log" ] && { echo "--- the end of $log" >&2; tail -n 20 "$log" >&2; }
  done
  exit 1
fi
echo "the README's example is up in $(($(date +%s) - example_started)) s:" \
  "Garage at 127.0.0.1:$S3_PORT, replicas at 127.0.0.1:$R1_PORT and 127.0.0.1:$R2_PORT, nginx at 127.0.0.1:$LB_PORT"

LB=127.0.0.1:$LB_PORT
R1_LOG=$DEMO_DIR/replica1.log
R2_LOG=$DEMO_DIR/replica2.log
for log in "$R1_LOG" "$R2_LOG"; do
  [ -s "$log" ] || { echo "FAIL: the example wrote no replica log at $log" >&2; exit 1; }
done

# --- 1. auth is on, through nginx --------------------------------------------
anonymous_refused() {
  local code
  code=$(curl -s -o /dev/null -w '%{http_code}' "http://$LB/v2/")
  [ "$code" = 401 ] || { echo "anonymous GET /v2/ through nginx: $code, want 401" >&2; return 1; }
}
check "anonymous clients are refused through nginx (401)" anonymous_refused

# --- 2. push and pull through nginx ------------------------------------------
python3 tests/support/make_oci_layout.py "$T/layout" readme >/dev/null
WANT=$(jq -r '.manifests[] | select(.annotations["org.opencontainers.image.ref.name"] == "multi") | .digest' \
  "$T/layout/index.json")
CREDS=alice:$PASSWORD

push_through_nginx() {
  skopeo copy -q --dest-tls-verify=false --dest-creds "$CREDS" --digestfile "$T/pushed.digest" \
    "oci:$T/layout:multi" "docker://$LB/demo/multi:1" >/dev/null
  [ "$(cat "$T/pushed.digest")" = "$WANT" ] ||
    { echo "pushed $(cat "$T/pushed.digest"), want $WANT" >&2; return 1; }
}
check "skopeo pushes a 3-layer image through nginx as the example's user" push_through_nginx

# pull_back REF DIR: REF through nginx into the OCI layout DIR; the manifest
# keeps its digest and every blob equals the pushed one.
pull_back() {
  local ref=$1 dir=$2 blob n=0
  skopeo copy -q --src-tls-verify=false --src-creds "$CREDS" --preserve-digests \
    --digestfile "$T/pulled.digest" "docker://$LB/demo/multi$ref" "oci:$dir:pulled" >/dev/null
  [ "$(cat "$T/pulled.digest")" = "$WANT" ] ||
    { echo "pulled $ref: $(cat "$T/pulled.digest"), want $WANT" >&2; return 1; }
  for blob in "$dir"/blobs/sha256/*; do
    cmp -s "$blob" "$T/layout/blobs/sha256/$(basename "$blob")" ||
      { echo "pulled $ref: blob $(basename "$blob") differs from the pushed one" >&2; return 1; }
    n=$((n + 1))
  done
  # The manifest, the config and three layers.
  [ "$n" = 5 ] || { echo "pulled $ref: $n blobs, want 5" >&2; return 1; }
}
check "pulled back through nginx by tag: same digest, every blob byte-identical" pull_back ":1" "$T/by-tag"
check "pulled back through nginx by digest: same digest, every blob byte-identical" pull_back "@$WANT" "$T/by-digest"

# --- 3. both replicas served the image ---------------------------------------
image_requests() {
  grep 'berth::request' "$1" | grep -c '/v2/demo/multi/' || true
}
both_served() {
  local one two
  one=$(image_requests "$R1_LOG")
  two=$(image_requests "$R2_LOG")
  echo "requests for demo/multi: replica 1 served $one, replica 2 served $two"
  [ "$one" -gt 0 ] && [ "$two" -gt 0 ]
}
check "nginx spread the image's requests over both replicas" both_served

# --- 4. the client's address through nginx (trusted_proxies) ----------------
# A failed login is the line that names the client's address. Sent from
# 127.0.0.2 (loopback too; nginx connects to the replicas from 127.0.0.1),
# with an X-Forwarded-For the client made up: nginx appends the address it
# saw, and Berth takes the rightmost address that is not a trusted proxy.
# A user name per attempt keeps the login limit out of the way. Log lines
# are written in the background, after the answer: each attempt waits
# (bounded) for its own line.
failed_logins() { # LOG [PATTERN]
  grep 'failed login' "$1" | grep -c -- "${2:-}" || true
}
# wait_failed_login USER: until a replica logged USER's failed login (5 s).
wait_failed_login() {
  for _ in $(seq 50); do
    grep -h 'failed login' "$R1_LOG" "$R2_LOG" | grep -q "user=\"$1\"" && return 0
    sleep 0.1
  done
  echo "no replica logged the failed login of $1 within 5 s" >&2
  return 1
}
address_through_nginx() {
  local i code one=0 two=0
  for i in $(seq 10); do
    code=$(curl -s -o /dev/null -w '%{http_code}' --interface 127.0.0.2 -u "mallory$i:wrong" \
      -H 'X-Forwarded-For: 198.51.100.7' "http://$LB/v2/")
    [ "$code" = 401 ] || { echo "a wrong password through nginx: $code, want 401" >&2; return 1; }
    wait_failed_login "mallory$i" || return 1
    one=$(failed_logins "$R1_LOG" 'client=127.0.0.2 ')
    two=$(failed_logins "$R2_LOG" 'client=127.0.0.2 ')
    [ "$one" -gt 0 ] && [ "$two" -gt 0 ] && break
  done
  echo "failed logins logged from 127.0.0.2 after $i through nginx: replica 1 $one, replica 2 $two"
  if [ "$one" = 0 ] || [ "$two" = 0 ]; then
    echo "not both replicas logged the client's address" >&2
    return 1
  fi
  if grep -h 'failed login' "$R1_LOG" "$R2_LOG" | grep -v 'client=127.0.0.2 '; then
    echo "a failed login logged under another address (nginx's, or the forged one)" >&2
    return 1
  fi
}
check "both replicas log the client's address, not nginx's or a forged one (trusted_proxies)" address_through_nginx

forged_header_ignored_direct() {
  curl -s -o /dev/null --interface 127.0.0.2 -u "direct:wrong" -H 'X-Forwarded-For: 198.51.100.8' \
    "http://127.0.0.1:$R1_PORT/v2/"
  wait_failed_login direct || return 1
  grep 'failed login' "$R1_LOG" | grep 'user="direct"' | grep -q 'client=127.0.0.2 ' ||
    { echo "replica 1 did not log the direct client as 127.0.0.2: $(grep 'user="direct"' "$R1_LOG")" >&2; return 1; }
}
check "a forwarding header from a peer that is not a trusted proxy is ignored" forged_header_ignored_direct

echo "tests/e2e/readme-replicas.sh took $(($(date +%s) - started)) s"
summary
