"""The inode table: which merged-view object each FUSE inode number stands for.

An inode number is derived from the object's origin (device, inode) so it survives copy-up and
remounts; the table only holds what the kernel still references (lookup counts), so memory stays
flat however many names are looked up and forgotten.

A node is an object, not a name: it keeps every name it is known by (hard links), so removing or
renaming one name leaves it served through the others. When its object is gone for good (last
name removed) it is marked dead; a new object the disk gives the same inode number while the
kernel still holds the old one gets the next generation, so the kernel never takes it for the
old one (FUSE compares (ino, generation)). A number the kernel has forgotten is unknown to it, so
a node made afresh starts at generation 0 again: every answer about one live object carries one
generation, whichever call or listing gives it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from unionfs.fsapi import ROOT_INO

ROOT = ROOT_INO
UPPER = 0
MAX_NAMES = 64          # names remembered per node beyond its current one (bounded memory)


@dataclass(eq=False, slots=True)
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
    others: list[tuple[Node, str]] = field(default_factory=list)  # other names (hard links)
    generation: int = 0
    dead: bool = False               # its object is gone; the number may be reused

    def names(self) -> list[tuple[Node, str]]:
        """Every (parent, name) this node is known by, the current one first."""
        out = [] if self.parent is None else [(self.parent, self.name)]
        return out + self.others

    def add_name(self, parent: Node, name: str, current: bool = True) -> None:
        """Remember a name of this object; `current` makes it the one calls go through."""
        key = (parent, name)
        if self.is_dir:             # a directory has one name: a rename moves it
            self.parent, self.name = key
            self.others = []
            return
        self.others = [o for o in self.others if o[0] is not parent or o[1] != name]
        if self.parent is not None and (self.parent is not parent or self.name != name):
            if current:
                self.others.insert(0, (self.parent, self.name))
            else:
                self.others.insert(0, key)
                del self.others[MAX_NAMES:]
                return
        self.parent, self.name = key
        del self.others[MAX_NAMES:]

    def drop_name(self, parent: Node, name: str) -> bool:
        """Forget one name; True if the node still has another one to be reached by."""
        self.others = [o for o in self.others if o[0] is not parent or o[1] != name]
        if self.parent is parent and self.name == name:
            if not self.others:
                return False
            self.parent, self.name = self.others.pop(0)
        return True

    def reborn(self, parent: Node, name: str, is_dir: bool) -> None:
        """Its inode number now stands for a new object, known as `name` in `parent`: a new
        generation, none of the old names."""
        self.dead = False
        self.parent, self.name, self.is_dir = parent, name, is_dir
        self.others = []
        self.generation += 1

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
