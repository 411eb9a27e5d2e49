"""Claims: which worker is generating a cache key right now, so two workers never pay twice.

Before submitting, a step claims its cache key. The claim is a lease (owner + expiry) that its
holder renews while it polls. Another worker that meets a live claim does not wait on a lock and
does not submit: it reads the request id the holder recorded in the shared journal and *joins*
that request, polling the same id. A claim whose holder died is not renewed, expires, and is taken
over; the new holder polls the recorded request id rather than submitting anew.

The claim is kept apart from the journal entry on purpose: a Redis key with an expiry disappears
when it expires, and the request id must outlive its claim.

Backends:

* :class:`FileClaims` (default, one machine): a ``.claim`` file created with ``O_CREAT|O_EXCL``;
  takeover of an expired claim (or one whose process on this machine is gone) happens under an
  ``fcntl`` lock (a ``.lock`` file per key). Files no live claim needs are left behind until
  ``klingflow gc`` removes them (:meth:`FileClaims.stale`, :meth:`FileClaims.discard`).
* :class:`RedisClaims` (several machines): ``SET key owner NX PX ttl``; renewal and release are
  Lua scripts that act only if the caller still owns the key. A key expires by itself, so
  nothing is left to clean.

Why not Prefect's lock managers (``SERIALIZABLE`` isolation with ``RedisLockManager``)? Their two
known bugs are closed: PrefectHQ/prefect#17676 (a lock lost on task retry, "No lock held by") was
fixed by #17679 in prefect-redis, and #18600 (SERIALIZABLE with ``asyncio.gather`` hanging, because
the lock holder was the asyncio task id) was closed with the advice to commit nested tasks
``EAGER``. The reason that remains is what a lock *is*: a second worker waits on it and, once it is
free, finds a result or runs the task itself. A claim lets the second worker *join* the paid
request already in flight (poll the same fal request id) instead of waiting, and a holder that
died is detected by its lease, with its request id still in the journal to resume.

Pick one with ``KLINGFLOW_CLAIMS`` (``file`` or ``redis://host:port/db``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol, TypedDict

from klingflow._files import atomic_write
from klingflow.errors import ConfigError
from klingflow.settings import klingflow_home, settings

__all__ = ["Claims", "FileClaims", "RedisClaims", "claims_from_env", "new_owner"]

DEFAULT_TTL = 30.0


class _ClaimFile(TypedDict):
    """What a ``.claim`` file holds (``FileClaims._write``)."""

    owner: str
    expires_at: float


def _dead_here(owner: str) -> bool:
    """True when ``owner`` ran on this machine and its process is gone (its lease need not be waited out)."""
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _still_at(fd: int, path: Path) -> bool:
    """True when the open file ``fd`` is still the file at ``path`` (not removed or replaced since)."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def new_owner() -> str:
    """A claim owner id that says where it runs: host, process, and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Claims(Protocol):
    """A lease per cache key."""

    def acquire(self, key: str, owner: str, ttl: float = DEFAULT_TTL) -> bool:
        """Take the claim if it is free or expired; True if ``owner`` now holds it."""
        ...

    def renew(self, key: str, owner: str, ttl: float = DEFAULT_TTL) -> bool:
        """Extend a claim ``owner`` holds; False if it was lost (expired and taken)."""
        ...

    def release(self, key: str, owner: str) -> None:
        """Give up a claim ``owner`` holds (no-op otherwise)."""
        ...

    def holder(self, key: str) -> str | None:
        """Who holds a live claim on ``key``, if anyone."""
        ...


class FileClaims:
    """Claims as files under ``root`` (default ``<home>/claims``): for workers on one machine."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or klingflow_home() / "claims"
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / f"{key}.claim"

    @contextlib.contextmanager
    def _locked(self, key: str) -> Iterator[None]:
        # The lock file may be removed (by :meth:`discard`, holding the lock) while we wait for it:
        # a lock taken on a file no longer at its path guards nothing, so open the path again.
        path = self.root / f"{key}.lock"
        while True:
            with open(path, "a") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)
                try:
                    if _still_at(handle.fileno(), path):
                        yield
                        return
                finally:
                    fcntl.flock(handle, fcntl.LOCK_UN)

    def _read(self, key: str) -> _ClaimFile | None:
        try:
            return json.loads(self._path(key).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def _write(self, key: str, owner: str, ttl: float) -> None:
        payload = json.dumps({"owner": owner, "expires_at": time.time() + ttl})
        atomic_write(self._path(key), payload, durable=False)

    def acquire(self, key: str, owner: str, ttl: float = DEFAULT_TTL) -> bool:
        payload = json.dumps({"owner": owner, "expires_at": time.time() + ttl}).encode()
        try:
            fd = os.open(self._path(key), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            with self._locked(key):
                current = self._read(key)
                if (
                    current is None
                    or float(current["expires_at"]) < time.time()
                    or current["owner"] == owner
                    or _dead_here(str(current["owner"]))
                ):
                    self._write(key, owner, ttl)
                    return True
                return False
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
        return True

    def renew(self, key: str, owner: str, ttl: float = DEFAULT_TTL) -> bool:
        with self._locked(key):
            current = self._read(key)
            if current is None or current["owner"] != owner:
                return False
            self._write(key, owner, ttl)
            return True

    def release(self, key: str, owner: str) -> None:
        with self._locked(key):
            current = self._read(key)
            if current is not None and current["owner"] == owner:
                self._path(key).unlink(missing_ok=True)

    def holder(self, key: str) -> str | None:
        current = self._read(key)
        if current is None or float(current["expires_at"]) < time.time() or _dead_here(str(current["owner"])):
            return None
        return str(current["owner"])

    def _in_use(self, key: str) -> bool:
        """A live claim on ``key``, or a claim file too young to be judged (``acquire`` is writing it)."""
        if self.holder(key) is not None:
            return True
        try:
            age = time.time() - self._path(key).stat().st_mtime
        except FileNotFoundError:
            return False
        return self._read(key) is None and age < DEFAULT_TTL

    def stale(self) -> dict[str, list[Path]]:
        """Per key no live claim holds (expired, its holder dead, or released), its claim and lock files."""
        files: dict[str, list[Path]] = {}
        for path in sorted([*self.root.glob("*.claim"), *self.root.glob("*.lock")]):
            files.setdefault(path.stem, []).append(path)
        return {key: paths for key, paths in files.items() if not self._in_use(key)}

    def discard(self, key: str) -> bool:
        """Remove ``key``'s claim and lock files unless a live claim holds it; True when removed.

        Holding the lock while removing is what makes it safe: a process waiting for that lock
        finds its file gone and opens the path again (see ``_locked``), and no claim is removed
        that :meth:`acquire` would not take over anyway.
        """
        with self._locked(key):
            if self._in_use(key):
                return False
            self._path(key).unlink(missing_ok=True)
            (self.root / f"{key}.lock").unlink(missing_ok=True)
        return True


_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class RedisClaims:
    """Claims as Redis keys with an expiry: for workers on several machines."""

    def __init__(self, url: str, prefix: str = "klingflow:claim:") -> None:
        import redis

        self.url = url
        self.prefix = prefix
        self._redis = redis.Redis.from_url(url, decode_responses=True, socket_timeout=10)
        self._renew = self._redis.register_script(_RENEW)
        self._release = self._redis.register_script(_RELEASE)

    def acquire(self, key: str, owner: str, ttl: float = DEFAULT_TTL) -> bool:
        name = self.prefix + key
        if self._redis.set(name, owner, nx=True, px=int(ttl * 1000)):
            return True
        return self.renew(key, owner, ttl)

    def renew(self, key: str, owner: str, ttl: float = DEFAULT_TTL) -> bool:
        return bool(self._renew(keys=[self.prefix + key], args=[owner, int(ttl * 1000)]))

    def release(self, key: str, owner: str) -> None:
        self._release(keys=[self.prefix + key], args=[owner])

    def holder(self, key: str) -> str | None:
        value = self._redis.get(self.prefix + key)
        return str(value) if value is not None else None


def claims_from_env(value: str | None = None) -> Claims:
    """The claims backend named by ``value`` or ``KLINGFLOW_CLAIMS`` (``file`` by default)."""
    setting = value if value is not None else settings().claims
    if setting in ("", "file"):
        return FileClaims()
    if setting.startswith(("redis://", "rediss://", "unix://")):
        return RedisClaims(setting)
    raise ConfigError(
        f"unknown claims backend {setting!r}",
        context="KLINGFLOW_CLAIMS",
        hint="use 'file' (one machine) or a redis:// URL (several machines)",
    )
