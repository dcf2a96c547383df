"""The implementations under test and how each one is mounted and unmounted."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass

from bench import mounts

PYTHON = sys.executable


@dataclass(frozen=True)
class Layout:
    """Directories of one measurement: the lowers (top first), a fresh upper and workdir."""

    lowers: tuple[str, ...]
    upper: str
    work: str
    target: str


class MountError(RuntimeError):
    pass


class Impl:
    name = ""
    label = ""
    dialect: str | None = None  # whiteout dialect of its lowers; None = plain merged tree
    options = ""  # mount options as recorded with the results
    mounts = True

    def unavailable(self) -> str | None:
        """Why this implementation cannot run here, or None."""
        return None

    def version(self) -> str:
        return ""

    def mount_argv(self, lay: Layout) -> list[str]:
        raise NotImplementedError

    def unmount_argv(self, target: str) -> list[str]:
        return ["umount", target]

    def ready(self, target: str) -> bool:
        return mounts.is_mounted(target)

    def mount(self, lay: Layout, timeout: float = 120) -> None:
        mounts.register(lay.target, self.unmount_argv(lay.target))
        try:
            r = subprocess.run(
                self.mount_argv(lay), timeout=timeout, check=False, capture_output=True, text=True
            )
        except subprocess.TimeoutExpired:
            mounts.release(lay.target)
            raise MountError(f"{self.name}: mount timed out after {timeout:.0f}s") from None
        deadline = time.monotonic() + 30
        while r.returncode == 0 and not self.ready(lay.target) and time.monotonic() < deadline:
            time.sleep(0.01)
        if r.returncode != 0 or not self.ready(lay.target):
            mounts.release(lay.target)
            err = (r.stderr or r.stdout).strip().splitlines()
            raise MountError(
                f"{self.name}: mount failed ({r.returncode}): {err[-1] if err else 'not mounted'}"
            )

    def unmount(self, target: str) -> str | None:
        return mounts.release(target)


def _first_line(argv: list[str], match: str = "") -> str:
    try:
        r = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    for line in (r.stdout + r.stderr).splitlines():
        if match in line:
            return line.strip()
    return "unknown"


class Native(Impl):
    name, label, options, mounts = "native", "native dir", "(plain directory)", False

    def version(self) -> str:
        return f"Linux {platform.release()}"

    def mount(self, lay: Layout, timeout: float = 120) -> None:
        pass

    def unmount(self, target: str) -> str | None:
        return None


class KernelOverlay(Impl):
    name, label, dialect = "kernel-overlay", "kernel overlayfs", "kernel"
    options = "lowerdir=TOP:BASE,upperdir=U,workdir=W (defaults)"

    def unavailable(self) -> str | None:
        with open("/proc/filesystems") as f:
            if "overlay" not in f.read():
                subprocess.run(
                    ["modprobe", "overlay"], check=False, capture_output=True, timeout=30
                )
        with open("/proc/filesystems") as f:
            return None if "overlay" in f.read() else "overlay not in /proc/filesystems"

    def version(self) -> str:
        return f"Linux {platform.release()}"

    def mount_argv(self, lay: Layout) -> list[str]:
        return [
            "mount",
            "-t",
            "overlay",
            "overlay",
            "-o",
            f"lowerdir={':'.join(lay.lowers)},upperdir={lay.upper},workdir={lay.work}",
            lay.target,
        ]

    def unmount_argv(self, target: str) -> list[str]:
        return ["umount", target]


class FuseOverlayfs(Impl):
    name, label, dialect = "fuse-overlayfs", "fuse-overlayfs", "kernel"
    options = "-o lowerdir=TOP:BASE,upperdir=U,workdir=W (defaults)"

    def unavailable(self) -> str | None:
        return None if shutil.which("fuse-overlayfs") else "fuse-overlayfs not installed"

    def version(self) -> str:
        return _first_line(["fuse-overlayfs", "--version"], "fuse-overlayfs")

    def mount_argv(self, lay: Layout) -> list[str]:
        return [
            "fuse-overlayfs",
            "-o",
            f"lowerdir={':'.join(lay.lowers)},upperdir={lay.upper},workdir={lay.work}",
            lay.target,
        ]

    def unmount_argv(self, target: str) -> list[str]:
        return ["fusermount3", "-u", target]


class UnionfsFuse(Impl):
    name, label, dialect = "unionfs-fuse", "unionfs-fuse", "unionfs"
    options = "-o cow,hide_meta_files U=RW:TOP=RO:BASE=RO"

    def unavailable(self) -> str | None:
        return None if shutil.which("unionfs") else "unionfs (unionfs-fuse) not installed"

    def version(self) -> str:
        return _first_line(["unionfs", "--version"], "unionfs-fuse version")

    def mount_argv(self, lay: Layout) -> list[str]:
        branches = [f"{lay.upper}=RW"] + [f"{d}=RO" for d in lay.lowers]
        return ["unionfs", "-o", "cow,hide_meta_files", ":".join(branches), lay.target]

    def unmount_argv(self, target: str) -> list[str]:
        return ["fusermount", "-u", target] if shutil.which("fusermount") else ["umount", target]


class Pyunion(Impl):
    name, label, dialect = "pyunion", "pyunion", "oci"
    options = "-o workdir=W UPPER:TOP:BASE (defaults)"
    extra: tuple[str, ...] = ()      # more -o options: the backend variants below

    def unavailable(self) -> str | None:
        r = subprocess.run(
            [PYTHON, "-c", "import unionfs.mount_cli"],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if r.returncode != 0:
            last = (r.stderr.strip().splitlines() or ["?"])[-1]
            return f"`python -m unionfs mount` not importable ({last})"
        return None

    def version(self) -> str:
        v = _first_line([PYTHON, "-m", "unionfs", "--version"], "pyunion")
        repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        rev = _first_line(["git", "-C", repo, "describe", "--always", "--dirty"])
        return f"{v} (git {rev})"

    def mount_argv(self, lay: Layout) -> list[str]:
        return [
            PYTHON,
            "-m",
            "unionfs",
            "mount",
            "-o",
            ",".join((f"workdir={lay.work}", *self.extra)),
            ":".join((lay.upper, *lay.lowers)),
            lay.target,
        ]

    def unmount_argv(self, target: str) -> list[str]:
        return [PYTHON, "-m", "unionfs", "umount", target]


class PyunionKernel(Pyunion):
    """Our own FUSE transport (unionfs/transport), with passthrough where the kernel allows
    (the default: upper files and lower files opened read-only)."""

    name, label = "pyunion-kernel", "pyunion (own transport, passthrough)"
    options = "-o workdir=W,backend=kernel UPPER:TOP:BASE"
    extra = ("backend=kernel",)


class PyunionKernelUpper(Pyunion):
    name, label = "pyunion-kernel-upper", "pyunion (own transport, passthrough of upper files only)"
    options = "-o workdir=W,backend=kernel,passthrough=upper UPPER:TOP:BASE"
    extra = ("backend=kernel", "passthrough=upper")


class PyunionKernelNoPassthrough(Pyunion):
    name, label = "pyunion-kernel-nopt", "pyunion (own transport, no passthrough)"
    options = "-o workdir=W,backend=kernel,passthrough=off UPPER:TOP:BASE"
    extra = ("backend=kernel", "passthrough=off")


class PyunionPyfuse3(Pyunion):
    name, label = "pyunion-pyfuse3", "pyunion (pyfuse3 backend)"
    options = "-o workdir=W,backend=pyfuse3 UPPER:TOP:BASE"
    extra = ("backend=pyfuse3",)


ALL: list[Impl] = [Native(), KernelOverlay(), FuseOverlayfs(), UnionfsFuse(), Pyunion(),
                   PyunionKernel(), PyunionKernelUpper(), PyunionKernelNoPassthrough(),
                   PyunionPyfuse3()]
BY_NAME = {i.name: i for i in ALL}
