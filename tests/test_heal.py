"""A stored clip that rots is fetched again from fal, never paid for twice while fal keeps it.

Each test runs ``klingflow run`` (a real process) through the tests' own TLS proxy, which counts
the submits the emulator accepted, then damages the home's stored outputs the way a disk, a
careless ``rm`` or a half-finished copy does (cut in half, deleted, altered), and runs again:

* while fal keeps the results (an hour after they completed), the re-run fetches them from their
  requests: zero new accepted submits, the rows cached with a ``refetched`` billing note, and the
  store intact again; ``klingflow verify`` sees the damage and ``--repair`` mends it the same way;
* once fal's retention has passed (the emulator's ``result_retention``), the re-run pays for a
  new generation and the ledger's ``billing_note`` says why.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from conftest import KLINGFLOW, EmulatorAdmin
from faultproxy import FaultProxy
from klingflow.cache import Journal, Store
from moneyhelpers import accepted_by_endpoint, klingflow_run, ledger_rows, run_env

pytestmark = pytest.mark.slow

PIPELINE = """\
name: heal
steps:
  - id: dawn
    uses: text-to-video
    with: {prompt: "dawn over a calm sea, for healing"}
  - id: dusk
    uses: text-to-video
    with: {prompt: "dusk over a calm sea, for healing"}
"""


def _stored(home: Path) -> dict[str, Path]:
    """Each done generation's stored file, by its step (the journal's records in the run's home)."""
    store, found = Store(home / "store"), {}
    for entry in Journal(home / "journal").entries():
        if entry.status == "done" and entry.request_id:
            (output,) = entry.outputs.values()
            found[entry.key] = store.path_for(output.sha256, output.suffix)
    return found


def _first_run(tmp_path: Path, proxy: FaultProxy, prefect: dict[str, str]) -> tuple[Path, dict[str, str]]:
    spec = tmp_path / "heal.yaml"
    spec.write_text(PIPELINE)
    env = run_env(proxy, tmp_path / "home", prefect, tmp_path / "prefect")
    code, output = klingflow_run(spec, env, tmp_path / "out1")
    assert code == 0, output
    assert accepted_by_endpoint(proxy)["text-to-video"] == 2
    return spec, env


def _damage(paths: list[Path]) -> None:
    """Cut the first file to half, delete the second, flip a byte of any third."""
    cut, deleted, *altered = paths
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    deleted.unlink()
    for path in altered:
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))


def test_rotted_outputs_are_fetched_again_from_fal_with_no_new_submit(
    fault_proxy: FaultProxy, session_prefect: dict[str, str], tmp_path: Path
) -> None:
    spec, env = _first_run(tmp_path, fault_proxy, session_prefect)
    home = tmp_path / "home"
    stored = _stored(home)
    assert len(stored) == 2
    _damage(list(stored.values()))

    code, output = klingflow_run(spec, env, tmp_path / "out2")

    assert code == 0, output
    assert accepted_by_endpoint(fault_proxy)["text-to-video"] == 2, "a rotted clip was paid for again"
    store = Store(home / "store")
    for path in stored.values():
        assert path.is_file() and store.find(path.stem) is not None, f"{path} was not mended"
    second = [r for r in ledger_rows(home) if r["run_id"] != ledger_rows(home)[0]["run_id"]]
    assert {r["step_id"]: r["status"] for r in second} == {"dawn": "cached", "dusk": "cached"}
    assert all((r["billing_note"] or "").startswith("refetched") for r in second), second
    assert all(r["estimated_cost_usd"] == 0 for r in second)

    # Damage again, and let `klingflow verify` find it and `--repair` mend it the same way.
    _damage(list(stored.values())[::-1])
    checked = subprocess.run([*KLINGFLOW, "verify"], env=env, capture_output=True, text=True)
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert "2 bad" in checked.stdout, checked.stdout
    repaired = subprocess.run([*KLINGFLOW, "verify", "--repair"], env=env, capture_output=True, text=True)
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert "2 refetched" in repaired.stdout, repaired.stdout
    assert all(store.find(path.stem) is not None for path in stored.values())
    clean = subprocess.run([*KLINGFLOW, "verify"], env=env, capture_output=True, text=True)
    assert clean.returncode == 0 and "0 bad" in clean.stdout, clean.stdout
    assert accepted_by_endpoint(fault_proxy)["text-to-video"] == 2


def test_once_fal_no_longer_keeps_the_result_the_rerun_pays_and_says_why(
    fault_proxy: FaultProxy, session_prefect: dict[str, str], emulator: EmulatorAdmin, tmp_path: Path
) -> None:
    config = f"{emulator.base}/_emulator/config"
    emulator._client.post(config, json={"result_retention": 1}).raise_for_status()
    try:
        spec, env = _first_run(tmp_path, fault_proxy, session_prefect)
        home = tmp_path / "home"
        stored = list(_stored(home).values())
        time.sleep(1.5)  # fal's retention (1 s here, an hour on fal) has passed
        stored[0].unlink()

        code, output = klingflow_run(spec, env, tmp_path / "out2")
    finally:
        emulator._client.post(config, json={"result_retention": 3600}).raise_for_status()

    assert code == 0, output
    assert accepted_by_endpoint(fault_proxy)["text-to-video"] == 3, "only the lost clip is paid again"
    rows = ledger_rows(home)
    second = [r for r in rows if r["run_id"] != rows[0]["run_id"]]
    by_status = sorted(r["status"] for r in second)
    assert by_status == ["cached", "completed"], second
    (paid,) = [r for r in second if r["status"] == "completed"]
    assert paid["billing_note"].startswith("result_gone"), paid
    assert "failed verification" in paid["billing_note"]
