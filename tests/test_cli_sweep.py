"""Issue 14: every `pyunion` subcommand with missing, wrong-type and hostile arguments: one line
on stderr, exit 2 for a usage error and 1 for a refused operation (125 for `run`), no traceback,
nothing created, nothing left mounted or running (tests/badinput.refused checks all of it)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.badinput import refused

LONG = "x" * 5000
NL = "bad\nname"


def _cases(b: Path) -> dict[str, tuple[list[str], int]]:
    """name -> (argv after `pyunion`, exit status). B holds a store `root` (one snapshot
    `base`, committed), layer directories u/ and l/, an empty mnt/, a file `f` and a store `bad`
    whose databases are not SQLite."""
    r = ["--root", str(b / "root")]
    spec = f"{b / 'u'}:{b / 'l'}"
    mnt, f, missing = str(b / "mnt"), str(b / "f"), str(b / "missing" / "x")
    bad = str(b / "bad")     # a store whose databases are not SQLite
    return {
        # the command itself
        "no command": ([], 2),
        "unknown command": (["frobnicate"], 2),
        "unknown flag": (["--frobnicate"], 2),
        # mount / umount
        "mount: nothing": (["mount"], 2),
        "mount: one argument": (["mount", spec], 2),
        "mount: three arguments": (["mount", spec, mnt, mnt], 2),
        "mount: spec without lower": (["mount", str(b / "u"), mnt], 2),
        "mount: missing lower": (["mount", f"{b / 'u'}:{missing}", mnt], 1),
        "mount: file as lower": (["mount", f"{b / 'u'}:{f}", mnt], 1),
        "mount: file as target": (["mount", spec, f], 1),
        "mount: missing target": (["mount", spec, missing], 1),
        "mount: newline in target": (["mount", spec, str(b / NL)], 1),
        "mount: long target": (["mount", spec, str(b / LONG)], 1),
        "mount: long lower": (["mount", f"{b / 'u'}:{b / LONG}", mnt], 1),
        "mount: option injection": (["mount", "-o", "workdir=x,lowerdir", spec, mnt], 2),
        "mount: option with newline": (["mount", "-o", "fsname=a\nb", spec, mnt], 2),
        "mount: -o without list": (["mount", spec, mnt, "-o"], 2),
        "mount: target is /": (["mount", spec, "/"], 1),
        "mount: lower is /": (["mount", f"{b / 'u'}:/", mnt], 1),
        "mount: upper is a link to the lower": (["mount", f"{b / 'ul'}:{b / 'l'}", mnt], 1),
        "mount: workdir through a link into the lower": (["mount", "-o", f"workdir={b / 'ul'}/w",
                                                          spec, mnt], 1),
        "umount: nothing": (["umount"], 2),
        "umount: two targets": (["umount", mnt, mnt], 2),
        "umount: unknown flag": (["umount", "--force", mnt], 2),
        "umount: not mounted": (["umount", mnt], 1),
        "umount: missing": (["umount", missing], 1),
        "umount: /": (["umount", "/proc/self"], 1),
        "compat: no lowerdir": (["-o", f"upperdir={b / 'u'}", mnt], 2),
        "compat: too many": (["a", "b", "c", "-o", f"lowerdir={b / 'l'}"], 2),
        # image
        "image: no verb": (["image", *r], 2),
        "image: unknown verb": (["image", "frob", *r], 2),
        "image import: no path": (["image", "import", *r], 2),
        "image import: missing": (["image", "import", missing, *r], 1),
        "image import: a file that is no image": (["image", "import", f, *r], 1),
        "image import: empty dir": (["image", "import", str(b / "mnt"), *r], 1),
        "image import: bad name": (["image", "import", str(b / "l"), "--name", NL, *r], 1),
        "image import: long name": (["image", "import", str(b / "l"), "--name", LONG, *r], 1),
        "image import: bad platform": (["image", "import", str(b / "l"), "--platform", "x",
                                        *r], 1),
        "image ls: bad format": (["image", "ls", "--format", "xml", *r], 2),
        "image ls: extra argument": (["image", "ls", "extra", *r], 2),
        "image inspect: none": (["image", "inspect", *r], 2),
        "image inspect: missing": (["image", "inspect", "nope", *r], 1),
        "image inspect: hostile name": (["image", "inspect", "../../etc/passwd", *r], 1),
        "image rm: none": (["image", "rm", *r], 2),
        "image rm: missing": (["image", "rm", "nope", *r], 1),
        "image export: none": (["image", "export", *r], 2),
        "image export: missing image": (["image", "export", "nope", str(b / "out"), *r], 1),
        "image export: bad format": (["image", "export", "a", "b", "--format", "zip", *r], 2),
        "image commit: none": (["image", "commit", *r], 2),
        "image commit: missing key": (["image", "commit", "nokey", "n", *r], 1),
        "image commit: committed key": (["image", "commit", "base", "n", *r], 1),
        "image commit: bad compression": (["image", "commit", "k", "n", "--compression",
                                           "lz4", *r], 2),
        "image: --root without dir": (["image", "ls", "--root"], 2),
        "image: --root is a file": (["image", "ls", "--root", f], 1),
        # snapshot
        "snapshot: no verb": (["snapshot", *r], 2),
        "snapshot: unknown verb": (["snapshot", "frob", *r], 2),
        "snapshot prepare: none": (["snapshot", "prepare", *r], 2),
        "snapshot prepare: existing": (["snapshot", "prepare", "base", *r], 1),
        "snapshot prepare: missing parent": (["snapshot", "prepare", "k", "nope", *r], 1),
        "snapshot prepare: newline key": (["snapshot", "prepare", NL, *r], 1),
        "snapshot prepare: bad label": (["snapshot", "prepare", "k", "--label", "novalue",
                                         *r], 2),
        "snapshot prepare: huge label": (["snapshot", "prepare", "k", "--label", f"a={LONG}",
                                          *r], 1),
        "snapshot prepare: bad format": (["snapshot", "prepare", "k", "--format", "xml", *r], 2),
        "snapshot view: none": (["snapshot", "view", *r], 2),
        "snapshot commit: none": (["snapshot", "commit", *r], 2),
        "snapshot commit: missing key": (["snapshot", "commit", "n", "nope", *r], 1),
        "snapshot commit: newline name": (["snapshot", "commit", NL, "base", *r], 1),
        "snapshot rm: none": (["snapshot", "rm", *r], 2),
        "snapshot rm: missing": (["snapshot", "rm", "nope", *r], 1),
        "snapshot info: missing": (["snapshot", "info", "nope", *r], 1),
        "snapshot ls: bad filter": (["snapshot", "ls", "--filter", "name=", *r], 1),
        "snapshot ls: bad regexp": (["snapshot", "ls", "--filter", "name~=(", *r], 1),
        "snapshot usage: missing": (["snapshot", "usage", "nope", *r], 1),
        "snapshot mounts: committed": (["snapshot", "mounts", "base", *r], 1),
        "snapshot label: bad pair": (["snapshot", "label", "base", "x", *r], 2),
        "snapshot mount: none": (["snapshot", "mount", *r], 2),
        "snapshot mount: committed": (["snapshot", "mount", "base", mnt, *r], 1),
        "snapshot mount: missing target": (["snapshot", "mount", "base", missing, *r], 1),
        "snapshot umount: none": (["snapshot", "umount", *r], 2),
        "snapshot umount: not mounted": (["snapshot", "umount", mnt, *r], 1),
        "snapshot: --root is a file": (["snapshot", "ls", "--root", f], 1),
        "snapshot: root with a colon": (["snapshot", "prepare", "k", "--root",
                                         str(b / "a:b")], 1),
        "snapshot: broken metadata database": (["snapshot", "ls", "--root", bad], 1),
        "image: broken metadata database": (["image", "ls", "--root", bad], 1),
        # snapshotter (containerd's proxy plugin)
        "snapshotter: no verb": (["snapshotter"], 2),
        "snapshotter: unknown verb": (["snapshotter", "frob"], 2),
        "snapshotter serve: no address": (["snapshotter", "serve", *r], 2),
        "snapshotter serve: root with a colon": (["snapshotter", "serve", "--address",
                                                  str(b / "s.sock"), "--root", str(b / "a:b")],
                                                 1),
        "snapshotter serve: address under a file": (["snapshotter", "serve", "--address",
                                                     f"{f}/s.sock", *r], 1),
        # run / rm
        "run: nothing": (["run", *r], 2),
        "run: unknown flag": (["run", "--frob", *r, "img"], 2),
        "run: missing image": (["run", *r, "nope"], 125),
        "run: hostile name": (["run", *r, "--name", "../../x", "nope"], 2),
        "run: newline name": (["run", *r, "--name", NL, "nope"], 2),
        "run: -e without value": (["run", *r, "-e"], 2),
        "run: broken metadata database": (["run", "--root", bad, "img"], 125),
        "rm: nothing": (["rm", *r], 2),
        "rm: missing": (["rm", *r, "nope"], 1),
        "rm: hostile name": (["rm", *r, "../../etc"], 2),
        "rm: broken metadata database": (["rm", "--root", bad, "c1"], 1),
        # runtime: runc's command line, and runc's exit status 1 for every error
        "runtime: unknown flag": (["runtime", "--root", str(b / "rt"), "--frob"], 1),
        "runtime state: no id": (["runtime", "--root", str(b / "rt"), "state"], 1),
        "runtime state: missing": (["runtime", "--root", str(b / "rt"), "state", "nope"], 1),
        "runtime create: missing bundle": (["runtime", "--root", str(b / "rt"), "create",
                                            "--bundle", missing, "x"], 1),
        "runtime kill: bad signal": (["runtime", "--root", str(b / "rt"), "kill", "x",
                                      "NOSIG"], 1),
        # demo
        "demo: unknown flag": (["demo", "--frob"], 2),
    }


CASES = list(_cases(Path("/x")))


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    from snapshotter.snapshots import Snapshotter
    b = tmp_path_factory.mktemp("sweep")
    for d in ("u", "l", "mnt"):
        (b / d).mkdir()
    (b / "l" / "file").write_text("lower\n")
    (b / "f").write_text("a file\n")
    (b / "ul").symlink_to(b / "l")
    (b / "bad" / "snapshots").mkdir(parents=True, mode=0o700)   # what opening a store makes
    (b / "bad" / "metadata.db.lock").touch(mode=0o600)
    for db in ("metadata.db", "images.db"):
        (b / "bad" / db).write_text("not a database\n")
    with Snapshotter(b / "root") as sn:
        sn.prepare("base-a")
        sn.commit("base", "base-a")
    return b


@pytest.mark.parametrize("case", CASES)
def test_refused_in_one_line_changing_nothing(base: Path, case: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("mount cases need root")
    args, status = _cases(base)[case]
    refused(args, status, watch=[base], cwd=base)
