"""Which fal to talk to, and with which key: real fal, or the emulator (same client, other host).

Resolution order, first match wins:

1. ``backend="emulator"``: the embedded emulator (started in-process on first use).
2. a key given in code (or by a Prefect block), else ``FAL_KEY`` (or ``FAL_KEY_ID`` +
   ``FAL_KEY_SECRET``) in the environment: fal_client against the hosts it was imported with
   (fal.run by default, or whatever ``FAL_RUN_HOST`` / ``FAL_QUEUE_RUN_HOST`` said, e.g. an
   emulator started with ``klingflow emulator serve`` and its ``emulator env`` lines).
3. nothing configured: the embedded emulator, so a first run costs nothing.

``backend="fal"`` with no key is an error, never a silent fallback: a user who asked for real
generations must not get emulator renders by accident. So is a queue host on this machine (an
emulator) without ``HTTPS_PROXY``: fal_client's uploads (``rest.fal.ai``) and fal's platform API
(``api.fal.ai``, which reconciles a lost submit) have fixed hosts that reach the emulator only
through its tunnel; without it they would go to the real fal, and a lost submit could not be
looked up.

The backend *identity* goes into cache keys (an emulator render must never be served as a real
fal output); it never contains the key.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import get_args
from urllib.parse import urlparse

from pydantic import SecretStr

from klingflow.backends.handles import BackendConfig, BackendKind, is_loopback
from klingflow.errors import ConfigError
from klingflow.settings import settings

__all__ = [
    "BackendConfig",
    "BackendKind",
    "backend_kind",
    "check_backend",
    "planned_identity",
    "resolve_backend",
    "use_hosts",
]


_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


def _identity(default: str) -> str:
    return settings().backend_id or default


def planned_identity(backend: BackendKind | None = None, key: str | SecretStr | None = None) -> str:
    """The identity :func:`resolve_backend` would give, without starting anything (for plans)."""
    if backend == "emulator" or (backend is None and not key and not _env_key()):
        return _identity("emulator")
    client = sys.modules.get("fal_client.client")
    if client is not None:
        queue_host = urlparse(client.QUEUE_URL_FORMAT).netloc
    else:
        run_host = os.environ.get("FAL_RUN_HOST", "fal.run")
        queue_host = os.environ.get("FAL_QUEUE_RUN_HOST", f"queue.{run_host}")
    return _identity("emulator" if is_loopback(queue_host) else f"fal:{queue_host}")


def _env_key() -> str | None:
    if key := os.environ.get("FAL_KEY"):
        return key
    key_id, secret = os.environ.get("FAL_KEY_ID"), os.environ.get("FAL_KEY_SECRET")
    return f"{key_id}:{secret}" if key_id and secret else None


def _fal_hosts() -> tuple[str, str]:
    """The hosts fal_client uses in this process (importing it now, after the emulator set them)."""
    from klingflow.backends.fal import fal_hosts

    return fal_hosts()


def _emulator() -> BackendConfig:
    from klingflow.emulator.embedded import embedded_emulator

    server = embedded_emulator()
    queue_host, run_host = _fal_hosts()
    return BackendConfig(
        kind="emulator",
        key=SecretStr(server.identity.key),
        queue_host=queue_host,
        run_host=run_host,
        identity=_identity("emulator"),
        ca_bundle=server.identity.ca_bundle,
    )


_BACKENDS: tuple[BackendKind, ...] = get_args(BackendKind)


def backend_kind(backend: str | None) -> BackendKind | None:
    """A ``--backend`` value as :class:`~klingflow.engine.RunOptions` takes it (None stays None).

    Any other word is a :class:`ConfigError` naming the option (exit 2, with a hint) rather than
    the options model's validation traceback.
    """
    if backend is None:
        return None
    for kind in _BACKENDS:
        if backend == kind:
            return kind
    raise ConfigError(f"unknown backend {backend!r}", context="--backend", hint="use 'fal' or 'emulator'")


def check_backend(backend: str | None = None, key: str | SecretStr | None = None) -> str | None:
    """Refuse a backend that cannot work, before anything starts; return the key it would use.

    What :func:`resolve_backend` would refuse, found from the environment alone (no emulator is
    started, fal_client is not imported), so the command line can say it in one message before
    Prefect or a server starts: an unknown backend, ``fal`` without a key, an emulator host
    without ``HTTPS_PROXY``, a CA bundle (``SSL_CERT_FILE``) that cannot be read. None: the
    embedded emulator will be used.
    """
    backend_kind(backend)
    if backend == "emulator":
        return None
    secret = key.get_secret_value() if isinstance(key, SecretStr) else key
    secret = secret or _env_key()
    if secret is None:
        if backend == "fal":
            raise ConfigError(
                "no fal key is configured",
                context="--backend fal",
                hint="set FAL_KEY, pass key=..., register a FalCredentials block, or use --backend emulator",
            )
        return None
    client = sys.modules.get("fal_client.client")
    run_host = os.environ.get("FAL_RUN_HOST", "fal.run")
    queue_host = (
        urlparse(client.QUEUE_URL_FORMAT).netloc
        if client is not None
        else os.environ.get("FAL_QUEUE_RUN_HOST", f"queue.{run_host}")
    )
    if is_loopback(queue_host) and not any(os.environ.get(name) for name in _PROXY_VARIABLES):
        raise ConfigError(
            f"fal_client points at an emulator ({queue_host}) but HTTPS_PROXY is not set, so uploads "
            "(rest.fal.ai) and fal's request history (api.fal.ai) would go to the real fal",
            context="FAL_QUEUE_RUN_HOST",
            hint="set every line `klingflow emulator env` prints (HTTPS_PROXY names the emulator's "
            "tunnel), or unset FAL_QUEUE_RUN_HOST / FAL_RUN_HOST to use the real fal",
        )
    cert_file = os.environ.get("SSL_CERT_FILE")
    if cert_file:
        try:
            with open(cert_file, "rb") as bundle:
                bundle.read(1)
        except OSError as exc:
            raise ConfigError(
                f"the CA bundle cannot be read: {exc.strerror or exc}",
                context=f"SSL_CERT_FILE={cert_file}",
                hint="point SSL_CERT_FILE at a readable PEM bundle (`klingflow emulator env` prints the "
                "emulator's), or unset it to use the system's",
            ) from exc
    return secret


def resolve_backend(backend: BackendKind | None = None, key: str | SecretStr | None = None) -> BackendConfig:
    """Resolve the backend to use (see the module docstring for the order)."""
    secret = check_backend(backend, key)
    if secret is None:
        return _emulator()
    queue_host, run_host = _fal_hosts()
    cert_file = os.environ.get("SSL_CERT_FILE")
    return BackendConfig(
        kind="fal",
        key=SecretStr(secret),
        queue_host=queue_host,
        run_host=run_host,
        identity=_identity("emulator" if is_loopback(queue_host) else f"fal:{queue_host}"),
        ca_bundle=Path(cert_file) if cert_file else None,
    )


def use_hosts(queue_host: str | None, run_host: str | None, ca_bundle: str | None = None) -> None:
    """Point fal_client at other hosts (a credentials block's override), before it is imported.

    fal_client reads its hosts once, at import, and klingflow never patches it: in a process that
    already imported it with other hosts this is an error that says so (Prefect workers start a
    fresh process per flow run, so deployments are never in that case).
    """
    if not queue_host and not run_host:
        return
    queue_host = queue_host or run_host
    run_host = run_host or queue_host
    client = sys.modules.get("fal_client.client")
    if client is not None:
        current = (urlparse(client.QUEUE_URL_FORMAT).netloc, urlparse(client.RUN_URL_FORMAT).netloc)
        if current != (queue_host, run_host):
            raise ConfigError(
                f"fal_client was already imported with hosts {current[0]} / {current[1]}",
                context="host override",
                hint="start a fresh Python process (fal_client reads its hosts "
                "once, at import), or set FAL_QUEUE_RUN_HOST / FAL_RUN_HOST before importing it",
            )
    os.environ["FAL_QUEUE_RUN_HOST"], os.environ["FAL_RUN_HOST"] = str(queue_host), str(run_host)
    if ca_bundle:
        os.environ["SSL_CERT_FILE"] = ca_bundle
