"""containerd's view of the store: per-namespace key spaces, and zero unpack (pure logic).

The gRPC server (grpc_server.py) calls this; it holds no gRPC. Snapshots containerd creates live
in the same store as `pyunion snapshot` / `pyunion image`, under keys of their own:

    @containerd/<namespace>/<key as containerd sent it>

so a namespace sees only its own snapshots, and `list` never shows containerd anything it did
not create: containerd's garbage collector removes every backend snapshot it lists and does not
reference, so listing `pyunion image import`'s layers would get them deleted.

containerd sends the namespace as gRPC metadata (`containerd-namespace`) on every call made for
a client, but its garbage collector lists and removes without one (core/metadata/snapshot.go):
then `list` spans all namespaces and a key is looked up in whichever namespace holds it (keys
containerd makes, `<ns>/<seq>/<key>`, are unique across namespaces). Creating a snapshot needs a
namespace.

Zero unpack follows containerd's remote-snapshotter protocol
(docs/snapshotters/remote-snapshotter.md): a Prepare labelled `containerd.io/snapshot.ref=CHAIN`
where pyunion's own store already holds CHAIN committed (from `pyunion image import`) is answered
by committing CHAIN, with containerd's parent and labels, in the namespace and raising
AlreadyExists; containerd then finds it with List and neither fetches nor unpacks the layer.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from snapshotter.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from snapshotter.snapshots import Info, Kind, Mount, Snapshotter, Usage, filters_match, parse_filter

PREFIX = "@containerd/"
SNAPSHOT_REF = "containerd.io/snapshot.ref"
ZERO_UNPACK_LABEL = "pyunion.io/zero-unpack"     # on a snapshot made by zero unpack: its source
_NAMESPACE = re.compile(r"^[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*$")  # containerd's identifiers
MAX_NAMESPACE = 76


def check_namespace(ns: str) -> str:
    """containerd's namespace rule (pkg/identifiers): alphanumerics joined by . _ -."""
    if not ns or len(ns) > MAX_NAMESPACE or not _NAMESPACE.match(ns):
        raise InvalidArgument(f"namespace {ns!r}: invalid namespace name")
    return ns


def internal_key(ns: str, key: str) -> str:
    return f"{PREFIX}{ns}/{key}"


def split_internal(key: str) -> tuple[str, str] | None:
    """(namespace, containerd's key) of an internal key; None for pyunion's own snapshots."""
    if not key.startswith(PREFIX):
        return None
    ns, sep, rest = key[len(PREFIX):].partition("/")
    return (ns, rest) if sep else None


class NamespacedSnapshots:
    """The Snapshotter API as containerd sees it through one namespace (None: all of them)."""

    def __init__(self, sn: Snapshotter):
        self.sn = sn

    # -- key mapping ------------------------------------------------------------------------

    def _resolve(self, ns: str | None, key: str) -> str:
        """The internal key of an existing snapshot; NotFound when none or not containerd's."""
        if not key:
            raise InvalidArgument("snapshot key must not be empty")
        if ns is not None:
            return internal_key(check_namespace(ns), key)
        found = [i.name for i in self.sn.walk()
                 if (s := split_internal(i.name)) is not None and s[1] == key]
        if not found:
            raise NotFound(f"snapshot {key!r} does not exist")
        if len(found) > 1:
            raise FailedPrecondition(f"snapshot {key!r} exists in several namespaces:"
                                     " name the namespace")
        return found[0]

    @staticmethod
    def _required(ns: str | None) -> str:
        if ns is None:
            raise FailedPrecondition("namespace is required: set containerd-namespace metadata")
        return check_namespace(ns)

    @staticmethod
    def _outward(info: Info) -> Info:
        """An Info with containerd's own names for the snapshot and its parent."""
        own = split_internal(info.name)
        assert own is not None
        parent = split_internal(info.parent) if info.parent else None
        return Info(info.kind, own[1], parent[1] if parent else "", dict(info.labels),
                    info.created, info.updated)

    # -- API ----------------------------------------------------------------------------------

    def stat(self, ns: str | None, key: str) -> Info:
        return self._outward(self.sn.stat(self._resolve(ns, key)))

    def usage(self, ns: str | None, key: str) -> Usage:
        return self.sn.usage(self._resolve(ns, key))

    def mounts(self, ns: str | None, key: str) -> list[Mount]:
        return self.sn.mounts(self._resolve(ns, key))

    def prepare(self, ns: str | None, key: str, parent: str = "",
                labels: dict[str, str] | None = None) -> list[Mount]:
        ns = self._required(ns)
        labels = dict(labels or {})
        ref = labels.get(SNAPSHOT_REF, "")
        if ref:
            self._zero_unpack(ns, ref, parent, labels)   # raises AlreadyExists when it can
        return self.sn.prepare(internal_key(ns, key), self._parent(ns, parent), labels)

    def view(self, ns: str | None, key: str, parent: str = "",
             labels: dict[str, str] | None = None) -> list[Mount]:
        ns = self._required(ns)
        return self.sn.view(internal_key(ns, key), self._parent(ns, parent), labels)

    def commit(self, ns: str | None, name: str, key: str,
               labels: dict[str, str] | None = None) -> None:
        ns = self._required(ns)
        if not name:
            raise InvalidArgument("snapshot name must not be empty")
        self.sn.commit(internal_key(ns, name), self._resolve(ns, key), labels)

    def remove(self, ns: str | None, key: str) -> None:
        self.sn.remove(self._resolve(ns, key))

    def update(self, ns: str | None, info: Info, *fieldpaths: str) -> Info:
        internal = self._resolve(ns, info.name)
        inner = Info(info.kind, internal, info.parent, dict(info.labels or {}), info.created,
                     info.updated)
        return self._outward(self.sn.update(inner, *fieldpaths))

    def walk(self, ns: str | None, *filters: str) -> Iterator[Info]:
        """containerd's snapshots in `ns` (all namespaces for None) matching any filter."""
        parsed = [parse_filter(f) for f in filters if f.strip()]
        if ns is not None:
            check_namespace(ns)
        for info in self.sn.walk():
            own = split_internal(info.name)
            if own is None or (ns is not None and own[0] != ns):
                continue
            out = self._outward(info)
            if filters_match(parsed, out):
                yield out

    def cleanup(self) -> None:
        self.sn.cleanup()

    def close(self) -> None:
        self.sn.close()

    # -- helpers ------------------------------------------------------------------------------

    @staticmethod
    def _parent(ns: str, parent: str) -> str:
        return internal_key(ns, parent) if parent else ""

    def _zero_unpack(self, ns: str, ref: str, parent: str, labels: dict[str, str]) -> None:
        """Commit pyunion's layer `ref` as containerd's and raise AlreadyExists, if we hold it."""
        name = internal_key(ns, ref)
        try:
            have = self.sn.stat(name)
        except NotFound:
            have = None
        if have is not None:
            if have.kind is Kind.COMMITTED and have.parent == self._parent(ns, parent):
                raise AlreadyExists(f"target snapshot {ref!r} already exists")
            return      # something else holds that name: unpack as usual
        try:
            own = self.sn.stat(ref)
        except NotFound:
            return
        if own.kind is not Kind.COMMITTED:
            return
        try:
            self.sn.commit_copy(name, self._parent(ns, parent), ref,
                                {**labels, ZERO_UNPACK_LABEL: ref})
        except AlreadyExists:
            pass        # a concurrent Prepare of the same layer committed it first
        raise AlreadyExists(f"target snapshot {ref!r} already exists")

    @property
    def root(self) -> Path:
        return self.sn.root
