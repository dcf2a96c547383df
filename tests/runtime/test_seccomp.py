"""linux.seccomp side by side with runc 1.1.5: the same profile, the same errno in the container."""

from __future__ import annotations

import platform

import pytest

from snapshotter.runtime import seccomp, spec
from snapshotter.runtime.errors import ContainerError
from tests.runtime.conftest import needs_busybox, needs_root, needs_runc
from tests.runtime.seccomp_profiles import PODMAN_PROFILE, containerd_default, podman_default
from tests.runtime.test_side_by_side import both

CAPS = ["CAP_KILL", "CAP_NET_BIND_SERVICE"]  # runc's default set without CAP_AUDIT_WRITE
needs_libseccomp = pytest.mark.skipif(not seccomp.available(), reason="libseccomp2 missing")
live = [needs_root, needs_busybox, needs_runc, needs_libseccomp]


def _with(profile, nnp=True):
    def edit(c):
        c["linux"]["seccomp"] = profile
        c["process"]["noNewPrivileges"] = nnp
        for k in c["process"]["capabilities"]:
            c["process"]["capabilities"][k] = list(CAPS)
    return edit


# Each line: the applet, then its exit status; stderr joined in so the errno text shows.
PROBES = ("hostname x 2>&1; echo hostname=$?; busybox swapon /etc/passwd 2>&1; echo swapon=$?; "
          "busybox chroot / true 2>&1; echo chroot=$?; "
          "busybox mount -t tmpfs t /tmp 2>&1; echo mount=$?; id -u")


@pytest.mark.skipif(not PODMAN_PROFILE.exists(), reason="containers-common's profile missing")
@pytest.mark.parametrize("nnp", [True, False])
@pytest.mark.parametrize("marks", [pytest.param(live, marks=live)])   # root: tests/conftest.py
def test_podman_default_profile(runc, pyrt, bundles, nnp, marks):
    for m in marks:
        if m.args and m.args[0]:
            pytest.skip(m.kwargs["reason"])
    res = both(runc, pyrt, bundles, ["sh", "-c", PROBES], _with(podman_default(CAPS), nnp))
    assert res["pyunion"].returncode == 0, res["pyunion"].stderr
    assert res["pyunion"].stdout == res["runc"].stdout
    out = res["pyunion"].stdout
    # Denied by rules (no CAP_SYS_ADMIN, CAP_SYS_CHROOT): their errnoRet, EPERM.
    assert "hostname: sethostname: Operation not permitted" in out
    assert "swapon: /etc/passwd: Operation not permitted" in out
    assert "chroot: can't change root directory to '/': Operation not permitted" in out


@pytest.mark.skipif(not PODMAN_PROFILE.exists(), reason="containers-common's profile missing")
@pytest.mark.parametrize("marks", [pytest.param(live, marks=live)])   # root: tests/conftest.py
def test_podman_profile_default_errno(runc, pyrt, bundles, marks):
    """podman's profile with no rule naming sethostname: the call falls to the default action,
    SCMP_ACT_ERRNO with defaultErrnoRet 38 (ENOSYS); with defaultErrnoRet unset, EPERM."""
    for m in marks:
        if m.args and m.args[0]:
            pytest.skip(m.kwargs["reason"])
    profile = podman_default(CAPS)
    profile["syscalls"] = [r for r in profile["syscalls"] if "sethostname" not in r["names"]]
    assert profile["defaultErrnoRet"] == 38
    res = both(runc, pyrt, bundles, ["sh", "-c", "hostname x"], _with(profile))
    assert res["pyunion"].stderr.endswith("hostname: sethostname: Function not implemented\n")
    assert res["pyunion"].stderr == res["runc"].stderr
    del profile["defaultErrnoRet"]
    res = both(runc, pyrt, bundles, ["sh", "-c", "hostname x"], _with(profile))
    assert res["pyunion"].stderr == res["runc"].stderr
    assert res["pyunion"].stderr.endswith("hostname: sethostname: Operation not permitted\n")


@pytest.mark.skipif(platform.machine() != "x86_64", reason="profile captured on x86_64")
@pytest.mark.parametrize("marks", [pytest.param(live, marks=live)])   # root: tests/conftest.py
def test_containerd_default_profile(runc, pyrt, bundles, marks):
    """containerd's default denies unshare(2) (no CAP_SYS_ADMIN) with its default action,
    SCMP_ACT_ERRNO without defaultErrnoRet: EPERM, though the kernel itself would allow an
    unprivileged user namespace; clone3 gets ENOSYS (glibc then falls back to clone)."""
    for m in marks:
        if m.args and m.args[0]:
            pytest.skip(m.kwargs["reason"])
    profile, caps = containerd_default()

    def edit(c):
        c["linux"]["seccomp"] = profile
        for k in c["process"]["capabilities"]:
            c["process"]["capabilities"][k] = list(caps)
    script = "busybox unshare -U true 2>&1; echo $?; busybox chroot / true; echo chroot=$?"
    res = both(runc, pyrt, bundles, ["sh", "-c", script], edit)
    assert res["pyunion"].stdout == res["runc"].stdout
    assert res["pyunion"].stdout == ("unshare: unshare(0x10000000): Operation not permitted\n1\n"
                                     "chroot=0\n")
    res = both(runc, pyrt, bundles, ["sh", "-c", script], lambda c: None)
    assert res["pyunion"].stdout.startswith("0\n")  # without the profile it is allowed


def _custom():
    return {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [
            {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 42},
            {"names": ["rmdir"], "action": "SCMP_ACT_ERRNO"},
            {"names": ["fchmodat", "chmod", "fchmodat2"], "action": "SCMP_ACT_TRACE"},
            {"names": ["no_such_syscall_at_all"], "action": "SCMP_ACT_ERRNO"},
            {"names": ["getppid"], "action": "SCMP_ACT_LOG"},
            # kill(pid, SIGUSR1) and kill(pid, SIGUSR2) (one index twice: one rule each).
            {"names": ["kill"], "action": "SCMP_ACT_ERRNO", "errnoRet": 11,
             "args": [{"index": 1, "value": 10, "op": "SCMP_CMP_EQ"},
                      {"index": 1, "value": 12, "op": "SCMP_CMP_EQ"}]},
            # umask(m) with m & 0o7 == 0o7 (masked comparison).
            {"names": ["umask"], "action": "SCMP_ACT_KILL_PROCESS",
             "args": [{"index": 0, "value": 7, "valueTwo": 7, "op": "SCMP_CMP_MASKED_EQ"}]},
        ],
    }


CUSTOM_PROBES = ("mkdir /tmp/a 2>&1; rmdir /tmp 2>&1; chmod 600 /etc/passwd 2>&1; "
                 "kill -USR1 $$ 2>&1; kill -USR2 $$ 2>&1; kill -0 $$ && echo kill0 ok; "
                 "umask 022 && echo umask ok; umask 027; echo unreachable")


@pytest.mark.parametrize("marks", [pytest.param(live, marks=live)])   # root: tests/conftest.py
def test_custom_profile_actions_and_args(runc, pyrt, bundles, marks):
    for m in marks:
        if m.args and m.args[0]:
            pytest.skip(m.kwargs["reason"])
    res = both(runc, pyrt, bundles, ["sh", "-c", CUSTOM_PROBES], _with(_custom()))
    assert res["pyunion"].returncode == res["runc"].returncode == 128 + 31  # SIGSYS
    assert res["pyunion"].stdout == res["runc"].stdout
    out = res["pyunion"].stdout
    assert "mkdir: can't create directory '/tmp/a': No message of desired type" in out
    assert "rmdir: '/tmp': Operation not permitted" in out
    assert "chmod: /etc/passwd: Function not implemented" in out  # TRACE with no tracer
    assert out.count("Resource temporarily unavailable") == 2
    assert "kill0 ok" in out and "umask ok" in out and "unreachable" not in out


@pytest.mark.parametrize("change, message", [
    (lambda p: p.update(defaultAction="SCMP_ACT_NOTIFY"), "SCMP_ACT_NOTIFY"),
    (lambda p: p.update(listenerPath="/run/l.sock"), "listenerPath"),
    (lambda p: p["syscalls"][0].update(action="SCMP_ACT_BOGUS"), "unknown seccomp action"),
    (lambda p: p["syscalls"][0].update(args=[{"index": 6, "op": "SCMP_CMP_EQ"}]), "0..5"),
    (lambda p: p["syscalls"][0].update(args=[{"index": 0, "op": "SCMP_CMP_XX"}]), "operator"),
    (lambda p: p.update(architectures=["SCMP_ARCH_VAX"]), "unknown architecture"),
    (lambda p: p.update(flags=["SECCOMP_FILTER_FLAG_NEW_LISTENER"]), "is not supported"),
    (lambda p: p["syscalls"][0].update(names=[]), "names must be"),
    (lambda p: p["syscalls"][0].update(errnoRet=-1), "errnoRet"),
])
def test_bad_profiles_are_refused(change, message):
    config = spec.default_spec()
    profile = _custom()
    change(profile)
    config["linux"]["seccomp"] = profile
    with pytest.raises(ContainerError, match=message):
        spec.validate(config)


@pytest.mark.parametrize("marks", [pytest.param(live, marks=live)])   # root: tests/conftest.py
def test_flags(runc, pyrt, bundles, marks):
    """Debian's runc 1.1.5 refuses any flag (its libseccomp-golang is too old); we apply LOG and
    SPEC_ALLOW through libseccomp's filter attributes (a documented difference)."""
    for m in marks:
        if m.args and m.args[0]:
            pytest.skip(m.kwargs["reason"])
    profile = _custom()
    profile["flags"] = ["SECCOMP_FILTER_FLAG_SPEC_ALLOW", "SECCOMP_FILTER_FLAG_LOG",
                        "SECCOMP_FILTER_FLAG_TSYNC"]
    res = both(runc, pyrt, bundles, ["sh", "-c", "mkdir /tmp/a"], _with(profile))
    assert "seccomp flags are not yet supported by runc" in res["runc"].stderr
    assert res["pyunion"].returncode == 1
    assert res["pyunion"].stderr == "mkdir: can't create directory '/tmp/a': " \
        "No message of desired type\n"


@needs_libseccomp
def test_compile_skips_unknown_names_and_default_action_rules():
    filt = seccomp.compile(_custom())
    try:
        assert filt.skipped == ["no_such_syscall_at_all"]
    finally:
        filt.release()
    assert seccomp.action_value("SCMP_ACT_ERRNO", None) == 0x50000 | 1
    assert seccomp.action_value("SCMP_ACT_ERRNO", 38) == 0x50000 | 38
    assert seccomp.action_value("SCMP_ACT_KILL", None) == 0
