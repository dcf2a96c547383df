"""pyunion's union filesystem: overlay semantics in userspace over FUSE."""

__version__ = "0.1.0"
