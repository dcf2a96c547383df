"""The Linux plumbing modules, one copy each (docs/architecture.md): the mount table, process
liveness, user-namespace id maps, the C library. Each is used everywhere it is needed; the
static test below keeps it that way for the mount table."""

from __future__ import annotations

import ast
import ctypes
import importlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from unionfs import idmaps, libc, mountinfo, procs
from unionfs.trees import remove_tree

REPO = Path(__file__).resolve().parents[2]

SAMPLE = (
    "36 35 98:0 /mnt1 /mnt/parent rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n"
    "37 36 0:52 / /a\\040b\\011c\\012d\\134e rw shared:7 master:2 - tmpfs my\\040src rw,size=4k\n"
    "38 36 0:53 / /plain rw - fuse.pyunion pyunion rw,user_id=0\n"
    "garbage line\n"
    "39 36 0:54 / /no-super rw - proc proc\n"
)


def test_parse_fields_optional_tags_and_octal_escapes():
    a, b, c, d = mountinfo.parse(SAMPLE)
    assert (a.mount_id, a.parent_id, a.dev, a.root) == (36, 35, (98, 0), "/mnt1")
    assert (a.mountpoint, a.fstype, a.source) == ("/mnt/parent", "ext3", "/dev/root")
    assert (a.options, a.super_options) == ("rw,noatime", "rw,errors=continue")
    # any number of optional fields before the separator; the kernel's four escapes
    assert b.mountpoint == "/a b\tc\nd\\e"
    assert (b.fstype, b.source, b.super_options) == ("tmpfs", "my src", "rw,size=4k")
    assert (c.fstype, c.st_dev) == ("fuse.pyunion", os.makedev(0, 53))
    assert mountinfo.fuse_connection(c) == str(os.makedev(0, 53))
    assert mountinfo.fuse_connection(a) is None
    assert d.super_options == ""


def test_unescape_only_octal_triplets():
    assert mountinfo.unescape("a\\040b") == "a b"
    assert mountinfo.unescape("\\134040") == "\\040"     # an escaped backslash, then text
    assert mountinfo.unescape("a\\04") == "a\\04"          # not a triplet: left alone


@pytest.mark.root   # mounts a tmpfs
def test_real_mount_with_hostile_name_is_found(tmp_path):
    """A mount point whose name holds a space, tab, newline, backslash and a byte that is not
    UTF-8 is read back from the kernel's table as the path os functions take."""
    name = os.fsdecode(b"m \t\n\\x\xff")
    mnt = tmp_path / name
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "pyunion test", str(mnt)],
                   check=True, timeout=30)
    try:
        entry = mountinfo.top_mount(str(mnt))
        assert entry is not None
        assert (entry.fstype, entry.source) == ("tmpfs", "pyunion test")
        assert mountinfo.mount_containing(str(mnt / "sub" / "file")) == str(mnt)
        assert mountinfo.mount_point_path(str(mnt)) == str(mnt)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False, timeout=30)
    assert mountinfo.top_mount(str(mnt)) is None


def _reads_mountinfo(tree: ast.AST) -> list[int]:
    """Lines that open a mountinfo file in this process: open()/Path()/os.open() of a path
    naming one (a shell command run in a container that cats its own is not a parser here)."""
    def names_it(arg: ast.AST) -> bool:
        return any(isinstance(n, ast.Constant) and isinstance(n.value, str)
                   and "mountinfo" in n.value for n in ast.walk(arg))

    return [n.lineno for name, n in _calls(tree)
            if name in ("open", "Path", "PurePath", "read_text", "read_bytes")
            and any(names_it(a) for a in n.args)]


def _calls(tree: ast.AST):
    """(called name, call node) of every call in TREE: `f(...)` and `x.f(...)` are both f."""
    for n in ast.walk(tree):
        if isinstance(n, ast.Call):
            f = n.func
            yield (f.id if isinstance(f, ast.Name) else
                   f.attr if isinstance(f, ast.Attribute) else ""), n


def test_mountinfo_is_parsed_in_one_place():
    """Only unionfs/mountinfo.py opens a mountinfo file; everything else in the product, the
    benchmarks and the tests' own helpers asks it (a container's view, read from inside it by
    `cat /proc/self/mountinfo`, is a shell command, not a parser)."""
    found = _scan(("pyunion", "unionfs", "snapshotter", "bench", "tests"), _reads_mountinfo)
    assert set(found) == {"unionfs/mountinfo.py"}, found


def _scan(packages: tuple[str, ...], finder) -> dict[str, list[int]]:
    """file -> lines FINDER reports, for every module of PACKAGES where it reports any."""
    found = {}
    for pkg in packages:
        for path in (REPO / pkg).rglob("*.py"):
            lines = finder(ast.parse(path.read_text(), str(path)))
            if lines:
                found[str(path.relative_to(REPO))] = lines
    return found


def test_the_static_check_sees_a_second_parser():
    tree = ast.parse('"""reads /proc/self/mountinfo"""\n'
                     'def f():\n    return open("/proc/self/mountinfo").read()\n'
                     'def g(pid):\n    return Path(f"/proc/{pid}/mountinfo").read_text()\n'
                     'CMD = ["sh", "-c", "cat /proc/self/mountinfo"]\n')
    assert _reads_mountinfo(tree) == [3, 5]


def test_process_liveness_pid_and_start_time():
    p = subprocess.Popen(["sleep", "30"])
    try:
        start = procs.start_time(p.pid)
        assert start is not None and start >= procs.start_time(os.getpid())
        assert procs.alive(p.pid, start) and procs.alive(p.pid, None)
        assert not procs.alive(p.pid, start + 1)            # the pid reused by another process
        assert procs.state(p.pid) in ("S", "R")
        p.kill()
        deadline = time.monotonic() + 10
        while procs.state(p.pid) != "Z" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert procs.state(p.pid) == "Z"                      # exited, not yet reaped
        assert procs.start_time(p.pid) is None
        assert not procs.alive(p.pid, start) and not procs.alive(p.pid, None)
    finally:
        p.kill()
        p.wait(timeout=10)
    assert procs.state(p.pid) is None and procs.stat_fields(p.pid) is None


def test_process_name_with_parentheses_and_spaces():
    """/proc/PID/stat's command name may hold ") " itself: fields are taken after the last ')'."""
    code = "import ctypes,time; ctypes.CDLL(None).prctl(15, b'x) S 1 (y', 0, 0, 0); time.sleep(30)"
    p = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 10
        while b"x) S 1 (y" not in Path(f"/proc/{p.pid}/stat").read_bytes():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        fields = procs.stat_fields(p.pid)
        assert fields is not None and fields[0] in ("S", "R")
        assert int(fields[1]) == os.getpid()                  # ppid: the fields line up
        assert procs.alive(p.pid, procs.start_time(p.pid))
    finally:
        p.kill()
        p.wait(timeout=10)


def test_id_maps():
    rows = [(0, 1000, 1), (1, 100000, 65536)]
    assert idmaps.to_host(0, rows) == 1000
    assert idmaps.to_host(1, rows) == 100000
    assert idmaps.to_host(65536, rows) == 165535
    assert idmaps.to_host(65537, rows) == 65537          # unmapped: itself
    assert idmaps.to_host(5, None) == 5
    assert idmaps.read("uid") == [idmaps.WHOLE] or os.geteuid() != 0 or not idmaps.read("uid")
    assert idmaps.whole_id_space("uid") == (idmaps.read("uid") in (None, [idmaps.WHOLE]))
    assert idmaps.chown_out_of_reach() == (os.geteuid() != 0 or not idmaps.whole_id_space())


def test_id_maps_inside_a_user_namespace():
    """Root of a user namespace mapping one id is not the initial namespace's root."""
    code = ("from unionfs import idmaps, registry; import os; "
            "print(idmaps.whole_id_space(), idmaps.chown_out_of_reach(), idmaps.read('uid'), "
            "registry._host_uid())")
    r = subprocess.run(["unshare", "--user", "--map-root-user", sys.executable, "-c", code],
                       capture_output=True, text=True, timeout=60, cwd=REPO, check=False)
    if r.returncode != 0 and "unshare" in r.stderr:
        pytest.skip(f"no user namespaces here: {r.stderr.strip()}")
    assert r.returncode == 0, r.stderr
    uid = os.getuid()
    assert r.stdout.split("[")[0].split() == ["False", "True"]   # partial map: record owners
    assert f"[(0, {uid}, 1)]" in r.stdout
    assert r.stdout.split()[-1] == str(uid)


def test_libc_is_loaded_once_for_every_caller():
    from snapshotter.runtime import syscalls
    fuse_mount = importlib.import_module("unionfs.transport.mount")  # the package shadows it
    assert libc.handle() is libc.handle()
    assert syscalls._libc is libc.handle()
    # the FUSE mount's prototypes are declared on the one handle, where every caller sees them
    assert fuse_mount.libc.handle() is libc.handle()
    assert libc.handle().mount.argtypes[3] is ctypes.c_ulong


_LOADERS = {"CDLL", "PyDLL", "LoadLibrary", "find_library", "dlopen"}


def _loads_libc(tree: ast.AST) -> list[int]:
    """Lines that load a shared library other than by a literal name that is not the C library:
    ctypes.CDLL(None), CDLL("libc.so.6"), CDLL(find_library("c")), cdll.LoadLibrary(...), ...
    (libseccomp by its soname is another library, not a second libc loader)."""
    found = []
    for name, n in _calls(tree):
        if name not in _LOADERS:
            continue
        arg = n.args[0] if n.args else None
        literal = isinstance(arg, ast.Constant) and isinstance(arg.value, str)
        if not literal or arg.value in ("c", "libc") or arg.value.startswith("libc."):
            found.append(n.lineno)
    return found


def test_libc_is_loaded_in_one_place():
    """Only unionfs/libc.py loads the C library (once, by soname: find_library runs ldconfig);
    every other ctypes caller takes `libc.handle()`, so argtypes and errno handling are the
    same for all (unionfs/transport/mount.py loaded its own through find_library)."""
    found = _scan(("pyunion", "unionfs", "snapshotter", "bench"), _loads_libc)
    assert set(found) == {"unionfs/libc.py"}, found


def test_the_libc_scan_sees_every_way_of_loading_it():
    code = ("import ctypes, ctypes.util\nfrom ctypes import CDLL\n"
            "ctypes.CDLL(None)\nCDLL('libc.so.6')\nctypes.CDLL(ctypes.util.find_library('c'))\n"
            "ctypes.cdll.LoadLibrary(name)\nctypes.CDLL('libseccomp.so.2')\n")
    assert sorted(_loads_libc(ast.parse(code))) == [3, 4, 5, 5, 6]


TREE_SCRIPT = """
import os, sys
from unionfs.trees import remove_tree
base = sys.argv[1]
t = os.path.join(base, "t")
os.makedirs(t + "/ro/inner")
open(t + "/ro/inner/f", "w").close()
open(t + "/ro/g", "w").close()
os.makedirs(t + "/none/x")
open(t + "/none/x/f", "w").close()
os.symlink(base + "/keep", t + "/link")           # removed, never followed
deep = t + "/deep"
os.mkdir(deep)
fd = os.open(deep, os.O_RDONLY)
for _ in range(1200):                              # deeper than Python's recursion limit
    os.mkdir("d", dir_fd=fd)
    nfd = os.open("d", os.O_RDONLY, dir_fd=fd)
    os.close(fd)
    fd = nfd
os.close(fd)
os.chmod(t + "/ro/inner", 0o555)
os.chmod(t + "/ro", 0o555)
os.chmod(t + "/none/x", 0o000)
os.chmod(t + "/none", 0o000)
remove_tree(t)
print(os.path.exists(t), os.path.exists(base + "/keep"))
"""


@pytest.mark.root   # runs the removal as another user (setpriv)
def test_remove_tree_as_a_user_with_unwritable_dirs_deep_chains_and_symlinks():
    """As an ordinary user a tree with `dr-xr-xr-x` and `d---------` directories (as layers
    hold) is removed; a symlink is removed, not followed; 1200 levels do not recurse."""
    base = Path(tempfile.mkdtemp(prefix="pyunion-trees-"))   # pytest's tmp is root's, 0700
    try:
        (base / "keep").write_text("outside the tree\n")
        os.chown(base, 65534, 65534)
        os.chown(base / "keep", 65534, 65534)
        r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                            sys.executable, "-c", TREE_SCRIPT, str(base)],
                           capture_output=True, text=True, timeout=120, cwd=REPO, check=False)
    finally:
        remove_tree(base, ignore_errors=True)   # shutil.rmtree recurses: 1200 levels break it
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "True"]


def test_remove_tree_of_a_file_a_symlink_and_nothing(tmp_path):
    (tmp_path / "f").write_text("x")
    os.symlink(tmp_path / "f", tmp_path / "s")
    remove_tree(tmp_path / "s")
    assert (tmp_path / "f").exists() and not (tmp_path / "s").is_symlink()
    remove_tree(tmp_path / "f")
    remove_tree(tmp_path / "missing")
    assert not (tmp_path / "f").exists()
