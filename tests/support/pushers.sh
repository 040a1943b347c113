# shellcheck shell=bash disable=SC2154 # T and addr are set by the caller
# Random-image pushers and the check of what they were told, shared by the
# crash tests (tests/e2e/crash.sh: SIGKILL; tests/e2e/powercut.sh: the page
# cache lost). Sourced, not run. The caller sets:
#   T      a work directory (this file writes T/manifests, T/acked,
#          T/retag-attempts, T/retags, T/clientN, and reads T/stop)
#   addr   host:port of the Berth under test (read at each request, so a
#          caller may move it)
# pushers_init prepares T; client N loops pushing until T/stop exists.

MANIFEST_TYPE=application/vnd.oci.image.manifest.v1+json

pushers_init() {
  mkdir -p "$T/manifests"
  : >"$T/acked"
  : >"$T/retag-attempts"
  : >"$T/retags"
}

# location HEADERS-FILE: the Location header of a saved response.
location() { tr -d '\r' <"$1" | awk -F': ' 'tolower($1)=="location"{print $2}' | tail -1; }

# push_blob REPO FILE DIGEST SIZE WORKDIR: succeeds only on 201.
push_blob() {
  local repo=$1 file=$2 digest=$3 size=$4 w=$5 code loc sep offset len
  if [ "$size" -le 65536 ]; then
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 30 -X POST \
      -H 'Content-Type: application/octet-stream' --data-binary "@$file" \
      "http://$addr/v2/$repo/blobs/uploads/?digest=$digest") || return 1
    [ "$code" = 201 ]
    return
  fi
  curl -s --max-time 30 -X POST -D "$w/hdr" -o /dev/null "http://$addr/v2/$repo/blobs/uploads/" || return 1
  loc=$(location "$w/hdr")
  [ -n "$loc" ] || return 1
  if [ "$size" -lt 1048576 ]; then
    case "$loc" in *\?*) sep='&' ;; *) sep='?' ;; esac
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 30 -X PUT \
      -H 'Content-Type: application/octet-stream' --data-binary "@$file" \
      "http://$addr$loc${sep}digest=$digest") || return 1
    [ "$code" = 201 ]
    return
  fi
  offset=0
  while [ "$offset" -lt "$size" ]; do
    len=$((size - offset))
    [ "$len" -gt 1048576 ] && len=1048576
    tail -c +"$((offset + 1))" "$file" | head -c "$len" >"$w/chunk"
    code=$(curl -s -D "$w/hdr" -o /dev/null -w '%{http_code}' --max-time 30 -X PATCH \
      -H 'Content-Type: application/octet-stream' \
      -H "Content-Range: $offset-$((offset + len - 1))" --data-binary "@$w/chunk" \
      "http://$addr$loc") || return 1
    [ "$code" = 202 ] || return 1
    loc=$(location "$w/hdr")
    offset=$((offset + len))
  done
  case "$loc" in *\?*) sep='&' ;; *) sep='?' ;; esac
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 30 -X PUT \
    "http://$addr$loc${sep}digest=$digest") || return 1
  [ "$code" = 201 ]
}

# put_manifest REPO REFERENCE FILE: succeeds only on 201.
put_manifest() {
  local code
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 30 -X PUT \
    -H "Content-Type: $MANIFEST_TYPE" --data-binary "@$3" \
    "http://$addr/v2/$1/manifests/$2") || return 1
  [ "$code" = 201 ]
}

# push_image CLIENT N: one random image, recorded in $T/acked once acknowledged.
push_image() {
  local c=$1 n=$2 repo=crash/c$1 w=$T/client$1 layers="" blobs="" size digest kind
  for _ in $(seq $((RANDOM % 3 + 1))); do
    kind=$((RANDOM % 3))
    case $kind in
      0) size=$((RANDOM % 4096 + 1)) ;;
      1) size=$((RANDOM * 8 + 70000)) ;;
      *) size=$(((RANDOM % 4 + 1) * 1048576 + RANDOM)) ;;
    esac
    head -c "$size" /dev/urandom >"$w/layer"
    digest=sha256:$(sha256sum "$w/layer" | cut -d' ' -f1)
    push_blob "$repo" "$w/layer" "$digest" "$size" "$w" || return 1
    layers="$layers${layers:+,}{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar\",\"digest\":\"$digest\",\"size\":$size}"
    blobs="$blobs $digest"
  done
  printf '{"architecture":"amd64","os":"linux","client":%d,"image":%d,"nonce":%d}' \
    "$c" "$n" "$RANDOM$RANDOM" >"$w/config"
  size=$(stat -c %s "$w/config")
  digest=sha256:$(sha256sum "$w/config" | cut -d' ' -f1)
  push_blob "$repo" "$w/config" "$digest" "$size" "$w" || return 1
  blobs="$blobs $digest"
  printf '{"schemaVersion":2,"mediaType":"%s","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%d},"layers":[%s]}' \
    "$MANIFEST_TYPE" "$digest" "$size" "$layers" >"$w/manifest"
  digest=sha256:$(sha256sum "$w/manifest" | cut -d' ' -f1)
  # Saved before the PUT: a check may need it for a push in flight.
  cp "$w/manifest" "$T/manifests/$digest"
  put_manifest "$repo" "img-$n" "$w/manifest" || return 1
  echo "$repo img-$n $digest$blobs" >>"$T/acked"
  # Every other image is also tagged `latest` (a retag of the client's tag).
  if [ $((n % 2)) -eq 0 ]; then
    echo "$repo $digest" >>"$T/retag-attempts"
    put_manifest "$repo" latest "$w/manifest" || return 0
    echo "$repo $digest" >>"$T/retags"
  fi
}

client() {
  local c=$1 n=0
  mkdir -p "$T/client$c"
  while [ ! -e "$T/stop" ]; do
    n=$((n + 1))
    # Berth is down for a moment after each kill: try again shortly.
    push_image "$c" "$n" || sleep 0.05
  done
}

# verify_acked SERVER ACKED ATTEMPTS RETAGS: checks the Berth at SERVER
# (host:port) against what the clients were told. Every image in ACKED must
# pull back byte-identical (manifest by tag and by digest, every blob by
# digest); each repository's `latest` must name the last retag in RETAGS or
# an attempt made after it (ATTEMPTS: an attempt cut short may or may not
# have landed). Prints a FAIL line per problem; sets VERIFIED_IMAGES,
# VERIFIED_BYTES, VERIFIED_TAGS; returns 1 on any problem.
verify_acked() {
  local server=$1 acked=$2 attempts=$3 retags=$4 status=0
  local repo tag manifest blobs reference blob last_acked allowed got
  local got_file=$T/verify-got blob_file=$T/verify-blob
  VERIFIED_IMAGES=0
  VERIFIED_BYTES=0
  VERIFIED_TAGS=0
  while read -r repo tag manifest blobs; do
    for reference in "$tag" "$manifest"; do
      if ! curl -sf --max-time 30 -H "Accept: $MANIFEST_TYPE" -o "$got_file" \
        "http://$server/v2/$repo/manifests/$reference" ||
        ! cmp -s "$got_file" "$T/manifests/$manifest"; then
        echo "FAIL $repo:$reference: manifest missing or different"
        status=1
      fi
    done
    VERIFIED_BYTES=$((VERIFIED_BYTES + $(stat -c %s "$T/manifests/$manifest")))
    for blob in $blobs; do
      if curl -sf --max-time 60 -o "$blob_file" "http://$server/v2/$repo/blobs/$blob" &&
        [ "sha256:$(sha256sum "$blob_file" | cut -d' ' -f1)" = "$blob" ]; then
        VERIFIED_BYTES=$((VERIFIED_BYTES + $(stat -c %s "$blob_file")))
      else
        echo "FAIL $repo@$blob: blob missing or different"
        status=1
      fi
    done
    VERIFIED_IMAGES=$((VERIFIED_IMAGES + 1))
  done <"$acked"

  for repo in $(cut -d' ' -f1 "$attempts" | sort -u); do
    last_acked=$(awk -v r="$repo" '$1 == r { d = $2 } END { print d }' "$retags")
    allowed=$(awk -v r="$repo" -v last="$last_acked" '
      $1 == r { if ($2 == last) { list = $2 } else { list = list " " $2 } }
      END { print list }' "$attempts")
    got=
    if curl -sf --max-time 30 -H "Accept: $MANIFEST_TYPE" -o "$got_file" \
      "http://$server/v2/$repo/manifests/latest"; then
      got=sha256:$(sha256sum "$got_file" | cut -d' ' -f1)
    fi
    # No retag acknowledged and none landed: nothing to check.
    if [ -z "$last_acked" ] && [ -z "$got" ]; then
      continue
    fi
    case " $allowed " in
      *" $got "*) VERIFIED_TAGS=$((VERIFIED_TAGS + 1)) ;;
      *)
        echo "FAIL $repo:latest points at '$got', not at an image it was tagged with"
        status=1
        ;;
    esac
  done
  return $status
}
