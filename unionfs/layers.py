"""The layer rules, free of I/O: whiteout and opaque markers, and how per-layer directory
contents merge into one view.

Both dialects are read: the OCI one (`.wh.NAME`, `.wh..wh..opq`, image-spec layer.md) and the
kernel-overlay one (overlayfs.rst "Whiteouts and opaque directories": a 0/0 character device, or a
zero-size regular file with the `overlay.whiteout` xattr inside a directory whose `overlay.opaque`
is `x`; a directory is opaque when `overlay.opaque` is `y`), in the `trusted.` and the `user.`
(userxattr) namespaces alike. Only the OCI one is written, so an upper directory is an OCI layer
changeset as it stands. This module is the one place these rules live: the mount, the layer
applier and the layer writer all ask it.
"""

from __future__ import annotations

import stat
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

WH_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
# Whiteout file names take 4 bytes of NAME_MAX, so a visible name may use only the rest.
NAME_MAX = 255 - len(WH_PREFIX)

OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque", "user.fuseoverlayfs.opaque")
XWHITEOUT_XATTRS = ("trusted.overlay.whiteout", "user.overlay.whiteout")
# Attributes that belong to the layer machinery and never show through the mount.
PRIVATE_XATTR_PREFIXES = ("trusted.overlay.", "user.overlay.", "trusted.pyunion.",
                          "user.pyunion.", "user.fuseoverlayfs.")


def whiteout_name(name: str) -> str:
    return WH_PREFIX + name


def is_meta_name(name: str) -> bool:
    """Names the mount never shows and never lets a caller create."""
    return name.startswith(WH_PREFIX)


def whited_out_name(name: str) -> str | None:
    """The name a `.wh.NAME` file hides, or None for the opaque marker and ordinary names."""
    if name.startswith(WH_PREFIX) and name != OPAQUE_MARKER:
        return name[len(WH_PREFIX):] or None
    return None


def is_kernel_whiteout(mode: int, rdev: int) -> bool:
    return stat.S_ISCHR(mode) and rdev == 0


def is_private_xattr(name: str) -> bool:
    return name.startswith(PRIVATE_XATTR_PREFIXES)


def opaque_value(value: bytes | None) -> bool:
    """`overlay.opaque=y` ends the merge here; `x` only says the directory holds xattr
    whiteouts (overlayfs.rst), it is not opaque."""
    return value is not None and value.strip(b"\0").lower() == b"y"


def xwhiteouts_value(value: bytes | None) -> bool:
    """`overlay.opaque=x`: look for xattr whiteouts among this directory's entries."""
    return value is not None and value.strip(b"\0").lower() == b"x"


XattrGetter = Callable[[str], "bytes | None"]


def dir_marks(get: XattrGetter) -> tuple[bool, bool]:
    """(opaque, holds xattr whiteouts) of a layer directory, from its xattrs (`get` answers a
    value or None)."""
    opaque = xwh = False
    for name in OPAQUE_XATTRS:
        v = get(name)
        opaque = opaque or opaque_value(v)
        xwh = xwh or xwhiteouts_value(v)
    return opaque, xwh


def is_xattr_whiteout(mode: int, size: int, get: XattrGetter) -> bool:
    """A zero-size regular file carrying `overlay.whiteout` (either namespace). Only asked in
    a directory that `dir_marks` says holds xattr whiteouts."""
    if not stat.S_ISREG(mode) or size != 0:
        return False
    return any(get(name) is not None for name in XWHITEOUT_XATTRS)


@dataclass
class LayerDir:
    """What one layer holds in one directory, as read from disk.

    `entries` maps every non-marker name to (is_dir, is_kernel_whiteout); `whiteouts` are the
    names hidden by `.wh.` files; `opaque` is true when lower layers stop here.
    """

    layer: int
    entries: dict[str, tuple[bool, bool]] = field(default_factory=dict)
    whiteouts: set[str] = field(default_factory=set)
    opaque: bool = False


@dataclass(frozen=True)
class MergedEntry:
    name: str
    layer: int          # topmost layer that holds the visible object
    is_dir: bool


def merge_listing(layers: Sequence[LayerDir]) -> list[MergedEntry]:
    """Merge one directory's per-layer contents, top layer first, into the visible entries.

    A name is decided by the topmost layer that mentions it (an object or a whiteout); later
    layers cannot bring it back. The order is stable: top layer names in their order, then new
    names from each lower layer, so an open directory stream keeps its offsets.
    """
    decided: set[str] = set()
    out: list[MergedEntry] = []
    for ld in layers:
        for name, (is_dir, kernel_wh) in ld.entries.items():
            if name in decided:
                continue
            decided.add(name)
            if kernel_wh:
                continue  # a `.wh.NAME` beside NAME hides only lower layers' NAME
            out.append(MergedEntry(name, ld.layer, is_dir))
        decided.update(ld.whiteouts)
        if ld.opaque:
            break
    return out


@dataclass(frozen=True)
class Found:
    """One layer's answer for a name: absent, hidden, or an object (dir or not)."""

    present: bool
    whiteout: bool = False
    is_dir: bool = False
    opaque: bool = False

    @property
    def final(self) -> bool:
        """Nothing in the layers below can change the name's resolution (resolve_name stops
        here), so they need not be asked."""
        return self.whiteout or (self.present and (not self.is_dir or self.opaque))


ABSENT = Found(False)
HIDDEN = Found(False, whiteout=True)


def resolve_name(answers: Iterable[tuple[int, Found]]) -> tuple[int | None, list[int]]:
    """Resolve a name from per-layer answers (top first, over the parent's visible stack).

    Returns (top layer or None when invisible, the layers whose directories merge into it).
    A directory merges with directories of the same name below it until an opaque one, a
    whiteout or a non-directory ends the stack, as in overlayfs.
    """
    top: int | None = None
    stack: list[int] = []
    for layer, f in answers:
        if top is None:
            if f.whiteout:
                return None, []
            if not f.present:
                continue
            top = layer
            if not f.is_dir:
                return top, [top]
            stack.append(layer)
            if f.opaque:
                break
        else:
            if f.whiteout or (f.present and not f.is_dir):
                break
            if not f.present:
                continue
            stack.append(layer)
            if f.opaque:
                break
    return top, stack


def needs_whiteout(lower_answers: Iterable[Found]) -> bool:
    """Whether removing a name from the upper must leave a whiteout: only if a lower shows it."""
    for f in lower_answers:
        if f.whiteout:
            return False
        if f.present:
            return True
    return False
