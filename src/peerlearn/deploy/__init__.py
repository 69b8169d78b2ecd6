"""The real runtime: one process per node, ZeroMQ sockets, wall clocks (see docs/deploy.md)."""
