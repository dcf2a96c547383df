"""The union itself: overlay semantics over real directories, as plain synchronous calls.

Every method takes and returns inode-table nodes and raises OSError with the errno overlayfs
would give; `operations.py` only translates these to pyfuse3. Nothing here knows about FUSE
requests, so the whole union can be driven (and reasoned about) without a mount.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass

from unionfs import copyup
from unionfs.deeppath import DeepPaths
from unionfs.inodes import ROOT, UPPER, InodeNumbers, InodeTable, Node
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
    is_private_xattr,
    is_xattr_whiteout,
    merge_listing,
    needs_whiteout,
    resolve_name,
    whited_out_name,
    whiteout_name,
)
from unionfs.libc import RENAME_EXCHANGE, RENAME_NOREPLACE, renameat2
from unionfs.ownership import (
    OVERRIDE_XATTRS,
    IdMap,
    Override,
    read_override,
    write_override,
)


def _err(code: int, what: str = "") -> OSError:
    return OSError(code, os.strerror(code), what)


@dataclass
class Resolved:
    """Where a name lives right now: its top layer, merge stack and lstat of the top object."""

    layer: int
    stack: list[int]
    st: os.stat_result
    ino: int


class Union:
    def __init__(self, upper: str | None, lowers: list[str], workdir: str | None,
                 fsync: bool = True, override: bool | None = None,
                 uidmap: IdMap | None = None, gidmap: IdMap | None = None):
        self.readonly = upper is None
        # Where chown cannot work (not root, or a user namespace mapping few ids), owners and
        # modes are recorded in the override_stat xattr and presented from it.
        self.override = needs_override() if override is None else override
        self.uidmap = uidmap or IdMap()
        self.gidmap = gidmap or IdMap()
        self._plain_ids = not (self.override or self.uidmap.ranges or self.gidmap.ranges)
        self._lower_overrides: dict[tuple[int, str], Override | None] = {}
        self.layers: list[str | None] = [upper] + list(lowers)
        self.workdir = workdir
        self.fsync = fsync
        devs = [os.stat(p).st_dev for p in self.layers if p]
        self.numbers = InodeNumbers(devs)
        self.table = InodeTable()
        self.deep = DeepPaths()
        self.notifier = None     # fsapi.Notifier, once the transport has one
        self.handles: dict[int, Handle] = {}
        self.mutations = 0
        # Visible-name counts of lower hardlinks, each with the mutation count it was taken at.
        self._nlinks: dict[tuple[int, int], tuple[int, int]] = {}
        # Lower hardlink groups found whole (see _rejoin), with the mutation count of the check.
        self._rejoin_checked: dict[tuple[int, int], int] = {}
        self._hardlink_maps: dict[int, dict[tuple[int, int], list[str]]] = {}
        self._lower_dirs: dict[tuple[int, str], LayerDir] = {}
        self._lower_stats: dict[tuple[int, str], os.stat_result] = {}
        self._tmp = itertools.count()
        if workdir:
            self.work = os.path.join(workdir, "work")
            if os.path.isdir(self.work):
                shutil.rmtree(self.work)  # leftovers of a crash: never visible, now gone
            os.makedirs(self.work, 0o700, exist_ok=True)
        root_stack = self._root_stack()
        st = os.lstat(self.layers[root_stack[0]])
        self.table.add(Node(ROOT, None, "", True, root_stack[0], root_stack, lookups=1,
                            generation=0))
        self.root_st = st

    # ---- paths and layer probing -------------------------------------------------------

    def real(self, layer: int, path: str) -> str:
        """The layer's object at merged-view `path`, named so that any depth works."""
        base = self.layers[layer]
        if not path:
            return base
        full = f"{base}/{path}"
        return full if len(full) < 1000 else self.deep.path(base, path)

    def _invalidate(self) -> None:
        """Directories of the upper moved or went: cached resolutions and descriptors age."""
        self.table.invalidate()
        if self.layers[UPPER]:
            self.deep.forget(self.layers[UPPER])

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
            if os.path.lexists(f"{d}/{whiteout_name(name)}"):
                return HIDDEN, None
            return ABSENT, None
        if is_kernel_whiteout(st.st_mode, st.st_rdev):
            return HIDDEN, None
        if stat.S_ISDIR(st.st_mode):
            return Found(True, is_dir=True, opaque=self._dir_opaque(p)), st
        return Found(True), st

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
        ld = self._lower_dir(layer, dirpath)
        ent = ld.entries.get(name)
        if ent is None:
            return (HIDDEN if name in ld.whiteouts else ABSENT), None
        is_dir, kernel_wh = ent
        if kernel_wh:
            return HIDDEN, None
        path = _join(dirpath, name)
        try:
            st = self._lower_stat(layer, path)
        except OSError:
            return ABSENT, None
        if is_dir:
            return Found(True, is_dir=True, opaque=self._lower_dir(layer, path).opaque), st
        return Found(True), st

    def _resolve_child(self, parent: Node, name: str,
                       answers: list[tuple[int, Found]] | None = None) -> Resolved | None:
        """Resolve `name` in a (refreshed) directory node; None if it is not visible.
        `answers` collects each layer's answer, top first, for callers that need them."""
        ppath = parent.path()
        if answers is None:
            answers = []
        top_st: os.stat_result | None = None

        def gen() -> Iterator[tuple[int, Found]]:
            nonlocal top_st
            for layer in parent.stack:
                f, st = self._probe(layer, ppath, name)
                if top_st is None and st is not None:
                    top_st = st
                answers.append((layer, f))
                yield layer, f

        top, stack = resolve_name(gen())
        if top is None or top_st is None:
            return None
        return self._identify(top, stack, _join(ppath, name), top_st)

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

    # ---- lookups ---------------------------------------------------------------------

    def lookup(self, parent: Node, name: str, count: bool = True) -> tuple[Node, os.stat_result]:
        if name == ".":
            return self._ref(parent, count), self.stat(parent)
        if name == "..":
            p = parent.parent or parent
            return self._ref(p, count), self.stat(p)
        if len(name.encode(errors="surrogateescape")) > NAME_MAX:
            raise _err(errno.ENAMETOOLONG)   # statfs says NAME_MAX: room for a whiteout
        if is_meta_name(name):
            raise _err(errno.ENOENT)
        self.refresh(parent)
        r = self._resolve_child(parent, name)
        if r is None:
            raise _err(errno.ENOENT)
        r = self._rejoin(parent, name, r)
        return self._node_for(parent, name, r, count), r.st

    def _ref(self, node: Node, count: bool) -> Node:
        if count:
            node.lookups += 1
        return node

    def _node_for(self, parent: Node, name: str, r: Resolved, count: bool) -> Node:
        """The table's node for a resolved name; a lookup the kernel does not count leaves
        the table as it was, so nothing accumulates there without a matching forget."""
        is_dir = stat.S_ISDIR(r.st.st_mode)
        node = self.table.get(r.ino)
        if node is None:
            node = Node(r.ino, parent, name, is_dir, r.layer)
            if count:
                self.table.add(node)
        else:
            if node.dead or node.is_dir != is_dir:
                node.reborn()   # the disk gave a new object this number: a new generation
            node.add_name(parent, name)
            node.is_dir = is_dir
            node.layer = r.layer
        node.stack = r.stack
        node.gen = self.table.gen
        return self._ref(node, count)

    def ref(self, node: Node) -> None:
        """Count one kernel reference (e.g. a readdirplus entry) on the table's node for it."""
        cur = self.table.get(node.ino)
        if cur is None:
            cur = self.table.add(node)
        cur.lookups += 1

    def stat(self, node: Node) -> os.stat_result:
        try:
            real = self.node_real(node)
            if node.layer != UPPER:
                return self._lower_stat(node.layer, node.path())
            return os.lstat(real)
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

    def nlink(self, node: Node, st: os.stat_result) -> int:
        """Merged directories report 1 link, as overlayfs does (no count would be right); a
        lower hardlink counts the names that still show it, as a plain filesystem would."""
        if node.merged:
            return 1
        if st.st_nlink > 1 and node.layer != UPPER and not node.is_dir:
            key = (st.st_dev, st.st_ino)
            peers = self._hardlinks(node.layer).get(key, [])
            if len(peers) <= 1:     # the other links are outside this layer (e.g. a shared store)
                return 1
            hit = self._nlinks.get(key)
            if hit is not None and hit[0] == self.mutations:   # nothing changed since
                return hit[1]
            visible = 0
            for peer in peers:
                found = self._resolve_path(peer)
                if found and (found[1].st.st_dev, found[1].st.st_ino) == key:
                    visible += 1
            self._nlinks[key] = (self.mutations, max(visible, 1))
            return max(visible, 1)
        return st.st_nlink

    def readlink(self, node: Node) -> str:
        return os.readlink(self.node_real(node))

    # ---- directory listing ---------------------------------------------------------

    def _layer_dir(self, layer: int, path: str) -> LayerDir:
        return self._scan_dir(layer, path) if layer == UPPER else self._lower_dir(layer, path)

    def _scan_dir(self, layer: int, path: str) -> LayerDir:
        ld = LayerDir(layer)
        lower = layer != UPPER
        d = self.real(layer, path)
        try:
            it = os.scandir(d)
        except (FileNotFoundError, NotADirectoryError):
            return ld
        marked_opaque, xwhiteouts = self._dir_marks(d)
        xwhiteouts = xwhiteouts and lower     # the upper is written in the OCI form only
        with it:
            for e in it:
                name = e.name
                if name == OPAQUE_MARKER:
                    ld.opaque = True
                    continue
                hidden = whited_out_name(name)
                if hidden is not None:
                    ld.whiteouts.add(hidden)
                    continue
                if is_meta_name(name):
                    continue
                kwh = False
                is_dir = e.is_dir(follow_symlinks=False)
                if lower:
                    # Stat now, relative to the open directory: cheaper than a path lookup
                    # later, and a listing's entries are usually all wanted.
                    try:
                        st = e.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    self._lower_stats[(layer, _join(path, name))] = st
                    kwh = is_kernel_whiteout(st.st_mode, st.st_rdev) or (
                        xwhiteouts and is_xattr_whiteout(
                            st.st_mode, st.st_size, _getter(f"{d}/{name}")))
                elif not (is_dir or e.is_file(follow_symlinks=False) or e.is_symlink()):
                    try:  # a special file: maybe a kernel-overlay whiteout
                        kwh = is_kernel_whiteout(*_mode_rdev(e.stat(follow_symlinks=False)))
                    except OSError:
                        continue
                ld.entries[name] = (is_dir, kwh)
        ld.opaque = ld.opaque or marked_opaque
        return ld

    def list_dir(self, node: Node) -> list[MergedEntry]:
        self.refresh(node)
        path = node.path()
        layers = [self._layer_dir(layer, path) for layer in node.stack]
        return merge_listing(layers)

    def is_empty(self, node: Node) -> bool:
        return not self.list_dir(node)

    # ---- copy-up ------------------------------------------------------------------

    def _tmp_name(self) -> str:
        return f"{self.work}/#{os.getpid()}.{next(self._tmp)}"

    def _check_writable(self) -> None:
        """Called first by every changing call: counts changes, so listings know they aged."""
        if self.readonly:
            raise _err(errno.EROFS)
        self.mutations += 1

    def copy_up(self, node: Node, data: bool = True) -> None:
        """Give `node` (and its parents, first) a copy in the upper layer."""
        self._check_writable()
        self.refresh(node)
        if node.layer == UPPER:
            return
        if node.parent is None:
            raise _err(errno.EROFS)
        self.copy_up(node.parent)
        path = node.path()
        dst = self.real(UPPER, path)
        pdir = self.real(UPPER, node.parent.path())
        pst = os.lstat(pdir)
        layer = node.layer
        src = self.real(layer, path)
        st = os.lstat(src)
        tmp = self._tmp_name()
        try:
            copyup.stage_copy(src, st, tmp, data=data, sync=self.fsync, skip=self.private)
            if self.override:
                self._keep_ownership(src, st, tmp)
            os.rename(tmp, dst)
        except BaseException:
            _remove_quietly(tmp)
            raise
        self._restore_times(pdir, pst)
        if node.is_dir:
            node.stack = [UPPER] + [x for x in node.stack if x != UPPER]
        node.layer = UPPER
        if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
            self._link_peers(layer, path, st, dst)

    # ---- lower hardlinks ---------------------------------------------------------

    def _hardlinks(self, layer: int) -> dict[tuple[int, int], list[str]]:
        """Names of every multiply-linked file of a lower layer, scanned once per mount."""
        m = self._hardlink_maps.get(layer)
        if m is None:
            m = {}
            stack = [""]
            while stack:
                rel = stack.pop()
                try:
                    it = os.scandir(self.real(layer, rel))
                except OSError:
                    continue
                with it:
                    for e in it:
                        p = _join(rel, e.name)
                        if e.is_dir(follow_symlinks=False):
                            stack.append(p)
                            continue
                        try:
                            st = e.stat(follow_symlinks=False)
                        except OSError:
                            continue
                        if st.st_nlink > 1:
                            m.setdefault((st.st_dev, st.st_ino), []).append(p)
            self._hardlink_maps[layer] = m
        return m

    def _link_peers(self, layer: int, path: str, st: os.stat_result, copy: str) -> None:
        """Keep a lower hardlink group one file: every other name that still shows the same
        lower file becomes a link to the copy in the upper, so the upper is a changeset that
        says so as it stands (and a remount sees one file too)."""
        linked = False
        for peer in self._hardlinks(layer).get((st.st_dev, st.st_ino), []):
            if peer == path:
                continue
            found = self._resolve_path(peer)
            if found is None:
                continue
            pparent, r = found
            if r.layer != layer or (r.st.st_dev, r.st.st_ino) != (st.st_dev, st.st_ino):
                continue
            updir = self._upper_dir(pparent)
            pst = os.lstat(updir)
            os.link(copy, f"{updir}/{_basename(peer)}")
            self._restore_times(updir, pst)
            linked = True
        if linked:
            self._invalidate()

    def _rejoin(self, parent: Node, name: str, r: Resolved) -> Resolved:
        """A lower hardlink whose group was copied up under another name but not linked under
        this one (the daemon died between a copy-up's rename and `_link_peers`): link it now,
        so the group is one file again, as the finished copy-up would have left it."""
        st = r.st
        if self.readonly or r.layer == UPPER or st.st_nlink < 2 or stat.S_ISDIR(st.st_mode):
            return r
        key = (st.st_dev, st.st_ino)
        peers = self._hardlinks(r.layer).get(key, [])
        if len(peers) < 2 or self._rejoin_checked.get(key) == self.mutations:
            return r
        path = _join(parent.path(), name)
        for peer in peers:
            up = self.real(UPPER, peer)
            if peer == path or not os.path.isfile(up) or copyup.get_origin(up) != key:
                continue
            self._check_writable()
            updir = self._upper_dir(parent)
            dst = f"{updir}/{name}"
            pst = os.lstat(updir)
            os.link(up, dst)
            self._restore_times(updir, pst)
            self._invalidate()
            return self._identify(UPPER, [UPPER], path, os.lstat(dst))
        self._rejoin_checked[key] = self.mutations
        return r

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

    def _keep_ownership(self, src: str, st: os.stat_result, tmp: str) -> None:
        """A copy the daemon could not chown keeps the source's owner and mode in the xattr."""
        if stat.S_ISLNK(st.st_mode):
            return
        ov = read_override(src, st.st_mode) or Override(st.st_uid, st.st_gid, st.st_mode,
                                                        st.st_rdev)
        times = os.lstat(tmp)
        self._set_owner(tmp, os.lstat(tmp), ov.uid, ov.gid, ov.mode, ov.rdev)
        copyup.set_times(tmp, times)

    @staticmethod
    def _restore_times(path: str, st: os.stat_result) -> None:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)

    def _upper_dir(self, parent: Node) -> str:
        self.copy_up(parent)
        return self.real(UPPER, parent.path())

    # ---- creating names ----------------------------------------------------------

    def _check_new_name(self, parent: Node, name: str) -> bool:
        """Refuse names that exist or may not be made; True when a whiteout in the upper hides
        the name (it goes once the new object is in place)."""
        self._check_writable()
        if is_meta_name(name):
            raise _err(errno.EPERM)
        if len(name.encode(errors="surrogateescape")) > NAME_MAX:
            raise _err(errno.ENAMETOOLONG)
        self.refresh(parent)
        answers: list[tuple[int, Found]] = []
        if self._resolve_child(parent, name, answers) is not None:
            raise _err(errno.EEXIST)
        return bool(answers) and answers[0][0] == UPPER and answers[0][1].whiteout

    def _made(self, parent: Node, name: str, st: os.stat_result) -> tuple[Node, os.stat_result]:
        """The node for an object just made in the upper (no need to ask the layers again)."""
        r = Resolved(UPPER, [UPPER], st, self.numbers.number(st.st_dev, st.st_ino))
        return self._node_for(parent, name, r, True), st

    def _lower_shows(self, parent: Node, name: str) -> bool:
        """Whether any lower layer under the parent's merge stack would show `name`."""
        ppath = parent.path()
        answers = (self._probe(layer, ppath, name)[0] for layer in parent.stack if layer != UPPER)
        return needs_whiteout(answers)

    def _clear_whiteout(self, updir: str, name: str) -> bool:
        try:
            os.unlink(f"{updir}/{whiteout_name(name)}")
            return True
        except FileNotFoundError:
            return False

    def _own(self, path: str, uid: int, gid: int, updir: str, mode: int | None = None) -> None:
        """Give a new object the caller's ids (host ids, mapped to disk ids), or the setgid
        directory's group; record them where chown cannot."""
        duid, dgid = self.uidmap.to_disk(uid), self.gidmap.to_disk(gid)
        pst = os.lstat(updir)
        if pst.st_mode & stat.S_ISGID:
            pov = read_override(updir, pst.st_mode) if self.override else None
            dgid = pov.gid if pov else pst.st_gid
        st = os.lstat(path)
        self._set_owner(path, st, duid, dgid,
                        st.st_mode if mode is None else stat.S_IFMT(st.st_mode) | mode, st.st_rdev)

    def _set_owner(self, path: str, st: os.stat_result, uid: int, gid: int, mode: int,
                   rdev: int = 0) -> None:
        """Make `path` (disk) owned uid:gid with `mode`, or record that in the override xattr."""
        try:
            if (st.st_uid, st.st_gid) != (uid, gid):
                os.lchown(path, uid, gid)
            chowned = True
        except OSError as e:
            if not self.override or e.errno not in (errno.EPERM, errno.EINVAL):
                raise
            chowned = False
        if stat.S_ISLNK(st.st_mode):
            return  # no user.* xattr on a symlink: its owner is what the disk says
        if not self.override:
            if stat.S_IMODE(mode) != stat.S_IMODE(os.lstat(path).st_mode):
                os.chmod(path, stat.S_IMODE(mode))
            return
        # The daemon must keep using the file whatever mode it pretends to have.
        keep = 0o700 if stat.S_ISDIR(st.st_mode) else 0o600
        os.chmod(path, stat.S_IMODE(mode) | keep)
        real = os.lstat(path)
        want = Override(uid, gid, mode, rdev)
        if chowned and real.st_mode == mode and real.st_rdev == rdev:
            try:
                os.removexattr(path, OVERRIDE_XATTRS[0], follow_symlinks=False)
            except OSError:
                pass
        else:
            write_override(path, want)

    def present(self, node: Node, st: os.stat_result) -> tuple[int, int, int, int]:
        """(uid, gid, mode, rdev) as the caller sees them: override xattr, then id mapping."""
        uid, gid, mode, rdev = st.st_uid, st.st_gid, st.st_mode, st.st_rdev
        if self._plain_ids:
            return uid, gid, mode, rdev
        if self.override and not stat.S_ISLNK(mode):
            ov = self._override_of(node, mode)
            if ov is not None:
                uid, gid, mode, rdev = ov.uid, ov.gid, ov.mode, ov.rdev
        return self.uidmap.to_host(uid), self.gidmap.to_host(gid), mode, rdev

    def _override_of(self, node: Node, mode: int) -> Override | None:
        try:
            real = self.node_real(node)
        except OSError:
            return None
        if node.layer == UPPER:
            return read_override(real, mode)
        key = (node.layer, node.path())
        if key not in self._lower_overrides:
            self._lower_overrides[key] = read_override(real, mode)
        return self._lower_overrides[key]

    def create(self, parent: Node, name: str, mode: int, flags: int, uid: int, gid: int
               ) -> tuple[Node, os.stat_result, int]:
        hidden = self._check_new_name(parent, name)
        updir = self._upper_dir(parent)
        path = f"{updir}/{name}"
        if hidden:
            self._clear_kernel_whiteout(path)
        fd = os.open(path, (flags | os.O_CREAT | os.O_EXCL) & ~os.O_NOFOLLOW, stat.S_IMODE(mode))
        try:
            self._own(path, uid, gid, updir, stat.S_IMODE(mode))
            st = os.fstat(fd)
        except BaseException:
            os.close(fd)
            os.unlink(path)
            raise
        if hidden:
            self._clear_whiteout(updir, name)
        node, st = self._made(parent, name, st)
        return node, st, fd

    @staticmethod
    def _clear_kernel_whiteout(path: str) -> None:
        """An upper taken over from kernel overlayfs may hide a name with a 0/0 device."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if is_kernel_whiteout(st.st_mode, st.st_rdev):
            os.unlink(path)

    def mkdir(self, parent: Node, name: str, mode: int, uid: int, gid: int
              ) -> tuple[Node, os.stat_result]:
        self._check_new_name(parent, name)
        updir = self._upper_dir(parent)
        # Only an upper whiteout means a lower still has the name; elsewhere it is hidden below.
        opaque = os.path.lexists(f"{updir}/{whiteout_name(name)}")
        tmp = self._tmp_name()
        os.mkdir(tmp, 0o700)
        try:
            if opaque:
                _touch(f"{tmp}/{OPAQUE_MARKER}")
            m = stat.S_IMODE(mode)
            if os.lstat(updir).st_mode & stat.S_ISGID:
                m |= stat.S_ISGID
            self._own(tmp, uid, gid, updir, m)
            if opaque:
                st = os.lstat(tmp)
                os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
            os.rename(tmp, f"{updir}/{name}")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._clear_whiteout(updir, name)
        return self.lookup(parent, name)

    def symlink(self, parent: Node, name: str, target: str, uid: int, gid: int
                ) -> tuple[Node, os.stat_result]:
        self._check_new_name(parent, name)
        updir = self._upper_dir(parent)
        path = f"{updir}/{name}"
        os.symlink(target, path)
        try:
            self._own(path, uid, gid, updir)
        except BaseException:
            os.unlink(path)
            raise
        self._clear_whiteout(updir, name)
        return self.lookup(parent, name)

    def mknod(self, parent: Node, name: str, mode: int, rdev: int, uid: int, gid: int
              ) -> tuple[Node, os.stat_result]:
        if is_kernel_whiteout(mode, rdev):
            raise _err(errno.EPERM)  # would read back as a whiteout
        self._check_new_name(parent, name)
        updir = self._upper_dir(parent)
        path = f"{updir}/{name}"
        try:
            os.mknod(path, mode, rdev)
        except PermissionError:
            if not self.override or not (stat.S_ISCHR(mode) or stat.S_ISBLK(mode)):
                raise
            # A device the user may not create: an empty file that says what it stands for.
            _touch(path)
            st = os.lstat(path)
            write_override(path, Override(st.st_uid, st.st_gid, mode, rdev))
        try:
            st = os.lstat(path)
            ov = read_override(path, st.st_mode) if self.override else None
            duid, dgid = self.uidmap.to_disk(uid), self.gidmap.to_disk(gid)
            pst = os.lstat(updir)
            if pst.st_mode & stat.S_ISGID:
                dgid = pst.st_gid
            self._set_owner(path, st, duid, dgid, ov.mode if ov else mode, rdev)
        except BaseException:
            os.unlink(path)
            raise
        self._clear_whiteout(updir, name)
        return self.lookup(parent, name)

    def link(self, node: Node, parent: Node, name: str) -> tuple[Node, os.stat_result]:
        if node.is_dir:
            raise _err(errno.EPERM)
        self._check_new_name(parent, name)
        self.copy_up(node)
        updir = self._upper_dir(parent)
        os.link(self.node_real(node), f"{updir}/{name}", follow_symlinks=False)
        self._clear_whiteout(updir, name)
        st = os.lstat(f"{updir}/{name}")
        node.add_name(parent, name, current=False)
        node.lookups += 1
        return node, st

    # ---- removing names ----------------------------------------------------------

    def _make_whiteout(self, updir: str, name: str) -> None:
        fd = os.open(f"{updir}/{whiteout_name(name)}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                     0o600)
        os.close(fd)

    def _visible(self, parent: Node, name: str) -> Resolved:
        """The visible object a removal names, or ENOENT."""
        self._check_writable()
        if is_meta_name(name):
            raise _err(errno.ENOENT)
        self.refresh(parent)
        r = self._resolve_child(parent, name)
        if r is None:
            raise _err(errno.ENOENT)
        return r

    def unlink(self, parent: Node, name: str) -> None:
        r = self._visible(parent, name)
        if stat.S_ISDIR(r.st.st_mode):
            raise _err(errno.EISDIR)
        self._remove_name(parent, name, r, is_dir=False)
        self._name_gone(parent, name, r)

    def _name_gone(self, parent: Node, name: str, r: Resolved) -> None:
        """`name` no longer shows object `r`: its node keeps its other names; with none left
        and the upper's last link gone, the object is dead (its disk number may come back)."""
        node = self.table.get(r.ino)
        if node is None:
            return
        left = node.drop_name(parent, name)
        last_link = r.layer == UPPER and (r.st.st_nlink <= 1 or stat.S_ISDIR(r.st.st_mode))
        if not left and (last_link or node.is_dir):
            node.dead = True

    def rmdir(self, parent: Node, name: str) -> None:
        r = self._visible(parent, name)
        if not stat.S_ISDIR(r.st.st_mode):
            raise _err(errno.ENOTDIR)
        child, _ = self.lookup(parent, name, count=False)
        if not self.is_empty(child):
            raise _err(errno.ENOTEMPTY)
        self._remove_name(parent, name, r, is_dir=True)
        self._name_gone(parent, name, r)
        self._invalidate()

    def _remove_name(self, parent: Node, name: str, r: Resolved, is_dir: bool) -> None:
        wh = self._lower_shows(parent, name)
        if r.layer != UPPER and not wh:
            return
        updir = self._upper_dir(parent)
        if wh:
            self._make_whiteout(updir, name)
        if r.layer == UPPER:
            path = f"{updir}/{name}"
            if is_dir:
                tmp = self._tmp_name()
                os.rename(path, tmp)
                shutil.rmtree(tmp)
            else:
                os.unlink(path)

    # ---- metadata ---------------------------------------------------------------

    def setattr(self, node: Node, *, size: int | None = None, mode: int | None = None,
                uid: int | None = None, gid: int | None = None,
                atime_ns: int | None = None, mtime_ns: int | None = None,
                fd: int | None = None) -> os.stat_result:
        self._check_writable()
        self.copy_up(node, data=size != 0)
        path = self.node_real(node)
        if uid is not None or gid is not None or mode is not None:
            st = os.lstat(path)
            ov = read_override(path, st.st_mode) if self.override else None
            cur_uid, cur_gid = (ov.uid, ov.gid) if ov else (st.st_uid, st.st_gid)
            cur_mode, rdev = (ov.mode, ov.rdev) if ov else (st.st_mode, st.st_rdev)
            new_uid = cur_uid if uid is None else self.uidmap.to_disk(uid)
            new_gid = cur_gid if gid is None else self.gidmap.to_disk(gid)
            new_mode = cur_mode if mode is None else \
                stat.S_IFMT(cur_mode) | stat.S_IMODE(mode)
            self._set_owner(path, st, new_uid, new_gid, new_mode, rdev)
        if size is not None:
            if fd is not None:
                os.ftruncate(fd, size)
            else:
                os.truncate(path, size)
        if atime_ns is not None or mtime_ns is not None:
            st = os.lstat(path)
            os.utime(path, ns=(st.st_atime_ns if atime_ns is None else atime_ns,
                               st.st_mtime_ns if mtime_ns is None else mtime_ns),
                     follow_symlinks=False)
        return os.lstat(path)

    def private(self, name: str) -> bool:
        return is_private_xattr(name) or (self.override and name in OVERRIDE_XATTRS)

    def getxattr(self, node: Node, name: str) -> bytes:
        if self.private(name):
            raise _err(errno.ENODATA)
        return os.getxattr(self.node_real(node), name, follow_symlinks=False)

    def listxattr(self, node: Node) -> list[str]:
        return [n for n in os.listxattr(self.node_real(node), follow_symlinks=False)
                if not self.private(n)]

    def setxattr(self, node: Node, name: str, value: bytes, flags: int = 0) -> None:
        if self.private(name):
            raise _err(errno.EPERM)
        self.copy_up(node)
        os.setxattr(self.node_real(node), name, value, flags, follow_symlinks=False)

    def removexattr(self, node: Node, name: str) -> None:
        if self.private(name):
            raise _err(errno.ENODATA)
        os.getxattr(self.node_real(node), name, follow_symlinks=False)  # ENODATA before copy-up
        self.copy_up(node)
        os.removexattr(self.node_real(node), name, follow_symlinks=False)

    # ---- rename ---------------------------------------------------------------------

    def rename(self, op: Node, oname: str, np: Node, nname: str, flags: int) -> None:
        self._check_writable()
        if is_meta_name(oname):
            raise _err(errno.ENOENT)
        if is_meta_name(nname):
            raise _err(errno.EPERM)
        if len(nname.encode(errors="surrogateescape")) > NAME_MAX:
            raise _err(errno.ENAMETOOLONG)
        self.refresh(op)
        self.refresh(np)
        src = self._resolve_child(op, oname)
        if src is None:
            raise _err(errno.ENOENT)
        dst = self._resolve_child(np, nname)
        exchange = bool(flags & RENAME_EXCHANGE)
        if flags & RENAME_NOREPLACE and dst is not None:
            raise _err(errno.EEXIST)
        if exchange:
            if dst is None:
                raise _err(errno.ENOENT)
            return self._exchange(op, oname, src, np, nname, dst)
        snode, _ = self.lookup(op, oname, count=False)
        if dst is not None:
            if dst.ino == src.ino and not snode.is_dir:
                return  # two names of one file: POSIX says do nothing
            dnode, _ = self.lookup(np, nname, count=False)
            if snode.is_dir and not dnode.is_dir:
                raise _err(errno.ENOTDIR)
            if not snode.is_dir and dnode.is_dir:
                raise _err(errno.EISDIR)
            if dnode.is_dir and not self.is_empty(dnode):
                raise _err(errno.ENOTEMPTY)
        if snode.is_dir and (snode.merged or snode.layer != UPPER):
            self._rename_merged_dir(snode, op, oname, np, nname, dst)
            return
        self.copy_up(snode)
        oupdir = self._upper_dir(op)
        nupdir = self._upper_dir(np)
        src_path = f"{oupdir}/{oname}"
        dst_path = f"{nupdir}/{nname}"
        wh_src = self._lower_shows(op, oname)
        dst_lower = self._lower_shows(np, nname) or os.path.lexists(
            f"{nupdir}/{whiteout_name(nname)}")
        if wh_src:
            self._make_whiteout(oupdir, oname)
        if snode.is_dir and dst_lower:
            _touch(f"{src_path}/{OPAQUE_MARKER}")
        if dst is not None and dst.layer == UPPER and stat.S_ISDIR(dst.st.st_mode):
            tmp = self._tmp_name()
            os.rename(dst_path, tmp)
            shutil.rmtree(tmp)
        os.rename(src_path, dst_path)
        self._clear_whiteout(nupdir, nname)
        if dst is not None:
            self._name_gone(np, nname, dst)
        snode.drop_name(op, oname)
        snode.add_name(np, nname)
        snode.layer = UPPER
        if snode.is_dir:
            snode.stack = [UPPER]
            self._invalidate()
        elif dst is not None:
            self._invalidate()

    def _rename_merged_dir(self, snode: Node, op: Node, oname: str, np: Node, nname: str,
                           dst: Resolved | None) -> None:
        """Move a directory that has lower parts by copying its merged tree into the upper.

        overlayfs answers EXDEV here (without redirect_dir), which apt and dpkg trip over;
        an OCI changeset has no redirects, so the merged content is copied, made opaque at the
        new name, and the old name whited out.
        """
        nupdir = self._upper_dir(np)
        oupdir = self._upper_dir(op)
        tmp = self._tmp_name()
        lower_links: dict[tuple[int, int], tuple[str, int, os.stat_result]] = {}
        try:
            self._copy_tree(snode, tmp, lower_links)
            _touch(f"{tmp}/{OPAQUE_MARKER}")
            if dst is not None and dst.layer == UPPER:
                old = self._tmp_name()
                os.rename(f"{nupdir}/{nname}", old)
                shutil.rmtree(old)
            os.rename(tmp, f"{nupdir}/{nname}")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._clear_whiteout(nupdir, nname)
        if self._lower_shows(op, oname):
            self._make_whiteout(oupdir, oname)
        if snode.layer == UPPER:
            gone = self._tmp_name()
            os.rename(f"{oupdir}/{oname}", gone)
            shutil.rmtree(gone)
        if dst is not None:
            self._name_gone(np, nname, dst)
        snode.drop_name(op, oname)
        snode.add_name(np, nname)
        snode.layer, snode.stack = UPPER, [UPPER]
        self._invalidate()
        # Lower hardlinks that reach outside the moved tree stay one file with the copy.
        final = f"{nupdir}/{nname}"
        for ctmp, layer, cst in lower_links.values():
            self._link_peers(layer, "", cst, final + ctmp[len(tmp):])

    def _origin_of(self, node: Node, path: str, st: os.stat_result) -> tuple[int, int]:
        """What an object stands for: an upper copy keeps pointing at its lower original."""
        if node.layer == UPPER:
            return copyup.get_origin(path) or (st.st_dev, st.st_ino)
        return st.st_dev, st.st_ino

    def _copy_tree(self, dnode: Node, tmp: str,
                   lower_links: dict[tuple[int, int], tuple[str, int, os.stat_result]]) -> None:
        """Stage the merged tree of `dnode` at `tmp`: upper objects are linked (so their own
        hardlinks hold), lower ones copied, once per lower hardlink group (noted in
        `lower_links` for the names outside the tree)."""
        path = dnode.path()
        src = self.real(dnode.stack[0], path)
        st = os.lstat(src)
        copyup.stage_copy(src, st, tmp, sync=False, origin=self._origin_of(dnode, src, st),
                          skip=self.private)
        if self.override:
            self._keep_ownership(src, st, tmp)
        os.chmod(tmp, stat.S_IMODE(st.st_mode) | stat.S_IRWXU)
        for e in self.list_dir(dnode):
            child, _ = self.lookup(dnode, e.name, count=False)
            ctmp = f"{tmp}/{e.name}"
            if child.is_dir:
                self._copy_tree(child, ctmp, lower_links)
                continue
            csrc = self.node_real(child)
            cst = os.lstat(csrc)
            key = (cst.st_dev, cst.st_ino)
            if child.layer == UPPER:
                os.link(csrc, ctmp, follow_symlinks=False)
            elif cst.st_nlink > 1 and key in lower_links:
                os.link(lower_links[key][0], ctmp, follow_symlinks=False)
            else:
                copyup.stage_copy(csrc, cst, ctmp, sync=self.fsync,
                                  origin=self._origin_of(child, csrc, cst), skip=self.private)
                if self.override:
                    self._keep_ownership(csrc, cst, ctmp)
                if cst.st_nlink > 1:
                    lower_links[key] = (ctmp, child.layer, cst)
        os.chmod(tmp, stat.S_IMODE(st.st_mode))
        copyup.set_times(tmp, st)

    def _exchange(self, op: Node, oname: str, src: Resolved, np: Node, nname: str,
                  dst: Resolved) -> None:
        a, _ = self.lookup(op, oname, count=False)
        b, _ = self.lookup(np, nname, count=False)
        for n in (a, b):
            if n.is_dir and (n.merged or n.layer != UPPER):
                raise _err(errno.EXDEV)
        self.copy_up(a)
        self.copy_up(b)
        oupdir = self._upper_dir(op)
        nupdir = self._upper_dir(np)
        for n, at_parent, at_name in ((a, np, nname), (b, op, oname)):
            if n.is_dir and self._lower_shows(at_parent, at_name):
                _touch(f"{self.real(UPPER, n.path())}/{OPAQUE_MARKER}")
        renameat2(f"{oupdir}/{oname}", f"{nupdir}/{nname}", RENAME_EXCHANGE)
        a.drop_name(op, oname)
        b.drop_name(np, nname)
        a.add_name(np, nname)
        b.add_name(op, oname)
        self._invalidate()

    # ---- open files -----------------------------------------------------------

    def open(self, node: Node, flags: int) -> int:
        acc = flags & os.O_ACCMODE
        writing = acc in (os.O_WRONLY, os.O_RDWR) or flags & (os.O_TRUNC | os.O_APPEND)
        if writing:
            self._check_writable()
            self.copy_up(node, data=not (flags & os.O_TRUNC))
        fd = os.open(self.node_real(node), flags & ~(os.O_CREAT | os.O_EXCL | os.O_NOCTTY))
        if not writing:
            # Requests arrive one at a time: a larger readahead window on the layer file keeps
            # the disk busy between them.
            with contextlib.suppress(OSError):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        self.register(fd, node)
        return fd

    def register(self, fd: int, node: Node) -> None:
        self.handles[fd] = Handle(fd, node, node.layer)
        node.open_count += 1

    def fd_for_read(self, fh: int) -> int:
        """The fd to read from; re-opened on the upper copy if another writer copied it up."""
        h = self.handles[fh]
        node = h.node
        if h.layer != UPPER and node.layer == UPPER:
            try:
                nfd = os.open(self.node_real(node), os.O_RDONLY)
            except OSError:
                return h.fd
            os.close(h.fd)
            # dup2 keeps the fh number stable for the kernel
            os.dup2(nfd, fh)
            os.close(nfd)
            h.layer = UPPER
        return h.fd

    def release(self, fh: int) -> None:
        h = self.handles.pop(fh)
        os.close(h.fd)
        self.unpin(h.node)

    def unpin(self, node: Node) -> None:
        """An open file or directory stream on `node` ended; drop it if nothing else holds it."""
        node.open_count -= 1
        if (node.open_count <= 0 and node.lookups <= 0 and node.ino != ROOT
                and self.table.get(node.ino) is node):
            del self.table.nodes[node.ino]

    def statfs(self) -> os.statvfs_result:
        return os.statvfs(self.layers[0] or self.layers[1])


@dataclass
class Handle:
    fd: int
    node: Node
    layer: int          # where the fd points: a reader re-opens once the node is copied up


def _basename(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def needs_override() -> bool:
    """Whether chown is out of reach: not root, or root of a user namespace that maps only
    part of the id space."""
    if os.geteuid() != 0:
        return True
    try:
        with open("/proc/self/uid_map") as f:
            rows = [line.split() for line in f if line.strip()]
    except OSError:
        return False
    return rows != [["0", "0", "4294967295"]]


def _getter(path: str, names: set[str] | None = None):
    """An xattr reader for layers.py's rules: a value, or None where there is none."""
    def get(name: str) -> bytes | None:
        if names is not None and name not in names:
            return None
        try:
            return os.getxattr(path, name, follow_symlinks=False)
        except OSError:
            return None
    return get


def _join(a: str, b: str) -> str:
    return f"{a}/{b}" if a else b


def _touch(path: str) -> None:
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))


def _remove_quietly(path: str) -> None:
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    except OSError:
        pass


def _mode_rdev(st: os.stat_result) -> tuple[int, int]:
    return st.st_mode, st.st_rdev
