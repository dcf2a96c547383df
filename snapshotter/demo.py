"""The container half of `pyunion demo`: image -> snapshot -> union mount -> container -> commit.

It builds a two-layer OCI image from the host's static busybox (Debian package busybox-static,
installed by scripts/setup.sh), so no network is needed, and drives the same commands a user
types, printing each one.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shlex
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

BUSYBOX = Path("/bin/busybox")
APPLETS = ("sh", "cat", "echo", "ls", "rm", "id", "hostname")
LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"


def _layer(entries: list[tuple[str, str, bytes | str, int]]) -> bytes:
    """An uncompressed layer tar from (name, kind, data-or-target, mode); kind: dir/file/link."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, kind, data, mode in entries:
            ti = tarfile.TarInfo(name)
            ti.mode, ti.mtime = mode, 1_700_000_000
            if kind == "dir":
                ti.type = tarfile.DIRTYPE
                tf.addfile(ti)
            elif kind == "link":
                ti.type, ti.linkname = tarfile.SYMTYPE, str(data)
                tf.addfile(ti)
            else:
                raw = data.encode() if isinstance(data, str) else data
                ti.size = len(raw)
                tf.addfile(ti, io.BytesIO(raw))
    return buf.getvalue()


def build_image(dest: Path) -> Path:
    """Layer 1: busybox, passwd/group, /etc/greeting, /etc/remove-me. Layer 2 overrides the
    greeting. Written as an OCI image layout directory."""
    base: list[tuple[str, str, bytes | str, int]] = [("bin", "dir", b"", 0o755), ("bin/busybox", "file", BUSYBOX.read_bytes(), 0o755),
            *[(f"bin/{a}", "link", "busybox", 0o777) for a in APPLETS],
            ("etc", "dir", b"", 0o755),
            ("etc/passwd", "file", "root:x:0:0:root:/root:/bin/sh\n", 0o644),
            ("etc/group", "file", "root:x:0:\n", 0o644),
            ("etc/greeting", "file", "hello from layer 1\n", 0o644),
            ("etc/remove-me", "file", "in the image\n", 0o644),
            ("root", "dir", b"", 0o700), ("tmp", "dir", b"", 0o1777),
            ("proc", "dir", b"", 0o755), ("sys", "dir", b"", 0o755), ("dev", "dir", b"", 0o755)]
    top: list[tuple[str, str, bytes | str, int]] = [("etc", "dir", b"", 0o755), ("etc/greeting", "file", "hello from layer 2\n", 0o644)]
    blobs = dest / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes) -> dict:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return {"digest": f"sha256:{digest}", "size": len(data)}

    layers = [_layer(base), _layer(top)]
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)
    config = {"architecture": arch, "os": "linux",
              "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"], "WorkingDir": "/"},
              "rootfs": {"type": "layers",
                         "diff_ids": [f"sha256:{hashlib.sha256(t).hexdigest()}" for t in layers]}}
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           **put(json.dumps(config).encode())},
                "layers": [{"mediaType": LAYER_TAR, **put(t)} for t in layers]}
    index = {"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json",
         **put(json.dumps(manifest).encode()),
         "annotations": {"org.opencontainers.image.ref.name": "demo"}}]}
    (dest / "index.json").write_text(json.dumps(index))
    (dest / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    return dest


def _pyunion(*args: str) -> None:
    print(f"$ pyunion {' '.join(shlex.quote(a) for a in args)}", flush=True)
    r = subprocess.run([sys.executable, "-m", "pyunion", *args], check=False, text=True,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)
    for line in r.stdout.splitlines():
        print(f"  {line}")
    if r.returncode != 0:
        raise RuntimeError(f"`pyunion {args[0]}` exited with {r.returncode}")


def why_skipped() -> str | None:
    if os.geteuid() != 0:
        return "containers in the demo need root (see the README's Rootless section otherwise)"
    if not BUSYBOX.is_file():
        return f"{BUSYBOX} is missing (Debian package busybox-static; scripts/setup.sh installs it)"
    return None


def run(base: Path, step) -> None:
    """The container tour, in `base` (removed by the caller)."""
    image = build_image(base / "image")
    root = str(base / "store")
    step(f"a two-layer busybox image (OCI layout), built from the host's busybox: {image}")
    _pyunion("image", "import", str(image), "--root", root, "--name", "demo:base")
    step("run a container on a union mount of the image's snapshots; commit its changes")
    _pyunion("run", "--root", root, "--rm", "--commit", "demo:changed", "demo:base",
             "sh", "-c", "cat /etc/greeting; echo made in the container > /new; rm /etc/remove-me")
    step("the committed image has the change; the original image does not")
    _pyunion("run", "--root", root, "--rm", "demo:changed",
             "sh", "-c", "cat /new; ls /etc")
    _pyunion("run", "--root", root, "--rm", "demo:base",
             "sh", "-c", "ls /etc; test -e /new || echo '/new: not in demo:base'")
    _pyunion("image", "ls", "--root", root)


def tour(base: Path, step: Callable[[str], None]) -> None:
    """The image/container half of `pyunion demo`, run after the union half in BASE."""
    skip = why_skipped()
    if skip:
        step(f"containers: skipped ({skip})")
    else:
        run(base, step)
