"""Pure layer rules: whiteouts, opaque directories, merge order (no mount)."""

from hypothesis import given
from hypothesis import strategies as st

from unionfs.layers import (
    ABSENT,
    HIDDEN,
    Found,
    LayerDir,
    merge_listing,
    needs_whiteout,
    resolve_name,
    whited_out_name,
)

NAMES = st.sampled_from(["a", "b", "c", "d"])


def test_whiteout_names():
    assert whited_out_name(".wh.foo") == "foo"
    assert whited_out_name(".wh..wh..opq") is None
    assert whited_out_name("foo") is None


def test_top_layer_wins_and_whiteout_hides_lower():
    up = LayerDir(0, {"a": (False, False)}, whiteouts={"b"})
    low = LayerDir(1, {"a": (False, False), "b": (False, False), "c": (True, False)})
    merged = {e.name: e.layer for e in merge_listing([up, low])}
    assert merged == {"a": 0, "c": 1}


def test_opaque_stops_lower_layers():
    up = LayerDir(0, {"x": (False, False)}, opaque=True)
    low = LayerDir(1, {"y": (False, False)})
    assert [e.name for e in merge_listing([up, low])] == ["x"]


def test_kernel_whiteout_hides():
    up = LayerDir(0, {"b": (False, True)})
    low = LayerDir(1, {"b": (False, False)})
    assert merge_listing([up, low]) == []


def test_resolve_dir_stack_stops_at_non_dir_and_opaque():
    dir_, file_ = Found(True, is_dir=True), Found(True)
    assert resolve_name([(0, dir_), (1, dir_), (2, file_), (3, dir_)]) == (0, [0, 1])
    assert resolve_name([(0, ABSENT), (1, Found(True, is_dir=True, opaque=True)), (2, dir_)]) \
        == (1, [1])
    assert resolve_name([(0, HIDDEN), (1, file_)]) == (None, [])
    assert resolve_name([(0, file_), (1, dir_)]) == (0, [0])
    assert needs_whiteout([ABSENT, file_])
    assert not needs_whiteout([HIDDEN, file_])
    assert not needs_whiteout([ABSENT, ABSENT])


layer_dirs = st.lists(
    st.builds(
        lambda names, wh, opq: (names, wh, opq),
        st.dictionaries(NAMES, st.tuples(st.booleans(), st.booleans())),
        st.sets(NAMES),
        st.booleans(),
    ),
    min_size=1, max_size=4,
)


@given(layer_dirs)
def test_merge_matches_per_name_resolution(spec):
    """Listing a directory and resolving each name one by one always agree."""
    layers = [LayerDir(i, dict(n), set(w), o) for i, (n, w, o) in enumerate(spec)]
    listed = {e.name: e.layer for e in merge_listing(layers)}
    for name in ["a", "b", "c", "d"]:
        answers = []
        for ld in layers:
            if name in ld.entries:
                is_dir, kwh = ld.entries[name]
                f = HIDDEN if kwh else Found(True, is_dir=is_dir)
            elif name in ld.whiteouts:
                f = HIDDEN
            else:
                f = ABSENT
            answers.append((ld.layer, f))
            if ld.opaque:
                break
        top, _ = resolve_name(answers)
        assert listed.get(name) == top
    # each visible name once
    names = [e.name for e in merge_listing(layers)]
    assert len(names) == len(set(names))


def test_override_format_round_trip_and_idmap():
    import os
    import stat

    from unionfs.ownership import IdMap, Override, format_override, parse_override

    dev = Override(0, 0, stat.S_IFCHR | 0o620, os.makedev(1, 3))
    assert format_override(dev) == "0:0:0620:char-1-3"
    assert parse_override(format_override(dev)) == dev
    assert parse_override(b"1000:1000:0755:dir") == Override(1000, 1000, stat.S_IFDIR | 0o755)
    assert parse_override("0:0:4755", stat.S_IFREG).mode == stat.S_IFREG | 0o4755
    assert parse_override("garbage") is None
    m = IdMap.parse(":0:100000:65536")
    assert (m.to_host(0), m.to_host(1000), m.to_disk(101000), m.to_host(70000)) == \
        (100000, 101000, 1000, 70000)
