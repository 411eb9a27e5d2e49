"""Run options resolve in one place: explicit > block > pipeline file > fallback > built-in.

These call :func:`klingflow.engine.resolve_options` directly, one test per level; the same order
through the CLI, ``run_pipeline`` and a KlingDefaults block on a real Prefect server is tested in
``test_blocks.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from klingflow.engine import BUILT_IN, RetryPolicy, RunOptions, resolve_options
from klingflow.errors import ConfigError
from klingflow.spec import parse_pipeline

SPEC = parse_pipeline(
    {"name": "levels", "max_cost_usd": 3.0, "steps": [{"id": "line", "uses": "tts", "with": {"text": "hi"}}]}
)
BLOCK = RunOptions(concurrency=2, max_cost_usd=2.0, out_dir=Path("block-out"))
FALLBACK = RunOptions(out_dir=Path("fallback-out"), max_cost_usd=4.0)


def test_explicit_wins_over_everything() -> None:
    explicit = RunOptions(concurrency=7, max_cost_usd=1.0, out_dir=Path("cli-out"))
    resolved = resolve_options(explicit, block=BLOCK, pipeline=SPEC, fallback=FALLBACK)
    assert (resolved.concurrency, resolved.max_cost_usd, resolved.out_dir) == (7, 1.0, Path("cli-out"))


def test_block_wins_over_the_pipeline_file_and_the_fallback() -> None:
    resolved = resolve_options(RunOptions(), block=BLOCK, pipeline=SPEC, fallback=FALLBACK)
    assert (resolved.concurrency, resolved.max_cost_usd, resolved.out_dir) == (2, 2.0, Path("block-out"))


def test_pipeline_file_wins_over_the_fallback_and_built_in() -> None:
    resolved = resolve_options(RunOptions(), pipeline=SPEC, fallback=FALLBACK)
    assert resolved.max_cost_usd == 3.0 and resolved.out_dir == Path("fallback-out")


def test_fallback_then_built_in() -> None:
    resolved = resolve_options(None, fallback=FALLBACK)
    assert resolved.max_cost_usd == 4.0 and resolved.concurrency == BUILT_IN.concurrency == 4
    bare = resolve_options()
    assert bare.retry == RetryPolicy() and bare.refresh is False and bare.out_dir is None
    assert bare.on_ambiguous_submit == "reconcile"


def test_an_option_left_out_falls_through_to_the_next_layer() -> None:
    resolved = resolve_options(RunOptions(max_cost_usd=0.5), block=BLOCK, pipeline=SPEC)
    assert (
        resolved.max_cost_usd == 0.5 and resolved.concurrency == 2 and resolved.out_dir == Path("block-out")
    )


def test_run_pipeline_refuses_an_option_given_twice() -> None:
    from klingflow import run_pipeline

    with pytest.raises(ConfigError, match="concurrency given both"):
        run_pipeline(SPEC, options=RunOptions(concurrency=1), concurrency=2)


def test_a_choice_from_the_command_line_becomes_the_options_literal() -> None:
    from klingflow.backends import backend_kind
    from klingflow.engine import ambiguous_submit_policy

    assert (backend_kind("emulator"), backend_kind(None)) == ("emulator", None)
    assert (ambiguous_submit_policy("resubmit"), ambiguous_submit_policy(None)) == ("resubmit", None)
    with pytest.raises(ConfigError, match="unknown backend 'replicate'") as backend:
        backend_kind("replicate")
    with pytest.raises(ConfigError, match="unknown policy 'retry'") as policy:
        ambiguous_submit_policy("retry")
    assert (backend.value.context, policy.value.context) == ("--backend", "--on-ambiguous-submit")


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["plan", "{story}", "--backend", "replicate"], "unknown backend 'replicate'"),
        (["verify", "--backend", "replicate"], "unknown backend 'replicate'"),
        (["recover", "--backend", "replicate"], "unknown backend 'replicate'"),
        (
            ["run", "{story}", "--backend", "emulator", "--on-ambiguous-submit", "retry"],
            "unknown policy 'retry'",
        ),
    ],
)
def test_a_mistyped_choice_is_a_config_error_not_a_traceback(args: list[str], said: str) -> None:
    from typer.testing import CliRunner

    from klingflow.cli import app

    story = Path(__file__).resolve().parents[1] / "deployments" / "pipelines" / "story.yaml"
    result = CliRunner().invoke(app, [arg.format(story=story) for arg in args])
    assert result.exit_code == 2, result.output
    assert said in result.output and "hint: use '" in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
