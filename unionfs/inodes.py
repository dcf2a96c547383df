"""The inode table: which merged-view object each FUSE inode number stands for.

An inode number is derived from the object's origin (device, inode) so it survives copy-up and
remounts; the table only holds what the kernel still references (lookup counts), so memory stays
flat however many names are looked up and forgotten.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyfuse3

ROOT = pyfuse3.ROOT_INODE
UPPER = 0


@dataclass(eq=False)
class Node:
    ino: int
    parent: Node | None
    name: str
    is_dir: bool
    layer: int                       # topmost layer holding it (UPPER or a lower)
    stack: list[int] = field(default_factory=list)   # dirs: layers merging into it, top first
    lookups: int = 0
    gen: int = 0                     # table generation its layer/stack were computed in
    open_count: int = 0

    def path(self) -> str:
        """Merged-view path relative to the root ('' for the root)."""
        parts: list[str] = []
        n: Node | None = self
        while n is not None and n.parent is not None:
            parts.append(n.name)
            n = n.parent
        return "/".join(reversed(parts))

    @property
    def merged(self) -> bool:
        return self.is_dir and len(self.stack) > 1


class InodeNumbers:
    """Maps an origin (st_dev, st_ino) to a stable, unique inode number.

    With every layer on one filesystem the underlying number is used as it is (as overlayfs
    does); otherwise the device's position among the layers' devices goes into the top bits.
    """

    def __init__(self, layer_devs: list[int]):
        self.devs: list[int] = []
        for d in layer_devs:
            if d not in self.devs:
                self.devs.append(d)

    def number(self, dev: int, ino: int) -> int:
        if len(self.devs) == 1 and dev == self.devs[0]:
            n = ino
        else:
            if dev not in self.devs:
                self.devs.append(dev)
            n = (self.devs.index(dev) + 1) << 48 | (ino & ((1 << 48) - 1))
        if n == ROOT:  # never alias the FUSE root
            n = (0xFF << 48) | ino
        return n


class InodeTable:
    def __init__(self) -> None:
        self.nodes: dict[int, Node] = {}
        self.gen = 0

    def __getitem__(self, ino: int) -> Node:
        return self.nodes[ino]

    def get(self, ino: int) -> Node | None:
        return self.nodes.get(ino)

    def add(self, node: Node) -> Node:
        self.nodes[node.ino] = node
        return node

    def invalidate(self) -> None:
        """Forget every cached layer resolution (after a change that moves whole subtrees)."""
        self.gen += 1

    def forget(self, ino: int, count: int) -> None:
        node = self.nodes.get(ino)
        if node is None or ino == ROOT:
            return
        node.lookups -= count
        if node.lookups <= 0 and node.open_count <= 0:
            del self.nodes[ino]
