"""`pyunion snapshotter serve`: containerd's proxy snapshotter over the pyunion store.

Errors are one line on stderr: exit 2 for bad usage, 1 when the server cannot start.
"""

from __future__ import annotations

import sys
from pathlib import Path

from snapshotter.cli_args import Parser, UsageError
from snapshotter.errors import SnapshotterError
from snapshotter.snapshots import default_root

PROG = "pyunion snapshotter"


def _parser() -> Parser:
    p = Parser(prog=PROG, description="containerd's snapshot service (a proxy plugin) over"
               " pyunion's store.")
    sub = p.add_subparsers(dest="verb", required=True, parser_class=Parser)
    sp = sub.add_parser("serve", help="serve containerd.services.snapshots.v1 on a Unix socket")
    sp.add_argument("--address", required=True, metavar="SOCKET",
                    help="Unix socket to listen on (config.toml: proxy_plugins.NAME.address)")
    sp.add_argument("--root", default=None,
                    help=f"store root, shared with `pyunion image` (default {default_root()})")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = _parser().parse_args(argv)
    except UsageError as e:
        print(f"{PROG}: {e} (see `{PROG} --help`)", file=sys.stderr)
        return 2
    try:
        from snapshotter.grpc_server import serve_forever
    except ImportError as e:
        print(f"{PROG}: needs grpcio and protobuf (pip install 'pyunion[containerd]'): {e}",
              file=sys.stderr)
        return 1
    try:
        serve_forever(args.address, Path(args.root) if args.root else default_root())
    except SnapshotterError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"{PROG}: {e.strerror or e}{f': {e.filename}' if e.filename else ''}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
