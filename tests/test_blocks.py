"""Blocks: Prefect's block standards, the secret stays secret, and runs use credentials + defaults blocks."""

from __future__ import annotations

from pathlib import Path

import pytest
from prefect.testing.standard_test_suites.blocks import BlockStandardTestSuite
from prefect.testing.utilities import prefect_test_harness
from pydantic import SecretStr

from klingflow import RunOptions, parse_pipeline, run_pipeline
from klingflow.blocks import FalCredentials, KlingDefaults, register_blocks
from klingflow.cache import Journal, Store

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
