# shellcheck shell=bash
# Sourced by the e2e scripts that run a private containerd daemon.

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
