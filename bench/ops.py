"""The timed operations. Each returns (seconds, check): the wall time of the operation alone, and
a value the harness compares with the data plan (bytes read, entries seen, files made, ...).

The runner calls them in-process under a watchdog; `python -m bench.ops OP JSON_KWARGS` runs one
by hand, e.g. to poke at a mount while debugging.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time

CHUNK = 1 << 20
PAGE = 4096


def _run(argv: list[str], cwd: str | None = None) -> subprocess.CompletedProcess:
    """Run a tool; a failure (or anything on stderr) becomes an OSError with its first line."""
    r = subprocess.run(argv, cwd=cwd, capture_output=True, check=False)
    err = r.stderr.decode(errors="replace").strip()
    if r.returncode != 0 or err:
        first = err.splitlines()[0] if err else f"exit status {r.returncode}"
        raise OSError(f"{argv[0]}: {first}")
    return r


def seq_read(path: str) -> tuple[float, int]:
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    total = 0
    t0 = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    try:
        while n := os.readv(fd, [view]):
            total += n
    finally:
        os.close(fd)
    return time.perf_counter() - t0, total


def rand_read(path: str, count: int, seed: int) -> tuple[float, int]:
    size = os.stat(path).st_size
    rng = random.Random(seed)
    offsets = [rng.randrange(0, max(1, size // PAGE)) * PAGE for _ in range(count)]
    total = 0
    t0 = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    try:
        for off in offsets:
            total += len(os.pread(fd, PAGE, off))
    finally:
        os.close(fd)
    return time.perf_counter() - t0, total


def walk(root: str) -> tuple[float, int]:
    """`find -printf %s` lstat()s every entry, like `ls -lR` without the formatting cost."""
    t0 = time.perf_counter()
    r = _run(["find", root, "-printf", "%s\n"])
    return time.perf_counter() - t0, r.stdout.count(b"\n")


def list_dir(path: str) -> tuple[float, int]:
    """readdir + lstat of each entry: what `ls -l` asks of the filesystem."""
    t0 = time.perf_counter()
    names = os.listdir(path)
    for name in names:
        os.lstat(os.path.join(path, name))
    return time.perf_counter() - t0, len(names)


def create(dirpath: str, count: int) -> tuple[float, int]:
    data = b"x" * PAGE
    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY
    t0 = time.perf_counter()
    os.mkdir(dirpath)
    for i in range(count):
        fd = os.open(os.path.join(dirpath, f"c{i:06d}"), flags, 0o644)
        os.write(fd, data)
        os.close(fd)
    return time.perf_counter() - t0, count


def unlink(root: str, list_file: str) -> tuple[float, int]:
    with open(list_file) as f:
        paths = [os.path.join(root, p) for p in f.read().split("\n") if p]
    t0 = time.perf_counter()
    for p in paths:
        os.unlink(p)
    return time.perf_counter() - t0, len(paths)


def seq_write(path: str, size: int) -> tuple[float, int]:
    block = bytes(range(256)) * (CHUNK // 256)
    left = size
    t0 = time.perf_counter()
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    try:
        while left:
            n = min(left, CHUNK)
            left -= os.write(fd, block[:n] if n < CHUNK else block)
        os.fsync(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - t0, size


def append_byte(path: str) -> tuple[float, int]:
    """Copy-up latency: the first write to a lower file copies all of it to the upper."""
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, b"!")
    finally:
        os.close(fd)
    return time.perf_counter() - t0, os.stat(path).st_size


def shell_count(cmd: str, cwd: str) -> tuple[float, int]:
    """Run a shell pipeline whose last stage prints a number (a count or a byte total)."""
    t0 = time.perf_counter()
    r = _run(["sh", "-c", cmd], cwd=cwd)
    elapsed = time.perf_counter() - t0
    return elapsed, int(r.stdout.split()[-1])


def mount_usable(argv: list[str], target: str, probe: str) -> tuple[float, int]:
    """From running the mount command until a file inside can be stat()ed and the root listed."""
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True, timeout=120)
    deadline = t0 + 60
    while not os.path.exists(os.path.join(target, probe)):
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{probe} did not appear under {target}")
        time.sleep(0.001)
    n = len(os.listdir(target))
    return time.perf_counter() - t0, n


OPS = {
    f.__name__: f
    for f in (
        seq_read,
        rand_read,
        walk,
        list_dir,
        create,
        unlink,
        seq_write,
        append_byte,
        shell_count,
        mount_usable,
    )
}


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in OPS:
        print(f"usage: python -m bench.ops {{{','.join(OPS)}}} JSON_KWARGS", file=sys.stderr)
        return 2
    try:
        seconds, check = OPS[argv[0]](**json.loads(argv[1]))
    except (OSError, subprocess.SubprocessError, ValueError) as e:
        print(f"{argv[0]}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(json.dumps({"seconds": seconds, "check": check}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
