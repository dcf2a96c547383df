"""The snapshotter interface: what any snapshot store of pyunion's must do, as containerd's
snapshots/snapshotter.go defines it. These docstrings are the spec; `snapshots.Snapshotter`
(SQLite + directories) implements it, and the containerd proxy (`proxy_store`, `grpc_server`)
and the image store use nothing else of it but a few extras named there.

Model. A snapshot is a directory of changes with a kind:
- *committed*: immutable, a layer; only committed snapshots can be parents.
- *active*: writable, made by `prepare` on a committed parent (or on nothing); `commit` turns
  it into a committed snapshot under a new name.
- *view*: read-only, made by `view`; never committed.
Keys (of active snapshots and views) and names (of committed ones) share one key space. The
parent chain of a snapshot is fixed when it is made. What to mount for an active snapshot or a
view is a list of mounts: the parents as lowers, the snapshot's own directory as the upper.

Errors (snapshotter.errors, containerd's errdefs): NotFound, AlreadyExists, InvalidArgument,
FailedPrecondition. A refused call changes nothing.

The kind and parent rules are not checked here but by the storage layer (snapshotter/store.py:
`Tx.create`, `commit`, `mount_chain`, `remove`), inside the transaction that writes, so every
implementation built on that store inherits them.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, runtime_checkable


class Kind(enum.Enum):
    VIEW = "view"
    ACTIVE = "active"
    COMMITTED = "committed"


@dataclass
class Info:
    """What `stat` and `walk` report. `name` is the key of an active snapshot or view, the name
    of a committed one; `parent` is the parent's name ("" for none)."""
    kind: Kind
    name: str
    parent: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    created: datetime | None = None
    updated: datetime | None = None


@dataclass
class Usage:
    """Disk used by a snapshot's own directory, parents excluded: bytes and distinct inodes."""
    size: int
    inodes: int


@dataclass
class Mount:
    """One mount, as containerd's mount.Mount: `mount -t TYPE SOURCE TARGET -o OPTIONS`."""
    type: str
    source: str
    options: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"type": self.type, "source": self.source, "options": list(self.options)}


@runtime_checkable
class Snapshotter(Protocol):
    """containerd's Snapshotter (core/snapshots/snapshotter.go), method for method."""

    def stat(self, key: str) -> Info:
        """Info of the snapshot KEY (a key or a committed name), of any kind.
        NotFound when there is none."""
        ...

    def update(self, info: Info, *fieldpaths: str) -> Info:
        """Change what may change of snapshot INFO.name: only its labels. FIELDPATHS select
        what is replaced (`labels` all of them, `labels.K` one); none means every label given.
        Returns the new info. NotFound for a missing snapshot, InvalidArgument for any other
        field or labels over the size limit."""
        ...

    def usage(self, key: str) -> Usage:
        """Disk used by snapshot KEY itself, parents excluded. For a committed snapshot it is
        measured once, at commit; for an active one, now (it may take a while)."""
        ...

    def mounts(self, key: str) -> list[Mount]:
        """The mounts that present active snapshot or view KEY; may be called any number of
        times. FailedPrecondition for a committed snapshot: prepare or view it instead."""
        ...

    def prepare(self, key: str, parent: str = "", labels: dict | None = None) -> list[Mount]:
        """Make an active snapshot KEY on committed PARENT ("" for an empty one) and return
        its mounts. AlreadyExists when KEY is a key or name already; NotFound for a missing
        parent; InvalidArgument for a parent that is not committed."""
        ...

    def view(self, key: str, parent: str = "", labels: dict | None = None) -> list[Mount]:
        """As `prepare`, but read-only: the mounts present PARENT and nothing can be written;
        a view can never be committed."""
        ...

    def commit(self, name: str, key: str, labels: dict | None = None) -> None:
        """Turn active snapshot KEY into committed snapshot NAME, same parent; KEY is gone
        afterwards and NAME can be a parent. LABELS replace the active snapshot's labels.
        AlreadyExists when NAME is taken; NotFound for a missing KEY; FailedPrecondition when
        KEY is a view or committed."""
        ...

    def remove(self, key: str) -> None:
        """Remove snapshot KEY of any kind, with its directory. FailedPrecondition while any
        snapshot has it as parent; NotFound when there is none."""
        ...

    def walk(self, *filters: str) -> Iterator[Info]:
        """Every snapshot matching any of FILTERS (containerd filter syntax; within one string
        the comma-separated selectors must all match), or every snapshot when none is given.
        The caller may call back into the store while iterating."""
        ...

    def cleanup(self) -> None:
        """Remove what no snapshot uses any more (containerd's optional Cleaner): leftovers of
        crashes and of removals. Never touches a snapshot another call is still making."""
        ...

    def close(self) -> None:
        """Release the store; the object is unusable afterwards."""
        ...
