# shellcheck shell=bash
# Shared shell helpers for Berth's script tests (sourced, not run).
# Servers bind 127.0.0.1 on ports the kernel picks; everything started is
# stopped by the caller's EXIT trap through stop_all.

# A free loopback port (bind port 0, read it, release it).
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# free_ports N: N distinct free loopback ports on one line, all held at once
# while the kernel picks them (so none repeats, as it might across calls).
free_ports() {
  python3 - "$1" <<'PY'
import socket, sys
held = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in held:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in held))
PY
}

# wait_http URL [TRIES]: until URL answers (any HTTP status).
wait_http() {
  local url=$1 tries=${2:-100}
  for _ in $(seq "$tries"); do
    curl -s -o /dev/null "$url" && return 0
    sleep 0.1
  done
  echo "no answer from $url" >&2
  return 1
}

STARTED_PIDS=()
# start_bg LOG CMD...: run CMD in the background, remember its pid in LAST_PID.
start_bg() {
  local log=$1
  shift
  "$@" >"$log" 2>&1 &
  LAST_PID=$!
  STARTED_PIDS+=("$LAST_PID")
}

# stop_pid PID: TERM, wait up to 10 s, then KILL.
stop_pid() {
  local pid=$1
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 100); do
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

stop_all() {
  local pid
  for pid in "${STARTED_PIDS[@]}"; do stop_pid "$pid"; done
  STARTED_PIDS=()
}

PASSED=0
FAILED=0
# check NAME CMD...: run CMD, print PASS/FAIL, count.
check() {
  local name=$1
  shift
  if "$@"; then
    echo "PASS $name"
    PASSED=$((PASSED + 1))
  else
    echo "FAIL $name"
    FAILED=$((FAILED + 1))
  fi
}

# summary: the plain closing line; exit status 1 when anything failed.
summary() {
  echo "$PASSED passed, $FAILED failed"
  [ "$FAILED" -eq 0 ]
}

# write_result FILE TITLE COMMAND PARAMETERS "ROW|VALUE"...: a results file
# under docs/results/ (the README quotes them): what was measured, when, on
# which commit and with which parameters, and the command that reproduces it.
# Only scripts run with --record call this, so CI leaves the tree clean.
write_result() {
  local file=$1 title=$2 command=$3 parameters=$4 row commit
  shift 4
  commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
  git diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || commit="$commit (with uncommitted changes to src/)"
  mkdir -p "$(dirname "$file")"
  {
    echo "# $title"
    echo
    echo "Written by \`$command\`; rerun it to reproduce. Do not edit by hand."
    echo
    echo "| | |"
    echo "|---|---|"
    echo "| date (UTC) | $(date -u +%Y-%m-%dT%H:%M:%SZ) |"
    echo "| Berth commit | $commit |"
    echo "| machine | $(nproc) cores, kernel $(uname -r) |"
    echo "| parameters | $parameters |"
    for row in "$@"; do
      echo "| ${row%%|*} | ${row#*|} |"
    done
  } >"$file"
  echo "recorded in $file"
}

# Writes DIR/storage.conf and DIR/containers.conf for a podman with a store
# and state of its own under DIR (vfs: no overlay here; cgroupfs, events to a
# file: no systemd here); run it as
#   CONTAINERS_STORAGE_CONF=DIR/storage.conf CONTAINERS_CONF=DIR/containers.conf \
#     CONTAINERS_REGISTRIES_CONF=/dev/null podman ...
write_podman_config() { # dir
  cat >"$1/storage.conf" <<EOF
[storage]
driver = "vfs"
graphroot = "$1/podman/storage"
runroot = "$1/podman/runroot"
EOF
  cat >"$1/containers.conf" <<EOF
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$1/podman/events.log"
tmp_dir = "$1/podman/tmp"
EOF
}

# Writes DIR/config.toml for a containerd whose root, state and sockets all
# lie under DIR (socket: DIR/containerd.sock), with what a private daemon
# without CRI does not need (and cannot start here) disabled.
write_containerd_config() { # dir
  cat >"$1/config.toml" <<EOF
version = 2
root = "$1/root"
state = "$1/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "$1/containerd.sock"
[ttrpc]
  address = "$1/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
EOF
}
