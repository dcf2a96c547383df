"""What the mixins of `unionfs.union.Union` share: the records they pass one another, and the
state and methods they use of one another, declared once for the checker.

Union is put together from one mixin per idea (resolution.py, listing.py, hardlinks.py,
attributes.py, creation.py, renaming.py, handles.py); each uses state that Union.__init__ sets
up and methods that other mixins define. While type checking, each mixin derives from this
protocol, so mypy checks every such use against the declarations here and Union against all of
them; at run time the mixins stay plain classes (see `Base`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from unionfs.deeppath import DeepPaths
    from unionfs.fsapi import Notifier
    from unionfs.inodes import InodeNumbers, InodeTable, Node
    from unionfs.layers import Found, LayerDir, MergedEntry
    from unionfs.ownership import IdMap, Override


@dataclass
class Resolved:
    """Where a name lives right now: its top layer, merge stack and lstat of the top object."""

    layer: int
    stack: list[int]
    st: os.stat_result
    ino: int


@dataclass
class Handle:
    fd: int
    node: Node
    layer: int          # where the fd points: a reader re-opens once the node is copied up


class UnionState(Protocol):
    # -- set up by Union.__init__
    readonly: bool
    override: bool
    uidmap: IdMap
    gidmap: IdMap
    _plain_ids: bool
    layers: list[str | None]
    workdir: str | None
    work: str
    fsync: bool
    numbers: InodeNumbers
    table: InodeTable
    deep: DeepPaths
    notifier: Notifier | None
    handles: dict[int, Handle]
    mutations: int
    _lower_overrides: dict[tuple[int, str], Override | None]
    _nlinks: dict[tuple[int, int], tuple[int, int]]
    _rejoin_checked: dict[tuple[int, int], int]
    _hardlink_maps: dict[int, dict[tuple[int, int], list[str]]]
    _lower_dirs: dict[tuple[int, str], LayerDir]
    _lower_stats: dict[tuple[int, str], os.stat_result]
    _last_lookup: tuple[Node, str, int, Resolved | None, bool] | None

    # -- defined by one part, used by others
    def _changed_behind(self, *inos: int) -> None: ...

    def _check_writable(self) -> None: ...

    def _child(self, parent: Node, name: str) -> tuple[Resolved | None, bool]: ...

    def _clear_whiteout(self, updir: str, name: str) -> bool: ...

    def copy_up(self, node: Node, data: bool = True) -> None: ...

    @staticmethod
    def _dir_marks(path: str) -> tuple[bool, bool]: ...

    def _identify(self, layer: int, stack: list[int], path: str, st: os.stat_result) -> Resolved: ...

    def _invalidate(self) -> None: ...

    def is_empty(self, node: Node) -> bool: ...

    def _keep_ownership(self, src: str, st: os.stat_result, tmp: str) -> None: ...

    def _link_peers(self, layer: int, path: str, st: os.stat_result, copy: str) -> None: ...

    def list_dir(self, node: Node) -> list[MergedEntry]: ...

    def lookup(self, parent: Node, name: str, count: bool = True) -> tuple[Node, os.stat_result]: ...

    def _lower_dir(self, layer: int, path: str) -> LayerDir: ...

    def _lower_shows(self, parent: Node, name: str) -> bool: ...

    def _make_whiteout(self, updir: str, name: str) -> None: ...

    def _name_gone(self, parent: Node, name: str, r: Resolved) -> None: ...

    def _node_for(self, parent: Node, name: str, r: Resolved, count: bool) -> Node: ...

    def node_real(self, node: Node) -> str: ...

    def _own(self, path: str, uid: int, gid: int, updir: str, mode: int | None = None,
             st: os.stat_result | None = None) -> bool: ...

    def private(self, name: str) -> bool: ...

    def real(self, layer: int, path: str) -> str: ...

    def refresh(self, node: Node) -> None: ...

    def _rejoin(self, parent: Node, name: str, r: Resolved) -> Resolved: ...

    def _resolve_child(self, parent: Node, name: str,
                       answers: list[tuple[int, Found]] | None = None) -> Resolved | None: ...

    def _resolve_path(self, path: str) -> tuple[Node, Resolved] | None: ...

    @staticmethod
    def _restore_times(path: str, st: os.stat_result) -> None: ...

    def _scan_dir(self, layer: int, path: str) -> LayerDir: ...

    def _set_owner(self, path: str, st: os.stat_result, uid: int, gid: int, mode: int,
                   rdev: int = 0) -> bool: ...

    def _tmp_name(self) -> str: ...

    def _upper_dir(self, parent: Node) -> str: ...


if TYPE_CHECKING:
    Base = UnionState
else:
    Base = object
