"""Run directories: where results go, and the rule that nothing is overwritten unless asked.

``open_run_dir`` is the safe way to write a run: the run is written into a hidden sibling
(``.NAME.new-XXXX``) and moved into place only when it succeeds, so a run that fails (a bad
setting found during set-up, a crash, Ctrl-C) leaves the old results, if any, untouched and
nothing else behind. While it runs, an exclusive ``flock`` on ``.NAME.lock`` beside the target
keeps a second run from writing to the same directory. ``--overwrite`` replaces only a
directory that is a peerlearn run (or a comparison of runs), never an arbitrary folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


class RunDirError(Exception):
    pass


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` holds peerlearn results: a run (``config.toml`` with ``summary.json``,
    ``metrics.csv`` or a deployment's ``nodes/``) or a comparison (``comparison.json``)."""
    if (path / "comparison.json").is_file():
        return True
    return (path / "config.toml").is_file() and (
        (path / "summary.json").is_file()
        or (path / "metrics.csv").is_file()
        or (path / "nodes").is_dir()
    )


def _occupied(path: Path) -> bool:
    return path.exists() and (not path.is_dir() or any(path.iterdir()))


def check_replaceable(out: Path, overwrite: bool) -> None:
    """Errors for an explicit ``--out`` that must not be written (or replaced)."""
    here = Path.cwd().resolve()
    target = out.resolve()
    if target == here or target in here.parents:
        raise RunDirError(
            f"run directory {out} is the working directory or one of its parents; "
            "choose a new directory for --out"
        )
    if out.exists() and not out.is_dir():
        raise RunDirError(f"run directory {out} exists and is not a directory; refusing to use it")
    if not _occupied(out):
        return
    if not overwrite:
        raise RunDirError(f"run directory {out} already exists; pass --overwrite to replace it")
    if not is_run_dir(out):
        raise RunDirError(
            f"run directory {out} is not a peerlearn run (no config.toml with summary.json or "
            "metrics.csv, no comparison.json); --overwrite refuses to replace it"
        )


def _make_parents(path: Path) -> list[Path]:
    """Create ``path`` and its missing parents; return the ones created, deepest first."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunDirError(f"cannot create directory {path}: {exc.strerror or exc}") from None
    return missing


def _remove_empty(dirs: list[Path]) -> None:
    for d in dirs:  # deepest first
        with contextlib.suppress(OSError):
            d.rmdir()


class _Lock:
    """An exclusive, non-blocking ``flock`` on ``.NAME.lock`` beside a run directory.

    The lock file lives beside the directory (not in it) because the directory itself is
    replaced on success. It is removed on release; an acquirer that locked a file which was
    removed meanwhile notices (another inode at the path) and tries again.
    """

    def __init__(self, target: Path) -> None:
        self.target = target
        self.path = target.parent / f".{target.name}.lock"
        self.fd: int | None = None

    def acquire(self) -> bool:
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise RunDirError(
                    f"cannot create lock file {self.path}: {exc.strerror or exc}"
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                return False
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                self.fd = fd
                return True
            os.close(fd)

    def holder(self) -> str:
        try:
            return self.path.read_text().strip() or "?"
        except OSError:
            return "?"

    def release(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()
            os.close(self.fd)
            self.fd = None


@dataclass
class RunDir:
    """``path``: where to write now (a hidden sibling of ``final`` until the run succeeds)."""

    path: Path
    final: Path


@contextlib.contextmanager
def open_run_dir(
    out: Path | None, name: str, *, overwrite: bool, base: Path = Path("runs")
) -> Iterator[RunDir]:
    """Write a run into ``RunDir.path``; on success it becomes ``RunDir.final``.

    An explicit ``out`` that exists is an error unless ``overwrite`` (and then it must be a
    peerlearn run); without ``out`` the run goes to ``runs/<name>``, or ``runs/<name>-2``, ``-3``,
    ... if that is taken or in use. On an exception nothing is left behind: not the staging
    directory, not the lock file, not the parents (``runs/``) created for it.
    """
    if out is not None:
        check_replaceable(out, overwrite)
        created = _make_parents(out.parent)
        lock = _Lock(out)
        try:
            if not lock.acquire():
                raise RunDirError(
                    f"run directory {out} is in use by another peerlearn run (pid "
                    f"{lock.holder()}); wait for it to finish or choose another --out"
                )
            check_replaceable(out, overwrite)  # again: it may have changed before the lock
        except BaseException:
            lock.release()
            _remove_empty(created)
            raise
        target = out
    else:
        created = _make_parents(base)
        try:
            target, lock = _claim_default(base, name)
        except BaseException:
            _remove_empty(created)
            raise
    replace = _occupied(target) or target.is_dir()
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.new-", dir=target.parent))
    except OSError as exc:
        lock.release()
        _remove_empty(created)
        raise RunDirError(f"cannot create a directory in {target.parent}: {exc}") from None
    try:
        yield RunDir(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        lock.release()
        _remove_empty(created)
        raise
    try:
        _commit(staging, target, replace)
    finally:
        lock.release()


def _claim_default(base: Path, name: str) -> tuple[Path, _Lock]:
    """The first ``base/name[-k]`` that neither exists nor is being written, locked."""
    k = 1
    while True:
        candidate = base / (name if k == 1 else f"{name}-{k}")
        k += 1
        if candidate.exists() or candidate.is_symlink():
            continue
        lock = _Lock(candidate)
        if not lock.acquire():
            continue
        if candidate.exists():
            lock.release()
            continue
        return candidate, lock


def _commit(staging: Path, target: Path, replace: bool) -> None:
    """Move the finished run into place; the old run (``--overwrite``) goes only now."""
    if target.exists() and not replace and _occupied(target):
        raise RunDirError(
            f"{target} appeared while the run was going (not by peerlearn); "
            f"results left in {staging}"
        )
    old = None
    if target.exists() or target.is_symlink():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, old / "run")
    try:
        os.replace(staging, target)
    except OSError as exc:
        if old is not None:
            os.replace(old / "run", target)
            old.rmdir()
        raise RunDirError(f"cannot move the run into {target}: {exc}; it is in {staging}") from None
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def prepare_run_dir(
    out: Path | None, name: str, *, overwrite: bool, base: Path = Path("runs")
) -> Path:
    """The directory to write into, created empty, for callers that write in place (the deploy
    launcher); ``open_run_dir`` is the safe form (staged, locked).

    An explicit ``out`` that exists is an error unless ``overwrite``, and then it must be a
    peerlearn run; without ``out`` the run goes to ``runs/<name>``, or ``runs/<name>-2``, ...
    """
    if out is not None:
        check_replaceable(out, overwrite)
        if _occupied(out):
            shutil.rmtree(out)
        _make_parents(out)
        return out
    candidate = base / name
    k = 2
    while candidate.exists():
        candidate = base / f"{name}-{k}"
        k += 1
    _make_parents(candidate)
    return candidate
