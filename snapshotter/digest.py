"""sha256 digests and ChainIDs as the OCI image spec defines them (image-spec config.md).

A digest is the string ``sha256:<64 lowercase hex>``. DiffIDs are digests of uncompressed layer
tars; ``ChainID(L0) = DiffID(L0)`` and ``ChainID(L0..Ln) = sha256(ChainID(L0..Ln-1) + " " +
DiffID(Ln))``, so a ChainID names a whole stack of layers and is the key of a committed snapshot.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from typing import BinaryIO

from snapshotter.errors import ImageError

_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
CHUNK = 1 << 20


def is_digest(value: object) -> bool:
    return isinstance(value, str) and bool(_DIGEST_RE.match(value))


def check_digest(value: object, what: str = "digest") -> str:
    """Return VALUE if it is a sha256 digest; anything else (other algorithms included) is refused
    because every blob is looked up and verified by it."""
    if not is_digest(value):
        raise ImageError(f"invalid {what}: {value!r} (expected sha256:<64 hex>)")
    return value  # type: ignore[return-value]


def hex_of(digest: str) -> str:
    return check_digest(digest)[len("sha256:"):]


def sha256_bytes(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def chain_id(parent: str | None, diff_id: str) -> str:
    check_digest(diff_id, "diff_id")
    if not parent:
        return diff_id
    return sha256_bytes(f"{parent} {diff_id}".encode())


def chain_ids(diff_ids: Iterable[str]) -> list[str]:
    out: list[str] = []
    for d in diff_ids:
        out.append(chain_id(out[-1] if out else None, d))
    return out


class HashingReader:
    """A read-only stream that hashes (and counts) every byte read through it, so a digest is
    computed in the same pass that consumes the data."""

    def __init__(self, raw: BinaryIO, on_bytes=None):
        self._raw = raw
        self._h = hashlib.sha256()
        self.count = 0
        self._on_bytes = on_bytes

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        if data:
            self._h.update(data)
            self.count += len(data)
            if self._on_bytes:
                self._on_bytes(len(data))
        return data

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True

    def drain(self) -> None:
        """Read to EOF: a digest covers the whole stream, including tar padding after the end."""
        while self.read(CHUNK):
            pass

    def digest(self) -> str:
        return "sha256:" + self._h.hexdigest()


class HashingWriter:
    """A write-only stream that hashes and counts what passes through to RAW."""

    def __init__(self, raw: BinaryIO):
        self._raw = raw
        self._h = hashlib.sha256()
        self.count = 0

    def write(self, data) -> int:
        self._h.update(data)
        self.count += len(data)
        return self._raw.write(data)

    def flush(self) -> None:
        self._raw.flush()

    def writable(self) -> bool:
        return True

    def digest(self) -> str:
        return "sha256:" + self._h.hexdigest()
