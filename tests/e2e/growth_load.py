#!/usr/bin/env python3
"""Grows a registry the way the memory check needs: TAGS tag pushes of one
image into one repository, then REPOS new repositories (blobs mounted, one
manifest each), over keep-alive connections, CONC requests in flight.

    growth_load.py HOST:PORT [TAGS] [REPOS] [CONC]

Exits non-zero on the first unexpected status.
"""
import hashlib
import http.client
import json
import sys
import threading

addr = sys.argv[1]
tags = int(sys.argv[2]) if len(sys.argv) > 2 else 20000
repos = int(sys.argv[3]) if len(sys.argv) > 3 else 3000
conc = int(sys.argv[4]) if len(sys.argv) > 4 else 8
host, port = addr.rsplit(":", 1)
SEED = "growth/seed"
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"


def connect():
    return http.client.HTTPConnection(host, int(port), timeout=60)


def request(conn, method, path, body=None, headers=None, want=(200,)):
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    data = resp.read()
    if resp.status not in want:
        raise SystemExit(f"{method} {path}: {resp.status} {data[:200]!r}")
    return resp, data


def digest(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def push_blob(conn, repo, data):
    resp, _ = request(conn, "POST", f"/v2/{repo}/blobs/uploads/", want=(202,))
    location = resp.getheader("Location")
    sep = "&" if "?" in location else "?"
    request(conn, "PUT", f"{location}{sep}digest={digest(data)}", body=data,
            headers={"Content-Type": "application/octet-stream"}, want=(201,))


def main():
    conn = connect()
    layer = bytes(range(256)) * 16
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": [digest(layer)]}}).encode()
    push_blob(conn, SEED, config)
    push_blob(conn, SEED, layer)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": MANIFEST_TYPE,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": digest(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": digest(layer), "size": len(layer)}],
    }).encode()
    headers = {"Content-Type": MANIFEST_TYPE}

    def run(jobs, work):
        errors = []

        def worker(k):
            c = connect()
            try:
                for i in range(k, jobs, conc):
                    work(c, i)
            except BaseException as e:  # reported after the join
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(conc)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise SystemExit(f"load failed: {errors[0]}")

    run(tags, lambda c, i: request(c, "PUT", f"/v2/{SEED}/manifests/t{i:06}",
                                   body=manifest, headers=headers, want=(201,)))

    def new_repository(c, i):
        repo = f"growth/r{i:05}"
        for d in (digest(config), digest(layer)):
            request(c, "POST", f"/v2/{repo}/blobs/uploads/?mount={d}&from={SEED}", want=(201,))
        request(c, "PUT", f"/v2/{repo}/manifests/latest", body=manifest, headers=headers,
                want=(201,))

    run(repos, new_repository)
    print(f"pushed {tags} tags and {repos} repositories")


main()
