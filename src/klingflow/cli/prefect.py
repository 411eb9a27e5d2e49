"""``klingflow blocks register``, ``klingflow serve`` and ``klingflow team-limit``: klingflow's Prefect side
from a shell."""

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


@friendly_errors
def team_limit(
    name: Annotated[str, typer.Argument(help="The limit's name (what KLINGFLOW_TEAM_LIMIT says).")],
    slots: Annotated[
        int | None,
        typer.Option(min=1, help="Create the limit with this many slots, or change it to this many."),
    ] = None,
) -> None:
    """Show or set the team's fal cap: a Prefect global concurrency limit every run's requests share.

    Set KLINGFLOW_TEAM_LIMIT=NAME on every machine (workers, laptops) that reports to this Prefect
    server; each fal request then holds one slot from submit to result.
    """
    import asyncio

    from klingflow.errors import ConfigError
    from klingflow.flows.server import use_local_server
    from klingflow.flows.team import read_team_limit, set_team_limit

    use_local_server()
    limit = asyncio.run(set_team_limit(name, slots) if slots is not None else read_team_limit(name))
    if limit is None:
        raise ConfigError(
            f"no limit named {name!r} on the Prefect server", hint=f"klingflow team-limit {name} --slots N"
        )
    out().print(
        f"{limit.name}: {limit.active_slots} of {limit.limit} slots in use"
        + ("" if limit.active else " (inactive)"),
        markup=False,
        highlight=False,
    )


def add_prefect_commands(app: typer.Typer) -> None:
    """Attach ``blocks``, ``serve`` and ``team-limit`` to ``app``."""
    app.add_typer(blocks_app, name="blocks")
    app.command("serve")(serve)
    app.command("team-limit")(team_limit)
