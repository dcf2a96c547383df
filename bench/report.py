"""Turn raw timings into the results document (JSON) and its markdown table. Pure: no IO."""

from __future__ import annotations

from bench.stats import evaluate_targets, paired_speed, rate, summarize

REFERENCES = ("native", "kernel-overlay")


def build_results(
    meta: dict,
    scale: dict,
    impls: dict[str, dict],
    workloads: list[dict],
    raw: dict[str, dict[str, dict]],
) -> dict:
    """raw[workload][impl] = Cell.as_dict(); workloads = [{name, title, state, unit, amount}]."""
    out_wl = []
    times: dict[str, dict[str, list[float | None]]] = {}
    for wl in workloads:
        cells = raw.get(wl["name"], {})
        times[wl["name"]] = {name: c["times"] for name, c in cells.items() if not c["skipped"]}
        rows = {}
        for name, c in cells.items():
            s = summarize(c["times"])
            row = dict(c)
            row["summary"] = s.as_dict() if s else None
            row["rate"] = rate(wl["amount"], s.median) if s else None
            for ref in REFERENCES:
                sp = None
                actual = wl.get("refs", {}).get(ref, ref)  # e.g. runc stands for the kernel
                if actual in cells and actual != name and not cells[actual]["skipped"]:
                    sp = paired_speed(c["times"], cells[actual]["times"])
                row[f"speed_vs_{ref}"] = sp.as_dict() if sp else None
            rows[name] = row
        out_wl.append(dict(wl, cells=rows))
    return {
        "meta": meta,
        "scale": scale,
        "impls": impls,
        "workloads": out_wl,
        "targets": evaluate_targets(times),
    }


def _secs(v: float) -> str:
    if v >= 100:
        return f"{v:.0f}"
    if v >= 1:
        return f"{v:.2f}"
    if v >= 0.01:
        return f"{v:.3f}"
    return f"{v * 1000:.2f}m"


def _time_cell(s: dict | None) -> str:
    if not s:
        return "—"
    if s["n"] == 1:
        return f"{_secs(s['median'])}"
    return f"{_secs(s['median'])} ({_secs(s['min'])}–{_secs(s['max'])})"


def _speed_cell(s: dict | None) -> str:
    if not s:
        return "—"
    return f"{s['median']:.2f}x ({s['min']:.2f}–{s['max']:.2f})"


def _rate(v: float | None, unit: str) -> str:
    if v is None:
        return "—"
    return f"{v:,.0f} {unit}" if v >= 10 else f"{v:.2f} {unit}"


def _reps(wl: dict) -> int:
    return max((len(c["times"]) for c in wl["cells"].values() if not c["skipped"]), default=0)


def markdown(results: dict, charts: list[str] = ()) -> str:
    meta, impls = results["meta"], results["impls"]
    lines = ["# pyunion benchmark results", ""]
    lines += [
        (
            f"Measured {meta.get('date_utc', '?')} UTC on {meta.get('cpus')} × "
            f"{meta.get('cpu')}, {meta.get('memory_gib')} GiB RAM, {meta.get('distro')}, "
            f"kernel {meta.get('kernel')}; data on {meta.get('data_fs')}. "
            f"Scale `{results['scale'].get('name')}`; command: `{meta.get('command', '')}`."
        ),
        "",
    ]
    lines += [
        (
            "Times are seconds: median (min–max) of the repetitions. Speed columns are "
            "paired per repetition: reference time / implementation time, so 1.00x = as fast "
            "as the reference and 0.50x = half as fast (median, min–max over repetitions). "
            "Suffix `m` = milliseconds."
        ),
        "",
    ]
    lines += [
        "## Implementations",
        "",
        ("| implementation | version | whiteout dialect | mount options | status |"),
        "|---|---|---|---|---|",
    ]
    for name, i in impls.items():
        status = "ran" if i["status"] == "ok" else f"skipped: {i['reason']}"
        if i["status"] == "ok" and i.get("reason"):
            status = f"ran; {i['reason']}"
        lines.append(
            f"| {name} | {i.get('version', '')} | {i.get('dialect') or 'merged tree'} "
            f"| `{i.get('options', '')}` | {status} |"
        )
    lines.append("")
    shown = [(n, i["mounted_as"]) for n, i in impls.items() if i.get("mounted_as")]
    if shown:
        lines += ["As the kernel shows the mounts (`fstype options super-options`):", ""]
        lines += [f"- {n}: `{m}`" for n, m in shown] + [""]
    if results.get("targets"):
        lines += [
            "## Targets of issue 5 (pyunion)",
            "",
            "| target | workload | reference | pyunion speed vs reference | met |",
            "|---|---|---|---|---|",
        ]
        for t in results["targets"]:
            met = {True: "yes", False: "**no**", None: "not measured"}[t["met"]]
            lines.append(
                f"| {t['target']} | {t['workload']} | {t['reference']} | "
                f"{_speed_cell(t['speed'])} | {met} |"
            )
        lines.append("")
    for c in charts:
        lines += [f"![{c}]({c})", ""]
    lines += ["## Workloads", ""]
    for wl in results["workloads"]:
        lines += [
            f"### {wl['name']}: {wl['title']}",
            "",
            f"Cache state: {wl['state']}. Repetitions: {_reps(wl)}.",
            "",
            "| implementation | time s | rate | speed vs native | speed vs kernel overlayfs |",
            "|---|---|---|---|---|",
        ]
        notes = []
        for name, c in wl["cells"].items():
            if impls.get(name, {}).get("status") != "ok":
                continue
            if c["skipped"]:
                lines.append(f"| {name} | n/a ({c['skipped']}) | | | |")
                continue
            lines.append(
                f"| {name} | {_time_cell(c['summary'])} | {_rate(c['rate'], wl['unit'])}"
                f" | {_speed_cell(c['speed_vs_native'])} | "
                f"{_speed_cell(c['speed_vs_kernel-overlay'])} |"
            )
            notes += [f"{name}: error: {e}" for e in c["errors"]]
            notes += [f"{name}: wrong result: {n}" for n in c["notes"]]
        lines.append("")
        if notes:
            lines += [f"- {n}" for n in notes] + [""]
    return "\n".join(lines)
