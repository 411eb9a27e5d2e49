"""Blocks: Prefect's block standards, the secret stays secret, and runs use credentials + defaults blocks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from prefect.settings import PREFECT_API_URL
from prefect.testing.standard_test_suites.blocks import BlockStandardTestSuite
from prefect.testing.utilities import prefect_test_harness
from pydantic import SecretStr

from klingflow import RunOptions, ledger, parse_pipeline, run_pipeline
from klingflow.blocks import FalCredentials, KlingDefaults, register_blocks
from klingflow.cache import Journal, Store
from klingflow.errors import BudgetError
from klingflow.ledger import summary

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def prefect_server():
    with prefect_test_harness(server_startup_timeout=60):
        yield


class _Standards(BlockStandardTestSuite):
    """Prefect's block standards; the logo check is not among those run (it downloads the logo)."""

    def block(self):  # the abstract fixture; the test below passes each block directly
        return FalCredentials


@pytest.mark.parametrize("block", [FalCredentials, KlingDefaults])
def test_block_standards(block) -> None:
    suite = _Standards()
    suite.test_has_a_description(block)
    suite.test_has_a_documentation_url(block)
    suite.test_all_fields_have_a_description(block)
    suite.test_has_a_valid_code_example(block)


def test_register_and_the_key_never_shows(emulator) -> None:
    assert register_blocks() == ["fal-credentials", "kling-defaults"]
    FalCredentials(key=SecretStr("planted-key-123456")).save("secret-check", overwrite=True)
    loaded = FalCredentials.load("secret-check")
    assert loaded.key.get_secret_value() == "planted-key-123456"
    for text in (repr(loaded), str(loaded), loaded.model_dump_json()):
        assert "planted-key-123456" not in text


def test_run_with_credentials_and_defaults_blocks(emulator, tmp_path: Path) -> None:
    FalCredentials(
        key=SecretStr(emulator.key), queue_host=emulator.server.queue_host, run_host=emulator.server.run_host
    ).save("emulator-credentials", overwrite=True)
    KlingDefaults(
        arguments={"tts": {"voice_id": "AOT", "voice_speed": 1.5}},
        concurrency=1,
        output_location=str(tmp_path / "team-out"),
    ).save("studio", overwrite=True)
    pipeline = parse_pipeline(
        {
            "name": "voices",
            "steps": [
                {"id": "first", "uses": "tts", "with": {"text": "Team defaults, first line."}},
                {
                    "id": "second",
                    "uses": "tts",
                    "with": {"text": "Team defaults, second line.", "voice_speed": 1.0},
                },
            ],
        }
    )
    options = RunOptions(store=Store(tmp_path / "store"), journal=Journal(tmp_path / "journal"))
    result = run_pipeline(pipeline, credentials="emulator-credentials", defaults="studio", options=options)
    arguments = dict(zip(result.ledger["step_id"], result.ledger["arguments"], strict=True))
    assert '"voice_id":"AOT"' in arguments["first"] and '"voice_speed":1.5' in arguments["first"]
    assert '"voice_speed":1.0' in arguments["second"], "the step's own value wins over the block"
    assert emulator.stats()["max_open"] == 1, "the block's concurrency was applied"
    assert sorted(p.name for p in (tmp_path / "team-out").iterdir()) == [
        "first.mp3",
        "report.html",
        "second.mp3",
    ]


def _one_line(tmp_path: Path, name: str, text: str, max_cost: float | None = None) -> Path:
    """A one-step TTS pipeline file (each test its own text, so nothing is cached from another)."""
    budget = f"max_cost_usd: {max_cost}\n" if max_cost is not None else ""
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"name: {name}\n{budget}steps:\n  - id: line\n    uses: tts\n    with: {{text: {text!r}}}\n"
    )
    return path


def _cli(emulator, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "FAL_KEY": emulator.key,
        "KLINGFLOW_HOME": str(tmp_path / "home"),
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
    }
    return subprocess.run(
        [sys.executable, "-m", "klingflow.cli", "run", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_cli_out_and_max_cost_win_over_the_defaults_block(emulator, tmp_path: Path) -> None:
    KlingDefaults(max_cost_usd=100.0, output_location=str(tmp_path / "team-out")).save(
        "generous", overwrite=True
    )
    pipeline = _one_line(tmp_path, "cli_wins", "The command line wins.")
    done = _cli(
        emulator, tmp_path, str(pipeline), "--defaults", "generous", "--out", str(tmp_path / "cli-out")
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "cli-out" / "line.mp3").is_file() and not (tmp_path / "team-out").exists()

    pipeline = _one_line(tmp_path, "cli_budget", "The command line budget wins.")
    done = _cli(emulator, tmp_path, str(pipeline), "--defaults", "generous", "--max-cost", "0.001")
    assert done.returncode == 1 and "over the limit of $0.001" in done.stderr, done.stdout + done.stderr


def test_the_block_wins_over_the_fallback_and_the_pipeline_file(emulator, tmp_path: Path) -> None:
    KlingDefaults(max_cost_usd=0.001, output_location=str(tmp_path / "team-out")).save(
        "stingy", overwrite=True
    )
    KlingDefaults(output_location=str(tmp_path / "team-out")).save("folder", overwrite=True)
    pipeline = _one_line(tmp_path, "block_folder", "The team folder beats the default folder.")
    done = _cli(emulator, tmp_path, str(pipeline), "--defaults", "folder")
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "team-out" / "line.mp3").is_file(), "the block's folder, not ./klingflow-out/NAME"

    generous_file = _one_line(tmp_path, "block_budget", "The block budget beats the file.", max_cost=100.0)
    done = _cli(emulator, tmp_path, str(generous_file), "--defaults", "stingy")
    assert done.returncode == 1 and "over the limit of $0.001" in done.stderr, done.stdout + done.stderr


def test_run_pipeline_keywords_win_over_the_block_and_the_file_over_built_in(
    emulator, tmp_path: Path
) -> None:
    KlingDefaults(max_cost_usd=100.0, output_location=str(tmp_path / "team-out")).save(
        "python", overwrite=True
    )
    options = RunOptions(
        backend="fal",
        key=emulator.key,
        store=Store(tmp_path / "store"),
        journal=Journal(tmp_path / "journal"),
    )
    result = run_pipeline(
        _one_line(tmp_path, "py_out", "Python's folder wins."),
        options=options,
        defaults="python",
        out_dir=tmp_path / "py-out",
    )
    assert result.final == {"line": tmp_path / "py-out" / "line.mp3"}
    with pytest.raises(BudgetError, match=r"over the limit of \$0\.001"):
        run_pipeline(
            _one_line(tmp_path, "py_budget", "Python's budget wins."),
            options=options,
            defaults="python",
            max_cost_usd=0.001,
        )
    with pytest.raises(BudgetError, match=r"over the limit of \$0\.001"):
        run_pipeline(
            _one_line(tmp_path, "file_budget", "The file's budget.", max_cost=0.001), options=options
        )


def test_a_block_with_its_own_hosts_keys_the_cache_with_that_backend(emulator, tmp_path: Path) -> None:
    """A FalCredentials block pointing at another host than the environment (here: the environment
    names no host, so fal_client would talk to the real queue.fal.run, and the block points at the
    emulator). Its outputs must be cached under the block's backend, never under queue.fal.run's,
    where a later run against the real fal would take an emulator render for a paid fal clip."""
    FalCredentials(
        key=SecretStr(emulator.key),
        queue_host=emulator.server.queue_host,
        run_host=emulator.server.run_host,
        ca_bundle=os.environ["SSL_CERT_FILE"],
    ).save("other-host", overwrite=True)
    pipeline = _one_line(tmp_path, "elsewhere", "Made on the block's own host.")
    real_fal = {
        k: v for k, v in os.environ.items() if k not in ("FAL_QUEUE_RUN_HOST", "FAL_RUN_HOST", "FAL_KEY")
    }
    real_fal.update(KLINGFLOW_HOME=str(tmp_path / "home"), PREFECT_API_URL=str(PREFECT_API_URL.value()))

    done = subprocess.run(
        [sys.executable, "-m", "klingflow.cli", "run", str(pipeline), "--credentials", "other-host"],
        env=real_fal,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows = ledger.load(root=tmp_path / "home" / "ledger")
    assert list(rows["backend"]) == ["emulator"], "recorded as the block's backend"

    planned = subprocess.run(
        [sys.executable, "-m", "klingflow.cli", "plan", str(pipeline), "--backend", "fal"],
        env={**real_fal, "FAL_KEY": "a-real-fal-key"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert planned.returncode == 0, planned.stdout + planned.stderr
    assert "1 generations to run, 0 cached" in " ".join(planned.stdout.split()), planned.stdout


def test_a_block_can_let_a_budgeted_run_call_an_endpoint_without_a_known_price(
    emulator, tmp_path: Path
) -> None:
    unpriced = tmp_path / "unpriced.yaml"
    unpriced.write_text(
        "name: unpriced\nsteps:\n  - id: shot\n    uses: fal-ai/kling-video/v1.6/standard/text-to-video\n"
        "    with: {prompt: 'a kite over the dunes'}\n"
    )
    options = RunOptions(
        backend="fal", key=emulator.key, store=Store(tmp_path / "s"), journal=Journal(tmp_path / "j")
    )
    KlingDefaults(max_cost_usd=5.0).save("budget-only", overwrite=True)
    with pytest.raises(BudgetError, match="knows no price for: shot"):
        run_pipeline(unpriced, options=options, defaults="budget-only")
    KlingDefaults(max_cost_usd=5.0, allow_unknown_cost=True).save("lenient", overwrite=True)
    result = run_pipeline(unpriced, options=options, defaults="lenient")
    assert [(r.status, r.estimated_cost_usd) for r in result.records] == [("completed", None)]
    # wherever a spend is summed, the unknown price is counted apart, never as $0
    runs = summary(result.ledger).runs
    assert runs.loc[0, "unknown_price"] == 1 and runs.loc[0, "spend_usd"] == 0
    assert result.manifest is not None and result.manifest.report is not None
    report = Path(result.manifest.report).read_text()
    assert "$0.000 + 1 at an unknown price" in report
