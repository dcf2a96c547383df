"""The union on our transport: which files pass through, and what that costs.

Default (passthrough=on): only upper files are passed through, so a reader of a lower file
follows a copy-up made by a writer, as on kernel overlayfs. passthrough=all passes lower files
through too: the kernel then binds the inode to the lower file while the reader holds it, so a
writer gets ETXTBSY until the reader closes (pinned here; docs/transport.md)."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import pytest

from tests.mounting import mounted


def _layers(tmp_path: Path) -> tuple[Path, Path, Path]:
    low, up, mnt = tmp_path / "low", tmp_path / "up", tmp_path / "mnt"
    for d in (low, up, mnt):
        d.mkdir()
    (low / "f").write_bytes(b"lower data")
    return low, up, mnt


def test_default_reader_of_a_lower_file_follows_a_copy_up(tmp_path):
    low, up, mnt = _layers(tmp_path)
    with mounted(up, [low], mnt, options=["backend=kernel", f"workdir={tmp_path / 'w'}"]):
        with open(mnt / "f", "rb") as reader:
            with open(mnt / "f", "r+b") as writer:        # copies up, is passed through
                writer.write(b"UPPER")
            assert reader.read() == b"UPPER data"         # overlayfs: the reader sees it
        assert (up / "f").read_bytes() == b"UPPER data"
        assert (low / "f").read_bytes() == b"lower data"
        data = os.urandom(3 << 20)
        (mnt / "new").write_bytes(data)                    # upper file, passed through
        assert (mnt / "new").read_bytes() == data


def test_passthrough_all_makes_a_writer_wait_for_lower_readers(tmp_path):
    low, up, mnt = _layers(tmp_path)
    with mounted(up, [low], mnt, options=["backend=kernel", "passthrough=all",
                                          f"workdir={tmp_path / 'w'}"]):
        with open(mnt / "f", "rb") as reader:
            with pytest.raises(OSError) as e:
                os.open(mnt / "f", os.O_RDWR)
            assert e.value.errno == errno.ETXTBSY
            assert reader.read() == b"lower data"
        fd = None
        for _ in range(500):      # RELEASE of the reader reaches the daemon after close()
            try:
                fd = os.open(mnt / "f", os.O_RDWR)
                break
            except OSError as e:
                assert e.errno == errno.ETXTBSY
                time.sleep(0.01)
        assert fd is not None
        os.write(fd, b"UPPER")
        os.close(fd)
        assert (mnt / "f").read_bytes() == b"UPPER data"
        assert (low / "f").read_bytes() == b"lower data"


def test_passthrough_option_is_checked():
    from tests.mounting import pyunion
    r = pyunion("mount", "-o", "passthrough=maybe", "/nonexistent:/nonexistent2", "/x",
                check=False)
    assert r.returncode != 0 and "passthrough=on, off or all" in r.stderr
