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
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return True  # unreadable: let Prefect decide
    active = os.environ.get("PREFECT_PROFILE") or data.get("active") or "ephemeral"
    profile = data.get("profiles", {}).get(active)
    return not isinstance(profile, dict) or _API in profile


def prefect_api_may_be_configured(cwd: Path | None = None) -> bool:
    """True unless no Prefect setting the user made can name an API (``cwd``: where Prefect looks)."""
    here = cwd or Path.cwd()
    url = os.environ.get(_API)
    if url and url != os.environ.get(OWN_URL):
        return True
    if os.environ.get("PREFECT_PROFILES_PATH") or (here / "prefect.toml").exists():
        return True
    for name, marker in ((".env", "PREFECT_"), ("pyproject.toml", "tool.prefect")):
        try:
            if marker in (here / name).read_text(encoding="utf-8", errors="replace"):
                return True
        except OSError:
            continue  # no such file
    prefect_home = Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()
    profiles = prefect_home / "profiles.toml"
    if profiles.exists():
        return _profile_names_an_api(profiles)
    return bool(os.environ.get("PREFECT_PROFILE"))  # a profile chosen, with no file: Prefect's own
