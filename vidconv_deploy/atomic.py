"""Atomic file writes: write to a temporary name in the same folder, then rename.

A crash or an error mid-write must never leave a half-written artifact under its final name. The
temporary file is created private (mode 0600), so the finished file is given the mode an ordinary
``open()`` would have given it (0666 less the umask) before the rename: a bundle stays readable by
the group that shares a build folder.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

#: Suffix of every temporary file this module makes; bundles never record such files.
TMP_SUFFIX = ".tmp"


def current_umask() -> int:
    """The process umask (reading it means setting it, so it is put straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def is_temporary(path: Path) -> bool:
    """A temporary file of :func:`atomic_path` (e.g. left behind by a ``kill -9``)."""
    return path.name.startswith(".") and path.name.endswith(TMP_SUFFIX)


def nearest_existing(path: Path) -> Path:
    """``path`` or the closest folder above it that exists: where a write to ``path`` would really land."""
    existing = path.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return existing


def cannot_create_in(folder: Path) -> OSError | None:
    """Why a file or folder cannot be made in ``folder`` (None if it can), found by making and removing an empty
    folder: permission bits alone do not tell (root, read-only mounts, /proc)."""
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".vidconv-probe.", dir=folder))
    except OSError as err:
        return err
    return None


def _check_target(final: Path) -> None:
    """A file can be put at ``final``: it is not a folder, and no part of the path above it is a file.

    Raised as the OSError the system would give, naming the path at fault (not the temporary file,
    nor "File exists" from making the folders above it).
    """
    if final.is_dir():
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(final))
    above = nearest_existing(final.parent)
    if not above.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(above))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    final = Path(path)
    _check_target(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=TMP_SUFFIX, dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if tmp.exists():
            tmp.chmod(0o666 & ~current_umask())
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
