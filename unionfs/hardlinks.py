"""Lower hard-link groups: their visible link counts, and keeping a group one file when one
name is copied up (peers linked to the copy, a group split by a crash joined again).

A part of `union.Union` (one mixin per idea): it uses the state Union.__init__ sets up.
"""

from __future__ import annotations

import os
import stat

from unionfs import copyup
from unionfs.inodes import UPPER, Node
from unionfs.plumbing import _basename, _join
from unionfs.unionstate import Base, Resolved


class HardLinks(Base):

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
            self._changed_behind(pparent.ino)   # its ctime moved under another request
            linked = True
        if linked:
            self._invalidate()

    def _changed_behind(self, *inos: int) -> None:
        """Tell the kernel to drop cached attributes of inodes a call changed under another
        name than the one it was asked about (fsapi.Notifier); only those it may hold."""
        if self.notifier is None:
            return
        for ino in inos:
            if ino in self.table.nodes:
                self.notifier.inval_inode(ino, -1)

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
