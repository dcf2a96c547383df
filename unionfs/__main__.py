"""`python -m unionfs ...`: the `pyunion` command under its older name, kept for scripts and
tests that spell it so. An entry script like the installed `pyunion` wrapper, not a module:
nothing imports it, so routing to snapshotter/ from here gives unionfs no dependency on it."""

from pyunion.cli import main

raise SystemExit(main())
