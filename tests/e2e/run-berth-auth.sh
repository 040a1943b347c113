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
set -euo pipefail
cd "$(dirname "$0")/../.."
. tests/support/lib.sh

BERTH=${BERTH_BIN:-target/release/berth}
[ -x "$BERTH" ] || cargo build --release --locked
tests/e2e/install-clients.sh

T=$(mktemp -d /tmp/berth-e2e-auth.XXXXXX)
trap 'stop_all; rm -rf "$T"' EXIT
CA=tests/testdata/test-ca.crt
USER_NAME=e2e
PASSWORD="e2e-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
printf '%s\n' "$PASSWORD" | "$BERTH" user add "$USER_NAME" --htpasswd "$T/htpasswd" --cost 4

port=$(free_port)
# Without rules htpasswd users may pull and push; clients.sh also deletes.
{
  echo '[auth]'
  echo '[[auth.rules]]'
  echo 'repositories = ["e2e/*"]'
  echo "users = { $USER_NAME = [\"pull\", \"push\", \"delete\"] }"
} >"$T/berth.toml"
start_bg "$T/berth.log" "$BERTH" serve --config "$T/berth.toml" --listen "127.0.0.1:$port" --data-dir "$T/data" \
  --tls-cert tests/testdata/server.crt --tls-key tests/testdata/server.key \
  --htpasswd "$T/htpasswd"
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
  if grep -q ' ERROR ' "$T/berth.log"; then
    echo "berth logged errors:"
    grep ' ERROR ' "$T/berth.log" | head -20
    return 1
  fi
}
check berth-log-has-no-errors log_clean
no_password_logged() {
  ! grep -qF -- "$PASSWORD" "$T/berth.log"
}
check berth-log-has-no-password no_password_logged
echo "berth served $(grep -c 'berth::request' "$T/berth.log") requests" \
  "($(grep -c ' 401 ' "$T/berth.log" || true) answered 401)"
summary
