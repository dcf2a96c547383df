"""PNG charts of a results document (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import math
import os

COLORS = {
    "native": "#7f7f7f",
    "kernel-overlay": "#1f77b4",
    "fuse-overlayfs": "#ff7f0e",
    "unionfs-fuse": "#2ca02c",
    "pyunion": "#d62728",
    "pyunion-kernel": "#9467bd",
    "pyunion-kernel-upper": "#17becf",
    "pyunion-kernel-nopt": "#8c564b",
    "pyunion-pyfuse3": "#e377c2",
    "runc+kernel-overlay": "#1f77b4",
    "pyunion-run": "#d62728",
}


# cells of the container workload, drawn in the series of the implementation they stand for
ALIAS = {"pyunion-run": "pyunion", "runc+kernel-overlay": "kernel-overlay"}


def _cell(w: dict, series: str) -> dict:
    if series in w["cells"]:
        return w["cells"][series]
    return next((c for n, c in w["cells"].items() if ALIAS.get(n) == series), {})


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _ran(results: dict) -> list[str]:
    return [n for n, i in results["impls"].items() if i["status"] == "ok"]


def headline(results: dict, path: str, ref: str = "kernel-overlay") -> bool:
    """Speed of every implementation relative to `ref`, per workload, log scale."""
    plt = _plt()
    impls = [n for n in _ran(results) if n != ref and n not in ALIAS]
    wls = [
        w for w in results["workloads"] if any(_cell(w, n).get(f"speed_vs_{ref}") for n in impls)
    ]
    if not wls or not impls:
        return False
    fig, ax = plt.subplots(figsize=(10, 0.2 * len(wls) * len(impls) + 1.8))
    height = 0.8 / len(impls)
    for k, name in enumerate(impls):
        ys, xs, lo, hi = [], [], [], []
        for j, w in enumerate(wls):
            s = _cell(w, name).get(f"speed_vs_{ref}")
            if not s:
                continue
            ys.append(j + (k - (len(impls) - 1) / 2) * height)
            xs.append(s["median"])
            lo.append(s["median"] - s["min"])
            hi.append(s["max"] - s["median"])
        ax.barh(
            ys,
            xs,
            height=height,
            xerr=[lo, hi],
            label=name,
            color=COLORS.get(name),
            capsize=2,
            error_kw={"elinewidth": 0.8},
        )
    ax.set_xscale("log")
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_yticks(range(len(wls)), [w["name"] for w in wls])
    ax.invert_yaxis()
    ax.set_xlabel(f"speed relative to {ref} (paired per repetition; >1 = faster; log scale)")
    ax.set_title(
        f"pyunion and peers vs {ref} ({results['meta'].get('cpus')} CPUs, "
        f"kernel {results['meta'].get('kernel')}, scale {results['scale'].get('name')})"
    )
    ax.grid(axis="x", which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def times_grid(results: dict, path: str) -> bool:
    """One panel per workload: median seconds with min–max bars for each implementation."""
    plt = _plt()
    wls = [w for w in results["workloads"] if any(c.get("summary") for c in w["cells"].values())]
    if not wls:
        return False
    cols = 4
    rows = math.ceil(len(wls) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.8 * rows), squeeze=False)
    for ax, w in zip(axes.flat, wls, strict=False):
        names = [n for n, c in w["cells"].items() if c.get("summary")]
        med = [w["cells"][n]["summary"]["median"] for n in names]
        lo = [m - w["cells"][n]["summary"]["min"] for n, m in zip(names, med, strict=True)]
        hi = [w["cells"][n]["summary"]["max"] - m for n, m in zip(names, med, strict=True)]
        ax.bar(
            range(len(names)),
            med,
            yerr=[lo, hi],
            capsize=3,
            color=[COLORS.get(n, "#9467bd") for n in names],
        )
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=7)
        ax.set_title(w["name"], fontsize=9)
        ax.set_ylabel("seconds (lower = better)", fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
    for ax in list(axes.flat)[len(wls) :]:
        ax.axis("off")
    fig.subplots_adjust(left=0.05, right=0.99, top=0.96, bottom=0.08, hspace=0.6, wspace=0.3)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def write_all(results: dict, out_dir: str) -> list[str]:
    """Write the charts; returns the file names written (relative to out_dir)."""
    written = []
    for fname, fn in (("headline.png", headline), ("times.png", times_grid)):
        if fn(results, os.path.join(out_dir, fname)):
            written.append(fname)
    if "native" in _ran(results) and headline(
        results, os.path.join(out_dir, "vs-native.png"), ref="native"
    ):
        written.append("vs-native.png")
    return written
