"""Content-addressed media store: every generated or uploaded file, kept once, by its sha256.

Files live at ``<root>/objects/<first two hex>/<sha256><suffix>``. A download streams into a
temporary file beside the objects while hashing, checks the byte count (against Content-Length
and fal's ``file_size``) and, when given, the expected sha256, and only then renames the file into
place: a crash or a truncated transfer never leaves a partial object where a cache hit could find
it. Reading an object back re-hashes it (:meth:`Store.verify`), because a cache hit must be certain.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel

from klingflow._files import file_sha256
from klingflow.errors import TRANSIENT, ConnectionLost, ResultLost, StoreError, error_for_status
from klingflow.settings import klingflow_home

if TYPE_CHECKING:
    import httpx  # imported by download(): a fully cached run never downloads, nor pays httpx's 0.15 s

__all__ = ["Store", "StoredFile"]

_CHUNK = 1 << 20


class StoredFile(BaseModel):
    """A file in the store: where it is, what it hashes to, how big it is."""

    sha256: str
    path: Path
    bytes: int
    content_type: str | None = None


class Store:
    """The media store under ``root`` (default ``<klingflow home>/store``)."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or klingflow_home() / "store"
        self.objects = self.root / "objects"
        self.tmp = self.root / "tmp"
        self.objects.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)

    def path_for(self, sha256: str, suffix: str = "") -> Path:
        """Where the object with this hash (and file suffix) lives."""
        return self.objects / sha256[:2] / f"{sha256}{suffix}"

    def find(self, sha256: str) -> StoredFile | None:
        """The stored object with this hash, if present and intact (re-hashed); else None."""
        folder = self.objects / sha256[:2]
        for candidate in sorted(folder.glob(f"{sha256}*")) if folder.is_dir() else []:
            if candidate.is_file() and file_sha256(candidate) == sha256:
                return StoredFile(sha256=sha256, path=candidate, bytes=candidate.stat().st_size)
        return None

    def verify(self, stored: StoredFile) -> bool:
        """True when the object still exists with its recorded size and hash."""
        path = stored.path
        return path.is_file() and path.stat().st_size == stored.bytes and file_sha256(path) == stored.sha256

    def _commit(self, tmp: Path, sha256: str, suffix: str, content_type: str | None) -> StoredFile:
        target = self.path_for(sha256, suffix)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, target)
        return StoredFile(sha256=sha256, path=target, bytes=target.stat().st_size, content_type=content_type)

    def put_file(self, source: Path, *, content_type: str | None = None) -> StoredFile:
        """Copy a local file into the store (atomically) and return its record."""
        fd, name = tempfile.mkstemp(dir=self.tmp)
        os.close(fd)
        tmp = Path(name)
        try:
            shutil.copyfile(source, tmp)
            return self._commit(tmp, file_sha256(tmp), source.suffix, content_type)
        finally:
            tmp.unlink(missing_ok=True)

    async def download(
        self,
        url: str,
        client: httpx.AsyncClient,
        *,
        suffix: str = "",
        expected_size: int | None = None,
        expected_sha256: str | None = None,
    ) -> StoredFile:
        """Download ``url`` with ``client`` into the store, checking size and hash before it becomes visible.

        The caller owns the client, so one run's downloads share its connections and TLS set-up.

        Raises :class:`~klingflow.errors.ConnectionLost` for a connection error or a truncated
        transfer, the type :func:`~klingflow.errors.error_for_status` gives for 429 and 5xx,
        :class:`~klingflow.errors.ResultLost` for any other 4xx (the file is gone), or
        :class:`~klingflow.errors.StoreError` for a hash mismatch.
        """
        import httpx

        fd, name = tempfile.mkstemp(dir=self.tmp)
        tmp = Path(name)
        digest, received = hashlib.sha256(), 0
        try:
            with os.fdopen(fd, "wb") as handle:
                async with client.stream("GET", url) as response:
                    status = response.status_code
                    if status >= 400:
                        error = error_for_status(status)
                        raise (error if issubclass(error, TRANSIENT) else ResultLost)(
                            f"downloading the result file failed: {url}",
                            status_code=status,
                            phase="download",
                        )
                    declared = response.headers.get("content-length")
                    content_type = response.headers.get("content-type")
                    async for chunk in response.aiter_raw(_CHUNK):
                        handle.write(chunk)
                        digest.update(chunk)
                        received += len(chunk)
            for expected, what in ((declared, "Content-Length"), (expected_size, "file_size")):
                if expected is not None and int(expected) != received:
                    raise ConnectionLost(
                        f"result file is truncated: got {received} bytes, {what} says {expected} ({url})",
                        phase="download",
                    )
            sha256 = digest.hexdigest()
            if expected_sha256 and sha256 != expected_sha256:
                raise StoreError(
                    f"downloaded file's sha256 {sha256} does not match {expected_sha256}", context=url
                )
            return self._commit(tmp, sha256, suffix, content_type)
        except httpx.HTTPError as exc:
            raise ConnectionLost(
                f"downloading the result file failed ({type(exc).__name__}: {exc}): {url}", phase="download"
            ) from exc
        finally:
            tmp.unlink(missing_ok=True)
