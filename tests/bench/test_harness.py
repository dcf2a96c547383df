"""The harness end to end at the tiny scale: command line, results files, cleanup on failure."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bench import layers, mounts
from bench.config import TINY
from bench.impls import BY_NAME
from bench.plan import build_plan
from bench.report import build_results, markdown
from bench.runner import Env, OpError, interleaved, measure
from bench.workloads import BY_NAME as WORKLOADS
from unionfs import mountinfo

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def bench(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=REPO, timeout=timeout,
                          capture_output=True, text=True, check=False)


def test_interleaved_order():
    assert interleaved(["a", "b", "c"], 2) == [(0, "a"), (0, "b"), (0, "c"),
                                               (1, "a"), (1, "b"), (1, "c")]


@pytest.mark.parametrize("args, word", [(["--only", "nope"], "workload"),
                                        (["--impl", "zfs"], "implementation"),
                                        (["--reps", "0"], "--reps")])
def test_bad_arguments_give_one_line(tmp_path, args, word):
    r = bench(*args, "--out", str(tmp_path / "out"))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bench: ") and word in lines[0]
    assert not (tmp_path / "out").exists()


def test_out_must_be_a_directory(tmp_path):
    f = tmp_path / "file"
    f.write_text("keep me")
    r = bench("--out", str(f))
    assert r.returncode == 2 and "--out" in r.stderr and len(r.stderr.splitlines()) == 1
    assert f.read_text() == "keep me"


def test_tiny_run_writes_results_and_leaves_nothing(tmp_path):
    out, data = tmp_path / "out", tmp_path / "data"
    data.mkdir()
    r = bench("--scale", "tiny", "--impl", "native,kernel-overlay",
              "--only", "walk-cold,create,unlink,copy-up", "--reps", "2",
              "--out", str(out), "--data-dir", str(data))
    assert r.returncode == 0, r.stderr
    res = json.loads((out / "results.json").read_text())
    assert res["meta"]["kernel"] == os.uname().release
    assert set(res["impls"]) == {"native", "kernel-overlay"}
    wl = {w["name"]: w for w in res["workloads"]}
    assert list(wl) == ["walk-cold", "create", "unlink", "copy-up"]
    for name in ("walk-cold", "create", "unlink"):
        for impl in ("native", "kernel-overlay"):
            cell = wl[name]["cells"][impl]
            # two good reps each: native was restored after unlink, or rep 2 would fail
            assert cell["errors"] == [] and cell["notes"] == [], cell
            assert len(cell["times"]) == 2 and all(t > 0 for t in cell["times"])
        speed = wl[name]["cells"]["kernel-overlay"]["speed_vs_native"]
        assert speed["n"] == 2
    assert wl["copy-up"]["cells"]["native"]["skipped"]
    md = (out / "results.md").read_text()
    assert "### create: create + write 4 KiB + close 10 new files" in md
    assert (out / "headline.png").stat().st_size > 1000
    assert "running: native, kernel-overlay" in (out / "log.txt").read_text()
    assert not any(e.name.startswith("pyunion-bench-") for e in data.iterdir())
    assert not [m for m in mountinfo.mounts() if str(data) in m.mountpoint]


def test_failing_workload_still_unmounts(tmp_path):
    impl = BY_NAME["kernel-overlay"]
    if impl.unavailable():
        pytest.skip(impl.unavailable())
    plan = build_plan(TINY)
    data = layers.build_all(str(tmp_path / "data"), plan, {"kernel"}, native=False)
    env = Env(plan, data, str(tmp_path / "run"), str(tmp_path / "no-such-list"))
    with pytest.raises(OpError, match="FileNotFoundError"):
        measure(env, impl, WORKLOADS["unlink"])
    target = env.layout(impl).target
    assert not mounts.is_mounted(target)
    assert mounts.active() == []
    assert not os.path.exists(env.layout(impl).upper)


def test_report_ratios_are_paired_and_rendered():
    raw = {"walk-warm": {
        "native": {"times": [1.0, 2.0], "errors": [], "notes": [], "skipped": ""},
        "kernel-overlay": {"times": [2.0, 2.0], "errors": [], "notes": [], "skipped": ""},
        "pyunion": {"times": [4.0, None], "errors": ["rep 2: boom"], "notes": [],
                    "skipped": ""}}}
    impls = {n: {"status": "ok", "reason": "", "version": "v", "options": "o", "dialect": None}
             for n in raw["walk-warm"]}
    wls = [{"name": "walk-warm", "title": "walk", "state": "warm", "unit": "entries/s",
            "amount": 100}]
    res = build_results({"kernel": "k"}, {"name": "tiny"}, impls, wls, raw)
    cells = res["workloads"][0]["cells"]
    assert cells["kernel-overlay"]["speed_vs_native"]["median"] == pytest.approx(0.75)
    assert cells["pyunion"]["speed_vs_kernel-overlay"] == {"median": 0.5, "min": 0.5,
                                                            "max": 0.5, "n": 1}
    assert cells["pyunion"]["rate"] == 25
    target = next(t for t in res["targets"] if t["workload"] == "walk-warm")
    assert target["met"] is True            # 0.5x kernel overlay meets "0.5x or better"
    md = markdown(res)
    assert "| pyunion | 4.00 | 25 entries/s | 0.25x (0.25–0.25) | 0.50x (0.50–0.50) |" in md
    assert "pyunion: error: rep 2: boom" in md
