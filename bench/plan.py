"""The layered data every implementation is measured on, as pure data (no IO).

Two lowers: `base` (bottom) holds the small-file tree, the wide directory and the large files;
`top` overrides some files, whites out files and a whole directory, makes one directory opaque,
adds files, and brings the second half of the wide directory. `merged()` is the tree a correct
union shows; native gets exactly that tree as a plain directory.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from bench.config import Scale

NEEDLE = b"NEEDLE-7f3a"
SEQ_FILE = "big/seq.bin"
COPYUP_FILE = "big/copyup.bin"
TREE = "tree"
WIDE = "wide"
BIG_BLOCK = 1 << 20


@dataclass(frozen=True)
class FileSpec:
    """A regular file: its bytes follow from (path, size, seed), so they can be checked."""

    size: int
    seed: int


@dataclass
class Layer:
    files: dict[str, FileSpec] = field(default_factory=dict)
    dirs: set[str] = field(default_factory=set)
    whiteouts: set[str] = field(default_factory=set)  # names hidden from the layers below
    opaque: set[str] = field(default_factory=set)  # dirs whose lower content is hidden

    def add_file(self, path: str, spec: FileSpec) -> None:
        self.files[path] = spec
        self.add_parents(path)

    def add_parents(self, path: str) -> None:
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            self.dirs.add("/".join(parts[:i]))


@dataclass
class Plan:
    scale: Scale
    base: Layer
    top: Layer
    unlink_targets: list[str]

    @property
    def layers_top_first(self) -> list[Layer]:
        return [self.top, self.base]


def small_size(seed: int) -> int:
    return 64 + (seed * 37 % 61) * 64


def is_big(spec: FileSpec) -> bool:
    return spec.size >= BIG_BLOCK


def small_content(path: str, spec: FileSpec) -> bytes:
    """Deterministic bytes; every 50th seed carries the needle that `find | xargs grep` finds."""
    head = f"{path} seed={spec.seed}\n".encode()
    if spec.seed % 50 == 0:
        head += NEEDLE + b"\n"
    body = hashlib.sha256(head).hexdigest().encode() + b"\n"
    data = head + body * (spec.size // len(body) + 1)
    return data[: spec.size]


def big_block(spec: FileSpec) -> bytes:
    """The 1 MiB block a large file repeats (cheap to write, still differs per seed)."""
    unit = hashlib.sha256(f"big{spec.seed}".encode()).digest()
    return (unit * (BIG_BLOCK // len(unit)))[:BIG_BLOCK]


def content_digest(path: str, spec: FileSpec) -> str:
    h = hashlib.sha256()
    if is_big(spec):
        block = big_block(spec)
        left = spec.size
        while left:
            n = min(left, len(block))
            h.update(block[:n])
            left -= n
    else:
        h.update(small_content(path, spec))
    return h.hexdigest()


def tree_file(d: int, s: int, k: int) -> str:
    return f"{TREE}/d{d:02d}/d{s:02d}/f{k:04d}"


def wide_file(i: int) -> str:
    return f"{WIDE}/w{i:06d}"


def build_plan(scale: Scale) -> Plan:
    if scale.top_dirs < 5:
        raise ValueError("scale needs at least 5 top dirs (whiteout, opaque, override roles)")
    base, top = Layer(), Layer()
    seed = 0
    for d in range(scale.top_dirs):
        for s in range(scale.sub_dirs):
            for k in range(scale.files_per_dir):
                seed += 1
                base.add_file(tree_file(d, s, k), FileSpec(small_size(seed), seed))
    for i in range(scale.wide_bottom):
        base.add_file(wide_file(i), FileSpec(16 + i % 17, 1_000_000 + i))
    base.add_file(SEQ_FILE, FileSpec(scale.seq_bytes, 1))
    base.add_file(COPYUP_FILE, FileSpec(scale.copyup_bytes, 2))
    for i in range(scale.extra_big):
        base.add_file(f"big/extra{i}.bin", FileSpec(max(BIG_BLOCK, scale.copyup_bytes // 2), 3 + i))

    # d00: every 7th file whited out.  d01/d01: the whole directory whited out.
    for s in range(scale.sub_dirs):
        for k in range(0, scale.files_per_dir, 7):
            top.whiteouts.add(tree_file(0, s, k))
            top.add_parents(tree_file(0, s, k))
    gone_dir = f"{TREE}/d01/d{1 % scale.sub_dirs:02d}"
    top.whiteouts.add(gone_dir)
    top.add_parents(gone_dir + "/x")
    top.dirs.discard(gone_dir)
    # d02/d00: opaque, with fresh content of its own.
    opq = f"{TREE}/d02/d00"
    top.opaque.add(opq)
    top.dirs.add(opq)
    top.add_parents(opq + "/x")
    for k in range(scale.files_per_dir // 4 + 1):
        top.add_file(f"{opq}/g{k:04d}", FileSpec(small_size(2_000_000 + k), 2_000_000 + k))
    # d03: every 3rd file overridden with new bytes.
    for s in range(scale.sub_dirs):
        for k in range(0, scale.files_per_dir, 3):
            sd = 3_000_000 + s * 10_000 + k
            top.add_file(tree_file(3, s, k), FileSpec(small_size(sd), sd))
    # new files only in the top lower.
    for k in range(scale.files_per_dir):
        sd = 4_000_000 + k
        top.add_file(f"{TREE}/d{scale.top_dirs - 1:02d}/new/n{k:04d}", FileSpec(small_size(sd), sd))
    # wide/: the top brings wide_top entries, wide_overlap of which override the bottom's.
    start = scale.wide_bottom - scale.wide_overlap
    for i in range(start, start + scale.wide_top):
        top.add_file(wide_file(i), FileSpec(16 + i % 13, 5_000_000 + i))

    plan = Plan(scale, base, top, [])
    tree = merged(plan)
    candidates = sorted(
        p
        for p, spec in tree.items()
        if spec is not None and p.startswith(TREE + "/") and int(p.split("/")[1][1:]) >= 3
    )
    if len(candidates) < scale.unlinks:
        raise ValueError(f"scale has {len(candidates)} unlink candidates, needs {scale.unlinks}")
    plan.unlink_targets = candidates[: scale.unlinks]
    return plan


def _hidden_by(path: str, hidden: set[str], opaque: set[str]) -> bool:
    """Is `path` (of a lower layer) hidden by a whiteout or an opaque dir of the layer above?"""
    if path in hidden and path not in opaque:
        return True
    parts = path.split("/")
    return any("/".join(parts[:i]) in hidden for i in range(1, len(parts)))


def merged(plan: Plan) -> dict[str, FileSpec | None]:
    """Path -> FileSpec for files, None for directories: what a correct union shows."""
    top = plan.top
    hidden = top.whiteouts | top.opaque
    out: dict[str, FileSpec | None] = {
        d: None for d in plan.base.dirs if not _hidden_by(d, hidden, top.opaque)
    }
    out.update((p, s) for p, s in plan.base.files.items() if not _hidden_by(p, hidden, top.opaque))
    for d in top.dirs:
        out[d] = None
    out.update(top.files)
    return out


def listing_dirs(tree: dict[str, FileSpec | None]) -> list[str]:
    return sorted(p for p, v in tree.items() if v is None)
