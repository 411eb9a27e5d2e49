"""The ``klingflow`` command.

Errors klingflow raises on purpose (:class:`~klingflow.errors.KlingflowError`) are caught at one
boundary and printed as what / where / hint with exit code 1; anything else keeps its traceback.
"""

from __future__ import annotations

import functools
import json
import shlex
import ssl
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import httpx
import typer
from rich.console import Console

from klingflow.cli_ledger import add_ledger_commands
from klingflow.errors import ConfigError, KlingflowError

__all__ = ["app", "main"]

app = typer.Typer(
    help="Declarative Kling video pipelines on fal.ai, with a local fal emulator.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
emulator_app = typer.Typer(help="The fal-compatible local emulator.", no_args_is_help=True)
app.add_typer(emulator_app, name="emulator")
blocks_app = typer.Typer(help="Prefect blocks: fal credentials and Kling defaults.", no_args_is_help=True)
app.add_typer(blocks_app, name="blocks")
console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


def _friendly_errors(command: F) -> F:
    """Render KlingflowError as what/where/hint and exit 1, instead of a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except KlingflowError as exc:
            console.print(f"[bold red]error[/] [dim]({exc.reference})[/]")
            if exc.context:
                console.print(f"  where: {exc.context}", markup=False, highlight=False)
            console.print(f"  {exc.message}", markup=False, highlight=False)
            if exc.hint:
                console.print(f"  hint: {exc.hint}", markup=False, highlight=False)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


add_ledger_commands(app, _friendly_errors)


@emulator_app.command("serve")
@_friendly_errors
def emulator_serve(
    port: Annotated[
        int, typer.Option(help="Queue port (the run port is PORT+1); 0 picks free ports.")
    ] = 8790,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    latency: Annotated[float, typer.Option(help="Seconds each request spends IN_PROGRESS.")] = 2.0,
    workers: Annotated[int, typer.Option(help="Requests processed at once; the rest wait IN_QUEUE.")] = 2,
    faults: Annotated[
        str,
        typer.Option(
            help="Faults to inject: KIND[:RATE],... or script=KIND+KIND+ok (kinds: 429 500 502 503 drop "
            "stuck error result_404 truncated)."
        ),
    ] = "",
    offline: Annotated[
        bool, typer.Option(help="Never fetch http(s) inputs; use labelled placeholders.")
    ] = False,
) -> None:
    """Run the fal-compatible emulator in the foreground (Ctrl-C stops it)."""
    from klingflow.emulator.faults import parse_faults
    from klingflow.emulator.server import EmulatorServer

    try:
        plan = parse_faults(faults)
    except ValueError as exc:
        raise ConfigError(str(exc), context="--faults") from exc
    server = EmulatorServer(
        host=host, port=port, latency=latency, workers=workers, faults=plan, fetch_remote=not offline
    )
    out = Console()
    out.print(f"klingflow emulator: queue https://{server.queue_host}  run https://{server.run_host}")
    out.print('Point fal_client at it with:  eval "$(klingflow emulator env)"')
    server.serve_forever()


def _running_environment(port: int | None) -> dict[str, str]:
    from klingflow.emulator.server import client_environment, read_server_file
    from klingflow.emulator.tls import emulator_identity

    identity = emulator_identity()
    if port is None:
        info = read_server_file()
        queue_host, run_host = str(info["queue_host"]), str(info["run_host"])
    else:
        queue_host, run_host = f"127.0.0.1:{port}", f"127.0.0.1:{port + 1}"
    return client_environment(queue_host, run_host, identity.key, identity.ca_bundle)


@emulator_app.command("env")
@_friendly_errors
def emulator_env(
    port: Annotated[
        int | None, typer.Option(help="Queue port of the emulator (default: the running one).")
    ] = None,
) -> None:
    """Print the environment lines that point fal_client (and curl) at the emulator."""
    for name, value in _running_environment(port).items():
        print(f"export {name}={shlex.quote(value)}")


@emulator_app.command("stats")
@_friendly_errors
def emulator_stats(
    port: Annotated[
        int | None, typer.Option(help="Queue port of the emulator (default: the running one).")
    ] = None,
) -> None:
    """Print the emulator's counters (submits per endpoint, cancels, faults injected) as JSON."""
    env = _running_environment(port)
    try:
        response = httpx.get(
            f"https://{env['FAL_QUEUE_RUN_HOST']}/_emulator/stats",
            headers={"Authorization": f"Key {env['FAL_KEY']}"},
            verify=ssl.create_default_context(cafile=env["SSL_CERT_FILE"]),
        )
    except httpx.HTTPError as exc:
        raise ConfigError(
            f"cannot reach the emulator ({exc})", hint="is `klingflow emulator serve` running?"
        ) from exc
    print(json.dumps(response.json(), indent=2))


def _parse_sets(values: list[str]) -> dict[str, str]:
    parsed = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ConfigError(
                f"--set expects name=value, got {item!r}",
                context="--set",
                hint='for example --set subject="a lighthouse keeper"',
            )
        parsed[name.strip()] = value
    return parsed


FileArg = Annotated[Path, typer.Argument(help="The pipeline YAML file.")]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", help="Set a pipeline input: name=value (repeatable).")
]
BackendOpt = Annotated[
    str | None,
    typer.Option(help="emulator or fal (default: fal when FAL_KEY is set, else the embedded emulator)."),
]


@app.command()
@_friendly_errors
def validate(
    file: FileArg,
    set_: SetOpt = None,
) -> None:
    """Check a pipeline completely, without running or spending anything."""
    from klingflow.spec import check, load_pipeline

    validated = check(load_pipeline(file), _parse_sets(set_ or []))
    Console().print(
        f"[green]ok[/] {file}: {len(validated.order)} steps, order: {' -> '.join(validated.order)}"
    )


@app.command()
@_friendly_errors
def plan(
    file: FileArg,
    set_: SetOpt = None,
    backend: BackendOpt = None,
    refresh: Annotated[bool, typer.Option(help="Plan as if every step were regenerated.")] = False,
) -> None:
    """Show each step's status (cached / run / resume), estimated cost and seconds, and the total."""
    from klingflow.runtime import RunOptions, plan_pipeline

    result = plan_pipeline(file, _parse_sets(set_ or []), RunOptions(backend=backend, refresh=refresh))
    Console().print(result.table())


class _Progress:
    """Live counts (done / running / cached / failed) and one line per finished step."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.running: set[str] = set()
        self.counts = {"completed": 0, "cached": 0, "failed": 0, "skipped": 0}

    def __call__(self, name: str, record: Any) -> None:
        if record is None:
            self.running.add(name)
            return
        self.running.discard(name)
        self.counts[record.status] = self.counts.get(record.status, 0) + 1
        mark = {
            "completed": "[green]done[/]",
            "cached": "[cyan]cached[/]",
            "failed": "[red]FAILED[/]",
            "skipped": "[yellow]skipped[/]",
        }[record.status]
        detail = f"${record.estimated_cost_usd:.3f}" if record.status == "completed" else ""
        if record.error:
            detail = record.error.splitlines()[0]
        self.console.print(
            f"{mark:>22} {name:<24} {detail}  [dim]({self.summary()})[/]", highlight=False, soft_wrap=True
        )

    def summary(self) -> str:
        return (
            f"{self.counts['completed']} done, {len(self.running)} running, {self.counts['cached']} cached, "
            f"{self.counts['failed']} failed"
        )


@app.command()
@_friendly_errors
def run(
    file: FileArg,
    set_: SetOpt = None,
    backend: BackendOpt = None,
    concurrency: Annotated[
        int | None, typer.Option(help="Requests in flight at once (default 4, or the defaults block's).")
    ] = None,
    refresh: Annotated[bool, typer.Option(help="Regenerate every step instead of using the cache.")] = False,
    max_cost: Annotated[
        float | None, typer.Option(help="Refuse to start if the uncached estimate exceeds USD.")
    ] = None,
    credentials: Annotated[str | None, typer.Option(help="Name of a FalCredentials block to use.")] = None,
    defaults: Annotated[str | None, typer.Option(help="Name of a KlingDefaults block to use.")] = None,
    out: Annotated[
        Path | None, typer.Option(help="Where to copy the final outputs (default ./klingflow-out/NAME).")
    ] = None,
) -> None:
    """Run a pipeline as a Prefect flow, showing progress, and print the final outputs' paths."""
    from klingflow.flows.pipeline import PipelineFailed, run_pipeline
    from klingflow.runtime import RunOptions
    from klingflow.spec import load_pipeline

    spec = load_pipeline(file)
    console = Console()
    progress = _Progress(console)
    try:
        result = run_pipeline(
            spec,
            _parse_sets(set_ or []),
            backend=backend,
            credentials=credentials,
            defaults=defaults,
            concurrency=concurrency,
            refresh=refresh,
            max_cost_usd=max_cost,
            out_dir=out,  # else the defaults block's output_location, else ./klingflow-out/NAME
            options=RunOptions(out_dir=Path("klingflow-out") / spec.name),
            progress=progress,
        )
    except PipelineFailed as exc:
        _print_final(console, exc.result)
        raise
    _print_final(console, result)


def _print_final(console: Console, result: Any) -> None:
    spent = sum(r.estimated_cost_usd for r in result.records)
    console.print(
        f"\n[bold]{result.pipeline}[/]: {result.status}, estimated spend ${spent:.3f} (run {result.run_id})",
        soft_wrap=True,
    )
    for step_id, path in result.final.items():
        console.print(f"  {step_id}: {path.resolve()}", highlight=False, soft_wrap=True)


@blocks_app.command("register")
@_friendly_errors
def blocks_register() -> None:
    """Register the FalCredentials and KlingDefaults block types with the current Prefect API."""
    from klingflow.blocks import register_blocks

    for slug in register_blocks():
        Console().print(f"registered block type [bold]{slug}[/]")


@app.command()
@_friendly_errors
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


def main() -> None:
    """Entry point of the ``klingflow`` console script."""
    app(prog_name="klingflow")


if __name__ == "__main__":
    sys.exit(main())
