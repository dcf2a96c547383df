"""A path inside a root directory, resolved as if that root were `/`: `..` never climbs above
it, and a symlink's target (an absolute one too) is taken from the root, never from the host.

One walk serves every caller: the layer applier (paths in a layer it is writing), the runtime
(mount destinations, devices and the working directory inside a container's rootfs) and
`pyunion run` (the image's /etc/passwd). Where the kernel can do it, openat2(RESOLVE_IN_ROOT)
does; the walk below is for what it cannot (creating missing components on the way, and
resolving a path to a string for a tree only we write to).
"""

from __future__ import annotations

import errno
import os
import stat
from collections import deque
from collections.abc import Callable, Iterable

from unionfs.libc import RESOLVE_IN_ROOT, RESOLVE_NO_MAGICLINKS, RESOLVE_NO_SYMLINKS, openat2

MAX_SYMLINKS = 40   # the kernel's own limit (MAXSYMLINKS)
IN_ROOT = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS


def resolve_parts(parts: Iterable[str], readlink: Callable[[list[str], str, bool], str | None],
                  max_links: int = MAX_SYMLINKS) -> list[str]:
    """The components, below the root, that PARTS lead to.

    READLINK(done, name, last) looks at name in the directory `done` (components below the root
    already resolved; LAST: nothing follows it): the symlink's target if it is one, else None
    (it may create a missing name, or raise, e.g. NotADirectoryError). Missing components are taken literally. More than
    MAX_LINKS symlinks raise OSError(ELOOP)."""
    todo = deque(parts)
    done: list[str] = []
    links = 0
    while todo:
        name = todo.popleft()
        if name in ("", "."):
            continue
        if name == "..":
            if done:
                done.pop()
            continue
        target = readlink(done, name, not todo)
        if target is None:
            done.append(name)
            continue
        links += 1
        if links > max_links:
            raise OSError(errno.ELOOP, "too many symlinks")
        if target.startswith("/"):
            done = []
        todo.extendleft(reversed(target.split("/")))
    return done


def resolve(root: str, path: str | Iterable[str], max_links: int = MAX_SYMLINKS) -> str:
    """PATH (a string or its components) resolved inside ROOT, as a path that lies in ROOT.

    For trees no one else changes meanwhile (a layer being unpacked): the result is a string,
    so a symlink swapped in after this call would be followed. Raises NotADirectoryError for a
    path below a non-directory and OSError(ELOOP) for a symlink loop."""
    parts = path.split("/") if isinstance(path, str) else list(path)

    def readlink(done: list[str], name: str, last: bool) -> str | None:
        cur = os.path.join(root, *done, name)
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            return None
        return os.readlink(cur) if stat.S_ISLNK(st.st_mode) else None

    return os.path.join(root, *resolve_parts(parts, readlink, max_links))


def open_in_root(rootfd: int, path: str, *, create: str | None = None) -> int:
    """O_PATH fd of PATH resolved inside the root ROOTFD; with CREATE ("dir" | "file"), a
    missing leaf is made as that and missing parents as directories, never leaving the root.

    Race-safe: every step opens its directory with openat2 scoped to the root and refusing
    symlinks, so a symlink swapped in concurrently cannot lead out (runc CVE-2021-30465)."""
    try:
        return openat2(rootfd, path, os.O_PATH, IN_ROOT)
    except FileNotFoundError:
        if create is None:
            raise
    parts = [p for p in path.split("/") if p]

    def readlink(done: list[str], name: str, last: bool) -> str | None:
        dfd = openat2(rootfd, "/".join(done) or ".", os.O_RDONLY | os.O_DIRECTORY,
                      IN_ROOT | RESOLVE_NO_SYMLINKS)
        try:
            try:
                st = os.lstat(name, dir_fd=dfd)
            except FileNotFoundError:
                st = None
            if st is not None and stat.S_ISLNK(st.st_mode):
                return os.readlink(name, dir_fd=dfd)
            if st is None:
                if last and create == "file":
                    os.close(os.open(name, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC
                                     | os.O_NOFOLLOW, 0o644, dir_fd=dfd))
                else:
                    os.mkdir(name, 0o755, dir_fd=dfd)
            return None
        finally:
            os.close(dfd)

    try:
        done = resolve_parts(parts, readlink)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise OSError(errno.ELOOP, "too many symlinks", path) from None
        raise
    return openat2(rootfd, "/".join(done) or ".", os.O_PATH, IN_ROOT | RESOLVE_NO_SYMLINKS)


def open_in_root_path(rootfs: str, path: str, *, create: str | None = None) -> int:
    """open_in_root with the root given by its path."""
    rootfd = os.open(rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return open_in_root(rootfd, path, create=create)
    finally:
        os.close(rootfd)


def read_in_root(rootfs: str | os.PathLike[str], path: str, limit: int = 1 << 22) -> str | None:
    """The text of file PATH inside ROOTFS (at most LIMIT bytes), or None if it cannot be read
    there; never through a symlink out of the root."""
    rootfd = os.open(rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fd = openat2(rootfd, path, os.O_RDONLY, IN_ROOT)
    except OSError:
        return None
    finally:
        os.close(rootfd)
    with os.fdopen(fd, "rb") as f:
        return f.read(limit).decode(errors="replace")
