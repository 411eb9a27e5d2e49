"""Prefect blocks: fal credentials (the key as a secret) and team-wide Kling defaults.

Register the block types once per Prefect server with ``klingflow blocks register``, then create
blocks in the UI (or in Python) and pass their names to a flow or the CLI
(``--credentials NAME``, ``--defaults NAME``). Without a credentials block klingflow falls back to
``FAL_KEY``, then to the embedded emulator.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect.blocks.abstract import CredentialsBlock
from prefect.blocks.core import Block
from pydantic import Field, HttpUrl, SecretStr

from klingflow.backends import connect
from klingflow.backends.config import use_hosts
from klingflow.engine import RunOptions

if TYPE_CHECKING:
    from klingflow.backends.fal import FalBackend
    from klingflow.cache import Store

__all__ = ["FalCredentials", "KlingDefaults", "register_blocks"]

_DOCS = HttpUrl("https://fal.ai/docs/model-api-reference/video-generation-api/kling-video-v1-standard")


class FalCredentials(CredentialsBlock):
    """A fal API key, kept as a secret, and an optional host override.

    The override points fal_client at another host (an emulator started with
    ``klingflow emulator serve`` on a shared machine, or a proxy); ``ca_bundle`` is then the CA
    bundle to trust for it (``klingflow emulator env`` prints the emulator's). Like prefect-aws's
    ``AwsCredentials``, the block is a factory: the key leaves it only through
    :meth:`get_backend`, which returns the configured client.

    Example:
        ```python
        from klingflow.blocks import FalCredentials

        FalCredentials(key="fal-key-id:fal-key-secret").save("fal-production")
        credentials = FalCredentials.load("BLOCK_NAME")
        ```
    """

    _block_type_name = "Fal Credentials"
    _block_type_slug = "fal-credentials"
    _documentation_url = _DOCS
    _description = "A fal.ai API key (stored as a secret) and an optional host override for klingflow."

    key: SecretStr = Field(description="The fal API key, as FAL_KEY would hold it.")
    queue_host: str | None = Field(
        default=None, description="Queue host to use instead of queue.fal.run, e.g. an emulator's host:port."
    )
    run_host: str | None = Field(default=None, description="Direct-run host to use instead of fal.run.")
    ca_bundle: str | None = Field(
        default=None, description="Path of a CA bundle to trust for an overridden host (an emulator's)."
    )

    def get_backend(self, store: Store | None = None) -> FalBackend:
        """The klingflow fal backend, pointed at this block's hosts and authenticated with its key."""
        use_hosts(self.queue_host, self.run_host, self.ca_bundle)
        return connect("fal", key=self.key, store=store)

    def get_client(self) -> FalBackend:
        """Prefect's CredentialsBlock interface: the configured client (see :meth:`get_backend`)."""
        return self.get_backend()


class KlingDefaults(Block):
    """Team-wide defaults for klingflow runs: endpoint arguments, concurrency, budget and output location.

    A pipeline's own ``defaults`` and each step's ``with`` still win over these.

    Example:
        ```python
        from klingflow.blocks import KlingDefaults

        KlingDefaults(arguments={"text-to-video": {"negative_prompt": "blur, watermark"}},
                      concurrency=2, max_cost_usd=5.0).save("studio")
        defaults = KlingDefaults.load("BLOCK_NAME")
        ```
    """

    _block_type_name = "Kling Defaults"
    _block_type_slug = "kling-defaults"
    _documentation_url = _DOCS
    _description = (
        "Default Kling arguments per endpoint, concurrency, budget and output location for klingflow."
    )

    arguments: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Default arguments per endpoint alias, e.g. {'tts': {'voice_id': 'AOT'}}.",
    )
    concurrency: int = Field(default=4, ge=1, description="Requests in flight at once.")
    max_cost_usd: float | None = Field(default=None, ge=0, description="Refuse runs estimated above this.")
    allow_unknown_cost: bool = Field(
        default=False,
        description="With max_cost_usd: still start a run that calls an endpoint without a known price.",
    )
    output_location: str | None = Field(default=None, description="Folder the final outputs are copied to.")

    def run_options(self) -> RunOptions:
        """These defaults as a layer of run options (explicit options still win over them)."""
        return RunOptions(
            concurrency=self.concurrency,
            max_cost_usd=self.max_cost_usd,
            allow_unknown_cost=self.allow_unknown_cost or None,
            out_dir=Path(self.output_location) if self.output_location else None,
            arguments=self.arguments or None,
        )


def register_blocks() -> list[str]:
    """Register klingflow's block types with the current Prefect API; return their slugs."""
    slugs = []
    for block in (FalCredentials, KlingDefaults):
        block.register_type_and_schema()
        slugs.append(block.get_block_type_slug())
    return slugs
