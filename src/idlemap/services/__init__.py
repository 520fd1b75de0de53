"""Long-running services built on the backends: the Prometheus exporter, the FUSE mount."""
