"""One directory's contents per layer, and the merged listing of a directory node.

A part of `union.Union` (one mixin per idea): it uses the state Union.__init__ sets up.
"""

from __future__ import annotations

import os

from unionfs.inodes import UPPER, Node
from unionfs.layers import (
    OPAQUE_MARKER,
    LayerDir,
    MergedEntry,
    is_kernel_whiteout,
    is_meta_name,
    is_xattr_whiteout,
    merge_listing,
    whited_out_name,
)
from unionfs.plumbing import _getter, _join, _mode_rdev
from unionfs.unionstate import Base


class Listing(Base):


    def _layer_dir(self, layer: int, path: str) -> LayerDir:
        return self._scan_dir(layer, path) if layer == UPPER else self._lower_dir(layer, path)

    def _scan_dir(self, layer: int, path: str) -> LayerDir:
        ld = LayerDir(layer)
        lower = layer != UPPER
        d = self.real(layer, path)
        try:
            it = os.scandir(d)
        except (FileNotFoundError, NotADirectoryError):
            return ld
        marked_opaque, xwhiteouts = self._dir_marks(d)
        xwhiteouts = xwhiteouts and lower     # the upper is written in the OCI form only
        with it:
            for e in it:
                name = e.name
                if name == OPAQUE_MARKER:
                    ld.opaque = True
                    continue
                hidden = whited_out_name(name)
                if hidden is not None:
                    ld.whiteouts.add(hidden)
                    continue
                if is_meta_name(name):
                    continue
                kwh = False
                is_dir = e.is_dir(follow_symlinks=False)
                if lower:
                    # Stat now, relative to the open directory: cheaper than a path lookup
                    # later, and a listing's entries are usually all wanted.
                    try:
                        st = e.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    self._lower_stats[(layer, _join(path, name))] = st
                    kwh = is_kernel_whiteout(st.st_mode, st.st_rdev) or (
                        xwhiteouts and is_xattr_whiteout(
                            st.st_mode, st.st_size, _getter(f"{d}/{name}")))
                elif not (is_dir or e.is_file(follow_symlinks=False) or e.is_symlink()):
                    try:  # a special file: maybe a kernel-overlay whiteout
                        kwh = is_kernel_whiteout(*_mode_rdev(e.stat(follow_symlinks=False)))
                    except OSError:
                        continue
                ld.entries[name] = (is_dir, kwh)
        ld.opaque = ld.opaque or marked_opaque
        return ld

    def list_dir(self, node: Node) -> list[MergedEntry]:
        self.refresh(node)
        path = node.path()
        layers = [self._layer_dir(layer, path) for layer in node.stack]
        return merge_listing(layers)

    def is_empty(self, node: Node) -> bool:
        return not self.list_dir(node)
