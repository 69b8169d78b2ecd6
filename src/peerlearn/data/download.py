"""Checked downloads and safe archive extraction, standard library only.

Files are streamed to a temporary file beside the destination and renamed into place only after the
md5 matches, so an interrupted or corrupt download never looks like a finished one.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.parse
import urllib.request
import uuid
import zipfile
from pathlib import Path, PurePosixPath

log = logging.getLogger(__name__)

CHUNK = 1 << 20
TIMEOUT_S = 60.0


class ChecksumError(OSError):
    """A downloaded file's md5 differs from the expected one (the file was removed)."""


def md5sum(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(url: str, dest: Path, md5: str | None) -> Path:
    """Download `url` to the file `dest` (or into `dest/` if it is a folder) and return its path.

    An existing file with the right md5 is reused. `md5=None` skips the check, for sources with no
    fixed checksum (say so where it is used). Any URL urllib can open works, `file://` included,
    which is how the tests run offline.
    """
    dest = Path(dest)
    if dest.is_dir():
        dest = dest / (PurePosixPath(urllib.parse.urlsplit(url).path).name or "download")
    if dest.is_file() and md5 is not None and md5sum(dest) == md5.lower():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        digest = hashlib.md5(usedforsecurity=False)
        log.info("downloading %s to %s", url, dest)
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=TIMEOUT_S) as resp:
            while chunk := resp.read(CHUNK):
                digest.update(chunk)
                out.write(chunk)
        got = digest.hexdigest()
        if md5 is not None and got != md5.lower():
            raise ChecksumError(
                f"md5 mismatch for {url}: expected {md5}, got {got}; the file was discarded"
            )
        os.chmod(tmp, 0o644)  # mkstemp makes it private; data roots may be shared
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return dest


def _check_member_name(name: str, archive: Path) -> None:
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts or (p.parts and ":" in p.parts[0]):
        raise ValueError(f"{archive}: refusing unsafe member path {name!r}")


def extract_tar(archive: Path, dest: Path) -> None:
    """Extract with the "data" filter: no absolute paths, no `..`, no links out, no devices."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, filter="data")
            return
        # Python < 3.11.4 has no extraction filters: allow only plain files and folders.
        members = []
        for m in tar.getmembers():
            _check_member_name(m.name, archive)
            if not (m.isfile() or m.isdir()):
                raise ValueError(f"{archive}: refusing member {m.name!r} (not a file or folder)")
            members.append(m)
        tar.extractall(dest, members=members)


def extract_zip(archive: Path, dest: Path) -> None:
    """Extract a zip after checking that no member escapes `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive) as zf:
        for name in zf.namelist():
            _check_member_name(name, archive)
        zf.extractall(dest)


def _move_into_place(src: Path, target: Path) -> None:
    """Rename `src` to `target`, setting aside (then deleting) whatever was there.

    Each rename is atomic, so when several processes of one run download at once, readers see
    either no dataset or a whole one, and the last finisher's copy (identical) stays.
    """
    old = None
    if target.exists() or target.is_symlink():
        old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex}")
        try:
            os.replace(target, old)
        except FileNotFoundError:
            old = None
    try:
        os.replace(src, target)
    except OSError:
        if not target.exists():  # not a lost race with another process: a real failure
            raise
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


def fetch_and_extract(url: str, folder: Path, md5: str | None) -> None:
    """Download an archive, extract it into `folder`, then delete the archive to save space.

    The archive gets a private name and is extracted into a private staging folder, whose
    top-level entries are then renamed into `folder`: a failure never leaves a half-extracted
    dataset where loaders would find it, and concurrent downloads do not trip over each other.
    """
    folder.mkdir(parents=True, exist_ok=True)
    name = PurePosixPath(urllib.parse.urlsplit(url).path).name or "download"
    archive = folder / f".{name}.{uuid.uuid4().hex}"
    staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=folder))
    try:
        fetch(url, archive, md5)
        if name.endswith(".zip"):
            extract_zip(archive, staging)
        else:
            extract_tar(archive, staging)
        for child in staging.iterdir():
            _move_into_place(child, folder / child.name)
    finally:
        archive.unlink(missing_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
