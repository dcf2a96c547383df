"""Image import/ls/inspect/rm/export against real image files; umoci and skopeo as validators."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from snapshotter.digest import chain_ids, sha256_bytes
from snapshotter.errors import AlreadyExists, ImageError, NotFound
from snapshotter.image_readers import host_platform
from snapshotter.images import ImageStore
from snapshotter.snapshots import Kind, Snapshotter
from tests.imagebuild import (
    EXPECTED_ABSENT,
    EXPECTED_PRESENT,
    File,
    build_busybox_image,
    tree_snapshot,
)
from tests.mounting import PYUNION, pyunion

root_only = pytest.mark.root
TOOLS = pytest.mark.skipif(not (shutil.which("umoci") and shutil.which("skopeo")),
                           reason="umoci and skopeo (Debian packages) are the validators")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("images")
    out = {
        "oci": build_busybox_image(d / "oci", "oci", name="test/bb:oci"),
        "oci-tar": build_busybox_image(d / "oci.tar", "oci-tar", name="test/bb:oci-tar"),
        "docker": build_busybox_image(d / "docker.tar", "docker", name="test/bb:docker"),
        "docker-oci": build_busybox_image(d / "docker-oci.tar", "docker-oci",
                                          name="test/bb:docker-oci"),
        "multi": build_busybox_image(d / "multi", "oci", name="test/bb:multi",
                                     other_platform=True),
        "extra": build_busybox_image(d / "extra", "oci", name="test/bb:extra",
                                     extra_layers=[{"srv/data.txt": "extra\n",
                                                    "etc/motd": "changed\n"}]),
    }
    if shutil.which("zstd"):
        out["zstd"] = build_busybox_image(d / "zstd", "oci", name="test/bb:zstd",
                                          compression="zstd")
    return out


def store_state(root: Path) -> tuple:
    blobs = sorted(os.listdir(root / "content/blobs/sha256"))
    dirs = sorted(os.listdir(root / "snapshots"))
    with Snapshotter(root) as sn:
        snaps = sorted((i.name, i.kind.value) for i in sn.walk())
    with ImageStore(root) as st:
        imgs = [(r.name, r.manifest_digest) for r in st.list()]
    return blobs, dirs, snaps, imgs, os.listdir(root / "content/ingest")


def rewrite_layout(layout: Path, config=None, manifest=None) -> None:
    """Mutate the config and/or manifest of a single-manifest OCI layout, fixing digests."""
    def blob(d: str) -> Path:
        return layout / "blobs/sha256" / d[7:]

    def put(data: bytes) -> str:
        d = sha256_bytes(data)
        blob(d).write_bytes(data)
        return d

    index = json.loads((layout / "index.json").read_text())
    desc = index["manifests"][0]
    man = json.loads(blob(desc["digest"]).read_bytes())
    if config:
        cfg = json.loads(blob(man["config"]["digest"]).read_bytes())
        config(cfg)
        raw = json.dumps(cfg).encode()
        man["config"].update(digest=put(raw), size=len(raw))
    if manifest:
        manifest(man)
    raw = json.dumps(man).encode()
    desc.update(digest=put(raw), size=len(raw))
    (layout / "index.json").write_text(json.dumps(index))


# -- import ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["oci", "oci-tar", "docker", "docker-oci", "zstd"])
def test_import_every_format(tmp_path, images, fmt):
    if fmt not in images:
        pytest.skip("zstd command not installed")
    with ImageStore(tmp_path / "root") as st:
        rec = st.import_path(images[fmt])
        assert rec.name == f"test/bb:{fmt}"
        assert rec.diff_ids == rec.config["rootfs"]["diff_ids"] and len(rec.diff_ids) == 2
        assert rec.chain_ids == chain_ids(rec.diff_ids)
        assert st.resolve(rec.name).manifest_digest == rec.manifest_digest
        sn = st.snapshots
        for c in rec.chain_ids:
            assert sn.stat(c).kind is Kind.COMMITTED
        assert sn.stat(rec.chain_ids[1]).parent == rec.chain_ids[0]
        base, top = sn.fs_path(rec.chain_ids[0]), sn.fs_path(rec.chain_ids[1])
        assert (base / "etc/deleted-in-image").is_file()
        assert (top / "etc/.wh.deleted-in-image").is_file()       # kept as a changeset
        assert (top / "opt/old/.wh..wh..opq").is_file()
        assert os.access(base / "bin/busybox", os.X_OK)


def test_layers_are_stored_once_by_chain_id(tmp_path, images):
    with ImageStore(tmp_path / "root") as st:
        a = st.import_path(images["oci"])
        b = st.import_path(images["docker"])
        c = st.import_path(images["extra"])
        assert a.chain_ids == b.chain_ids == c.chain_ids[:2]
        assert len(os.listdir(tmp_path / "root/snapshots")) == 3


def test_platform_selection_in_nested_index(tmp_path, images):
    with ImageStore(tmp_path / "root") as st:
        host = st.import_path(images["multi"])
        assert f"linux/{host.config['architecture']}" == host_platform()
        other_arch = "arm64" if host_platform() != "linux/arm64" else "amd64"
        other = st.import_path(images["multi"], name="other", platform=f"linux/{other_arch}")
        assert other.config["architecture"] == other_arch
        assert other.manifest_digest != host.manifest_digest
        with pytest.raises(ImageError, match=r"no image for platform linux/s390x \(available"):
            st.import_path(images["multi"], name="none", platform="linux/s390x")


def test_existing_name_refused(tmp_path, images):
    with ImageStore(tmp_path / "root") as st:
        st.import_path(images["oci"], name="x")
        before = store_state(tmp_path / "root")
        with pytest.raises(AlreadyExists):
            st.import_path(images["docker"], name="x")
    assert store_state(tmp_path / "root") == before


def _last_layer_blob(p: Path) -> Path:
    """The extra layer's blob: unlike the base layers, the store does not hold it already."""
    index = json.loads((p / "index.json").read_text())
    man = json.loads((p / "blobs/sha256" / index["manifests"][0]["digest"][7:]).read_bytes())
    return p / "blobs/sha256" / man["layers"][-1]["digest"][7:]


def _corrupt_blob(p: Path) -> None:
    blob = _last_layer_blob(p)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))


def _remove_layer_blob(p: Path) -> None:
    _last_layer_blob(p).unlink()


def _wrong_diff_id(p: Path) -> None:
    def cfg(c):
        c["rootfs"]["diff_ids"][1] = sha256_bytes(b"something else")
    rewrite_layout(p, config=cfg)


def _missing_rootfs(p: Path) -> None:
    rewrite_layout(p, config=lambda c: c.pop("rootfs"))


def _bad_schema(p: Path) -> None:
    rewrite_layout(p, manifest=lambda m: m.update(schemaVersion=1))


def _unknown_layer_type(p: Path) -> None:
    rewrite_layout(p, manifest=lambda m: m["layers"][1].update(mediaType="application/x-foo"))


def _hostile_second_layer(p: Path) -> None:
    shutil.rmtree(p)
    build_busybox_image(p, "oci", extra_layers=[{"x": File(b"x", xattrs={
        "trusted.overlay.opaque": b"y"})}])


FAILURES = [
    ("corrupt-blob", _corrupt_blob, "digest mismatch"),
    ("missing-blob", _remove_layer_blob, "missing blob"),
    ("diff-id-mismatch", _wrong_diff_id, "does not match diff_id"),
    ("missing-required-field", _missing_rootfs, "rootfs"),
    ("bad-schema-version", _bad_schema, "schemaVersion"),
    ("unknown-layer-type", _unknown_layer_type, "unsupported layer media type"),
    ("hostile-layer", _hostile_second_layer, "refused xattr"),
]


@pytest.mark.parametrize("case", FAILURES, ids=[f[0] for f in FAILURES])
def test_failed_import_leaves_store_unchanged(tmp_path, images, case):
    _, mutate, text = case
    bad = tmp_path / "bad"
    shutil.copytree(images["extra"], bad)
    mutate(bad)
    root = tmp_path / "root"
    with ImageStore(root) as st:
        st.import_path(images["oci"])
    before = store_state(root)
    with ImageStore(root) as st, pytest.raises(ImageError) as ei:
        st.import_path(bad, name="bad")
    assert text in str(ei.value) and "\n" not in str(ei.value)
    assert store_state(root) == before


def test_failed_import_into_empty_store_removes_its_layers(tmp_path):
    bad = build_busybox_image(tmp_path / "bad", "oci", extra_layers=[
        {"x": File(b"x", xattrs={"user.overlay.opaque": b"y"})}])
    root = tmp_path / "root"
    ImageStore(root).close()
    before = store_state(root)
    with ImageStore(root) as st, pytest.raises(ImageError, match="refused xattr"):
        st.import_path(bad)
    assert store_state(root) == before
    assert before[0] == [] and before[2] == []


def test_truncated_archive_fails_cleanly(tmp_path, images):
    data = images["docker"].read_bytes()
    bad = tmp_path / "trunc.tar"
    bad.write_bytes(data[: len(data) * 2 // 3])
    root = tmp_path / "root"
    ImageStore(root).close()
    before = store_state(root)
    with ImageStore(root) as st, pytest.raises(ImageError):
        st.import_path(bad)
    assert store_state(root) == before


def test_not_an_image(tmp_path):
    (tmp_path / "empty").mkdir()
    with ImageStore(tmp_path / "root") as st, pytest.raises(ImageError, match="not an OCI"):
        st.import_path(tmp_path / "empty")


# -- rm -------------------------------------------------------------------------------------------
def test_rm_keeps_layers_of_other_images(tmp_path, images):
    with ImageStore(tmp_path / "root") as st:
        base = st.import_path(images["oci"])
        extra = st.import_path(images["extra"])
        st.remove(extra.name)
        with pytest.raises(NotFound):
            st.resolve(extra.name)
        with pytest.raises(NotFound):
            st.snapshots.stat(extra.chain_ids[-1])
        for c in base.chain_ids:
            assert st.snapshots.stat(c).kind is Kind.COMMITTED
        assert not st.content.has(extra.layers[-1]["digest"])
        assert all(st.content.has(b) for b in base.blobs)
        st.remove(base.name)
        assert list(st.snapshots.walk()) == [] and list(st.content.list()) == []


def test_rm_keeps_layers_used_by_a_snapshot(tmp_path, images):
    with ImageStore(tmp_path / "root") as st:
        rec = st.import_path(images["oci"])
        st.snapshots.prepare("container", rec.top)
        st.remove(rec.name)
        assert st.snapshots.stat(rec.top).kind is Kind.COMMITTED
        assert st.snapshots.stat(rec.chain_ids[0]).kind is Kind.COMMITTED
        assert st.list() == []


# -- export ---------------------------------------------------------------------------------------
def _rootfs_ok(rootfs: Path) -> None:
    for p in EXPECTED_PRESENT:
        assert os.path.lexists(rootfs / p.lstrip("/")), p
    for p in EXPECTED_ABSENT:
        assert not os.path.lexists(rootfs / p.lstrip("/")), p


def run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)


@TOOLS
@root_only
def test_export_oci_dir_accepted_by_umoci_and_skopeo(tmp_path, images):
    with ImageStore(tmp_path / "root") as st:
        rec = st.import_path(images["docker"], name="example.com/bb:v1")
        st.export(rec.name, tmp_path / "out")
    info = json.loads(run("skopeo", "inspect", f"oci:{tmp_path / 'out'}:v1").stdout)
    assert info["Layers"] == rec.diff_ids or len(info["Layers"]) == 2
    run("umoci", "unpack", "--image", f"{tmp_path / 'out'}:v1", str(tmp_path / "bundle"))
    _rootfs_ok(tmp_path / "bundle/rootfs")
    assert (tmp_path / "bundle/rootfs/home/app").stat().st_uid == 1000


@TOOLS
def test_export_tar_and_docker_archive_accepted_by_skopeo(tmp_path, images):
    with ImageStore(tmp_path / "root") as st:
        rec = st.import_path(images["oci"], name="bb:tag")
        st.export(rec.name, tmp_path / "img.tar")
        st.export(rec.name, tmp_path / "docker.tar", fmt="docker-archive")
    a = json.loads(run("skopeo", "inspect", f"oci-archive:{tmp_path / 'img.tar'}:tag").stdout)
    b = json.loads(run("skopeo", "inspect", f"docker-archive:{tmp_path / 'docker.tar'}").stdout)
    assert a["Digest"] == rec.manifest_digest
    assert b["Layers"] == rec.diff_ids             # docker archives hold uncompressed layers
    run("skopeo", "copy", f"docker-archive:{tmp_path / 'docker.tar'}",
        f"oci:{tmp_path / 'copied'}:t")
    with ImageStore(tmp_path / "root2") as st:
        again = st.import_path(tmp_path / "docker.tar")
        assert again.name == "bb:tag" and again.diff_ids == rec.diff_ids
        viaskopeo = st.import_path(tmp_path / "copied", name="viaskopeo")
        assert viaskopeo.chain_ids == rec.chain_ids


def test_export_refuses_existing_target(tmp_path, images):
    with ImageStore(tmp_path / "root") as st:
        rec = st.import_path(images["oci"])
        (tmp_path / "x.tar").write_text("keep")
        with pytest.raises(AlreadyExists):
            st.export(rec.name, tmp_path / "x.tar")
    assert (tmp_path / "x.tar").read_text() == "keep"


def test_export_reimport_gives_same_tree(tmp_path, images):
    with ImageStore(tmp_path / "root") as st:
        rec = st.import_path(images["extra"])
        st.export(rec.name, tmp_path / "out")
    with ImageStore(tmp_path / "root2") as st:
        again = st.import_path(tmp_path / "out")
        assert again.manifest_digest == rec.manifest_digest
        for c in rec.chain_ids:
            assert tree_snapshot(st.snapshots.fs_path(c)) == \
                tree_snapshot(tmp_path / "root/snapshots" / _sid(tmp_path / "root", c) / "fs")


def _sid(root: Path, chain: str) -> str:
    with Snapshotter(root) as sn:
        return sn.fs_path(chain).parent.name


# -- CLI ------------------------------------------------------------------------------------------
def test_cli_end_to_end(tmp_path, images):
    root = str(tmp_path / "root")
    r = pyunion("image", "import", str(images["oci-tar"]), "--root", root, "--name", "cli:1")
    assert r.stdout.startswith("imported cli:1 sha256:") and r.stderr == ""  # quiet when piped
    r = pyunion("image", "--root", root, "ls", "--format", "json")
    assert [x["name"] for x in json.loads(r.stdout)] == ["cli:1"]
    assert "cli:1" in pyunion("image", "ls", "--root", root).stdout
    data = json.loads(pyunion("image", "inspect", "cli:1", "--root", root).stdout)
    assert [x["chain_id"] for x in data["layers"]] == chain_ids(data["config"]["rootfs"]["diff_ids"])
    assert all(x["size"] > 0 for x in data["layers"]) and data["manifest"]["schemaVersion"] == 2
    pyunion("image", "export", "cli:1", str(tmp_path / "d.tar"), "--format", "docker-archive",
            "--root", root)
    assert (tmp_path / "d.tar").stat().st_size > 0
    pyunion("image", "rm", "cli:1", "--root", root)
    assert pyunion("image", "ls", "-q", "--root", root).stdout == ""


@pytest.mark.parametrize("args,code,text", [
    (["import", "/nonexistent/image"], 1, "no such file"),
    (["inspect", "nope"], 1, "not found"),
    (["rm", "nope"], 1, "not found"),
    (["export", "nope", "/tmp/x"], 1, "not found"),
    (["commit", "nokey", "name"], 1, "does not exist"),
    (["import"], 2, "usage"),
    (["export", "a", "b", "--format", "zip"], 2, "usage"),
])
def test_cli_errors_are_one_line(tmp_path, args, code, text):
    r = pyunion("image", *args, "--root", str(tmp_path / "root"), check=False)
    assert r.returncode == code
    assert text in r.stderr.lower() and r.stderr.count("\n") == 1
    assert r.stdout == ""


def test_cli_reports_neutralised_entries(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        ti = tarfile.TarInfo("../escape")
        ti.size = 3
        tf.addfile(ti, io.BytesIO(b"esc"))
    img = build_busybox_image(tmp_path / "img", "oci", extra_layers=[buf.getvalue()])
    r = pyunion("image", "import", str(img), "--root", str(tmp_path / "root"))
    assert "warning: layer 2: neutralised '../escape'" in r.stderr
    with Snapshotter(tmp_path / "root") as sn:
        top = next(i for i in sn.walk() if i.kind is Kind.COMMITTED and i.parent and
               sn.stat(i.parent).parent)
        assert (sn.fs_path(top.name) / "escape").read_bytes() == b"esc"


# -- more sources ---------------------------------------------------------------------------------
def _to_docker_schema2(layout: Path) -> None:
    def man(m):
        m["mediaType"] = "application/vnd.docker.distribution.manifest.v2+json"
        m["config"]["mediaType"] = "application/vnd.docker.container.image.v1+json"
        for d in m["layers"]:
            d["mediaType"] = "application/vnd.docker.image.rootfs.diff.tar.gzip"
    rewrite_layout(layout, manifest=man)
    index = json.loads((layout / "index.json").read_text())
    index["manifests"][0]["mediaType"] = "application/vnd.docker.distribution.manifest.v2+json"
    (layout / "index.json").write_text(json.dumps(index))


@TOOLS
def test_docker_schema2_media_types(tmp_path, images):
    layout = tmp_path / "d2"
    shutil.copytree(images["oci"], layout)
    _to_docker_schema2(layout)
    with ImageStore(tmp_path / "root") as st:
        rec = st.import_path(layout, name="d2:latest")
        assert rec.manifest["mediaType"].startswith("application/vnd.docker")
        st.snapshots.prepare("c", rec.top, labels={"pyunion.image": rec.name})
        (st.snapshots.upper_path("c") / "new").write_text("x")
        new = st.commit("c", "d2:next")
        assert new.layers[-1]["mediaType"] == "application/vnd.docker.image.rootfs.diff.tar.gzip"
        st.export("d2:next", tmp_path / "out")
    info = json.loads(run("skopeo", "inspect", "--raw", f"oci:{tmp_path / 'out'}:next").stdout)
    assert len(info["layers"]) == 3


def test_legacy_docker_archive_with_symlinked_and_gzip_layers(tmp_path):
    import gzip as gz

    from tests.imagebuild import base_layers, image_config, layer_tar
    layer = layer_tar(base_layers()[1])
    diff = sha256_bytes(layer)
    cfg = json.dumps(image_config([diff, diff])).encode()
    files = {f"{sha256_bytes(cfg)[7:]}.json": cfg, "a/layer.tar": gz.compress(layer),
             "manifest.json": json.dumps([{"Config": f"{sha256_bytes(cfg)[7:]}.json",
                                           "RepoTags": ["legacy:1"],
                                           "Layers": ["a/layer.tar", "b/layer.tar"]}]).encode()}
    arch = tmp_path / "legacy.tar"
    with tarfile.open(arch, "w") as tf:
        for name, data in files.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
        ti = tarfile.TarInfo("b/layer.tar")
        ti.type, ti.linkname = tarfile.SYMTYPE, "../a/layer.tar"
        tf.addfile(ti)
    with ImageStore(tmp_path / "root") as st:
        rec = st.import_path(arch)
        assert rec.name == "legacy:1" and rec.diff_ids == [diff, diff]
        assert rec.layers[0]["mediaType"].endswith("tar+gzip")
        assert len(set(rec.chain_ids)) == 2


def test_concurrent_cli_imports_share_layers(tmp_path, images):
    root = str(tmp_path / "root")
    procs = [subprocess.Popen([*PYUNION, "image", "import",
                               str(images[f]), "--root", root, "--name", f"c:{f}"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for f in ("oci", "docker")]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    with ImageStore(root) as st:
        assert [r.name for r in st.list()] == ["c:docker", "c:oci"]
        assert len(list(st.snapshots.walk())) == 2


def test_progress_only_on_a_terminal():
    from snapshotter.progress import Progress

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    piped, tty = io.StringIO(), Tty()
    for stream in (piped, tty):
        p = Progress(stream, refresh=0)
        p.start("unpacking", 2, 2048)
        p.next_layer()
        p.add(2048)
        p.finish()
    assert piped.getvalue() == ""
    assert "unpacking layer 1/2" in tty.getvalue() and "2.0 KB/2.0 KB" in tty.getvalue()


def test_killed_import_leftovers_are_removed_by_the_next_import(tmp_path, images):
    root = tmp_path / "root"
    with ImageStore(root) as st:
        st.snapshots.prepare("extract-dead sha256:" + "0" * 64, "",
                             labels={"pyunion.unpack": "1"})
        st.snapshots.prepare("container", "")                 # not an import leftover
        (root / "content/ingest/ingest-dead").write_bytes(b"partial")
        st.import_path(images["oci"])
        names = {i.name for i in st.snapshots.walk()}
        assert "container" in names and not any(n.startswith("extract-") for n in names)
        assert os.listdir(root / "content/ingest") == []


def test_damaged_image_can_be_listed_and_removed(tmp_path, images):
    with ImageStore(tmp_path / "root") as st:
        rec = st.import_path(images["oci"])
        st.content.delete(rec.config_digest)
        with pytest.raises(ImageError, match="damaged"):
            st.resolve(rec.name)
        assert [r.name for r in st.list()] == [rec.name]
        st.remove(rec.name)
        assert st.list() == [] and list(st.snapshots.walk()) == []


def test_image_files_outside_the_source_are_never_read(tmp_path, images):
    layout = tmp_path / "layout"
    shutil.copytree(images["extra"], layout)
    blob = _last_layer_blob(layout)
    blob.unlink()
    blob.symlink_to("/etc/passwd")
    arch = tmp_path / "evil.tar"
    cfg = (images["extra"] / "blobs/sha256" / json.loads(
        (images["extra"] / "blobs/sha256" / json.loads((images["extra"] / "index.json")
                                                       .read_text())["manifests"][0]["digest"][7:]
         ).read_text())["config"]["digest"][7:]).read_bytes()
    with tarfile.open(arch, "w") as tf:
        for name, data in (("c.json", cfg), ("manifest.json", json.dumps([{
                "Config": "c.json", "Layers": ["../../etc/passwd"] * 3}]).encode())):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    root = tmp_path / "root"
    ImageStore(root).close()
    before = store_state(root)
    with ImageStore(root) as st:
        with pytest.raises(ImageError, match="leaves the image directory"):
            st.import_path(layout)
        with pytest.raises(ImageError, match="leaves it"):
            st.import_path(arch)
    assert store_state(root) == before


def _open_both(root: str) -> str:
    try:
        ImageStore(root).close()
        return "ok"
    except Exception as e:  # noqa: BLE001 - reported to the parent, which asserts on it
        return repr(e)


def test_many_processes_create_one_store_at_once(tmp_path):
    """A fresh store's databases are set up by whichever process comes first; none fails."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(3) as pool:
        for i in range(30):
            root = str(tmp_path / f"r{i}")
            assert pool.map(_open_both, [root] * 3) == ["ok"] * 3
