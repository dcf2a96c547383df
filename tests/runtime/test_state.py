"""state.json as a typed State: round trips, the file's keys, and what a bad file reads as.
Without root or namespaces (the status a live init gives is covered by the lifecycle tests)."""

from __future__ import annotations

import json
import os

import pytest

from snapshotter.runtime import spec
from snapshotter.runtime.config import Config
from snapshotter.runtime.errors import ContainerError
from snapshotter.runtime.state import State, StateDir

# A state.json as the dict-based runtime (71bcdd4) wrote it for a created container.
OLD_CREATED = {
    "id": "c1", "bundle": "/b", "rootfs": "/b/rootfs", "created": "2026-11-30T04:00:00.000000Z",
    "annotations": {"a": "1"}, "config": spec.default_spec(),
    "status": "created", "pid": 4242, "pid_start": 123456,
    "cgroup": {"paths": {"memory": "/sys/fs/cgroup/memory/c1"}, "made": ["memory"]},
}


def _state(**kw) -> State:
    base = {"id": "c1", "bundle": "/b", "rootfs": "/b/rootfs",
            "created": "2026-11-30T04:00:00.000000Z",
            "config": Config.parse(spec.default_spec())}
    return State(**{**base, **kw})


@pytest.mark.parametrize("st", [
    _state(),
    _state(creator=(os.getpid(), 99), annotations={"k": "v"}),
    _state(status="created", pid=7, pid_start=8, cgroup={"paths": {"": "/x"}, "made": [""]}),
], ids=["fresh", "creating", "created"])
def test_round_trip_through_the_file(tmp_path, st):
    sd = StateDir(tmp_path)
    sd.claim(st.id)
    sd.write(st)
    assert sd.read(st.id) == st
    on_disk = json.loads((tmp_path / st.id / "state.json").read_text())
    assert on_disk == st.to_json()
    assert State.from_json(on_disk) == st


def test_the_files_keys_are_the_old_ones(tmp_path):
    """A container created by the dict-based runtime is still read (and written back the same)."""
    st = State.from_json(OLD_CREATED)
    assert (st.pid, st.pid_start, st.status, st.creator) == (4242, 123456, "created", None)
    assert st.to_json() == OLD_CREATED
    creating = {**OLD_CREATED, "status": "creating", "creator": [1, 2], "pid": 0,
                "pid_start": None, "cgroup": None}
    assert State.from_json(creating).creator == (1, 2)
    assert State.from_json(creating).to_json() == creating


@pytest.mark.parametrize("text", [
    "{bad", "[]", "null",
    json.dumps({**OLD_CREATED, "pid": "4242"}),
    json.dumps({**OLD_CREATED, "config": []}),
    json.dumps({**OLD_CREATED, "extra": 1}),
    json.dumps({k: v for k, v in OLD_CREATED.items() if k != "bundle"}),
    json.dumps({**OLD_CREATED, "creator": [1]}),
    json.dumps({**OLD_CREATED, "creator": ["1", 2]}),
    json.dumps({**OLD_CREATED, "config": {"ociVersion": "1.0.2"}}),
])
def test_a_state_file_that_does_not_fit_is_no_container(tmp_path, text):
    sd = StateDir(tmp_path)
    sd.claim("c1")
    (tmp_path / "c1" / "state.json").write_text(text)
    with pytest.raises(ContainerError, match="^container does not exist$"):
        sd.read("c1")


def test_public_state_has_runcs_fields_in_runcs_order(tmp_path):
    sd = StateDir(tmp_path)
    stopped = _state(status="created", pid=0, annotations={"k": "v"})
    out = sd.public(stopped)
    assert list(out) == ["ociVersion", "id", "pid", "status", "bundle", "rootfs", "created",
                         "owner", "annotations"]
    assert (out["status"], out["pid"]) == ("stopped", 0)
    assert "annotations" not in sd.public(_state(status="created"))
