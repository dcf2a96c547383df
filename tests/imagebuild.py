"""Build small but real container images offline, for tests and benchmarks.

Main entry point: ``build_busybox_image(dest, fmt="oci", extra_layers=())``. It uses the host's
static busybox (Debian package busybox-static) and needs no network.

Default content (two layers, then ``extra_layers`` in order):

* layer 1 (base): ``/bin/busybox`` plus applet symlinks in ``/bin`` (sh, ls, cat, id, ...);
  ``/etc/passwd`` and ``/etc/group`` with ``root`` (0) and ``app`` (uid/gid 1000);
  ``/etc/deleted-in-image``; ``/opt/old/a`` and ``/opt/old/b``; ``/usr/share/hello.txt`` with a
  hardlink ``/usr/share/hello-link.txt``; ``/home/app`` owned by 1000:1000; ``/root`` (0700);
  ``/tmp`` (1777); empty ``/proc``, ``/sys``, ``/dev``.
* layer 2: a whiteout ``/etc/.wh.deleted-in-image`` (so ``/etc/deleted-in-image`` is in layer 1
  but NOT in the image's root filesystem), an opaque ``/opt/old`` (``.wh..wh..opq``) holding only
  ``new``, and ``/etc/motd``.

``EXPECTED_PRESENT`` / ``EXPECTED_ABSENT`` list what a container of the default image sees.
Config: Cmd ``["/bin/sh"]``, Env PATH, WorkingDir ``/``, the host's os/architecture.

Formats (``fmt``): ``"oci"`` (OCI image layout directory), ``"oci-tar"`` (that layout as a tar),
``"docker"`` (legacy ``docker save`` archive: manifest.json + ``<id>/layer.tar``), ``"docker-oci"``
(Docker >= 25 ``docker save``: also an OCI layout, uncompressed layers, plus manifest.json).

A layer is given as a mapping ``{path: content}`` where content is ``bytes``/``str`` (a regular
file 0644), ``File``/``Dir``/``Symlink``/``Hardlink``/``Fifo``, ``WHITEOUT`` (emits ``.wh.NAME``)
or ``OPAQUE`` (the path is a directory made opaque); or as ready-made uncompressed tar ``bytes``;
or as a ``Path`` to such a tar.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import platform
import posixpath
import subprocess
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

BUSYBOX = Path("/usr/bin/busybox")
FIXED_MTIME = 1_700_000_000
DEFAULT_NAME = "pyunion-test/busybox:latest"
APPLETS = ("sh", "ls", "cat", "echo", "id", "sleep", "mkdir", "rm", "rmdir", "touch", "stat",
           "true", "false", "env", "ps", "grep", "head", "wc", "mv", "cp", "ln", "chmod", "chown",
           "whoami", "hostname", "test", "uname", "pwd", "readlink", "find", "tee", "kill",
           "printf", "date", "sort", "tr", "sed", "du", "df", "mount", "umount", "sync", "dd",
           "md5sum", "sha256sum", "mknod", "mkfifo", "xargs", "basename", "dirname", "cut")
PASSWD = ("root:x:0:0:root:/root:/bin/sh\n"
          "app:x:1000:1000:app:/home/app:/bin/sh\n"
          "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
GROUP = "root:x:0:\napp:x:1000:\nnogroup:x:65534:\n"
EXPECTED_PRESENT = ("/bin/busybox", "/bin/sh", "/etc/passwd", "/etc/group", "/etc/motd",
                    "/opt/old/new", "/usr/share/hello.txt", "/usr/share/hello-link.txt",
                    "/home/app", "/tmp")
EXPECTED_ABSENT = ("/etc/deleted-in-image", "/opt/old/a", "/opt/old/b")

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_TYPES = {"none": "application/vnd.oci.image.layer.v1.tar",
               "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
               "zstd": "application/vnd.oci.image.layer.v1.tar+zstd"}


@dataclass
class File:
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: int = FIXED_MTIME
    xattrs: Mapping[str, bytes] | None = None


@dataclass
class Dir:
    mode: int = 0o755
    uid: int = 0
    gid: int = 0
    mtime: int = FIXED_MTIME


@dataclass
class Symlink:
    target: str


@dataclass
class Hardlink:
    target: str      # path of a file earlier in the same layer


@dataclass
class Fifo:
    mode: int = 0o644


WHITEOUT = "<whiteout>"
OPAQUE = "<opaque>"


def host_arch() -> str:
    m = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386",
            "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}.get(m, m)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _info(name: str, **kw) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.mtime = kw.pop("mtime", FIXED_MTIME)
    ti.uname = ti.gname = ""
    for k, v in kw.items():
        setattr(ti, k, v)
    return ti


def layer_tar(spec: Mapping[str, object]) -> bytes:
    """An uncompressed, deterministic layer tar from a {path: content} mapping."""
    buf = io.BytesIO()
    entries: dict[str, tuple[tarfile.TarInfo, bytes | None]] = {}

    def add_dir(path: str, d: Dir | None = None) -> None:
        d = d or Dir()
        entries[path] = (_info(path, type=tarfile.DIRTYPE, mode=d.mode, uid=d.uid, gid=d.gid,
                               mtime=d.mtime), None)

    for raw_path, content in spec.items():
        path = raw_path.strip("/")
        parent = posixpath.dirname(path)
        while parent and parent not in entries:
            add_dir(parent)
            parent = posixpath.dirname(parent)
        if isinstance(content, str) and content not in (WHITEOUT, OPAQUE):
            content = content.encode()
        if isinstance(content, bytes):
            content = File(content)
        if content == WHITEOUT:
            wh = posixpath.join(posixpath.dirname(path), ".wh." + posixpath.basename(path))
            entries[wh] = (_info(wh, mode=0, mtime=0), b"")
        elif content == OPAQUE:
            if path not in entries:
                add_dir(path)
            op = path + "/.wh..wh..opq"
            entries[op] = (_info(op, mode=0, mtime=0), b"")
        elif isinstance(content, File):
            ti = _info(path, mode=content.mode, uid=content.uid, gid=content.gid,
                       size=len(content.data), mtime=content.mtime)
            if content.xattrs:
                ti.pax_headers = {"SCHILY.xattr." + k: v.decode("utf-8", "surrogateescape")
                                  for k, v in content.xattrs.items()}
            entries[path] = (ti, content.data)
        elif isinstance(content, Dir):
            add_dir(path, content)
        elif isinstance(content, Symlink):
            entries[path] = (_info(path, type=tarfile.SYMTYPE, linkname=content.target,
                                   mode=0o777), None)
        elif isinstance(content, Hardlink):
            entries[path] = (_info(path, type=tarfile.LNKTYPE,
                                   linkname=content.target.strip("/"), mode=0o644), None)
        elif isinstance(content, Fifo):
            entries[path] = (_info(path, type=tarfile.FIFOTYPE, mode=content.mode), None)
        else:
            raise TypeError(f"unsupported layer content for {raw_path!r}: {content!r}")
    # Directories before their children; hardlinks last, after every possible target.
    links = sorted(p for p in entries if entries[p][0].type == tarfile.LNKTYPE)
    order = sorted((p for p in entries if p not in links), key=lambda p: p.split("/")) + links
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for p in order:
            ti, data = entries[p]
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def compress(data: bytes, compression: str) -> bytes:
    if compression == "none":
        return data
    if compression == "gzip":
        return gzip.compress(data, compresslevel=6, mtime=0)
    if compression == "zstd":
        return subprocess.run(["zstd", "-q", "-c", "-3"], input=data, capture_output=True,
                              check=True, timeout=120).stdout
    raise ValueError(compression)


def base_layers() -> list[dict[str, object]]:
    bb = BUSYBOX.read_bytes()
    base: dict[str, object] = {
        "bin": Dir(), "bin/busybox": File(bb, mode=0o755),
        "etc": Dir(), "etc/passwd": PASSWD, "etc/group": GROUP,
        "etc/deleted-in-image": "present in layer 1, whited out by layer 2\n",
        "opt/old/a": "a\n", "opt/old/b": "b\n",
        "usr/share/hello.txt": "hello from pyunion\n",
        "usr/share/hello-link.txt": Hardlink("usr/share/hello.txt"),
        "home/app": Dir(uid=1000, gid=1000), "root": Dir(mode=0o700), "tmp": Dir(mode=0o1777),
        "proc": Dir(), "sys": Dir(), "dev": Dir(),
    }
    for a in APPLETS:
        base[f"bin/{a}"] = Symlink("busybox")
    top: dict[str, object] = {"etc/deleted-in-image": WHITEOUT, "opt/old": OPAQUE,
                              "opt/old/new": "new\n", "etc/motd": "built by tests/imagebuild.py\n"}
    return [base, top]


def build_busybox_image(dest: str | Path, fmt: str = "oci",
                        extra_layers: Sequence[Mapping[str, object] | bytes | Path] = (),
                        *, compression: str = "gzip", name: str = DEFAULT_NAME,
                        config: Mapping[str, object] | None = None,
                        other_platform: bool = False) -> Path:
    """Write the default busybox image (see module docstring) plus EXTRA_LAYERS to DEST."""
    return build_image(dest, [*base_layers(), *extra_layers], fmt, compression=compression,
                       name=name, config=config, other_platform=other_platform)


def _layer_bytes(layer: Mapping[str, object] | bytes | Path) -> bytes:
    if isinstance(layer, bytes):
        return layer
    if isinstance(layer, Path):
        return layer.read_bytes()
    return layer_tar(layer)


def image_config(diff_ids: list[str], config: Mapping[str, object] | None = None,
                 arch: str | None = None) -> dict:
    cfg = {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
           "Cmd": ["/bin/sh"], "WorkingDir": "/"}
    cfg.update(config or {})
    return {"created": "2023-11-14T22:13:20Z", "architecture": arch or host_arch(), "os": "linux",
            "config": cfg, "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [{"created": "2023-11-14T22:13:20Z", "created_by": f"layer {i}"}
                        for i in range(len(diff_ids))]}


def build_image(dest: str | Path, layers: Sequence[Mapping[str, object] | bytes | Path],
                fmt: str = "oci", *, compression: str = "gzip", name: str = DEFAULT_NAME,
                config: Mapping[str, object] | None = None, other_platform: bool = False) -> Path:
    """Write an image made of LAYERS in format FMT; see the module docstring."""
    dest = Path(dest)
    tars = [_layer_bytes(x) for x in layers]
    diff_ids = [sha256(t) for t in tars]
    if fmt == "docker":
        return _write_docker_legacy(dest, tars, diff_ids, name, config)
    if fmt == "docker-oci":
        compression = "none"
    blobs: dict[str, bytes] = {}

    def put(data: bytes) -> str:
        d = sha256(data)
        blobs[d] = data
        return d

    layer_descs = []
    for t in tars:
        data = compress(t, compression)
        layer_descs.append({"mediaType": LAYER_TYPES[compression], "digest": put(data),
                            "size": len(data)})

    def manifest_for(arch: str) -> dict:
        cfg = json.dumps(image_config(diff_ids, config, arch), sort_keys=True).encode()
        man = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
               "config": {"mediaType": OCI_CONFIG, "digest": put(cfg), "size": len(cfg)},
               "layers": layer_descs}
        raw = json.dumps(man, sort_keys=True).encode()
        return {"mediaType": OCI_MANIFEST, "digest": put(raw), "size": len(raw),
                "platform": {"os": "linux", "architecture": arch}}

    tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else "latest"
    annotations = {"org.opencontainers.image.ref.name": tag, "io.containerd.image.name": name}
    top = manifest_for(host_arch())
    if other_platform:
        other = manifest_for("arm64" if host_arch() != "arm64" else "amd64")
        nested = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [other, top]}
        raw = json.dumps(nested, sort_keys=True).encode()
        top = {"mediaType": OCI_INDEX, "digest": put(raw), "size": len(raw)}
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX,
             "manifests": [{**top, "annotations": annotations}]}
    files: dict[str, bytes] = {"oci-layout": b'{"imageLayoutVersion":"1.0.0"}',
                               "index.json": json.dumps(index, sort_keys=True).encode()}
    for d, data in blobs.items():
        files["blobs/sha256/" + d[7:]] = data
    if fmt == "docker-oci":
        cfg_digest = json.loads(blobs[_first_manifest(blobs, top)])["config"]["digest"]
        files["manifest.json"] = json.dumps([{
            "Config": "blobs/sha256/" + cfg_digest[7:], "RepoTags": [name],
            "Layers": ["blobs/sha256/" + d["digest"][7:] for d in layer_descs]}]).encode()
    if fmt == "oci":
        dest.mkdir(parents=True, exist_ok=True)
        for rel, data in files.items():
            p = dest / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
        return dest
    if fmt in ("oci-tar", "docker-oci"):
        _write_tar(dest, files)
        return dest
    raise ValueError(f"unknown format {fmt!r}")


def _first_manifest(blobs: dict[str, bytes], desc: dict) -> str:
    if desc["mediaType"] == OCI_INDEX:
        return _first_manifest(blobs, json.loads(blobs[desc["digest"]])["manifests"][-1])
    return desc["digest"]


def _write_tar(dest: Path, files: Mapping[str, bytes]) -> None:
    dirs = sorted({posixpath.dirname(p) for p in files} - {""})
    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tf:
        seen = set()
        for d in dirs:
            parts = d.split("/")
            for i in range(1, len(parts) + 1):
                sub = "/".join(parts[:i])
                if sub not in seen:
                    seen.add(sub)
                    tf.addfile(_info(sub, type=tarfile.DIRTYPE, mode=0o755))
        for rel in sorted(files):
            data = files[rel]
            tf.addfile(_info(rel, size=len(data), mode=0o644), io.BytesIO(data))


def _write_docker_legacy(dest: Path, tars: list[bytes], diff_ids: list[str], name: str,
                         config: Mapping[str, object] | None) -> Path:
    cfg = json.dumps(image_config(diff_ids, config), sort_keys=True).encode()
    cfg_name = sha256(cfg)[7:] + ".json"
    files: dict[str, bytes] = {cfg_name: cfg}
    layer_paths = []
    parent = ""
    for i, t in enumerate(tars):
        v1 = hashlib.sha256(f"{parent} {diff_ids[i]}".encode()).hexdigest()
        files[f"{v1}/VERSION"] = b"1.0"
        files[f"{v1}/json"] = json.dumps({"id": v1, **({"parent": parent} if parent else {})}
                                         ).encode()
        files[f"{v1}/layer.tar"] = t
        layer_paths.append(f"{v1}/layer.tar")
        parent = v1
    repo, _, tag = name.rpartition(":") if ":" in name.rsplit("/", 1)[-1] else (name, "", "latest")
    files["manifest.json"] = json.dumps([{"Config": cfg_name, "RepoTags": [name],
                                          "Layers": layer_paths}]).encode()
    files["repositories"] = json.dumps({repo: {tag: parent}}).encode()
    _write_tar(dest, files)
    return dest


def tree_snapshot(root: str | Path) -> dict[str, tuple]:
    """A comparable description of a directory tree: type, mode, owner, content, link target.
    Times are left out (a union mount changes directory times on copy-up); whiteout and opaque
    markers are recorded by presence only."""
    root = Path(root)
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for n in sorted(dirnames + filenames):
            p = Path(dirpath) / n
            rel = "/" + str(p.relative_to(root))
            st = os.lstat(p)
            if n.startswith(".wh."):
                out[rel] = ("marker",)      # whiteout/opaque metadata carries no meaning
            elif os.path.islink(p):
                out[rel] = ("link", os.readlink(p), st.st_uid, st.st_gid)
            elif p.is_dir():
                out[rel] = ("dir", st.st_mode & 0o7777, st.st_uid, st.st_gid)
            elif p.is_file():
                out[rel] = ("file", st.st_mode & 0o7777, st.st_uid, st.st_gid,
                            hashlib.sha256(p.read_bytes()).hexdigest())
            else:
                out[rel] = ("other", st.st_mode, st.st_uid, st.st_gid, st.st_rdev)
    return out
