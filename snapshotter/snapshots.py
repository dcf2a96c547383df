"""A snapshot store with containerd's snapshotter semantics, stacked as pyunion mounts.

Layout under the root (like containerd's overlay snapshotter): `metadata.db` (see store.py) and
`snapshots/<id>/fs` (the snapshot's own changes; an upper, in OCI whiteout form) plus
`snapshots/<id>/work` for active snapshots (the union's workdir, on the same filesystem as the
upper). A snapshot directory is built under a temporary `new-*` name and renamed to `<id>` inside
the metadata transaction, so a crash leaves either nothing or an orphan directory that `cleanup`
removes; removed snapshots are renamed to `rm-<id>` before their metadata commit for the same
reason.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Self

from snapshotter import api
from snapshotter.api import Info, Kind, Mount, Usage
from snapshotter.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    SnapshotterError,
)
from snapshotter.store import MetaStore, Tx, now_micros
from unionfs import mounting
from unionfs.mountinfo import mount_point_path, mounts, top_mount
from unionfs.options import MountConfig, UsageError, parse_option_list
from unionfs.registry import daemon_record
from unionfs.trees import remove_tree

MAX_LABEL_BYTES = 4096  # containerd pkg/labels/validate.go: key + value
MOUNT_TYPE = "fuse3.pyunion"
SUBPROCESS_TIMEOUT_S = 120


def default_root() -> Path:
    """/var/lib/pyunion for root, a per-user data directory otherwise (store_paths decides)."""
    from snapshotter.store_paths import default_store_root
    return default_store_root()


# ---------------------------------------------------------------- filters (pure) ---------------

@dataclass(frozen=True)
class Selector:
    """One `fieldpath[op value]` term of a containerd filter; op None tests presence."""
    fieldpath: tuple[str, ...]
    op: str | None = None
    value: str = ""


_OPS = ("==", "!=", "~=")
_FIELD_STOP = set('.,=!~" \t')


def _quoted(s: str, i: int) -> tuple[str, int]:
    """Parse a double-quoted string starting at s[i] == '"'; return (text, index after)."""
    j = i + 1
    while j < len(s):
        if s[j] == "\\":
            j += 2
            continue
        if s[j] == '"':
            try:
                return json.loads(s[i:j + 1]), j + 1
            except ValueError as e:
                raise InvalidArgument(f"bad quoted string in filter {s!r}: {e}") from None
        j += 1
    raise InvalidArgument(f"unterminated quote in filter {s!r}")


def parse_filter(s: str) -> list[Selector]:
    """Parse one filter string: selectors joined by commas, all of which must match (AND)."""
    sels: list[Selector] = []
    i, n = 0, len(s)
    while True:
        while i < n and s[i].isspace():
            i += 1
        path: list[str] = []
        while True:
            if i < n and s[i] == '"':
                part, i = _quoted(s, i)
            else:
                j = i
                while j < n and s[j] not in _FIELD_STOP:
                    j += 1
                part, i = s[i:j], j
            if not part:
                raise InvalidArgument(f"filter {s!r}: expected a field name at offset {i}")
            path.append(part)
            if i < n and s[i] == ".":
                i += 1
                continue
            break
        while i < n and s[i].isspace():
            i += 1
        op, value = None, ""
        if i < n and s[i] != ",":
            op = s[i:i + 2]
            if op not in _OPS:
                raise InvalidArgument(f"filter {s!r}: expected ==, != or ~= at offset {i}")
            i += 2
            while i < n and s[i].isspace():
                i += 1
            if i < n and s[i] == '"':
                value, i = _quoted(s, i)
            else:
                j = s.find(",", i)
                j = n if j < 0 else j
                value, i = s[i:j].strip(), j
            if op == "~=":
                try:
                    re.compile(value)
                except re.error as e:
                    raise InvalidArgument(f"filter {s!r}: bad regular expression: {e}") from None
        sels.append(Selector(tuple(path), op, value))
        while i < n and s[i].isspace():
            i += 1
        if i >= n:
            return sels
        if s[i] != ",":
            raise InvalidArgument(f"filter {s!r}: unexpected {s[i]!r} at offset {i}")
        i += 1


def _field(info: Info, path: tuple[str, ...]) -> tuple[str, bool]:
    """containerd's snapshot filter adaptor: (value, present) of a field path."""
    head, rest = path[0], path[1:]
    if head == "kind" and not rest:
        return info.kind.value, True
    # name and parent are always present, as in containerd's adaptors: `parent==""` selects the
    # snapshots without a parent (containerd's remote-snapshot lookup sends exactly that).
    if head == "name" and not rest:
        return info.name, True
    if head == "parent" and not rest:
        return info.parent, True
    if head == "labels" and rest:
        key = ".".join(rest)
        return info.labels.get(key, ""), key in info.labels
    return "", False


def selector_matches(sel: Selector, info: Info) -> bool:
    value, present = _field(info, sel.fieldpath)
    if sel.op is None:
        return present
    if sel.op == "==":
        return present and value == sel.value
    if sel.op == "!=":
        return value != sel.value
    return re.search(sel.value, value) is not None


def filters_match(filters: list[list[Selector]], info: Info) -> bool:
    """OR between filter strings, AND within one; no filters match everything."""
    return not filters or any(all(selector_matches(s, info) for s in f) for f in filters)


# ---------------------------------------------------------------- labels (pure) ----------------

def validate_labels(labels: dict[str, str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in (labels or {}).items():
        if not isinstance(k, str) or not isinstance(v, str) or not k:
            raise InvalidArgument(f"invalid label {k!r}={v!r}")
        size = len(k.encode()) + len(v.encode())
        if size > MAX_LABEL_BYTES:
            raise InvalidArgument(f"label {k!r}: key and value length ({size} bytes) greater than"
                                  f" maximum size ({MAX_LABEL_BYTES} bytes)")
        if v:
            out[k] = v
    return out


def updated_labels(current: dict[str, str], given: dict[str, str],
                   fieldpaths: tuple[str, ...]) -> dict[str, str]:
    """containerd's Update: only labels are mutable; an empty value deletes the label."""
    new = dict(current)
    if not fieldpaths:
        new = dict(given)
    for path in fieldpaths:
        if path.startswith("labels."):
            k = path[len("labels."):]
            new[k] = given.get(k, "")
        elif path == "labels":
            new = dict(given)
        else:
            raise InvalidArgument(f"cannot update {path!r} field on snapshot: only labels are"
                                  " mutable")
    return validate_labels(new)


def check_key(key: str, what: str = "key") -> None:
    """A snapshot key or name: not empty, no control characters (a newline would forge lines
    in every listing)."""
    if not key:
        raise InvalidArgument(f"snapshot {what} must not be empty")
    if any(ord(c) < 32 or ord(c) == 127 for c in key):
        raise InvalidArgument(f"snapshot {what} {key!r} contains a control character")


# ---------------------------------------------------------------- disk usage -------------------

def disk_usage(path: Path) -> Usage:
    """Blocks and distinct inodes under `path` (itself included), as continuity's DiskUsage."""
    seen: set[tuple[int, int]] = set()
    size = 0
    stack = [str(path)]
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return Usage(0, 0)
    seen.add((st.st_dev, st.st_ino))
    size += st.st_blocks * 512
    while stack:
        d = stack.pop()
        try:
            it = os.scandir(d)
        except (FileNotFoundError, NotADirectoryError):
            continue
        with it:
            for e in it:
                try:
                    st = e.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                ident = (st.st_dev, st.st_ino)
                if ident not in seen:
                    seen.add(ident)
                    size += st.st_blocks * 512
                if stat.S_ISDIR(st.st_mode):
                    stack.append(e.path)
    return Usage(size, len(seen))


# ---------------------------------------------------------------- the store --------------------

class Snapshotter:
    """containerd's Snapshotter (the spec: snapshotter/api.py) over one store root, in SQLite
    plus one directory per snapshot; safe to use from several processes."""

    def __init__(self, root: str | Path):
        self.root = Path(root).absolute()
        if ":" in str(self.root) or "," in str(self.root):
            raise InvalidArgument(f"store root {self.root} must not contain ':' or ','"
                                  " (it would break lowerdir lists)")
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.snapshots_dir = self.root / "snapshots"
        self.snapshots_dir.mkdir(exist_ok=True, mode=0o700)
        self._db = MetaStore(self.root / "metadata.db")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- helpers --------------------------------------------------------------------------------

    def _dir(self, sid: int) -> Path:
        return self.snapshots_dir / str(sid)

    def _fs(self, sid: int) -> Path:
        return self._dir(sid) / "fs"

    def _mounts(self, tx: Tx, key: str) -> list[Mount]:
        row, *chain = tx.mount_chain(key)      # the store's rule: no mounts of a committed one
        parents = [str(self._fs(p.id)) for p in chain]
        active = row.kind is Kind.ACTIVE
        if not parents:
            return [Mount("bind", str(self._fs(row.id)), ["rw" if active else "ro", "rbind"])]
        if not active and len(parents) == 1:
            return [Mount("bind", parents[0], ["ro", "rbind"])]
        opts = ["lowerdir=" + ":".join(parents)]
        if active:
            opts += [f"upperdir={self._fs(row.id)}", f"workdir={self._dir(row.id) / 'work'}"]
        return [Mount(MOUNT_TYPE, "pyunion", opts)]

    # -- API: the kind/parent rules are the store's (store.Tx), checked in its transactions ----

    def stat(self, key: str) -> Info:
        with self._db.read() as tx:
            return tx.need(key).info()

    def update(self, info: Info, *fieldpaths: str) -> Info:
        with self._db.write() as tx:
            row = tx.need(info.name)
            labels = updated_labels(row.labels, dict(info.labels or {}), fieldpaths)
            tx.set_labels(row.id, labels, now_micros())
            return tx.need(info.name).info()

    def usage(self, key: str) -> Usage:
        with self._db.read() as tx:
            row = tx.need(key)
        if row.kind is Kind.COMMITTED and row.size is not None:
            return Usage(row.size, row.inodes or 0)
        return disk_usage(self._fs(row.id))

    def mounts(self, key: str) -> list[Mount]:
        with self._db.read() as tx:
            return self._mounts(tx, key)

    def prepare(self, key: str, parent: str = "", labels: dict | None = None) -> list[Mount]:
        return self._create(Kind.ACTIVE, key, parent, labels)

    def view(self, key: str, parent: str = "", labels: dict | None = None) -> list[Mount]:
        return self._create(Kind.VIEW, key, parent, labels)

    def _create(self, kind: Kind, key: str, parent: str, labels: dict | None) -> list[Mount]:
        check_key(key, "key")
        labels = validate_labels(labels)
        with self._db.write() as tx:
            row = tx.create(key, kind, parent, labels, now_micros())  # refused: nothing made
            tmp = Path(tempfile.mkdtemp(prefix="new-", dir=self.snapshots_dir))
            try:
                (tmp / "fs").mkdir()
                os.chmod(tmp / "fs", 0o755)
                if kind is Kind.ACTIVE:
                    (tmp / "work").mkdir()
                    os.chmod(tmp / "work", 0o711)
                final = self._dir(row.id)
                if final.exists() or final.is_symlink():
                    # Left by a crash between rename and commit: its id was never committed.
                    _rmtree(final)
                os.rename(tmp, final)
            except BaseException:
                _rmtree(tmp)
                raise
            return self._mounts(tx, key)

    def commit(self, name: str, key: str, labels: dict | None = None) -> None:
        check_key(name, "name")
        labels = validate_labels(labels)
        with self._db.read() as tx:
            row = tx.check_commit(name, key)
        use = disk_usage(self._fs(row.id))  # outside the write lock: it may take a while
        with self._db.write() as tx:
            tx.commit(name, key, labels, now_micros(), use.size, use.inodes, expect_id=row.id)

    def commit_copy(self, name: str, parent: str, source: str,
                    labels: dict | None = None) -> Info:
        """Commit `name` (on `parent`) holding the same changeset as committed `source`.

        The tree is hard-linked, not copied: files share inodes with `source`, directories are
        made anew with their modes, owners, times and xattrs. Both stay independent snapshots
        (removing one never touches the other), and committed layers are never written, so the
        shared inodes never change. It serves containerd's remote-snapshot protocol, which
        needs a layer pyunion already holds under a name and parent of containerd's choosing.
        """
        if not name:
            raise InvalidArgument("snapshot name must not be empty")
        labels = validate_labels(labels)
        with self._db.read() as tx:
            src = tx.need(source)
            if src.kind is not Kind.COMMITTED:
                raise FailedPrecondition(f"snapshot {source!r} is {src.kind.value}, not"
                                         " committed")
            if tx.get(name) is not None:
                raise AlreadyExists(f"snapshot {name!r} already exists")
        tmp = Path(tempfile.mkdtemp(prefix="new-", dir=self.snapshots_dir))
        busy = _hold(tmp)      # built outside the lock: tell cleanup it is not a leftover
        try:
            _run(["cp", "-a", "--link", "--no-target-directory", str(self._fs(src.id)),
                  str(tmp / "fs")])
            with self._db.write() as tx:
                if tx.need(source).id != src.id:
                    raise FailedPrecondition(f"snapshot {source!r} changed during the copy")
                size, inodes = src.size, src.inodes
                if size is None:
                    use = disk_usage(tmp / "fs")
                    size, inodes = use.size, use.inodes
                row = tx.create_committed(name, parent, labels, now_micros(), size, inodes or 0)
                final = self._dir(row.id)
                if final.exists() or final.is_symlink():
                    _rmtree(final)
                os.rename(tmp, final)
                return row.info()
        except BaseException:
            _rmtree(tmp)
            raise
        finally:
            os.close(busy)

    def remove(self, key: str) -> None:
        with self._db.write() as tx:
            row = tx.remove(key)
            src, doomed = self._dir(row.id), self.snapshots_dir / f"rm-{row.id}"
            if src.exists():
                os.rename(src, doomed)
        _rmtree(doomed)  # a failure here leaves rm-<id>, which cleanup removes

    def walk(self, *filters: str) -> Iterator[Info]:
        parsed = [parse_filter(f) for f in filters if f.strip()]
        with self._db.read() as tx:
            infos = [r.info() for r in tx.all()]
        # Rows are read first, so the caller may call back into the store while iterating.
        for info in infos:
            if filters_match(parsed, info):
                yield info

    def cleanup(self) -> None:
        """Remove every snapshot directory without metadata (crash leftovers, removed ones).

        A `new-*` directory another call is still building holds a lock and is skipped.
        """
        with self._db.write() as tx:
            live = {str(i) for i in tx.ids()}
            for entry in os.listdir(self.snapshots_dir):
                if entry not in live and not _in_use(self.snapshots_dir / entry):
                    _rmtree(self.snapshots_dir / entry)

    def close(self) -> None:
        self._db.close()

    # -- extras for the image and run parts -----------------------------------------------------

    def fs_path(self, key: str) -> Path:
        """The `fs` directory of any snapshot (a committed one holds that layer's changeset)."""
        with self._db.read() as tx:
            return self._fs(tx.need(key).id)

    def upper_path(self, key: str) -> Path:
        """The `fs` dir of an ACTIVE snapshot: where a layer is applied / changes land."""
        with self._db.read() as tx:
            row = tx.need(key)
        if row.kind is not Kind.ACTIVE:
            raise FailedPrecondition(f"snapshot {key!r} is {row.kind.value}, not active")
        return self._fs(row.id)

    def lower_paths(self, key: str) -> list[Path]:
        """`fs` dirs of the snapshot's parent chain (itself excluded), top first."""
        with self._db.read() as tx:
            return [self._fs(r.id) for r in tx.chain(tx.need(key).id)[1:]]


def _hold(path: Path) -> int:
    """Lock a directory being built (released by closing the descriptor, or by dying)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def _in_use(path: Path) -> bool:
    """True if a live process holds `_hold`'s lock on this directory."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _rmtree(path: Path) -> None:
    """Remove a tree, also read-only directories a layer may contain; never raises."""
    remove_tree(path, ignore_errors=True)


# ---------------------------------------------------------------- mounting ---------------------

def mount_fstype(target: str | Path) -> str | None:
    """Filesystem type of the topmost mount on `target`, None if nothing is mounted there.
    The mount point is never stat()ed (its daemon may be stopped)."""
    m = top_mount(mount_point_path(str(target)))
    return m.fstype if m else None


def _within_store(path: str, snapshots_dir: Path) -> bool:
    base = os.path.realpath(snapshots_dir)
    return os.path.normpath(path).startswith(base.rstrip("/") + "/")


def store_owns_mount(root: str | Path, target: str | Path) -> bool:
    """The mount on TARGET is one of the snapshot store at ROOT: a pyunion union whose layers
    (from its daemon's record) are all snapshot directories of ROOT, or a bind mount of one."""
    snapshots_dir = Path(root).absolute() / "snapshots"
    entry = top_mount(mount_point_path(str(target)))
    if entry is None or not snapshots_dir.is_dir():
        return False
    if entry.fstype.startswith("fuse"):
        rec = daemon_record(entry.mountpoint)
        layers = (rec or {}).get("layers")
        return isinstance(layers, list) and bool(layers) and all(isinstance(x, str) and _within_store(x, snapshots_dir)
                                    for x in layers)
    # A bind mount: its root, in the terms of its filesystem, lies below the store's directory.
    real = os.path.realpath(snapshots_dir)
    if os.stat(real).st_dev != entry.st_dev:
        return False
    holder = None
    for m in mounts():
        below = real == m.mountpoint or real.startswith(m.mountpoint.rstrip("/") + "/")
        if m.dev == entry.dev and below and (holder is None
                                             or len(m.mountpoint) >= len(holder.mountpoint)):
            holder = m
    if holder is None:
        return False
    in_fs = os.path.normpath(os.path.join(holder.root, os.path.relpath(real, holder.mountpoint)))
    return entry.root == in_fs or entry.root.startswith(in_fs.rstrip("/") + "/")


def _run(cmd: list[str]) -> None:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S,
                           check=False)
    except subprocess.TimeoutExpired:
        raise SnapshotterError(f"{cmd[0]} timed out: {' '.join(cmd)}") from None
    if r.returncode != 0:
        msg = (r.stderr.strip() or r.stdout.strip()).splitlines()
        raise SnapshotterError(f"{' '.join(cmd)}: {msg[-1] if msg else f'exit {r.returncode}'}")


def union_config(m: Mount, target: str | Path) -> MountConfig:
    """The union mount a fuse3.pyunion Mount describes, on TARGET (pure).

    Its options are those of `mount -t fuse3.pyunion` (lowerdir=, upperdir=, workdir=, and any
    other pyunion mount option, e.g. uidmapping=), read one by one by unionfs/options.py."""
    try:
        return parse_option_list(list(m.options), str(target))
    except UsageError as e:
        raise InvalidArgument(f"{m.type} mount: {e}") from None


def mount_snapshot(mounts: list[Mount], target: Path, *, fork: bool = False) -> None:
    """Mount what `prepare`/`view`/`mounts` returned on `target`; returns once it is ready.

    A union mount is started in-process through unionfs/mounting.py (a daemon of its own,
    spawned, so safe from the gRPC server's threads; fork=True lets a one-thread caller fork it
    instead, see mounting.start_daemon); a bind mount through mount(8)."""
    if len(mounts) != 1:
        raise InvalidArgument(f"expected exactly one mount, got {len(mounts)}")
    m = mounts[0]
    if not os.path.isdir(target):
        raise NotFound(f"mount target {target} is not a directory")
    if m.type == "bind":
        _run(["mount", "--rbind" if "rbind" in m.options else "--bind", m.source, str(target)])
        if "ro" in m.options:
            try:
                _run(["mount", "-o", "remount,bind,ro", str(target)])
            except SnapshotterError:
                unmount(target)
                raise
    elif m.type in (MOUNT_TYPE, "fuse.pyunion", "pyunion"):
        cfg = union_config(m, target)
        try:
            mounting.mount(cfg, fork=fork)
        except mounting.BadMountConfig as e:
            raise InvalidArgument(f"cannot mount {target}: {e}") from None
        except mounting.MountError as e:
            raise SnapshotterError(f"cannot mount {target}: {e}") from None
    else:
        raise InvalidArgument(f"unsupported mount type {m.type!r}")


def unmount(target: Path) -> None:
    """Unmount a snapshot mount (pyunion or bind); falls back to a lazy unmount."""
    target = Path(target)
    fstype = mount_fstype(target)
    if fstype is None:
        return
    err: SnapshotterError | None = None
    try:
        if fstype.startswith("fuse"):
            mounting.unmount(str(target))
        else:
            _run(["umount", "-R", str(target)])
    except mounting.MountError as e:
        err = SnapshotterError(f"cannot unmount {target}: {e}")
    except SnapshotterError as e:
        err = e
    if mount_fstype(target) is not None:
        lazy = ["fusermount3", "-uz"] if fstype.startswith("fuse") else ["umount", "-l"]
        subprocess.run([*lazy, str(target)], capture_output=True, timeout=SUBPROCESS_TIMEOUT_S,
                       check=False)
        if mount_fstype(target) is not None:
            raise err or SnapshotterError(f"could not unmount {target}")


if TYPE_CHECKING:   # mypy checks the store against the spec
    _implements: type[api.Snapshotter] = Snapshotter
