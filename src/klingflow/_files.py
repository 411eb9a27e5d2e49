"""Writing a file so that nobody ever sees half of it, and hashing a file: the one copy of each.

klingflow's promise rests on files that are either whole or absent: a journal record, a ledger
file, a stored clip, an exported output. Everything that writes one goes through
:func:`atomic_path` (a hidden temporary name beside the target, renamed over it only when the
write succeeded, removed when it did not), so a crash, ``kill -9`` or a full disk leaves the old
file or the new one, never a truncated one where a cache lookup could take it for finished. The
standard library has no such helper (``tempfile`` + ``os.replace`` is the recipe), hence this
module.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_path", "atomic_write", "file_sha256"]

_CHUNK = 1 << 20


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable (POSIX); folders cannot be opened on Windows, where this is a no-op."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(target: Path, *, durable: bool = False, suffix: str = ".partial") -> Iterator[Path]:
    """Yield a hidden temporary path beside ``target``; rename it over ``target`` if the block succeeds.

    The temporary name ends in ``suffix`` (not the target's), so writers that guess a format from
    the file name (ffmpeg) must name it explicitly. ``durable`` also fsyncs the folder after the
    rename, for records that must survive a power cut (journal, ledger).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    unique = f"{os.getpid()}-{threading.get_ident()}-{uuid.uuid4().hex[:8]}"
    temp = target.with_name(f".{target.name}.{unique}{suffix}")
    try:
        yield temp
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)
    if durable:
        _fsync_dir(target.parent)


def atomic_write(
    target: Path, content: bytes | str | Callable[[BinaryIO], object], *, durable: bool = True
) -> Path:
    """Write ``content`` (bytes, text as UTF-8, or a function given the open binary file) atomically.

    With ``durable`` (the default) the data is fsynced before the rename and the folder after it.
    """
    with atomic_path(target, durable=durable, suffix=".tmp") as temp:
        with open(temp, "wb") as handle:
            if callable(content):
                content(handle)
            else:
                handle.write(content.encode("utf-8") if isinstance(content, str) else content)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
    return target


def file_sha256(path: Path) -> str:
    """sha256 of a file's content, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()
