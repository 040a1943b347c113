#!/usr/bin/env python3
"""Fills a registry for the UI's large-registry check (tests/e2e/ui.sh):
`populate.py URL USER PASSWORD PREFIX REPOSITORIES TAGS`.

Pushes one tiny image into PREFIX-00000, then REPOSITORIES - 1 more
repositories PREFIX-00001... holding it (its blobs mounted, the manifest
pushed as tag `1`), and TAGS tags t00000... on PREFIX-00000; 16 requests in
flight over kept-alive connections, Basic auth. Prints what it did and how
long it took. Standard library only.
"""
import base64
import hashlib
import http.client
import json
import sys
import threading
import time
import urllib.parse

url, user, password, prefix = sys.argv[1:5]
repositories, tags = int(sys.argv[5]), int(sys.argv[6])
target = urllib.parse.urlsplit(url)
auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
local = threading.local()


def request(method, path, body=b"", headers=None):
    if not hasattr(local, "conn"):
        local.conn = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
    all_headers = {"Authorization": auth, "Content-Length": str(len(body))}
    all_headers.update(headers or {})
    for attempt in range(2):
        try:
            local.conn.request(method, path, body=body, headers=all_headers)
            response = local.conn.getresponse()
            response.read()
            return response
        except (http.client.HTTPException, OSError):
            local.conn.close()
            local.conn = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
            if attempt:
                raise


def expect(response, status, what):
    if response.status != status:
        raise SystemExit(f"populate: {what}: HTTP {response.status}, expected {status}")


def digest(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}).encode()
layer = b"a layer of the large-registry check"
manifest = json.dumps({
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(config), "size": len(config)},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest(layer), "size": len(layer)}],
}).encode()
MANIFEST = {"Content-Type": "application/vnd.oci.image.manifest.v1+json"}

base = f"{prefix}-00000"
for blob in (config, layer):
    response = request("POST", f"/v2/{base}/blobs/uploads/")
    expect(response, 202, "upload start")
    location = response.getheader("Location")
    separator = "&" if "?" in location else "?"
    expect(request("PUT", f"{location}{separator}digest={digest(blob)}", blob,
                   {"Content-Type": "application/octet-stream"}), 201, "blob upload")
expect(request("PUT", f"/v2/{base}/manifests/1", manifest, MANIFEST), 201, "manifest push")


def repository(i):
    name = f"{prefix}-{i:05d}"
    for blob in (config, layer):
        response = request("POST", f"/v2/{name}/blobs/uploads/?mount={digest(blob)}&from={base}")
        expect(response, 201, f"mount into {name}")
    expect(request("PUT", f"/v2/{name}/manifests/1", manifest, MANIFEST), 201, f"push {name}")


def tag(j):
    expect(request("PUT", f"/v2/{base}/manifests/t{j:05d}", manifest, MANIFEST), 201, f"tag t{j:05d}")


def run(work, count):
    items = iter(range(count))
    lock = threading.Lock()
    failures = []

    def worker():
        while True:
            with lock:
                i = next(items, None)
            if i is None:
                return
            try:
                work(i)
            except BaseException as e:  # noqa: BLE001 - reported below
                failures.append(e)
                return

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise SystemExit(f"populate: {failures[0]}")


started = time.monotonic()
run(lambda i: repository(i + 1), repositories - 1)
run(tag, tags)
print(f"populate: {repositories} repositories and {tags} tags on {base} in {time.monotonic() - started:.1f} s")
