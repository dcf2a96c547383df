"""Making and removing names: create, mkdir, symlink, mknod, link, unlink, rmdir, with the
whiteouts and opaque markers they need in the upper.

A part of `union.Union` (one mixin per idea): it uses the state Union.__init__ sets up.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat

from unionfs.inodes import UPPER, Node
from unionfs.layers import (
    NAME_MAX,
    OPAQUE_MARKER,
    is_kernel_whiteout,
    is_meta_name,
    whiteout_name,
)
from unionfs.ownership import Override, read_override, write_override
from unionfs.plumbing import _err, _touch
from unionfs.unionstate import Base, Resolved


class Creation(Base):


    def _check_new_name(self, parent: Node, name: str) -> bool:
        """Refuse names that exist or may not be made; True when a whiteout in the upper hides
        the name (it goes once the new object is in place)."""
        if self.readonly:
            raise _err(errno.EROFS)
        if is_meta_name(name):
            raise _err(errno.EPERM)
        if len(name.encode(errors="surrogateescape")) > NAME_MAX:
            raise _err(errno.ENAMETOOLONG)
        r, hidden = self._child(parent, name)
        self._check_writable()
        if r is not None:
            raise _err(errno.EEXIST)
        return hidden

    def _made(self, parent: Node, name: str, st: os.stat_result) -> tuple[Node, os.stat_result]:
        """The node for an object just made in the upper (no need to ask the layers again)."""
        r = Resolved(UPPER, [UPPER], st, self.numbers.number(st.st_dev, st.st_ino))
        return self._node_for(parent, name, r, True), st

    def _clear_whiteout(self, updir: str, name: str) -> bool:
        try:
            os.unlink(f"{updir}/{whiteout_name(name)}")
            return True
        except FileNotFoundError:
            return False

    def create(self, parent: Node, name: str, mode: int, flags: int, uid: int, gid: int
               ) -> tuple[Node, os.stat_result, int]:
        hidden = self._check_new_name(parent, name)
        updir = self._upper_dir(parent)
        path = f"{updir}/{name}"
        if hidden:
            self._clear_kernel_whiteout(path)
        fd = os.open(path, (flags | os.O_CREAT | os.O_EXCL) & ~os.O_NOFOLLOW, stat.S_IMODE(mode))
        try:
            st = os.fstat(fd)
            if self._own(path, uid, gid, updir, stat.S_IMODE(mode), st):
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


    def _make_whiteout(self, updir: str, name: str) -> None:
        path = f"{updir}/{whiteout_name(name)}"
        try:
            os.mknod(path, stat.S_IFREG | 0o600)    # an empty file in one call
        except FileExistsError:
            pass                                     # any `.wh.` file hides the name
        except OSError:   # an upper that refuses mknod of a regular file
            _touch(path)

    def _visible(self, parent: Node, name: str) -> Resolved:
        """The visible object a removal names, or ENOENT."""
        if self.readonly:
            raise _err(errno.EROFS)
        if is_meta_name(name):
            raise _err(errno.ENOENT)
        r, _ = self._child(parent, name)
        self._check_writable()
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
        """`name` no longer shows object `r`: its node keeps its other names. When the upper
        held the object's last link, the object is dead: the disk may give its number to a new
        object, which must then get a new generation (see inodes.py)."""
        node = self.table.get(r.ino)
        if node is None:
            return
        node.drop_name(parent, name)
        if r.layer == UPPER and (stat.S_ISDIR(r.st.st_mode) or r.st.st_nlink <= 1):
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
        # A name a lower layer shows needs a whiteout; the lowers need asking only when the
        # visible object is the upper's.
        wh = r.layer != UPPER or self._lower_shows(parent, name)
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
