"""Building the container's filesystem view: rootfs bind, config mounts, /dev, pivot_root, masks.

Runs in the container init, inside its new mount namespace. Destinations are resolved inside the
rootfs with openat2(RESOLVE_IN_ROOT) and mounted through /proc/self/fd/N, so a symlink in the image
can never redirect a mount onto the host (runc CVE-2021-30465).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from typing import Any

from snapshotter.runtime import cgroups, spec
from snapshotter.runtime import syscalls as sc
from unionfs import mountinfo
from unionfs.rootpath import open_in_root, open_in_root_path  # noqa: F401 - init uses both

DEFAULT_DEVICES = [  # (name, major, minor) per runtime-linux.md
    ("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9),
    ("tty", 5, 0),
]
DEV_SYMLINKS = [("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")]
# statvfs f_flag bits that match MS_* bits; ST_RELATIME (4096) is MS_RELATIME (1 << 21).
_ST_SAME = (sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC | sc.MS_SYNCHRONOUS
            | sc.MS_MANDLOCK | sc.MS_NOATIME | sc.MS_NODIRATIME)
_ST_RELATIME = 4096


def fdpath(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


def mount_flags_of(path: str) -> int:
    """The MS_* flags a path's mount already has (kept on a remount, which may not drop them)."""
    f = os.statvfs(path).f_flag
    flags = f & _ST_SAME
    if f & _ST_RELATIME:
        flags |= sc.MS_RELATIME
    return flags


def mountpoint_of(path: str) -> str:
    """The mount point (in this namespace) that contains `path`."""
    return mountinfo.mount_containing(os.path.realpath(path))


def prepare_root(rootfs: str, propagation: str | None) -> None:
    """Like runc: make / slave (or rootfsPropagation), keep the rootfs's parent mount non-shared,
    and bind the rootfs onto itself so it is a mount point pivot_root can use."""
    flags = spec.PROPAGATION[propagation] if propagation else sc.MS_SLAVE | sc.MS_REC
    sc.mount(None, "/", None, flags)
    parent = mountpoint_of(os.path.dirname(rootfs))
    if flags & sc.MS_SHARED:
        sc.mount(None, parent, None, sc.MS_PRIVATE)
    sc.mount(rootfs, rootfs, "bind", sc.MS_BIND | sc.MS_REC)


def do_mounts(rootfs: str, bundle: str, mounts: list[dict[str, Any]]) -> None:
    """config.json mounts, in order."""
    rootfd = os.open(rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for m in mounts:
            _mount_one(rootfd, bundle, m)
    finally:
        os.close(rootfd)


def _mount_one(rootfd: int, bundle: str, m: dict[str, Any]) -> None:
    opts = spec.parse_mount_options(m.get("options") or [])
    mtype = m.get("type") or ("bind" if opts.is_bind else "")
    source = m.get("source") or mtype
    dest = m["destination"]
    if mtype == "bind" or opts.is_bind:
        if not source.startswith("/"):
            source = os.path.join(bundle, source)
        kind = "dir" if os.path.isdir(source) else "file"
        fd = open_in_root(rootfd, dest, create=kind)
        try:
            target = fdpath(fd)
            sc.mount(source, target, None, sc.MS_BIND | (opts.flags & sc.MS_REC))
        finally:
            os.close(fd)
        _remount_bind(rootfd, dest, opts.flags)
    elif mtype == "cgroup":
        _mount_cgroup(rootfd, dest, opts)
    else:
        fd = open_in_root(rootfd, dest, create="dir")
        old = -1
        try:
            if opts.tmpcopyup:  # the directory as the image has it, still reachable after
                old = os.open(fdpath(fd), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            sc.mount(source, fdpath(fd), mtype, opts.flags & ~sc.MS_REMOUNT, opts.data or None)
            if old >= 0:
                new = open_in_root(rootfd, dest)
                try:
                    dfd = os.open(fdpath(new), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                finally:
                    os.close(new)
                try:
                    _copy_tree(old, dfd)
                finally:
                    os.close(dfd)
        except PermissionError:
            # In a user namespace without its own network namespace the kernel refuses a new
            # sysfs; rootless runc binds the host's /sys instead.
            if mtype != "sysfs":
                raise
            _bind_host(rootfd, "/sys", dest, opts.flags)
        finally:
            os.close(fd)
            if old >= 0:
                os.close(old)
    if opts.propagation:
        fd = open_in_root(rootfd, dest)
        try:
            for p in opts.propagation:
                sc.mount(None, fdpath(fd), None, p)
        finally:
            os.close(fd)


def _copy_tree(src: int, dst: int) -> None:
    """tmpcopyup (runc): copy the directory SRC into DST, both fds, keeping modes, owners and
    device numbers and following no symlink."""
    for entry in os.scandir(src):
        name = entry.name
        st = os.lstat(name, dir_fd=src)
        if stat.S_ISDIR(st.st_mode):
            os.mkdir(name, 0o700, dir_fd=dst)
            _copy_node(name, src, dst, st, os.O_DIRECTORY, _copy_tree)
        elif stat.S_ISREG(st.st_mode):
            _copy_node(name, src, dst, st, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _copy_bytes)
        else:
            if stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(name, dir_fd=src), name, dir_fd=dst)
            else:
                os.mknod(name, st.st_mode, st.st_rdev, dir_fd=dst)
            os.chown(name, st.st_uid, st.st_gid, dir_fd=dst, follow_symlinks=False)
            if not stat.S_ISLNK(st.st_mode):
                os.chmod(name, stat.S_IMODE(st.st_mode), dir_fd=dst)


def _copy_node(name: str, src: int, dst: int, st: os.stat_result, dst_flags: int,
               copy: Callable[[int, int], None]) -> None:
    """A directory or regular file NAME: COPY its content from SRC's into DST's (DST_FLAGS open
    or create it there), then its owner and mode, last, so a read-only mode cannot stop its own
    filling."""
    nofollow = os.O_NOFOLLOW | os.O_CLOEXEC
    s = os.open(name, os.O_RDONLY | nofollow | (dst_flags & os.O_DIRECTORY), dir_fd=src)
    try:
        d = os.open(name, dst_flags | nofollow, 0o600, dir_fd=dst)
        try:
            copy(s, d)
            os.fchown(d, st.st_uid, st.st_gid)
            os.fchmod(d, stat.S_IMODE(st.st_mode))
        finally:
            os.close(d)
    finally:
        os.close(s)


def _copy_bytes(src: int, dst: int) -> None:
    while os.sendfile(dst, src, None, 1 << 20):
        pass


def _mount_cgroup(rootfd: int, dest: str, opts: spec.MountOptions) -> None:
    """cgroup v2 host: a cgroup2 mount. v1/hybrid host: as runc does, a tmpfs with each v1
    hierarchy's own cgroup directory bind-mounted read-only (the flags) below it."""
    mounts = cgroups.mounts()
    fd = open_in_root(rootfd, dest, create="dir")
    try:
        if any(mp == "/sys/fs/cgroup" and t == "cgroup2" for mp, t, _ in mounts):
            try:
                sc.mount("cgroup", fdpath(fd), "cgroup2", opts.flags & ~sc.MS_REMOUNT)
            except PermissionError:
                # A user namespace without a cgroup namespace of its own may not mount
                # cgroup2: bind the host's hierarchy (read-only, as asked) as rootless runc does.
                _bind_host(rootfd, "/sys/fs/cgroup", dest, opts.flags)
            return
        sc.mount("tmpfs", fdpath(fd), "tmpfs",
                 opts.flags & ~(sc.MS_RDONLY | sc.MS_REMOUNT), "mode=755")
    finally:
        os.close(fd)
    own = cgroups.own_cgroups()
    for mp, fstype, superopts in mounts:
        if fstype != "cgroup" or not mp.startswith("/sys/fs/cgroup/"):
            continue
        supers = set(superopts.split(","))  # also holds non-controller options (xattr, ...)
        key = next((k for k in own if k and set(k.split(",")) <= supers), None)
        if key is None:
            continue
        source = mp + own[key]
        if not os.path.isdir(source):
            source = mp
        sub = os.path.join(dest, os.path.basename(mp))
        sfd = open_in_root(rootfd, sub, create="dir")
        try:
            sc.mount(source, fdpath(sfd), None, sc.MS_BIND | sc.MS_REC)
        finally:
            os.close(sfd)
        sfd = open_in_root(rootfd, sub)
        try:
            sc.mount(None, fdpath(sfd), None, sc.MS_BIND | sc.MS_REMOUNT
                     | (opts.flags & ~sc.MS_REMOUNT) | mount_flags_of(fdpath(sfd)))
        finally:
            os.close(sfd)


def _bind_host(rootfd: int, host: str, dest: str, flags: int) -> None:
    """rbind a host directory on DEST, then apply FLAGS (ro, nosuid...) with a remount."""
    fd = open_in_root(rootfd, dest, create="dir")
    try:
        sc.mount(host, fdpath(fd), None, sc.MS_BIND | sc.MS_REC)
    finally:
        os.close(fd)
    _remount_bind(rootfd, dest, flags)


def _remount_bind(rootfd: int, dest: str, flags: int) -> None:
    """Apply FLAGS beyond bind/rec (ro, nosuid...) to the bind mount on DEST with a remount.

    A new fd is opened: the remount must reach the mount now on top of the path.
    """
    extra = flags & ~(sc.MS_BIND | sc.MS_REC | sc.MS_REMOUNT)
    if not extra:
        return
    fd = open_in_root(rootfd, dest)
    try:
        sc.mount(None, fdpath(fd), None,
                 sc.MS_BIND | sc.MS_REMOUNT | extra | mount_flags_of(fdpath(fd)))
    finally:
        os.close(fd)


def dev_is_bind(mounts: list[dict[str, Any]]) -> bool:
    for m in mounts:
        if os.path.normpath(m["destination"]) == "/dev":
            opts = spec.parse_mount_options(m.get("options") or [])
            return m.get("type") == "bind" or opts.is_bind
    return False


def create_devices(rootfs: str, devices: list[dict[str, Any]], in_userns: bool) -> None:
    """Default devices + linux.devices; bind-mounted from the host inside a user namespace
    (mknod is not allowed there), as runc does."""
    rootfd = os.open(rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        wanted = [{"path": f"/dev/{n}", "type": "c", "major": ma, "minor": mi, "fileMode": 0o666,
                   "uid": 0, "gid": 0} for n, ma, mi in DEFAULT_DEVICES]
        wanted += devices
        old = os.umask(0)
        try:
            for d in wanted:
                _make_device(rootfd, d, in_userns)
        finally:
            os.umask(old)
        devfd = open_in_root(rootfd, "/dev", create="dir")
        try:
            dfd = sc.openat2(devfd, ".", os.O_RDONLY | os.O_DIRECTORY, 0)
        finally:
            os.close(devfd)
        try:
            links = list(DEV_SYMLINKS)
            if os.path.exists("/proc/kcore"):
                links.append(("core", "/proc/kcore"))
            links.append(("ptmx", "pts/ptmx"))
            for name, target in links:
                if name == "ptmx":
                    try:
                        os.unlink(name, dir_fd=dfd)
                    except FileNotFoundError:
                        pass
                try:
                    os.symlink(target, name, dir_fd=dfd)
                except FileExistsError:
                    pass
        finally:
            os.close(dfd)
    finally:
        os.close(rootfd)


def _make_device(rootfd: int, d: dict[str, Any], in_userns: bool) -> None:
    path = d["path"]
    parent, name = os.path.split(path)
    pfd = open_in_root(rootfd, parent, create="dir")
    try:
        dfd = sc.openat2(pfd, ".", os.O_RDONLY | os.O_DIRECTORY, 0)
    finally:
        os.close(pfd)
    try:
        kind = {"c": stat.S_IFCHR, "u": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO}
        mode = (d.get("fileMode") or 0o666) & 0o7777
        rdev = os.makedev(d.get("major", 0), d.get("minor", 0))
        try:
            os.unlink(name, dir_fd=dfd)
        except FileNotFoundError:
            pass
        if in_userns and d["type"] != "p":
            os.close(os.open(name, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW,
                             0o644, dir_fd=dfd))
            fd = sc.openat2(dfd, name, os.O_PATH, sc.RESOLVE_NO_SYMLINKS)
            try:
                sc.mount(path, fdpath(fd), None, sc.MS_BIND)
            finally:
                os.close(fd)
            return
        os.mknod(name, mode | kind[d["type"]], rdev, dir_fd=dfd)
        os.chown(name, d.get("uid") or 0, d.get("gid") or 0, dir_fd=dfd, follow_symlinks=False)
    finally:
        os.close(dfd)


def pivot(rootfs: str) -> None:
    """pivot_root(".", ".") then detach the old root, as runc does (no put_old directory)."""
    oldroot = os.open("/", os.O_DIRECTORY | os.O_RDONLY | os.O_CLOEXEC)
    newroot = os.open(rootfs, os.O_DIRECTORY | os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fchdir(newroot)
        sc.pivot_root(".", ".")
        os.fchdir(oldroot)
        sc.mount(None, ".", None, sc.MS_SLAVE | sc.MS_REC)
        sc.umount2(".", sc.MNT_DETACH)
        os.chdir("/")
    finally:
        os.close(oldroot)
        os.close(newroot)


def mask_paths(paths: list[str]) -> None:
    """maskedPaths: /dev/null over files, an empty read-only tmpfs over directories."""
    null = os.stat("/dev/null")
    null_ok = stat.S_ISCHR(null.st_mode) and null.st_rdev == os.makedev(1, 3)
    for p in paths:
        try:
            st = os.stat(p)
        except (FileNotFoundError, NotADirectoryError):
            continue
        if stat.S_ISDIR(st.st_mode):
            sc.mount("tmpfs", p, "tmpfs", sc.MS_RDONLY)
        elif null_ok:
            sc.mount("/dev/null", p, None, sc.MS_BIND)
        else:
            raise OSError(errno.EINVAL, "/dev/null is not the null device; cannot mask", p)


def readonly_paths(paths: list[str]) -> None:
    for p in paths:
        try:
            sc.mount(p, p, None, sc.MS_BIND | sc.MS_REC)
        except (FileNotFoundError, NotADirectoryError):
            continue
        sc.mount(None, p, None, sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY | sc.MS_REC
                 | mount_flags_of(p))


def readonly_root() -> None:
    sc.mount(None, "/", None, sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY | mount_flags_of("/"))


def write_sysctl(sysctl: dict[str, str]) -> None:
    """After pivot_root, through the container's own /proc (verified to be procfs)."""
    if not sysctl:
        return
    procfs = 0x9FA0
    fd = os.open("/proc/sys", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        if sc.fstatfs_type(fd) != procfs:
            raise OSError(errno.EINVAL, "/proc/sys is not procfs", "/proc/sys")
        for key, value in sysctl.items():
            rel = key.replace(".", "/")
            wfd = sc.openat2(fd, rel, os.O_WRONLY, sc.RESOLVE_BENEATH | sc.RESOLVE_NO_SYMLINKS)
            try:
                os.write(wfd, value.encode())
            finally:
                os.close(wfd)
    finally:
        os.close(fd)

