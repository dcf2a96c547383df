"""The image store: image records in ``ROOT/images.db``, blobs in the content store, layers as
committed snapshots named by ChainID (containerd's unpacker model).

Image writers (import, rm, commit) hold ``ROOT/images.lock`` so two CLI processes never interleave;
an import that fails removes the snapshots and blobs it created before the error leaves, so the
store is exactly as it was.

Run by an ordinary user (or with rootless=True) the store is rootless: layers are unpacked
without chown or mknod, owners, special modes and devices recorded in override xattrs, and
commits read them back (README, Rootless), so the images are the same as root's.
"""

from __future__ import annotations

import builtins
import contextlib
import copy
import fcntl
import hashlib
import io
import json
import os
import secrets
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from snapshotter import image_readers as ir
from snapshotter.content import ContentStore
from snapshotter.digest import CHUNK, HashingWriter, chain_id, chain_ids, hex_of, sha256_bytes
from snapshotter.errors import (
    AlreadyExists,
    FailedPrecondition,
    ImageError,
    InvalidArgument,
    NotFound,
    SnapshotterError,
)
from snapshotter.progress import Progress
from snapshotter.snapshots import Kind, Snapshotter
from snapshotter.sqlite_db import open_db

if TYPE_CHECKING:
    import tarfile

    from snapshotter.applier import RootlessIds

# tarfile, the applier and the layer writer are imported where a layer is read, unpacked or
# written: `pyunion run` of an image already in the store does none of that (tests/test_imports.py).

IMAGE_LABEL = "pyunion.image"          # on an active snapshot: the image it was prepared from
LAYER_LABEL = "pyunion.diff_id"        # on a committed snapshot unpacked from an image layer
SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    name            TEXT PRIMARY KEY,
    manifest_digest TEXT NOT NULL,
    config_digest   TEXT NOT NULL,
    diff_ids        TEXT NOT NULL,
    chain_ids       TEXT NOT NULL,
    created         TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS layer_diff_ids (
    blob    TEXT PRIMARY KEY,   -- a layer blob's digest (verified when it was ingested)
    diff_id TEXT NOT NULL       -- the digest of its uncompressed stream, as computed here
);
"""


@dataclass
class ImageRecord:
    name: str
    manifest_digest: str
    config_digest: str
    config: dict
    diff_ids: list[str]
    chain_ids: list[str]           # chain_ids[-1] = top layer's chain ID
    manifest: dict = field(default_factory=dict)
    created: str = ""

    @property
    def layers(self) -> list[dict]:
        return list(self.manifest.get("layers", []))

    @property
    def blobs(self) -> list[str]:
        return [self.manifest_digest, self.config_digest] + [d["digest"] for d in self.layers]

    @property
    def top(self) -> str:
        return self.chain_ids[-1] if self.chain_ids else ""


def check_name(name: str) -> str:
    if not isinstance(name, str) or not name or len(name) > 255 or name != name.strip() \
            or any(ord(c) < 32 or c.isspace() for c in name):
        raise InvalidArgument(f"invalid image name {name!r}")
    return name


def split_tag(name: str) -> tuple[str, str]:
    """`repo:tag` -> (repo, tag); no tag -> 'latest'. A ':' before the last '/' is a port."""
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        repo, tag = name.rsplit(":", 1)
        return repo, tag
    return name, "latest"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _json_bytes(obj: dict) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


class _DB:
    def __init__(self, path: Path):
        self.conn = open_db(path, SCHEMA)

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def diff_id_of(self, blob: str) -> str | None:
        row = self.conn.execute("SELECT diff_id FROM layer_diff_ids WHERE blob = ?",
                                (blob,)).fetchone()
        return row[0] if row else None

    def rows(self, name: str | None = None) -> list[tuple]:
        q = "SELECT name, manifest_digest, config_digest, diff_ids, chain_ids, created FROM images"
        if name is None:
            return list(self.conn.execute(q + " ORDER BY name"))
        return list(self.conn.execute(q + " WHERE name = ?", (name,)))

    def close(self) -> None:
        self.conn.close()


class ImageStore:
    def __init__(self, root: str | Path, progress: Progress | None = None, *,
                 rootless: bool | None = None):
        self.root = Path(root).absolute()
        self._rootless = rootless
        self.snapshots = Snapshotter(self.root)
        self.content = ContentStore(self.root)
        self.db = _DB(self.root / "images.db")
        self.progress = progress or Progress(enabled=False)
        self.notes: list[str] = []      # neutralised/skipped layer entries of the last import
        self._diff_ids: dict[str, str] = {}   # blob -> diff_id computed, stored with the record

    @property
    def ids(self) -> RootlessIds | None:
        """The store user's ids when rootless; None: root, owners are chowned for real."""
        from snapshotter.applier import rootless_ids
        return rootless_ids(self._rootless)

    def close(self) -> None:
        self.db.close()
        self.snapshots.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        fd = os.open(self.root / "images.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # -- records ----------------------------------------------------------------------------------
    def _record(self, row: tuple, strict: bool = True) -> ImageRecord:
        """The record of ROW; with STRICT False a missing blob gives empty manifest/config
        (so a damaged image can still be listed and removed)."""
        name, man, cfg, diff_ids, chains, created = row
        try:
            manifest = json.loads(self.content.read(man))
            config = json.loads(self.content.read(cfg))
        except NotFound as e:
            if strict:
                raise ImageError(f"image {name!r} is damaged: {e}") from None
            manifest, config = {}, {}
        return ImageRecord(name, man, cfg, config, json.loads(diff_ids), json.loads(chains),
                           manifest, created)

    def resolve(self, name: str) -> ImageRecord:
        rows = self.db.rows(name)
        if not rows:
            raise NotFound(f"image {name!r} not found")
        return self._record(rows[0])

    def list(self) -> list[ImageRecord]:
        return [self._record(r, strict=False) for r in self.db.rows()]

    def _insert(self, rec: ImageRecord) -> None:
        with self.db.write() as c:
            if c.execute("SELECT 1 FROM images WHERE name = ?", (rec.name,)).fetchone():
                raise AlreadyExists(f"image {rec.name!r} already exists")
            c.execute("INSERT INTO images VALUES (?, ?, ?, ?, ?, ?)",
                      (rec.name, rec.manifest_digest, rec.config_digest, json.dumps(rec.diff_ids),
                       json.dumps(rec.chain_ids), rec.created))
            c.executemany("INSERT OR REPLACE INTO layer_diff_ids VALUES (?, ?)",
                          sorted(self._diff_ids.items()))
        self._diff_ids = {}

    def _others(self, name: str) -> tuple[set[str], set[str]]:
        """Chain IDs and blobs used by every image except NAME."""
        chains: set[str] = set()
        blobs: set[str] = set()
        for row in self.db.rows():
            if row[0] == name:
                continue
            chains.update(json.loads(row[4]))
            blobs.update((row[1], row[2]))
            with contextlib.suppress(NotFound, ValueError):
                man = json.loads(self.content.read(row[1]))
                blobs.update(d["digest"] for d in man.get("layers", []))
        return chains, blobs

    # -- import -----------------------------------------------------------------------------------
    def import_path(self, path, name: str | None = None, platform: str | None = None, *,
                    ref: str | None = None) -> ImageRecord:
        """Import an OCI layout (dir or tar) or docker save archive; all or nothing."""
        if name is not None:
            check_name(name)
        self.notes = []
        self._diff_ids = {}
        with self._lock():
            self._remove_stale_extractions()
            created_blobs: list[str] = []
            created_snaps: list[str] = []
            try:
                with ir.open_source(path) as src:
                    img = ir.read_image(src, platform, ref)
                    if name is None:
                        name = _default_name(img, Path(path))
                    check_name(name)
                    if self.db.rows(name):
                        raise AlreadyExists(f"image {name!r} already exists (remove it first or "
                                            "import with --name)")
                    manifest_digest, manifest = self._ingest(img, created_blobs)
                cfg = json.loads(img.config_bytes)
                diff_ids = ir.validate_config(cfg, len(manifest["layers"]))
                chains = chain_ids(diff_ids)
                self._unpack_all(manifest["layers"], diff_ids, chains, created_snaps)
                rec = ImageRecord(name, manifest_digest, img.config_digest, cfg, diff_ids, chains,
                                  manifest, _now())
                self._insert(rec)
                return rec
            except BaseException as e:
                self._rollback(created_snaps, created_blobs)
                if isinstance(e, SnapshotterError):
                    raise
                import tarfile
                if isinstance(e, (OSError, ValueError, tarfile.TarError, EOFError)):
                    raise ImageError(f"import failed: {e}") from None
                raise
            finally:
                self.progress.finish()

    def _remove_stale_extractions(self) -> None:
        """Leftovers of an import that was killed: unpack snapshots and ingest files. Safe
        because image writers hold the lock, so no other import is running."""
        for info in list(self.snapshots.walk()):
            if info.kind is Kind.ACTIVE and info.name.startswith("extract-") \
                    and info.labels.get("pyunion.unpack") == "1":
                with contextlib.suppress(SnapshotterError, OSError):
                    self.snapshots.remove(info.name)
        self.content.cleanup()

    def _ingest(self, img: ir.SourceImage, created: builtins.list[str]) -> tuple[str, dict]:
        """Copy and verify every blob of IMG; return the manifest digest and manifest."""
        total = sum(x.size or 0 for x in img.layers)
        self.progress.start("copying", len(img.layers), total)
        descs = []
        for layer in img.layers:
            self.progress.next_layer()
            if layer.digest and self.content.has(layer.digest):
                if layer.size is not None and self.content.size(layer.digest) != layer.size:
                    raise ImageError(f"layer {layer.digest}: size does not match the descriptor")
                self.progress.add(layer.size or 0)
                digest, size = layer.digest, self.content.size(layer.digest)
            else:
                with layer.open() as f:
                    digest, size, new = self.content.ingest(f, layer.digest, layer.size,
                                                            self.progress.add)
                if new:
                    created.append(digest)
            media_type = layer.media_type
            if media_type is None:
                with self.content.open(digest) as f:
                    kind = ir.sniff_compression(f.read(4))
                media_type = {"none": ir.OCI_LAYER, "gzip": ir.OCI_LAYER_GZIP,
                              "zstd": ir.OCI_LAYER_ZSTD}[kind]
            descs.append({"mediaType": media_type, "digest": digest, "size": size})
        cfg_digest, new = self.content.put_bytes(img.config_bytes, img.config_digest)
        if new:
            created.append(cfg_digest)
        ir.validate_config(ir._load_json(img.config_bytes, "image config"), len(descs))
        if img.manifest_bytes is None:
            manifest = {"schemaVersion": 2, "mediaType": ir.OCI_MANIFEST,
                        "config": {"mediaType": ir.OCI_CONFIG, "digest": cfg_digest,
                                   "size": len(img.config_bytes)},
                        "layers": descs}
            raw = _json_bytes(manifest)
            mdigest, new = self.content.put_bytes(raw)
        else:
            manifest = json.loads(img.manifest_bytes)
            mdigest, new = self.content.put_bytes(img.manifest_bytes, img.manifest_digest)
        if new:
            created.append(mdigest)
        return mdigest, manifest

    def _unpack_all(self, layers: builtins.list[dict], diff_ids: builtins.list[str],
                    chains: builtins.list[str], created: builtins.list[str]) -> None:
        self.progress.start("unpacking", len(layers), 0)     # uncompressed size is unknown
        for i, desc in enumerate(layers):
            self.progress.next_layer()
            parent = chains[i - 1] if i else ""
            if self._committed(chains[i]):
                # The store holds this ChainID, but this image's blob must still be the layer
                # the config names: a manifest may pair any blob with any diff_id.
                self._verify_diff_id(desc, diff_ids[i], i)
                continue
            if self._unpack_layer(desc, diff_ids[i], chains[i], parent, i):
                created.append(chains[i])

    def _verify_diff_id(self, desc: dict, diff_id: str, index: int) -> None:
        """Check that the uncompressed stream of layer blob DESC is DIFF_ID. A blob's digest
        fixes its bytes, so a pairing computed once (at unpack or here) is remembered."""
        blob = desc["digest"]
        got = self._diff_ids.get(blob) or self.db.diff_id_of(blob)
        if got is None:
            h = hashlib.sha256()
            with ir.open_uncompressed(self.content.path(blob),
                                      ir.layer_compression(desc["mediaType"])) as stream:
                while chunk := stream.read(CHUNK):
                    h.update(chunk)
                    self.progress.add(len(chunk))
            got = "sha256:" + h.hexdigest()
            self._diff_ids[blob] = got
        if got != diff_id:
            raise ImageError(f"layer {index} ({blob}): uncompressed digest {got} does not match "
                             f"diff_id {diff_id}")

    def _committed(self, chain: str) -> bool:
        try:
            info = self.snapshots.stat(chain)
        except NotFound:
            return False
        if info.kind is not Kind.COMMITTED:
            raise FailedPrecondition(f"snapshot {chain} exists but is not committed")
        return True

    def _unpack_layer(self, desc: dict, diff_id: str, chain: str, parent: str, index: int
                      ) -> bool:
        """Unpack one layer blob into a new committed snapshot named CHAIN; False if another
        process committed it first."""
        key = f"extract-{secrets.token_hex(8)} {chain}"
        self.snapshots.prepare(key, parent, labels={"pyunion.unpack": "1"})
        try:
            upper = self.snapshots.upper_path(key)
            compression = ir.layer_compression(desc["mediaType"])
            from snapshotter.applier import apply_tar
            try:
                with ir.open_uncompressed(self.content.path(desc["digest"]),
                                          compression) as stream:
                    res = apply_tar(stream, upper, rootless=self.ids is not None,
                                    on_bytes=self.progress.add)
            except ImageError as e:
                raise ImageError(f"layer {index} ({desc['digest'][:19]}): {e}") from None
            self._diff_ids[desc["digest"]] = res.diff_id
            if res.diff_id != diff_id:
                raise ImageError(f"layer {index} ({desc['digest']}): uncompressed digest "
                                 f"{res.diff_id} does not match diff_id {diff_id}")
            self.notes += [f"layer {index}: {n}" for n in res.notes]
            try:
                self.snapshots.commit(chain, key, labels={LAYER_LABEL: diff_id})
            except AlreadyExists:
                self.snapshots.remove(key)
                return False
            return True
        except BaseException:
            with contextlib.suppress(SnapshotterError, OSError):
                self.snapshots.remove(key)
            raise

    def _rollback(self, snaps: builtins.list[str], blobs: builtins.list[str]) -> None:
        used_chains, used_blobs = self._others("")
        for chain in reversed(snaps):
            if chain not in used_chains:
                with contextlib.suppress(SnapshotterError, OSError):
                    self.snapshots.remove(chain)
        for b in blobs:
            if b not in used_blobs:
                self.content.delete(b)

    # -- remove -----------------------------------------------------------------------------------
    def remove(self, name: str) -> None:
        """Remove the record; then its layers and blobs that no other image or snapshot uses."""
        with self._lock():
            rows = self.db.rows(name)
            if not rows:
                raise NotFound(f"image {name!r} not found")
            rec = self._record(rows[0], strict=False)
            with self.db.write() as c:
                c.execute("DELETE FROM images WHERE name = ?", (name,))
            used_chains, used_blobs = self._others(name)
            for chain in reversed(rec.chain_ids):
                if chain in used_chains:
                    break
                try:
                    self.snapshots.remove(chain)
                except NotFound:
                    continue
                except FailedPrecondition:
                    break               # a container or another snapshot still builds on it
            for b in rec.blobs:
                if b not in used_blobs:
                    self.content.delete(b)

    def collect_layers(self) -> builtins.list[str]:
        """Remove image layers that no image uses and no snapshot builds on (e.g. an image
        removed while a container ran on it): committed snapshots carrying LAYER_LABEL only,
        children before parents. Returns the ChainIDs removed."""
        removed: list[str] = []
        with self._lock():
            used, _ = self._others("")
            while True:
                infos = list(self.snapshots.walk())
                parents = {i.parent for i in infos}
                doomed = [i.name for i in infos if i.kind is Kind.COMMITTED
                          and LAYER_LABEL in i.labels and i.name not in used
                          and i.name not in parents]
                if not doomed:
                    return removed
                for chain in doomed:
                    with contextlib.suppress(NotFound, FailedPrecondition):
                        self.snapshots.remove(chain)
                        removed.append(chain)

    # -- export -----------------------------------------------------------------------------------
    def export(self, name: str, path, fmt: str = "oci") -> None:
        """Write NAME as an OCI layout (a directory, or a tar when PATH ends in .tar) or, with
        fmt="docker-archive", as a `docker save` archive (Docker >= 25 form, which is also an OCI
        layout, with uncompressed layers as `docker load` expects)."""
        if fmt not in ("oci", "docker-archive"):
            raise InvalidArgument(f"unknown export format {fmt!r} (oci or docker-archive)")
        rec = self.resolve(name)
        path = Path(path).absolute()
        if path.exists() and not (path.is_dir() and not any(path.iterdir())):
            raise AlreadyExists(f"{path} already exists")
        if not path.parent.is_dir():
            raise NotFound(f"directory {path.parent} does not exist")
        for b in rec.blobs:
            if not self.content.has(b):
                raise ImageError(f"image {name!r} is missing blob {b}")
        for i, desc in enumerate(rec.layers):    # e.g. a record made before imports checked it
            known = self.db.diff_id_of(desc["digest"])
            if known is not None and known != rec.diff_ids[i]:
                raise ImageError(f"image {name!r} does not verify: layer {i} ({desc['digest']}) "
                                 f"is {known}, not diff_id {rec.diff_ids[i]}")
        with tempfile.TemporaryDirectory(dir=self.content.ingest_dir) as tmpdir:
            files = (self._oci_files(rec) if fmt == "oci"
                     else self._docker_files(rec, Path(tmpdir)))
            as_tar = fmt == "docker-archive" or path.suffix == ".tar"
            self.progress.start("exporting", len(rec.layers),
                                sum(self._file_size(v) for v in files.values()))
            try:
                if as_tar:
                    _write_tar_atomic(path, files, self.progress)
                else:
                    _write_dir_atomic(path, files, self.progress)
            finally:
                self.progress.finish()

    def _file_size(self, v: bytes | Path) -> int:
        return len(v) if isinstance(v, bytes) else v.stat().st_size

    def _index(self, rec: ImageRecord, mdigest: str, msize: int, mtype: str) -> bytes:
        _, tag = split_tag(rec.name)
        desc: dict[str, Any] = {"mediaType": mtype, "digest": mdigest, "size": msize,
                "annotations": {ir.CONTAINERD_NAME: rec.name, ir.REF_NAME: tag},
                "platform": {"os": rec.config.get("os", "linux"),
                             "architecture": rec.config.get("architecture", "")}}
        if rec.config.get("variant"):
            desc["platform"]["variant"] = rec.config["variant"]
        return _json_bytes({"schemaVersion": 2, "mediaType": ir.OCI_INDEX, "manifests": [desc]})

    def _oci_files(self, rec: ImageRecord) -> dict[str, bytes | Path]:
        """An OCI layout of REC. A Docker schema2 manifest is rewritten with the equivalent OCI
        media types (same config and layer blobs), because OCI layout readers such as skopeo
        only accept OCI manifests in index.json."""
        files: dict[str, bytes | Path] = {"oci-layout": b'{"imageLayoutVersion":"1.0.0"}'}
        for b in rec.blobs[1:]:
            files["blobs/sha256/" + hex_of(b)] = self.content.path(b)
        if rec.manifest.get("mediaType") == ir.DOCKER_MANIFEST:
            raw = _json_bytes(to_oci_manifest(rec.manifest))
            mdigest = sha256_bytes(raw)
            files["blobs/sha256/" + hex_of(mdigest)] = raw
            files["index.json"] = self._index(rec, mdigest, len(raw), ir.OCI_MANIFEST)
        else:
            files["blobs/sha256/" + hex_of(rec.manifest_digest)] = \
                self.content.path(rec.manifest_digest)
            files["index.json"] = self._index(rec, rec.manifest_digest,
                                              self.content.size(rec.manifest_digest),
                                              rec.manifest.get("mediaType") or ir.OCI_MANIFEST)
        return files

    def _docker_files(self, rec: ImageRecord, tmp: Path) -> dict[str, bytes | Path]:
        files: dict[str, bytes | Path] = {"oci-layout": b'{"imageLayoutVersion":"1.0.0"}'}
        layer_descs = []
        for i, desc in enumerate(rec.layers):
            comp = ir.layer_compression(desc["mediaType"])
            diff_id = rec.diff_ids[i]
            if comp == "none":
                files["blobs/sha256/" + hex_of(desc["digest"])] = self.content.path(desc["digest"])
                size = desc["size"]
            else:
                out = tmp / hex_of(diff_id)
                with ir.open_uncompressed(self.content.path(desc["digest"]), comp) as src, \
                        open(out, "wb") as f:
                    hw = HashingWriter(f)
                    while chunk := src.read(CHUNK):
                        hw.write(chunk)
                if hw.digest() != diff_id:
                    raise ImageError(f"layer {i}: stored blob does not match its diff_id")
                files["blobs/sha256/" + hex_of(diff_id)] = out
                size = hw.count
            layer_descs.append({"mediaType": ir.OCI_LAYER, "digest": diff_id, "size": size})
        cfg_size = self.content.size(rec.config_digest)
        files["blobs/sha256/" + hex_of(rec.config_digest)] = self.content.path(rec.config_digest)
        manifest = _json_bytes({"schemaVersion": 2, "mediaType": ir.OCI_MANIFEST,
                                "config": {"mediaType": ir.OCI_CONFIG,
                                           "digest": rec.config_digest, "size": cfg_size},
                                "layers": layer_descs})
        mdigest = sha256_bytes(manifest)
        files["blobs/sha256/" + hex_of(mdigest)] = manifest
        files["index.json"] = self._index(rec, mdigest, len(manifest), ir.OCI_MANIFEST)
        repo, tag = split_tag(rec.name)
        files["manifest.json"] = _json_bytes([{  # type: ignore[arg-type]
            "Config": "blobs/sha256/" + hex_of(rec.config_digest),
            "RepoTags": [f"{repo}:{tag}"],
            "Layers": ["blobs/sha256/" + hex_of(d) for d in rec.diff_ids]}])
        files["repositories"] = _json_bytes({repo: {tag: hex_of(rec.chain_ids[-1])}}
                                            if rec.chain_ids else {})
        return files

    # -- commit -----------------------------------------------------------------------------------
    def commit(self, key: str, name: str, message: str | None = None, *,
               compression: str = "gzip") -> ImageRecord:
        """Turn the changes in active snapshot KEY into a new layer on top of its image.

        The upper is read directly (the union writes it in OCI form); commit a quiescent
        container for a consistent layer, as with `docker commit --pause`.
        """
        check_name(name)
        if compression not in ("gzip", "none"):
            raise InvalidArgument(f"unsupported layer compression {compression!r}")
        self._diff_ids = {}
        with self._lock():
            info = self.snapshots.stat(key)
            if info.kind is not Kind.ACTIVE:
                raise FailedPrecondition(f"snapshot {key!r} is {info.kind.value}, not active")
            parent = self._parent_image(key, info)
            if self.db.rows(name):
                raise AlreadyExists(f"image {name!r} already exists")
            created_blobs: list[str] = []
            created_snaps: list[str] = []
            try:
                upper = self.snapshots.upper_path(key)
                self.progress.start("committing", 1, 0)
                from snapshotter.layer_writer import write_layer
                with self.content.new_writer() as w:
                    res = write_layer(upper, w, compression,  # type: ignore[arg-type]
                                      ids=self.ids)
                    digest, size, new = w.commit()
                if new:
                    created_blobs.append(digest)
                config = copy.deepcopy(parent.config)
                now = _now()
                config["created"] = now
                config.setdefault("rootfs", {"type": "layers", "diff_ids": []})
                config["rootfs"]["diff_ids"] = parent.diff_ids + [res.diff_id]
                hist = {"created": now, "created_by": "pyunion image commit"}
                if message:
                    hist["comment"] = message
                config["history"] = list(config.get("history") or []) + [hist]
                cfg_raw = _json_bytes(config)
                cfg_digest, new = self.content.put_bytes(cfg_raw)
                if new:
                    created_blobs.append(cfg_digest)
                manifest = copy.deepcopy(parent.manifest)
                docker = manifest.get("mediaType") == ir.DOCKER_MANIFEST
                manifest["config"] = {**manifest["config"], "digest": cfg_digest,
                                      "size": len(cfg_raw)}
                types = {("gzip", True): ir.DOCKER_LAYER_GZIP, ("gzip", False): ir.OCI_LAYER_GZIP,
                         ("none", True): ir.DOCKER_LAYER, ("none", False): ir.OCI_LAYER}
                manifest["layers"] = list(manifest["layers"]) + [{
                    "mediaType": types[compression, docker], "digest": digest, "size": size}]
                mdigest, new = self.content.put_bytes(_json_bytes(manifest))
                if new:
                    created_blobs.append(mdigest)
                chain = chain_id(parent.top or None, res.diff_id)
                if not self._committed(chain) and self._unpack_layer(
                        manifest["layers"][-1], res.diff_id, chain, parent.top,
                        len(parent.diff_ids)):
                    created_snaps.append(chain)
                rec = ImageRecord(name, mdigest, cfg_digest, config,
                                  parent.diff_ids + [res.diff_id], parent.chain_ids + [chain],
                                  manifest, now)
                self._insert(rec)
                return rec
            except BaseException:
                self._rollback(created_snaps, created_blobs)
                raise
            finally:
                self.progress.finish()

    def _parent_image(self, key: str, info) -> ImageRecord:
        label = info.labels.get(IMAGE_LABEL)
        if label:
            parent = self.resolve(label)
        else:
            candidates = [r for r in self.list() if r.top == info.parent]
            if not candidates:
                raise FailedPrecondition(f"snapshot {key!r} has no {IMAGE_LABEL} label and no "
                                         "image ends in its parent")
            parent = candidates[0]
        if parent.top != info.parent:
            raise FailedPrecondition(f"snapshot {key!r} is not based on image {parent.name!r} "
                                     f"(its parent is {info.parent or 'none'})")
        return parent


DOCKER_TO_OCI = {ir.DOCKER_MANIFEST: ir.OCI_MANIFEST, ir.DOCKER_CONFIG: ir.OCI_CONFIG,
                 ir.DOCKER_LAYER: ir.OCI_LAYER, ir.DOCKER_LAYER_GZIP: ir.OCI_LAYER_GZIP,
                 ir.DOCKER_LAYER_ZSTD: ir.OCI_LAYER_ZSTD}


def to_oci_manifest(manifest: dict) -> dict:
    """The same image with OCI media types (image-spec: Docker gzip == OCI tar+gzip)."""
    out = copy.deepcopy(manifest)
    out["mediaType"] = ir.OCI_MANIFEST
    out["config"]["mediaType"] = DOCKER_TO_OCI.get(out["config"]["mediaType"],
                                                   out["config"]["mediaType"])
    for d in out["layers"]:
        d["mediaType"] = DOCKER_TO_OCI.get(d["mediaType"], d["mediaType"])
    return out


def _default_name(img: ir.SourceImage, path: Path) -> str:
    for n in img.names:
        if "/" in n or ":" in n:
            return n
    if img.names:
        return img.names[0]
    stem = path.name
    for suffix in (".tar", ".gz", ".tgz", ".oci"):
        stem = stem.removesuffix(suffix)
    return stem or "image"


def _tar_info(name: str, size: int = 0, is_dir: bool = False) -> tarfile.TarInfo:
    import tarfile
    ti = tarfile.TarInfo(name)
    ti.type = tarfile.DIRTYPE if is_dir else tarfile.REGTYPE
    ti.mode = 0o755 if is_dir else 0o644
    ti.size = size
    ti.mtime = 0
    ti.uname = ti.gname = ""
    return ti


def _write_tar_atomic(path: Path, files: dict[str, bytes | Path], progress: Progress) -> None:
    import tarfile
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f, tarfile.open(fileobj=f, mode="w",
                                                     format=tarfile.PAX_FORMAT) as tf:
            dirs: set[str] = set()
            for rel in sorted(files):
                parts = rel.split("/")[:-1]
                for i in range(1, len(parts) + 1):
                    d = "/".join(parts[:i])
                    if d not in dirs:
                        dirs.add(d)
                        tf.addfile(_tar_info(d, is_dir=True))
                v = files[rel]
                if isinstance(v, bytes):
                    tf.addfile(_tar_info(rel, len(v)), io.BytesIO(v))
                else:
                    progress.next_layer()
                    with open(v, "rb") as src:
                        tf.addfile(_tar_info(rel, os.fstat(src.fileno()).st_size), src)
                progress.add(len(v) if isinstance(v, bytes) else v.stat().st_size)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _write_dir_atomic(path: Path, files: dict[str, bytes | Path], progress: Progress) -> None:
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        for rel, v in sorted(files.items()):
            dest = tmp / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(v, bytes):
                dest.write_bytes(v)
            else:
                progress.next_layer()
                with open(v, "rb") as src, open(dest, "wb") as out:
                    while chunk := src.read(CHUNK):
                        out.write(chunk)
                        progress.add(len(chunk))
        os.chmod(tmp, 0o755)
        if path.exists():
            path.rmdir()        # an empty directory given as the target
        os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

