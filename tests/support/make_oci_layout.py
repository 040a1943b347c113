#!/usr/bin/env python3
"""Builds a small OCI image layout from scratch, for tests that need real images
without any network: `make_oci_layout.py DIR`.

It writes three references into DIR/index.json (annotation org.opencontainers.image.ref.name):
  single  a one-layer image (a file tree with a text file)
  multi   a three-layer image
  multiarch  an OCI index over an amd64 and an arm64 image
Layers are real gzip'd tars; contents are deterministic for a given seed.
"""
import gzip
import hashlib
import io
import json
import os
import sys
import tarfile


def write_blob(root, data):
    digest = hashlib.sha256(data).hexdigest()
    path = os.path.join(root, "blobs", "sha256", digest)
    with open(path, "wb") as f:
        f.write(data)
    return {"digest": "sha256:" + digest, "size": len(data)}


def layer(root, files):
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mtime = 0
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(content))
    uncompressed = raw.getvalue()
    compressed = gzip.compress(uncompressed, mtime=0)
    desc = write_blob(root, compressed)
    desc["mediaType"] = "application/vnd.oci.image.layer.v1.tar+gzip"
    return desc, "sha256:" + hashlib.sha256(uncompressed).hexdigest()


def image(root, arch, layers_files):
    layers, diff_ids = [], []
    for files in layers_files:
        desc, diff_id = layer(root, files)
        layers.append(desc)
        diff_ids.append(diff_id)
    config = json.dumps({
        "architecture": arch,
        "os": "linux",
        "config": {"Cmd": ["/hello.txt"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }).encode()
    config_desc = write_blob(root, config)
    config_desc["mediaType"] = "application/vnd.oci.image.config.v1+json"
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config_desc,
        "layers": layers,
    }).encode()
    desc = write_blob(root, manifest)
    desc["mediaType"] = "application/vnd.oci.image.manifest.v1+json"
    desc["platform"] = {"architecture": arch, "os": "linux"}
    return desc


def main():
    root = sys.argv[1]
    seed = sys.argv[2] if len(sys.argv) > 2 else "berth"
    os.makedirs(os.path.join(root, "blobs", "sha256"), exist_ok=True)
    with open(os.path.join(root, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)

    def text(s):
        return f"{seed}: {s}\n".encode()

    single = image(root, "amd64", [{"hello.txt": text("single")}])
    multi = image(root, "amd64", [
        {"a.txt": text("layer a")},
        {"b.txt": text("layer b"), "big.bin": hashlib.sha256(seed.encode()).digest() * 4096},
        {"c.txt": text("layer c")},
    ])
    amd = image(root, "amd64", [{"hello.txt": text("amd64")}])
    arm = image(root, "arm64", [{"hello.txt": text("arm64")}])
    index = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [amd, arm],
    }).encode()
    index_desc = write_blob(root, index)
    index_desc["mediaType"] = "application/vnd.oci.image.index.v1+json"

    refs = []
    for name, desc in (("single", single), ("multi", multi), ("multiarch", index_desc)):
        d = {k: v for k, v in desc.items() if k != "platform"}
        d["annotations"] = {"org.opencontainers.image.ref.name": name}
        refs.append(d)
    with open(os.path.join(root, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": refs}, f)


if __name__ == "__main__":
    main()
