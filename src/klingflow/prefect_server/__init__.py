"""A local Prefect server that outlives a run, shared by every klingflow run of one ``KLINGFLOW_HOME``.

With no Prefect API configured, Prefect's ephemeral mode starts a temporary server inside every
process (seconds per run), stops it at exit, keeps no history a UI could show, and leaves it
orphaned when the process is killed. Instead, :func:`use_local_server` makes every run share one
background ``prefect server start`` per home, started on first use and stopped after it has been
idle for ``KLINGFLOW_SERVER_IDLE_MINUTES`` (``klingflow server start | status | stop``). A process
that only reports what was already done (a fully cached run's recorder) uses :func:`find_server`,
which never starts one: a server the user stopped stays stopped.

This package belongs to the core although it manages a Prefect server: it never imports Prefect. The
server is ``prefect server start`` (through ``flows/sqlite_server.py``, which begins its SQLite
transactions IMMEDIATE) run by a stdlib-only supervisor script (:mod:`._supervisor`), and everything
else is files, signals and one HTTP health check (:mod:`._manager`, :mod:`._lease`), so ``klingflow
server status`` answers at once. What only Prefect knows (the API URL a user configured in a
profile; refreshing an imported Prefect's settings) is done by the Prefect layer,
:mod:`klingflow.flows.server`; the CLI's fully cached run, which skips Prefect's import, only asks
:func:`prefect_api_may_be_configured`, a safe over-estimate read from the same files.

Settings (:mod:`klingflow.settings`): ``KLINGFLOW_PREFECT`` (``local`` | ``ephemeral``),
``KLINGFLOW_SERVER_PORT``, ``KLINGFLOW_SERVER_IDLE_MINUTES``, ``KLINGFLOW_SERVER_START_TIMEOUT``.
"""

from klingflow.prefect_server._configured import prefect_api_may_be_configured
from klingflow.prefect_server._lease import use_local_server
from klingflow.prefect_server._manager import (
    LocalServer,
    ServerStatus,
    ensure_server,
    find_server,
    installed_prefect_version,
    server_paths,
    server_status,
    stop_server,
)

__all__ = [
    "LocalServer",
    "ServerStatus",
    "ensure_server",
    "find_server",
    "installed_prefect_version",
    "prefect_api_may_be_configured",
    "server_paths",
    "server_status",
    "stop_server",
    "use_local_server",
]
