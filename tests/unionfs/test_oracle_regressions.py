"""Sequences the oracle (test_oracle.py) found, kept as plain steps.

Each case builds its two-lower stack, mounts pyunion and kernel overlayfs over it next to a
plain directory, and replays the calls through `OracleRun.do`, which checks errno, merged tree,
upper-as-changeset, st_nlink and st_ino after every call (see oracle_support.OracleRun);
`remount()` unmounts and mounts pyunion again and repeats the checks. Lowers are in OCI form for
pyunion unless a case says else. Every case also runs with the kernel as subject, which proves
that the expectation is overlayfs's (or, where pyunion does better, the plain directory's).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unionfs.oracle_support import (
    OracleRun,
    Tree,
    chardev,
    directory,
    fifo,
    file,
    hardlink,
    symlink,
    whiteout,
)
from unionfs.libc import RENAME_EXCHANGE, RENAME_NOREPLACE


def oracle(base: Path, l1: Tree, l2: Tree, dialects: tuple[str, str] = ("oci", "oci"),
           subject: str = "pyunion") -> OracleRun:
    return OracleRun(base / "run", [l1, l2], subject=subject, dialects=list(dialects))


SUBJECTS = ["kernel", "pyunion"]  # "kernel": the same steps prove the harness expects rightly


@pytest.mark.parametrize("subject", SUBJECTS)
def test_setxattr_on_lower_hardlink_keeps_both_names_in_the_upper(oracle_base: Path,
                                                                  subject: str) -> None:
    """Found by the oracle: copy-up of one name of a lower hardlink pair.

    The mount showed both names changed, but only `a` reached the upper, so the upper read as a
    layer changeset gives `c` without the xattr: the upper must hold `c` too (linked to `a`).
    """
    with oracle(oracle_base, {"a": file(b""), "c": hardlink("a")}, {},
                subject=subject) as run:
        run.do("setxattr", "a", "user.a", b"v")
        run.remount()


# --------------------------------------------------------------------------------------------
# Scenarios written by hand, so that CI always covers what random sequences reach only rarely.


@pytest.mark.parametrize("subject", SUBJECTS)
def test_scenario_rename_merged_directory(oracle_base: Path, subject: str) -> None:
    """overlayfs: EXDEV. pyunion: EXDEV too, or a rename that matches the plain directory."""
    l1 = {"d": directory(), "d/f": file(b"f1"), "d/sub": directory(0o700)}
    l2 = {"d": directory(0o750), "d/g": file(b"g2", 0o600, 1000, 1000), "e": file(b"e")}
    with oracle(oracle_base, l1, l2, subject=subject) as run:
        run.do("rename", "d", "e", RENAME_NOREPLACE)
        run.do("rename", "d", "e", 0)
        run.do("rename", "e/f", "e/h", 0)
        run.do("create", "d/x", b"new")
        run.do("mkdir", "d", 0o755)
        run.do("rename", "e", "d", 0)
        run.remount()


@pytest.mark.parametrize("subject", SUBJECTS)
@pytest.mark.parametrize("dialect", ["oci", "ovl", "ovl-user"])
def test_scenario_whiteouts_and_opaque_dirs(oracle_base: Path, subject: str,
                                            dialect: str) -> None:
    l1 = {"d": directory(opaque=True), "d/a": file(b"top"), "gone": whiteout(),
          "m": directory(), "m/x": whiteout(), "m/y": file(b"y1")}
    l2 = {"d": directory(), "d/b": file(b"hidden"), "gone": file(b"hidden"),
          "m": directory(), "m/x": file(b"hidden"), "m/z": file(b"z2")}
    with oracle(oracle_base, l1, l2, (dialect, dialect), subject=subject) as run:
        run.do("create", "d/b", b"new b")
        run.do("rmdir", "d")
        run.do("unlink", "d/a")
        run.do("unlink", "d/b")
        run.do("rmdir", "d")
        run.do("mkdir", "d", 0o700)
        run.do("create", "gone", b"back")
        run.do("rmdir", "m")
        run.do("unlink", "m/y")
        run.do("unlink", "m/z")
        run.do("rmdir", "m")
        run.do("mkdir", "m", 0o755)
        run.do("symlink", "m", "x")
        run.remount()


@pytest.mark.parametrize("subject", SUBJECTS)
def test_scenario_exchange_and_links(oracle_base: Path, subject: str) -> None:
    l1 = {"f": file(b"lower f", 0o640, 1000, 0, {"user.a": b"1"}), "s": symlink("f")}
    l2 = {"f": file(b"older"), "g": file(b"g")}
    with oracle(oracle_base, l1, l2, subject=subject) as run:
        run.do("mkdir", "d", 0o755)
        run.do("rename", "f", "d", RENAME_EXCHANGE)
        run.do("link", "d", "f2")
        run.do("append", "f2", b"+")
        run.do("link", "s", "s2")
        run.do("rename", "g", "d", RENAME_EXCHANGE)
        run.do("unlink", "f")
        run.do("chmod", "s", 0o600)
        run.remount()
        run.do("truncate", "d", 2)


@pytest.mark.parametrize("subject", SUBJECTS)
def test_rename_lower_dir_keeps_hardlink_to_a_name_outside(oracle_base: Path,
                                                           subject: str) -> None:
    """Found by the oracle: renaming a lower directory broke a lower hardlink leaving it.

    `c/a` and `b` are one lower file. After `mv c d` (pyunion does the rename overlayfs refuses
    with EXDEV), `d/a` and `b` must still be one file (st_nlink 2, one object in the upper,
    and a write through one name shows through the other).
    """
    with oracle(oracle_base, {"c": directory(), "c/a": file(b"x"), "b": hardlink("c/a")}, {},
                subject=subject) as run:
        run.do("rename", "c", "d", 0)
        run.do("append", "b", b"+")
        run.remount()


@pytest.mark.parametrize("subject", SUBJECTS)
def test_rename_lower_dir_keeps_hardlink_made_through_the_mount(oracle_base: Path,
                                                                subject: str) -> None:
    """Found by the oracle (no lower hardlinks at all): `ln b/f x; mv b d` must keep d/f and x
    one file, in the mount and in the upper."""
    with oracle(oracle_base, {"b": directory(), "b/f": file(b"f")}, {"b": directory()},
                subject=subject) as run:
        run.do("link", "b/f", "x")
        run.do("rename", "b", "d", 0)
        run.do("append", "x", b"+")
        run.remount()


@pytest.mark.parametrize("subject", SUBJECTS)
def test_scenario_owners_and_setid_bits(oracle_base: Path, subject: str) -> None:
    """chown copies up and clears set-id bits as the kernel does; fifos and symlinks too."""
    l1 = {"f": file(b"x", 0o4755, 1000, 1000), "g": file(b"y", 0o2755), "s": symlink("f"),
          "d": directory(0o2775, 1000, 0)}
    with oracle(oracle_base, l1, {"f": file(b"old")}, subject=subject) as run:
        run.do("chown", "f", 0, 0)
        run.do("chown", "g", 1000, 1000)
        run.do("chown", "s", 1000, 0)
        run.do("chown", "d", 0, 1000)
        run.do("mkdir", "d/sub", 0o755)
        run.do("mkfifo", "d/p", 0o600)
        run.do("chown", "d/p", 1000, 1000)
        run.do("write", "d/p", b"z")
        run.do("rename", "d/p", "p", 0)
        run.do("chmod", "f", 0o6755)
        run.do("append", "f", b"+")
        run.remount()


@pytest.mark.parametrize("subject", SUBJECTS)
def test_ring_of_renames_then_uppers_rotated_into_the_lowers(oracle_base: Path,
                                                             subject: str) -> None:
    """Issue 9, case 4: names linked to lower files, renamed around a ring (each into the gap
    the previous rename left), then the upper becomes the top lower under a fresh upper:
    every name reads right and can be unlinked, the partner's st_nlink dropping to 1."""
    l1 = {"a": file(b"a"), "b": file(b"b"), "c": file(b"c")}
    with oracle(oracle_base, l1, {}, subject=subject) as run:
        for n in "abc":
            run.do("link", n, f"r{n}")
        run.do("rename", "ra", "gap", 0)
        run.do("rename", "rb", "ra", 0)
        run.do("rename", "rc", "rb", 0)
        run.do("rename", "gap", "rc", 0)
        run.rotate()
        for n in ("b", "ra", "c", "rb", "a", "rc"):
            run.do("unlink", n)
        run.remount()


@pytest.mark.parametrize("subject", SUBJECTS)
def test_hard_link_names_of_every_type(oracle_base: Path, subject: str) -> None:
    """Issue 9, cases 1-2 in oracle form: link, unlink, re-link after delete and rename among
    the names of lower and upper objects of every type, checked after every step."""
    l1 = {"f": file(b"f"), "s": symlink("f"), "p": fifo(), "c": chardev()}
    with oracle(oracle_base, l1, {}, subject=subject) as run:
        run.do("create", "u", b"upper")
        run.do("mkfifo", "up")
        for n in ("f", "s", "p", "c", "u", "up"):
            run.do("link", n, f"{n}2")
            run.do("unlink", n)
            run.do("link", f"{n}2", n)
            run.do("rename", f"{n}2", f"{n}3", 0)
            run.do("unlink", n)
        run.remount()


def test_long_name_errors_come_in_the_vfs_order(oracle_base: Path) -> None:
    """Found by the oracle's 500-example run: a rename whose source is missing says ENOENT
    before the new name (255 bytes) is ever looked up; the harness expected ENAMETOOLONG."""
    with oracle(oracle_base, {"a": file(b"a"), "c": directory()}, {}) as run:
        run.do("rename", "a/c", "c/" + "a" * 255, 0)
        run.do("rename", "c", "c/" + "a" * 252, 0)
        run.do("mkdir", "x/" + "a" * 253, 0o755)
        run.do("link", "a", "c/" + "a" * 254)


@pytest.mark.parametrize("subject", SUBJECTS)
def test_scenario_changes_right_after_a_name_the_kernel_holds(oracle_base: Path,
                                                              subject: str) -> None:
    """The core answers a create or removal from the LOOKUP just before it when nothing has
    changed since; here the kernel already holds each name (no LOOKUP between the calls), and
    each call follows a change of the same name: over lower files, whiteouts and directories."""
    l1 = {"a": file(b"a1"), "d": directory(), "d/x": file(b"x1")}
    l2 = {"b": file(b"b2"), "d": directory(), "d/y": file(b"y2"), "e": directory(),
          "e/z": file(b"z2")}
    with oracle(oracle_base, l1, l2, subject=subject) as run:
        run.do("create", "n", b"new")
        run.do("rename", "n", "b", 0)        # over a lower file
        run.do("unlink", "b")                # the moved file, not the lower one
        run.do("create", "b", b"again")      # over the whiteout just made
        run.do("unlink", "a")
        run.do("mkdir", "a", 0o755)          # a directory where a lower file was
        run.do("rmdir", "a")
        run.do("create", "a", b"file again")
        run.do("link", "a", "d/y")           # over nothing: d/y is a lower file (EEXIST)
        run.do("unlink", "d/y")
        run.do("link", "a", "d/y")
        run.do("rename", "d/x", "d/w", 0)
        run.do("create", "d/x", b"x again")
        run.do("rename", "e", "f", 0)        # a lower directory (EXDEV in overlayfs)
        run.do("unlink", "e/z")
        run.remount()
