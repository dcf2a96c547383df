"""The union itself: overlay semantics over real directories, as plain synchronous calls.

Every method takes and returns inode-table nodes and raises OSError with the errno overlayfs
would give; `core.py` serves it as an `fsapi.Filesystem` and `operations.py` adapts that to
pyfuse3. Nothing here knows about FUSE requests, so the whole union can be driven (and reasoned
about) without a mount. One module per idea, each a mixin of `Union`: resolution.py (names to
nodes), listing.py, hardlinks.py, attributes.py (ownership, presentation, setattr, xattrs),
creation.py, renaming.py, handles.py; this module holds the state and copy-up.
"""

from __future__ import annotations

import errno
import itertools
import os
import shutil
import stat

from unionfs import copyup
from unionfs.attributes import Attributes
from unionfs.creation import Creation
from unionfs.deeppath import DeepPaths
from unionfs.fsapi import Notifier
from unionfs.handles import Handles
from unionfs.hardlinks import HardLinks
from unionfs.idmaps import chown_out_of_reach as needs_override
from unionfs.inodes import ROOT, UPPER, InodeNumbers, InodeTable, Node
from unionfs.layers import LayerDir
from unionfs.listing import Listing
from unionfs.ownership import IdMap, Override
from unionfs.plumbing import _err, _remove_quietly
from unionfs.renaming import Renaming
from unionfs.resolution import Resolution
from unionfs.unionstate import Handle


class Union(Resolution, Listing, HardLinks, Attributes, Creation, Renaming, Handles):
    """The union: overlay semantics over real directories (see the mixins' modules); this
    part holds the state and copy-up."""

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
        self.notifier: Notifier | None = None     # once the transport has one
        self.handles: dict[int, Handle] = {}
        self.mutations = 0
        # The last lookup: (parent, name, mutation count, resolution or None, hidden by an
        # upper whiteout), for the create or removal the kernel sends right after it.
        self._last_lookup = None
        self._xattr_miss = None     # (node, name, mutation count) of the last absent xattr
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
        st = os.lstat(self.real(root_stack[0], ""))
        self.table.add(Node(ROOT, None, "", True, root_stack[0], root_stack, lookups=1))
        self.root_st = st


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

    @staticmethod
    def _restore_times(path: str, st: os.stat_result) -> None:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)

    def _upper_dir(self, parent: Node) -> str:
        self.copy_up(parent)
        return self.real(UPPER, parent.path())
