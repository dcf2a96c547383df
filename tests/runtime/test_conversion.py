"""Image config -> config.json (image-spec conversion.md), pure."""

from __future__ import annotations

import pytest

from snapshotter.conversion import ANNOTATION, convert, resolve_user
from snapshotter.errors import InvalidArgument, NotFound
from snapshotter.runtime import spec

PASSWD = "root:x:0:0::/root:/bin/sh\nweb:x:33:33::/var/www:/bin/false\nbad line\n"
GROUP = "root:x:0:\nwww-data:x:33:\nadm:x:4:web,other\nstaff:x:50:web\nempty:x:60:\n"


def image(**cfg):
    return {"architecture": "amd64", "os": "linux", "config": cfg}


def test_args_entrypoint_cmd():
    assert convert(image(Cmd=["sh"]))["process"]["args"] == ["sh"]
    img = image(Entrypoint=["/bin/tini", "--"], Cmd=["sh", "-c", "x"])
    assert convert(img)["process"]["args"] == ["/bin/tini", "--", "sh", "-c", "x"]
    assert convert(img, args=["id"])["process"]["args"] == ["/bin/tini", "--", "id"]
    with pytest.raises(InvalidArgument, match="no command"):
        convert(image())


def test_env_cwd_and_default_path():
    c = convert(image(Cmd=["sh"], Env=["A=1", "B=2"]), env=["B=3", "C=x=y"])
    assert c["process"]["env"] == ["A=1", f"PATH={spec.DEFAULT_PATH}", "B=3", "C=x=y"]
    c = convert(image(Cmd=["sh"], Env=["PATH=/opt/bin"], WorkingDir="/srv"))
    assert c["process"]["env"] == ["PATH=/opt/bin"] and c["process"]["cwd"] == "/srv"
    assert convert(image(Cmd=["sh"]), cwd="/tmp")["process"]["cwd"] == "/tmp"
    assert convert(image(Cmd=["sh"]))["process"]["cwd"] == "/"
    with pytest.raises(InvalidArgument):
        convert(image(Cmd=["sh"]), env=["NOEQUALS"])


@pytest.mark.parametrize("user, want", [
    ("", {"uid": 0, "gid": 0}),
    ("web", {"uid": 33, "gid": 33, "additionalGids": [4, 50]}),
    ("33", {"uid": 33, "gid": 33}),
    ("1234", {"uid": 1234, "gid": 0}),
    ("web:staff", {"uid": 33, "gid": 50}),
    ("web:7", {"uid": 33, "gid": 7}),
    ("5:6", {"uid": 5, "gid": 6}),
])
def test_user(user, want):
    assert resolve_user(user, PASSWD, GROUP) == want
    c = convert(image(Cmd=["sh"], User=user), passwd=PASSWD, group=GROUP)
    assert c["process"]["user"] == want


@pytest.mark.parametrize("user", ["nobody", "web:nogroup"])
def test_unknown_user_or_group_is_an_error(user):
    with pytest.raises(NotFound):
        convert(image(Cmd=["sh"], User=user), passwd=PASSWD, group=GROUP)


def test_user_override_and_no_passwd_file():
    c = convert(image(Cmd=["sh"], User="web"), user="0", passwd=PASSWD, group=GROUP)
    assert c["process"]["user"] == {"uid": 0, "gid": 0}
    with pytest.raises(NotFound):
        resolve_user("web", None, None)


def test_annotations():
    img = image(Cmd=["sh"], StopSignal="SIGQUIT", Labels={"a": "1", ANNOTATION + "os": "x"},
                ExposedPorts={"80/tcp": {}, "443/tcp": {}})
    img["author"] = "me"
    c = convert(img, annotations={"a": "manifest"})
    notes = c["annotations"]
    assert notes[ANNOTATION + "stopSignal"] == "SIGQUIT"
    assert notes[ANNOTATION + "architecture"] == "amd64"
    assert notes[ANNOTATION + "author"] == "me"
    assert notes[ANNOTATION + "exposedPorts"] == "443/tcp,80/tcp"
    assert notes[ANNOTATION + "os"] == "x"  # the label wins over the derived value
    assert notes["a"] == "manifest"  # image annotations are never changed


def test_result_is_a_valid_runtime_config():
    c = convert(image(Cmd=["sh"]), hostname="h1")
    spec.validate(c)
    assert c["root"] == {"path": "rootfs", "readonly": False}
    assert c["hostname"] == "h1" and c["process"]["terminal"] is False
    assert "CAP_CHOWN" in c["process"]["capabilities"]["bounding"]
