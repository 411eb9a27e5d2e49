"""``klingflow emulator serve | env | stats``: the fal-compatible local emulator from a shell."""

from __future__ import annotations

import json
import shlex
import ssl
from typing import Annotated

import httpx
import typer

from klingflow.cli._errors import friendly_errors, out
from klingflow.errors import ConfigError

__all__ = ["emulator_app"]

emulator_app = typer.Typer(help="The fal-compatible local emulator.", no_args_is_help=True)


@emulator_app.command("serve")
@friendly_errors
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
    console = out()
    console.print(f"klingflow emulator: queue https://{server.queue_host}  run https://{server.run_host}")
    console.print('Point fal_client at it with:  eval "$(klingflow emulator env)"')
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
@friendly_errors
def emulator_env(
    port: Annotated[
        int | None, typer.Option(help="Queue port of the emulator (default: the running one).")
    ] = None,
) -> None:
    """Print the environment lines that point fal_client (and curl) at the emulator."""
    for name, value in _running_environment(port).items():
        print(f"export {name}={shlex.quote(value)}")


@emulator_app.command("stats")
@friendly_errors
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
