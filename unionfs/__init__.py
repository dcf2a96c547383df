"""pyunion's union filesystem: overlay semantics in userspace over FUSE."""

from __future__ import annotations


def __getattr__(name: str) -> str:
    """`unionfs.__version__`: the installed distribution's version, which pyproject.toml alone
    sets. Looked up on first use only: importlib.metadata is not free, and every mount daemon
    and `pyunion` command imports this package."""
    if name != "__version__":
        raise AttributeError(f"module 'unionfs' has no attribute {name!r}")
    from importlib import metadata
    try:
        return metadata.version("pyunion")
    except metadata.PackageNotFoundError:   # a checkout used without `pip install`
        return "0+unknown"
