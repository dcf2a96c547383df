"""Issue 14: import checks every layer of every image against the config's diff_ids, also when
the store already holds the layer's ChainID (a manifest that pairs a blob with another layer's
diff_id is refused, whatever the store has)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.badinput import refused
from tests.imagebuild import build_busybox_image
from tests.mounting import pyunion
from tests.snapshotter.test_images import rewrite_layout


@pytest.fixture(scope="module")
def bb(tmp_path_factory) -> Path:
    return build_busybox_image(tmp_path_factory.mktemp("img") / "bb", "oci", name="t/bb:1",
                               extra_layers=[{"srv/data.txt": "extra\n"}])


def _swapped(src: Path, dest: Path, order: list[int]) -> Path:
    """A copy of SRC whose manifest lists the same layer blobs in ORDER; config unchanged."""
    shutil.copytree(src, dest)

    def swap(man: dict) -> None:
        man["layers"] = [man["layers"][i] for i in order]
    rewrite_layout(dest, manifest=swap)
    return dest


@pytest.mark.parametrize("order", [[1, 0, 2], [0, 2, 1], [2, 1, 0]])
def test_reordered_layers_refused_when_the_store_holds_the_chain(tmp_path, bb, order):
    root = tmp_path / "root"
    pyunion("image", "import", str(bb), "--name", "good", "--root", str(root))
    bad = _swapped(bb, tmp_path / "bad", order)
    refused(["image", "import", str(bad), "--name", "bad", "--root", str(root)], 1,
            watch=[root], contains="does not match diff_id")
    assert pyunion("image", "ls", "-q", "--root", str(root)).stdout.split() == ["good"]


def test_reordered_layers_refused_in_an_empty_store(tmp_path, bb):
    root = tmp_path / "root"
    bad = _swapped(bb, tmp_path / "bad", [1, 0, 2])
    r = pyunion("image", "import", str(bad), "--root", str(root), check=False)
    assert r.returncode == 1 and "does not match diff_id" in r.stderr


def test_export_of_an_accepted_image_reimports(tmp_path, bb):
    """What the store accepted, it exports in a form a fresh store accepts too."""
    root = tmp_path / "root"
    pyunion("image", "import", str(bb), "--name", "a", "--root", str(root))
    pyunion("image", "import", str(bb), "--name", "b", "--root", str(root))
    pyunion("image", "export", "b", str(tmp_path / "out"), "--root", str(root))
    r = pyunion("image", "import", str(tmp_path / "out"), "--name", "b",
                "--root", str(tmp_path / "fresh"), check=False)
    assert r.returncode == 0, r.stderr
    data = json.loads(pyunion("image", "inspect", "b", "--root", str(root)).stdout)
    assert [x["diff_id"] for x in data["layers"]] == data["config"]["rootfs"]["diff_ids"]


def test_export_refuses_a_stored_image_whose_layers_do_not_verify(tmp_path, bb):
    """A record written before imports checked every layer (made here by hand: the manifest of
    a reordered copy put in place of the good one) is not exported."""
    import sqlite3

    from snapshotter.digest import sha256_bytes
    root = tmp_path / "root"
    pyunion("image", "import", str(bb), "--name", "good", "--root", str(root))
    bad = _swapped(bb, tmp_path / "bad", [1, 0, 2])
    index = json.loads((bad / "index.json").read_text())
    raw = (bad / "blobs/sha256" / index["manifests"][0]["digest"][7:]).read_bytes()
    digest = sha256_bytes(raw)
    (root / "content/blobs/sha256" / digest[7:]).write_bytes(raw)
    with sqlite3.connect(root / "images.db") as db:
        db.execute("UPDATE images SET manifest_digest = ? WHERE name = 'good'", (digest,))
    (tmp_path / "exports").mkdir()
    refused(["image", "export", "good", str(tmp_path / "exports" / "out"), "--root", str(root)],
            1, watch=[tmp_path / "exports"], contains="does not verify")
