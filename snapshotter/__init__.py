"""Images, layers and snapshots stacked as pyunion mounts."""
