"""Content-addressed blob store: ``ROOT/content/blobs/sha256/<hex>``.

A blob only ever appears under its name after its bytes were hashed and matched: it is written to
``ROOT/content/ingest/<random>`` and renamed into place, so readers never see a partial or wrong
blob, and an interrupted write leaves only an ingest file that `cleanup` removes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Self

from snapshotter.digest import CHUNK, HashingWriter, check_digest, hex_of
from snapshotter.errors import ImageError, NotFound


class ContentStore:
    def __init__(self, root: str | Path):
        self.root = Path(root) / "content"
        self.blobs = self.root / "blobs" / "sha256"
        self.ingest_dir = self.root / "ingest"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.ingest_dir.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        return self.blobs / hex_of(digest)

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def size(self, digest: str) -> int:
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            raise NotFound(f"blob {digest} not found") from None

    def read(self, digest: str) -> bytes:
        try:
            return self.path(digest).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"blob {digest} not found") from None

    def open(self, digest: str) -> BinaryIO:
        try:
            return open(self.path(digest), "rb")
        except FileNotFoundError:
            raise NotFound(f"blob {digest} not found") from None

    def new_writer(self) -> BlobWriter:
        return BlobWriter(self)

    def ingest(self, src: BinaryIO, expected: str | None = None, size: int | None = None,
               on_bytes=None) -> tuple[str, int, bool]:
        """Copy SRC into the store and return (digest, size, newly_added).

        With EXPECTED (and SIZE) given, the bytes must match or ImageError is raised and nothing
        is stored.
        """
        if expected is not None:
            check_digest(expected)
        with self.new_writer() as w:
            while chunk := src.read(CHUNK):
                w.write(chunk)
                if on_bytes:
                    on_bytes(len(chunk))
            return w.commit(expected, size)

    def put_bytes(self, data: bytes, expected: str | None = None) -> tuple[str, bool]:
        with self.new_writer() as w:
            w.write(data)
            digest, _, new = w.commit(expected, len(data))
        return digest, new

    def delete(self, digest: str) -> None:
        try:
            self.path(digest).unlink()
        except FileNotFoundError:
            pass

    def list(self) -> Iterator[str]:
        for p in sorted(self.blobs.iterdir()):
            if len(p.name) == 64:
                yield "sha256:" + p.name

    def cleanup(self) -> None:
        """Remove leftover ingest files of interrupted writes."""
        for p in self.ingest_dir.glob("ingest-*"):
            p.unlink(missing_ok=True)


class BlobWriter:
    """Streams bytes into a temporary ingest file; `commit` verifies and renames it into place."""

    def __init__(self, store: ContentStore):
        self.store = store
        fd, name = tempfile.mkstemp(dir=store.ingest_dir, prefix="ingest-")
        self.tmp = Path(name)
        self._f = os.fdopen(fd, "wb")
        self._hw = HashingWriter(self._f)
        self._done = False

    def write(self, data: bytes) -> int:
        return self._hw.write(data)

    def flush(self) -> None:
        self._f.flush()

    @property
    def count(self) -> int:
        return self._hw.count

    def commit(self, expected: str | None = None, size: int | None = None
               ) -> tuple[str, int, bool]:
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        digest = self._hw.digest()
        if size is not None and self._hw.count != size:
            raise ImageError(f"blob {expected or digest}: size {self._hw.count} does not match "
                             f"the descriptor's {size}")
        if expected is not None and digest != expected:
            raise ImageError(f"blob digest mismatch: expected {expected}, got {digest}")
        dest = self.store.path(digest)
        new = not dest.exists()
        if new:
            os.chmod(self.tmp, 0o644)
            os.replace(self.tmp, dest)
        self._done = True
        return digest, self._hw.count, new

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()
        if not self._done or self.tmp.exists():
            self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def copy_blob(store: ContentStore, digest: str, dest: str | Path) -> None:
    with store.open(digest) as src, open(dest, "wb") as out:
        shutil.copyfileobj(src, out, CHUNK)
