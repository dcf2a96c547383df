"""The `pyunion` command: one entry point over unionfs/ (the union mount) and snapshotter/
(images, snapshots, containers). It only routes; neither package imports it."""
