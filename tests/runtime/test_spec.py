"""config.json validation and translation: pure, no containers."""

from __future__ import annotations

import copy
import json

import pytest

from snapshotter.runtime import spec
from snapshotter.runtime import syscalls as sc
from snapshotter.runtime.cli import main as cli_main
from snapshotter.runtime.errors import ContainerError
from snapshotter.runtime.lifecycle import parse_signal


def good() -> dict:
    c = copy.deepcopy(spec.default_spec())
    c["process"]["args"] = ["true"]
    return c


def test_default_spec_is_valid_and_unknown_fields_ignored():
    c = good()
    c["someExtension"] = {"x": 1}
    c["linux"]["futureThing"] = True
    spec.validate(c)


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.pop("process"), "process is required"),
    (lambda c: c["process"].update(args=[]), "args must not be empty"),
    (lambda c: c["process"].update(cwd="rel"), "cwd property must not be empty"),
    (lambda c: c["process"].update(terminal="yes"), "process.terminal has the wrong type"),
    (lambda c: c["root"].pop("path"), "root.path is required"),
    (lambda c: c["linux"]["namespaces"].append({"type": "pid"}), "duplicated ns"),
    (lambda c: c["linux"]["namespaces"].append({"type": "time"}), "'time' is not supported"),
    (lambda c: c["linux"].update(namespaces=[{"type": "pid"}]), "mount namespace is required"),
    (lambda c: c["linux"]["namespaces"].append({"type": "user"}), "no uid mappings"),
    (lambda c: c["linux"].update(namespaces=[{"type": "mount"}]), "private UTS namespace"),
    (lambda c: c["hooks"] if c.update(hooks={"prestart": [{"path": "rel"}]}) else None,
     "must be absolute"),
    (lambda c: c.update(hooks={"poststop": [{"path": "/x", "timeout": 0}]}), "must be > 0"),
    (lambda c: c["process"]["rlimits"].append({"type": "NOFILE", "hard": 1, "soft": 1}),
     "bad rlimit"),
    (lambda c: c["linux"].update(sysctl={"net/../x": "1"}), "bad sysctl"),
    (lambda c: c["mounts"].append({"destination": "rel", "type": "tmpfs"}), "absolute path"),
    (lambda c: c["process"]["user"].update(uid="0"), "wrong type"),
    (lambda c: c["mounts"].append({"destination": "/x", "type": "bind", "source": "/tmp",
                                   "options": ["rbind", "rro"]}), "recursive mount attribute"),
    (lambda c: c.update(ociVersion="2.0.0"), "unsupported ociVersion"),
])
def test_invalid(edit, message):
    c = good()
    edit(c)
    with pytest.raises(ContainerError, match=message):
        spec.validate(c)


def test_mount_options():
    o = spec.parse_mount_options(["rbind", "ro", "nosuid", "rprivate", "mode=755", "size=1m",
                                  "rw", "exec", "noexec"])
    assert o.flags == sc.MS_BIND | sc.MS_REC | sc.MS_NOSUID | sc.MS_NOEXEC
    assert o.propagation == [sc.MS_PRIVATE | sc.MS_REC]
    assert o.data == "mode=755,size=1m"
    assert o.is_bind


def test_capabilities_and_ids():
    assert spec.capability_mask(["CAP_CHOWN", "CAP_KILL"], "x") == (1 << 0) | (1 << 5)
    assert spec.CAP_NUMBERS["CAP_SYS_ADMIN"] == 21
    assert spec.valid_id("a-b_c.d+1") and not spec.valid_id("..") and not spec.valid_id("a/b")
    assert not spec.valid_id("a b") and not spec.valid_id("")
    c = good()
    c["linux"]["namespaces"].append({"type": "user"})
    c["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 1000}]
    c["linux"]["gidMappings"] = [{"containerID": 0, "hostID": 200000, "size": 1000}]
    c["process"]["user"] = {"uid": 5, "gid": 7}
    assert spec.host_ids(c) == (100005, 200007)


def test_signals():
    assert parse_signal("TERM") == parse_signal("SIGTERM") == parse_signal("15") == 15
    assert parse_signal("kill") == 9
    for bad in ("NOPE", "0", "999"):
        with pytest.raises(ContainerError, match="unknown signal"):
            parse_signal(bad)


def test_spec_command(tmp_path, capsys):
    assert cli_main(["spec", "--bundle", str(tmp_path)]) == 0
    c = json.loads((tmp_path / "config.json").read_text())
    spec.validate(c)
    assert c["process"]["terminal"] is False
    assert cli_main(["spec", "--bundle", str(tmp_path)]) == 1
    assert "exists. Remove it first" in capsys.readouterr().err


def test_usage_errors(capsys, tmp_path):
    assert cli_main(["--root", str(tmp_path), "start"]) == 1
    assert cli_main(["--root", str(tmp_path), "frobnicate"]) == 3
    assert cli_main(["--log-format", "xml", "list"]) == 1
    log = tmp_path / "log.json"
    rc = cli_main(["--root", str(tmp_path), "--log", str(log), "--log-format", "json",
                   "state", "x"])
    assert rc == 1
    entry = json.loads(log.read_text().splitlines()[-1])
    assert entry["level"] == "error" and entry["msg"] == "container does not exist"
    assert capsys.readouterr().err.splitlines()[-1] == "container does not exist"
