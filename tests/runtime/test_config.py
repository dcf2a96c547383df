"""config.json as typed objects (snapshotter/runtime/config.py): what a file parses to, round
trips through JSON (state.json keeps the raw config), and validation before parsing."""

from __future__ import annotations

import copy
import json

import pytest

from snapshotter.runtime import spec
from snapshotter.runtime.config import Capabilities, Config, Process, Rlimit, User
from snapshotter.runtime.errors import ContainerError


def _full() -> dict:
    raw = copy.deepcopy(spec.default_spec())
    raw["process"].update({
        "terminal": True, "consoleSize": {"height": 40, "width": 120},
        "user": {"uid": 1000, "gid": 10, "umask": 0o077, "additionalGids": [5, 6]},
        "env": ["PATH=/bin", "NOEQUALS", "A=b=c"], "cwd": "/home/user", "oomScoreAdj": 100,
    })
    raw["domainname"] = "example.org"
    raw["annotations"] = {"k": "v"}
    raw["hooks"] = {"prestart": [{"path": "/bin/true"}]}
    raw["linux"]["namespaces"].append({"type": "user", "path": "/proc/1/ns/user"})
    return raw


def test_default_spec_parses_to_what_it_says():
    c = Config.parse(spec.default_spec())
    assert (c.root_path, c.root_readonly, c.hostname, c.domainname) == ("rootfs", True, "runc",
                                                                        None)
    p = c.process
    assert p.args == ("sh",) and p.cwd == "/" and not p.terminal and p.no_new_privileges
    assert p.user == User(0, 0, None, ())
    assert p.rlimits == (Rlimit("RLIMIT_NOFILE", 1024, 1024),)
    caps = ("CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE")
    assert p.capabilities == Capabilities(bounding=caps, effective=caps, permitted=caps,
                                          ambient=caps)
    assert p.capabilities.mask("inheritable") == 0
    assert p.capabilities.mask("bounding") == (1 << 29) | (1 << 5) | (1 << 10)
    assert c.namespaces == {t: None for t in ("pid", "network", "ipc", "uts", "mount")}
    assert p.oom_score_adj is None and p.console_size is None


def test_every_typed_field_of_a_full_config():
    c = Config.parse(_full())
    p = c.process
    assert p.terminal and p.console_size == (40, 120) and p.oom_score_adj == 100
    assert p.user == User(1000, 10, 0o077, (5, 6))
    assert p.environ() == {"PATH": "/bin", "A": "b=c"} and p.lookup_path() == "/bin"
    assert c.domainname == "example.org" and c.annotations == {"k": "v"}
    assert c.hooks_of("prestart") == [{"path": "/bin/true"}] and c.hooks_of("poststop") == []
    assert c.namespaces["user"] == "/proc/1/ns/user"
    assert c.rootfs("/b/x") == "/b/x/rootfs"


@pytest.mark.parametrize("raw", [spec.default_spec(), _full()], ids=["default", "full"])
def test_round_trip_through_json(raw):
    c = Config.parse(raw)
    again = Config.parse(json.loads(json.dumps(c.raw)))
    assert again == c
    assert again.raw == raw


def test_no_capabilities_leaves_them_alone():
    raw = spec.default_spec()
    del raw["process"]["capabilities"]
    assert Config.parse(raw).process.capabilities is None


@pytest.mark.parametrize("edit, message", [
    (lambda p: p.update(args=[]), "args must not be empty"),
    (lambda p: p.update(cwd="rel"), "cwd property must not be empty"),
    (lambda p: p["user"].update(uid="0"), "process.user.uid has the wrong type"),
    (lambda p: p.update(capabilities={"bounding": ["CAP_NOPE"]}), "unknown capability"),
])
def test_process_is_validated_before_it_is_parsed(edit, message):
    proc = copy.deepcopy(spec.default_spec()["process"])
    edit(proc)
    with pytest.raises(ContainerError, match=message):
        Process.from_json(proc)
