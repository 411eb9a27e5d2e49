"""The ``klingflow emulator`` commands: ``serve``, ``env``, ``stats``.

:func:`add_emulator_commands` registers them on a Typer group (``klingflow.cli`` mounts them as
``klingflow emulator ...``, the way it mounts the ledger commands). The module also runs on its
own, ``python -m klingflow.emulator.cli serve ...``, with the same commands and flags.
"""

from __future__ import annotations

import json
import shlex
import ssl
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import httpx
import typer
from rich.console import Console

from klingflow.errors import ConfigError, KlingflowError

__all__ = ["add_emulator_commands", "main"]

F = TypeVar("F", bound=Callable[..., Any])
_PORT_HELP = "Queue port of the emulator (default: the running one)."
_ENV = "default: $KLINGFLOW_EMULATOR_{}, else {}"


def add_emulator_commands(group: typer.Typer, friendly_errors: Callable[[F], F]) -> None:
    """Register ``serve``, ``env`` and ``stats`` on ``group``; ``friendly_errors`` wraps each command."""

    @group.command("serve")
    @friendly_errors
    def serve(
        port: Annotated[
            int, typer.Option(help="Queue port (the run port is PORT+1); 0 picks free ports.")
        ] = 8790,
        host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
        latency: Annotated[float, typer.Option(help="Seconds each request spends IN_PROGRESS.")] = 2.0,
        workers: Annotated[
            int, typer.Option(help="Requests processed at once; the rest wait IN_QUEUE.")
        ] = 2,
        faults: Annotated[
            str,
            typer.Option(
                help="Faults to inject: KIND[:RATE],... or script=KIND+KIND+ok (kinds: 429 500 502 503 "
                "ingress-502 ingress-503 ingress-504 drop lost stuck error startup_timeout "
                "runner_scheduling_failure runner_disconnected result_404 truncated; KIND@upload "
                "targets uploads)."
            ),
        ] = "",
        offline: Annotated[
            bool, typer.Option(help="Never fetch http(s) inputs; use labelled placeholders.")
        ] = False,
        validation: Annotated[
            str | None,
            typer.Option(
                help="'model': an invalid input is accepted and its result answers 422, as on fal; "
                "'submit': the submit answers 422 at once. " + _ENV.format("VALIDATION", "model")
            ),
        ] = None,
        result_retention: Annotated[
            float | None,
            typer.Option(
                help="Seconds a result stays fetchable after completion, then 404. "
                + _ENV.format("RESULT_RETENTION", "3600 (fal: 1 hour)")
            ),
        ] = None,
        large_result_retention: Annotated[
            float | None,
            typer.Option(
                help="The same for results of 10 KB or more. "
                + _ENV.format("LARGE_RESULT_RETENTION", "360 (fal: 6 minutes)")
            ),
        ] = None,
        media_expiry: Annotated[
            float | None,
            typer.Option(
                help="Seconds output and uploaded files are served, unless a request's "
                "X-Fal-Object-Lifecycle-Preference says otherwise. " + _ENV.format("MEDIA_EXPIRY", "kept")
            ),
        ] = None,
        render_mode: Annotated[
            str | None,
            typer.Option(
                help="'full' renders every request; 'prerendered' (benchmark mode) renders one stock "
                "clip per endpoint, size and length and gives each request a distinct copy. "
                + _ENV.format("RENDER", "full")
            ),
        ] = None,
        tunnel_port: Annotated[
            int, typer.Option(help="Port of the CONNECT tunnel to fal's fixed hosts; 0 picks a free one.")
        ] = 0,
    ) -> None:
        """Run the fal-compatible emulator in the foreground (Ctrl-C stops it)."""
        from klingflow.emulator.faults import parse_faults
        from klingflow.emulator.server import EmulatorServer

        try:
            plan = parse_faults(faults)
        except ValueError as exc:
            raise ConfigError(str(exc), context="--faults") from exc
        server = EmulatorServer(
            host=host,
            port=port,
            latency=latency,
            workers=workers,
            faults=plan,
            fetch_remote=not offline,
            validation=validation,  # type: ignore[arg-type]  # checked by EmulatorOptions
            result_retention=result_retention,
            large_result_retention=large_result_retention,
            media_expiry=media_expiry,
            render=render_mode,  # type: ignore[arg-type]
            tunnel_port=tunnel_port,
        )
        out = Console()
        out.print(f"klingflow emulator: queue https://{server.queue_host}  run https://{server.run_host}")
        out.print(f"  tunnel to fal's fixed hosts: {server.proxy_url}")
        out.print('Point fal_client at it with:  eval "$(klingflow emulator env)"')
        server.serve_forever()

    @group.command("env")
    @friendly_errors
    def env(port: Annotated[int | None, typer.Option(help=_PORT_HELP)] = None) -> None:
        """Print the environment lines that point fal_client (and curl) at the emulator."""
        from klingflow.emulator.server import running_environment

        for name, value in running_environment(port).items():
            print(f"export {name}={shlex.quote(value)}")

    @group.command("stats")
    @friendly_errors
    def stats(port: Annotated[int | None, typer.Option(help=_PORT_HELP)] = None) -> None:
        """Print the emulator's counters (submits per endpoint, cancels, faults injected) as JSON."""
        from klingflow.emulator.server import running_environment

        environment = running_environment(port)
        try:
            response = httpx.get(
                f"https://{environment['FAL_QUEUE_RUN_HOST']}/_emulator/stats",
                headers={"Authorization": f"Key {environment['FAL_KEY']}"},
                verify=ssl.create_default_context(cafile=environment["SSL_CERT_FILE"]),
                trust_env=False,
            )
        except httpx.HTTPError as exc:
            raise ConfigError(
                f"cannot reach the emulator ({exc})", hint="is `klingflow emulator serve` running?"
            ) from exc
        print(json.dumps(response.json(), indent=2))


def _plain_errors(command: F) -> F:
    """Print a KlingflowError as what / where / hint and exit 1 (standalone use of this module)."""
    import functools

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except KlingflowError as exc:
            console = Console(stderr=True)
            console.print(f"error: {exc.message}", markup=False, highlight=False)
            if exc.context:
                console.print(f"  where: {exc.context}", markup=False, highlight=False)
            if exc.hint:
                console.print(f"  hint: {exc.hint}", markup=False, highlight=False)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def main() -> None:
    """``python -m klingflow.emulator.cli``: the emulator commands on their own."""
    app = typer.Typer(help="The fal-compatible local emulator.", no_args_is_help=True)
    add_emulator_commands(app, _plain_errors)
    app()


if __name__ == "__main__":
    main()
