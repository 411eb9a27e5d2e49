"""The ``klingflow`` command: one module per command group, one error boundary.

* :mod:`~klingflow.cli.run`: ``validate``, ``plan``, ``run``;
* :mod:`~klingflow.cli.approve`: ``approve RUN_ID [--reject]``, ``approve --batch ID --all``;
* :mod:`~klingflow.cli.ledger`: ``ledger``, ``ledger summary``, ``report``;
* :mod:`~klingflow.cli.emulator`: ``emulator serve | env | stats``;
* :mod:`~klingflow.cli.endpoints`: ``endpoints list | show | refresh`` (fal's schemas and prices);
* :mod:`~klingflow.cli.prefect`: ``blocks register``, ``serve``, ``team-limit NAME [--slots N]``;
* :mod:`~klingflow.cli.server`: ``server start | status | stop`` (the local Prefect server);
* :mod:`~klingflow.cli.verify`: ``verify [--repair]`` (the stored outputs, hashed; mended from fal);
* :mod:`~klingflow.cli.housekeeping`: ``gc [--older-than 30d] [--dry-run]`` (what nothing kept needs).

Errors klingflow raises on purpose are printed as what / where / hint with exit code 1 by
:func:`~klingflow.cli._errors.friendly_errors`; anything else keeps its traceback. Heavy modules
(Prefect, PyAV, the engine) are imported by the commands that need them, so ``--help`` is quick.
"""

from __future__ import annotations

import typer

from klingflow.cli._errors import friendly_errors
from klingflow.cli.approve import add_approve_command
from klingflow.cli.emulator import emulator_app
from klingflow.cli.endpoints import endpoints_app
from klingflow.cli.housekeeping import add_housekeeping_commands
from klingflow.cli.ledger import add_ledger_commands
from klingflow.cli.prefect import add_prefect_commands
from klingflow.cli.run import add_run_commands
from klingflow.cli.server import server_app
from klingflow.cli.verify import add_verify_commands

__all__ = ["app", "main"]

app = typer.Typer(
    help="Declarative Kling video pipelines on fal.ai, with a local fal emulator.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
add_run_commands(app)
add_approve_command(app)
add_ledger_commands(app, friendly_errors)
app.add_typer(emulator_app, name="emulator")
app.add_typer(endpoints_app, name="endpoints")
add_prefect_commands(app)
app.add_typer(server_app, name="server")
add_verify_commands(app)
add_housekeeping_commands(app)


def main() -> None:
    """Entry point of the ``klingflow`` console script."""
    app(prog_name="klingflow")
