"""`pyunion snapshot ...`: the snapshot store on the command line (the shape of `ctr snapshots`).

Errors are one line on stderr with a non-zero exit: 1 for a refused operation, 2 for bad usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from snapshotter.cli_args import Parser as _Parser
from snapshotter.cli_args import UsageError, boundary, check_root, describe, split_root
from snapshotter.errors import FailedPrecondition, NotFound, SnapshotterError
from snapshotter.snapshots import (
    Info,
    Mount,
    Snapshotter,
    default_root,
    mount_fstype,
    mount_snapshot,
    store_owns_mount,
    unmount,
)

PROG = "pyunion snapshot"


def parse_labels(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        k, eq, v = item.partition("=")
        if not eq or not k:
            raise UsageError(f"label {item!r} is not KEY=VALUE")
        out[k] = v
    return out


def _parser() -> _Parser:
    p = _Parser(prog=PROG, description="Manage the snapshot store (containerd semantics).")
    p.add_argument("--root", help=f"store root (default {default_root()})")
    sub = p.add_subparsers(dest="verb", required=True, parser_class=_Parser)

    def fmt(sp: argparse.ArgumentParser, choices=("table", "json")) -> None:
        sp.add_argument("--format", choices=choices, default=choices[0])

    for verb, helptext in (("prepare", "create an active (writable) snapshot"),
                           ("view", "create a read-only view of a committed snapshot")):
        sp = sub.add_parser(verb, help=helptext)
        sp.add_argument("key")
        sp.add_argument("parent", nargs="?", default="")
        sp.add_argument("--label", action="append", default=[], metavar="K=V")
        sp.add_argument("--mounts", action="store_true", help="print the mount commands")
        fmt(sp, ("text", "json"))
    sp = sub.add_parser("commit", help="commit active snapshot KEY as NAME")
    sp.add_argument("name")
    sp.add_argument("key")
    sp.add_argument("--label", action="append", default=[], metavar="K=V")
    sp = sub.add_parser("rm", aliases=["remove"], help="remove snapshots (not while they have"
                        " children)")
    sp.add_argument("keys", nargs="+")
    sp = sub.add_parser("info", help="show a snapshot's metadata as JSON")
    sp.add_argument("key")
    fmt(sp, ("json",))
    sp = sub.add_parser("ls", aliases=["list"], help="list snapshots")
    sp.add_argument("--filter", action="append", default=[],
                    help="containerd filter, e.g. kind==active,labels.x; repeat to OR")
    fmt(sp)
    sp = sub.add_parser("usage", help="disk usage of snapshots (each without its parents)")
    sp.add_argument("keys", nargs="*")
    fmt(sp)
    sp = sub.add_parser("mounts", help="what to mount for an active snapshot or view")
    sp.add_argument("key")
    sp.add_argument("target", nargs="?", default="TARGET")
    fmt(sp, ("text", "json"))
    sp = sub.add_parser("label", help="set (K=V) or delete (K=) labels; no pairs: show them")
    sp.add_argument("key")
    sp.add_argument("labels", nargs="*", metavar="K=V")
    fmt(sp, ("text", "json"))
    sub.add_parser("cleanup", help="remove directories left by crashes and removals")
    sp = sub.add_parser("mount", help="mount a snapshot through pyunion (or bind)")
    sp.add_argument("key")
    sp.add_argument("target")
    sp = sub.add_parser("umount", aliases=["unmount"], help="unmount a snapshot mount")
    sp.add_argument("target")
    return p


def info_dict(info: Info) -> dict:
    return {"kind": info.kind.value, "name": info.name, "parent": info.parent,
            "labels": info.labels,
            "created": info.created.isoformat() if info.created else None,
            "updated": info.updated.isoformat() if info.updated else None}


def mount_command(m: Mount, target: str) -> str:
    return f"mount -t {m.type} {m.source} {target} -o {','.join(m.options)}"


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _table(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip())


def _emit_labels(labels: dict[str, str], fmt: str) -> None:
    if fmt == "json":
        print(json.dumps(labels, indent=2, sort_keys=True))
    else:
        for k in sorted(labels):
            print(f"{k}={labels[k]}")


def run(args: argparse.Namespace, root: Path) -> int:
    check_root(root)
    verb = args.verb
    if verb in ("umount", "unmount"):
        target = Path(args.target)
        if mount_fstype(target) is None:
            raise FailedPrecondition(f"nothing is mounted on {target}")
        if not store_owns_mount(root, target):
            raise FailedPrecondition(f"{target} is not a mount of the snapshot store at {root}")
        unmount(target)
        return 0
    if verb not in ("prepare", "view") and not (root / "metadata.db").exists():
        return _no_store(args, root)  # never create a store just to look into it
    with Snapshotter(root) as sn:
        if verb in ("prepare", "view"):
            labels = parse_labels(args.label)
            create = sn.prepare if verb == "prepare" else sn.view
            mounts = create(args.key, args.parent, labels)
            if args.format == "json":
                print(json.dumps({"key": args.key, "mounts": [m.to_dict() for m in mounts]}))
            elif args.mounts:
                for m in mounts:
                    print(mount_command(m, "TARGET"))
        elif verb == "commit":
            sn.commit(args.name, args.key, parse_labels(args.label))
        elif verb in ("rm", "remove"):
            for key in args.keys:
                sn.remove(key)
        elif verb == "info":
            print(json.dumps(info_dict(sn.stat(args.key)), indent=2))
        elif verb in ("ls", "list"):
            infos = list(sn.walk(*args.filter))
            if args.format == "json":
                print(json.dumps([info_dict(i) for i in infos], indent=2))
            else:
                _table([["KEY", "PARENT", "KIND"]]
                       + [[i.name, i.parent, i.kind.value] for i in infos])
        elif verb == "usage":
            keys = args.keys or [i.name for i in sn.walk()]
            usages = [(k, sn.usage(k)) for k in keys]
            if args.format == "json":
                print(json.dumps([{"key": k, "size": u.size, "inodes": u.inodes}
                                  for k, u in usages], indent=2))
            else:
                _table([["KEY", "SIZE", "INODES"]]
                       + [[k, human_size(u.size), str(u.inodes)] for k, u in usages])
        elif verb == "mounts":
            mounts = sn.mounts(args.key)
            if args.format == "json":
                print(json.dumps([m.to_dict() for m in mounts], indent=2))
            else:
                for m in mounts:
                    print(mount_command(m, args.target))
        elif verb == "label":
            labels = parse_labels(args.labels)
            info = sn.stat(args.key)
            if labels:
                info.labels = labels
                info = sn.update(info, *[f"labels.{k}" for k in labels])
            _emit_labels(info.labels, args.format)
        elif verb == "cleanup":
            sn.cleanup()
            if (root / "images.db").exists():   # layers of removed images nothing uses now
                from snapshotter.images import ImageStore
                with ImageStore(root) as store:
                    store.collect_layers()
        elif verb == "mount":
            mount_snapshot(sn.mounts(args.key), Path(args.target))
    return 0


def _no_store(args: argparse.Namespace, root: Path) -> int:
    """Listing a store that does not exist shows nothing; anything else is not found."""
    if args.verb == "cleanup":
        return 0
    if args.verb in ("ls", "list") or (args.verb == "usage" and not args.keys):
        if args.format == "json":
            print("[]")
        else:
            print("KEY  PARENT  KIND" if args.verb != "usage" else "KEY  SIZE  INODES")
        return 0
    raise NotFound(f"no snapshot store at {root}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    return BOUNDARY.run(lambda: _main(argv))


def _main(argv: list[str]) -> int:
    root, rest = split_root(argv)
    args = _parser().parse_args(rest)
    if root is None:
        root = args.root
    return run(args, Path(root) if root else default_root())


def _kind(e: SnapshotterError) -> str:
    """containerd-style error class names: 'not found', 'already exists', ..."""
    name = type(e).__name__
    return {"NotFound": "not found", "AlreadyExists": "already exists",
            "InvalidArgument": "invalid argument",
            "FailedPrecondition": "failed precondition"}.get(name, name)


def _describe(e: BaseException) -> str:
    """A store refusal names its kind, as ctr does ("not found: snapshot 'x' does not exist")."""
    if isinstance(e, SnapshotterError) and type(e) is not SnapshotterError:
        return f"{_kind(e)}: {describe(e)}"
    return describe(e)


BOUNDARY = boundary(PROG, usage_hint=f" (see `{PROG} --help`)", describe=_describe)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

