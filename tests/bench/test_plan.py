"""The layered data plan: what each layer holds and what a correct union shows."""

from __future__ import annotations

from bench.config import FULL, QUICK, TINY
from bench.plan import (
    COPYUP_FILE,
    NEEDLE,
    SEQ_FILE,
    build_plan,
    content_digest,
    merged,
    small_content,
)
from bench.workloads import needle_files, walk_count


def test_full_scale_matches_the_issue():
    plan = build_plan(FULL)
    tree = merged(plan)
    files = [p for p, s in tree.items() if s is not None]
    small = [p for p in files if p.startswith("tree/")]
    assert 19_000 <= len(small) <= 21_000
    assert sum(1 for p in files if p.startswith("wide/")) == 10_000
    assert tree[SEQ_FILE].size == 1 << 30 and tree[COPYUP_FILE].size == 256 << 20
    assert len(plan.unlink_targets) == 5_000
    assert FULL.creates == 10_000


def test_top_layer_whiteouts_opaque_and_overrides():
    plan = build_plan(TINY)
    tree = merged(plan)
    # whiteouts: files and one whole directory vanish, with everything under it
    assert plan.top.whiteouts
    for w in plan.top.whiteouts:
        assert w in plan.base.files or w in plan.base.dirs
        assert not any(p == w or p.startswith(w + "/") for p in tree)
    # opaque: the directory stays, only the top's children show
    (opq,) = plan.top.opaque
    assert tree[opq] is None
    children = {p for p in tree if p.startswith(opq + "/")}
    assert children and children == {p for p in plan.top.files if p.startswith(opq + "/")}
    assert not any(p.startswith(opq + "/") for p in children if p in plan.base.files)
    # overrides: the top's bytes win
    overridden = [p for p in plan.top.files if p in plan.base.files]
    assert overridden
    for p in overridden:
        assert tree[p] == plan.top.files[p] != plan.base.files[p]
        assert small_content(p, tree[p]) != small_content(p, plan.base.files[p])


def test_wide_dir_is_merged_from_both_layers():
    for scale in (TINY, QUICK, FULL):
        plan = build_plan(scale)
        bottom = {p for p in plan.base.files if p.startswith("wide/")}
        top = {p for p in plan.top.files if p.startswith("wide/")}
        assert len(bottom & top) == scale.wide_overlap
        assert len({p for p in merged(plan) if p.startswith("wide/")}) == scale.wide_entries


def test_unlink_targets_are_visible_lower_files():
    plan = build_plan(QUICK)
    tree = merged(plan)
    assert len(set(plan.unlink_targets)) == QUICK.unlinks
    for p in plan.unlink_targets:
        assert tree[p] is not None
        assert p in plan.base.files or p in plan.top.files
    # some of them come from the top lower, some only from the bottom
    assert any(p in plan.top.files for p in plan.unlink_targets)
    assert any(p not in plan.top.files for p in plan.unlink_targets)


def test_contents_are_deterministic_and_needles_counted():
    plan = build_plan(TINY)
    tree = merged(plan)
    p, spec = next((p, s) for p, s in tree.items() if s is not None and p.startswith("tree/"))
    assert small_content(p, spec) == small_content(p, spec)
    assert len(small_content(p, spec)) == spec.size
    assert content_digest(SEQ_FILE, tree[SEQ_FILE]) != content_digest(COPYUP_FILE,
                                                                      tree[COPYUP_FILE])
    n = needle_files(plan)
    assert 0 < n < len(tree)
    assert n == sum(1 for p, s in tree.items()
                    if s is not None and p.startswith("tree/") and NEEDLE in small_content(p, s))
    assert walk_count(plan) == len(tree) + 1
