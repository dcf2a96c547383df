"""`pyunion snapshot ...` end to end, through the real `python -m unionfs` entry point."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from snapshotter.snapshot_cli import split_root
from tests.mounting import force_unmount, is_mounted

REPO = Path(__file__).resolve().parents[2]


def snap(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "unionfs", "snapshot", *args], cwd=REPO,
                       capture_output=True, text=True, timeout=120, check=False)
    if ok:
        assert r.returncode == 0, r.stderr
    return r


def fails(*args: str, code: int = 1) -> str:
    r = snap(*args, ok=False)
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr  # one line, no traceback
    assert r.stdout == ""
    return lines[0]


def test_split_root_anywhere():
    assert split_root(["--root", "/r", "ls"]) == ("/r", ["ls"])
    assert split_root(["ls", "--root=/r", "--format", "json"]) == ("/r", ["ls", "--format",
                                                                         "json"])
    assert split_root(["rm", "--", "--root"]) == (None, ["rm", "--", "--root"])


def test_lifecycle(tmp_path):
    root = str(tmp_path / "root")
    snap("--root", root, "prepare", "a")
    snap("commit", "c", "a", "--label", "k=v", "--root", root)  # --root after the verb
    out = json.loads(snap("--root", root, "prepare", "b", "c", "--format", "json").stdout)
    assert out["key"] == "b"
    (m,) = out["mounts"]
    assert m["type"] == "fuse3.pyunion" and m["source"] == "pyunion"
    assert m["options"][0] == f"lowerdir={root}/snapshots/1/fs"
    assert json.loads(snap("--root", root, "mounts", "b", "--format", "json").stdout) == [m]
    text = snap("--root", root, "mounts", "b", "/mnt/x").stdout.strip()
    assert text == f"mount -t fuse3.pyunion pyunion /mnt/x -o {','.join(m['options'])}"

    table = snap("--root", root, "ls").stdout.splitlines()
    assert table[0].split() == ["KEY", "PARENT", "KIND"]
    assert sorted(line.split() for line in table[1:]) == [["b", "c", "active"],
                                                          ["c", "committed"]]
    listed = json.loads(snap("--root", root, "ls", "--filter", "kind==active", "--filter",
                             "labels.k==v", "--format", "json").stdout)
    assert sorted(i["name"] for i in listed) == ["b", "c"]
    info = json.loads(snap("--root", root, "info", "c").stdout)
    assert (info["kind"], info["parent"], info["labels"]) == ("committed", "", {"k": "v"})
    assert info["created"] == info["updated"]

    assert snap("--root", root, "label", "c", "x=1", "k=").stdout.split() == ["x=1"]
    assert json.loads(snap("--root", root, "label", "c", "--format", "json").stdout) == {
        "x": "1"}
    usage = json.loads(snap("--root", root, "usage", "--format", "json").stdout)
    assert {u["key"] for u in usage} == {"b", "c"}
    assert all(u["inodes"] == 1 and u["size"] >= 0 for u in usage)

    line = fails("--root", root, "rm", "c")
    assert "failed precondition" in line and "child" in line
    snap("--root", root, "rm", "b", "c")
    assert json.loads(snap("--root", root, "ls", "--format", "json").stdout) == []


def test_errors_are_one_line_and_change_nothing(tmp_path):
    root = str(tmp_path / "root")
    snap("--root", root, "prepare", "a")
    assert "not found" in fails("--root", root, "prepare", "x", "missing")
    assert "invalid argument" in fails("--root", root, "view", "x", "a")
    assert "already exists" in fails("--root", root, "prepare", "a")
    assert "not found" in fails("--root", root, "info", "nope")
    assert "not found" in fails("--root", root, "mounts", "nope")
    assert "invalid argument" in fails("--root", root, "ls", "--filter", "kind=active")
    assert "KEY=VALUE" in fails("--root", root, "label", "a", "novalue", code=2)
    fails("--root", root, "frobnicate", code=2)
    fails("--root", root, "prepare", code=2)
    fails("--root", code=2)
    listed = json.loads(snap("--root", root, "ls", "--format", "json").stdout)
    assert [i["name"] for i in listed] == ["a"]
    assert sorted(p.name for p in (tmp_path / "root" / "snapshots").iterdir()) == ["1"]


def test_cleanup_removes_orphans(tmp_path):
    root = tmp_path / "root"
    snap("--root", str(root), "prepare", "a")
    (root / "snapshots" / "new-crashed" / "fs").mkdir(parents=True)
    snap("--root", str(root), "cleanup")
    assert sorted(p.name for p in (root / "snapshots").iterdir()) == ["1"]


@pytest.fixture
def target(tmp_path):
    t = tmp_path / "mnt"
    t.mkdir()
    yield t
    if is_mounted(t):
        subprocess.run(["umount", "-l", str(t)], capture_output=True, timeout=30, check=False)
    force_unmount(t)


def test_mount_and_umount(tmp_path, target):
    root = str(tmp_path / "root")
    snap("--root", root, "prepare", "base-a")
    snap("--root", root, "mount", "base-a", str(target))  # no parent: a bind mount
    assert is_mounted(target)
    (target / "hello").write_text("from base\n")
    snap("--root", root, "umount", str(target))
    assert not is_mounted(target)
    assert (tmp_path / "root" / "snapshots" / "1" / "fs" / "hello").read_text() == "from base\n"
    snap("--root", root, "commit", "base", "base-a")

    snap("--root", root, "prepare", "top", "base")
    snap("--root", root, "mount", "top", str(target))  # one lower: a pyunion mount
    try:
        assert (target / "hello").read_text() == "from base\n"
        (target / "hello").write_text("changed\n")
        (target / "new").write_text("new\n")
    finally:
        snap("--root", root, "umount", str(target))
    assert not is_mounted(target)
    upper = tmp_path / "root" / "snapshots" / "2" / "fs"
    assert (upper / "hello").read_text() == "changed\n" and (upper / "new").exists()
    assert (tmp_path / "root" / "snapshots" / "1" / "fs" / "hello").read_text() == "from base\n"

    snap("--root", root, "view", "ro", "base")
    snap("--root", root, "mount", "ro", str(target))
    try:
        with pytest.raises(OSError):
            (target / "x").write_text("no")
    finally:
        snap("--root", root, "umount", str(target))
    assert "failed precondition" in fails("--root", root, "mount", "base", str(target))
    assert not is_mounted(target)


def test_two_cli_processes_racing_for_one_key(tmp_path):
    root = str(tmp_path / "root")
    snap("--root", root, "prepare", "base-a")
    snap("--root", root, "commit", "base", "base-a")
    cmd = [sys.executable, "-m", "unionfs", "snapshot", "--root", root]
    procs = [subprocess.Popen([*cmd, verb, "same", "base"], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
             for verb in ("prepare", "view", "prepare")]
    results = []
    for p in procs:
        try:
            _out, err = p.communicate(timeout=120)
        finally:
            p.kill()
        results.append((p.returncode, err.strip()))
    assert sorted(rc for rc, _ in results) == [0, 1, 1], results
    assert all("already exists" in err for rc, err in results if rc)
    listed = json.loads(snap("--root", root, "ls", "--format", "json").stdout)
    assert sorted(i["name"] for i in listed) == ["base", "same"]
    assert len(list((tmp_path / "root" / "snapshots").iterdir())) == 2


def test_looking_into_a_missing_store_creates_nothing(tmp_path):
    root = str(tmp_path / "no" / "store")
    assert json.loads(snap("--root", root, "ls", "--format", "json").stdout) == []
    assert "no snapshot store" in fails("--root", root, "info", "a")
    assert "no snapshot store" in fails("--root", root, "rm", "a")
    snap("--root", root, "cleanup")
    assert not (tmp_path / "no").exists()


def test_processes_racing_to_create_a_fresh_store(tmp_path):
    root = str(tmp_path / "fresh")
    procs = [subprocess.Popen([sys.executable, "-m", "unionfs", "snapshot", "--root", root,
                               "prepare", f"k{i}"], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(4)]
    for p in procs:
        try:
            _out, err = p.communicate(timeout=120)
        finally:
            p.kill()
        assert p.returncode == 0, err
    listed = json.loads(snap("--root", root, "ls", "--format", "json").stdout)
    assert sorted(i["name"] for i in listed) == ["k0", "k1", "k2", "k3"]
