"""A client of containerd's snapshot service with the Snapshotter's own interface.

What containerd's proxy snapshotter does, in Python: it lets the same test suite run against
the local store and against `pyunion snapshotter serve`, and lets scripts talk to a server.
gRPC status codes come back as the store's error classes (containerd's errdefs mapping).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Self

import grpc
from google.protobuf import field_mask_pb2

from snapshotter import errors
from snapshotter.grpc_server import NAMESPACE_HEADER, info_from_pb, info_to_pb
from snapshotter.grpcapi import snapshots_pb2, snapshots_pb2_grpc
from snapshotter.snapshots import Info, Mount, Usage

ERRORS = {
    grpc.StatusCode.NOT_FOUND: errors.NotFound,
    grpc.StatusCode.ALREADY_EXISTS: errors.AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: errors.FailedPrecondition,
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgument,
}
TIMEOUT_S = 120.0


class Unimplemented(errors.SnapshotterError):
    """The server does not implement the call."""


def _error(e: grpc.RpcError) -> errors.SnapshotterError:
    code = e.code()
    if code is grpc.StatusCode.UNIMPLEMENTED:
        return Unimplemented(e.details() or "unimplemented")
    return ERRORS.get(code, errors.SnapshotterError)(e.details() or str(code))


class SnapshotsClient:
    """containerd's Snapshotter interface over gRPC, in one namespace (None sends none)."""

    def __init__(self, address: str | Path, namespace: str | None = "default",
                 snapshotter: str = "pyunion"):
        self._channel = grpc.insecure_channel(f"unix:{Path(address).absolute()}")
        self._stub = snapshots_pb2_grpc.SnapshotsStub(self._channel)
        self._md = ((NAMESPACE_HEADER, namespace),) if namespace else ()
        self._name = snapshotter
        self._closed = False

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _rpc(self, method: str, request):
        try:
            return getattr(self._stub, method)(request, metadata=self._md, timeout=TIMEOUT_S)
        except grpc.RpcError as e:
            raise _error(e) from None

    @staticmethod
    def _mounts(pb) -> list[Mount]:
        return [Mount(m.type, m.source, list(m.options)) for m in pb]

    def stat(self, key: str) -> Info:
        return info_from_pb(self._rpc("Stat", snapshots_pb2.StatSnapshotRequest(
            snapshotter=self._name, key=key)).info)

    def update(self, info: Info, *fieldpaths: str) -> Info:
        req = snapshots_pb2.UpdateSnapshotRequest(
            snapshotter=self._name, info=info_to_pb(info),
            update_mask=field_mask_pb2.FieldMask(paths=list(fieldpaths)))
        return info_from_pb(self._rpc("Update", req).info)

    def usage(self, key: str) -> Usage:
        r = self._rpc("Usage", snapshots_pb2.UsageRequest(snapshotter=self._name, key=key))
        return Usage(r.size, r.inodes)

    def mounts(self, key: str) -> list[Mount]:
        return self._mounts(self._rpc("Mounts", snapshots_pb2.MountsRequest(
            snapshotter=self._name, key=key)).mounts)

    def prepare(self, key: str, parent: str = "", labels: dict | None = None) -> list[Mount]:
        return self._mounts(self._rpc("Prepare", snapshots_pb2.PrepareSnapshotRequest(
            snapshotter=self._name, key=key, parent=parent, labels=labels or {})).mounts)

    def view(self, key: str, parent: str = "", labels: dict | None = None) -> list[Mount]:
        return self._mounts(self._rpc("View", snapshots_pb2.ViewSnapshotRequest(
            snapshotter=self._name, key=key, parent=parent, labels=labels or {})).mounts)

    def commit(self, name: str, key: str, labels: dict | None = None) -> None:
        self._rpc("Commit", snapshots_pb2.CommitSnapshotRequest(
            snapshotter=self._name, name=name, key=key, labels=labels or {}))

    def remove(self, key: str) -> None:
        self._rpc("Remove", snapshots_pb2.RemoveSnapshotRequest(snapshotter=self._name, key=key))

    def walk(self, *filters: str) -> Iterator[Info]:
        req = snapshots_pb2.ListSnapshotsRequest(snapshotter=self._name, filters=list(filters))
        try:
            infos = [info_from_pb(i) for batch in self._stub.List(
                req, metadata=self._md, timeout=TIMEOUT_S) for i in batch.info]
        except grpc.RpcError as e:
            raise _error(e) from None
        yield from infos     # read whole first: the caller may call back in while iterating

    def cleanup(self) -> None:
        self._rpc("Cleanup", snapshots_pb2.CleanupRequest(snapshotter=self._name))

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._channel.close()
