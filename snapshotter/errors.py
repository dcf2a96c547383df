"""Error kinds shared by the snapshot store, image store and CLIs.

They mirror containerd's errdefs (NotFound, AlreadyExists, InvalidArgument, FailedPrecondition) so
callers can react the way containerd's unpacker and GC do; `str(e)` is the one-line message a CLI
prints on stderr.
"""

from __future__ import annotations


class SnapshotterError(Exception):
    """Base class; str(e) is the one-line message."""


class NotFound(SnapshotterError):
    """The key, name, parent or image does not exist."""


class AlreadyExists(SnapshotterError):
    """The key or name is taken (keys and names share one key space)."""


class InvalidArgument(SnapshotterError):
    """A malformed request: parent not committed, immutable field path, bad filter, ..."""


class FailedPrecondition(SnapshotterError):
    """The request is valid but the current state forbids it (children exist, view commit)."""


class ImageError(SnapshotterError):
    """Malformed image, digest mismatch or hostile layer."""
