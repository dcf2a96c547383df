"""The one error type of the runtime; str(e) is the message runc prints for the same case."""

from __future__ import annotations


class ContainerError(Exception):
    """A runtime operation failed; the message is matched by callers (containerd's shim)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code
