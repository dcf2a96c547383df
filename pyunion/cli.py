"""The `pyunion` command: routes subcommands to their package; anything else is the
fuse-overlayfs / mount.fuse3 command line of the union mount.

Subcommands are imported lazily so that a problem in one part never stops `pyunion mount`
from working, and a mount does not pay for importing the image code.
"""

from __future__ import annotations

import sys

USAGE_MORE = """\
       pyunion image import|ls|inspect|rm|export|commit ...
       pyunion snapshot prepare|view|commit|rm|info|ls|usage|mounts|label|cleanup|mount ...
       pyunion snapshotter serve --address SOCKET [--root DIR]   (containerd proxy plugin)
       pyunion run [OPTIONS] IMAGE [CMD ARGS...]
       pyunion rm [-f] NAME...   (what a `pyunion run --name NAME` left: container, mount, snapshot)
       pyunion runtime ...   (runc's command line; also the `pyunion-runtime` executable)
       pyunion demo [--keep]
       pyunion --version"""


def usage() -> str:
    from unionfs.mount_cli import MOUNT_USAGE
    return MOUNT_USAGE + "\n" + USAGE_MORE


def main(argv: list[str] | None = None) -> int:
    """Every subcommand runs inside the one error boundary (unionfs/exits.py): whatever escapes
    its own is one line, never a traceback (unless PYUNION_DEBUG=1)."""
    from unionfs.exits import Boundary
    argv = list(sys.argv[1:] if argv is None else argv)
    return Boundary("pyunion", failures=()).run(lambda: route(argv))


def route(argv: list[str]) -> int:
    if not argv:
        print("pyunion: a command is required (see `pyunion --help`)", file=sys.stderr)
        return 2
    if argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd in ("--version", "-V"):
        import unionfs
        print(f"pyunion {unionfs.__version__}")
        return 0
    if cmd == "mount":
        from unionfs.mount_cli import mount_main
        return mount_main(rest)
    if cmd in ("umount", "unmount"):
        from unionfs.mount_cli import umount_main
        return umount_main(rest)
    if cmd == "image":
        from snapshotter.image_cli import main as image_main
        return image_main(rest)
    if cmd == "snapshot":
        from snapshotter.snapshot_cli import main as snapshot_main
        return snapshot_main(rest)
    if cmd == "snapshotter":
        from snapshotter.snapshotter_cli import main as snapshotter_main
        return snapshotter_main(rest)
    if cmd == "run":
        from snapshotter.run import main as run_main
        return run_main(rest)
    if cmd == "rm":
        from snapshotter.run import rm_main
        return rm_main(rest)
    if cmd == "runtime":
        from snapshotter.runtime.cli import main as runtime_main
        return runtime_main(rest)
    if cmd == "demo":
        from snapshotter.demo import tour
        from unionfs.demo import main as demo_main
        return demo_main(rest, then=tour)
    # Anything else is the fuse-overlayfs / mount.fuse3 command line.
    from unionfs.mount_cli import compat_main
    return compat_main(argv)
