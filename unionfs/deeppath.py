"""Layer paths of any length, through directory descriptors.

A merged path the kernel accepts (PATH_MAX counts from the caller's working directory, and a
mount's own prefix is usually shorter than a layer's) can be longer than PATH_MAX once the
layer's path is put in front. Such a path is reached through an `O_PATH` descriptor of a deep
ancestor directory, opened relative to the previous one in steps well under PATH_MAX, and named
as `/proc/self/fd/N/REST`: every path-taking call (xattrs and truncate included) then works at
any depth. Short paths, the common case, are used as they are.

Descriptors are cached per (layer root, directory path) and bounded; a layer whose directories
move (the upper, on rename or rmdir) is forgotten by `forget(root)`.
"""

from __future__ import annotations

import os

FAST = 1000         # characters: below this a path is surely under PATH_MAX (4 bytes a char)
SHORT = 3500        # bytes: a path below this is used as it is
STEP = 2000         # bytes opened relative to the previous descriptor at a time
MAX_FDS = 256       # cached directory descriptors; all are closed when more are needed


class DeepPaths:
    def __init__(self) -> None:
        self._fds: dict[tuple[str, str], int] = {}

    def path(self, base: str, rel: str) -> str:
        """A name for `base/rel` that the kernel accepts whatever its length."""
        full = f"{base}/{rel}" if rel else base
        if len(full) < FAST or len(os.fsencode(full)) < SHORT:
            return full
        parts = rel.split("/")
        fd: int | None = None
        prefix = ""
        chunk: list[str] = []
        size = 0
        for i, comp in enumerate(parts[:-1]):
            n = len(os.fsencode(comp)) + 1
            if chunk and size + n > STEP:
                try:
                    fd = self._open(base, prefix, chunk, fd)
                except (FileNotFoundError, NotADirectoryError):
                    # A directory on the way is missing: name something below it, so every
                    # call fails as it would on the whole path (ENOENT/ENOTDIR), none creates.
                    at = self._dirfd(base) if fd is None else fd
                    return f"/proc/self/fd/{at}/{'/'.join(chunk)}/{parts[-1]}"
                prefix = "/".join(parts[:i])
                chunk, size = [], 0
            chunk.append(comp)
            size += n
        rest = "/".join(chunk + parts[-1:])
        if fd is None and len(os.fsencode(base)) + 1 + size + len(os.fsencode(parts[-1])) < SHORT:
            return full
        if fd is None:
            fd = self._dirfd(base)
        return f"/proc/self/fd/{fd}/{rest}"

    def _dirfd(self, base: str) -> int:
        key = (base, "")
        fd = self._fds.get(key)
        if fd is None:
            self._trim()
            fd = self._fds[key] = os.open(base, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        return fd

    def _open(self, base: str, prefix: str, chunk: list[str], at: int | None) -> int:
        path = "/".join([prefix, *chunk]) if prefix else "/".join(chunk)
        key = (base, path)
        fd = self._fds.get(key)
        if fd is None:
            where = self._dirfd(base) if at is None else at
            fd = os.open("/".join(chunk), os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC,
                         dir_fd=where)
            self._trim()
            self._fds[key] = fd
        return fd

    def _trim(self) -> None:
        if len(self._fds) >= MAX_FDS:
            self.close()

    def forget(self, base: str) -> None:
        """Directories under `base` may have moved: drop what was opened below it."""
        for key in [k for k in self._fds if k[0] == base and k[1]]:
            os.close(self._fds.pop(key))

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
