"""containerd's snapshot service (containerd.services.snapshots.v1.Snapshots) over gRPC.

containerd loads it as a proxy plugin (`[proxy_plugins.pyunion] type = "snapshot"`, plain gRPC
on a Unix socket). Every call is answered by NamespacedSnapshots over the one pyunion store;
errors travel as the gRPC codes containerd's errdefs map back (NotFound, AlreadyExists,
FailedPrecondition, InvalidArgument, Unimplemented), with the message as the one-line reason.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sqlite3
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from datetime import UTC
from pathlib import Path
from typing import TypeVar

import grpc
from google.protobuf import empty_pb2, timestamp_pb2

from snapshotter import errors
from snapshotter.grpcapi import mount_pb2, snapshots_pb2, snapshots_pb2_grpc
from snapshotter.proxy_store import NamespacedSnapshots
from snapshotter.snapshots import Info, Kind, Mount, Snapshotter

NAMESPACE_HEADER = "containerd-namespace"
LIST_BATCH = 100          # containerd's snapshot service streams Info in batches of 100
WORKERS = 16
log = logging.getLogger("pyunion.snapshotter")

KIND_TO_PB = {Kind.VIEW: snapshots_pb2.VIEW, Kind.ACTIVE: snapshots_pb2.ACTIVE,
              Kind.COMMITTED: snapshots_pb2.COMMITTED}
PB_TO_KIND = {v: k for k, v in KIND_TO_PB.items()}

CODES: list[tuple[type[Exception], grpc.StatusCode]] = [
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
]

T = TypeVar("T")


def code_of(exc: BaseException) -> grpc.StatusCode:
    for cls, code in CODES:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.UNKNOWN


def info_to_pb(info: Info) -> snapshots_pb2.Info:
    pb = snapshots_pb2.Info(name=info.name, parent=info.parent, kind=KIND_TO_PB[info.kind],
                            labels=info.labels)
    if info.created:
        pb.created_at.FromDatetime(info.created)
    if info.updated:
        pb.updated_at.FromDatetime(info.updated)
    return pb


def info_from_pb(pb: snapshots_pb2.Info) -> Info:
    def when(ts: timestamp_pb2.Timestamp):
        return ts.ToDatetime(tzinfo=UTC) if ts.seconds or ts.nanos else None
    return Info(PB_TO_KIND.get(pb.kind, Kind.ACTIVE), pb.name, pb.parent, dict(pb.labels),
                when(pb.created_at), when(pb.updated_at))


def mounts_to_pb(mounts: list[Mount]) -> list[mount_pb2.Mount]:
    return [mount_pb2.Mount(type=m.type, source=m.source, options=m.options) for m in mounts]


def namespace_of(context: grpc.ServicerContext) -> str | None:
    for k, v in context.invocation_metadata() or ():
        if k == NAMESPACE_HEADER:
            return v if isinstance(v, str) else v.decode()
    return None


class SnapshotsServicer(snapshots_pb2_grpc.SnapshotsServicer):
    """Translates each RPC to NamespacedSnapshots and its errors to gRPC status codes."""

    def __init__(self, store: NamespacedSnapshots):
        self.store = store

    def _call(self, context: grpc.ServicerContext, what: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except (errors.SnapshotterError, sqlite3.Error, OSError) as e:
            code = code_of(e)
            if code is grpc.StatusCode.UNKNOWN:
                log.warning("%s: %s", what, e)
            context.abort(code, str(e) or type(e).__name__)
            raise AssertionError("unreachable") from None  # abort raises

    def Prepare(self, request, context):
        ns = namespace_of(context)
        mounts = self._call(context, "prepare", lambda: self.store.prepare(
            ns, request.key, request.parent, dict(request.labels)))
        return snapshots_pb2.PrepareSnapshotResponse(mounts=mounts_to_pb(mounts))

    def View(self, request, context):
        ns = namespace_of(context)
        mounts = self._call(context, "view", lambda: self.store.view(
            ns, request.key, request.parent, dict(request.labels)))
        return snapshots_pb2.ViewSnapshotResponse(mounts=mounts_to_pb(mounts))

    def Mounts(self, request, context):
        ns = namespace_of(context)
        mounts = self._call(context, "mounts", lambda: self.store.mounts(ns, request.key))
        return snapshots_pb2.MountsResponse(mounts=mounts_to_pb(mounts))

    def Commit(self, request, context):
        if request.parent:
            context.abort(grpc.StatusCode.UNIMPLEMENTED,
                          "commit onto another parent (rebase) is not supported")
        ns = namespace_of(context)
        self._call(context, "commit", lambda: self.store.commit(
            ns, request.name, request.key, dict(request.labels)))
        return empty_pb2.Empty()

    def Remove(self, request, context):
        ns = namespace_of(context)
        self._call(context, "remove", lambda: self.store.remove(ns, request.key))
        return empty_pb2.Empty()

    def Stat(self, request, context):
        ns = namespace_of(context)
        info = self._call(context, "stat", lambda: self.store.stat(ns, request.key))
        return snapshots_pb2.StatSnapshotResponse(info=info_to_pb(info))

    def Update(self, request, context):
        ns = namespace_of(context)
        paths = tuple(request.update_mask.paths)
        info = self._call(context, "update", lambda: self.store.update(
            ns, info_from_pb(request.info), *paths))
        return snapshots_pb2.UpdateSnapshotResponse(info=info_to_pb(info))

    def List(self, request, context):
        ns = namespace_of(context)
        infos = self._call(context, "list", lambda: list(self.store.walk(ns, *request.filters)))
        for i in range(0, len(infos), LIST_BATCH):
            yield snapshots_pb2.ListSnapshotsResponse(
                info=[info_to_pb(x) for x in infos[i:i + LIST_BATCH]])

    def Usage(self, request, context):
        ns = namespace_of(context)
        u = self._call(context, "usage", lambda: self.store.usage(ns, request.key))
        return snapshots_pb2.UsageResponse(size=u.size, inodes=u.inodes)

    def Cleanup(self, request, context):
        self._call(context, "cleanup", self.store.cleanup)
        return empty_pb2.Empty()


def _socket_alive(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(2)
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


@contextlib.contextmanager
def serving(address: str | Path, root: str | Path, workers: int = WORKERS) -> Iterator[grpc.Server]:
    """Run the service on a Unix socket until the block ends; refuses a socket in use."""
    path = Path(address).absolute()
    if path.exists() or path.is_symlink():
        if _socket_alive(path):
            raise errors.FailedPrecondition(f"{path}: another server is listening there")
        path.unlink()            # left by a server that died
    path.parent.mkdir(parents=True, exist_ok=True)
    sn = Snapshotter(root)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers),
                         options=[("grpc.max_receive_message_length", 16 << 20)])
    snapshots_pb2_grpc.add_SnapshotsServicer_to_server(
        SnapshotsServicer(NamespacedSnapshots(sn)), server)
    old = os.umask(0o077)        # the socket is root's API to the store: nobody else's
    try:
        if server.add_insecure_port(f"unix:{path}") == 0:
            sn.close()
            raise errors.SnapshotterError(f"{path}: cannot listen on this socket")
        server.start()
    finally:
        os.umask(old)
    try:
        yield server
    finally:
        server.stop(grace=5).wait(10)
        sn.close()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def serve_forever(address: str | Path, root: str | Path) -> None:
    """Serve until SIGTERM or SIGINT, then finish the calls under way and remove the socket."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with serving(address, root):
        print(f"pyunion snapshotter: serving {Path(root).absolute()} on {address}",
              flush=True)
        stop.wait()
