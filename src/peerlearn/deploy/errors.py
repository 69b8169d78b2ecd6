"""Errors of the real runtime, importable without pulling in ZeroMQ or torch."""


class DeployError(Exception):
    """The deployment could not start (a node died during set-up, or timed out)."""
