"""A CRI client for tests: pulls through containerd's CRI plugin as the kubelet does.

The module is generated from cri_image.proto into a temporary directory at first use
(grpcio-tools, from the test extra), so no generated code for it is committed.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent
_cache: dict[str, ModuleType] = {}


def _modules() -> tuple[ModuleType, ModuleType]:
    if "pb2" not in _cache:
        out = Path(tempfile.mkdtemp(prefix="pyunion-cri-"))
        subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{HERE}",
                        f"--python_out={out}", f"--grpc_python_out={out}", "cri_image.proto"],
                       check=True, timeout=120)
        sys.path.insert(0, str(out))
        try:
            _cache["pb2"] = importlib.import_module("cri_image_pb2")
            _cache["grpc"] = importlib.import_module("cri_image_pb2_grpc")
        finally:
            sys.path.remove(str(out))
    return _cache["pb2"], _cache["grpc"]


def pull_image(containerd_sock: Path, ref: str, timeout: float = 300) -> str:
    """CRI PullImage on containerd's socket; returns the image reference it reports."""
    import grpc
    pb2, pb2_grpc = _modules()
    with grpc.insecure_channel(f"unix:{containerd_sock}") as ch:
        stub = pb2_grpc.ImageServiceStub(ch)
        resp = stub.PullImage(pb2.PullImageRequest(image=pb2.ImageSpec(image=ref)),
                              timeout=timeout)
    return resp.image_ref
