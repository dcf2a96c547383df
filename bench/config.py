"""Sizes and repetition counts of a benchmark run: full, quick, and the tiny scale tests use."""

from __future__ import annotations

from dataclasses import asdict, dataclass

MiB = 1 << 20


@dataclass(frozen=True)
class Scale:
    """Everything that makes a run bigger or smaller; the data plan and workloads read only this."""

    name: str
    top_dirs: int  # tree/dNN
    sub_dirs: int  # tree/dNN/dMM
    files_per_dir: int  # tree/dNN/dMM/fKKKK: the small-file tree is the product of the three
    seq_bytes: int  # the large lower file read sequentially and randomly
    copyup_bytes: int  # the lower file that one appended byte copies up
    extra_big: int  # a few more large lower files (part of "a few large files")
    wide_bottom: int  # entries of wide/ in the bottom lower
    wide_top: int  # entries of wide/ in the top lower; wide_overlap of them override
    wide_overlap: int
    creates: int  # files created (4 KiB each) by the create workload
    unlinks: int  # lower files unlinked by the unlink workload
    write_bytes: int  # new file written sequentially
    random_reads: int  # 4 KiB preads at random offsets of the sequential file
    reps: int  # repetitions of each workload per implementation
    heavy_reps: int  # repetitions of the GiB-sized workloads

    @property
    def small_files(self) -> int:
        return self.top_dirs * self.sub_dirs * self.files_per_dir

    @property
    def wide_entries(self) -> int:
        return self.wide_bottom + self.wide_top - self.wide_overlap

    def as_dict(self) -> dict:
        return asdict(self)


FULL = Scale(
    name="full",
    top_dirs=20,
    sub_dirs=10,
    files_per_dir=100,
    seq_bytes=1024 * MiB,
    copyup_bytes=256 * MiB,
    extra_big=2,
    wide_bottom=6000,
    wide_top=5000,
    wide_overlap=1000,
    creates=10_000,
    unlinks=5_000,
    write_bytes=1024 * MiB,
    random_reads=4000,
    reps=5,
    heavy_reps=3,
)

QUICK = Scale(
    name="quick",
    top_dirs=5,
    sub_dirs=4,
    files_per_dir=50,
    seq_bytes=64 * MiB,
    copyup_bytes=32 * MiB,
    extra_big=1,
    wide_bottom=600,
    wide_top=500,
    wide_overlap=100,
    creates=500,
    unlinks=250,
    write_bytes=64 * MiB,
    random_reads=300,
    reps=2,
    heavy_reps=2,
)

TINY = Scale(
    name="tiny",
    top_dirs=8,
    sub_dirs=2,
    files_per_dir=4,
    seq_bytes=1 * MiB,
    copyup_bytes=MiB // 2,
    extra_big=1,
    wide_bottom=30,
    wide_top=20,
    wide_overlap=5,
    creates=10,
    unlinks=8,
    write_bytes=MiB,
    random_reads=10,
    reps=1,
    heavy_reps=1,
)

SCALES = {s.name: s for s in (FULL, QUICK, TINY)}
