#!/usr/bin/env bash
# A throwaway Garage (S3-compatible object store) cluster on loopback, for the
# tests of the S3 backend: the one home of its start sequence (the Rust
# fixture tests/it/support/garage.rs runs this script too).
#
#   tests/garage.sh find                 print the garage binary it would use
#                                        (exit 3 when there is none)
#   tests/garage.sh start DIR [--nodes 1|3] [--owner PID] [--remove PATH]
#                                        a cluster in DIR (made if missing),
#                                        replication factor = nodes, bucket
#                                        berth-test, a key allowed on it; writes
#                                        DIR/env (below) once S3 answers.
#                                        --owner: whose end stops the nodes (the
#                                        caller by default); --remove: PATH (DIR
#                                        or a parent) is deleted then too, for an
#                                        owner that never stops the cluster
#   tests/garage.sh stop DIR             stops the cluster (DIR is left)
#   tests/garage.sh stop-node DIR N [--kill]
#                                        stops node N (SIGTERM: it closes its
#                                        connections, so requests fail over at
#                                        once); --kill: SIGKILL, a crash. The
#                                        others then notice only when a send to
#                                        it fails, at their next ping (Garage
#                                        pings every 15 s): a write that waits
#                                        on it stalls about 8 s (measured)
#   tests/garage.sh start-node DIR N     starts node N again; waits until it is
#                                        connected to the running nodes (about
#                                        8 s: the peers reconnect at their next
#                                        ping) and its S3 answers
#
# DIR/env (sourceable shell, and KEY=VALUE lines for the Rust fixture):
#   S3_ENDPOINT=http://127.0.0.1:PORT   node 1's S3 API
#   S3_REGION=garage  S3_BUCKET=berth-test  AWS_ACCESS_KEY_ID=...  AWS_SECRET_ACCESS_KEY=...
#   GARAGE_NODES=N  and per node i: S3_ENDPOINT_i=...  GARAGE_PID_FILE_i=DIR/node<i>/pid
#
# The binary: $GARAGE_BIN, else target/garage/bin/garage (what tests/run.sh
# builds), else /work/cache/garage/bin/garage (this workplace's prebuilt
# copy), else garage on PATH.
#
# Nodes outlive this script (they are its background children), so a
# watchdog, detached from the caller, kills them once the owner process (the
# caller, by default) is gone or DIR is deleted: a test binary that panics or
# is killed leaves no Garage behind.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=tests/support/lib.sh
. "$root/tests/support/lib.sh"

bucket=berth-test
region=garage

die() {
  echo "garage.sh: $*" >&2
  exit 1
}

# Exit status 3 means "no Garage here", which callers tell apart from a
# Garage that failed (the Rust fixture skips on it outside CI).
no_garage() {
  echo "garage.sh: no garage binary (GARAGE_BIN, target/garage/bin, /work/cache/garage/bin, PATH)" >&2
  exit 3
}

find_garage() {
  local candidate
  # A GARAGE_BIN that is not there is a mistake to report, not a reason to
  # test another build.
  if [ -n "${GARAGE_BIN:-}" ]; then
    [ -x "$GARAGE_BIN" ] || { echo "garage.sh: GARAGE_BIN=$GARAGE_BIN is not an executable" >&2; return 3; }
    echo "$GARAGE_BIN"
    return 0
  fi
  for candidate in "$root/target/garage/bin/garage" /work/cache/garage/bin/garage; do
    if [ -x "$candidate" ]; then
      echo "$candidate"
      return 0
    fi
  done
  type -P garage || return 3
}

# alive PID: the process exists and is not a zombie (a node is not our child
# once this script has exited, so `wait` cannot reap it and kill -0 alone
# would count an unreaped zombie as running).
alive() {
  local state
  state=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$state" ] && [ "$state" != Z ]
}

# is_node PID CONFIG: PID is still the garage server of CONFIG (not a
# process that reused the number after the node died).
is_node() {
  alive "$1" && { tr '\0' ' ' <"/proc/$1/cmdline"; } 2>/dev/null | grep -qF -- "$2"
}

random_hex() { od -An -tx1 -N"$1" /dev/urandom | tr -d ' \n'; }

# s3_get ENDPOINT QUERY [CURL ARGS...]: a signed GET on the bucket. Garage
# requires x-amz-content-sha256 (here: the hash of the empty body), which
# curl then signs. A query key needs its "=" (curl signs "?lifecycle" wrongly).
s3_get() {
  local endpoint=$1 query=$2
  shift 2
  # shellcheck disable=SC1091
  . "$dir/credentials"
  curl -s --max-time 5 "$@" \
    --aws-sigv4 "aws:amz:$region:s3" --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" \
    -H "x-amz-content-sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" \
    "$endpoint/$bucket$query"
}

# s3_status ENDPOINT: the status of a ListObjectsV2 on the bucket.
s3_status() {
  s3_get "$1" "?list-type=2&max-keys=1" -o /dev/null -w '%{http_code}' || true
}

# wait_s3 N: until node N's S3 API answers the signed listing with 200.
wait_s3() {
  local n=$1 endpoint status=""
  endpoint=$(cat "$dir/node$n/s3_endpoint")
  for _ in $(seq 300); do
    # Then whatever holds the port is not Garage.
    port_clash "$n" && die "node $n: its S3 port was taken by another process; log in $dir/node$n/log"
    status=$(s3_status "$endpoint")
    [ "$status" = 200 ] && return 0
    sleep 0.05
  done
  die "S3 at $endpoint never answered 200 (last status: ${status:-none}); logs in $dir/node*/log"
}

# port_clash N: node N's log, since its latest start, says one of its ports
# was taken. The ports are chosen free, then released for Garage to bind, and
# a test process beside may bind one in between. Garage panics when it
# cannot bind RPC, but only logs an error and runs on without S3.
log_offset=()
port_clash() {
  tail -c "+$((${log_offset[$1]:-0} + 1))" "$dir/node$1/log" 2>/dev/null | grep -q "Address already in use"
}

running_nodes() {
  local m
  for m in $(seq "$nodes"); do
    if [ -e "$dir/node$m/pid" ] && is_node "$(cat "$dir/node$m/pid")" "$dir/node$m/garage.toml"; then
      echo "$m"
    fi
  done
}

# wait_connected N...: until each node N counts all running nodes (itself
# included) as connected. A node that was just (re)started answers before
# its peers have reconnected to it: until then a request it serves may miss
# a quorum the running nodes do have. (Its peers' counts are no guide to a
# node that left: they drop it only at their next ping.)
wait_connected() {
  local m running connected=""
  mapfile -t running < <(running_nodes)
  for m in "$@"; do
    for _ in $(seq 800); do
      connected=$(cli "$m" json-api GetClusterHealth 2>/dev/null |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["connectedNodes"])' 2>/dev/null) || true
      [ "$connected" = "${#running[@]}" ] && continue 2
      sleep 0.05
    done
    die "node $m counts ${connected:-?} nodes connected, not the ${#running[@]} running, after 40 s"
  done
}

# cli N ARGS...: the garage CLI against node N (it speaks RPC to the node).
cli() {
  local n=$1
  shift
  "$garage" -c "$dir/node$n/garage.toml" "$@"
}

# retry TRIES CMD...: CMD until it succeeds, 50 ms apart; the last attempt's
# output is shown when all fail. (Layout and table operations answer errors
# for a moment after a node starts or joins, until it has synced the layout.)
retry() {
  local tries=$1 out
  shift
  for _ in $(seq "$tries"); do
    if out=$("$@" 2>&1); then
      printf '%s\n' "$out"
      return 0
    fi
    sleep 0.05
  done
  printf '%s\n' "$out" >&2
  die "failed $tries times: $*"
}

# start_node N: starts node N and waits until its RPC answers; returns 2
# (the node stopped again) when one of its ports was taken.
start_node() {
  local n=$1 node="$dir/node$1"
  log_offset[n]=$(stat -c %s "$node/log" 2>/dev/null || echo 0)
  # The log is appended to, so a restarted node's earlier life stays readable.
  NO_COLOR=1 "$garage" -c "$node/garage.toml" server </dev/null >>"$node/log" 2>&1 &
  echo $! >"$node/pid"
  # Not a job of this shell: killing it (a port clash) prints no "Killed".
  disown $!
  # The node key appears in its metadata directory when it starts; the CLI
  # then answers once its RPC port listens. Both servers bind at once, so a
  # taken S3 port has been logged by then.
  for _ in $(seq 200); do
    if port_clash "$n"; then
      stop_node_pid "$n" KILL
      return 2
    fi
    alive "$(cat "$node/pid")" || die "node $n exited at start; its log: $(tail -n 20 "$node/log")"
    if [ -e "$node/meta/node_key" ] && cli "$n" status >/dev/null 2>&1; then
      if port_clash "$n"; then
        stop_node_pid "$n" KILL
        return 2
      fi
      return 0
    fi
    sleep 0.05
  done
  die "node $n did not answer its RPC port in 10 s; log in $node/log"
}

stop_node_pid() {
  local n=$1 signal=$2 node="$dir/node$1" pid
  [ -e "$node/pid" ] || return 0
  pid=$(cat "$node/pid")
  if is_node "$pid" "$node/garage.toml"; then
    kill "-$signal" "$pid" 2>/dev/null || true
    for _ in $(seq 100); do
      alive "$pid" || break
      sleep 0.1
    done
    if alive "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
  fi
  rm -f "$node/pid"
}

# The watchdog's loop (run detached by `start`): remembers each node's pid
# (re-read, since start-node changes it), and kills the nodes once the owner
# is gone or DIR was removed.
watch() {
  local owner=$1 remove=${2:-} n pids=() configs=()
  while alive "$owner" && [ -d "$dir" ]; do
    for n in $(seq "$nodes"); do
      if [ -e "$dir/node$n/pid" ]; then
        pids[n]=$(cat "$dir/node$n/pid" 2>/dev/null || echo "${pids[n]:-}")
        configs[n]="$dir/node$n/garage.toml"
      fi
    done
    sleep 0.5
  done
  for n in "${!pids[@]}"; do
    if [ -n "${pids[n]}" ] && is_node "${pids[n]}" "${configs[n]}"; then
      echo "garage.sh watchdog: owner $owner gone; killing node $n (pid ${pids[n]})"
      kill -KILL "${pids[n]}" 2>/dev/null || true
    fi
  done
  if [ -n "$remove" ]; then
    # The nodes' files may still be open for a moment after SIGKILL.
    for n in "${!pids[@]}"; do
      for _ in $(seq 50); do alive "${pids[n]}" || break; sleep 0.1; done
    done
    rm -rf -- "$remove"
  fi
}

write_config() {
  local n=$1 rpc_port=$2 s3_port=$3 node="$dir/node$1"
  mkdir -p "$node/meta" "$node/data"
  # Garage refuses a config holding rpc_secret that others can read.
  (
    umask 077
    cat >"$node/garage.toml" <<EOF
metadata_dir = "$node/meta"
data_dir = "$node/data"
db_engine = "sqlite"
replication_factor = $nodes
consistency_mode = "consistent"
rpc_bind_addr = "127.0.0.1:$rpc_port"
rpc_public_addr = "127.0.0.1:$rpc_port"
rpc_secret = "$rpc_secret"
# Test data is small and short-lived: no compression, no scrub (CPU the
# tests beside it want).
compression_level = "none"
disable_scrub = true

[s3_api]
s3_region = "$region"
api_bind_addr = "127.0.0.1:$s3_port"
EOF
  )
}

cmd_start() {
  local n ports started id ids=() remove=""
  owner=$PPID
  nodes=1
  while (($#)); do
    case $1 in
      --nodes) nodes=$2; shift 2 ;;
      --owner) owner=$2; shift 2 ;;
      --remove) remove=$(cd "$2" && pwd); shift 2 ;;
      *) die "start: unknown argument $1" ;;
    esac
  done
  case $nodes in 1 | 3) ;; *) die "--nodes is 1 or 3, not $nodes" ;; esac
  alive "$owner" || die "owner process $owner is not running"
  garage=$(find_garage) || no_garage
  [ ! -e "$dir/env" ] || die "$dir already holds a cluster ($dir/env)"
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  started=$(date +%s%N)
  # A start that fails half-way stops what it started (its caller, a test
  # binary say, may run on for minutes).
  trap 'cmd_stop' EXIT

  rpc_secret=$(random_hex 32)
  # Garage's own key ids are GK + 24 hex digits; any id of 8+ characters imports.
  printf 'AWS_ACCESS_KEY_ID=GK%s\nAWS_SECRET_ACCESS_KEY=%s\n' "$(random_hex 12)" "$(random_hex 32)" >"$dir/credentials"
  echo "$nodes" >"$dir/nodes"

  # The watchdog first, so that a failure below leaves no node running once
  # the owner is gone either.
  setsid "$root/tests/garage.sh" watch "$dir" "$owner" "$remove" </dev/null >>"$dir/watchdog.log" 2>&1 &
  echo $! >"$dir/watchdog.pid"

  local attempt status
  for attempt in 1 2 3; do
    # Two ports per node, held together while chosen so that none repeats.
    read -r -a ports <<<"$(free_ports $((2 * nodes)))"
    for n in $(seq "$nodes"); do
      write_config "$n" "${ports[2 * n - 2]}" "${ports[2 * n - 1]}"
      echo "http://127.0.0.1:${ports[2 * n - 1]}" >"$dir/node$n/s3_endpoint"
    done
    status=0
    for n in $(seq "$nodes"); do
      start_node "$n" || status=$?
      [ "$status" = 0 ] || break
    done
    [ "$status" = 0 ] && break
    # A port was taken between choosing and binding: fresh nodes, new ports.
    echo "garage.sh: node $n found a port taken (attempt $attempt); new ports" >&2
    for n in $(seq "$nodes"); do
      stop_node_pid "$n" KILL
      rm -rf "${dir:?}/node$n"
    done
  done
  [ "$status" = 0 ] || die "ports taken on 3 attempts in a row"

  for n in $(seq "$nodes"); do
    id=$(cli "$n" node id -q)
    ids+=("$id")
    [ "$n" = 1 ] || retry 100 cli 1 node connect "$id" >/dev/null
  done
  # One zone per node: with replication factor 3, each node holds a copy.
  for n in $(seq "$nodes"); do
    retry 100 cli 1 layout assign -z "dc$n" -c 1G "${ids[n - 1]%@*}" >/dev/null
  done
  retry 100 cli 1 layout apply --version 1 >/dev/null
  # Nodes 2 and 3 meet through node 1's peer list: a test may stop node 1.
  # shellcheck disable=SC2046
  wait_connected $(seq "$nodes")

  # shellcheck disable=SC1091
  . "$dir/credentials"
  retry 100 cli 1 key import --yes -n berth-test "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY" >/dev/null
  retry 100 cli 1 bucket create "$bucket" >/dev/null
  retry 100 cli 1 bucket allow --read --write --owner "$bucket" --key "$AWS_ACCESS_KEY_ID" >/dev/null
  # There is no `garage bucket lifecycle`; the admin API's UpdateBucket,
  # which the CLI's json-api reaches over RPC, takes the rules. Uploads a
  # crashed process never completes or aborts are removed after a day (the
  # S3 backend aborts its own from session records; object_store cannot list
  # the orphans).
  local bucket_id
  bucket_id=$(cli 1 json-api GetBucketInfo "{\"globalAlias\":\"$bucket\"}" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])')
  retry 20 cli 1 json-api UpdateBucket "{\"id\":\"$bucket_id\",\"body\":{\"lifecycleRules\":[{\"ID\":\"abort-incomplete-uploads\",\"Status\":\"Enabled\",\"AbortIncompleteMultipartUpload\":{\"DaysAfterInitiation\":1}}]}}" >/dev/null

  for n in $(seq "$nodes"); do
    wait_s3 "$n"
  done
  # The rule as S3 clients see it (GetBucketLifecycleConfiguration).
  s3_get "$(cat "$dir/node1/s3_endpoint")" "?lifecycle=" | grep -q '<DaysAfterInitiation>1</DaysAfterInitiation>' ||
    die "the bucket's AbortIncompleteMultipartUpload rule did not read back"

  {
    echo "S3_ENDPOINT=$(cat "$dir/node1/s3_endpoint")"
    echo "S3_REGION=$region"
    echo "S3_BUCKET=$bucket"
    cat "$dir/credentials"
    echo "GARAGE_NODES=$nodes"
    for n in $(seq "$nodes"); do
      echo "S3_ENDPOINT_$n=$(cat "$dir/node$n/s3_endpoint")"
      echo "GARAGE_PID_FILE_$n=$dir/node$n/pid"
    done
  } >"$dir/env.tmp"
  # Renamed into place: a reader never sees half of it.
  mv "$dir/env.tmp" "$dir/env"
  trap - EXIT
  echo "garage.sh: $nodes-node cluster up in $(( ($(date +%s%N) - started) / 1000000 )) ms: $(head -n 1 "$dir/env")"
}

cmd_stop() {
  local n
  [ -e "$dir/nodes" ] || return 0
  nodes=$(cat "$dir/nodes")
  if [ -e "$dir/watchdog.pid" ]; then
    kill -TERM "$(cat "$dir/watchdog.pid")" 2>/dev/null || true
    rm -f "$dir/watchdog.pid"
  fi
  for n in $(seq "$nodes"); do
    stop_node_pid "$n" TERM
  done
  rm -f "$dir/env"
}

node_arg() {
  [ -e "$dir/nodes" ] || die "no cluster in $dir"
  nodes=$(cat "$dir/nodes")
  if ! [[ $1 =~ ^[0-9]+$ ]] || (($1 < 1 || $1 > nodes)); then
    die "node $1: the cluster has nodes 1 to $nodes"
  fi
}

command=${1:-}
[ $# -ge 1 ] && shift
case $command in
  find) find_garage || no_garage ;;
  start | stop | stop-node | start-node | watch)
    [ $# -ge 1 ] || die "$command needs DIR"
    dir=$1
    shift
    given=$dir
    # Absolute from here on: the nodes' command lines (which is_node matches)
    # and the watchdog (which runs elsewhere) hold it so.
    if [ "$command" != start ]; then
      if ! dir=$(cd "$dir" 2>/dev/null && pwd); then
        [ "$command" = stop ] && exit 0
        die "no directory $given"
      fi
    fi
    # The CLI the commands below call (stop sends signals only).
    if [ "$command" = stop-node ] || [ "$command" = start-node ]; then
      garage=$(find_garage) || no_garage
    fi
    case $command in
      start) cmd_start "$@" ;;
      stop) cmd_stop ;;
      stop-node)
        node_arg "${1:-}"
        case ${2:-} in
          --kill) stop_node_pid "$1" KILL ;;
          "") stop_node_pid "$1" TERM ;;
          *) die "stop-node: unknown argument $2" ;;
        esac
        ;;
      start-node)
        node_arg "${1:-}"
        if [ -e "$dir/node$1/pid" ] && is_node "$(cat "$dir/node$1/pid")" "$dir/node$1/garage.toml"; then
          die "node $1 is running"
        fi
        start_node "$1" || die "node $1: a port it had was taken by another process; log in $dir/node$1/log"
        wait_connected "$1"
        wait_s3 "$1"
        ;;
      watch)
        nodes=$(cat "$dir/nodes")
        watch "$@"
        ;;
    esac
    ;;
  *)
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
