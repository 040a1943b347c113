#!/usr/bin/env bash
# Compatibility with CNCF Distribution on S3, both ways, on one Garage bucket:
# Debian's `docker-registry` (Distribution 2.8) with its `s3` storage driver,
# and Berth as two replicas behind a round-robin balancer
# (tests/e2e/replicas.sh), each pair on one prefix (Distribution's
# `rootdirectory`, Berth's `--s3-prefix`).
#   1. push images (tests/support/make_oci_layout.py's, and one with a 12 MiB
#      layer: a multipart upload on both sides) with skopeo to Distribution, then serve that prefix with
#      Berth: every image pulls back byte-identical, by tag and by digest, with
#      the same digests; catalog and tags list show them; a tag Berth adds is
#      read by Distribution;
#   2. push with skopeo to Berth, then serve that prefix with Distribution: the
#      same holds, and Berth left no upload behind in the bucket.
# Usage: tests/compat/distribution-s3.sh   (BERTH_BIN defaults to target/release/berth)
# Garage is the one $GARAGE_ENV names, else one started here; with no Garage
# binary the run fails in CI (CI=true) and is skipped, loudly, elsewhere.
#
# Distribution 2.8's s3 driver keys (Debian's configuration.md): accesskey,
# secretkey, region, regionendpoint, bucket, rootdirectory, secure, v4auth,
# chunksize. There is no `forcepathstyle` in 2.8 (it came with 3.0): a
# `regionendpoint` alone makes its requests path-style, which is what Garage
# needs. Its AWS SDK panics at start when AWS_CA_BUNDLE is set (these
# machines set it), so Distribution runs without it.
set -euo pipefail
cd "$(dirname "$0")/../.."
. tests/support/lib.sh
. tests/e2e/replicas.sh

BERTH=${BERTH_BIN:-target/release/berth}
need_garage "Distribution compatibility on S3 (tests/compat/distribution-s3.sh)"
[ -x "$BERTH" ] || cargo build --release --locked
tests/e2e/install-clients.sh >/dev/null
for tool in docker-registry skopeo jq; do
  command -v "$tool" >/dev/null || { echo "missing $tool: run tests/e2e/install-clients.sh"; exit 1; }
done

T=$(mktemp -d /tmp/berth-compat-s3.XXXXXX)
trap 'stop_all; garage_down; rm -rf "$T"' EXIT
garage_up "$T/garage"

python3 tests/support/make_oci_layout.py "$T/layout" compat
# And "big": one layer of 12 MiB (random, so gzip keeps its size), over
# Berth's part size (8 MiB): Berth writes it as a multipart upload completed
# and then copied to the blob's key, which Distribution must read as any blob.
python3 - "$T/layout" <<'PY'
import importlib.util, json, os, sys
spec = importlib.util.spec_from_file_location("layout", "tests/support/make_oci_layout.py")
layout = importlib.util.module_from_spec(spec)
spec.loader.exec_module(layout)
root = sys.argv[1]
desc = layout.image(root, "amd64", [{"big.bin": os.urandom(12 << 20)}])
desc.pop("platform")
desc["annotations"] = {"org.opencontainers.image.ref.name": "big"}
with open(os.path.join(root, "index.json")) as f:
    index = json.load(f)
index["manifests"].append(desc)
with open(os.path.join(root, "index.json"), "w") as f:
    json.dump(index, f)
PY
REFS=(single multi multiarch big)
ACCEPT='application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json'

start_distribution() { # PREFIX -> sets REG
  local port
  port=$(free_port)
  cat >"$T/dist.yml" <<YAML
version: 0.1
log:
  level: warn
storage:
  s3:
    accesskey: $AWS_ACCESS_KEY_ID
    secretkey: $AWS_SECRET_ACCESS_KEY
    region: $S3_REGION
    regionendpoint: $S3_ENDPOINT
    bucket: $S3_BUCKET
    rootdirectory: /$1
    secure: false
    v4auth: true
  delete:
    enabled: true
  redirect:
    disable: true
http:
  addr: 127.0.0.1:$port
YAML
  start_bg "$T/dist.log" env -u AWS_CA_BUNDLE docker-registry serve "$T/dist.yml"
  REG=127.0.0.1:$port
  wait_http "http://$REG/v2/" 200 || { cat "$T/dist.log"; return 1; }
}

start_berth() { # PREFIX -> sets REG
  rm -rf "$T/berth"
  mkdir -p "$T/berth"
  replicas_up "$BERTH" "$T/berth" "$1" --log-level warn,berth=info
  REG=$BALANCER_ADDR
  wait_http "http://$REG/v2/"
}

push_all() { # REG
  local ref
  for ref in "${REFS[@]}"; do
    skopeo copy -q --all --preserve-digests --dest-tls-verify=false \
      "oci:$T/layout:$ref" "docker://$1/compat/$ref:v1"
  done
}

# The digest of each reference's manifest, as the source layout has it.
expected_digest() { # REF
  jq -r --arg r "$1" '.manifests[] | select(.annotations["org.opencontainers.image.ref.name"] == $r) | .digest' \
    "$T/layout/index.json"
}

# same_image REG REF TAG: the manifest by tag and by digest is the layout's
# (HEAD's digest, and the bytes GET returns), and every blob pulls back
# byte-identical (skopeo copies the image, index children included).
same_image() {
  local reg=$1 ref=$2 tag=$3 want got out blob
  want=$(expected_digest "$ref")
  got=$(curl -sI -H "Accept: $ACCEPT" "http://$reg/v2/compat/$ref/manifests/$tag" | tr -d '\r' |
    awk -F': ' 'tolower($1)=="docker-content-digest"{print $2}')
  [ "$got" = "$want" ] || { echo "  $ref:$tag: digest $got, want $want"; return 1; }
  got=sha256:$(curl -sf -H "Accept: $ACCEPT" "http://$reg/v2/compat/$ref/manifests/$want" | sha256sum | cut -d' ' -f1)
  [ "$got" = "$want" ] || { echo "  $ref@$want: GET by digest returned bytes hashing to $got"; return 1; }
  out="$T/pulled-$ref"
  rm -rf "$out"
  skopeo copy -q --all --preserve-digests --src-tls-verify=false "docker://$reg/compat/$ref:$tag" "oci:$out:$ref" ||
    return 1
  for blob in "$out"/blobs/sha256/*; do
    cmp -s "$blob" "$T/layout/blobs/sha256/$(basename "$blob")" ||
      { echo "  $ref: blob $(basename "$blob") differs"; return 1; }
  done
}

# blobs_served REG: every config and layer blob of the images, by digest, in
# its repository (the images' manifests as same_image pulled them).
blobs_served() {
  local reg=$1 ref manifest blob
  for ref in "${REFS[@]}"; do
    [ -d "$T/pulled-$ref" ] || { echo "  $ref was not pulled"; return 1; }
    for manifest in "$T/pulled-$ref"/blobs/sha256/*; do
      jq -r 'select(.layers) | .config.digest, .layers[].digest' "$manifest" 2>/dev/null
    done | sort -u >"$T/blobs-of-$ref"
    [ -s "$T/blobs-of-$ref" ] || { echo "  $ref: no blobs found"; return 1; }
    while read -r blob; do
      cmp -s <(curl -sf "http://$reg/v2/compat/$ref/blobs/$blob") "$T/layout/blobs/sha256/${blob#sha256:}" ||
        { echo "  $ref: GET blob $blob is not the layout's"; return 1; }
    done <"$T/blobs-of-$ref"
  done
}

listed() { # REG TAGS-JSON: catalog and tags list show what was pushed
  local reg=$1 tags=$2 ref
  for ref in "${REFS[@]}"; do
    curl -s "http://$reg/v2/_catalog" | jq -e --arg r "compat/$ref" '.repositories | index($r)' >/dev/null ||
      { echo "  compat/$ref not in the catalog: $(curl -s "http://$reg/v2/_catalog")"; return 1; }
    [ "$ref" = single ] || tags='["v1"]'
    curl -s "http://$reg/v2/compat/$ref/tags/list" | jq -e --argjson t "$tags" '.tags == $t' >/dev/null ||
      { echo "  compat/$ref tags: $(curl -s "http://$reg/v2/compat/$ref/tags/list")"; return 1; }
  done
}

from_distribution=$(random_prefix compat-from-distribution)
from_berth=$(random_prefix compat-from-berth)

echo "== Distribution writes s3://$S3_BUCKET/$from_distribution, Berth serves it"
start_distribution "$from_distribution"
push_all "$REG"
stop_all
tag_key() { # PREFIX: Distribution's tag link key is in the bucket
  s3_keys "$1/" | grep -qxF "$1/docker/registry/v2/repositories/compat/single/_manifests/tags/v1/current/link"
}
check "distribution wrote its layout under the prefix" tag_key "$from_distribution"
start_berth "$from_distribution"
for ref in "${REFS[@]}"; do check "berth serves distribution's $ref" same_image "$REG" "$ref" v1; done
check "berth serves distribution's blobs by digest" blobs_served "$REG"
check "berth lists distribution's repositories and tags" listed "$REG" '["v1"]'
# Berth can keep writing into Distribution's prefix: a new tag on old data.
check "berth adds a tag to distribution's data" skopeo copy -q --all --src-tls-verify=false --dest-tls-verify=false \
  "docker://$REG/compat/single:v1" "docker://$REG/compat/single:v2"
stop_all
start_distribution "$from_distribution"
check "distribution lists the tag berth added" listed "$REG" '["v1","v2"]'
check "distribution serves the tag berth added" same_image "$REG" single v2
stop_all

echo "== Berth writes s3://$S3_BUCKET/$from_berth, Distribution serves it"
start_berth "$from_berth"
push_all "$REG"
stop_all
check "berth wrote distribution's layout under the prefix" tag_key "$from_berth"
start_distribution "$from_berth"
for ref in "${REFS[@]}"; do check "distribution serves berth's $ref" same_image "$REG" "$ref" v1; done
check "distribution serves berth's blobs by digest" blobs_served "$REG"
check "distribution lists berth's repositories and tags" listed "$REG" '["v1"]'
stop_all
no_uploads_left() {
  local left
  left=$(s3_keys "$from_berth/docker/registry/v2/repositories/" | grep '/_uploads/' || true)
  [ -z "$left" ] || { echo "  upload keys left: $(head -5 <<<"$left")"; return 1; }
}
check "no upload leftovers in berth's prefix" no_uploads_left

summary
