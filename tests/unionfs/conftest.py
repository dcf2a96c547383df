"""Fixtures for the union-mount tests: root-only skip and a mount-safe scratch directory."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unionfs.oracle_support import unmount_all_under


@pytest.fixture
def oracle_base(tmp_path: Path) -> Iterator[Path]:
    """A scratch directory that never keeps a mount: whatever a test left is lazily unmounted.

    A test that leaves something mounted fails here, after cleaning up, so the leak is seen.
    """
    if os.geteuid() != 0:
        pytest.skip("needs root (kernel overlayfs, mknod whiteouts, trusted xattrs)")
    try:
        yield tmp_path
    finally:
        left = unmount_all_under(tmp_path)
    assert not left, f"test left mounts behind: {left}"
