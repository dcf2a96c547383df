"""Ownership and presentation (ids mapped, the override xattr where chown cannot), and the
calls that change attributes: setattr and the xattr calls.

A part of `union.Union` (one mixin per idea): it uses the state Union.__init__ sets up.
"""

from __future__ import annotations

import errno
import os
import stat

from unionfs import copyup
from unionfs.inodes import UPPER, Node
from unionfs.layers import is_private_xattr
from unionfs.ownership import OVERRIDE_XATTRS, Override, read_override, write_override
from unionfs.plumbing import _err
from unionfs.unionstate import Base


class Attributes(Base):
    _xattr_miss: tuple[Node, str, int] | None     # see getxattr

    def _keep_ownership(self, src: str, st: os.stat_result, tmp: str) -> None:
        """A copy the daemon could not chown keeps the source's owner and mode in the xattr."""
        if stat.S_ISLNK(st.st_mode):
            return
        ov = read_override(src, st.st_mode) or Override(st.st_uid, st.st_gid, st.st_mode,
                                                        st.st_rdev)
        times = os.lstat(tmp)
        self._set_owner(tmp, os.lstat(tmp), ov.uid, ov.gid, ov.mode, ov.rdev)
        copyup.set_times(tmp, times)

    def _own(self, path: str, uid: int, gid: int, updir: str, mode: int | None = None,
             st: os.stat_result | None = None) -> bool:
        """Give a new object the caller's ids (host ids, mapped to disk ids), or the setgid
        directory's group; record them where chown cannot. `st`: the object's stat if the
        caller has it. True if anything was changed (a stat taken before is stale)."""
        duid, dgid = self.uidmap.to_disk(uid), self.gidmap.to_disk(gid)
        pst = os.lstat(updir)
        if pst.st_mode & stat.S_ISGID:
            pov = read_override(updir, pst.st_mode) if self.override else None
            dgid = pov.gid if pov else pst.st_gid
        if st is None:
            st = os.lstat(path)
        return self._set_owner(path, st, duid, dgid, st.st_mode if mode is None
                               else stat.S_IFMT(st.st_mode) | mode, st.st_rdev)

    def _set_owner(self, path: str, st: os.stat_result, uid: int, gid: int, mode: int,
                   rdev: int = 0) -> bool:
        """Make `path` (disk) owned uid:gid with `mode`, or record that in the override xattr;
        True if anything was changed."""
        changed = False
        try:
            if (st.st_uid, st.st_gid) != (uid, gid):
                os.lchown(path, uid, gid)
                changed = True
            chowned = True
        except OSError as e:
            if not self.override or e.errno not in (errno.EPERM, errno.EINVAL):
                raise
            chowned = False
        if stat.S_ISLNK(st.st_mode):
            return changed  # no user.* xattr on a symlink: its owner is what the disk says
        if not self.override:
            # (a chown may have dropped setuid/setgid: only then is `st` stale)
            cur = os.lstat(path).st_mode if changed else st.st_mode
            if stat.S_IMODE(mode) != stat.S_IMODE(cur):
                os.chmod(path, stat.S_IMODE(mode))
                changed = True
            return changed
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
        return True

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
        # The kernel asks for security.capability before every write(2) (file_remove_privs),
        # passthrough writes included: an attribute found absent stays absent until a change
        # is counted (setxattr, removexattr and chown all count one).
        miss = self._xattr_miss
        if miss is not None and miss[0] is node and miss[1] == name \
                and miss[2] == self.mutations:
            raise _err(errno.ENODATA)
        try:
            return os.getxattr(self.node_real(node), name, follow_symlinks=False)
        except OSError as e:
            if e.errno == errno.ENODATA:
                self._xattr_miss = (node, name, self.mutations)
            raise

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
