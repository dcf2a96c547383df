"""`pyunion demo`: the layers at work on a built-in example, start to finish, then cleaned up:
a union mount by hand, then (as root, from snapshotter/demo.py) an image run as a container
and committed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from unionfs.mounting import MountError, check, start_daemon, unmount
from unionfs.options import MountConfig


def _tree(root: Path) -> str:
    lines = []
    for p in sorted(root.rglob("*")):
        shown = str(p.relative_to(root))
        if p.is_symlink():
            lines.append(f"  {shown} -> {os.readlink(p)}")
        elif p.is_dir():
            lines.append(f"  {shown}/")
        else:
            text = p.read_text(errors="replace").strip().replace("\n", " | ")[:50]
            lines.append(f"  {shown}" + (f"  = {text!r}" if text else "  (empty)"))
    return "\n".join(lines) or "  (empty)"


def _step(title: str) -> None:
    print(f"\n== {title}")


def build_layers(base: Path) -> tuple[Path, Path, Path]:
    base_layer, update, upper = base / "layer1-base", base / "layer2-update", base / "upper"
    (base_layer / "etc").mkdir(parents=True)
    (base_layer / "etc" / "motd").write_text("welcome to the base image\n")
    (base_layer / "etc" / "old.conf").write_text("legacy=1\n")
    (base_layer / "app").mkdir()
    (base_layer / "app" / "v1.txt").write_text("version 1\n")
    (base_layer / "bin").mkdir()
    (base_layer / "bin" / "tool").write_text("#!/bin/sh\necho tool\n")
    (update / "etc").mkdir(parents=True)
    (update / "etc" / "motd").write_text("welcome to the updated image\n")
    (update / "etc" / ".wh.old.conf").touch()          # OCI whiteout: deleted by this layer
    (update / "app").mkdir()
    (update / "app" / ".wh..wh..opq").touch()          # opaque: replaces the whole directory
    (update / "app" / "v2.txt").write_text("version 2\n")
    upper.mkdir()
    return base_layer, update, upper


def main(argv: list[str], then: Callable[[Path, Callable[[str], None]], None] | None = None
         ) -> int:
    """The union half of the tour; THEN (given by the `pyunion` command: the image/container
    half from snapshotter/) continues in the same scratch directory before it is removed."""
    unknown = [a for a in argv if a != "--keep"]
    if unknown:
        print(f"pyunion demo: unknown argument {unknown[0]!r} (usage: pyunion demo [--keep])",
              file=sys.stderr)
        return 2
    keep = "--keep" in argv
    base = Path(tempfile.mkdtemp(prefix="pyunion-demo-"))
    target = base / "merged"
    target.mkdir()
    lower2, lower1, upper = build_layers(base)
    mounted = False
    try:
        _step(f"two read-only layers in {base} (top: {lower1.name}, bottom: {lower2.name})")
        print(f"{lower2.name}:\n{_tree(lower2)}\n{lower1.name}:\n{_tree(lower1)}")
        spec = f"{upper}:{lower1}:{lower2}"
        _step(f"pyunion mount {spec} {target}")
        cfg = check(MountConfig(upper=str(upper), lowers=[str(lower1), str(lower2)],
                                target=str(target)))
        start_daemon(cfg)
        mounted = True
        print(f"merged view:\n{_tree(target)}")
        print("  (etc/old.conf whited out, app/ replaced by the opaque directory, motd overridden)")

        _step("change things through the mount")
        with open(target / "etc" / "motd", "a") as f:
            f.write("edited in the container\n")
        print("  appended to etc/motd          -> copy-up of the lower file")
        os.unlink(target / "bin" / "tool")
        print("  removed bin/tool              -> whiteout .wh.tool in the upper")
        (target / "app" / "notes.txt").write_text("new file\n")
        print("  created app/notes.txt         -> new file in the upper")
        print(f"merged view now:\n{_tree(target)}")

        _step("the upper directory is an OCI layer changeset as it stands")
        print(_tree(upper))
        _step("the lower layers are untouched")
        print(f"{lower2.name}/etc/motd = {(lower2 / 'etc' / 'motd').read_text().strip()!r}")
        print(f"{lower2.name}/bin/tool exists: {(lower2 / 'bin' / 'tool').exists()}")
        _step(f"pyunion umount {target}")
        unmount(str(target))
        mounted = False
        print("unmounted; the daemon has exited")

        if then is not None:
            then(base, _step)
    except (MountError, OSError, RuntimeError, subprocess.SubprocessError) as e:
        print(f"pyunion demo: {e}", file=sys.stderr)
        return 1
    finally:
        if mounted:
            subprocess.run(["fusermount3", "-uz", str(target)], check=False)
        if keep:
            print(f"\n(kept {base})")
        else:
            shutil.rmtree(base, ignore_errors=True)
    return 0
