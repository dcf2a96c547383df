"""The kind/parent rules live in the storage layer (snapshotter/store.py), so a second
Snapshotter built on that store inherits them without writing a check of its own (issue 13).

`PlainDirs` below is such a second implementation: one plain directory per snapshot, mounts
as kernel overlay options, and not one rule of its own. Every containerd error the first
implementation gives for a kind or parent mistake, it gives too, and a refusal writes nothing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from snapshotter import api
from snapshotter.api import Info, Kind, Mount, Usage
from snapshotter.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from snapshotter.snapshots import Snapshotter
from snapshotter.store import MetaStore, now_micros


class PlainDirs:
    """A minimal Snapshotter on the store: directories `ROOT/<id>`, overlay mounts."""

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._db = MetaStore(root / "meta.db")

    def stat(self, key: str) -> Info:
        with self._db.read() as tx:
            return tx.need(key).info()

    def update(self, info: Info, *fieldpaths: str) -> Info:
        with self._db.write() as tx:
            row = tx.need(info.name)
            tx.set_labels(row.id, dict(info.labels), now_micros())
            return tx.need(info.name).info()

    def usage(self, key: str) -> Usage:
        return Usage(0, 0)

    def mounts(self, key: str) -> list[Mount]:
        with self._db.read() as tx:
            row, *parents = tx.mount_chain(key)
        lowers = ":".join(str(self.root / str(p.id)) for p in parents)
        return [Mount("overlay", "overlay", [f"lowerdir={lowers}",
                                             f"upperdir={self.root / str(row.id)}"])]

    def _create(self, kind: Kind, key: str, parent: str, labels: dict | None) -> list[Mount]:
        with self._db.write() as tx:
            row = tx.create(key, kind, parent, dict(labels or {}), now_micros())
            (self.root / str(row.id)).mkdir()
        return self.mounts(key)

    def prepare(self, key: str, parent: str = "", labels: dict | None = None) -> list[Mount]:
        return self._create(Kind.ACTIVE, key, parent, labels)

    def view(self, key: str, parent: str = "", labels: dict | None = None) -> list[Mount]:
        return self._create(Kind.VIEW, key, parent, labels)

    def commit(self, name: str, key: str, labels: dict | None = None) -> None:
        with self._db.write() as tx:
            tx.commit(name, key, dict(labels or {}), now_micros(), 0, 0)

    def remove(self, key: str) -> None:
        with self._db.write() as tx:
            row = tx.remove(key)
            os.rmdir(self.root / str(row.id))

    def walk(self, *filters: str) -> Iterator[Info]:
        with self._db.read() as tx:
            rows = tx.all()
        yield from (r.info() for r in rows)

    def cleanup(self) -> None:
        pass

    def close(self) -> None:
        self._db.close()


@pytest.fixture(params=["plain-dirs", "pyunion"])
def sn(request, tmp_path) -> Iterator[api.Snapshotter]:
    """The second implementation, and the first one for comparison: same rules, same errors."""
    s: api.Snapshotter = (PlainDirs(tmp_path / "plain") if request.param == "plain-dirs"
                          else Snapshotter(tmp_path / "store"))
    s.prepare("base-a")
    s.commit("base", "base-a")
    s.prepare("active", "base")
    s.view("view", "base")
    yield s
    s.close()


def _state(sn: api.Snapshotter) -> list[tuple]:
    return sorted((i.name, i.kind.value, i.parent, tuple(sorted(i.labels.items())))
                  for i in sn.walk())


def test_the_second_implementation_is_a_snapshotter(sn):
    assert isinstance(sn, api.Snapshotter)
    assert {i.name: i.kind for i in sn.walk()} == {
        "base": Kind.COMMITTED, "active": Kind.ACTIVE, "view": Kind.VIEW}
    assert sn.stat("active").parent == "base"


@pytest.mark.parametrize("call, error, match", [
    (lambda sn: sn.commit("n", "view"), FailedPrecondition, "is view: only an active"),
    (lambda sn: sn.commit("n", "base"), FailedPrecondition, "is committed: only an active"),
    (lambda sn: sn.commit("n", "nope"), NotFound, "does not exist"),
    (lambda sn: sn.commit("base", "active"), AlreadyExists, "'base' already exists"),
    (lambda sn: sn.remove("base"), FailedPrecondition, "with child"),
    (lambda sn: sn.remove("nope"), NotFound, "does not exist"),
    (lambda sn: sn.prepare("k", "active"), InvalidArgument, "not a committed snapshot"),
    (lambda sn: sn.prepare("k", "view"), InvalidArgument, "not a committed snapshot"),
    (lambda sn: sn.view("k", "nope"), NotFound, "parent snapshot 'nope' does not exist"),
    (lambda sn: sn.prepare("view", "base"), AlreadyExists, "'view' already exists"),
    (lambda sn: sn.prepare("base"), AlreadyExists, "'base' already exists"),
    (lambda sn: sn.mounts("base"), FailedPrecondition, "is committed: mount an active"),
    (lambda sn: sn.mounts("nope"), NotFound, "does not exist"),
], ids=["commit view", "commit committed", "commit missing", "commit onto a name", "remove a parent",
        "remove missing", "prepare on active", "prepare on view", "view on missing",
        "key taken by a view", "key taken by a name", "mounts of committed", "mounts of missing"])
def test_every_implementation_inherits_the_kind_and_parent_rules(sn, call, error, match):
    before = _state(sn)
    with pytest.raises(error, match=match):
        call(sn)
    assert _state(sn) == before          # a refused call changes nothing


def test_what_the_rules_allow_works(sn):
    sn.commit("layer2", "active")
    sn.prepare("on-layer2", "layer2")
    assert sn.stat("on-layer2").parent == "layer2"
    sn.remove("view")
    sn.remove("on-layer2")
    sn.remove("layer2")                  # no child any more
    assert {i.name for i in sn.walk()} == {"base"}


def test_the_store_refuses_what_no_api_call_may_do(tmp_path):
    """Straight on the store: no committed snapshot without a commit (or create_committed, whose
    parent rule is create's), and a commit of a key that became another snapshot since its
    checks were read is refused."""
    db = MetaStore(tmp_path / "meta.db")
    try:
        with db.write() as tx, pytest.raises(InvalidArgument):
            tx.create("c", Kind.COMMITTED, "", {}, now_micros())
        with db.write() as tx:
            tx.create("a", Kind.ACTIVE, "", {}, now_micros())
        with db.write() as tx, pytest.raises(InvalidArgument, match="not a committed"):
            tx.create_committed("c", "a", {}, now_micros(), 0, 0)
        with db.read() as tx:
            first = tx.check_commit("n", "a")
        with db.write() as tx:
            tx.remove("a")
            tx.create("a", Kind.ACTIVE, "", {}, now_micros())
        with db.write() as tx, pytest.raises(FailedPrecondition, match="changed during commit"):
            tx.commit("n", "a", {}, now_micros(), 0, 0, expect_id=first.id)
        with db.read() as tx:
            assert [(r.key, r.kind) for r in tx.all()] == [("a", Kind.ACTIVE)]
    finally:
        db.close()
