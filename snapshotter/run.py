"""`pyunion run`: image -> snapshot -> union mount -> bundle -> container, then clean up.

    pyunion run [--rm] [--name ID] [--commit NAME] [-e K=V] [-w DIR] [-u USER]
                [--hostname H] [--root DIR] IMAGE [CMD ARGS...]

The container runs in the foreground with our stdio; SIGINT/SIGTERM are forwarded to it and the
exit status is the container's. Whatever happens (program crash, Ctrl-C, an error of ours), the
container is deleted and the snapshot unmounted before this returns; --commit then turns the
snapshot's upper directory into a new image, and --rm removes the snapshot.

A run killed with SIGKILL cleans up nothing: its bundle records the run's pid, so the next run
with that --name says so, and `pyunion rm NAME` removes what is left (rm_main).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

from snapshotter import conversion
from snapshotter.cli_args import FAILURES, UsageError, boundary, check_root
from snapshotter.errors import AlreadyExists, NotFound, SnapshotterError
from snapshotter.runtime import rootless
from snapshotter.runtime.errors import ContainerError
from snapshotter.runtime.lifecycle import Runtime
from snapshotter.runtime.state import proc_start_time
from unionfs.rootpath import read_in_root

USAGE = ("pyunion run [--rm] [--name ID] [--commit NAME] [-e K=V] [-w DIR] [-u USER] "
         "[--hostname H] [--root DIR] IMAGE [CMD ARGS...]")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        raise UsageError(message)


def _parser() -> _Parser:
    p = _Parser(prog="pyunion run", add_help=True, usage=USAGE)
    p.add_argument("--rm", action="store_true", help="remove the snapshot afterwards")
    p.add_argument("--name", help="container ID (default: a random one)")
    p.add_argument("--commit", metavar="NAME", help="save the container's changes as image NAME")
    p.add_argument("-e", "--env", action="append", default=[], metavar="K=V")
    p.add_argument("-w", "--workdir")
    p.add_argument("-u", "--user")
    p.add_argument("--hostname")
    p.add_argument("--root", help="store root (default /var/lib/pyunion; for a user "
                   "~/.local/share/pyunion)")
    p.add_argument("image", nargs="?")
    p.add_argument("cmd", nargs=argparse.REMAINDER).required = False   # optional, unlike argparse's default
    return p


def _expand_env(items: list[str]) -> list[str]:
    """`-e K` takes K from our environment, as docker does."""
    out = []
    for item in items:
        if "=" not in item:
            if item not in os.environ:
                continue
            item = f"{item}={os.environ[item]}"
        out.append(item)
    return out


def _rootless_mount(m: Any, idmaps: tuple[list[dict], list[dict]]) -> Any:
    """The snapshot's union mount with the container's id maps (see rootless.mount_idmap):
    files show their container owners as the host ids the user namespace maps them to."""
    if "pyunion" not in m.type:
        return m
    opts = [o for o in m.options if not o.startswith(("uidmapping=", "gidmapping="))]
    opts += [f"uidmapping={rootless.mount_idmap(idmaps[0], os.geteuid())}",
             f"gidmapping={rootless.mount_idmap(idmaps[1], os.getegid())}"]
    return type(m)(m.type, m.source, opts)


def _terminate(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run(a: argparse.Namespace) -> int:
    from snapshotter.images import IMAGE_LABEL, ImageStore
    from snapshotter.snapshots import default_root, mount_fstype, mount_snapshot, unmount

    root = Path(a.root) if a.root else default_root()
    cid = a.name or secrets.token_hex(6)
    runtime = Runtime(root / "runtime" / "state",
                      warn=lambda m: print(f"pyunion run: warning: {m}", file=sys.stderr))
    bundle = root / "runtime" / "bundles" / cid
    key = f"run-{cid}"
    code = 1
    check_container_name(cid)
    check_root(root)
    if not (root / "images.db").exists():     # a run never creates a store
        raise NotFound(f"image {a.image!r} not found (no image store at {root})")
    with ImageStore(root) as store:
        rec = store.resolve(a.image)
        _claim(bundle, cid)
        try:
            mounts = store.snapshots.prepare(key, rec.top, labels={IMAGE_LABEL: rec.name})
        except AlreadyExists:
            shutil.rmtree(bundle, ignore_errors=True)
            raise SnapshotterError(f"container {cid} already exists (its snapshot {key} was "
                                   f"kept): remove it with `pyunion rm {cid}`") from None
        except BaseException:
            shutil.rmtree(bundle, ignore_errors=True)
            raise
        rootfs = bundle / "rootfs"
        idmaps = rootless.id_mappings() if rootless.is_rootless() else None
        if idmaps is not None:
            mounts = [_rootless_mount(m, idmaps) for m in mounts]
        committed = None
        ran = False  # a snapshot whose container never ran holds nothing worth keeping
        try:
            rootfs.mkdir()
            try:
                mount_snapshot(mounts, rootfs, fork=True)   # one thread: no interpreter start
                config = conversion.convert(
                    rec.config, args=a.cmd or None, env=_expand_env(a.env), cwd=a.workdir,
                    user=a.user, hostname=a.hostname or cid[:12],
                    passwd=read_in_root(rootfs, "/etc/passwd"),
                    group=read_in_root(rootfs, "/etc/group"),
                    annotations=(rec.manifest or {}).get("annotations"), rootless=idmaps)
                if idmaps is not None and config["process"]["user"]["uid"] != 0:
                    # The union mount is this user's FUSE mount: the kernel lets only the
                    # user's own uid (root in the container) through it, not subordinate ids.
                    raise ContainerError(
                        f"user {config['process']['user']['uid']}: a rootless container runs "
                        "as root (uid 0) only, since its union mount is reachable by your "
                        "own uid alone")
                (bundle / "config.json").write_text(json.dumps(config, indent=1))
                code = runtime.run(cid, str(bundle))
                ran = True
            finally:
                unmount(rootfs)  # a no-op if it was never mounted
            if a.commit:
                committed = store.commit(key, a.commit)
        finally:
            if mount_fstype(rootfs) is None:  # never delete through a live mount
                shutil.rmtree(bundle, ignore_errors=True)
                if a.rm or not ran:
                    store.snapshots.remove(key)
                    store.collect_layers()   # its image may have been removed meanwhile
        if committed is not None:
            print(f"committed {committed.name} {committed.manifest_digest}", file=sys.stderr)
        elif ran and not a.rm:
            print(f"pyunion run: snapshot {key} kept (use --rm to remove it)", file=sys.stderr)
    return code


RUN_RECORD = "pyunion-run.json"   # in the bundle: which `pyunion run` process owns it


def check_container_name(cid: str) -> None:
    if not cid or len(cid) > 128 or cid.startswith(".") \
            or not all(c.isalnum() or c in "._-" for c in cid):
        raise UsageError(f"invalid container name {cid!r} (letters, digits, '.', '_', '-')")


def _claim(bundle: Path, cid: str) -> None:
    """Make the bundle directory and record this process as its owner; a bundle already there
    belongs to a live run, or to one that was killed (then `pyunion rm` cleans it up)."""
    bundle.parent.mkdir(parents=True, exist_ok=True)
    try:
        bundle.mkdir()
    except FileExistsError:
        owner = run_owner(bundle)
        if owner is not None:
            raise SnapshotterError(f"container {cid} is running (pyunion run, pid {owner})"
                                   ) from None
        raise SnapshotterError(f"container {cid} already exists, left by a pyunion run that "
                               f"ended without cleaning up: remove it with `pyunion rm {cid}`"
                               ) from None
    (bundle / RUN_RECORD).write_text(json.dumps({"pid": os.getpid(),
                                                 "start": proc_start_time(os.getpid())}))


def run_owner(bundle: Path) -> int | None:
    """The pid of the live `pyunion run` that owns BUNDLE, or None."""
    try:
        rec = json.loads((bundle / RUN_RECORD).read_text())
        pid, start = int(rec["pid"]), rec["start"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return pid if start is not None and proc_start_time(pid) == start else None


def remove_container(root: Path, cid: str, force: bool = False) -> bool:
    """`pyunion rm`: whatever a run of container CID left (its runtime state and processes, the
    union mount on its rootfs, the bundle, the run-CID snapshot); False if there was nothing."""
    from snapshotter.snapshots import Snapshotter, mount_fstype, unmount
    check_container_name(cid)
    bundle = root / "runtime" / "bundles" / cid
    runtime = Runtime(root / "runtime" / "state",
                      warn=lambda m: print(f"pyunion rm: warning: {m}", file=sys.stderr))
    owner = run_owner(bundle)
    if owner is not None:
        if not force:
            raise SnapshotterError(f"container {cid} is running (pyunion run, pid {owner}): "
                                   "stop it, or use `pyunion rm -f`")
        with contextlib.suppress(ContainerError):
            runtime.kill(cid, "KILL", all_=True)   # its pyunion run then cleans up and exits
        deadline = time.monotonic() + RM_WAIT_S
        while run_owner(bundle) is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        if run_owner(bundle) is not None:
            raise SnapshotterError(f"pyunion run (pid {owner}) of container {cid} did not end "
                                   f"within {RM_WAIT_S:.0f}s")
    found = False
    if cid in runtime.sd.ids():
        found = True
        runtime.delete(cid, force=True)
    rootfs = bundle / "rootfs"
    if mount_fstype(rootfs) is not None:
        found = True
        unmount(rootfs)
    if bundle.exists():
        found = True
        shutil.rmtree(bundle)
    if (root / "metadata.db").exists():
        with Snapshotter(root) as sn:
            try:
                sn.remove(f"run-{cid}")
                found = True
            except NotFound:
                pass
    return found


RM_WAIT_S = 30.0
RM_USAGE = "pyunion rm [-f] [--root DIR] NAME..."


def rm_main(argv: list[str]) -> int:
    """`pyunion rm [-f] NAME...`: remove containers of `pyunion run` (docker rm's shape)."""
    p = _Parser(prog="pyunion rm", usage=RM_USAGE)
    p.add_argument("-f", "--force", action="store_true", help="also a running container")
    p.add_argument("--root", help="store root")
    p.add_argument("names", nargs="+")
    return RM_BOUNDARY.run(lambda: _rm(p.parse_args(argv)))


def _rm(a: argparse.Namespace) -> int:
    from snapshotter.snapshots import default_root
    root = Path(a.root) if a.root else default_root()
    for cid in a.names:
        if not remove_container(root, cid, a.force):
            raise NotFound(f"no container {cid}")
        print(cid)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    old = signal.signal(signal.SIGTERM, _terminate)  # clean up on TERM outside the container
    try:
        return RUN_BOUNDARY.run(lambda: _run_main(argv))
    finally:
        signal.signal(signal.SIGTERM, old)


def _run_main(argv: list[str]) -> int:
    a = _parser().parse_args(argv)
    if a.image is None:
        raise UsageError("an IMAGE is required")
    return run(a)


# `pyunion run` fails as docker run does: 125 for an error of its own (1 may be the container's)
RUN_BOUNDARY = boundary("pyunion run", failures=(*FAILURES, ContainerError),
                        usage_hint=f" (usage: {USAGE})", failure_status=125)
RM_BOUNDARY = boundary("pyunion rm", failures=(*FAILURES, ContainerError),
                       usage_hint=f" (usage: {RM_USAGE})")


if __name__ == "__main__":
    sys.exit(main())
