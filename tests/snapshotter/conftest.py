"""Fixtures shared by the snapshotter tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from snapshotter.snapshots import Snapshotter


@pytest.fixture
def sn(tmp_path) -> Iterator[Snapshotter]:
    """A fresh snapshot store, closed afterwards."""
    s = Snapshotter(tmp_path / "root")
    yield s
    s.close()
