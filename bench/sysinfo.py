"""The machine a result was measured on, recorded with every result."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def cpu_model() -> str:
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def mem_total_gib() -> float:
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 1024 / 1024, 1)
    return 0.0


def distro() -> str:
    for line in _read("/etc/os-release").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip('"')
    return "unknown"


def fs_of(path: str) -> str:
    r = subprocess.run(
        ["df", "--output=fstype,source", path],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    lines = r.stdout.split("\n")
    return " ".join(lines[1].split()) if len(lines) > 1 else "unknown"


def package_version(name: str) -> str:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:  # noqa: BLE001 - any failure means "not known"
        return "not installed"


def machine(data_dir: str) -> dict:
    return {
        "date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S"),
        "hostname": platform.node(),
        "kernel": platform.release(),
        "distro": distro(),
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "memory_gib": mem_total_gib(),
        "data_dir": data_dir,
        "data_fs": fs_of(data_dir),
        "python": sys.version.split()[0],
        "pyfuse3": package_version("pyfuse3"),
        "trio": package_version("trio"),
    }
