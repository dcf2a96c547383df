"""Pure statistics over raw timings: medians with ranges, and paired per-repetition ratios.

Ratios are speeds relative to a reference: ref_time / impl_time of the same repetition (the
reference and the implementation ran back to back, so shared-machine drift cancels).
1.0 = as fast as the reference, 0.5 = half as fast, 2.0 = twice as fast.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Summary:
    median: float
    low: float
    high: float
    n: int

    def as_dict(self) -> dict:
        return {"median": self.median, "min": self.low, "max": self.high, "n": self.n}


def summarize(samples: Sequence[float | None]) -> Summary | None:
    """Median and min-max of the repetitions that produced a time (failed ones are None)."""
    vals = [s for s in samples if s is not None]
    if not vals:
        return None
    return Summary(statistics.median(vals), min(vals), max(vals), len(vals))


def paired_speed(impl: Sequence[float | None], ref: Sequence[float | None]) -> Summary | None:
    """Speed of impl relative to ref, one ratio per repetition where both have a positive time."""
    ratios = [
        r / i for i, r in zip(impl, ref, strict=False) if i is not None and r is not None and i > 0 and r > 0
    ]
    return summarize(ratios)


def rate(amount: float, seconds: float) -> float:
    return amount / seconds if seconds > 0 else float("inf")


@dataclass(frozen=True)
class Target:
    """A speed target of issue 5, as a minimum speed of pyunion relative to a reference."""

    workload: str
    reference: str
    min_speed: float
    text: str
    strict: bool = False  # "faster than" (>) rather than "or better" (>=)

    def met(self, speed: float) -> bool:
        return speed > self.min_speed if self.strict else speed >= self.min_speed


TARGETS = [
    Target("seq-read-warm", "native", 0.9, "warm re-read of a large file at 0.9x native or better"),
    Target(
        "walk-warm", "kernel-overlay", 0.5, "warm walk + lstat at 0.5x kernel overlayfs or better"
    ),
    Target("walk-cold", "fuse-overlayfs", 0.5, "cold walk at 0.5x fuse-overlayfs or better"),
    Target(
        "create",
        "fuse-overlayfs",
        1.0,
        "create+write of new files faster than fuse-overlayfs",
        strict=True,
    ),
    Target(
        "unlink",
        "fuse-overlayfs",
        1.0,
        "unlink of lower files faster than fuse-overlayfs",
        strict=True,
    ),
    Target("copy-up", "kernel-overlay", 1 / 1.2, "copy-up within 1.2x of kernel overlayfs's time"),
    Target(
        "seq-write",
        "fuse-overlayfs",
        0.5,
        "sequential write of a new file at 0.5x fuse-overlayfs or better",
    ),
]


def evaluate_targets(
    times: dict[str, dict[str, list[float | None]]], subject: str = "pyunion"
) -> list[dict]:
    """times[workload][impl] = per-rep seconds. One row per target: paired speed, verdict."""
    rows = []
    for t in TARGETS:
        per_impl = times.get(t.workload, {})
        s = None
        if subject in per_impl and t.reference in per_impl:
            s = paired_speed(per_impl[subject], per_impl[t.reference])
        rows.append(
            {
                "target": t.text,
                "workload": t.workload,
                "reference": t.reference,
                "min_speed": t.min_speed,
                "speed": s.as_dict() if s else None,
                "met": (t.met(s.median) if s else None),
            }
        )
    return rows
