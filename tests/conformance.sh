#!/usr/bin/env bash
# Runs the official OCI Distribution conformance suite against a fresh Berth.
#   tests/conformance.sh [--record] PATH-TO-CONFORMANCE-BINARY
#
# Passes only when the suite's summary shows all of:
#   FAIL 0, Error 0, Disabled 0,
#   Skip exactly the expected skips below (none without auth),
#   Pass = Total - expected skips, and Pass >= the floor below.
# CONFORMANCE_AUTH=1 runs it with access control on: an htpasswd user
# (made with `berth user add`) who may pull, push and delete conformance/*,
# logging in through the Bearer token flow (OCI_USERNAME / OCI_PASSWORD).
# CONFORMANCE_STORAGE=s3 runs it against two Berth replicas on one prefix of a
# Garage bucket, the suite talking to a balancer in front: without auth,
# nginx sending each request to the other replica, the replicas caching
# nothing (--cache-ttl-ms 0), so every check that something is there or
# gone is answered by the replica that did not make the change; with auth,
# a round-robin TCP balancer (each new connection to the other replica:
# tests/e2e/replicas.sh) in front of replicas in their default
# configuration, sharing the htpasswd file and a token signing key made for
# the run (a token one replica issues, the other accepts). Garage is the one $GARAGE_ENV names (a Garage env file, so that
# .ci/run's two S3 runs share one), else one started here (tests/garage.sh);
# with no Garage binary the run fails in CI (CI=true) and is skipped, loudly,
# elsewhere. Both replicas must have served requests, and neither may log an
# error. The pass criteria are the filesystem's.
#
# --record writes the summary (counts, date, commit, suite build,
# parameters, every workflow's result) to docs/results/conformance.md
# (docs/results/conformance-auth.md with CONFORMANCE_AUTH=1), the file the
# README quotes. Without it nothing in the tree is written, so CI stays clean.
set -euo pipefail
cd "$(dirname "$0")/.."

record=false
if [ "${1:-}" = "--record" ]; then
  record=true
  shift
fi
conformance=${1:?usage: tests/conformance.sh [--record] PATH-TO-CONFORMANCE-BINARY}
conformance=$(realpath "$conformance")
berth=${BERTH_BIN:-target/release/berth}
[ -x "$berth" ] || cargo build --release --locked
auth=${CONFORMANCE_AUTH:-0}
storage=${CONFORMANCE_STORAGE:-filesystem}
case $storage in
  filesystem | s3) ;;
  *) echo "conformance: CONFORMANCE_STORAGE is filesystem or s3, not '$storage'" >&2; exit 2 ;;
esac
# shellcheck source=tests/support/lib.sh
. tests/support/lib.sh
# shellcheck source=tests/e2e/replicas.sh
. tests/e2e/replicas.sh
[ "$storage" = s3 ] && need_garage "the OCI conformance suite on S3 (CONFORMANCE_STORAGE=s3)"

# The floors: today's counts with this suite build (commit 967efdc of
# opencontainers/distribution-spec, OCI_VERSION=dev). The suite is a pinned
# binary, so the count does not drift by itself: a lower Pass means tests
# stopped running (a switch turned off, a workflow the suite gave up on).
# A newer suite with other totals should move the floor, in the same commit.
if [ "$auth" = 1 ]; then
  min_pass=${CONFORMANCE_MIN_PASS:-980}
  # With authentication on, the suite's two anonymous mounts (a mount
  # without `from`) are skipped: Berth lets only admins make them, because
  # the caller may not be able to pull the blob's other repositories, and
  # the conformance user is not an admin. Berth answers them with an
  # ordinary upload session (202), which the spec allows; the suite then
  # skips the check rather than fail it.
  expected_skips=(
    "OCI Conformance Test/sha256 blobs/mount anonymous/blob-mount-anonymous"
    "OCI Conformance Test/sha512 blobs/mount anonymous/blob-mount-anonymous"
  )
else
  min_pass=${CONFORMANCE_MIN_PASS:-986}
  expected_skips=()
fi

work=$(mktemp -d)
cleanup() {
  stop_all
  garage_down
  rm -rf "$work"
}
trap cleanup EXIT

auth_args=()
auth_env=()
if [ "$auth" = 1 ]; then
  password=$(head -c 18 /dev/urandom | base64)
  printf '%s\n' "$password" | "$berth" user add conformance --cost 4 --htpasswd "$work/htpasswd" >/dev/null
  cat >"$work/berth.toml" <<TOML
[auth]
htpasswd = "$work/htpasswd"
[[auth.rules]]
repositories = ["conformance/*"]
users = { conformance = ["pull", "push", "delete"] }
TOML
  if [ "$storage" = s3 ]; then
    # One key for both replicas: a token must verify on the replica that did
    # not issue it.
    command -v openssl >/dev/null || { echo "conformance: needs openssl (tests/e2e/install-clients.sh)" >&2; exit 1; }
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$work/token-key.pem" 2>/dev/null
    sed -i "/^\[auth\]/a signing_key = \"$work/token-key.pem\"" "$work/berth.toml"
  fi
  auth_args=(--config "$work/berth.toml")
  auth_env=(OCI_USERNAME=conformance "OCI_PASSWORD=$password")
fi

if [ "$storage" = s3 ] && [ "$auth" = 1 ]; then
  garage_up "$work/garage"
  replicas_up "$berth" "$work" "$(random_prefix conformance)" "${auth_args[@]}" --log-level warn,berth=info
  addr=$BALANCER_ADDR
elif [ "$storage" = s3 ]; then
  # Each request to the other replica (nginx), with no cache between them
  # (cache_ttl_ms 0: what one replica changed, the other serves on the next
  # request): the two behave as one registry, request by request.
  garage_up "$work/garage"
  replicas_up "$berth" "$work" "$(random_prefix conformance)" --cache-ttl-ms 0 --log-level warn,berth=info
  nginx_balancer_up "$work/nginx" "${REPLICA_ADDRS[@]}"
  addr=$NGINX_ADDR
else
  # Port 0: the kernel picks a free port; read it back from the log.
  start_bg "$work/berth.log" "$berth" serve "${auth_args[@]}" --listen 127.0.0.1:0 --data-dir "$work/data" \
    --log-level warn,berth=info
  addr=$(listen_addr "$work/berth.log" "$LAST_PID")
fi

status=0
(
  cd "$work"
  OCI_REGISTRY=$addr OCI_TLS=disabled OCI_VERSION=dev \
  OCI_REPO1=conformance/repo1 OCI_REPO2=conformance/repo2 \
    env "${auth_env[@]}" "$conformance" >out.txt 2>err.txt
) || status=$?
out=$work/out.txt

# count NAME: the number on the summary's "NAME....: N" line (empty if absent).
count() { grep -E "^\s*$1\.+:\s*[0-9]+\s*$" "$out" | grep -o '[0-9]*$' | head -1; }
pass=$(count Pass)
fail=$(count FAIL)
skip=$(count Skip)
error=$(count Error)
disabled=$(count Disabled)
total=$(count Total)
echo "Pass $pass, FAIL $fail, Skip $skip, Error $error, Disabled $disabled, Total $total (suite exit $status)"
if [ "$storage" = s3 ]; then
  served=("$(replica_requests "$work/replica1.log")" "$(replica_requests "$work/replica2.log")")
  echo "replica 1 served ${served[0]} requests, replica 2 ${served[1]}"
fi
# The leaves the suite skipped, e.g. "OCI Conformance Test/.../x: Skip".
skipped=$(sed -nE 's/^\s*(OCI Conformance Test\/.*): Skip$/\1/p' "$out" | sort)
expected=$(printf '%s\n' "${expected_skips[@]+"${expected_skips[@]}"}" | sed '/^$/d' | sort)

problems=()
[ "$status" -eq 0 ] || problems+=("the suite exited $status")
[ "$fail" = 0 ] || problems+=("FAIL is '${fail}', not 0")
[ "$error" = 0 ] || problems+=("Error is '${error}', not 0")
[ "$disabled" = 0 ] || problems+=("Disabled is '${disabled}', not 0")
[ "$skip" = "${#expected_skips[@]}" ] || problems+=("Skip is '${skip}', expected ${#expected_skips[@]}")
[ "$skipped" = "$expected" ] || problems+=("skipped tests differ from the expected ones:
$(diff <(echo "$expected") <(echo "$skipped") || true)")
if [ -n "$pass" ] && [ -n "$total" ]; then
  [ "$pass" -eq $((total - ${#expected_skips[@]})) ] || problems+=("Pass $pass is not Total $total minus the expected skips")
  [ "$pass" -ge "$min_pass" ] || problems+=("Pass $pass is under the floor $min_pass")
else
  problems+=("no Pass/Total in the suite's summary")
fi
if [ "$storage" = s3 ]; then
  for n in 1 2; do
    [ "${served[n - 1]}" -gt 0 ] || problems+=("replica $n served no request: the balancer did not alternate")
    if grep -q ' ERROR ' "$work/replica$n.log"; then
      problems+=("replica $n logged errors:
$(grep ' ERROR ' "$work/replica$n.log" | head -10)")
    fi
  done
fi

if ((${#problems[@]})); then
  grep 'failed test' "$work/err.txt" | head -20 || true
  printf 'conformance: %s\n' "${problems[@]}"
  echo "conformance: FAIL"
  exit 1
fi

if $record; then
  mkdir -p docs/results
  if [ "$auth" = 1 ]; then
    file=docs/results/conformance-auth.md
    command="CONFORMANCE_AUTH=1 tests/conformance.sh --record PATH-TO-SUITE"
    mode="authentication on: an htpasswd user with pull, push and delete on conformance/*, logging in through the Bearer token flow"
  else
    file=docs/results/conformance.md
    command="tests/conformance.sh --record PATH-TO-SUITE"
    mode="open registry (no authentication)"
  fi
  where="plain HTTP on 127.0.0.1"
  if [ "$storage" = s3 ]; then
    file=${file%.md}-s3.md
    command="CONFORMANCE_STORAGE=s3 $command"
    mode="$mode, on S3"
    if [ "$auth" = 1 ]; then
      balanced="behind a round-robin TCP balancer"
    else
      balanced="with no cache (cache_ttl_ms 0), behind nginx sending each request to the other replica"
    fi
    where="two replicas on one prefix of a 1-node Garage bucket $balanced (requests served: ${served[0]} and ${served[1]}), plain HTTP on 127.0.0.1"
  fi
  suite_commit=$(sed -nE 's/^\s*commit:\s*([0-9a-f]+)\s*$/\1/p' "$out" | head -1)
  write_result "$file" "OCI conformance: $mode" "$command" \
    "\`OCI_VERSION=dev\` (every optional check on), \`OCI_REPO1=conformance/repo1\`, \`OCI_REPO2=conformance/repo2\`, $where" \
    "suite|opencontainers/distribution-spec \`conformance/\` at ${suite_commit:-unknown}" \
    "Pass|$pass" "FAIL|$fail" "Skip|$skip" "Error|$error" "Disabled|$disabled" "Total|$total" \
    "checked|FAIL, Error and Disabled 0; Skip exactly the expected ones; Pass = Total - Skip and at least $min_pass"
  {
    echo
    if ((${#expected_skips[@]})); then
      echo "Skipped, as expected: a blob mount without \`from\` is for admins only (the conformance user is not"
      echo "one); Berth answers it with an ordinary upload session, and the suite skips the check."
      echo
      printf -- '- %s\n' "${expected_skips[@]}"
      echo
    fi
    echo "The suite's own summary of workflows (\"Disabled\" there: a kind of content the suite does not"
    echo "generate unless asked, \`OCI_DATA_SPARSE\` being off by default):"
    echo
    echo '```'
    sed -n '/^OCI Conformance Result:/,$p' "$out"
    echo '```'
  } >>"$file"
fi
echo "conformance: $pass passed, 0 failed, $skip skipped as expected, 0 errors"
