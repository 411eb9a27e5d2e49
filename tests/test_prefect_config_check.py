"""`prefect_server.prefect_api_may_be_configured`: may the user's Prefect settings name an API?

A fully cached `klingflow run` skips Prefect only when the run reports to klingflow's local server,
which it must decide without importing Prefect; the check reads the places Prefect reads its
settings from and must answer True whenever one of them could name an API (then Prefect decides).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from klingflow.prefect_server import prefect_api_may_be_configured as may

_CLEARED = (
    "PREFECT_API_URL",
    "KLINGFLOW_LOCAL_PREFECT_API_URL",
    "PREFECT_PROFILE",
    "PREFECT_PROFILES_PATH",
)


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project folder with no Prefect settings, and a Prefect home with no profiles file."""
    for name in _CLEARED:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect-home"))
    folder = tmp_path / "project"
    folder.mkdir()
    assert may(folder) is False
    return folder


def test_the_environment_names_an_api_unless_klingflow_set_it(
    here: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    assert may(here) is True  # the user's
    monkeypatch.setenv("KLINGFLOW_LOCAL_PREFECT_API_URL", "http://127.0.0.1:4200/api")
    assert may(here) is False  # klingflow's own, set by an earlier call in this process
    monkeypatch.delenv("PREFECT_API_URL")
    monkeypatch.setenv("prefect_api_url", "http://prefect.example/api")
    assert may(here) is True  # Prefect's settings ignore case


@pytest.mark.parametrize(
    ("name", "text", "names_an_api"),
    [
        (".env", "FAL_KEY=x\n", False),
        (".env", "prefect_api_url=http://prefect.example/api\n", True),
        ("pyproject.toml", '[project]\nname = "studio"\ndependencies = ["prefect>=3"]\n', False),
        ("pyproject.toml", "[tool.prefect.api]\nurl = 'http://prefect.example/api'\n", True),
        ("pyproject.toml", "tool = { prefect = { api = { url = 'http://prefect.example/api' } } }\n", True),
        ("pyproject.toml", "[tool.prefect\n", True),  # unreadable: Prefect decides
        ("prefect.toml", "", True),
    ],
)
def test_project_files(here: Path, name: str, text: str, names_an_api: bool) -> None:
    (here / name).write_text(text)
    assert may(here) is names_an_api


def test_the_active_profile(here: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    profiles = tmp_path / "prefect-home" / "profiles.toml"
    profiles.parent.mkdir()
    profiles.write_text(  # what `prefect profile create` / `prefect cloud login` leave
        'active = "ephemeral"\n[profiles.ephemeral]\nPREFECT_SERVER_ALLOW_EPHEMERAL_MODE = "true"\n'
        '[profiles.cloud]\nPREFECT_API_URL = "https://api.prefect.cloud/api/accounts/a/workspaces/w"\n'
    )
    assert may(here) is False
    monkeypatch.setenv("PREFECT_PROFILE", "cloud")
    assert may(here) is True
    monkeypatch.setenv("PREFECT_PROFILE", "no-such-profile")
    assert may(here) is True
    monkeypatch.delenv("PREFECT_PROFILE")
    profiles.write_text(
        'active = "cloud"\n[profiles.cloud]\nprefect_api_url = "http://prefect.example/api"\n'
    )
    assert may(here) is True
    profiles.write_text("active = [broken")
    assert may(here) is True
    profiles.write_text('active = "ephemeral"\n[profiles.ephemeral]\n')
    assert may(here) is False
    monkeypatch.setenv("PREFECT_PROFILES_PATH", str(profiles))
    assert may(here) is True  # a profiles file of the user's choosing: Prefect decides
    monkeypatch.delenv("PREFECT_PROFILES_PATH")
    profiles.write_text('active = "ephemeral"\nprofiles = "not a table"\n')
    assert may(here) is True
