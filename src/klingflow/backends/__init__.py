"""How a step reaches a Kling endpoint: one fal_client path, pointed at real fal or the emulator.

Importing this package does not import fal_client: fal_client fixes its hosts when it is imported,
so the embedded emulator must get the chance to set them first (see
:mod:`klingflow.emulator.embedded`). :func:`connect` resolves the backend, then imports it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import SecretStr

from klingflow.backends.config import BackendConfig, BackendKind, backend_kind, check_backend, resolve_backend

if TYPE_CHECKING:
    from klingflow.backends.fal import FalBackend
    from klingflow.cache import Store

__all__ = ["BackendConfig", "BackendKind", "backend_kind", "check_backend", "connect", "resolve_backend"]


def connect(
    backend: BackendKind | None = None, *, key: str | SecretStr | None = None, store: Store | None = None
) -> FalBackend:
    """Resolve the backend (real fal, or the emulator when no key is configured) and return a client.

    Example::

        from klingflow.backends import connect

        backend = connect()
        print(backend.identity)  # "emulator", or "fal:queue.fal.run": what cache keys record

    A generation goes through the engine (:func:`klingflow.run_pipeline`, a one-step pipeline will
    do), which journals the request id and claims the key, so that nothing is paid for twice.
    """
    config = resolve_backend(backend, key)
    from klingflow.backends.fal import FalBackend

    return FalBackend(config, store)
