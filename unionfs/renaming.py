"""rename(2) in the union: plain moves in the upper, RENAME_EXCHANGE, and merged directories
moved by staging their merged tree in the work directory.

A part of `union.Union` (one mixin per idea): it uses the state Union.__init__ sets up.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat

from unionfs import copyup
from unionfs.inodes import UPPER, Node
from unionfs.layers import NAME_MAX, OPAQUE_MARKER, is_meta_name, whiteout_name
from unionfs.libc import RENAME_EXCHANGE, RENAME_NOREPLACE, renameat2
from unionfs.plumbing import _below, _err, _touch
from unionfs.unionstate import Base, Resolved


class Renaming(Base):


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
        moved: list[tuple[str, str]] = []
        try:
            self._copy_tree(snode, tmp, lower_links, moved)
            _touch(f"{tmp}/{OPAQUE_MARKER}")
            if dst is not None and dst.layer == UPPER:
                old = self._tmp_name()
                os.rename(f"{nupdir}/{nname}", old)
                shutil.rmtree(old)
            os.rename(tmp, f"{nupdir}/{nname}")
        except BaseException:
            for src, staged in reversed(moved):   # upper directories go back where they were
                with contextlib.suppress(OSError):
                    os.rename(staged, src)
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
        # Everything below now comes from the copy: new ctimes and blocks under the old names.
        self._changed_behind(*(n.ino for n in list(self.table.nodes.values())
                               if n is not snode and _below(n, snode)))
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
                   lower_links: dict[tuple[int, int], tuple[str, int, os.stat_result]],
                   moved: list[tuple[str, str]]) -> None:
        """Stage the merged tree of `dnode` at `tmp`: upper objects are linked (so their own
        hardlinks hold) and directories that live in the upper only are moved (both keep their
        disk inode, so their numbers do not come free for a new object while the moved one
        still uses them), lower ones copied, once per lower hardlink group (noted in
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
            if child.is_dir and child.layer == UPPER and not child.merged:
                src_dir = self.node_real(child)
                os.rename(src_dir, ctmp)
                moved.append((src_dir, ctmp))
                continue
            if child.is_dir:
                self._copy_tree(child, ctmp, lower_links, moved)
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
