"""What is measured: each workload's cache state, operation, arguments and expected result.

Pure data: the runner turns a workload into a child `bench.ops` call. States:
  cold  - fresh mount, then sync + drop_caches, then the timed operation
  warm  - fresh mount, one untimed pass of the same operation, then the timed one
  fresh - fresh mount; the layers' files are in the page cache (the runner re-reads them after
          a cold workload), the mount's own caches are empty
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from bench.config import MiB, Scale
from bench.plan import COPYUP_FILE, NEEDLE, SEQ_FILE, TREE, WIDE, Plan, merged


@dataclass(frozen=True)
class Ctx:
    """Where one measurement runs: the merged root, a scratch dir, the unlink list file."""

    root: str
    unlink_list: str
    mount_argv: tuple[str, ...] = ()


@dataclass(frozen=True)
class Workload:
    name: str
    title: Callable[[Scale], str]
    state: str
    op: str
    args: Callable[[Plan, Ctx], dict]
    amount: Callable[[Scale], float]  # work done, for the rate column
    unit: str  # rate unit: MiB/s or ops/s
    expected: Callable[[Plan], int | None] = lambda plan: None
    heavy: bool = False  # uses Scale.heavy_reps
    mutates: bool = False  # changes the tree (native must be restored)
    skip: frozenset[str] = field(default_factory=frozenset)
    weight: float = 1.0  # share of a time budget: roughly how long one repetition takes
    why_skip: str = ""


def _k(n: int) -> str:
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


def _size(n: int) -> str:
    return f"{n // 1024 // MiB} GiB" if n >= 1024 * MiB else f"{n // MiB} MiB"


def needle_files(plan: Plan) -> int:
    from bench.plan import small_content

    return sum(
        1
        for p, s in merged(plan).items()
        if s is not None and p.startswith(TREE + "/") and NEEDLE in small_content(p, s)
    )


def walk_count(plan: Plan) -> int:
    return len(merged(plan)) + 1


NEW_FILE = "written.bin"
CREATE_DIR = "created"
GREP_CMD = f"find {TREE} -type f -print0 | xargs -0 grep -l {NEEDLE.decode()} | wc -l"
TAR_CMD = f"tar -cf - {TREE} | wc -c"
NO_NATIVE = frozenset({"native"})

_WORKLOADS: list[Workload] = [
    Workload(
        "seq-read-cold",
        lambda s: f"sequential read of a {_size(s.seq_bytes)} lower file, cold",
        "cold",
        "seq_read",
        lambda p, c: {"path": f"{c.root}/{SEQ_FILE}"},
        lambda s: s.seq_bytes / MiB,
        "MiB/s",
        lambda p: p.scale.seq_bytes,
        heavy=True,
    ),
    Workload(
        "seq-read-warm",
        lambda s: f"sequential re-read of a {_size(s.seq_bytes)} lower file, warm",
        "warm",
        "seq_read",
        lambda p, c: {"path": f"{c.root}/{SEQ_FILE}"},
        lambda s: s.seq_bytes / MiB,
        "MiB/s",
        lambda p: p.scale.seq_bytes,
        heavy=True,
    ),
    Workload(
        "rand-read",
        lambda s: f"{_k(s.random_reads)} random 4 KiB reads of the large file, cold",
        "cold",
        "rand_read",
        lambda p, c: {"path": f"{c.root}/{SEQ_FILE}", "count": p.scale.random_reads, "seed": 7},
        lambda s: s.random_reads,
        "reads/s",
        lambda p: p.scale.random_reads * 4096,
    ),
    Workload(
        "walk-cold",
        lambda s: "walk + lstat of the whole tree, cold",
        "cold",
        "walk",
        lambda p, c: {"root": c.root},
        lambda s: s.small_files + s.wide_entries,
        "entries/s",
        walk_count,
    ),
    Workload(
        "walk-warm",
        lambda s: "walk + lstat of the whole tree, warm",
        "warm",
        "walk",
        lambda p, c: {"root": c.root},
        lambda s: s.small_files + s.wide_entries,
        "entries/s",
        walk_count,
    ),
    Workload(
        "list-dir",
        lambda s: f"list + lstat a {_k(s.wide_entries)}-entry dir merged from 2 layers",
        "fresh",
        "list_dir",
        lambda p, c: {"path": f"{c.root}/{WIDE}"},
        lambda s: s.wide_entries,
        "entries/s",
        lambda p: p.scale.wide_entries,
    ),
    Workload(
        "create",
        lambda s: f"create + write 4 KiB + close {_k(s.creates)} new files",
        "fresh",
        "create",
        lambda p, c: {"dirpath": f"{c.root}/{CREATE_DIR}", "count": p.scale.creates},
        lambda s: s.creates,
        "files/s",
        lambda p: p.scale.creates,
        mutates=True,
    ),
    Workload(
        "unlink",
        lambda s: f"unlink {_k(s.unlinks)} lower files (whiteouts)",
        "fresh",
        "unlink",
        lambda p, c: {"root": c.root, "list_file": c.unlink_list},
        lambda s: s.unlinks,
        "files/s",
        lambda p: p.scale.unlinks,
        mutates=True,
    ),
    Workload(
        "seq-write",
        lambda s: f"sequential write of a new {_size(s.write_bytes)} file + fsync",
        "fresh",
        "seq_write",
        lambda p, c: {"path": f"{c.root}/{NEW_FILE}", "size": p.scale.write_bytes},
        lambda s: s.write_bytes / MiB,
        "MiB/s",
        lambda p: p.scale.write_bytes,
        heavy=True,
        mutates=True,
    ),
    Workload(
        "copy-up",
        lambda s: f"copy-up: append 1 byte to a {_size(s.copyup_bytes)} lower file",
        "fresh",
        "append_byte",
        lambda p, c: {"path": f"{c.root}/{COPYUP_FILE}"},
        lambda s: s.copyup_bytes / MiB,
        "MiB/s",
        lambda p: p.scale.copyup_bytes + 1,
        mutates=True,
        skip=NO_NATIVE,
        why_skip="a plain directory has no copy-up",
    ),
    Workload(
        "tar",
        lambda s: f"tar -c of the {_k(s.small_files)}-file tree",
        "fresh",
        "shell_count",
        lambda p, c: {"cmd": TAR_CMD, "cwd": c.root},
        lambda s: s.small_files,
        "files/s",
    ),
    Workload(
        "find-grep",
        lambda s: "find tree -type f | xargs grep -l",
        "fresh",
        "shell_count",
        lambda p, c: {"cmd": GREP_CMD, "cwd": c.root},
        lambda s: s.small_files,
        "files/s",
        needle_files,
    ),
    Workload(
        "mount",
        lambda s: "mount until usable (stat a file, list the root)",
        "fresh",
        "mount_usable",
        lambda p, c: {"argv": list(c.mount_argv), "target": c.root, "probe": SEQ_FILE},
        lambda s: 1,
        "mounts/s",
        lambda p: 3,
        skip=NO_NATIVE,
        why_skip="nothing to mount",
    ),
]

# Relative time of one repetition at full scale on a 2-core machine (measured): how a time
# budget is shared out, so the slow workloads still get more than one repetition.
WEIGHTS = {
    "walk-cold": 2.0,
    "walk-warm": 1.5,
    "create": 3.5,
    "unlink": 2.5,
    "seq-write": 1.5,
    "copy-up": 0.5,
    "tar": 2.0,
    "find-grep": 2.0,
    "mount": 0.3,
}
WORKLOADS = [replace(w, weight=WEIGHTS.get(w.name, 1.0)) for w in _WORKLOADS]
BY_NAME = {w.name: w for w in WORKLOADS}
