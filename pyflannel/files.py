"""Atomic file writes: readers see the old file or the new one, never half of one."""

from __future__ import annotations

import os
from pathlib import Path


def write_atomic(path: str | os.PathLike[str], data: str, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` via a temp file in the same directory, fsync, rename.

    The temp file is made by hand (``O_EXCL``, random name) rather than with tempfile,
    which would load shutil and the compression modules into the daemon for nothing.

    The directory is created (0755) when missing, and the file gets ``mode`` whatever
    the umask, as flanneld v0.28 does for subnet.env.
    """
    target = Path(path)
    target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.{os.getpid()}.{os.urandom(4).hex()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(data)
            fh.flush()
            os.fchmod(fh.fileno(), mode)
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_text_or_none(path: str | os.PathLike[str]) -> str | None:
    """The file's text, or None when it does not exist or cannot be read."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
