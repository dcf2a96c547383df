"""The project's habits, checked on every run of the suite (so by scripts/test.sh and CI):
ruff clean with the rules the code's `noqa` comments name, mypy clean on the installed packages,
no test that skips itself when the project's own code fails to import, one skip rule."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
OWN = ("pyunion", "unionfs", "snapshotter", "bench", "tests")


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=600,
                          check=False)


def test_ruff_clean():
    r = _run(str(BIN / "ruff"), "check", "--no-cache", ".")
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_noqa_names_an_enabled_rule():
    """A `noqa: CODE` for a rule that is not selected is noise: enable its family instead."""
    lint = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["ruff"]["lint"]
    selected = set(lint.get("select", [])) | set(lint.get("extend-select", []))
    codes = set()
    for pkg in OWN:
        for path in (REPO / pkg).rglob("*.py"):
            for m in re.finditer(r"noqa: ?([A-Z]+[0-9]+(?:, ?[A-Z]+[0-9]+)*)", path.read_text()):
                codes |= {c.strip() for c in m.group(1).split(",")}
    assert codes
    for code in codes:
        assert any(code.startswith(s) for s in selected), (code, sorted(selected))


def test_mypy_clean():
    r = _run(str(BIN / "mypy"))      # files and strictness: [tool.mypy] in pyproject.toml
    assert r.returncode == 0, r.stdout + r.stderr


def _calls(tree: ast.AST, name: str) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)
            and isinstance(n.func, ast.Attribute) and n.func.attr == name]


def test_tests_never_importorskip_the_projects_own_modules():
    """A broken import of our own code must fail the suite, not skip a file of it."""
    bad = []
    for path in (REPO / "tests").rglob("*.py"):
        for call in _calls(ast.parse(path.read_text()), "importorskip"):
            arg = call.args[0] if call.args else None
            mod = arg.value if isinstance(arg, ast.Constant) else "?"
            if not isinstance(mod, str) or mod.split(".")[0] in OWN or mod == "?":
                bad.append(f"{path.relative_to(REPO)}:{call.lineno} {mod}")
    assert not bad, bad


def test_one_root_skip_rule():
    """Root (and FUSE) requirements are markers that tests/conftest.py turns into skips; no
    test file checks the euid for a skip of its own."""
    bad = []
    for path in (REPO / "tests").rglob("*.py"):
        if path.name == "conftest.py" and path.parent == REPO / "tests":
            continue
        for call in _calls(ast.parse(path.read_text()), "skipif"):
            if "geteuid" in ast.unparse(call):
                bad.append(f"{path.relative_to(REPO)}:{call.lineno}")
    assert not bad, bad
