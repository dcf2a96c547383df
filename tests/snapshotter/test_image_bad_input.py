"""Issue 14, cases 10 and 12 (images and snapshots): config types checked at import, a listing
creates nothing, a file as --root is one clear line, export does not make missing directories,
a docker manifest.json of non-objects, a snapshot key with a newline."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from snapshotter.conversion import convert
from snapshotter.errors import InvalidArgument
from tests.badinput import refused
from tests.imagebuild import build_busybox_image
from tests.mounting import pyunion
from tests.snapshotter.test_images import rewrite_layout


@pytest.fixture(scope="module")
def bb(tmp_path_factory) -> Path:
    return build_busybox_image(tmp_path_factory.mktemp("img") / "bb", "oci", name="t/bb:1")


@pytest.mark.parametrize("field, value", [
    ("WorkingDir", ["x"]), ("Cmd", "echo hi"), ("Entrypoint", [1]), ("Env", "A=1"),
    ("User", 0), ("Labels", {"a": 1}), ("ExposedPorts", ["80/tcp"]), ("StopSignal", 9),
])
def test_config_types_checked_at_import(tmp_path, bb, field, value):
    root = tmp_path / "root"
    pyunion("image", "import", str(bb), "--name", "ok", "--root", str(root))
    bad = tmp_path / "bad"
    shutil.copytree(bb, bad)
    rewrite_layout(bad, config=lambda c: c.setdefault("config", {}).update({field: value}))
    refused(["image", "import", str(bad), "--name", "bad", "--root", str(root)], 1,
            watch=[root], contains=f"config.{field}")


def test_run_of_a_stored_config_with_wrong_types_is_an_error_not_a_traceback():
    with pytest.raises(InvalidArgument, match="WorkingDir"):
        convert({"config": {"WorkingDir": ["x"], "Cmd": ["true"]}})
    with pytest.raises(InvalidArgument, match="Cmd"):
        convert({"config": {"Cmd": "echo hi"}})


def test_listing_a_missing_store_creates_nothing(tmp_path):
    root = tmp_path / "missing" / "store"
    for args in (["image", "ls"], ["image", "ls", "--format", "json"], ["snapshot", "ls"]):
        r = pyunion(*args, "--root", str(root))
        assert r.stderr == ""
    assert not (tmp_path / "missing").exists()
    for args, what in ((["image", "inspect", "x"], "not found"),
                       (["image", "rm", "x"], "not found"),
                       (["image", "export", "x", str(tmp_path / "out")], "not found"),
                       (["image", "commit", "k", "n"], "does not exist"),
                       (["run", "x"], "not found")):
        status = 125 if args[0] == "run" else 1
        refused([args[0], "--root", str(root), *args[1:]], status, watch=[tmp_path],
                contains=what)


@pytest.mark.parametrize("cmd", [["image", "ls"], ["image", "import", "x"], ["snapshot", "ls"],
                                 ["snapshot", "prepare", "k"], ["run", "x"]])
def test_a_file_as_root_is_one_clear_line(tmp_path, cmd):
    f = tmp_path / "file"
    f.write_text("not a store\n")
    status = 125 if cmd[0] == "run" else 1
    line = refused([cmd[0], "--root", str(f), *cmd[1:]], status, watch=[tmp_path])
    assert "not a directory" in line and "Errno" not in line, line


def test_export_does_not_create_missing_directories(tmp_path, bb):
    root = tmp_path / "root"
    pyunion("image", "import", str(bb), "--name", "a", "--root", str(root))
    for out in ("missing/dir/out", "missing/dir/out.tar"):
        refused(["image", "export", "a", str(tmp_path / out), "--root", str(root)], 1,
                watch=[tmp_path], contains="does not exist")


def test_manifest_json_of_non_objects(tmp_path):
    d = tmp_path / "img"
    d.mkdir()
    (d / "manifest.json").write_text(json.dumps([1, 2, 3]))
    line = refused(["image", "import", str(d), "--root", str(tmp_path / "root")], 1,
                   watch=[d])
    assert "3 images" not in line and "manifest.json" in line


@pytest.mark.parametrize("key", ["a\nb", "tab\there", "\x7f"])
def test_snapshot_key_with_control_characters_refused(tmp_path, key):
    root = tmp_path / "root"
    pyunion("snapshot", "--root", str(root), "prepare", "ok")
    refused(["snapshot", "--root", str(root), "prepare", key], 1, watch=[root],
            contains="control character")
    refused(["snapshot", "--root", str(root), "commit", key, "ok"], 1, watch=[root],
            contains="control character")
