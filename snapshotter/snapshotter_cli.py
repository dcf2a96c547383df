"""`pyunion snapshotter serve`: containerd's proxy snapshotter over the pyunion store.

Errors are one line on stderr: exit 2 for bad usage, 1 when the server cannot start.
"""

from __future__ import annotations

import sys
from pathlib import Path

from snapshotter.cli_args import Parser, boundary
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


BOUNDARY = boundary(PROG, usage_hint=f" (see `{PROG} --help`)")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    return BOUNDARY.run(lambda: _main(argv))


def _main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        from snapshotter.grpc_server import serve_forever
    except ImportError as e:
        raise SnapshotterError("needs grpcio and protobuf (pip install 'pyunion[containerd]'):"
                               f" {e}") from None
    serve_forever(args.address, Path(args.root) if args.root else default_root())
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
