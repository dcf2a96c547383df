"""Progress of long image work (layers and bytes) on a terminal; silent when not a terminal, so
scripts and pipes get clean output."""

from __future__ import annotations

import sys
import time
from typing import TextIO

REFRESH_S = 0.2


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


class Progress:
    """One status line rewritten in place: `<phase> layer i/n  done/total  rate`."""

    def __init__(self, stream: TextIO | None = None, enabled: bool | None = None,
                 refresh: float = REFRESH_S):
        self.stream = stream or sys.stderr
        self.refresh = refresh
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.phase = ""
        self.layer = 0
        self.layers = 0
        self.done = 0
        self.total = 0
        self._start = time.monotonic()
        self._last = 0.0
        self._shown = False

    def start(self, phase: str, layers: int, total_bytes: int) -> None:
        self.phase, self.layers, self.total, self.layer, self.done = phase, layers, total_bytes, 0, 0
        self._start = time.monotonic()
        self._draw(force=True)

    def next_layer(self) -> None:
        self.layer += 1
        self._draw(force=True)

    def add(self, n: int) -> None:
        self.done += n
        self._draw()

    def line(self) -> str:
        rate = self.done / max(time.monotonic() - self._start, 1e-6)
        total = f"/{human(self.total)}" if self.total else ""
        return (f"{self.phase} layer {self.layer}/{self.layers}  {human(self.done)}{total}  "
                f"{human(rate)}/s")

    def _draw(self, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < self.refresh:
            return
        self._last = now
        self.stream.write("\r\x1b[K" + self.line())
        self.stream.flush()
        self._shown = True

    def finish(self) -> None:
        if self.enabled and self._shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._shown = False
