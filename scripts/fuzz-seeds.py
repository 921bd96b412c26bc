#!/usr/bin/env python3
"""Writes the seed corpus of podvm's fuzz targets (fuzz/corpus/<target>/): a few small,
valid inputs per target, in the byte layouts that podvm::fuzzing decodes. The output is
committed; run this again after changing a decoder, then check `make fuzz` still passes."""

import io
import json
import os
import struct
import sys
import tarfile

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fuzz", "corpus")
H1 = "1" * 64
H2 = "2" * 64


def write(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def js(obj):
    return json.dumps(obj, separators=(",", ":")).encode()


def image_manifest():
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": 10,
                   "digest": "sha256:" + H1},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "size": 20,
                    "digest": "sha256:" + H2}],
    }
    index = {
        "schemaVersion": 2,
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "size": 1,
             "digest": "sha256:" + H1, "platform": {"os": "linux", "architecture": "arm64"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "size": 2,
             "digest": "sha256:" + H2, "platform": {"os": "linux", "architecture": "amd64"}},
        ],
    }
    config = {
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + H2]},
        "config": {"Entrypoint": ["/bin/sh", "-c"], "Cmd": ["echo hi"],
                   "Env": ["PATH=/bin", "EMPTY="], "User": "1000:100", "WorkingDir": "/srv",
                   "ExposedPorts": {"80/tcp": {}, "53/udp": {}}, "Labels": {"a": "b"},
                   "Volumes": {"/var/lib/data": {}}},
    }
    aci = {
        "acKind": "ImageManifest", "acVersion": "0.8.11", "name": "example.com/app",
        "labels": [{"name": "version", "value": "1.0"}, {"name": "os", "value": "linux"},
                   {"name": "arch", "value": "amd64"}],
        "app": {"exec": ["/bin/app", "-v"], "user": "1000", "group": "1000",
                "workingDirectory": "/srv", "environment": [{"name": "A", "value": "b"}],
                "ports": [{"name": "http", "protocol": "tcp", "port": 80}],
                "mountPoints": [{"name": "data", "path": "/var/data", "readOnly": True}]},
    }
    # The first byte picks the parser: 0/1 manifest (byte / 4 picks the content type), 2 config,
    # 3 appc manifest.
    write("image_manifest", "oci-manifest", b"\x00" + js(manifest))
    write("image_manifest", "oci-index", b"\x04" + js(index))
    docker = dict(manifest, mediaType="application/vnd.docker.distribution.manifest.v2+json")
    write("image_manifest", "docker-manifest", b"\x0c" + js(docker))
    write("image_manifest", "oci-config", b"\x02" + js(config))
    write("image_manifest", "aci-manifest", b"\x03" + js(aci))


def cni_result():
    v1 = {"cniVersion": "1.0.0",
          "interfaces": [{"name": "podvm0", "mac": "aa:bb:cc:dd:ee:01"},
                         {"name": "eth0", "mac": "aa:bb:cc:dd:ee:02", "sandbox": "/run/netns/x"}],
          "ips": [{"interface": 1, "address": "172.16.28.5/24", "gateway": "172.16.28.1"}],
          "routes": [{"dst": "0.0.0.0/0"}],
          "dns": {"nameservers": ["9.9.9.9"], "search": ["example.com"], "options": ["ndots:2"]}}
    v04 = {"cniVersion": "0.4.0", "ips": [{"version": "4", "address": "10.0.0.2/8"}], "dns": {}}
    err = {"cniVersion": "1.0.0", "code": 11, "msg": "failed to allocate", "details": "range full"}
    write("cni_result", "v1.0.0", js(v1))
    write("cni_result", "v0.4.0", js(v04))
    write("cni_result", "error", js(err))


def auth_challenge():
    write("auth_challenge", "bearer",
          b'Bearer realm="https://auth.example/token",service="registry.example",'
          b'scope="repository:library/busybox:pull,push"')
    write("auth_challenge", "basic", b'Basic realm="Registry Realm"')
    write("auth_challenge", "escaped", b'bearer realm="a\\"b",error=insufficient_scope')


def frame(kind, payload):
    return b"PV" + bytes([5, kind]) + struct.pack("<I", len(payload)) + payload


def agent_protocol():
    # First byte: the chunk size the stream arrives in.
    stream = (frame(16, js({"type": "ready", "agent_version": "0.1.0"}))
              + frame(1, b"hello\n") + frame(2, b"err\n")
              + frame(16, js({"type": "exited", "status": {"code": 0}})))
    write("agent_protocol", "session", b"\x07" + stream)
    write("agent_protocol", "host", b"\x40" + frame(16, js({"type": "resize", "rows": 24, "cols": 80}))
          + frame(16, js({"type": "shutdown", "grace_ms": 1000})) + frame(3, b"in"))
    write("agent_protocol", "error", b"\x01" + frame(16, js({"type": "error", "message": "no"})))
    write("agent_protocol", "boot", b"\x20" + frame(16, js({
        "type": "boot", "command": ["sh", "-c", "echo hi"], "env": ["A=1"], "workdir": None,
        "exec_token": "t", "apps": [{"name": "web", "command": ["httpd"]}]})))
    write("agent_protocol", "containers", b"\x11" + frame(16, js({
        "type": "create_container", "id": "web",
        "rootfs": {"share": "sandbox", "path": "web/rootfs", "read_only": True},
        "process": {"command": ["httpd"], "env": ["A=1"], "limits": {"memory_bytes": 1048576}}}))
        + frame(16, js({"type": "start_container", "id": "web"}))
        + frame(16, js({"type": "container_done", "id": "web", "op": "start"}))
        + frame(16, js({"type": "container_error", "id": "web", "op": "signal",
                        "kind": "bad_signal", "message": "no"}))
        + frame(16, js({"type": "container_exited", "id": "web", "status": {"Code": 0}})))


def raw_tar(entries):
    tarfile.RECORDSIZE = 2 * tarfile.BLOCKSIZE  # no padding to 10 KiB: seeds stay small
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, kind, data, link in entries:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
            info.linkname = link
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)
    return buf.getvalue()


def layer():
    # Mode byte % 4 == 0: the rest is one raw layer.
    write("layer", "raw-tar", b"\x00" + raw_tar([
        ("etc/", tarfile.DIRTYPE, b"", ""),
        ("etc/hostname", tarfile.REGTYPE, b"pod\n", ""),
        ("bin/", tarfile.DIRTYPE, b"", ""),
        ("bin/sh", tarfile.SYMTYPE, b"", "busybox"),
        ("etc/.wh.hostname", tarfile.REGTYPE, b"", ""),
    ]))
    write("layer", "swapped-ancestor", b"\x00" + raw_tar([
        ("x/", tarfile.DIRTYPE, b"", ""),
        ("x/victim/", tarfile.DIRTYPE, b"", ""),
        ("x", tarfile.SYMTYPE, b"", "../sentinel"),
    ]))
    # Decoded mode (podvm::fuzzing::layer): op, name shape, components, then per type fields.
    def entry(op, shape, comps, mode=0o755, owner=0, extra=b"", content=b""):
        out = bytes([op, shape]) + bytes(comps) + extra
        out += struct.pack("<H", mode) + bytes([owner, owner]) + struct.pack("<I", 1000)
        if op % 12 in (0, 1):
            out += bytes([len(content)]) + content
        return out
    # dir "a", symlink "a/b" -> target 6 (../sentinel), dir "a/b/c", file "a/f", next layer,
    # opaque whiteout in "a".
    decoded = (b"\x02"
               + entry(2, 0x02, [0])
               + entry(4, 0x06, [0, 1], extra=bytes([6]))
               + entry(3, 0x0a, [0, 1, 2])
               + entry(0, 0x06, [0, 10], mode=0o4755, content=b"data")
               + b"\x0b"
               + entry(0, 0x06, [0, 9]))
    write("layer", "decoded-links", decoded)
    write("layer", "decoded-gzip", b"\x01" + decoded[1:])


def virtq(size_log2, descs, heads, data=b""):
    """A queue as podvm::fuzzing's Rig decodes it."""
    out = bytes([size_log2, len(descs)])
    for addr_off, length, flags, nxt in descs:
        out += bytes([0x08]) + struct.pack("<H", addr_off) + bytes([length, flags, nxt])
    out += bytes([len(heads)])
    size = 1 << size_log2
    ring = list(heads) + [0] * (min(size, 128) - len(heads))
    out += bytes(ring[: min(size, 128)])
    out += b"\x00" + data
    return out


def virtio():
    write("virtio_rng", "two-requests", virtq(2, [(0, 64, 2, 0), (0x100, 32, 3, 2), (0x200, 16, 2, 0)], [0, 1]))
    write("virtio_rng", "indirect", virtq(1, [(0, 32, 4, 0)], [0], struct.pack("<QIHH", 0x9000, 64, 2, 0) * 2))
    write("virtio_net", "tx", b"\x00" + virtq(2, [(0, 12, 1, 1), (0x40, 60, 0, 0)], [0], b"\x00" * 12))
    write("virtio_net", "rx", b"\x01\x02\x00\x40\x01\x00\x01" + virtq(2, [(0, 255, 2, 0), (0x400, 255, 2, 0)], [0, 1]))
    fuse = struct.pack("<IIQQIIII", 40 + 5, 1, 1, 1, 0, 0, 0, 0) + b"f\x00\x00\x00\x00"
    write("virtio_fs_queue", "lookup", b"\x00" + virtq(1, [(0, len(fuse), 1, 1), (0x1000, 255, 2, 0)], [0], fuse))
    # podvm::fuzzing::virtio_fs: read-only byte, INIT flags, then requests (op index, fixed
    # argument bytes, inode/handle picks, names, nodeid pick). Op indexes into its OPS table:
    # 0 LOOKUP, 7 MKDIR, 3 SETATTR, 27 CREATE, 10 RENAME, 6 MKNOD.
    lookup_up = bytes([0, 2, 0])                  # LOOKUP ".." on the root
    mkdir_a = bytes([7]) + struct.pack("<II", 0o40755, 0o022) + bytes([0, 0])
    lookup_d = bytes([0, 5, 0])                   # LOOKUP "d" on the root
    create = bytes([27]) + struct.pack("<IIII", 0o101, 0o104755, 0, 0) + bytes([6, 0])
    rename = bytes([10]) + b"\x00" * 8 + bytes([0, 0, 1, 0])
    mknod = bytes([6]) + struct.pack("<IIII", 0o20644, 0x0103, 0, 0) + bytes([0, 0])
    write("virtio_fs", "session", b"\x00" + struct.pack("<I", 0) + lookup_up + mkdir_a + lookup_d + create + rename + mknod)
    write("virtio_fs", "read-only", b"\x01" + struct.pack("<I", 0) + mkdir_a + create)
    # LOOKUP "s" (the host's setuid file, name 10), then LINK it as "a" in the root (op 11: its
    # inode is the second one learnt).
    lookup_s = bytes([0, 10, 0])
    link_s = bytes([11]) + b"\x00" * 8 + bytes([1, 0, 0])
    write("virtio_fs", "setuid-link", b"\x00" + struct.pack("<I", 0) + lookup_s + link_s)


def main():
    image_manifest()
    cni_result()
    auth_challenge()
    agent_protocol()
    layer()
    virtio()
    return 0


if __name__ == "__main__":
    sys.exit(main())
