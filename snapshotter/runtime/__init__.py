"""A minimal OCI runtime with runc's command line."""
