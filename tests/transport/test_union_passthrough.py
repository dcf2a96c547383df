"""The union on our transport: which files pass through, and what that costs.

Default (passthrough=on, old name `all`): upper files and lower files opened read-only pass
through: the kernel then binds the inode to the lower file while the reader holds it, so a
writer's copy-up is served on a new kernel inode and that reader keeps the lower copy (the one
documented difference from overlayfs, pinned here; docs/transport.md). passthrough=upper passes
only upper files, so a reader of a lower file follows a copy-up made by a writer, as on overlayfs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.mounting import mounted


def _layers(tmp_path: Path) -> tuple[Path, Path, Path]:
    low, up, mnt = tmp_path / "low", tmp_path / "up", tmp_path / "mnt"
    for d in (low, up, mnt):
        d.mkdir()
    (low / "f").write_bytes(b"lower data")
    return low, up, mnt


def test_passthrough_upper_reader_of_a_lower_file_follows_a_copy_up(tmp_path):
    low, up, mnt = _layers(tmp_path)
    with mounted(up, [low], mnt, options=["backend=kernel", "passthrough=upper",
                                          f"workdir={tmp_path / 'w'}"]):
        with open(mnt / "f", "rb") as reader:
            with open(mnt / "f", "r+b") as writer:        # copies up, is passed through
                writer.write(b"UPPER")
            assert reader.read() == b"UPPER data"         # overlayfs: the reader sees it
        assert (up / "f").read_bytes() == b"UPPER data"
        assert (low / "f").read_bytes() == b"lower data"
        data = os.urandom(3 << 20)
        (mnt / "new").write_bytes(data)                    # upper file, passed through
        assert (mnt / "new").read_bytes() == data


@pytest.mark.parametrize("mode", [None, "passthrough=on", "passthrough=all"])
def test_default_writer_copies_up_while_a_lower_reader_keeps_the_lower_copy(tmp_path, mode):
    """The kernel binds the inode to the lower file while the reader holds it; the writer's
    open (a copy-up) gets a new kernel inode for the same file, so it succeeds at once. The
    price: that reader keeps reading the lower copy (overlayfs would show it the new data)."""
    low, up, mnt = _layers(tmp_path)
    opts = ["backend=kernel", f"workdir={tmp_path / 'w'}"] + ([mode] if mode else [])
    with mounted(up, [low], mnt, options=opts):
        with open(mnt / "f", "rb") as reader:
            ino = os.fstat(reader.fileno()).st_ino
            with open(mnt / "f", "r+b") as writer:        # copies up, is passed through
                writer.write(b"UPPER")
                writer.flush()
                assert os.fstat(writer.fileno()).st_ino == ino
                with open(mnt / "f", "rb") as late:       # opened after the copy-up
                    assert late.read() == b"UPPER data"
            assert reader.read() == b"lower data"          # the documented cost
            assert (mnt / "f").read_bytes() == b"UPPER data"
            assert os.stat(mnt / "f").st_ino == ino
        assert (mnt / "f").read_bytes() == b"UPPER data"
        with open(mnt / "f", "ab") as appender:           # the upper inode again: no conflict
            appender.write(b"!")
        assert (mnt / "f").read_bytes() == b"UPPER data!"
        assert (up / "f").read_bytes() == b"UPPER data!"
        assert (low / "f").read_bytes() == b"lower data"


def test_passthrough_option_is_checked():
    from tests.mounting import pyunion
    r = pyunion("mount", "-o", "passthrough=maybe", "/nonexistent:/nonexistent2", "/x",
                check=False)
    assert r.returncode != 0 and "passthrough=on, upper or off" in r.stderr
