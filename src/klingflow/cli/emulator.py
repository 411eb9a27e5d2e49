"""``klingflow emulator serve | env | stats``: the fal-compatible local emulator from a shell.

Every behaviour switch of :class:`~klingflow.emulator.options.EmulatorOptions` is a flag of
``serve`` and a ``KLINGFLOW_EMULATOR_*`` setting (:mod:`klingflow.settings`).
"""

from __future__ import annotations

import json
import shlex
import ssl
from typing import Annotated

import typer

from klingflow.cli._errors import friendly_errors, out
from klingflow.errors import ConfigError

__all__ = ["emulator_app"]

emulator_app = typer.Typer(help="The fal-compatible local emulator.", no_args_is_help=True)
_PORT_HELP = "Queue port of the emulator (default: the running one)."
_ENV = "default: $KLINGFLOW_EMULATOR_{}, else {}"


@emulator_app.command("serve")
@friendly_errors
def serve(
    port: Annotated[
        int, typer.Option(help="Queue port (the run port is PORT+1); 0 picks free ports.")
    ] = 8790,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    latency: Annotated[float, typer.Option(help="Seconds each request spends IN_PROGRESS.")] = 2.0,
    workers: Annotated[int, typer.Option(help="Requests processed at once; the rest wait IN_QUEUE.")] = 2,
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
    console = out()
    console.print(f"klingflow emulator: queue https://{server.queue_host}  run https://{server.run_host}")
    console.print(f"  tunnel to fal's fixed hosts: {server.proxy_url}")
    console.print('Point fal_client at it with:  eval "$(klingflow emulator env)"')
    server.serve_forever()


@emulator_app.command("env")
@friendly_errors
def env(port: Annotated[int | None, typer.Option(help=_PORT_HELP)] = None) -> None:
    """Print the environment lines that point fal_client (and curl) at the emulator."""
    from klingflow.emulator.server import running_environment

    for name, value in running_environment(port).items():
        print(f"export {name}={shlex.quote(value)}")


@emulator_app.command("stats")
@friendly_errors
def stats(port: Annotated[int | None, typer.Option(help=_PORT_HELP)] = None) -> None:
    """Print the emulator's counters (submits per endpoint, cancels, faults injected) as JSON."""
    import httpx

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
