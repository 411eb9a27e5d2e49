"""Whether Prefect's own settings might name an API, answered without importing Prefect.

Prefect knows exactly which API its settings name (environment, ``.env``, ``prefect.toml``,
``pyproject.toml``, the active profile), and :mod:`klingflow.flows.server` asks it. Asking costs
Prefect's import, 1.4-1.7 s on two cores: more than the whole of a fully cached re-run, which
``klingflow run`` does without Prefect when the run reports to klingflow's own local server.
This check only has to be safe, not exact: any sign of a configured API (or a settings file it
cannot rule out) answers True, and the run takes the ordinary path where Prefect decides. It
reads the same places Prefect does (``prefect.settings.sources`` in Prefect 3.8), never more.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

from klingflow.prefect_server._manager import OWN_URL

__all__ = ["prefect_api_may_be_configured"]

_API = "PREFECT_API_URL"


def _profile_names_an_api(path: Path) -> bool:
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    active = os.environ.get("PREFECT_PROFILE") or data.get("active") or "ephemeral"
    profile = data.get("profiles", {}).get(active)
    return not isinstance(profile, dict) or _API in {name.upper() for name in profile}


def _settings_name_an_api(here: Path) -> bool:
    environment = {name.upper(): value for name, value in os.environ.items()}  # Prefect ignores case
    url = environment.get(_API)
    if url and url != os.environ.get(OWN_URL):
        return True
    if "PREFECT_PROFILES_PATH" in environment or (here / "prefect.toml").exists():
        return True
    dotenv = here / ".env"
    if dotenv.is_file() and "PREFECT_" in dotenv.read_text(encoding="utf-8", errors="replace").upper():
        return True
    pyproject = here / "pyproject.toml"
    if pyproject.is_file():
        tables = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("tool", {})
        if "prefect" in tables:
            return True
    prefect_home = Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()  # as Prefect
    profiles = prefect_home / "profiles.toml"
    if profiles.exists():
        return _profile_names_an_api(profiles)
    return "PREFECT_PROFILE" in environment  # a profile chosen, with no file: let Prefect say


def prefect_api_may_be_configured(cwd: Path | None = None) -> bool:
    """True unless no Prefect setting the user made can name an API (``cwd``: where Prefect looks).

    Anything it cannot read or make sense of (a broken TOML file, an unreadable folder) answers True.
    """
    try:
        return _settings_name_an_api(cwd or Path.cwd())
    except Exception:  # unreadable or odd (a TOML error, `tool = 1`, no home folder): Prefect decides
        return True
