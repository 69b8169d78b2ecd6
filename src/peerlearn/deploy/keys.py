"""``peerlearn keys``: ZeroMQ CURVE key pairs for ``deploy.keys_dir``.

Secret keys are readable by their owner only (0600), and they are made in a private (0700)
staging folder and moved into place, so no secret is ever readable by others, not even briefly.
Keys already in the folder are kept unless the caller asks to replace them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import zmq.auth

from peerlearn.config import ConfigError
from peerlearn.config.schema import ExperimentConfig

MAX_NODES = ExperimentConfig.model_fields["nodes"].metadata[-1].le


def key_files(n_nodes: int) -> list[str]:
    return [f"node-{i}.{ext}" for i in range(n_nodes) for ext in ("key", "key_secret")]


def generate_keys(keys_dir: Path, n_nodes: int, *, overwrite: bool = False) -> None:
    """One CURVE key pair per node: node-<i>.key (public, 0644) and node-<i>.key_secret (0600)."""
    if not isinstance(n_nodes, int) or not 1 <= n_nodes <= MAX_NODES:
        raise ConfigError(f"--nodes {n_nodes}: must be a whole number from 1 to {MAX_NODES}")
    if keys_dir.exists() and not keys_dir.is_dir():
        raise ConfigError(f"keys directory {keys_dir} exists and is not a directory")
    existing = sorted(keys_dir.glob("node-*.key*")) if keys_dir.is_dir() else []
    if existing and not overwrite:
        raise ConfigError(
            f"keys directory {keys_dir} already holds keys ({existing[0].name}, ...); "
            "pass --overwrite to replace them"
        )
    created = not keys_dir.exists()
    try:
        keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        staging = Path(tempfile.mkdtemp(prefix=".keys-", dir=keys_dir))  # 0700
    except OSError as exc:
        raise ConfigError(f"cannot create keys directory {keys_dir}: {exc.strerror}") from None
    try:
        for i in range(n_nodes):
            public, secret = zmq.auth.create_certificates(str(staging), f"node-{i}")
            os.chmod(secret, 0o600)
            os.chmod(public, 0o644)
        if overwrite:  # pairs of an earlier, larger set would not match the new ones
            for old in existing:
                old.unlink()
        for name in key_files(n_nodes):
            os.replace(staging / name, keys_dir / name)
    except BaseException:
        if created:
            shutil.rmtree(keys_dir, ignore_errors=True)
        raise
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(staging)
