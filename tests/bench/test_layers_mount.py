"""The data builder writes each whiteout dialect so that every implementation shows the same
merged tree: the plan's. Real mounts of kernel overlayfs, fuse-overlayfs, unionfs-fuse and
pyunion at the tiny scale, each mounted and unmounted through the harness's own code."""

from __future__ import annotations

import hashlib
import os
import stat

import pytest

from bench import layers, mounts
from bench.config import TINY
from bench.impls import BY_NAME, Layout
from bench.plan import build_plan, content_digest, merged

UNIONS = ["kernel-overlay", "fuse-overlayfs", "unionfs-fuse", "pyunion"]


def snapshot(root: str) -> dict[str, str | None]:
    """path -> sha256 of a regular file, None for a directory; anything else is reported."""
    out: dict[str, str | None] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for d in dirnames:
            out[os.path.normpath(os.path.join(rel, d))] = None
        for f in filenames:
            p = os.path.join(dirpath, f)
            st = os.lstat(p)
            key = os.path.normpath(os.path.join(rel, f))
            if not stat.S_ISREG(st.st_mode):
                out[key] = f"not a regular file: mode {st.st_mode:o}"
                continue
            with open(p, "rb") as fh:
                out[key] = hashlib.sha256(fh.read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    plan = build_plan(TINY)
    root = str(tmp_path_factory.mktemp("benchdata"))
    data = layers.build_all(os.path.join(root, "data"), plan, set(layers.DIALECTS), native=True)
    expected = {p: (None if s is None else content_digest(p, s)) for p, s in merged(plan).items()}
    return plan, root, data, expected


def test_dialects_write_their_own_whiteouts(built):
    plan, _, data, _ = built
    w = min(p for p in plan.top.whiteouts if p in plan.base.files)
    parent, name = os.path.split(w)
    st = os.lstat(os.path.join(data["top-kernel"], w))
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0)
    assert os.path.isfile(os.path.join(data["top-oci"], parent, ".wh." + name))
    assert not os.path.lexists(os.path.join(data["top-oci"], w))
    assert os.path.isfile(os.path.join(data["top-unionfs"], ".unionfs-fuse", w + "_HIDDEN~"))
    (opq,) = plan.top.opaque
    assert os.getxattr(os.path.join(data["top-kernel"], opq), "trusted.overlay.opaque") == b"y"
    assert os.path.isfile(os.path.join(data["top-oci"], opq, ".wh..wh..opq"))
    # the bottom layer is shared and has no whiteouts at all
    assert not any(".wh." in f for _, _, fs in os.walk(data["base"]) for f in fs)


def test_native_dir_is_the_merged_tree(built):
    _, _, data, expected = built
    assert snapshot(data["native"]) == expected


@pytest.mark.parametrize("name", UNIONS)
def test_union_shows_the_merged_tree(built, name):
    _plan, root, data, expected = built
    impl = BY_NAME[name]
    reason = impl.unavailable()
    if reason:
        pytest.skip(reason)
    base = os.path.join(root, "run", name)
    lay = Layout((data[f"top-{impl.dialect}"], data["base"]), f"{base}/upper", f"{base}/work",
                 f"{base}/mnt")
    for d in (lay.upper, lay.work, lay.target):
        os.makedirs(d)
    impl.mount(lay, timeout=60)
    try:
        assert mounts.is_mounted(lay.target)
        got = snapshot(lay.target)
    finally:
        problem = impl.unmount(lay.target)
    assert not mounts.is_mounted(lay.target)
    assert problem is None
    missing = sorted(set(expected) - set(got))[:5]
    extra = sorted(set(got) - set(expected))[:5]
    differ = sorted(p for p in set(got) & set(expected) if got[p] != expected[p])[:5]
    assert (missing, extra, differ) == ([], [], [])
