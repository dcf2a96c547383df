"""`python -m bench`: set up the peers, build the layered data, run, and write the results."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time

from bench import charts, config, layers, mounts, report, sysinfo
from bench.containers import CONTAINER_WORKLOAD, run_containers
from bench.impls import ALL
from bench.impls import BY_NAME as IMPLS
from bench.plan import build_plan
from bench.runner import REPO, Env, drop_caches, probe, run_workloads
from bench.workloads import BY_NAME as WORKLOADS
from bench.workloads import WORKLOADS as ALL_WORKLOADS

BUDGET_MIN = {"full": 14.0, "quick": 1.75}
ALL_NAMES = [w.name for w in ALL_WORKLOADS] + [CONTAINER_WORKLOAD]


class UsageError(Exception):
    pass


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description=(
            "Benchmark pyunion against native, kernel overlayfs, fuse-overlayfs and unionfs-fuse."
        ),
    )
    p.add_argument("--quick", action="store_true", help="small sizes, 2 repetitions (< 2 min)")
    p.add_argument("--scale", choices=sorted(config.SCALES), help="explicit scale (default full)")
    p.add_argument("--only", default="", help="comma-separated workloads: " + ",".join(ALL_NAMES))
    p.add_argument(
        "--impl",
        default="",
        help="comma-separated implementations: " + ",".join(i.name for i in ALL),
    )
    p.add_argument("--reps", type=int, help="repetitions per workload (overrides the scale)")
    p.add_argument("--out", help="results directory (default bench/results/<UTC timestamp>)")
    p.add_argument(
        "--data-dir",
        default="/var/tmp",
        help="where layers, uppers and mount points are made (default /var/tmp)",
    )
    p.add_argument("--keep-data", action="store_true", help="do not delete the built layers")
    p.add_argument(
        "--budget",
        type=float,
        help="minutes for the whole run: later repetitions "
        "are dropped to fit (default 14 full, 1.75 quick; 0 = no limit)",
    )
    return p.parse_args(argv)


def _pick(text: str, known: list[str], what: str) -> list[str]:
    if not text:
        return list(known)
    names = [x.strip() for x in text.split(",") if x.strip()]
    bad = [n for n in names if n not in known]
    if bad:
        raise UsageError(f"unknown {what} {', '.join(bad)} (known: {', '.join(known)})")
    return [n for n in known if n in names]


class Logger:
    """Print a progress line and keep it in the results directory's log.txt."""

    def __init__(self, path: str) -> None:
        self.path = path
        open(path, "w").close()

    def __call__(self, line: str) -> None:
        print(line, flush=True)
        with open(self.path, "a") as f:
            f.write(line + "\n")


def _sigterm(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    try:
        wl_names = _pick(args.only, ALL_NAMES, "workload")
        impl_names = _pick(args.impl, [i.name for i in ALL], "implementation")
        if args.reps is not None and args.reps < 1:
            raise UsageError("--reps must be at least 1")
        if args.budget is not None and args.budget < 0:
            raise UsageError("--budget must be 0 (no limit) or more minutes")
        if os.geteuid() != 0:
            raise UsageError("must run as root (it mounts overlayfs and drops the page cache)")
        if args.out and os.path.exists(args.out) and not os.path.isdir(args.out):
            raise UsageError(f"--out {args.out} exists and is not a directory")
        if not os.path.isdir(args.data_dir):
            raise UsageError(f"--data-dir {args.data_dir} is not a directory")
    except UsageError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 2
    scale = (
        config.SCALES[args.scale] if args.scale else (config.QUICK if args.quick else config.FULL)
    )
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d-%H%M%S")
    out = os.path.abspath(args.out or os.path.join(REPO, "bench", "results", stamp))
    os.makedirs(out, exist_ok=True)
    signal.signal(signal.SIGTERM, _sigterm)
    work = tempfile.mkdtemp(prefix="pyunion-bench-", dir=args.data_dir)
    try:
        return _run(args, scale, wl_names, impl_names, out, work)
    except KeyboardInterrupt:
        print("bench: interrupted; unmounting", file=sys.stderr)
        return 130
    finally:
        mounts.release_all()
        if args.keep_data:
            print(f"data kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def _run(
    args, scale: config.Scale, wl_names: list[str], impl_names: list[str], out: str, work: str
) -> int:
    t_start = time.monotonic()
    log = Logger(os.path.join(out, "log.txt"))
    reps = args.reps or scale.reps
    heavy_reps = args.reps or scale.heavy_reps
    meta = sysinfo.machine(work)
    meta["command"] = "python -m bench " + shlex.join(sys.argv[1:] if args else [])
    impl_info: dict[str, dict] = {}
    impls = []
    for name in impl_names:
        impl = IMPLS[name]
        reason = impl.unavailable()
        impl_info[name] = {
            "label": impl.label,
            "dialect": impl.dialect,
            "options": impl.options,
            "version": impl.version() if not reason else "",
            "status": "skipped" if reason else "ok",
            "reason": reason or "",
        }
        if reason:
            log(f"skip {name}: {reason}")
        else:
            impls.append(impl)
    if not drop_caches():
        meta["warning"] = "could not drop caches: cold workloads were not cold"
        log("warning: cannot write /proc/sys/vm/drop_caches; cold workloads are not cold")

    plan = build_plan(scale)
    t0 = time.monotonic()
    log(f"building {scale.name} data in {work} ...")
    data = layers.build_all(
        os.path.join(work, "data"),
        plan,
        {i.dialect for i in impls if i.dialect},
        native=any(not i.mounts for i in impls),
    )
    unlink_list = os.path.join(work, "unlink.txt")
    with open(unlink_list, "w") as f:
        f.write("\n".join(plan.unlink_targets) + "\n")
    os.sync()
    log(f"data built in {time.monotonic() - t0:.0f}s")
    env = Env(plan, data, os.path.join(work, "run"), unlink_list, log=log)

    for impl in list(impls):
        problem = probe(env, impl, impl_info[impl.name])
        if problem and problem.startswith("wrong merged tree"):
            impl_info[impl.name]["reason"] = problem
            log(f"warning {impl.name}: {problem}")
        elif problem:
            impl_info[impl.name].update(status="skipped", reason=problem)
            log(f"skip {impl.name}: {problem}")
            impls.remove(impl)
    log("running: " + ", ".join(i.name for i in impls))

    workloads = [WORKLOADS[n] for n in wl_names if n in WORKLOADS]
    wl_docs = [
        {
            "name": w.name,
            "title": w.title(scale),
            "state": w.state,
            "unit": w.unit,
            "amount": w.amount(scale),
        }
        for w in workloads
    ]
    raw: dict[str, dict[str, dict]] = {}

    def save() -> dict:
        results = report.build_results(
            meta, dict(scale.as_dict(), reps=reps, heavy_reps=heavy_reps), impl_info, wl_docs, raw
        )
        with open(os.path.join(out, "results.json"), "w") as f:
            json.dump(results, f, indent=1)
        return results

    def cells_done(got: dict) -> None:
        raw.update({w: {i: c.as_dict() for i, c in cells.items()} for w, cells in got.items()})
        save()

    try:
        budget = args.budget if args.budget is not None else BUDGET_MIN.get(scale.name, 0)
        reserve = 60 if CONTAINER_WORKLOAD in wl_names else 30  # containers, report, charts
        deadline = t_start + budget * 60 - reserve if budget else None
        meta["budget_min"] = budget or None
        run_workloads(
            env, impls, workloads, reps, heavy_reps, on_cell_done=cells_done, deadline=deadline
        )
        if CONTAINER_WORKLOAD in wl_names and {"pyunion", "kernel-overlay"} & set(impl_names):
            doc, cells, infos = run_containers(work, reps, log=log)
            wl_docs.append(doc)
            impl_info.update(infos)
            raw[doc["name"]] = cells
    except KeyboardInterrupt:
        meta["interrupted"] = "yes: the workloads after the last one shown were not run"
        print("bench: interrupted; writing what was measured", file=sys.stderr)
        mounts.release_all()
    meta["elapsed_s"] = round(time.monotonic() - t_start, 1)
    results = save()
    written = charts.write_all(results, out)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(report.markdown(results, written))
    log(f"results: {out}/results.md ({meta['elapsed_s']:.0f}s)")
    for t in results["targets"]:
        s = t["speed"]
        if s:
            log(f"  {'MET ' if t['met'] else 'MISS'} {t['target']}: {s['median']:.2f}x")
    return 130 if meta.get("interrupted") else 0
