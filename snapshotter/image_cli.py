"""`pyunion image ...`: import, list, inspect, remove, export and commit images.

Errors are one line on stderr with a non-zero exit: 1 for a refused operation, 2 for bad usage.
Entries of a layer that the applier neutralised or skipped are reported as warnings on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from snapshotter import image_readers as ir
from snapshotter.cli_args import Parser as _Parser
from snapshotter.cli_args import UsageError, boundary, check_root, split_root
from snapshotter.errors import NotFound, SnapshotterError
from snapshotter.images import ImageRecord, ImageStore, check_name
from snapshotter.progress import Progress, human
from snapshotter.store_paths import default_store_root

PROG = "pyunion image"


def _parser() -> _Parser:
    p = _Parser(prog=PROG, description="Manage images: OCI layouts and docker save archives.")
    sub = p.add_subparsers(dest="verb", required=True, parser_class=_Parser)
    sp = sub.add_parser("import", help="import an OCI layout (dir or tar) or docker save archive")
    sp.add_argument("path")
    sp.add_argument("--name", help="store the image under this name")
    sp.add_argument("--platform", help="OS/ARCH[/VARIANT] to pick (default: this host's)")
    sp.add_argument("--ref", help="which image of a layout/archive holding several (ref or tag)")
    sp = sub.add_parser("ls", aliases=["list"], help="list images")
    sp.add_argument("--format", choices=("table", "json"), default="table")
    sp.add_argument("-q", "--quiet", action="store_true", help="names only")
    sp = sub.add_parser("inspect", help="manifest, config and layers of an image, as JSON")
    sp.add_argument("name")
    sp = sub.add_parser("rm", aliases=["remove"], help="remove images (shared layers stay)")
    sp.add_argument("names", nargs="+")
    sp = sub.add_parser("export", help="write an image as an OCI layout or docker archive")
    sp.add_argument("name")
    sp.add_argument("path", help="directory, or a .tar file (docker-archive: always a tar)")
    sp.add_argument("--format", choices=("oci", "docker-archive"), default="oci")
    sp = sub.add_parser("commit", help="turn an active snapshot's changes into a new image")
    sp.add_argument("key")
    sp.add_argument("name")
    sp.add_argument("-m", "--message", help="history comment of the new layer")
    sp.add_argument("--compression", choices=("gzip", "none"), default="gzip",
                    help="layer compression (default gzip)")
    return p


def inspect_data(store: ImageStore, rec: ImageRecord) -> dict:
    layers = []
    for i, desc in enumerate(rec.layers):
        try:
            usage = store.snapshots.usage(rec.chain_ids[i])
            unpacked: dict = {"unpacked_size": usage.size, "unpacked_inodes": usage.inodes}
        except SnapshotterError:
            unpacked = {"unpacked_size": None, "unpacked_inodes": None}
        layers.append({"index": i, "digest": desc["digest"], "mediaType": desc["mediaType"],
                       "size": desc["size"], "diff_id": rec.diff_ids[i],
                       "chain_id": rec.chain_ids[i], **unpacked})
    return {"name": rec.name, "created": rec.created, "manifest_digest": rec.manifest_digest,
            "config_digest": rec.config_digest, "size": sum(x["size"] for x in layers),
            "layers": layers, "manifest": rec.manifest, "config": rec.config}


def run(args: argparse.Namespace, root: Path) -> int:
    check_root(root)
    if not (root / "images.db").exists():
        if args.verb != "import":
            return _no_store(args, root)   # never create a store just to look into it
        if args.name is not None:
            check_name(args.name)
        with ir.open_source(args.path) as src:   # what is no image makes no store either
            ir.read_image(src, args.platform, args.ref)
    progress = Progress()
    with ImageStore(root, progress=progress) as store:
        v = args.verb
        if v == "import":
            rec = store.import_path(args.path, args.name, args.platform, ref=args.ref)
            for n in store.notes:
                print(f"{PROG}: warning: {n}", file=sys.stderr)
            print(f"imported {rec.name} {rec.manifest_digest}")
        elif v in ("ls", "list"):
            recs = store.list()
            if args.quiet:
                for r in recs:
                    print(r.name)
            elif args.format == "json":
                print(json.dumps([{"name": r.name, "manifest_digest": r.manifest_digest,
                                   "config_digest": r.config_digest, "layers": len(r.layers),
                                   "size": sum(d["size"] for d in r.layers),
                                   "created": r.created} for r in recs], indent=2))
            else:
                rows = [("NAME", "MANIFEST", "LAYERS", "SIZE", "CREATED")]
                rows += [(r.name, r.manifest_digest[:19], str(len(r.layers)),
                          human(sum(d["size"] for d in r.layers)), r.created[:19])
                         for r in recs]
                widths = [max(len(row[i]) for row in rows) for i in range(5)]
                for row in rows:
                    print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        elif v == "inspect":
            print(json.dumps(inspect_data(store, store.resolve(args.name)), indent=2))
        elif v in ("rm", "remove"):
            for n in args.names:
                store.remove(n)
                print(n)
        elif v == "export":
            store.export(args.name, args.path, args.format)
        elif v == "commit":
            rec = store.commit(args.key, args.name, args.message,
                               compression=args.compression)
            print(f"committed {rec.name} {rec.manifest_digest}")
    return 0


def _no_store(args: argparse.Namespace, root: Path) -> int:
    if args.verb in ("ls", "list"):
        if args.format == "json" and not args.quiet:
            print("[]")
        elif not args.quiet:
            print("NAME  MANIFEST  LAYERS  SIZE  CREATED")
        return 0
    what = {"inspect": args.__dict__.get("name"), "export": args.__dict__.get("name"),
            "rm": (args.__dict__.get("names") or [None])[0],
            "remove": (args.__dict__.get("names") or [None])[0]}.get(args.verb)
    if what is not None:
        raise NotFound(f"image {what!r} not found (no image store at {root})")
    if args.verb == "commit":
        raise NotFound(f"snapshot {args.key!r} does not exist (no image store at {root})")
    raise NotFound(f"no image store at {root}")


BOUNDARY = boundary(PROG, usage_label="usage error: ", failure_label="error: ")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    return BOUNDARY.run(lambda: _main(argv))


def _main(argv: list[str]) -> int:
    root, rest = split_root(argv)
    if not rest:
        raise UsageError("a verb is required (import, ls, inspect, rm, export, commit)")
    if rest[0] in ("-h", "--help"):
        _parser().print_help()
        return 0
    args = _parser().parse_args(rest)
    return run(args, Path(root) if root else default_store_root())
