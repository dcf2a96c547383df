"""Oracle test: random operation sequences on pyunion, kernel overlayfs and a plain directory.

A hypothesis state machine draws a two-lower stack (files, directories, symlinks, fifos,
devices, hard links among any of the non-directories, whiteouts in every dialect including
xattr whiteouts, and opaque directories, over a pool of three names so that collisions are the
rule) and then create/write/append/truncate/unlink/mkdir/rmdir/rename/link/symlink/mkfifo/chmod/
chown/setxattr/removexattr calls, hard-link sequences (link, unlink, re-link after delete,
rename among the names of one object), mkdir/rmdir churn, names of 250-255 bytes, a chain of
directories that brings paths near PATH_MAX, and at most one remount and one rotation of the
uppers into the lower stacks. Every call runs on all three roots through `OracleRun.do`, which
checks errno, merged tree (stat and read through every name, st_nlink, hard-link groups,
listings), upper-as-changeset and st_ino stability after each step, and a remount at the end.
What counts as right where overlayfs and POSIX differ (EXDEV directory renames, lower
hardlinks, names over 251 bytes) is documented in `oracle_support.OracleRun`.

Knobs (environment): PYUNION_ORACLE_EXAMPLES (examples per test, default 30),
PYUNION_ORACLE_STEPS (steps per example, default 25), PYUNION_ORACLE_RANDOM=1 (new random
sequences instead of the fixed CI ones), PYUNION_ORACLE_SHRINK=1 (shrink a failure to a minimal
sequence; slow with real mounts), PYUNION_ORACLE_NO_LOWER_HARDLINKS=1 (lowers without
hardlinks, to look past a known hardlink bug), PYUNION_ORACLE_LOWER_DEPTH (depth of the
drawn lowers, default 2). Keep any failure found as a case in test_oracle_regressions.py.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    precondition,
    rule,
    run_state_machine_as_test,
)

from tests.unionfs.oracle_support import (
    DIALECTS,
    Node,
    OracleRun,
    Tree,
    chardev,
    directory,
    fifo,
    file,
    hardlink,
    prune_pointless_whiteouts,
    symlink,
    whiteout,
)
from unionfs.libc import RENAME_EXCHANGE, RENAME_NOREPLACE

NAMES = ("a", "b", "c")
PATHS = [*NAMES, *(f"{x}/{y}" for x in NAMES for y in NAMES),
         *(f"{x}/{y}/{z}" for x in NAMES for y in NAMES for z in NAMES)]
# Relative and without "..": a symlink can never lead an operation out of its root.
LINK_TARGETS = ("a", "b", "c/a", "x", "a/b/c", "b/a")
XATTR_NAMES = ("user.a", "user.b")

paths = st.sampled_from(PATHS)
contents = st.one_of(st.sampled_from([b"", b"x", b"new", b"0123456789abcdef"]),
                     st.binary(max_size=10))
owners = st.sampled_from([(0, 0), (0, 0), (1000, 1000), (1000, 0)])
xattr_dicts = st.dictionaries(st.sampled_from(XATTR_NAMES), st.binary(max_size=4), max_size=2)


@st.composite
def file_nodes(draw) -> Node:
    uid, gid = draw(owners)
    return file(draw(contents), draw(st.sampled_from([0o644, 0o600, 0o755, 0o640, 0o4755])),
                uid, gid, draw(xattr_dicts))


@st.composite
def layers(draw, top: bool, max_depth: int | None = None) -> Tree:
    """One lower layer; only the top one (above another) has whiteouts and opaque dirs."""
    max_depth = max_depth or _env_int("PYUNION_ORACLE_LOWER_DEPTH", 2)
    wh = ["whiteout"] * top
    kinds = {1: ["absent"] * 2 + ["file"] * 2 + ["dir"] * 4 + ["symlink", "special"] + wh,
             2: ["absent"] * 3 + ["file"] * 3 + ["dir"] * 2 + ["symlink", "special"] + wh}
    layer: Tree = {}

    def fill(prefix: str, depth: int) -> None:
        for name in NAMES:
            path = prefix + name
            kind = draw(st.sampled_from(kinds[min(depth, 2)]))
            if kind == "file":
                layer[path] = draw(file_nodes())
            elif kind == "symlink":
                layer[path] = symlink(draw(st.sampled_from(LINK_TARGETS)))
            elif kind == "special":
                layer[path] = draw(st.sampled_from([fifo(), fifo(0o600, 1000, 1000),
                                                    chardev()]))
            elif kind == "whiteout":
                layer[path] = whiteout()
            elif kind == "dir":
                uid, gid = draw(owners)
                layer[path] = directory(draw(st.sampled_from([0o755, 0o700, 0o775])), uid, gid,
                                        top and draw(st.booleans()), draw(xattr_dicts))
                if depth < max_depth:
                    fill(path + "/", depth + 1)

    fill("", 1)
    files = sorted(p for p, n in layer.items() if n.kind in ("file", "symlink", "other"))
    if len(files) >= 2 and not os.environ.get("PYUNION_ORACLE_NO_LOWER_HARDLINKS"):
        used: set[str] = set()
        for src, dst in draw(st.lists(st.tuples(st.sampled_from(files), st.sampled_from(files)),
                                      max_size=2)):
            if src != dst and not used & {src, dst}:
                layer[dst] = hardlink(src)
                used.update((src, dst))
    return layer


@st.composite
def stacks(draw) -> list[Tree]:
    l2 = draw(layers(top=False))
    return [prune_pointless_whiteouts(draw(layers(top=True)), [l2]), l2]


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


class UnionOracle(RuleBasedStateMachine):
    """Rules are thin: everything is checked by OracleRun.do after each call."""

    base: Path
    subject = "pyunion"

    def __init__(self) -> None:
        super().__init__()
        self.run: OracleRun | None = None
        self.ok = True
        self.remounts = 0
        self.rotations = 0
        self.deep = False

    @initialize(lowers=stacks(),
                dialects=st.lists(st.sampled_from(DIALECTS), min_size=2, max_size=2))
    def start(self, lowers: list[Tree], dialects: list[str]) -> None:
        self.ok = False
        self.run = OracleRun(Path(tempfile.mkdtemp(dir=self.base)), lowers,
                             subject=self.subject, dialects=dialects)
        self.run.start()
        self.ok = True

    def do(self, op: str, *args) -> None:
        assert self.run is not None
        self.ok = False
        self.run.do(op, *args)
        self.ok = True

    # Paths: mostly names that exist now (or new names in directories that exist), so calls
    # succeed often enough to build interesting states; sometimes any name from the pool.

    def _tree(self) -> tuple[list[str], list[str]]:
        assert self.run is not None
        root = os.fspath(self.run.plain)
        every, dirs = [], [""]
        for top, dnames, fnames in os.walk(root):
            rel = os.path.relpath(top, root)
            rel = "" if rel == "." else rel + "/"
            every += [rel + n for n in dnames + fnames]
            dirs += [rel + n for n in dnames]
        return sorted(every), sorted(dirs)

    def existing(self, data: st.DataObject, label: str) -> str:
        every, _ = self._tree()
        if every:
            return data.draw(st.one_of(st.sampled_from(every), st.sampled_from(every), paths),
                             label=label)
        return data.draw(paths, label=label)

    def fresh(self, data: st.DataObject, label: str) -> str:
        _, dirs = self._tree()
        inside = st.builds(lambda d, n: f"{d}/{n}" if d else n, st.sampled_from(dirs),
                           st.sampled_from((*NAMES, "d")))
        return data.draw(st.one_of(inside, inside, paths), label=label)

    @rule(data=st.data(), content=contents)
    def create(self, data: st.DataObject, content: bytes) -> None:
        self.do("create", self.fresh(data, "path"), content)

    @rule(data=st.data(), content=contents)
    def write(self, data: st.DataObject, content: bytes) -> None:
        self.do("write", self.existing(data, "path"), content)

    @rule(data=st.data(), content=contents)
    def append(self, data: st.DataObject, content: bytes) -> None:
        self.do("append", self.existing(data, "path"), content)

    @rule(data=st.data(), size=st.sampled_from([0, 1, 3, 20]))
    def truncate(self, data: st.DataObject, size: int) -> None:
        self.do("truncate", self.existing(data, "path"), size)

    @rule(data=st.data())
    def unlink(self, data: st.DataObject) -> None:
        self.do("unlink", self.existing(data, "path"))

    @rule(data=st.data())
    def rmdir(self, data: st.DataObject) -> None:
        self.do("rmdir", self.existing(data, "path"))

    @rule(data=st.data(), mode=st.sampled_from([0o755, 0o700, 0o777]))
    def mkdir(self, data: st.DataObject, mode: int) -> None:
        self.do("mkdir", self.fresh(data, "path"), mode)

    @rule(data=st.data(), flags=st.sampled_from([0, 0, 0, RENAME_NOREPLACE, RENAME_EXCHANGE]))
    def rename(self, data: st.DataObject, flags: int) -> None:
        src = self.existing(data, "src")
        dst = self.existing(data, "dst") if data.draw(st.booleans(), label="over") \
            else self.fresh(data, "dst")
        self.do("rename", src, dst, flags)

    @rule(data=st.data(), flags=st.sampled_from([0, 0, RENAME_NOREPLACE, RENAME_EXCHANGE]))
    def rename_dir(self, data: st.DataObject, flags: int) -> None:
        """Directory renames: where overlayfs says EXDEV and pyunion tries to do better."""
        _, dirs = self._tree()
        src = data.draw(st.sampled_from(dirs[1:]) if len(dirs) > 1 else paths, label="src")
        dst = self.existing(data, "dst") if data.draw(st.booleans(), label="over") \
            else self.fresh(data, "dst")
        self.do("rename", src, dst, flags)

    @rule(data=st.data())
    def link(self, data: st.DataObject) -> None:
        self.do("link", self.existing(data, "src"), self.fresh(data, "dst"))

    @rule(data=st.data(), dest=st.sampled_from(LINK_TARGETS))
    def symlink(self, data: st.DataObject, dest: str) -> None:
        self.do("symlink", dest, self.fresh(data, "path"))

    @rule(data=st.data(), mode=st.sampled_from([0o644, 0o600]))
    def mkfifo(self, data: st.DataObject, mode: int) -> None:
        self.do("mkfifo", self.fresh(data, "path"), mode)

    @rule(data=st.data(),
          mode=st.sampled_from([0o644, 0o600, 0o755, 0o4755, 0o2750, 0o700, 0o000]))
    def chmod(self, data: st.DataObject, mode: int) -> None:
        self.do("chmod", self.existing(data, "path"), mode)

    @rule(data=st.data(), owner=owners)
    def chown(self, data: st.DataObject, owner: tuple[int, int]) -> None:
        """lchown: copy-up of any type, and the kernel's clearing of set-id bits."""
        self.do("chown", self.existing(data, "path"), *owner)

    @rule(data=st.data(), name=st.sampled_from(XATTR_NAMES), value=st.binary(max_size=4))
    def setxattr(self, data: st.DataObject, name: str, value: bytes) -> None:
        self.do("setxattr", self.existing(data, "path"), name, value)

    @rule(data=st.data(), name=st.sampled_from(XATTR_NAMES))
    def removexattr(self, data: st.DataObject, name: str) -> None:
        self.do("removexattr", self.existing(data, "path"), name)

    def existing_nondir(self, data: st.DataObject, label: str) -> str:
        assert self.run is not None
        every, dirs = self._tree()
        objs = sorted(set(every) - set(dirs))
        return data.draw(st.sampled_from(objs) if objs else paths, label=label)

    @rule(data=st.data())
    def hardlink_dance(self, data: st.DataObject) -> None:
        """link, then unlink/rename among the names of one object, re-link after delete: the
        sequences package managers and git run (issue 9, cases 1-4)."""
        src = self.existing_nondir(data, "src")
        other = self.fresh(data, "other")
        self.do("link", src, other)
        steps = data.draw(st.lists(st.sampled_from(
            ["unlink-src", "unlink-other", "relink-src", "relink-other", "rename-src",
             "rename-other", "write-other", "chmod-src"]), min_size=1, max_size=4), label="steps")
        names = {"src": src, "other": other}
        for step in steps:
            verb, _, which = step.partition("-")
            a = names[which]
            b = names["other" if which == "src" else "src"]
            if verb == "unlink":
                self.do("unlink", a)
            elif verb == "relink":
                self.do("link", b, a)
            elif verb == "rename":
                dst = self.fresh(data, "rename-to")
                self.do("rename", a, dst, 0)
                names[which] = dst
            elif verb == "write":
                self.do("append", a, b"+")
            else:
                self.do("chmod", a, 0o640)

    @rule(data=st.data(), rounds=st.integers(1, 3))
    def dir_churn(self, data: st.DataObject, rounds: int) -> None:
        """mkdir/rmdir of a small tree again and again (the disk reuses inode numbers); the
        listing is checked after each step (issue 9, case 5)."""
        _, dirs = self._tree()
        top = data.draw(st.sampled_from(dirs), label="in")
        d = f"{top}/c" if top else "c"
        for _ in range(rounds):
            self.do("mkdir", d, 0o755)
            self.do("mkdir", f"{d}/s", 0o755)
            self.do("create", f"{d}/s/f", b"x")
            self.do("unlink", f"{d}/s/f")
            self.do("rmdir", f"{d}/s")
            self.do("rmdir", d)

    @rule(data=st.data(), length=st.integers(250, 255),
          op=st.sampled_from(["create", "mkdir", "link", "rename", "symlink", "unlink"]))
    def long_name(self, data: st.DataObject, length: int, op: str) -> None:
        """Names around NAME_MAX: up to 251 bytes work, longer say ENAMETOOLONG (case 7)."""
        _, dirs = self._tree()
        top = data.draw(st.sampled_from(dirs), label="in")
        name = data.draw(st.sampled_from("abc"), label="char") * length
        path = f"{top}/{name}" if top else name
        if op == "create":
            self.do("create", path, b"long")
        elif op == "mkdir":
            self.do("mkdir", path, 0o755)
        elif op == "link":
            self.do("link", self.existing_nondir(data, "src"), path)
        elif op == "rename":
            self.do("rename", self.existing(data, "src"), path, 0)
        elif op == "symlink":
            self.do("symlink", "a", path)
        else:
            self.do("unlink", path)

    @precondition(lambda self: not self.deep)
    @rule(data=st.data())
    def deep_paths(self, data: st.DataObject) -> None:
        """A chain of directories that brings paths through the mount near PATH_MAX (longer
        than PATH_MAX in the subject's layers), then calls of every kind at its bottom."""
        assert self.run is not None
        self.deep = True
        room = 4095 - len(os.fsencode(os.fspath(self.run.sub / "mnt"))) - 1
        name = "p" * 200
        chain = ""
        while len(chain) + len(name) + 1 + 40 < room:
            chain = f"{chain}/{name}" if chain else name
            self.do("mkdir", chain, 0o755)
        slack = room - len(chain) - 1 - 4
        leaf = f"{chain}/{'q' * min(slack, 30)}"
        steps = data.draw(st.permutations(["create", "link", "symlink", "mkfifo", "chmod",
                                           "rename", "setxattr"]), label="order")
        self.do("create", leaf, b"deep")
        for step in steps:
            if step == "create":
                self.do("create", f"{chain}/n", b"n")
            elif step == "link":
                self.do("link", leaf, f"{chain}/l")
            elif step == "symlink":
                self.do("symlink", "n", f"{chain}/s")
            elif step == "mkfifo":
                self.do("mkfifo", f"{chain}/p")
            elif step == "chmod":
                self.do("chmod", leaf, 0o600)
            elif step == "rename":
                self.do("rename", leaf, f"{chain}/r", 0)
            else:
                self.do("setxattr", f"{chain}/n", "user.a", b"v")
        if data.draw(st.booleans(), label="remove"):
            for n in ("n", "l", "s", "p", "r", leaf.rpartition("/")[2]):
                self.do("unlink", f"{chain}/{n}")
            while chain:
                self.do("rmdir", chain)
                chain = chain.rpartition("/")[0]

    @precondition(lambda self: self.rotations < 1)
    @rule(now=st.sampled_from([True, False, False, False]))
    def rotate(self, now: bool) -> None:
        """The uppers become the top lowers under fresh uppers (a commit), both unions are
        mounted again; later calls work on the rotated stack (case 4)."""
        assert self.run is not None
        if not now:
            return
        self.rotations += 1
        self.ok = False
        self.run.rotate()
        self.ok = True

    @precondition(lambda self: self.remounts < 1)
    @rule(now=st.sampled_from([True, False, False, False]))
    def remount(self, now: bool) -> None:
        """Unmount and mount the subject mid-sequence: later calls must not see a difference.

        At most once, and only on a quarter of the draws: a remount costs seconds.
        """
        assert self.run is not None
        if not now:
            return
        self.remounts += 1
        self.ok = False
        self.run.remount()
        self.ok = True

    def teardown(self) -> None:
        if self.run is None:
            return
        try:
            if self.ok:
                self.run.remount()
        finally:
            self.run.close()


def _settings(default_examples: int) -> settings:
    phases = [Phase.explicit, Phase.reuse, Phase.generate]
    if os.environ.get("PYUNION_ORACLE_SHRINK"):
        phases.append(Phase.shrink)
    return settings(
        max_examples=_env_int("PYUNION_ORACLE_EXAMPLES", default_examples),
        stateful_step_count=_env_int("PYUNION_ORACLE_STEPS", 25),
        deadline=None,
        derandomize=not os.environ.get("PYUNION_ORACLE_RANDOM"),
        database=None,
        phases=phases,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )


def _report_stats() -> None:
    print("\noracle outcomes:", ", ".join(f"{k}: {v}" for k, v in
                                         sorted(OracleRun.stats.items())))
    OracleRun.stats.clear()


def _machine(base: Path, subject: str) -> type[UnionOracle]:
    return type(f"UnionOracle_{subject}", (UnionOracle,), {"base": base, "subject": subject})


@pytest.mark.timeout(600)
def test_oracle_harness_kernel_against_itself(oracle_base: Path) -> None:
    """The harness on kernel overlayfs vs kernel overlayfs: proves the reference side is sound.

    This also exercises the EXDEV emulation, the taint rule for lower hardlinks and the
    changeset reading of a kernel upper, so a failure of the pyunion test below is pyunion's.
    """
    try:
        run_state_machine_as_test(_machine(oracle_base, "kernel"), settings=_settings(30))
    finally:
        _report_stats()


@pytest.mark.timeout(600 + 10 * _env_int("PYUNION_ORACLE_EXAMPLES", 30))
def test_oracle_pyunion(oracle_base: Path) -> None:
    try:
        run_state_machine_as_test(_machine(oracle_base, "pyunion"), settings=_settings(30))
    finally:
        _report_stats()


@pytest.mark.skipif(not os.environ.get("PYUNION_ORACLE_FUSE_OVERLAYFS"),
                    reason="set PYUNION_ORACLE_FUSE_OVERLAYFS=1: the oracle on fuse-overlayfs")
@pytest.mark.timeout(1800)
def test_oracle_fuse_overlayfs(oracle_base: Path) -> None:
    """Not a test of pyunion: shows what the oracle finds in the peer pyunion replaces."""
    try:
        run_state_machine_as_test(_machine(oracle_base, "fuse-overlayfs"),
                                  settings=_settings(30))
    finally:
        _report_stats()
