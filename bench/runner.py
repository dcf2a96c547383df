"""Runs the workloads interleaved across implementations and collects raw timings.

Order: for each workload, for each repetition, every implementation once (A B C D, A B C D, ...),
so that drift on a shared machine hits all of them alike and the per-repetition ratios pair
measurements taken seconds apart. Every measurement gets a fresh upper, workdir and mount;
every mount is released in a `finally`, lazily if need be.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bench import layers, mounts, ops
from bench.impls import Impl, Layout, MountError
from bench.plan import COPYUP_FILE, SEQ_FILE, Plan, merged
from bench.workloads import CREATE_DIR, NEW_FILE, Ctx, Workload

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class OpError(RuntimeError):
    pass


def drop_caches() -> bool:
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3")
        return True
    except OSError:
        return False


def run_op(op: str, args: dict, timeout: float, target: str) -> tuple[float, int]:
    """One timed operation, in this process; raises OpError with a one-line reason.

    A watchdog aborts TARGET's FUSE connection if the operation outlives `timeout`, so a hung
    daemon turns into an error (ENOTCONN) instead of a hung harness.
    """
    fired = threading.Event()

    def cut() -> None:
        fired.set()
        mounts.abort_fuse(target)

    timer = threading.Timer(timeout, cut)
    timer.daemon = True
    timer.start()
    try:
        seconds, check = ops.OPS[op](**args)
    except (OSError, subprocess.SubprocessError, ValueError) as e:
        if fired.is_set():
            raise OpError(f"{op} timed out after {timeout:.0f}s (FUSE connection aborted)") from e
        raise OpError(f"{op}: {type(e).__name__}: {e}"[:300]) from e
    finally:
        timer.cancel()
    return seconds, check


def prewarm(dirs: list[str]) -> None:
    """Read every file of the layers so that `fresh` workloads start from a warm page cache."""
    buf = bytearray(1 << 20)
    for d in dirs:
        for root, _, files in os.walk(d):
            for name in files:
                p = os.path.join(root, name)
                try:
                    with open(p, "rb", buffering=0) as f:
                        while f.readinto(buf):
                            pass
                except OSError:
                    pass


def _fresh_dir(path: str) -> None:
    if os.path.lexists(path):
        shutil.rmtree(path)
    os.makedirs(path)


@dataclass
class Cell:
    """Raw results of one (workload, implementation)."""

    times: list[float | None] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped: str = ""

    def as_dict(self) -> dict:
        return {
            "times": self.times,
            "errors": self.errors,
            "notes": self.notes,
            "skipped": self.skipped,
        }


@dataclass
class Env:
    """Everything a measurement needs: the plan, the built data and scratch space."""

    plan: Plan
    data: dict[str, str]
    scratch: str
    unlink_list: str
    op_timeout: float = 300.0
    log: Callable[[str], None] = print

    def lowers(self, impl: Impl) -> tuple[str, ...]:
        return (self.data[f"top-{impl.dialect}"], self.data["base"])

    def layout(self, impl: Impl) -> Layout:
        if not impl.mounts:
            return Layout((), "", "", self.data["native"])
        base = os.path.join(self.scratch, impl.name)
        return Layout(
            self.lowers(impl),
            os.path.join(base, "upper"),
            os.path.join(base, "work"),
            os.path.join(base, "mnt"),
        )

    def reset(self, lay: Layout) -> None:
        if lay.upper:
            for d in (lay.upper, lay.work):
                _fresh_dir(d)
            os.makedirs(lay.target, exist_ok=True)

    def restore_native(self, wl: Workload) -> None:
        """Undo what a mutating workload did to the native tree (unions just drop their upper)."""
        root = self.data["native"]
        if wl.name == "create":
            shutil.rmtree(os.path.join(root, CREATE_DIR), ignore_errors=True)
        elif wl.name == "seq-write":
            if os.path.exists(os.path.join(root, NEW_FILE)):
                os.unlink(os.path.join(root, NEW_FILE))
        elif wl.name == "unlink":
            top = next((v for k, v in self.data.items() if k.startswith("top-")), None)
            for p in self.plan.unlink_targets:
                if not os.path.lexists(os.path.join(root, p)):
                    layers.restore_native_file(root, self.plan, p, self.data["base"], top)


def measure(env: Env, impl: Impl, wl: Workload) -> tuple[float, int]:
    """One measurement: fresh upper, mount, cache state, the timed op, unmount (always)."""
    phases = Phases()
    lay = env.layout(impl)
    env.reset(lay)
    ctx = Ctx(lay.target, env.unlink_list, tuple(impl.mount_argv(lay)) if impl.mounts else ())
    phases.mark("reset")
    try:
        if wl.op == "mount_usable":
            mounts.register(lay.target, impl.unmount_argv(lay.target))
            return run_op(wl.op, wl.args(env.plan, ctx), env.op_timeout, lay.target)
        impl.mount(lay)
        phases.mark("mount")
        if wl.state == "cold":
            drop_caches()
        elif wl.state == "warm":
            run_op(wl.op, wl.args(env.plan, ctx), env.op_timeout, lay.target)
        phases.mark(wl.state)
        return run_op(wl.op, wl.args(env.plan, ctx), env.op_timeout, lay.target)
    finally:
        phases.mark("op")
        problem = impl.unmount(lay.target)
        if problem:
            env.log(f"  note: {impl.name}: unmount: {problem}")
        phases.mark("unmount")
        if not impl.mounts and wl.mutates:
            env.restore_native(wl)
        if lay.upper:
            shutil.rmtree(lay.upper, ignore_errors=True)
            shutil.rmtree(lay.work, ignore_errors=True)
        if wl.mutates:
            os.sync()  # so that this run's writeback does not land in the next measurement
        phases.mark("cleanup")
        if os.environ.get("BENCH_DEBUG"):
            env.log(f"  [{wl.name} {impl.name}] {phases}")


class Phases:
    """Where a measurement's wall time went (BENCH_DEBUG=1 prints it): finding overhead."""

    def __init__(self) -> None:
        self.t = time.monotonic()
        self.parts: list[tuple[str, float]] = []

    def mark(self, name: str) -> None:
        now = time.monotonic()
        self.parts.append((name, now - self.t))
        self.t = now

    def __str__(self) -> str:
        return " ".join(f"{n}={s:.2f}" for n, s in self.parts)


def probe(env: Env, impl: Impl, info: dict) -> str | None:
    """Mount once and check the merged tree shows the plan's overrides and whiteouts.

    Returns None if fine, else a one-line reason (mount failures make the caller skip `impl`).
    Records the mount as the kernel shows it in info["mounted_as"].
    """
    lay = env.layout(impl)
    env.reset(lay)
    try:
        impl.mount(lay)
    except MountError as e:
        return str(e)
    try:
        info["mounted_as"] = mounts.describe(lay.target, {os.path.dirname(env.scratch): "$WORK"})
        tree = merged(env.plan)
        wrong = []
        for p in sorted(env.plan.top.whiteouts | env.plan.top.opaque)[:50]:
            present = os.path.lexists(os.path.join(lay.target, p))
            if present != (p in tree):
                wrong.append(f"{p} {'shown' if present else 'missing'}")
        for p in (SEQ_FILE, COPYUP_FILE):
            if not os.path.isfile(os.path.join(lay.target, p)):
                wrong.append(f"{p} missing")
        return ("wrong merged tree: " + ", ".join(wrong[:3])) if wrong else None
    finally:
        impl.unmount(lay.target)
        if lay.upper:
            shutil.rmtree(lay.upper, ignore_errors=True)
            shutil.rmtree(lay.work, ignore_errors=True)


def interleaved(names: list[str], reps: int) -> list[tuple[int, str]]:
    """(repetition, implementation) in run order: A B C D, A B C D, ..."""
    return [(rep, name) for rep in range(reps) for name in names]


def share_deadline(
    now: float, deadline: float | None, weight: float, weights_left: float
) -> float | None:
    """This workload's share of the time left before `deadline`, in proportion to its weight
    among the workloads not run yet (itself included)."""
    if deadline is None:
        return None
    return now + max(0.0, deadline - now) * weight / max(weight, weights_left)


def another_rep(done: int, elapsed: float, now: float, deadline: float | None) -> bool:
    """Start repetition number done+1? Always the first; later ones only if one more fits."""
    if done == 0 or deadline is None:
        return True
    return now + elapsed / done <= deadline


def run_workloads(
    env: Env,
    impls: list[Impl],
    workloads: list[Workload],
    reps: int,
    heavy_reps: int,
    on_cell_done: Callable[[dict[str, dict[str, Cell]]], None] = lambda r: None,
    deadline: float | None = None,
) -> dict[str, dict[str, Cell]]:
    """Run every workload; with a `deadline` (time.monotonic()), each workload gets its
    weighted share of the time left and stops adding repetitions (after the first) when the
    next one would not fit."""
    results: dict[str, dict[str, Cell]] = {}
    cache_cold = True
    for k, wl in enumerate(workloads):
        cells = {i.name: Cell() for i in impls}
        results[wl.name] = cells
        for i in impls:
            if i.name in wl.skip:
                cells[i.name].skipped = wl.why_skip
        active = [i for i in impls if not cells[i.name].skipped]
        if wl.state == "fresh" and cache_cold:
            prewarm(list(env.data.values()))
            cache_cold = False
        cache_cold = cache_cold or wl.state == "cold"
        expected = wl.expected(env.plan)
        n = heavy_reps if wl.heavy else reps
        t0 = time.monotonic()
        wl_deadline = share_deadline(t0, deadline, wl.weight, sum(w.weight for w in workloads[k:]))
        by_name = {i.name: i for i in active}
        for rep, name in interleaved([i.name for i in active], n):
            if name == active[0].name and not another_rep(
                rep, time.monotonic() - t0, time.monotonic(), wl_deadline
            ):
                env.log(f"  {wl.name}: stopped after {rep} of {n} repetitions (time budget)")
                break
            impl = by_name[name]
            cell = cells[impl.name]
            if None in cell.times:
                cell.times.append(None)  # failed before: don't waste time on it again
                continue
            try:
                seconds, check = measure(env, impl, wl)
            except (OpError, MountError, OSError) as e:
                cell.times.append(None)
                cell.errors.append(f"rep {rep + 1}: {e}")
                env.log(f"  {wl.name}: {impl.name}: {e}")
                continue
            if expected is not None and check != expected:
                note = f"rep {rep + 1}: result {check}, expected {expected}"
                cell.notes.append(note)
                env.log(f"  {wl.name}: {impl.name}: wrong result: {note}")
            cell.times.append(seconds)
        env.log(
            f"{wl.name:14s} "
            + "  ".join(_brief(i.name, cells[i.name]) for i in impls)
            + f"   ({time.monotonic() - t0:.0f}s)"
        )
        on_cell_done(results)
    return results


def _brief(name: str, cell: Cell) -> str:
    vals = sorted(t for t in cell.times if t is not None)
    if cell.skipped:
        return f"{name}=-"
    if not vals:
        return f"{name}=FAIL"
    return f"{name}={vals[len(vals) // 2]:.3f}s"
