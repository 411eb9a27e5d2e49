"""``klingflow blocks register`` and ``klingflow serve``: klingflow's Prefect side from a shell."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from klingflow.cli._errors import friendly_errors, out

__all__ = ["add_prefect_commands"]

blocks_app = typer.Typer(help="Prefect blocks: fal credentials and Kling defaults.", no_args_is_help=True)


@blocks_app.command("register")
@friendly_errors
def blocks_register() -> None:
    """Register the FalCredentials and KlingDefaults block types with the current Prefect API."""
    from klingflow.blocks import register_blocks

    for slug in register_blocks():
        out().print(f"registered block type [bold]{slug}[/]")


@friendly_errors
def serve(
    pipelines: Annotated[list[Path] | None, typer.Argument(help="Pipeline files to serve on demand.")] = None,
    prefect_file: Annotated[
        Path, typer.Option(help="Deployments to serve when no pipeline is given.")
    ] = Path("deployments/prefect.yaml"),
) -> None:
    """Serve deployments from this process (Prefect's serve): prefect.yaml's, or one per pipeline file."""
    from prefect import serve as prefect_serve

    from klingflow.flows.serving import file_deployments, project_deployments

    deployments = file_deployments(pipelines) if pipelines else project_deployments(prefect_file)
    prefect_serve(*deployments)


def add_prefect_commands(app: typer.Typer) -> None:
    """Attach ``blocks`` and ``serve`` to ``app``."""
    app.add_typer(blocks_app, name="blocks")
    app.command("serve")(serve)
