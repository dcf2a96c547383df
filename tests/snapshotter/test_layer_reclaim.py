"""Issue 14, case 7: layers of an image removed while something still built on them are
reclaimed by `pyunion snapshot cleanup` once nothing does."""

from __future__ import annotations

import os

from snapshotter.images import ImageStore
from tests.imagebuild import build_busybox_image
from tests.mounting import pyunion


def _snaps(root) -> list[str]:
    out = pyunion("snapshot", "--root", str(root), "ls", "--format", "json").stdout
    import json
    return sorted(x["name"] for x in json.loads(out))


def test_cleanup_reclaims_layers_of_a_removed_image(tmp_path):
    root = tmp_path / "root"
    src = build_busybox_image(tmp_path / "img", "oci")
    keep = build_busybox_image(tmp_path / "img2", "oci",
                               extra_layers=[{"srv/x": "x\n"}])
    with ImageStore(root) as s:
        chains = s.import_path(src, name="a:1").chain_ids
        kept = s.import_path(keep, name="b:1").chain_ids      # shares a's layers
    pyunion("snapshot", "--root", str(root), "prepare", "ctr", chains[-1])
    pyunion("image", "rm", "--root", str(root), "a:1", "b:1")
    assert _snaps(root) == sorted(["ctr", *chains])   # ctr builds on them: they stay
    pyunion("snapshot", "--root", str(root), "rm", "ctr")
    pyunion("snapshot", "--root", str(root), "prepare", "mine")   # not an image layer
    pyunion("snapshot", "--root", str(root), "commit", "mine-c", "mine")
    pyunion("snapshot", "--root", str(root), "cleanup")
    assert _snaps(root) == ["mine-c"]
    assert len(os.listdir(root / "snapshots")) == 1
    assert kept[:2] == chains
