"""Shared helpers for the oracle, lifecycle and crash tests of the union mount.

One job per section:

* a tiny model of a directory tree (`Node`, trees are ``dict[path, Node]``) and the overlay
  merge rule over a stack of layers (`merge`), pure and mount-free;
* building a layer on disk from a model in either whiteout dialect (`build_layer`), reading an
  upper/lower back into a model (`scan_layer`), building a plain directory holding a merged tree
  (`build_plain`) and snapshotting a live tree (`snapshot`);
* comparing trees (`diff_trees`) and checking that an upper directory, read as a changeset over
  its lowers, means the expected merged tree (`changeset_problems`);
* the operations the oracle drives (`OPS`), each run identically on any root directory;
* mount helpers for kernel overlayfs and fuse-overlayfs, and /proc helpers to find the daemons.

Dialects: ``"oci"`` is `.wh.NAME` files and a `.wh..wh..opq` marker; ``"ovl"`` is the kernel form
(char device 0/0 whiteouts, ``trusted.overlay.opaque=y``); ``"ovl-user"`` is the kernel form with
``user.overlay.opaque=y`` (what `-o userxattr` and rootless tools write); ``"ovl-x"`` and
``"ovl-x-user"`` write whiteouts as zero-size files with ``overlay.whiteout`` in a directory
marked ``overlay.opaque=x`` (overlayfs.rst's xattr whiteouts), in either namespace.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import os
import shutil
import stat
import subprocess
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar, Self

from unionfs.deeppath import DeepPaths
from unionfs.libc import RENAME_EXCHANGE, renameat2

WH_PREFIX = ".wh."
WH_OPQ = ".wh..wh..opq"
# xattrs that belong to union implementations, never to the user's data.
PRIVATE_XATTR_PREFIXES = ("trusted.overlay.", "user.overlay.", "trusted.pyunion.",
                          "user.pyunion.", "user.fuseoverlayfs.", "security.fuseoverlayfs.")
DIALECTS = ("oci", "ovl", "ovl-user", "ovl-x", "ovl-x-user")
# Names longer than this get ENAMETOOLONG from pyunion (statfs namemax: room for `.wh.`), while
# kernel overlayfs takes up to 255 bytes: the one documented difference in name handling.
PYUNION_NAME_MAX = 251
_deep = DeepPaths()


def long_path(root: str | os.PathLike, rel: str) -> str:
    """`root/rel` named so that it works beyond PATH_MAX (the sides' layers are deeper than
    their mounts, see OracleRun)."""
    return _deep.path(os.fspath(root), rel) if rel else os.fspath(root)


# --------------------------------------------------------------------------------------------
# Model


@dataclass(frozen=True)
class Node:
    """One object of a tree. `data` is file bytes or a symlink target; `ident` groups hardlinks.

    In a layer description `link` names an earlier path of the same layer this one is a hardlink
    of (its other attributes are then ignored); `opaque` marks an opaque directory.
    """

    kind: str  # file | dir | symlink | whiteout | other
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    data: bytes | str | None = None
    xattrs: tuple[tuple[str, bytes], ...] = ()
    opaque: bool = False
    link: str | None = None
    ident: object = field(default=None, compare=False)

    def public(self) -> tuple:
        """What a user can observe of the object (no identity, no union markers)."""
        return (self.kind, self.mode, self.uid, self.gid, self.data, self.xattrs)


Tree = dict[str, Node]


def file(data: bytes = b"", mode: int = 0o644, uid: int = 0, gid: int = 0,
         xattrs: dict[str, bytes] | None = None) -> Node:
    return Node("file", mode, uid, gid, data, tuple(sorted((xattrs or {}).items())))


def directory(mode: int = 0o755, uid: int = 0, gid: int = 0, opaque: bool = False,
              xattrs: dict[str, bytes] | None = None) -> Node:
    return Node("dir", mode, uid, gid, None, tuple(sorted((xattrs or {}).items())), opaque)


def symlink(target: str) -> Node:
    return Node("symlink", 0o777, 0, 0, target)


def whiteout() -> Node:
    return Node("whiteout", 0)


def fifo(mode: int = 0o644, uid: int = 0, gid: int = 0) -> Node:
    return Node("other", stat.S_IFIFO | mode, uid, gid, "0")


def chardev(major: int = 1, minor: int = 3, mode: int = 0o600) -> Node:
    return Node("other", stat.S_IFCHR | mode, 0, 0, str(os.makedev(major, minor)))


def hardlink(to: str) -> Node:
    return Node("file", link=to)


def parent_of(path: str) -> str:
    return path.rpartition("/")[0]


def resolve_links(layer: Tree, tag: object) -> Tree:
    """Give every node an identity `(tag, path-of-inode)`; hardlinks take their target's node."""
    out: Tree = {p: replace(n, ident=(tag, p)) for p, n in layer.items() if n.link is None}
    for path, node in layer.items():
        if node.link is not None:
            out[path] = out[node.link]
    return out


def _depth_key(path: str) -> tuple[int, str]:
    return (path.count("/"), path)


def children(tree: Tree, dirpath: str) -> Iterator[str]:
    for p in tree:
        if p != dirpath and parent_of(p) == dirpath:
            yield p.rpartition("/")[2]


def merge(layers: list[Tree]) -> Tree:
    """Overlay lookup over `layers` (top first): the merged tree a user sees.

    A name resolves to the topmost layer holding it; a whiteout hides it in the layers below; a
    directory merges with directories of the same name below until a non-directory, a whiteout,
    or an opaque directory (which itself still counts) ends the merge.
    """
    out: Tree = {}

    def visit(dirpath: str, contributing: list[int]) -> None:
        names: set[str] = set()
        for i in contributing:
            names.update(children(layers[i], dirpath))
        for name in sorted(names):
            path = f"{dirpath}/{name}" if dirpath else name
            found: list[int] = []
            top: Node | None = None
            for i in contributing:
                node = layers[i].get(path)
                if node is None:
                    continue
                if node.kind == "whiteout":
                    break
                if top is None:
                    top = node
                    found.append(i)
                    if node.kind != "dir" or node.opaque:
                        break
                elif node.kind == "dir":
                    found.append(i)
                    if node.opaque:
                        break
                else:
                    break
            if top is None:
                continue
            out[path] = replace(top, opaque=False, link=None)
            if top.kind == "dir":
                visit(path, found)

    visit("", list(range(len(layers))))
    return out


def prune_pointless_whiteouts(upper: Tree, lowers: list[Tree]) -> Tree:
    """Drop whiteouts of `upper` (a lower layer itself) in directories that merge with nothing.

    Kernel overlayfs reads such a directory straight from its layer, so readdir lists the
    char-dev whiteout while lookup says ENOENT: the kernel is no oracle there, and the
    whiteout hides nothing anyway.
    """
    below = merge(lowers)

    def merged(d: str) -> bool:
        if d == "":
            return True
        node = upper.get(d)
        return (node is not None and node.kind == "dir" and not node.opaque
                and below.get(d, whiteout()).kind == "dir" and merged(parent_of(d)))

    return {p: n for p, n in upper.items() if n.kind != "whiteout" or merged(parent_of(p))}


# --------------------------------------------------------------------------------------------
# Layers on disk


def _set_xattrs(path: str, xattrs: Iterable[tuple[str, bytes]]) -> None:
    for name, value in xattrs:
        os.setxattr(path, name, value, follow_symlinks=False)


def build_layer(root: Path, layer: Tree, dialect: str) -> None:
    """Write a layer description under `root` in `dialect`, hardlinks included."""
    if dialect not in DIALECTS:
        raise ValueError(f"unknown dialect {dialect!r}")
    root.mkdir(parents=True, exist_ok=True)
    dirs: list[tuple[str, Node]] = []
    # Hardlinks last, so that their targets exist whatever their depth.
    for path in sorted(layer, key=lambda p: (layer[p].link is not None, *_depth_key(p))):
        node = layer[path]
        full = os.path.join(root, path)
        if node.link is not None:
            os.link(os.path.join(root, node.link), full)
        elif node.kind == "dir":
            os.mkdir(full)
            _set_xattrs(full, node.xattrs)
            if node.opaque:
                if dialect == "oci":
                    with open(os.path.join(full, WH_OPQ), "wb"):
                        pass
                else:
                    name = "user" if dialect.endswith("user") else "trusted"
                    os.setxattr(full, f"{name}.overlay.opaque", b"y")
            dirs.append((full, node))
        elif node.kind == "file":
            with open(full, "wb") as f:
                f.write(node.data or b"")
            _set_xattrs(full, node.xattrs)
            os.chown(full, node.uid, node.gid)
            os.chmod(full, node.mode)
        elif node.kind == "symlink":
            os.symlink(str(node.data), full)
        elif node.kind == "other":
            os.mknod(full, node.mode, int(node.data or 0))
            os.chown(full, node.uid, node.gid)
            os.chmod(full, stat.S_IMODE(node.mode))
        elif node.kind == "whiteout":
            head, _, name = full.rpartition("/")
            if dialect == "oci":
                with open(f"{head}/{WH_PREFIX}{name}", "wb"):
                    pass
            elif dialect.startswith("ovl-x"):
                ns = "user" if dialect.endswith("user") else "trusted"
                parent = layer.get(parent_of(path))
                if parent is not None and parent.opaque:
                    continue            # hides nothing, and `x` would undo the `y`
                with open(full, "wb"):
                    pass
                os.setxattr(full, f"{ns}.overlay.whiteout", b"y")
                os.setxattr(head, f"{ns}.overlay.opaque", b"x")
            else:
                os.mknod(full, 0o600 | stat.S_IFCHR, os.makedev(0, 0))
        else:
            raise ValueError(f"cannot build {node.kind} at {path}")
    for full, node in reversed(dirs):  # deepest first, after the children exist
        os.chown(full, node.uid, node.gid)
        os.chmod(full, node.mode)


def _user_xattrs(path: str) -> tuple[tuple[str, bytes], ...]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EPERM):
            return ()
        raise
    out = []
    for name in names:
        if name.startswith("user.") and not name.startswith(PRIVATE_XATTR_PREFIXES):
            out.append((name, os.getxattr(path, name, follow_symlinks=False)))
    return tuple(sorted(out))


def _node_from_stat(full: str, st: os.stat_result, ident: object) -> Node:
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISDIR(st.st_mode):
        return Node("dir", mode, st.st_uid, st.st_gid, None, _user_xattrs(full), ident=ident)
    if stat.S_ISREG(st.st_mode):
        with open(full, "rb") as f:
            data = f.read()
        return Node("file", mode, st.st_uid, st.st_gid, data, _user_xattrs(full), ident=ident)
    if stat.S_ISLNK(st.st_mode):
        return Node("symlink", 0o777, st.st_uid, st.st_gid, os.readlink(full), ident=ident)
    return Node("other", st.st_mode, st.st_uid, st.st_gid, str(st.st_rdev), ident=ident)


def _is_opaque(full: str, dialect: str) -> bool:
    if dialect in ("oci", "any") and os.path.lexists(os.path.join(full, WH_OPQ)):
        return True
    if dialect == "oci":
        return False
    names = ("trusted.overlay.opaque", "user.overlay.opaque")
    for name in names:
        try:
            if os.getxattr(full, name, follow_symlinks=False) == b"y":
                return True
        except OSError:
            pass
    return False


def scan_layer(root: Path, dialect: str, tag: object = "upper") -> Tree:
    """Read a layer directory back into a model, interpreting whiteouts in `dialect` only.

    `dialect` "any" reads both forms (fuse-overlayfs writes both).

    Whatever the dialect does not explain stays a plain object, so e.g. a char-dev whiteout
    in an OCI upper shows up as a device node and fails the comparison.
    """
    out: Tree = {}

    def visit(rel: str) -> None:
        full = long_path(root, rel)
        for entry in sorted(os.scandir(full), key=lambda e: e.name):
            name = entry.name
            path = f"{rel}/{name}" if rel else name
            st = entry.stat(follow_symlinks=False)
            oci = dialect in ("oci", "any")
            if oci and name in (WH_OPQ, ".wh..opq"):
                continue
            if oci and name.startswith(WH_PREFIX):
                wpath = f"{rel}/{name[len(WH_PREFIX):]}" if rel else name[len(WH_PREFIX):]
                out.setdefault(wpath, whiteout())
                continue
            if dialect != "oci" and stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                out[path] = whiteout()
                continue
            node = _node_from_stat(entry.path, st, (tag, st.st_ino))
            if node.kind == "dir":
                node = replace(node, opaque=_is_opaque(entry.path, dialect))
            out[path] = node  # a real entry beats a same-layer whiteout (OCI layer.md)
            if node.kind == "dir":
                visit(path)

    try:
        visit("")
    finally:
        _deep.close()     # the upper's directories move between scans
    return out


def build_plain(root: Path, tree: Tree) -> None:
    """A plain directory holding `tree`: the POSIX model the union should behave like."""
    root.mkdir(parents=True, exist_ok=True)
    first: dict[object, str] = {}
    layer: Tree = {}
    for path in sorted(tree, key=_depth_key):
        node = tree[path]
        if node.kind != "dir" and node.ident is not None and node.ident in first:
            layer[path] = hardlink(first[node.ident])
        else:
            if node.kind != "dir" and node.ident is not None:
                first[node.ident] = path
            layer[path] = replace(node, opaque=False)
    build_layer(root, layer, "oci")


# --------------------------------------------------------------------------------------------
# Live trees


@dataclass
class Snapshot:
    tree: Tree
    problems: list[str]
    nlink: dict[str, int] = field(default_factory=dict)  # of every non-directory


LOOKUP_PROBES = ("a", "b", "c", "x", ".wh.a", ".wh.b", ".wh.c", WH_OPQ, ".wh..opq")


def snapshot(root: str | os.PathLike, probes: Iterable[str] = LOOKUP_PROBES) -> Snapshot:
    """Everything the oracle compares, read through ordinary syscalls (works on any mount).

    `problems` collects what is wrong whatever the reference: a name listed twice, d_type that
    disagrees with lstat, a name that lookup finds but readdir does not list, a private
    (union-internal) xattr showing through.
    """
    root = os.fspath(root)
    tree: Tree = {}
    problems: list[str] = []
    nlink: dict[str, int] = {}

    def visit(rel: str) -> None:
        full = os.path.join(root, rel) if rel else root
        entries = list(os.scandir(full))
        names = [e.name for e in entries]
        if len(names) != len(set(names)):
            problems.append(f"readdir {rel or '.'!r} lists a name twice: {sorted(names)}")
        for probe in probes:
            if probe in names:
                continue
            try:
                os.lstat(os.path.join(full, probe))
                problems.append(f"lookup finds unlisted {os.path.join(rel, probe)!r}")
            except FileNotFoundError:
                pass
            except OSError as e:
                problems.append(f"lookup of {os.path.join(rel, probe)!r}: {e}")
        for entry in sorted(entries, key=lambda e: e.name):
            path = f"{rel}/{entry.name}" if rel else entry.name
            st = os.lstat(entry.path)
            if entry.is_dir(follow_symlinks=False) != stat.S_ISDIR(st.st_mode) or \
                    entry.is_symlink() != stat.S_ISLNK(st.st_mode):
                problems.append(f"d_type of {path!r} disagrees with lstat")
            try:
                allx = os.listxattr(entry.path, follow_symlinks=False)
            except OSError:
                allx = []
            leaked = [x for x in allx if x.startswith(PRIVATE_XATTR_PREFIXES)]
            if leaked:
                problems.append(f"private xattrs visible on {path!r}: {leaked}")
            tree[path] = _node_from_stat(entry.path, st, (st.st_dev, st.st_ino))
            if stat.S_ISDIR(st.st_mode):
                visit(path)
            else:
                nlink[path] = st.st_nlink

    visit("")
    return Snapshot(tree, problems, nlink)


def peer_groups(tree: Tree) -> dict[str, frozenset[str]]:
    """Hardlink peers of every non-directory: the paths sharing its identity."""
    by_ident: dict[object, set[str]] = {}
    for path, node in tree.items():
        if node.kind != "dir":
            by_ident.setdefault(node.ident, set()).add(path)
    return {p: frozenset(by_ident[n.ident]) for p, n in tree.items() if n.kind != "dir"}


def diff_trees(expected: Tree, actual: Tree, *, peers: bool = True,
               skip: Callable[[str], bool] = lambda p: False) -> list[str]:
    """Human-readable differences; hardlink grouping is compared when `peers`."""
    out: list[str] = []
    for path in sorted(set(expected) | set(actual), key=_depth_key):
        if skip(path):
            continue
        e, a = expected.get(path), actual.get(path)
        if e is None:
            out.append(f"unexpected {path!r}: {_show(a)}")
        elif a is None:
            out.append(f"missing {path!r}: expected {_show(e)}")
        elif e.public() != a.public():
            out.append(f"{path!r}: expected {_show(e)}, got {_show(a)}")
    if peers:
        pe, pa = peer_groups(expected), peer_groups(actual)
        for path in sorted(set(pe) & set(pa)):
            if skip(path):
                continue
            ge = {p for p in pe[path] if not skip(p)}
            ga = {p for p in pa[path] if not skip(p)}
            if ge != ga:
                out.append(f"hardlinks of {path!r}: expected {sorted(ge)}, got {sorted(ga)}")
    return out


def _show(node: Node | None) -> str:
    if node is None:
        return "nothing"
    parts = [node.kind, oct(node.mode)]
    if (node.uid, node.gid) != (0, 0):
        parts.append(f"{node.uid}:{node.gid}")
    if node.data is not None:
        parts.append(repr(node.data))
    if node.xattrs:
        parts.append(repr(dict(node.xattrs)))
    return " ".join(parts)


def changeset_problems(upper: Tree, lowers: list[Tree], expected: Tree, *, peers: bool = True,
                       skip: Callable[[str], bool] = lambda p: False) -> list[str]:
    """Does `upper`, applied over `lowers`, give `expected`? And is every whiteout needed?

    A whiteout is only written where a lower has the name (overlayfs does the same), so a
    whiteout whose removal changes nothing is reported.
    """
    applied = merge([upper, *lowers])
    out = [f"upper as changeset: {d}" for d in diff_trees(expected, applied, peers=peers,
                                                           skip=skip)]
    for path, node in upper.items():
        if node.kind != "whiteout" or skip(path):
            continue
        without = dict(upper)
        del without[path]
        if _same_public(merge([without, *lowers]), applied):
            out.append(f"upper has a needless whiteout for {path!r}")
    return out


def _same_public(a: Tree, b: Tree) -> bool:
    return a.keys() == b.keys() and all(a[p].public() == b[p].public() for p in a)


# --------------------------------------------------------------------------------------------
# Operations, identical on every root




def _write(full: str, flags: int, data: bytes) -> None:
    # O_NONBLOCK: a fifo without reader answers ENXIO instead of blocking (no effect on files).
    fd = os.open(full, flags | os.O_NONBLOCK, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def op_create(root: str, path: str, data: bytes) -> None:
    _write(os.path.join(root, path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, data)


def op_write(root: str, path: str, data: bytes) -> None:
    _write(os.path.join(root, path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, data)


def op_append(root: str, path: str, data: bytes) -> None:
    _write(os.path.join(root, path), os.O_WRONLY | os.O_APPEND, data)


def op_truncate(root: str, path: str, size: int) -> None:
    os.truncate(os.path.join(root, path), size)


def op_unlink(root: str, path: str) -> None:
    os.unlink(os.path.join(root, path))


def op_rmdir(root: str, path: str) -> None:
    os.rmdir(os.path.join(root, path))


def op_mkdir(root: str, path: str, mode: int = 0o755) -> None:
    os.mkdir(os.path.join(root, path), mode)


def op_rename(root: str, src: str, dst: str, flags: int = 0) -> None:
    s, d = os.path.join(root, src), os.path.join(root, dst)
    if flags:
        renameat2(s, d, flags)
    else:
        os.rename(s, d)


def op_link(root: str, src: str, dst: str) -> None:
    os.link(os.path.join(root, src), os.path.join(root, dst), follow_symlinks=False)


def op_symlink(root: str, target: str, path: str) -> None:
    os.symlink(target, os.path.join(root, path))


def op_mkfifo(root: str, path: str, mode: int = 0o644) -> None:
    os.mkfifo(os.path.join(root, path), mode)


def op_chmod(root: str, path: str, mode: int) -> None:
    os.chmod(os.path.join(root, path), mode)


def op_chown(root: str, path: str, uid: int, gid: int) -> None:
    os.lchown(os.path.join(root, path), uid, gid)


def op_setxattr(root: str, path: str, name: str, value: bytes) -> None:
    os.setxattr(os.path.join(root, path), name, value)


def op_removexattr(root: str, path: str, name: str) -> None:
    os.removexattr(os.path.join(root, path), name)


OPS: dict[str, Callable[..., None]] = {
    "create": op_create, "write": op_write, "append": op_append, "truncate": op_truncate,
    "unlink": op_unlink, "rmdir": op_rmdir, "mkdir": op_mkdir, "rename": op_rename,
    "link": op_link, "symlink": op_symlink, "mkfifo": op_mkfifo, "chmod": op_chmod,
    "chown": op_chown, "setxattr": op_setxattr,
    "removexattr": op_removexattr,
}


def run_op(root: str | os.PathLike, op: str, *args) -> int:
    """Run one operation; 0 on success, else the errno."""
    try:
        OPS[op](os.fspath(root), *args)
    except OSError as e:
        return e.errno or -1
    return 0


def copy_object(src: str, dst: str, linked: dict[int, str]) -> None:
    """`cp -a` of one tree as `mv` does it after EXDEV: data, mode, owner, user xattrs, links."""
    st = os.lstat(src)
    if stat.S_ISDIR(st.st_mode):
        os.mkdir(dst, 0o700)
        for name in sorted(os.listdir(src)):
            copy_object(os.path.join(src, name), os.path.join(dst, name), linked)
    elif stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(src), dst)
    elif st.st_nlink > 1 and st.st_ino in linked:
        os.link(linked[st.st_ino], dst, follow_symlinks=False)
        return
    elif stat.S_ISREG(st.st_mode):
        shutil.copyfile(src, dst, follow_symlinks=False)
    else:
        os.mknod(dst, st.st_mode, st.st_rdev)
    linked[st.st_ino] = dst
    _set_xattrs(dst, _user_xattrs(src))
    os.chown(dst, st.st_uid, st.st_gid, follow_symlinks=False)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(dst, stat.S_IMODE(st.st_mode))


def remove_tree(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        for name in os.listdir(path):
            remove_tree(os.path.join(path, name))
        os.rmdir(path)
    else:
        os.unlink(path)


def mv_emulate(root: str | os.PathLike, src: str, dst: str) -> None:
    """What `mv` does when rename(2) says EXDEV: copy the tree, then delete the source."""
    root = os.fspath(root)
    s, d = os.path.join(root, src), os.path.join(root, dst)
    try:
        os.rename(s, d)
        return
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
    if os.path.lexists(d):
        if os.path.isdir(d) and not os.path.islink(d):
            os.rmdir(d)
        else:
            os.unlink(d)
    copy_object(s, d, {})
    remove_tree(s)


EMULATION_TMP = ".oracle-exchange"


def exchange_emulate(root: str | os.PathLike, a: str, b: str) -> None:
    """RENAME_EXCHANGE through three `mv`s and a name no test ever uses."""
    tmp = os.path.join(parent_of(a), EMULATION_TMP) if parent_of(a) else EMULATION_TMP
    mv_emulate(root, a, tmp)
    mv_emulate(root, b, a)
    mv_emulate(root, tmp, b)


# --------------------------------------------------------------------------------------------
# Mounts and processes


def mountpoints_under(base: str | os.PathLike) -> list[str]:
    base = os.path.realpath(base)
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].replace("\\040", " ")
            if mp == base or mp.startswith(base + "/"):
                out.append(mp)
    return out


def is_mounted(target: str | os.PathLike) -> bool:
    return os.path.realpath(target) in mountpoints_under(target)


def kernel_overlay_mount(lowers: list[Path], upper: Path, work: Path, target: Path) -> None:
    opts = (f"lowerdir={':'.join(map(str, lowers))},upperdir={upper},workdir={work},"
            "redirect_dir=off,index=off,metacopy=off")
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(target)], check=True,
                   timeout=30, capture_output=True)


def fuse_overlayfs_mount(lowers: list[Path], upper: Path, work: Path, target: Path) -> None:
    opts = f"lowerdir={':'.join(map(str, lowers))},upperdir={upper},workdir={work}"
    subprocess.run(["fuse-overlayfs", "-o", opts, str(target)], check=True, timeout=30,
                   capture_output=True)


def unmount_any(target: str | os.PathLike) -> None:
    """Unmount whatever is on `target` (kernel or FUSE), lazily if it will not go cleanly."""
    target = os.fspath(target)
    for cmd in (["umount", target], ["umount", "-l", target]):
        if not is_mounted(target):
            return
        subprocess.run(cmd, timeout=30, check=False, capture_output=True)


def unmount_all_under(base: str | os.PathLike) -> list[str]:
    """Safety net for fixtures: lazy-unmount everything below `base`, deepest first."""
    left = sorted(mountpoints_under(base), key=len, reverse=True)
    for mp in left:
        subprocess.run(["umount", "-l", mp], timeout=30, check=False, capture_output=True)
    return left


def pids_with_arg(needle: str) -> list[int]:
    """Processes whose command line has an argument containing `needle` (e.g. a mount target)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if any(needle.encode() in a for a in args) and int(entry) != os.getpid():
            out.append(int(entry))
    return out


def daemon_pids(target: str | os.PathLike) -> list[int]:
    """pyunion daemons serving `target`: python processes running `unionfs` with that path."""
    target = os.path.realpath(target)
    out = []
    for pid in pids_with_arg(target):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if b"unionfs" in cmd or b"pyunion" in cmd:
            out.append(pid)
    return out


def open_fds() -> set[str]:
    """What this process has open (fd -> target), to spot leaked descriptors."""
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            out.add(f"{fd}->{os.readlink(f'/proc/self/fd/{fd}')}")
    return out


# --------------------------------------------------------------------------------------------
# The oracle: one sequence of operations on three roots


class HarnessError(AssertionError):
    """The reference side disagrees with itself: a bug in the oracle, not in the subject."""


def op_paths(op: str, args: tuple) -> list[str]:
    """The paths an operation names (for taint tracking and messages)."""
    if op in ("rename", "link"):
        return [args[0], args[1]]
    if op == "symlink":
        return [args[1]]
    return [args[0]]


class OracleRun:
    """Runs operations on a subject union mount, on kernel overlayfs and on a plain directory.

    * `ref`: kernel overlayfs (`redirect_dir=off,index=off,metacopy=off`), lowers in kernel form.
    * `sub`: the subject (`pyunion`, or `kernel` to validate this harness against itself).
    * `plain`: a plain directory that starts as the merged tree: the POSIX model.

    The expected errno of a call is the kernel's, the expected tree the plain directory's, and
    every step checks that kernel and plain agree, so the plain model is overlayfs-approved.
    Where overlayfs deliberately differs from POSIX, the plain model decides:

    * a directory rename the kernel refuses with EXDEV (a lower or merged directory,
      redirect_dir=off): the subject may also answer EXDEV (then nothing changes anywhere), or
      do the rename, which must then match the plain directory (errno included). The kernel
      side is then brought along with what `mv` does after EXDEV (copy, then delete).
    * lower hardlinks: the kernel without index breaks them at copy-up; the subject must keep
      them together like the plain directory. Paths where kernel and plain differ only because
      of that are "tainted": compared to the plain model only, not to the kernel, from then on.

    Checked after every call: the errno; the subject's merged tree against the plain directory
    (names, types, data, mode, owner, symlink targets, user.* xattrs, hardlink groups and
    st_nlink; not times); readdir/lookup consistency and no private xattr showing; the upper,
    read as an OCI changeset over the lowers, giving that same tree with no needless whiteout;
    st_ino of every object unchanged since the previous step (copy-up, rename, remount) and
    never shared by two objects. `remount()` repeats the checks on a fresh mount.
    """

    # Outcome counts over every run in this process, to see what the random sequences reach.
    stats: ClassVar[collections.Counter] = collections.Counter()

    def __init__(self, base: Path, lowers: list[Tree], *, subject: str = "pyunion",
                 dialects: list[str] | None = None, check_ino: bool = True) -> None:
        self.base = Path(base)
        self.lowers = lowers
        self.subject = subject
        self.dialects = dialects or ["oci"] * len(lowers)
        self.check_ino = check_ino and subject == "pyunion"
        self.models = [resolve_links(layer, f"L{i}") for i, layer in enumerate(lowers)]
        self.ref_models = list(self.models)   # each grows on top when an upper is rotated down
        self.sub_models = list(self.models)
        self.rotations = 0
        self.tainted: set[str] = set()
        self.known: set[str] = set()      # names of the last check, probed first next time
        self.ino_map: dict[object, object] = {}
        self.log: list[str] = []
        self.exdev_kept = 0
        self._sub_mount = contextlib.ExitStack()
        self.ref = self.base / "ref"
        self.sub = self.base / "sub"
        # The subject's layers live deeper than its mount, as in real setups (a store's layers
        # under /var/lib/...): a path near PATH_MAX through the mount is longer than PATH_MAX
        # in its layers. All three roots have paths of one length, so a path too long for one
        # is too long for all.
        self.sub_layers = self.sub / ("L" * 200)
        self.plain = self.base / "pla" / "mnt"

    # -- set-up and tear-down ------------------------------------------------------------

    def start(self) -> Self:
        os.umask(0o022)
        for side in (self.ref, self.sub, self.sub_layers):
            for d in ("upper", "work", "mnt"):
                (side / d).mkdir(parents=True)
        for i, layer in enumerate(self.lowers):
            build_layer(self.ref / f"l{i}", layer, "ovl")
            build_layer(self.sub_layers / f"l{i}", layer,
                        "ovl" if self.subject == "kernel" else self.dialects[i])
        build_plain(self.plain, merge(self.models))
        kernel_overlay_mount(self._lower_dirs(self.ref), self.ref / "upper", self.ref / "work",
                             self.ref / "mnt")
        self._mount_subject()
        self.check("after mount")
        return self

    def _lower_dirs(self, side: Path) -> list[Path]:
        """Rotated uppers (newest first), then the built lowers."""
        rotated = [side / f"r{k}" for k in reversed(range(self.rotations))]
        return rotated + [side / f"l{i}" for i in range(len(self.lowers))]

    def _mount_subject(self) -> None:
        mnt = self.sub / "mnt"
        upper, work = self.sub_layers / "upper", self.sub_layers / "work"
        lowers = self._lower_dirs(self.sub_layers)
        if self.subject == "pyunion":
            from tests.mounting import mounted
            opts = [f"workdir={work}", f"log={self.base / 'daemon.log'}"]
            self._sub_mount.enter_context(mounted(upper, lowers, mnt, opts))
        elif self.subject == "fuse-overlayfs":
            fuse_overlayfs_mount(lowers, upper, work, mnt)
            self._sub_mount.callback(unmount_any, mnt)
        elif self.subject == "kernel":
            kernel_overlay_mount(lowers, upper, work, mnt)
            self._sub_mount.callback(unmount_any, mnt)
        else:
            raise ValueError(f"unknown subject {self.subject!r}")

    def remount(self) -> None:
        """Unmount and mount the subject again; everything must look the same afterwards."""
        self._sub_mount.close()
        self._mount_subject()
        self.check("after remount")

    def rotate(self) -> None:
        """Unmount both unions, make each upper the top lower under a fresh upper (what a
        commit does: the container's changes become an image layer), mount again.

        Inode numbers may change here (an object now comes from another layer), so the
        st_ino check starts afresh; everything else must look the same."""
        self._sub_mount.close()
        unmount_any(self.ref / "mnt")
        k = self.rotations
        sub_dialect = "oci" if self.subject == "pyunion" else "ovl"
        self.sub_models.insert(0, scan_layer(self.sub_layers / "upper", sub_dialect, f"R{k}"))
        self.ref_models.insert(0, scan_layer(self.ref / "upper", "ovl", f"R{k}"))
        for side in (self.ref, self.sub_layers):
            os.rename(side / "upper", side / f"r{k}")
            shutil.rmtree(side / "work")
            (side / "upper").mkdir()
            (side / "work").mkdir()
        self.rotations += 1
        self.stats["rotation of the uppers"] += 1
        kernel_overlay_mount(self._lower_dirs(self.ref), self.ref / "upper", self.ref / "work",
                             self.ref / "mnt")
        self._mount_subject()
        self.ino_map = {}
        self.check("after rotating the uppers into the lowers")

    def close(self) -> None:
        """Unmount everything and delete the directories; safe to call at any point, twice."""
        try:
            self._sub_mount.close()
        finally:
            unmount_any(self.ref / "mnt")
            left = unmount_all_under(self.base)
            if not mountpoints_under(self.base):
                shutil.rmtree(self.base, ignore_errors=True)
            if left:
                raise RuntimeError(f"had to lazy-unmount {left}")

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc) -> None:
        self.close()

    # -- operations --------------------------------------------------------------------

    def is_tainted(self, path: str) -> bool:
        return any(path == t or path.startswith(t + "/") for t in self.tainted)

    def do(self, op: str, *args) -> int:
        """Run `op` everywhere, check the errno and the trees; return the subject's errno."""
        try:
            return self._do(op, *args)
        except HarnessError:
            raise
        except (AssertionError, OSError) as e:
            log = self.daemon_log()
            if log:
                raise AssertionError(f"{e}\ndaemon log (tail):\n{log}") from e
            raise

    def daemon_log(self, lines: int = 30) -> str:
        try:
            text = (self.base / "daemon.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _do(self, op: str, *args) -> int:
        step = f"{op}{args!r}"
        self.log.append(step)
        paths = op_paths(op, args)
        plain = os.fspath(self.plain)
        dir_rename = op == "rename" and (
            _isdir(plain, args[0]) or (len(args) > 2 and args[2] == RENAME_EXCHANGE
                                       and _isdir(plain, args[1])))
        tainted_op = any(self.is_tainted(p) for p in paths)
        if op in ("write", "append", "truncate") and _is_device(plain, args[0]):
            # Opening a device node reaches its driver, not the union; FUSE mounts are nodev
            # (EACCES) where the kernel's overlay is not: nothing of the union to compare.
            self.stats[f"{op} on a device, skipped"] += 1
            return 0
        if self.subject == "pyunion" and any(
                len(os.fsencode(p.rpartition("/")[2])) > PYUNION_NAME_MAX for p in paths):
            # The kernel takes the name; pyunion must refuse it and change nothing.
            es = run_op(self.sub / "mnt", op, *args)
            self.stats[f"{op} long name {_en(es)}"] += 1
            want = long_name_errno(plain, op, args)
            if es != want:
                raise AssertionError(f"{step}: expected {_en(want)}, got {_en(es)}")
            self.check(step)
            return es
        ek = run_op(self.ref / "mnt", op, *args)
        es = run_op(self.sub / "mnt", op, *args)
        kernel_like = self.subject == "kernel"
        if ek == errno.EXDEV and dir_rename:
            if es == errno.EXDEV and not kernel_like:
                self.exdev_kept += 1  # the subject chose overlayfs's answer: nothing changed
                expected = ek
            else:
                ed = run_op(plain, op, *args)
                expected = ek if kernel_like else ed
                if ed == 0:
                    roots = [self.ref / "mnt"] + ([self.sub / "mnt"] if kernel_like else [])
                    for root in roots:
                        if len(args) > 2 and args[2] == RENAME_EXCHANGE:
                            exchange_emulate(root, args[0], args[1])
                        else:
                            mv_emulate(root, args[0], args[1])
        else:
            if ek == errno.EXDEV:
                raise HarnessError(f"{step}: kernel EXDEV on something that is no dir rename")
            ed = run_op(plain, op, *args)
            if kernel_like:
                expected = ek
            elif tainted_op:
                expected = ed
            elif ek != ed:
                raise HarnessError(f"{step}: kernel errno {_en(ek)} but plain dir {_en(ed)}")
            else:
                expected = ek
        if tainted_op:
            self.tainted.update(paths)
        self.stats[f"{op} {_en(es)}"] += 1
        if ek == errno.EXDEV:
            self.stats[f"EXDEV dir rename, subject {_en(es)}"] += 1
        if es != expected:
            raise AssertionError(f"{step}: expected {_en(expected)}, got {_en(es)}"
                                 f"\nsteps: {self.log}")
        self.check(step)
        return es

    # -- checks ------------------------------------------------------------------------

    def _probe_names(self, step: str) -> list[str]:
        """stat + read through every name known before this step, by name and before any
        listing (a listing makes the kernel look every name up again, which would hide a
        union that lost track of an object known by another name)."""
        if self.subject == "kernel":
            return []
        out = []
        for path in sorted(self.known):
            if self.is_tainted(path):
                continue
            want = probe(self.plain, path)
            got = probe(self.sub / "mnt", path)
            if want != got:
                out.append(f"through the name {path!r}: expected {want}, got {got}")
        return out

    def check(self, step: str) -> None:
        early = self._probe_names(step)
        ref = snapshot(self.ref / "mnt")
        sub = snapshot(self.sub / "mnt")
        plain = snapshot(self.plain)
        if ref.problems or plain.problems:
            raise HarnessError(f"{step}: {ref.problems + plain.problems}")
        self._taint_hardlink_divergence(step, plain.tree, ref.tree)
        skip = self.is_tainted
        harness = changeset_problems(scan_layer(self.ref / "upper", "ovl"), self.ref_models,
                                     plain.tree, peers=False, skip=skip)
        if harness:
            raise HarnessError(f"{step}: kernel upper: {harness}")
        problems = early + list(sub.problems)
        self.known = set(plain.tree)
        if self.subject != "kernel":
            problems += diff_trees(plain.tree, sub.tree)
            problems += [f"st_nlink of {p!r}: expected {n}, got {sub.nlink.get(p)}"
                         for p, n in sorted(plain.nlink.items())
                         if p in sub.nlink and sub.nlink[p] != n]
            upper = scan_layer(self.sub_layers / "upper",
                               "oci" if self.subject == "pyunion" else "any")
            problems += changeset_problems(upper, self.sub_models,
                                           plain.tree)
            if self.check_ino:
                problems += self._ino_problems(plain.tree, sub.tree)
        else:
            problems += diff_trees(ref.tree, sub.tree, peers=False)
            upper = scan_layer(self.sub_layers / "upper", "ovl")
            problems += changeset_problems(upper, self.sub_models,
                                           plain.tree, peers=False,
                                           skip=skip)
        if problems:
            raise AssertionError(f"{step}:\n  " + "\n  ".join(problems)
                                 + f"\nsteps: {self.log}")

    def _taint_hardlink_divergence(self, step: str, plain: Tree, ref: Tree) -> None:
        linked = {p for p, g in peer_groups(plain).items() if len(g) > 1}
        for path in sorted(set(plain) | set(ref), key=_depth_key):
            if self.is_tainted(path):
                continue
            e, a = plain.get(path), ref.get(path)
            if e is not None and a is not None and e.public() == a.public():
                continue
            if path in linked:
                self.tainted.add(path)
                self.stats["hardlink divergence (tainted)"] += 1
                continue
            raise HarnessError(f"{step}: kernel and plain dir differ at {path!r}: "
                               f"plain {_show(e)}, kernel {_show(a)}; steps: {self.log}")

    def _ino_problems(self, plain: Tree, sub: Tree) -> list[str]:
        out = []
        seen: dict[object, str] = {}
        now: dict[object, object] = {}
        for path, node in sorted(plain.items()):
            got = sub.get(path)
            if got is None or got.kind != node.kind:
                continue
            ino = got.ident[1]  # st_ino; st_dev changes with every mount
            if ino in seen and plain[seen[ino]].ident != node.ident:
                out.append(f"st_ino shared by different objects {seen[ino]!r} and {path!r}")
            seen[ino] = path
            old = self.ino_map.get(node.ident)
            if old is not None and old != ino:
                out.append(f"st_ino of {path!r} changed from {old} to {ino}")
            now[node.ident] = ino
        self.ino_map = now
        return out


def long_name_errno(root: str, op: str, args: tuple) -> int:
    """The errno of a call naming a last component longer than pyunion's NAME_MAX, in the
    VFS's order: the source is looked up first, then the new name's parent is walked, then the
    new name is looked up (by the union: ENAMETOOLONG), before any other check (a directory
    moved below itself, a link to a directory)."""
    src = args[0] if op in ("link", "rename") else None
    new = args[1] if op in ("link", "rename", "symlink") else args[0]
    if src is not None:
        try:
            os.lstat(os.path.join(root, src))
        except OSError as e:
            return e.errno or -1
    parent = parent_of(new)
    if parent:
        try:
            if not stat.S_ISDIR(os.stat(os.path.join(root, parent)).st_mode):
                return errno.ENOTDIR
        except OSError as e:
            return e.errno or -1
    return errno.ENAMETOOLONG


def probe(root: str | os.PathLike, path: str) -> tuple:
    """What lstat (and read, readlink) through one name shows: type, mode, link count of a
    non-directory, data or target; or the errno."""
    full = os.path.join(root, path)
    try:
        st = os.lstat(full)
        kind = stat.S_IFMT(st.st_mode)
        data: bytes | str | None = None
        if stat.S_ISREG(st.st_mode):
            with open(full, "rb") as f:
                data = f.read()
        elif stat.S_ISLNK(st.st_mode):
            data = os.readlink(full)
    except OSError as e:
        return (errno.errorcode.get(e.errno or 0, e.errno),)
    nlink = None if stat.S_ISDIR(st.st_mode) else st.st_nlink
    return (oct(kind), oct(stat.S_IMODE(st.st_mode)), nlink, data)


def _is_device(root: str, path: str) -> bool:
    try:
        mode = os.stat(os.path.join(root, path)).st_mode
    except OSError:
        return False
    return stat.S_ISCHR(mode) or stat.S_ISBLK(mode)


def _isdir(root: str, path: str) -> bool:
    full = os.path.join(root, path)
    return os.path.isdir(full) and not os.path.islink(full)


def _en(code: int) -> str:
    return "success" if code == 0 else errno.errorcode.get(code, str(code))
