"""containerd's view of the store: namespaces, and zero unpack (pure logic).

The gRPC server (grpc_server.py) calls this; it holds no gRPC. Snapshots containerd creates live
in the same store as `pyunion snapshot` / `pyunion image`, under keys of their own:

    @containerd/<namespace>/<key as containerd sent it>

so `list` never shows containerd anything it did not create: containerd's garbage collector
removes every backend snapshot it lists and does not reference, so listing the layers of
`pyunion image import` would get them deleted.

The namespace of a new snapshot is the one named in gRPC metadata (`containerd-namespace`) or,
when the call carries none, the one at the head of containerd's key (`<ns>/<seq>/<key>`,
core/metadata/snapshot.go), else the shared space "". containerd 1.6 is not consistent about
the metadata: calls made for `ctr` carry none, calls made by its CRI plugin do (observed), and
its garbage collector lists and removes without one. So a call naming a namespace sees that
namespace's snapshots (and the shared space's); a call naming none sees all, and finds a key
wherever it is unique (containerd's keys are unique across namespaces: they start with one).

Zero unpack follows containerd's remote-snapshotter protocol
(docs/snapshotters/remote-snapshotter.md): a Prepare labelled `containerd.io/snapshot.ref=CHAIN`
where pyunion's own store already holds CHAIN committed (from `pyunion image import`) is answered
by committing a hard-linked copy of that layer, on containerd's parent and with its labels, and
raising AlreadyExists; containerd then finds it with List (by that label and parent), records
it, and neither fetches nor unpacks the layer.
"""

from __future__ import annotations

import hashlib
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
# containerd's backend keys, <ns>/<seq>/<key>, and zero unpack's names, <ns>/pyunion/<chain>
_CONTAINERD_KEY = re.compile(r"^([A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*)/(?:[0-9]+|pyunion)/")


def check_namespace(ns: str) -> str:
    """containerd's namespace rule (pkg/identifiers): alphanumerics joined by . _ -; or ""."""
    if ns and (len(ns) > MAX_NAMESPACE or not _NAMESPACE.match(ns)):
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
    """The Snapshotter API as containerd sees it; `ns` is the call's namespace (None: none)."""

    def __init__(self, sn: Snapshotter):
        self.sn = sn

    # -- key mapping ------------------------------------------------------------------------

    def _resolve(self, ns: str | None, key: str) -> str:
        """The internal key of an existing snapshot of containerd's; NotFound when none.

        A call naming a namespace finds that namespace's snapshots and the shared space's; a
        call naming none looks in the namespace at the head of the key and in the shared space,
        then in whichever namespace holds the key, if only one does.
        """
        if not key:
            raise InvalidArgument("snapshot key must not be empty")
        if ns:
            for space in (check_namespace(ns), ""):
                if self._exists(internal_key(space, key)):
                    return internal_key(space, key)
            raise NotFound(f"snapshot {key!r} does not exist")
        for space in dict.fromkeys((self._space(None, key), "")):   # the usual homes first
            if self._exists(internal_key(space, key)):
                return internal_key(space, key)
        found = [i.name for i in self.sn.walk()
                 if (s := split_internal(i.name)) is not None and s[1] == key]
        if len(found) > 1:
            raise FailedPrecondition(f"snapshot {key!r} exists in several namespaces:"
                                     " name the namespace")
        if not found:
            raise NotFound(f"snapshot {key!r} does not exist")
        return found[0]

    def _exists(self, internal: str) -> bool:
        try:
            self.sn.stat(internal)
        except NotFound:
            return False
        return True

    @staticmethod
    def _space(ns: str | None, key: str) -> str:
        """The namespace a new snapshot goes to (see the module docstring)."""
        if ns:
            return check_namespace(ns)
        m = _CONTAINERD_KEY.match(key)
        return m[1] if m and len(m[1]) <= MAX_NAMESPACE else ""

    def _parent(self, ns: str | None, parent: str) -> str:
        if not parent:
            return ""
        try:
            return self._resolve(ns, parent)
        except NotFound:
            raise NotFound(f"parent snapshot {parent!r} does not exist") from None

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
        if not key:
            raise InvalidArgument("snapshot key must not be empty")
        space = self._space(ns, key)
        parent_key = self._parent(ns, parent)
        labels = dict(labels or {})
        ref = labels.get(SNAPSHOT_REF, "")
        if ref:
            self._zero_unpack(space, ref, parent_key, labels)  # AlreadyExists when it can
        return self.sn.prepare(internal_key(space, key), parent_key, labels)

    def view(self, ns: str | None, key: str, parent: str = "",
             labels: dict[str, str] | None = None) -> list[Mount]:
        if not key:
            raise InvalidArgument("snapshot key must not be empty")
        return self.sn.view(internal_key(self._space(ns, key), key), self._parent(ns, parent),
                            labels)

    def commit(self, ns: str | None, name: str, key: str,
               labels: dict[str, str] | None = None) -> None:
        if not name:
            raise InvalidArgument("snapshot name must not be empty")
        active = self._resolve(ns, key)
        space = split_internal(active)[0]  # type: ignore[index]  # _resolve: internal keys only
        self.sn.commit(internal_key(space, name), active, labels)

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
        ns = check_namespace(ns) if ns else None
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

    def _zero_unpack(self, space: str, ref: str, parent_key: str,
                     labels: dict[str, str]) -> None:
        """Commit pyunion's layer `ref` for containerd and raise AlreadyExists, if we hold it.

        Its name is `<namespace>/pyunion/<chain ID>` (just the chain ID in the shared space):
        unique across namespaces, and never one of containerd's own `<ns>/<seq>/...` keys. If
        that name is taken on another parent, a tag of the parent is added.
        """
        try:
            own = self.sn.stat(ref)
        except NotFound:
            return
        if own.kind is not Kind.COMMITTED:
            return
        base = f"{space}/pyunion/{ref}" if space else ref
        tag = hashlib.sha256(parent_key.encode()).hexdigest()[:16]
        for name in (base, f"{base}@{tag}"):
            key = internal_key(space, name)
            try:
                have = self.sn.stat(key)
            except NotFound:
                try:
                    self.sn.commit_copy(key, parent_key, ref, {**labels, ZERO_UNPACK_LABEL: ref})
                except AlreadyExists:
                    have = self.sn.stat(key)    # a concurrent Prepare of the same layer won
                else:
                    raise AlreadyExists(f"target snapshot {ref!r} already exists") from None
            if have.kind is Kind.COMMITTED and have.parent == parent_key \
                    and have.labels.get(SNAPSHOT_REF) == ref:
                raise AlreadyExists(f"target snapshot {ref!r} already exists")
        # both names taken by something else: containerd unpacks the layer as usual

    @property
    def root(self) -> Path:
        return self.sn.root
