# shellcheck shell=bash
# Berth as two stateless replicas over one S3 prefix, behind a round-robin TCP
# balancer (tests/support/balancer.py: each new connection goes to the next
# replica), on a Garage that tests/garage.sh starts. The S3 mode of the script
# tests runs against this: tests/conformance.sh (CONFORMANCE_STORAGE=s3),
# tests/e2e/run-berth.sh and run-berth-auth.sh (E2E_STORAGE=s3), and
# tests/compat/distribution-s3.sh. Sourced after tests/support/lib.sh (whose
# start_bg / stop_all start and stop the replicas and the balancer).
#
#   need_garage WHAT     returns when a Garage binary is found; else, in CI
#                        (CI=true), fails the caller loudly, and elsewhere
#                        prints a loud SKIPPED line naming WHAT and exits 0
#   garage_up DIR        exports the S3 settings (S3_ENDPOINT, S3_REGION,
#                        S3_BUCKET, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) of
#                        the Garage whose env file $GARAGE_ENV names (callers
#                        that run several scripts share one cluster), else of a
#                        1-node cluster started in DIR, which garage_down stops
#                        (and Garage's watchdog, once this shell is gone)
#   garage_down          stops the cluster garage_up started, if it did
#   replicas_up BERTH DIR PREFIX [ARGS...]
#                        two `berth serve` of the binary BERTH on PREFIX of the
#                        bucket, each with its own data dir (DIR/replicaN: its
#                        local cache) and log (DIR/replicaN.log) and ARGS, then
#                        the balancer; sets REPLICA_ADDRS (host:port of each)
#                        and BALANCER_ADDR (host:port clients use). ARGS may
#                        set --log-level, which must keep `berth=info` (the
#                        address is read from the start-up line)
#   replica_requests LOG how many requests the replica that wrote LOG served
#   s3_keys PREFIX       the bucket's keys under PREFIX, one a line (a signed
#                        ListObjectsV2, paged)
#   random_prefix NAME   NAME-<random>: a prefix no earlier run used

need_garage() {
  local what=$1
  [ -n "${GARAGE_ENV:-}" ] && return 0
  tests/garage.sh find >/dev/null 2>&1 && return 0
  if [ "${CI:-}" = true ]; then
    echo "FAIL: $what needs Garage and there is none (GARAGE_BIN, target/garage/bin, PATH; tests/install-tools.sh --garage builds it)" >&2
    exit 1
  fi
  printf '\n==> SKIPPED: %s: no Garage binary (GARAGE_BIN, target/garage/bin, PATH;\n' "$what" >&2
  printf '    tests/install-tools.sh --garage builds it). This run did NOT test Berth on S3.\n' >&2
  exit 0
}

GARAGE_STARTED=
garage_up() {
  local dir=$1 env
  if [ -n "${GARAGE_ENV:-}" ]; then
    env=$GARAGE_ENV
  else
    # The watchdog stops the nodes once this shell ($$, also from a subshell)
    # is gone, whatever way it ends.
    tests/garage.sh start "$dir" --owner "$$" >/dev/null
    GARAGE_STARTED=$dir
    env=$dir/env
  fi
  [ -s "$env" ] || { echo "garage_up: no Garage env file at $env" >&2; return 1; }
  set -a
  # shellcheck disable=SC1090
  . "$env"
  set +a
  # Berth reads these; they must not fall back to another AWS profile.
  export AWS_REGION=$S3_REGION
}

garage_down() {
  if [ -n "$GARAGE_STARTED" ]; then
    tests/garage.sh stop "$GARAGE_STARTED" || true
    GARAGE_STARTED=
  fi
}

random_prefix() {
  printf '%s-%s\n' "$1" "$(od -An -tx1 -N6 /dev/urandom | tr -d ' \n')"
}

# listen_addr LOG PID: the address a `berth serve --listen 127.0.0.1:0` logged
# (port 0: the kernel picks a free one, so two starts never race for it).
listen_addr() {
  local log=$1 pid=$2 addr
  for _ in $(seq 300); do
    addr=$(grep -o 'listen=127.0.0.1:[0-9]*' "$log" 2>/dev/null | head -1 | cut -d= -f2) || true
    [ -n "$addr" ] && { echo "$addr"; return 0; }
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "berth (log $log) did not start:" >&2
  tail -n 20 "$log" >&2
  return 1
}

REPLICA_ADDRS=()
BALANCER_ADDR=
replicas_up() {
  local berth=$1 dir=$2 prefix=$3 n port
  shift 3
  REPLICA_ADDRS=()
  for n in 1 2; do
    mkdir -p "$dir/replica$n"
    start_bg "$dir/replica$n.log" "$berth" serve "$@" --listen 127.0.0.1:0 --data-dir "$dir/replica$n" \
      --s3-bucket "$S3_BUCKET" --s3-endpoint "$S3_ENDPOINT" --s3-region "$S3_REGION" --s3-prefix "$prefix"
    REPLICA_ADDRS+=("$(listen_addr "$dir/replica$n.log" "$LAST_PID")") || return 1
  done
  start_bg "$dir/balancer.log" python3 tests/support/balancer.py 0 "${REPLICA_ADDRS[@]}"
  port=
  for _ in $(seq 100); do
    port=$(head -n 1 "$dir/balancer.log" 2>/dev/null | grep -E '^[0-9]+$') && break
    sleep 0.1
  done
  [ -n "$port" ] || { echo "the balancer did not start: $(cat "$dir/balancer.log")" >&2; return 1; }
  BALANCER_ADDR=127.0.0.1:$port
  echo "replicas ${REPLICA_ADDRS[*]} on s3://$S3_BUCKET/$prefix at $S3_ENDPOINT, balanced at $BALANCER_ADDR"
}

# nginx_balancer_up DIR ADDR...: nginx on 127.0.0.1:<free port> in front of
# the replicas at ADDR..., balancing each request (not each connection, as
# balancer.py does) round robin: a client on one keep-alive connection, as
# the conformance suite, then alternates between replicas request by
# request (an upload's PATCH on one, its PUT on the other; a delete on one,
# the check that it is gone on the other). Sets NGINX_ADDR; stopped by
# stop_all.
NGINX_ADDR=
nginx_balancer_up() {
  local dir=$1 port servers="" addr nginx
  shift
  nginx=$(PATH=$PATH:/usr/sbin command -v nginx) ||
    { echo "nginx_balancer_up: needs nginx (tests/e2e/install-clients.sh)" >&2; return 1; }
  for addr in "$@"; do servers+="    server $addr;"$'\n'; done
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  mkdir -p "$dir"
  cat >"$dir/nginx.conf" <<CONF
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log;
events {}
http {
  access_log off;
  client_body_temp_path $dir/body; proxy_temp_path $dir/proxy;
  fastcgi_temp_path $dir/fastcgi; uwsgi_temp_path $dir/uwsgi; scgi_temp_path $dir/scgi;
  upstream replicas {
$servers    keepalive 16;
  }
  server {
    listen 127.0.0.1:$port;
    client_max_body_size 0;
    location / {
      proxy_pass http://replicas;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_request_buffering off;
      proxy_buffering off;
      proxy_set_header Host \$http_host;
    }
  }
}
CONF
  start_bg "$dir/nginx.log" "$nginx" -e "$dir/error.log" -c "$dir/nginx.conf"
  for _ in $(seq 100); do
    # shellcheck disable=SC2034 # read by the scripts that source this one
    curl -s -o /dev/null "http://127.0.0.1:$port/v2/" && { NGINX_ADDR=127.0.0.1:$port; return 0; }
    sleep 0.1
  done
  echo "nginx did not start: $(cat "$dir/error.log" "$dir/nginx.log" 2>/dev/null)" >&2
  return 1
}

replica_requests() {
  grep -c 'berth::request' "$1" || true
}

s3_keys() {
  local prefix=$1 token="" page query out
  page=$(mktemp)
  while :; do
    # curl (7.88) signs the query as written: SigV4 wants it sorted by key
    # and each part percent-encoded (RFC 3986 unreserved characters kept).
    query=$(python3 -c '
import sys, urllib.parse
q = {"list-type": "2", "prefix": sys.argv[1]}
if sys.argv[2]:
    q["continuation-token"] = sys.argv[2]
print("&".join(k + "=" + urllib.parse.quote(v, safe="-_.~") for k, v in sorted(q.items())))
' "$prefix" "$token")
    curl -sS -f --max-time 30 --aws-sigv4 "aws:amz:$S3_REGION:s3" \
      --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" \
      -H "x-amz-content-sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" \
      -o "$page" "$S3_ENDPOINT/$S3_BUCKET?$query" || { rm -f "$page"; return 1; }
    # The next page's token (empty after the last page) on the first line,
    # then the keys.
    out=$(python3 - "$page" <<'PY'
import sys, xml.etree.ElementTree as ET
ns = {"s3": "http://s3.amazonaws.com/doc/2006-03-01/"}
root = ET.parse(sys.argv[1]).getroot()
truncated = root.findtext("s3:IsTruncated", "false", ns) == "true"
print(root.findtext("s3:NextContinuationToken", "", ns) if truncated else "")
for key in root.findall("s3:Contents/s3:Key", ns):
    print(key.text)
PY
)
    token=$(head -n 1 <<<"$out")
    tail -n +2 <<<"$out" | sed '/^$/d'
    [ -n "$token" ] || break
  done
  rm -f "$page"
}
