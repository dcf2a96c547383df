"""Write the data plan to disk, each layer in the whiteout dialect an implementation reads.

Dialects:
  kernel  - whiteout = char device 0/0, opaque = xattr trusted.overlay.opaque=y
            (kernel overlayfs; fuse-overlayfs reads it too)
  oci     - whiteout = empty `.wh.NAME`, opaque = `.wh..wh..opq` (pyunion; fuse-overlayfs too)
  unionfs - empty `.unionfs-fuse/<path>_HIDDEN~` at the branch root (unionfs-fuse 1.0, Debian);
            a hidden directory that the same branch also has acts as an opaque directory
The bottom layer has no whiteouts, so one copy of it serves every dialect.
"""

from __future__ import annotations

import os
import stat

from bench.plan import FileSpec, Layer, Plan, big_block, is_big, merged, small_content

DIALECTS = ("kernel", "oci", "unionfs")
UNIONFS_META = ".unionfs-fuse"
OPAQUE_XATTR = "trusted.overlay.opaque"


def write_file(root: str, path: str, spec: FileSpec) -> None:
    full = os.path.join(root, path)
    with open(full, "wb") as f:
        if is_big(spec):
            block = big_block(spec)
            left = spec.size
            while left:
                n = min(left, len(block))
                f.write(block if n == len(block) else block[:n])
                left -= n
        else:
            f.write(small_content(path, spec))


def _make_dirs(root: str, dirs: set[str]) -> None:
    os.makedirs(root, exist_ok=True)
    for d in sorted(dirs):
        os.makedirs(os.path.join(root, d), exist_ok=True)


def write_plain(root: str, files: dict[str, FileSpec], dirs: set[str]) -> None:
    _make_dirs(root, dirs)
    for path, spec in files.items():
        write_file(root, path, spec)


def write_whiteouts(root: str, layer: Layer, dialect: str) -> None:
    for path in sorted(layer.whiteouts):
        parent, name = os.path.split(path)
        if dialect == "kernel":
            os.mknod(os.path.join(root, path), stat.S_IFCHR | 0o000, os.makedev(0, 0))
        elif dialect == "oci":
            open(os.path.join(root, parent, ".wh." + name), "wb").close()
        elif dialect == "unionfs":
            _unionfs_hide(root, path)
        else:
            raise ValueError(f"unknown whiteout dialect: {dialect}")
    for d in sorted(layer.opaque):
        if dialect == "kernel":
            os.setxattr(os.path.join(root, d), OPAQUE_XATTR, b"y")
        elif dialect == "oci":
            open(os.path.join(root, d, ".wh..wh..opq"), "wb").close()
        else:
            _unionfs_hide(root, d)


def _unionfs_hide(root: str, path: str) -> None:
    marker = os.path.join(root, UNIONFS_META, path + "_HIDDEN~")
    os.makedirs(os.path.dirname(marker), exist_ok=True)
    open(marker, "wb").close()


def link_or_write(root: str, path: str, spec: FileSpec, source: str | None) -> None:
    """Hard-link the same file from an already built layer: creating inodes is the slow part."""
    if source is not None:
        try:
            os.link(os.path.join(source, path), os.path.join(root, path))
            return
        except OSError:
            pass
    write_file(root, path, spec)


def write_top(root: str, plan: Plan, dialect: str, source: str | None = None) -> None:
    """The top lower in `dialect`; its regular files are links into `source` (another top)."""
    _make_dirs(root, plan.top.dirs)
    for path, spec in plan.top.files.items():
        link_or_write(root, path, spec, source)
    write_whiteouts(root, plan.top, dialect)


def write_base(root: str, plan: Plan) -> None:
    write_plain(root, plan.base.files, plan.base.dirs)


def write_native(root: str, plan: Plan, base: str, top: str | None) -> None:
    """The merged tree as one plain directory: what native is measured on.

    Its files are hard links to the layers' files (same inodes, same disk blocks), which is
    fair to every workload native runs: none of them writes into an existing file.
    """
    tree = merged(plan)
    _make_dirs(root, {p for p, s in tree.items() if s is None})
    for path, spec in tree.items():
        if spec is not None:
            restore_native_file(root, plan, path, base, top)


def restore_native_file(root: str, plan: Plan, path: str, base: str, top: str | None) -> None:
    spec = merged_spec(plan, path)
    source = top if path in plan.top.files else base
    link_or_write(root, path, spec, source)


def merged_spec(plan: Plan, path: str) -> FileSpec:
    return plan.top.files.get(path) or plan.base.files[path]


def build_all(data_root: str, plan: Plan, dialects: set[str], native: bool) -> dict[str, str]:
    """Build base + one top per dialect (+ native); returns name -> directory."""
    out = {"base": os.path.join(data_root, "base")}
    write_base(out["base"], plan)
    first_top = None
    for d in sorted(dialects):
        out["top-" + d] = os.path.join(data_root, "top-" + d)
        write_top(out["top-" + d], plan, d, first_top)
        first_top = first_top or out["top-" + d]
    if native:
        out["native"] = os.path.join(data_root, "native")
        if first_top is None:
            first_top = out["top-plain"] = os.path.join(data_root, "top-plain")
            write_plain(first_top, plan.top.files, plan.top.dirs)
        write_native(out["native"], plan, out["base"], first_top)
    return out
