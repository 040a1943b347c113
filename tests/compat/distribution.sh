#!/usr/bin/env bash
# Compatibility with CNCF Distribution's storage layout, both ways, using the
# real thing: Debian's `docker-registry` package (registry:2, Distribution 2.8).
#   1. push images with skopeo to docker-registry, then serve that data directory
#      with Berth: every image pulls back byte-identical with the same digests;
#   2. push with skopeo to Berth, then serve Berth's data directory with
#      docker-registry: the same holds.
# Usage: tests/compat/distribution.sh   (BERTH_BIN defaults to target/release/berth)
set -euo pipefail
cd "$(dirname "$0")/../.."
. tests/support/lib.sh

BERTH=${BERTH_BIN:-target/release/berth}
[ -x "$BERTH" ] || cargo build --release --locked
tests/e2e/install-clients.sh >/dev/null
for tool in docker-registry skopeo jq; do
  command -v "$tool" >/dev/null || { echo "missing $tool: run tests/e2e/install-clients.sh"; exit 1; }
done

T=$(mktemp -d /tmp/berth-compat.XXXXXX)
trap 'stop_all; rm -rf "$T"' EXIT

python3 tests/support/make_oci_layout.py "$T/layout" compat
REFS=(single multi multiarch)

start_distribution() { # DATA-DIR -> sets REG
  local port
  port=$(free_port)
  cat >"$T/dist.yml" <<YAML
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $1
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$port
YAML
  start_bg "$T/dist.log" docker-registry serve "$T/dist.yml"
  REG=127.0.0.1:$port
  wait_http "http://$REG/v2/"
}

start_berth() { # DATA-DIR -> sets REG
  local port
  port=$(free_port)
  start_bg "$T/berth.log" "$BERTH" serve --listen "127.0.0.1:$port" --data-dir "$1" --log-level warn
  REG=127.0.0.1:$port
  wait_http "http://$REG/v2/"
}

push_all() { # REG
  local ref
  for ref in "${REFS[@]}"; do
    skopeo copy -q --all --preserve-digests --dest-tls-verify=false \
      "oci:$T/layout:$ref" "docker://$1/compat/$ref:v1"
  done
}

# The raw manifest bytes of each reference, as the source layout has them.
expected_digest() { # REF
  jq -r --arg r "$1" '.manifests[] | select(.annotations["org.opencontainers.image.ref.name"] == $r) | .digest' \
    "$T/layout/index.json"
}

same_image() { # REG REF: manifest digest matches and every blob pulls back identical
  local reg=$1 ref=$2 want got out
  want=$(expected_digest "$ref")
  got=$(curl -sI -H 'Accept: application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json' \
    "http://$reg/v2/compat/$ref/manifests/v1" | tr -d '\r' | awk -F': ' 'tolower($1)=="docker-content-digest"{print $2}')
  [ "$got" = "$want" ] || { echo "  $ref: digest $got, want $want"; return 1; }
  out="$T/pulled-${reg//[.:]/_}-$ref"
  rm -rf "$out"
  skopeo copy -q --all --preserve-digests --src-tls-verify=false "docker://$reg/compat/$ref:v1" "oci:$out:$ref" || return 1
  # Every blob the source layout has for this image must be byte-identical.
  local blob
  for blob in "$out"/blobs/sha256/*; do
    cmp -s "$blob" "$T/layout/blobs/sha256/$(basename "$blob")" || { echo "  $ref: blob $(basename "$blob") differs"; return 1; }
  done
}

listed() { # REG: catalog and tags list show what was pushed
  local reg=$1 ref
  for ref in "${REFS[@]}"; do
    curl -s "http://$reg/v2/_catalog" | jq -e --arg r "compat/$ref" '.repositories | index($r)' >/dev/null || return 1
    curl -s "http://$reg/v2/compat/$ref/tags/list" | jq -e '.tags == ["v1"]' >/dev/null || return 1
  done
}

echo "== Distribution writes, Berth serves"
start_distribution "$T/from-distribution"
push_all "$REG"
stop_all
start_berth "$T/from-distribution"
for ref in "${REFS[@]}"; do check "berth serves distribution's $ref" same_image "$REG" "$ref"; done
check "berth lists distribution's repositories and tags" listed "$REG"
# Berth can keep writing into Distribution's directory: a new tag on old data.
check "berth adds a tag to distribution's data" skopeo copy -q --all --src-tls-verify=false --dest-tls-verify=false \
  "docker://$REG/compat/single:v1" "docker://$REG/compat/single:v2"
stop_all
start_distribution "$T/from-distribution"
check "distribution reads the tag berth added" bash -c \
  "curl -s http://$REG/v2/compat/single/tags/list | jq -e '.tags == [\"v1\",\"v2\"]' >/dev/null"
stop_all

echo "== Berth writes, Distribution serves"
start_berth "$T/from-berth"
push_all "$REG"
stop_all
start_distribution "$T/from-berth"
for ref in "${REFS[@]}"; do check "distribution serves berth's $ref" same_image "$REG" "$ref"; done
check "distribution lists berth's repositories and tags" listed "$REG"
check "no upload leftovers in berth's data" bash -c "! find '$T/from-berth' -path '*/_uploads/*' | grep -q ."
stop_all

summary
