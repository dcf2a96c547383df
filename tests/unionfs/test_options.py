"""Command-line parsing for all three spellings (no mount)."""

import pytest

from unionfs.options import UsageError, parse_compat_args, parse_mount_args


def test_pyunion_spec():
    c = parse_mount_args(["-o", "noatime", "/u:/l1:/l2", "/t"])
    assert (c.upper, c.lowers, c.target) == ("/u", ["/l1", "/l2"], "/t")
    assert "noatime" in c.fuse_options and not c.readonly


def test_empty_upper_is_readonly():
    c = parse_mount_args([":/l1:/l2", "/t"])
    assert c.upper is None and c.readonly and c.lowers == ["/l1", "/l2"]


def test_podman_form_with_empty_items():
    c = parse_compat_args(["-o", "lowerdir=/a:/b,upperdir=/u,workdir=/w,", "-o", ",,volatile",
                           "/t"])
    assert (c.upper, c.lowers, c.workdir, c.target, c.fsync) == \
        ("/u", ["/a", "/b"], "/w", "/t", False)


def test_podman_readonly_lowerdir_alone():
    c = parse_compat_args(["-o", "lowerdir=/a:/b", "/t"])
    assert c.readonly and c.workdir is None


def test_mount_fuse3_form():
    c = parse_compat_args(["overlay", "/t", "-o", "rw,lowerdir=/a,upperdir=/u,workdir=/w,dev,suid"])
    assert (c.upper, c.lowers, c.target) == ("/u", ["/a"], "/t")
    assert {"dev", "suid"} <= c.fuse_options


def test_fuse_overlayfs_options_warn_and_fsync0():
    c = parse_compat_args(["-o", "lowerdir=/a,upperdir=/u,workdir=/w,fsync=0,static_nlink", "/t"])
    assert not c.fsync
    assert any("static_nlink" in w for w in c.warnings)


@pytest.mark.parametrize("argv", [
    ["/t"], ["-o", "bogus_option", "u:l", "/t"], ["onlyone"], ["/u:", "/t"], ["u:l:", "/t"],
    ["-o", "timeout=x", "u:l", "/t"],
])
def test_bad_command_lines(argv):
    with pytest.raises(UsageError) as e:
        parse_mount_args(argv)
    assert "\n" not in str(e.value)
