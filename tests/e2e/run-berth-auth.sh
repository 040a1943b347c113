#!/usr/bin/env bash
# End-to-end run with authentication and TLS on: starts the release Berth
# on a free loopback port serving HTTPS (tests/testdata/server.crt, a
# certificate for localhost / 127.0.0.1 signed by tests/testdata/test-ca.crt)
# with a fresh htpasswd file holding one user, then drives it with the real
# clients of tests/e2e/clients.sh in its auth/TLS mode (every client trusts
# the test CA and logs in; anonymous and wrong-password access is refused),
# and finally checks the server log for errors.
#   tests/e2e/run-berth-auth.sh      (BERTH_BIN defaults to target/release/berth)
# The last line is "N passed, M failed" over clients.sh's steps and the
# checks made here; exit status 0 only when nothing failed.
#
# The server config (a temp file) grants the user pull, push and delete on e2e/*.
# No realm is configured: Berth derives it from the request, and must say
# https:// when it serves HTTPS itself (check berth-realm-is-https).
#
# E2E_STORAGE=s3: two replicas on one prefix of a Garage bucket behind a
# round-robin TCP balancer (tests/e2e/replicas.sh), each serving HTTPS with the
# same certificate and the same config: htpasswd file and a token signing key
# made for the run, so that a token one replica issued is accepted by the
# other (check token-crosses-replicas; and the clients' logins, whose token
# and registry requests land on either replica). Both replicas' logs are
# checked, and both must have served requests. Garage as in
# tests/e2e/run-berth.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
. tests/support/lib.sh
. tests/e2e/replicas.sh

BERTH=${BERTH_BIN:-target/release/berth}
storage=${E2E_STORAGE:-filesystem}
case $storage in
  filesystem | s3) ;;
  *) echo "run-berth-auth: E2E_STORAGE is filesystem or s3, not '$storage'" >&2; exit 2 ;;
esac
[ "$storage" = s3 ] && need_garage "the real-client e2e with auth on S3 (E2E_STORAGE=s3 tests/e2e/run-berth-auth.sh)"
[ -x "$BERTH" ] || cargo build --release --locked
tests/e2e/install-clients.sh

T=$(mktemp -d /tmp/berth-e2e-auth.XXXXXX)
trap 'stop_all; garage_down; rm -rf "$T"' EXIT
CA=tests/testdata/test-ca.crt
USER_NAME=e2e
PASSWORD="e2e-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
printf '%s\n' "$PASSWORD" | "$BERTH" user add "$USER_NAME" --htpasswd "$T/htpasswd" --cost 4

# Without rules htpasswd users may pull and push; clients.sh also deletes.
{
  echo '[auth]'
  # Replicas share the key that signs tokens (absent: one of its own each).
  if [ "$storage" = s3 ]; then echo "signing_key = \"$T/token-key.pem\""; fi
  echo '[[auth.rules]]'
  echo 'repositories = ["e2e/*"]'
  echo "users = { $USER_NAME = [\"pull\", \"push\", \"delete\"] }"
} >"$T/berth.toml"
tls_args=(--config "$T/berth.toml" --tls-cert tests/testdata/server.crt --tls-key tests/testdata/server.key
  --htpasswd "$T/htpasswd")
if [ "$storage" = s3 ]; then
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$T/token-key.pem" 2>/dev/null
  garage_up "$T/garage"
  # As in tests/e2e/run-berth.sh: the cache's bound on seeing a delete.
  export BERTH_CACHE_TTL_MS=2000 E2E_STALE_MS=3000
  replicas_up "$BERTH" "$T" "$(random_prefix e2e-auth)" "${tls_args[@]}"
  port=${BALANCER_ADDR##*:}
  logs=("$T/replica1.log" "$T/replica2.log")
else
  port=$(free_port)
  start_bg "$T/berth.log" "$BERTH" serve "${tls_args[@]}" --listen "127.0.0.1:$port" --data-dir "$T/data"
  logs=("$T/berth.log")
fi
for _ in $(seq 100); do # wait_http, with the CA
  curl -s -o /dev/null --cacert "$CA" "https://localhost:$port/v2/" && break
  sleep 0.1
done

tls_up() { # the server answers HTTPS with a certificate the test CA vouches for
  curl -sS -o /dev/null --cacert "$CA" "https://localhost:$port/v2/"
}
check berth-https-up tls_up
plain_refused() { # no plain-HTTP registry on the same port
  local code
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://localhost:$port/v2/" || true)
  echo "plain HTTP to the TLS port: status '$code'"
  [ "$code" != 200 ] && [ "$code" != 401 ]
}
check berth-plain-http-refused plain_refused
realm_https() { # the 401 challenge sends clients to the token endpoint over HTTPS
  local h
  h=$(curl -sS -D - -o /dev/null --cacert "$CA" "https://localhost:$port/v2/" | tr -d '\r' |
    awk 'tolower($1) == "www-authenticate:"')
  echo "challenge: $h"
  [[ $h == *'realm="https://localhost:'"$port"'/auth/token"'* ]]
}
check berth-realm-is-https realm_https
if [ "$storage" = s3 ]; then
  crosses() { # a token replica 1 issued opens replica 2 (each addressed directly)
    local token code
    token=$(curl -sS -f --cacert "$CA" -u "$USER_NAME:$PASSWORD" \
      "https://localhost:${REPLICA_ADDRS[0]##*:}/auth/token?service=berth&scope=repository:e2e/x:pull" | jq -r .token)
    code=$(curl -sS -o /dev/null -w '%{http_code}' --cacert "$CA" -H "Authorization: Bearer $token" \
      "https://localhost:${REPLICA_ADDRS[1]##*:}/v2/e2e/x/tags/list")
    echo "replica 2 answered replica 1's token with $code"
    [ "$code" = 404 ]
  }
  check token-crosses-replicas crosses
fi

set +e
E2E_TLS_CA="$CA" E2E_USER="$USER_NAME" E2E_PASSWORD="$PASSWORD" \
  tests/e2e/clients.sh "localhost:$port" 2>&1 | tee "$T/clients.out"
set -e
# Fold clients.sh's counts into ours.
last=$(tail -n 1 "$T/clients.out")
if [[ $last =~ ^([0-9]+)\ passed,\ ([0-9]+)\ failed ]]; then
  PASSED=$((PASSED + BASH_REMATCH[1]))
  FAILED=$((FAILED + BASH_REMATCH[2]))
else
  echo "FAIL clients.sh did not end with 'N passed, M failed' (last line: $last)"
  FAILED=$((FAILED + 1))
fi

# Every request is logged; none may have failed inside Berth.
log_clean() {
  local log status=0
  for log in "${logs[@]}"; do
    if grep -q ' ERROR ' "$log"; then
      echo "berth logged errors ($(basename "$log")):"
      grep ' ERROR ' "$log" | head -20
      status=1
    fi
  done
  return $status
}
check berth-log-has-no-errors log_clean
no_password_logged() {
  ! grep -qF -- "$PASSWORD" "${logs[@]}"
}
check berth-log-has-no-password no_password_logged
for log in "${logs[@]}"; do
  echo "berth served $(replica_requests "$log") requests ($(basename "$log" .log))" \
    "($(grep -c 'status=401' "$log" || true) answered 401)"
done
if [ "$storage" = s3 ]; then
  both_served() {
    [ "$(replica_requests "$T/replica1.log")" -gt 0 ] && [ "$(replica_requests "$T/replica2.log")" -gt 0 ]
  }
  check both-replicas-served both_served
fi
summary
