"""Read images from disk: an OCI image layout (directory or tar, nested indexes included) or a
``docker save`` archive (legacy ``manifest.json`` + ``<id>/layer.tar``, or the Docker >= 25 form,
which is also an OCI layout). The result names the manifest, the config and the layer blobs; the
image store verifies and ingests them. Also: layer media types and their decompression.

Like containerd's importer, an archive with ``oci-layout`` is read through ``index.json``;
otherwise through ``manifest.json``, for which an OCI manifest is synthesised.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Self

from snapshotter.digest import check_digest, hex_of, is_digest, sha256_bytes
from snapshotter.errors import ImageError

if TYPE_CHECKING:
    import tarfile

# gzip, tarfile, subprocess and platform are imported where an archive or a compressed layer is
# read: the run of an image already in the store uses only this module's checks and names.

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
INDEX_TYPES = {OCI_INDEX, DOCKER_LIST}
MANIFEST_TYPES = {OCI_MANIFEST, DOCKER_MANIFEST}
CONFIG_TYPES = {OCI_CONFIG, DOCKER_CONFIG}

OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = OCI_LAYER + "+gzip"
OCI_LAYER_ZSTD = OCI_LAYER + "+zstd"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = DOCKER_LAYER + ".gzip"
DOCKER_LAYER_ZSTD = DOCKER_LAYER + ".zstd"
_ND = "application/vnd.oci.image.layer.nondistributable.v1.tar"
_FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar"
LAYER_COMPRESSION = {
    OCI_LAYER: "none", DOCKER_LAYER: "none", _ND: "none", _FOREIGN: "none",
    OCI_LAYER_GZIP: "gzip", DOCKER_LAYER_GZIP: "gzip", _ND + "+gzip": "gzip",
    _FOREIGN + ".gzip": "gzip",
    OCI_LAYER_ZSTD: "zstd", DOCKER_LAYER_ZSTD: "zstd", _ND + "+zstd": "zstd",
}
REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"
MAX_JSON = 16 << 20
ZSTD_TIMEOUT_S = 3600


def layer_compression(media_type: str) -> str:
    try:
        return LAYER_COMPRESSION[media_type]
    except KeyError:
        raise ImageError(f"unsupported layer media type {media_type!r}") from None


def sniff_compression(head: bytes) -> str:
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return "zstd"
    return "none"


@contextlib.contextmanager
def open_uncompressed(path: str | Path, compression: str) -> Iterator[BinaryIO]:
    """Yield the uncompressed bytes of the layer blob at PATH.

    zstd goes through the `zstd` command-line tool (Debian package zstd): Python 3.11 has no
    zstd in its standard library.
    """
    if compression == "none":
        with open(path, "rb") as f:
            yield f
    elif compression == "gzip":
        import gzip
        with gzip.open(path, "rb") as f:
            yield f  # type: ignore[misc]
    elif compression == "zstd":
        import subprocess
        try:
            proc = subprocess.Popen(["zstd", "-d", "-c", "-q", "--", str(path)],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except FileNotFoundError:
            raise ImageError("zstd layers need the `zstd` command (Debian package zstd)") from None
        ok = False
        try:
            yield proc.stdout  # type: ignore[misc]
            ok = True
        finally:
            if not ok:
                proc.kill()
            proc.stdout.close()  # type: ignore[union-attr]
            err = proc.stderr.read().decode(errors="replace").strip()  # type: ignore[union-attr]
            proc.stderr.close()  # type: ignore[union-attr]
            rc = proc.wait(timeout=ZSTD_TIMEOUT_S)
        if rc != 0:
            raise ImageError(f"zstd could not decompress the layer: {err.splitlines()[-1:]}")
    else:
        raise ImageError(f"unknown compression {compression!r}")


def host_platform() -> str:
    import platform
    m = platform.machine()
    arch = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "armv6l": "arm",
            "i686": "386", "i386": "386"}.get(m, m)
    return f"linux/{arch}"


def parse_platform(value: str | None) -> tuple[str, str, str | None]:
    value = value or host_platform()
    parts = value.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise ImageError(f"invalid platform {value!r} (expected OS/ARCH[/VARIANT])")
    return parts[0], parts[1], parts[2] if len(parts) == 3 else None


def platform_matches(want: tuple[str, str, str | None], os_: str | None, arch: str | None,
                     variant: str | None) -> bool:
    if os_ != want[0] or arch != want[1]:
        return False
    return want[2] is None or variant in (None, want[2])


# -- where the files are ----------------------------------------------------------------------
class Source:
    """Files of an image, in a directory or a tar archive, addressed by relative path."""

    def exists(self, rel: str) -> bool:
        raise NotImplementedError

    def open(self, rel: str) -> BinaryIO:
        raise NotImplementedError

    def size(self, rel: str) -> int:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def read(self, rel: str, limit: int = MAX_JSON) -> bytes:
        if self.size(rel) > limit:
            raise ImageError(f"{rel} is too large ({self.size(rel)} bytes)")
        with self.open(rel) as f:
            return f.read()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _safe_rel(rel: str) -> str:
    norm = posixpath.normpath(rel)
    if norm.startswith(("/", "../")) or norm in ("..", "."):
        raise ImageError(f"path {rel!r} in the archive leaves it")
    return norm


class DirSource(Source):
    def __init__(self, path: Path):
        self.root = os.path.realpath(path)

    def _p(self, rel: str) -> str:
        p = os.path.realpath(os.path.join(self.root, _safe_rel(rel)))
        if not p.startswith(self.root + os.sep):
            raise ImageError(f"path {rel!r} leaves the image directory")
        return p

    def exists(self, rel: str) -> bool:
        return os.path.isfile(self._p(rel))

    def open(self, rel: str) -> BinaryIO:
        try:
            return open(self._p(rel), "rb")
        except FileNotFoundError:
            raise ImageError(f"missing {rel} in the image") from None

    def size(self, rel: str) -> int:
        try:
            return os.stat(self._p(rel)).st_size
        except FileNotFoundError:
            raise ImageError(f"missing {rel} in the image") from None

    def close(self) -> None:
        pass


class TarSource(Source):
    def __init__(self, path: Path):
        import tarfile
        try:
            self.tf = tarfile.open(path, "r:*")  # noqa: SIM115 - closed by close()
            self.members: dict[str, tarfile.TarInfo] = {}
            for m in self.tf:
                self.members[posixpath.normpath(m.name.removeprefix("./"))] = m
        except tarfile.ReadError:
            raise ImageError(f"{path} is not an image directory or tar archive (plain, gzip, "
                             "bzip2 or xz)") from None
        except (tarfile.TarError, EOFError, OSError) as e:
            raise ImageError(f"cannot read archive {path}: {e}") from None

    def _m(self, rel: str) -> tarfile.TarInfo:
        try:
            m = self.members[_safe_rel(rel)]
        except KeyError:
            raise ImageError(f"missing {rel} in the archive") from None
        for _ in range(40):
            if not m.issym():
                break
            target = posixpath.normpath(posixpath.join(posixpath.dirname(m.name), m.linkname))
            m = self.members.get(_safe_rel(target))  # type: ignore[assignment]
            if m is None:
                raise ImageError(f"{rel} in the archive is a dangling symlink")
        return m

    def exists(self, rel: str) -> bool:
        _safe_rel(rel)                      # a path leaving the archive is an error, not absent
        try:
            return self._m(rel).isfile() or self._m(rel).islnk()
        except ImageError:
            return False

    def open(self, rel: str) -> BinaryIO:
        import tarfile
        m = self._m(rel)
        try:
            f = self.tf.extractfile(m)
        except (tarfile.TarError, KeyError) as e:
            raise ImageError(f"cannot read {rel} from the archive: {e}") from None
        if f is None:
            raise ImageError(f"{rel} in the archive is not a file")
        return f  # type: ignore[return-value]

    def size(self, rel: str) -> int:
        m = self._m(rel)
        if m.islnk():
            return self.open(rel).seek(0, 2)
        return m.size

    def close(self) -> None:
        self.tf.close()


def open_source(path: str | Path) -> Source:
    path = Path(path)
    if path.is_dir():
        return DirSource(path)
    if path.is_file():
        return TarSource(path)
    raise ImageError(f"{path}: no such file or directory")


# -- what the image is ------------------------------------------------------------------------
@dataclass
class LayerRef:
    media_type: str | None            # None: decided from the bytes (legacy docker archives)
    digest: str | None                # None: computed while ingesting (legacy docker archives)
    size: int | None
    open: Callable[[], BinaryIO]
    annotations: dict = field(default_factory=dict)


@dataclass
class SourceImage:
    config_bytes: bytes
    config_digest: str
    config_media_type: str
    layers: list[LayerRef]
    names: list[str]
    manifest_bytes: bytes | None = None     # None: synthesise from the ingested layers
    manifest_digest: str | None = None
    manifest_media_type: str = OCI_MANIFEST
    blobs: dict[str, bytes] = field(default_factory=dict)   # index/manifest/config JSON read

    @property
    def config(self) -> dict:
        return json.loads(self.config_bytes)


def _load_json(data: bytes, what: str) -> dict:
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise ImageError(f"{what} is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise ImageError(f"{what} is not a JSON object")
    return obj


def _check_descriptor(d: object, what: str) -> dict:
    if not isinstance(d, dict):
        raise ImageError(f"{what}: descriptor is not an object")
    for k, t in (("mediaType", str), ("digest", str), ("size", int)):
        if not isinstance(d.get(k), t) or isinstance(d.get(k), bool):
            raise ImageError(f"{what}: descriptor field {k!r} is missing or invalid")
    check_digest(d["digest"], f"{what} digest")
    if d["size"] < 0:
        raise ImageError(f"{what}: negative size")
    return d


def validate_manifest(man: dict) -> None:
    if man.get("schemaVersion") != 2:
        raise ImageError(f"manifest schemaVersion {man.get('schemaVersion')!r} is not 2")
    _check_descriptor(man.get("config"), "manifest config")
    if not isinstance(man.get("layers"), list):
        raise ImageError("manifest field 'layers' is missing or not a list")
    for i, d in enumerate(man["layers"]):
        _check_descriptor(d, f"layer {i}")
        layer_compression(d["mediaType"])


# The execution parameters of an image config (image-spec config.md, `config`), by type; any of
# them may also be null or absent.
_STR_LIST = ("Env", "Entrypoint", "Cmd", "OnBuild", "Shell")
_STRINGS = ("User", "WorkingDir", "StopSignal", "Hostname", "Domainname", "Image")
_OBJECTS = ("ExposedPorts", "Volumes")


def validate_exec_config(cfg: dict) -> None:
    """Check the types of an image config's `config` object (what `pyunion run` reads), so a
    wrong type is refused at import rather than failing a run later."""
    ex = cfg.get("config")
    if ex is None:
        return
    if not isinstance(ex, dict):
        raise ImageError("image config field 'config' is not an object")
    for k in _STR_LIST:
        v = ex.get(k)
        if v is not None and (not isinstance(v, list) or not all(isinstance(x, str) for x in v)):
            raise ImageError(f"image config field config.{k} is not a list of strings")
    for k in _STRINGS:
        if ex.get(k) is not None and not isinstance(ex[k], str):
            raise ImageError(f"image config field config.{k} is not a string")
    for k in _OBJECTS:
        if ex.get(k) is not None and not isinstance(ex[k], dict):
            raise ImageError(f"image config field config.{k} is not an object")
    labels = ex.get("Labels")
    if labels is not None and (not isinstance(labels, dict)
                               or not all(isinstance(v, str) for v in labels.values())):
        raise ImageError("image config field config.Labels is not an object of strings")
    feats = cfg.get("os.features")
    if feats is not None and (not isinstance(feats, list)
                              or not all(isinstance(x, str) for x in feats)):
        raise ImageError("image config field os.features is not a list of strings")


def validate_config(cfg: dict, n_layers: int) -> list[str]:
    """Check the fields an image config must have, and the types of those it may have; return
    its diff_ids."""
    for k in ("os", "architecture"):
        if not isinstance(cfg.get(k), str) or not cfg[k]:
            raise ImageError(f"image config field {k!r} is missing")
    validate_exec_config(cfg)
    rootfs = cfg.get("rootfs")
    if not isinstance(rootfs, dict) or rootfs.get("type") != "layers":
        raise ImageError("image config rootfs.type must be 'layers'")
    diff_ids = rootfs.get("diff_ids")
    if not isinstance(diff_ids, list):
        raise ImageError("image config rootfs.diff_ids is missing")
    for d in diff_ids:
        check_digest(d, "diff_id")
    if len(diff_ids) != n_layers:
        raise ImageError(f"image config lists {len(diff_ids)} diff_ids for {n_layers} layers")
    return diff_ids


class _Reader:
    def __init__(self, src: Source, platform: str | None, ref: str | None):
        self.src = src
        self.want = parse_platform(platform)
        self.ref = ref
        self.blobs: dict[str, bytes] = {}

    def blob_rel(self, digest: str) -> str:
        return "blobs/sha256/" + hex_of(digest)

    def blob_json(self, desc: dict, what: str) -> tuple[bytes, dict]:
        digest = desc["digest"]
        rel = self.blob_rel(digest)
        if not self.src.exists(rel):
            raise ImageError(f"missing blob {digest} ({what})")
        data = self.src.read(rel)
        if len(data) != desc["size"]:
            raise ImageError(f"{what} {digest}: size {len(data)} does not match the "
                             f"descriptor's {desc['size']}")
        if sha256_bytes(data) != digest:
            raise ImageError(f"{what} {digest}: digest mismatch")
        self.blobs[digest] = data
        return data, _load_json(data, f"{what} {digest}")

    # OCI layout -------------------------------------------------------------------------------
    def oci(self) -> SourceImage:
        layout = _load_json(self.src.read("oci-layout"), "oci-layout")
        if not isinstance(layout.get("imageLayoutVersion"), str):
            raise ImageError("oci-layout has no imageLayoutVersion")
        index = _load_json(self.src.read("index.json"), "index.json")
        if index.get("schemaVersion") != 2:
            raise ImageError("index.json schemaVersion is not 2")
        manifests = index.get("manifests")
        if not isinstance(manifests, list):
            raise ImageError("index.json has no manifests list")
        found: list[tuple[dict, list[str]]] = []
        self._walk(manifests, [], found, 0)
        if self.ref is not None:
            found = [f for f in found if self.ref in f[1]]
            if not found:
                raise ImageError(f"no image named {self.ref!r} in the layout")
        matching: dict[str, tuple[dict, list[str], bytes, dict]] = {}
        seen_platforms = set()
        for desc, names in found:
            p = desc.get("platform")
            if isinstance(p, dict):
                seen_platforms.add(f"{p.get('os')}/{p.get('architecture')}")
                if not platform_matches(self.want, p.get("os"), p.get("architecture"),
                                        p.get("variant")):
                    continue
            raw, man = self.blob_json(_check_descriptor(desc, "manifest"), "manifest")
            validate_manifest(man)
            if not isinstance(p, dict):
                _, cfg = self.blob_json(man["config"], "config")
                seen_platforms.add(f"{cfg.get('os')}/{cfg.get('architecture')}")
                if not platform_matches(self.want, cfg.get("os"), cfg.get("architecture"),
                                        cfg.get("variant")):
                    continue
            prev = matching.get(desc["digest"])
            matching[desc["digest"]] = (desc, sorted(set(names) | set(prev[1] if prev else [])),
                                        raw, man)
        want = "/".join(x for x in self.want if x)
        if not matching:
            avail = ", ".join(sorted(seen_platforms)) or "none"
            raise ImageError(f"no image for platform {want} (available: {avail})")
        if len(matching) > 1:
            refs = sorted({n for v in matching.values() for n in v[1]})
            raise ImageError(f"the layout holds {len(matching)} images for {want} "
                             f"(names: {', '.join(refs) or 'none'}); choose one with --ref")
        desc, names, raw, man = next(iter(matching.values()))
        cfg_raw, _ = self.blob_json(man["config"], "config")
        if man["config"]["mediaType"] not in CONFIG_TYPES:
            raise ImageError(f"not a container image: config media type "
                             f"{man['config']['mediaType']!r}")
        layers = [LayerRef(d["mediaType"], d["digest"], d["size"],
                           self._opener(self.blob_rel(d["digest"]), d["digest"]),
                           d.get("annotations") or {}) for d in man["layers"]]
        return SourceImage(cfg_raw, man["config"]["digest"], man["config"]["mediaType"], layers,
                           names, raw, desc["digest"], man.get("mediaType") or desc["mediaType"],
                           self.blobs)

    def _opener(self, rel: str, digest: str | None) -> Callable[[], BinaryIO]:
        def op() -> BinaryIO:
            if not self.src.exists(rel):
                raise ImageError(f"missing blob {digest or rel}")
            return self.src.open(rel)
        return op

    def _walk(self, descs: list, names: list[str], out: list, depth: int) -> None:
        if depth > 8:
            raise ImageError("image indexes are nested too deeply")
        for d in descs:
            if not isinstance(d, dict):
                raise ImageError("index entry is not an object")
            ann = d.get("annotations") or {}
            here = names + [ann[k] for k in (CONTAINERD_NAME, REF_NAME)
                            if isinstance(ann.get(k), str)]
            mt = d.get("mediaType")
            if mt in INDEX_TYPES:
                _, sub = self.blob_json(_check_descriptor(d, "index"), "index")
                if not isinstance(sub.get("manifests"), list):
                    raise ImageError(f"index {d['digest']} has no manifests list")
                self._walk(sub["manifests"], here, out, depth + 1)
            elif mt in MANIFEST_TYPES:
                out.append((d, here))
            # Other media types (attestations, artifacts) are not images: skipped, not errors.

    # docker save ------------------------------------------------------------------------------
    def docker(self) -> SourceImage:
        try:
            entries = json.loads(self.src.read("manifest.json"))
        except (ValueError, UnicodeDecodeError) as e:
            raise ImageError(f"manifest.json is not valid JSON: {e}") from None
        if not isinstance(entries, list) or not entries:
            raise ImageError("manifest.json holds no images")
        if not all(isinstance(e, dict) for e in entries):
            raise ImageError("manifest.json is not a list of image entries (objects)")
        if self.ref is not None:
            entries = [e for e in entries if isinstance(e, dict)
                       and self.ref in (e.get("RepoTags") or [])]
            if not entries:
                raise ImageError(f"no image tagged {self.ref!r} in the archive")
        if len(entries) > 1:
            tags = sorted(t for e in entries if isinstance(e, dict)
                          for t in (e.get("RepoTags") or []))
            raise ImageError(f"the archive holds {len(entries)} images (tags: "
                             f"{', '.join(tags) or 'none'}); choose one with --ref")
        entry = entries[0]
        if not isinstance(entry, dict) or not isinstance(entry.get("Config"), str) \
                or not isinstance(entry.get("Layers"), list):
            raise ImageError("manifest.json entry lacks Config or Layers")
        cfg_rel = entry["Config"]
        cfg_raw = self.src.read(cfg_rel)
        cfg_digest = sha256_bytes(cfg_raw)
        stem = posixpath.basename(cfg_rel).removesuffix(".json")
        if is_digest("sha256:" + stem) and "sha256:" + stem != cfg_digest:
            raise ImageError(f"config {cfg_rel}: digest mismatch (got {cfg_digest})")
        cfg = _load_json(cfg_raw, "image config")
        if not platform_matches(self.want, cfg.get("os"), cfg.get("architecture"),
                                cfg.get("variant")):
            raise ImageError(f"the image is for {cfg.get('os')}/{cfg.get('architecture')}, not "
                             f"{'/'.join(x for x in self.want if x)}")
        layers = []
        for rel in entry["Layers"]:
            if not isinstance(rel, str):
                raise ImageError("manifest.json Layers entry is not a path")
            expected = None
            m = posixpath.normpath(rel)
            if m.startswith("blobs/sha256/") and is_digest("sha256:" + m[13:]):
                expected = "sha256:" + m[13:]
            if not self.src.exists(rel):
                raise ImageError(f"missing layer {rel} in the archive")
            layers.append(LayerRef(None, expected, self.src.size(rel), self._opener(rel, None)))
        names = [t for t in (entry.get("RepoTags") or []) if isinstance(t, str)]
        return SourceImage(cfg_raw, cfg_digest, DOCKER_CONFIG, layers, names)


def read_image(src: Source, platform: str | None = None, ref: str | None = None) -> SourceImage:
    r = _Reader(src, platform, ref)
    if src.exists("oci-layout") and src.exists("index.json"):
        index = _load_json(src.read("index.json"), "index.json")
        # moby#47210: some Docker 25 archives have `manifests: null`; manifest.json still works.
        if index.get("manifests") or not src.exists("manifest.json"):
            return r.oci()
    if src.exists("manifest.json"):
        return r.docker()
    raise ImageError("not an OCI image layout (oci-layout + index.json) or a docker save archive"
                     " (manifest.json)")
