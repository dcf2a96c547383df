"""linux.seccomp compiled with libseccomp (Debian's libseccomp2) through a thin ctypes layer.

`validate` is pure (spec.py calls it); `compile` builds a libseccomp filter context from the
profile, as runc's libcontainer/seccomp does with libseccomp-golang: unknown syscall names are
skipped (an older kernel/libseccomp may not know them), a rule whose action equals the default
action is skipped (libseccomp refuses it), several comparisons on one argument index become one
rule per comparison (libseccomp cannot AND two comparisons of one argument), SCMP_ACT_ERRNO and
SCMP_ACT_TRACE without errnoRet return EPERM. The no_new_privs attribute of libseccomp is cleared:
the runtime sets no_new_privs itself from process.noNewPrivileges. `Filter.load` is the last
thing the init does before execve (or, without noNewPrivileges, before it drops capabilities,
because loading a filter then needs CAP_SYS_ADMIN), as runc does.

The library is opened when this module is imported: the init imports it before pivot_root.
"""

from __future__ import annotations

import ctypes
import errno
import os
from typing import Any

from snapshotter.runtime.errors import ContainerError

ACTIONS = ("SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_TRAP",
           "SCMP_ACT_ERRNO", "SCMP_ACT_TRACE", "SCMP_ACT_ALLOW", "SCMP_ACT_LOG",
           "SCMP_ACT_NOTIFY")
OPERATORS = {"SCMP_CMP_NE": 1, "SCMP_CMP_LT": 2, "SCMP_CMP_LE": 3, "SCMP_CMP_EQ": 4,
             "SCMP_CMP_GE": 5, "SCMP_CMP_GT": 6, "SCMP_CMP_MASKED_EQ": 7}
# The flags runc 1.1.5 knows; TSYNC is what libseccomp does anyway for one thread.
FLAGS = ("SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW")
ARCHES = ("x86", "x86_64", "x32", "arm", "aarch64", "mips", "mips64", "mips64n32", "mipsel",
          "mipsel64", "mipsel64n32", "ppc", "ppc64", "ppc64le", "s390", "s390x", "riscv64",
          "parisc", "parisc64", "loongarch64", "m68k")

_ACT_KILL_PROCESS = 0x80000000
_ACT_KILL_THREAD = 0x00000000
_ACT_TRAP = 0x00030000
_ACT_ERRNO = 0x00050000
_ACT_TRACE = 0x7FF00000
_ACT_LOG = 0x7FFC0000
_ACT_ALLOW = 0x7FFF0000
# enum scmp_filter_attr
_ATTR_CTL_NNP = 3
_ATTR_CTL_LOG = 6
_ATTR_CTL_SSB = 7
_NR_ERROR = -1  # __NR_SCMP_ERROR


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


def _open() -> ctypes.CDLL | None:
    try:
        lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    except OSError:
        return None
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
    lib.seccomp_arch_resolve_name.restype = ctypes.c_uint32
    lib.seccomp_arch_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_arch_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                           ctypes.c_uint, ctypes.POINTER(_ArgCmp)]
    return lib


_lib = _open()


def available() -> bool:
    return _lib is not None


def _where(i: int | None) -> str:
    return "linux.seccomp" if i is None else f"linux.seccomp.syscalls[{i}]"


def _check_action(action: Any, where: str) -> None:
    if action not in ACTIONS:
        raise ContainerError(f"config.json: {where}: unknown seccomp action {action!r}")
    if action == "SCMP_ACT_NOTIFY":
        raise ContainerError(f"config.json: {where}: SCMP_ACT_NOTIFY (a seccomp listener) is "
                             "not supported by pyunion-runtime")


def _is_uint(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def validate(profile: Any) -> None:
    """Refuse a malformed profile or one asking for what we cannot do (no libseccomp here)."""
    if not isinstance(profile, dict):
        raise ContainerError("config.json: linux.seccomp has the wrong type")
    _check_action(profile.get("defaultAction"), "linux.seccomp.defaultAction")
    if profile.get("listenerPath") or profile.get("listenerMetadata"):
        raise ContainerError("config.json: linux.seccomp.listenerPath: seccomp notification "
                             "listeners are not supported by pyunion-runtime")
    for key in ("defaultErrnoRet",):
        if key in profile and not _is_uint(profile[key]):
            raise ContainerError(f"config.json: linux.seccomp.{key} has the wrong type")
    for arch in profile.get("architectures") or []:
        if not isinstance(arch, str) or not arch.startswith("SCMP_ARCH_") \
                or arch[10:].lower() not in ARCHES:
            raise ContainerError(f"config.json: linux.seccomp: unknown architecture {arch!r}")
    for flag in profile.get("flags") or []:
        if flag not in FLAGS:
            raise ContainerError(f"config.json: linux.seccomp: flag {flag!r} is not supported")
    syscalls = profile.get("syscalls") or []
    if not isinstance(syscalls, list):
        raise ContainerError("config.json: linux.seccomp.syscalls has the wrong type")
    for i, rule in enumerate(syscalls):
        where = _where(i)
        if not isinstance(rule, dict):
            raise ContainerError(f"config.json: {where} has the wrong type")
        names = rule.get("names")
        if not isinstance(names, list) or not names or not all(isinstance(n, str) and n
                                                               for n in names):
            raise ContainerError(f"config.json: {where}.names must be a non-empty list")
        _check_action(rule.get("action"), where)
        if "errnoRet" in rule and not _is_uint(rule["errnoRet"]):
            raise ContainerError(f"config.json: {where}.errnoRet has the wrong type")
        for arg in rule.get("args") or []:
            if not isinstance(arg, dict) or not _is_uint(arg.get("index")) or arg["index"] > 5:
                raise ContainerError(f"config.json: {where}.args: index must be 0..5")
            if arg.get("op") not in OPERATORS:
                raise ContainerError(f"config.json: {where}.args: unknown operator "
                                     f"{arg.get('op')!r}")
            for key in ("value", "valueTwo"):
                if key in arg and not _is_uint(arg[key]):
                    raise ContainerError(f"config.json: {where}.args.{key} has the wrong type")
    if not available():
        raise ContainerError("linux.seccomp: libseccomp.so.2 is not installed on this host")


def action_value(action: str, errno_ret: int | None) -> int:
    """The libseccomp action word for a config action (runc's getAction)."""
    if action in ("SCMP_ACT_KILL", "SCMP_ACT_KILL_THREAD"):
        return _ACT_KILL_THREAD
    if action == "SCMP_ACT_KILL_PROCESS":
        return _ACT_KILL_PROCESS
    if action == "SCMP_ACT_TRAP":
        return _ACT_TRAP
    if action == "SCMP_ACT_ERRNO":
        return _ACT_ERRNO | ((errno.EPERM if errno_ret is None else errno_ret) & 0xFFFF)
    if action == "SCMP_ACT_TRACE":
        return _ACT_TRACE | ((errno.EPERM if errno_ret is None else errno_ret) & 0xFFFF)
    if action == "SCMP_ACT_LOG":
        return _ACT_LOG
    if action == "SCMP_ACT_ALLOW":
        return _ACT_ALLOW
    raise ContainerError(f"seccomp action {action} is not supported")


class Filter:
    """A compiled libseccomp context; `load` installs it in the calling thread."""

    def __init__(self, ctx: int) -> None:
        self.ctx = ctx
        self.skipped: list[str] = []  # names this libseccomp does not know

    def load(self) -> None:
        assert _lib is not None
        ret = _lib.seccomp_load(self.ctx)
        if ret < 0:
            raise OSError(-ret, f"loading the seccomp filter: {errno.errorcode.get(-ret, -ret)}")

    def release(self) -> None:
        if self.ctx and _lib is not None:
            _lib.seccomp_release(self.ctx)
        self.ctx = 0


def _rc(ret: int, what: str) -> None:
    if ret < 0:
        raise ContainerError(f"seccomp: {what}: {os.strerror(-ret)}")


def compile(profile: dict[str, Any]) -> Filter:
    """Build the filter of a validated profile (not loaded yet)."""
    validate(profile)
    assert _lib is not None
    default = action_value(profile["defaultAction"], profile.get("defaultErrnoRet"))
    ctx = _lib.seccomp_init(default)
    if not ctx:
        raise ContainerError("seccomp: seccomp_init failed")
    filt = Filter(ctx)
    try:
        _rc(_lib.seccomp_attr_set(ctx, _ATTR_CTL_NNP, 0), "clearing the no_new_privs attribute")
        for arch in profile.get("architectures") or []:
            token = _lib.seccomp_arch_resolve_name(arch[10:].lower().encode())
            if token == 0:
                raise ContainerError(f"seccomp: architecture {arch} unknown to libseccomp")
            ret = _lib.seccomp_arch_add(ctx, token)
            if ret < 0 and ret != -errno.EEXIST:
                _rc(ret, f"adding architecture {arch}")
        flags = profile.get("flags") or []
        if "SECCOMP_FILTER_FLAG_LOG" in flags:
            _rc(_lib.seccomp_attr_set(ctx, _ATTR_CTL_LOG, 1), "flag SECCOMP_FILTER_FLAG_LOG")
        if "SECCOMP_FILTER_FLAG_SPEC_ALLOW" in flags:
            _rc(_lib.seccomp_attr_set(ctx, _ATTR_CTL_SSB, 1),
                "flag SECCOMP_FILTER_FLAG_SPEC_ALLOW")
        for rule in profile.get("syscalls") or []:
            act = action_value(rule["action"], rule.get("errnoRet"))
            if act == default:
                continue
            conds = [(a["index"], OPERATORS[a["op"]], a.get("value", 0), a.get("valueTwo", 0))
                     for a in rule.get("args") or []]
            indexes = [c[0] for c in conds]
            groups = ([[c] for c in conds] if len(set(indexes)) < len(indexes) else [conds])
            for name in rule["names"]:
                nr = _lib.seccomp_syscall_resolve_name(name.encode())
                if nr == _NR_ERROR:
                    filt.skipped.append(name)
                    continue
                for group in groups:
                    arr = (_ArgCmp * max(1, len(group)))(*[_ArgCmp(*c) for c in group])
                    _rc(_lib.seccomp_rule_add_array(ctx, act, nr, len(group), arr),
                        f"adding a rule for {name}")
    except BaseException:
        filt.release()
        raise
    return filt
