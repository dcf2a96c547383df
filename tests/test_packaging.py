"""What `pip install` puts on a machine: the project's own modules only, one version string."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def test_wheel_installs_only_the_projects_top_level_names(tmp_path):
    """A wheel built from a copy of the tree holds unionfs, snapshotter and pyunion (the command router),
    never `bench` or `tests` (generic names that would shadow others' in site-packages)."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "results")
    for entry in REPO.iterdir():
        if entry.is_dir() and (entry / "__init__.py").exists():
            shutil.copytree(entry, src / entry.name, ignore=ignore)
        elif entry.suffix == ".py":
            shutil.copy(entry, src / entry.name)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                        "--no-build-isolation", "--disable-pip-version-check", "-w",
                        str(tmp_path / "dist"), str(src)],
                       capture_output=True, text=True, timeout=240, check=False)
    assert r.returncode == 0, r.stderr
    (wheel,) = (tmp_path / "dist").glob("pyunion-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    top = {t.removesuffix(".py") for t in top}
    assert top == {"pyunion", "unionfs", "snapshotter"}, top
    assert "snapshotter/grpcapi/snapshots_pb2.py" in names
    assert "snapshotter/runtime/cli.py" in names


def test_version_lives_in_pyproject_only():
    """The code reads the installed version; no module spells it out again."""
    import unionfs
    version = _project()["version"]
    assert unionfs.__version__ == version
    spelled = re.compile(r"""["']""" + re.escape(version) + r"""["']""")
    for path in [*(REPO / "unionfs").rglob("*.py"), *(REPO / "snapshotter").rglob("*.py")]:
        if "grpcapi" in path.parts:
            continue
        assert not spelled.search(path.read_text()), path


def test_pyunion_version_commands_agree():
    version = _project()["version"]
    bindir = Path(sys.executable).parent
    out = subprocess.run([str(bindir / "pyunion"), "--version"], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert out.strip() == f"pyunion {version}"
    out = subprocess.run([str(bindir / "pyunion-runtime"), "--version"], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    assert out.splitlines()[0] == f"pyunion-runtime {version}"


def test_no_unused_runtime_dependency():
    """Every declared dependency is imported by the installed code (the `xattr` package was
    declared and never used: the stdlib's os.*xattr calls do the job)."""
    names = {re.split(r"[<>=!~ \[]", d, maxsplit=1)[0].lower() for d in _project()["dependencies"]}
    sources = "\n".join(p.read_text() for d in ("unionfs", "snapshotter")
                        for p in (REPO / d).rglob("*.py"))
    for name in names:
        assert re.search(rf"^\s*(import|from) {re.escape(name)}\b", sources, re.MULTILINE), name
    assert "xattr" not in names
