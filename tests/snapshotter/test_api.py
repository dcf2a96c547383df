"""snapshotter/api.py: the interface whose docstrings are the spec (the kind/parent rules are
the store's: tests/snapshotter/test_store_rules.py)."""

from __future__ import annotations

import inspect

from snapshotter import api
from snapshotter.snapshots import Snapshotter

METHODS = ["stat", "update", "usage", "mounts", "prepare", "view", "commit", "remove", "walk",
           "cleanup", "close"]


def test_the_spec_names_containerds_methods_each_with_its_contract():
    for name in METHODS:
        doc = inspect.getdoc(getattr(api.Snapshotter, name))
        assert doc and len(doc) > 40, name


def test_the_store_implements_the_spec(tmp_path):
    """Same methods, same parameters (mypy checks the types: snapshots.py's _implements)."""
    with Snapshotter(tmp_path / "store") as sn:
        assert isinstance(sn, api.Snapshotter)
    for name in METHODS:
        spec = inspect.signature(getattr(api.Snapshotter, name))
        impl = inspect.signature(getattr(Snapshotter, name))
        assert list(spec.parameters) == list(impl.parameters), name
