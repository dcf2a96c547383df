"""Where a merged-view name lives: probing the layers, resolving names to nodes and
identities (inode numbers from the origin object), and the lower layers' read-once caches.

A part of `union.Union` (one mixin per idea): it uses the state Union.__init__ sets up.
"""

from __future__ import annotations

import errno
import os
import stat

from unionfs import copyup
from unionfs.inodes import ROOT, UPPER, Node
from unionfs.layers import (
    ABSENT,
    HIDDEN,
    NAME_MAX,
    OPAQUE_MARKER,
    Found,
    LayerDir,
    MergedEntry,
    dir_marks,
    is_kernel_whiteout,
    is_meta_name,
    needs_whiteout,
    resolve_name,
    whiteout_name,
)
from unionfs.plumbing import _err, _getter, _join
from unionfs.unionstate import Base, Resolved

PRESENT = Found(True)
DIRECTORY = Found(True, is_dir=True)
OPAQUE_DIRECTORY = Found(True, is_dir=True, opaque=True)



class Resolution(Base):
    _last_lookup: tuple[Node, str, int, Resolved | None, bool] | None   # see _child

    def real(self, layer: int, path: str) -> str:
        """The layer's object at merged-view `path`, named so that any depth works."""
        base = self.layers[layer]
        if base is None:   # the upper of a read-only mount
            raise _err(errno.EROFS)
        if not path:
            return base
        full = f"{base}/{path}"
        return full if len(full) < 1000 else self.deep.path(base, path)

    def _invalidate(self) -> None:
        """Directories of the upper moved or went: cached resolutions and descriptors age."""
        self.table.invalidate()
        upper = self.layers[UPPER]
        if upper:
            self.deep.forget(upper)

    def node_real(self, node: Node) -> str:
        self.refresh(node)
        return self.real(node.layer, node.path())

    def _root_stack(self) -> list[int]:
        answers = []
        for i, p in enumerate(self.layers):
            if p is None:
                continue
            answers.append((i, Found(True, is_dir=True, opaque=self._dir_opaque(p))))
        _, stack = resolve_name(answers)
        return stack

    @staticmethod
    def _dir_marks(path: str) -> tuple[bool, bool]:
        """(opaque by xattr, holds xattr whiteouts) of a layer directory (layers.dir_marks)."""
        try:
            names = set(os.listxattr(path, follow_symlinks=False))
        except OSError:
            return False, False
        return dir_marks(_getter(path, names))

    @classmethod
    def _dir_opaque(cls, path: str) -> bool:
        return os.path.lexists(f"{path}/{OPAQUE_MARKER}") or cls._dir_marks(path)[0]

    def _probe(self, layer: int, dirpath: str, name: str) -> tuple[Found, os.stat_result | None]:
        if layer != UPPER:
            return self._probe_lower(layer, dirpath, name)
        d = self.real(layer, dirpath)
        p = f"{d}/{name}"
        try:
            st = os.lstat(p)
        except (FileNotFoundError, NotADirectoryError):
            # access() answers without raising: cheaper than lexists() for the usual miss
            if os.access(f"{d}/{whiteout_name(name)}", os.F_OK, follow_symlinks=False):
                return HIDDEN, None
            return ABSENT, None
        if is_kernel_whiteout(st.st_mode, st.st_rdev):
            return HIDDEN, None
        if stat.S_ISDIR(st.st_mode):
            return (OPAQUE_DIRECTORY if self._dir_opaque(p) else DIRECTORY), st
        return PRESENT, st

    # Lower layers are read-only and, as with overlayfs, must not change while mounted: their
    # listings and attributes are read once and answered from memory afterwards.

    def _lower_dir(self, layer: int, path: str) -> LayerDir:
        key = (layer, path)
        ld = self._lower_dirs.get(key)
        if ld is None:
            ld = self._lower_dirs[key] = self._scan_dir(layer, path)
        return ld

    def _lower_stat(self, layer: int, path: str) -> os.stat_result:
        key = (layer, path)
        st = self._lower_stats.get(key)
        if st is None:
            st = self._lower_stats[key] = os.lstat(self.real(layer, path))
        return st

    def _probe_lower(self, layer: int, dirpath: str, name: str
                     ) -> tuple[Found, os.stat_result | None]:
        # The hot path of every lookup: dictionaries read inline, answers shared.
        ld = self._lower_dirs.get((layer, dirpath)) or self._lower_dir(layer, dirpath)
        ent = ld.entries.get(name)
        if ent is None:
            return (HIDDEN if name in ld.whiteouts else ABSENT), None
        is_dir, kernel_wh = ent
        if kernel_wh:
            return HIDDEN, None
        path = f"{dirpath}/{name}" if dirpath else name
        st = self._lower_stats.get((layer, path))
        if st is None:
            try:
                st = self._lower_stat(layer, path)
            except OSError:
                return ABSENT, None
        if is_dir:
            return (OPAQUE_DIRECTORY if self._lower_dir(layer, path).opaque else DIRECTORY), st
        return PRESENT, st

    def _resolve_child(self, parent: Node, name: str,
                       answers: list[tuple[int, Found]] | None = None) -> Resolved | None:
        """Resolve `name` in a (refreshed) directory node; None if it is not visible.
        `answers` collects each layer's answer, top first, for callers that need them."""
        ppath = parent.path()
        if answers is None:
            answers = []
        top_st: os.stat_result | None = None
        probe_lower = self._probe_lower
        for layer in parent.stack:   # top first, as far as an answer can matter
            f, st = self._probe(layer, ppath, name) if layer == UPPER else \
                probe_lower(layer, ppath, name)
            if top_st is None:
                top_st = st
            answers.append((layer, f))
            if f.final:
                break
        top, stack = resolve_name(answers)
        if top is None or top_st is None:
            return None
        return self._identify(top, stack, f"{ppath}/{name}" if ppath else name, top_st)

    def _identify(self, layer: int, stack: list[int], path: str, st: os.stat_result) -> Resolved:
        """Give a found object its inode number: its origin's, so copy-up does not change it."""
        if layer == UPPER:
            origin = copyup.get_origin(self.real(UPPER, path))
            ino = self.numbers.number(*(origin or (st.st_dev, st.st_ino)))
        else:
            ino = self.numbers.number(st.st_dev, st.st_ino)
        return Resolved(layer, stack, st, ino)

    def lookup_entry(self, parent: Node, e: MergedEntry, ppath: str | None = None
                     ) -> tuple[Node, os.stat_result]:
        """Like lookup(count=False) for a name from a fresh listing of `parent`: a non-directory
        is already resolved by the listing, so only its own layer is asked. `ppath` is the
        parent's path when the caller has it (one walk up the tree per batch, not per name)."""
        if e.is_dir:
            return self.lookup(parent, e.name, count=False)
        path = _join(parent.path() if ppath is None else ppath, e.name)
        st = os.lstat(self.real(UPPER, path)) if e.layer == UPPER else \
            self._lower_stat(e.layer, path)
        if stat.S_ISDIR(st.st_mode):
            return self.lookup(parent, e.name, count=False)
        r = self._rejoin(parent, e.name, self._identify(e.layer, [e.layer], path, st))
        return self._node_for(parent, e.name, r, False), r.st

    def refresh(self, node: Node) -> None:
        """Bring a node's cached layer/stack up to date after subtree-moving changes."""
        if node.gen == self.table.gen or node.ino == ROOT:
            if node.ino == ROOT and node.gen != self.table.gen:
                node.stack = self._root_stack()
                node.layer = node.stack[0]
                node.gen = self.table.gen
            return
        for parent, name in node.names():
            # Any name it is still known by serves: a hard link's other names outlive this one.
            try:
                self.refresh(parent)
            except OSError:
                node.drop_name(parent, name)
                continue
            r = self._resolve_child(parent, name)
            if r is None or r.ino != node.ino:
                node.drop_name(parent, name)
                continue
            node.add_name(parent, name)
            node.layer, node.stack, node.gen = r.layer, r.stack, self.table.gen
            return
        raise _err(errno.ENOENT)


    def lookup(self, parent: Node, name: str, count: bool = True) -> tuple[Node, os.stat_result]:
        if name == ".":
            return self._ref(parent, count), self.stat(parent)
        if name == "..":
            p = parent.parent or parent
            return self._ref(p, count), self.stat(p)
        # (up to 63 characters cannot make more than NAME_MAX bytes: no encoding needed)
        if len(name) > NAME_MAX // 4 and len(name.encode(errors="surrogateescape")) > NAME_MAX:
            raise _err(errno.ENAMETOOLONG)   # statfs says NAME_MAX: room for a whiteout
        if is_meta_name(name):
            raise _err(errno.ENOENT)
        if parent.gen != self.table.gen:
            self.refresh(parent)
        answers: list[tuple[int, Found]] = []
        r = self._resolve_child(parent, name, answers)
        if r is not None and r.st.st_nlink > 1:   # (only a lower hard link can need it)
            r = self._rejoin(parent, name, r)
        if count:   # only what the kernel is told: a lookup inside a change may go stale
            self._last_lookup = (parent, name, self.mutations, r, bool(answers)
                                 and answers[0][0] == UPPER and answers[0][1].whiteout)
        if r is None:
            raise _err(errno.ENOENT)
        return self._node_for(parent, name, r, count), r.st

    def _child(self, parent: Node, name: str) -> tuple[Resolved | None, bool]:
        """(what `name` shows in `parent`, or None; whether an upper whiteout hides it) for a
        call about to change it. The kernel looks a name up just before it creates or removes
        it: when nothing changed since (the mutation count), that lookup's answer stands, as the
        lowers are fixed while mounted and the upper changes only through the mount."""
        last = self._last_lookup
        if (last is not None and last[0] is parent and last[1] == name
                and last[2] == self.mutations and parent.gen == self.table.gen):
            return last[3], last[4]
        self.refresh(parent)
        answers: list[tuple[int, Found]] = []
        r = self._resolve_child(parent, name, answers)
        return r, bool(answers) and answers[0][0] == UPPER and answers[0][1].whiteout

    def _ref(self, node: Node, count: bool) -> Node:
        if count:
            node.lookups += 1
        return node

    def _node_for(self, parent: Node, name: str, r: Resolved, count: bool) -> Node:
        """The table's node for a resolved name; a lookup the kernel does not count leaves
        the table as it was, so nothing accumulates there without a matching forget."""
        is_dir = stat.S_ISDIR(r.st.st_mode)
        node = self.table.nodes.get(r.ino)
        if node is None:
            node = Node(r.ino, parent, name, is_dir, r.layer)
            if count:
                self.table.add(node)
        else:
            if node.dead or node.is_dir != is_dir:
                node.reborn(parent, name, is_dir)   # the disk gave a new object this number
            else:
                node.add_name(parent, name)
            node.layer = r.layer
        node.stack = r.stack
        node.gen = self.table.gen
        if count:
            node.lookups += 1
        return node

    def ref(self, node: Node) -> None:
        """Count one kernel reference (e.g. a readdirplus entry) on the table's node for it."""
        cur = self.table.get(node.ino)
        if cur is None:
            cur = self.table.add(node)
        cur.lookups += 1

    def stat(self, node: Node) -> os.stat_result:
        if node.dead:
            # Its last name is gone (an open, unlinked file): the name may already belong to
            # a new object, so only an open descriptor tells about this one.
            fd = self._any_fd(node)
            if fd is not None:
                return os.fstat(fd)
            raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))
        try:
            self.refresh(node)
            if node.layer != UPPER:
                return self._lower_stat(node.layer, node.path())
            return os.lstat(self.real(UPPER, node.path()))
        except OSError:
            fd = self._any_fd(node)
            if fd is None:
                raise
            return os.fstat(fd)

    def _any_fd(self, node: Node) -> int | None:
        for h in self.handles.values():
            if h.node is node:
                return h.fd
        return None

    def readlink(self, node: Node) -> str:
        return os.readlink(self.node_real(node))

    def _resolve_path(self, path: str) -> tuple[Node, Resolved] | None:
        """Resolve a merged-view path without touching the inode table."""
        cur = self.table[ROOT]
        self.refresh(cur)
        parts = path.split("/")
        for i, comp in enumerate(parts):
            r = self._resolve_child(cur, comp)
            if r is None:
                return None
            if i == len(parts) - 1:
                return cur, r
            if not stat.S_ISDIR(r.st.st_mode):
                return None
            cur = Node(r.ino, cur, comp, True, r.layer, r.stack, gen=self.table.gen)
        return None

    def _lower_shows(self, parent: Node, name: str) -> bool:
        """Whether any lower layer under the parent's merge stack would show `name`."""
        ppath = parent.path()
        answers = (self._probe(layer, ppath, name)[0] for layer in parent.stack if layer != UPPER)
        return needs_whiteout(answers)
