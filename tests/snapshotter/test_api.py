"""snapshotter/api.py: the interface whose docstrings are the spec, and the kind/parent rules
every implementation shares."""

from __future__ import annotations

import inspect

import pytest

from snapshotter import api
from snapshotter.errors import FailedPrecondition, InvalidArgument, NotFound
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


def test_kind_and_parent_rules():
    api.check_parent("p", api.Kind.COMMITTED)
    with pytest.raises(NotFound):
        api.check_parent("p", None)
    for kind in (api.Kind.ACTIVE, api.Kind.VIEW):
        with pytest.raises(InvalidArgument):
            api.check_parent("p", kind)
        with pytest.raises(FailedPrecondition):
            api.check_committable("k", api.Kind.VIEW if kind is api.Kind.VIEW
                                  else api.Kind.COMMITTED)
        api.check_mountable("k", kind)
    api.check_committable("k", api.Kind.ACTIVE)
    with pytest.raises(FailedPrecondition):
        api.check_mountable("k", api.Kind.COMMITTED)
    api.check_removable("k", False)
    with pytest.raises(FailedPrecondition, match="with child"):
        api.check_removable("k", True)
