"""`klingflow ledger`, `klingflow ledger summary` and `klingflow report`, through typer's CliRunner."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from klingflow import ledger
from klingflow.cli.ledger import add_ledger_commands
from klingflow.ledger import LedgerError, RunManifest, save_manifest
from test_ledger import rows


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> typer.Typer:
    """A fresh klingflow home holding three runs of two pipelines, and an app with the commands."""
    monkeypatch.setenv("KLINGFLOW_HOME", str(tmp_path / "home"))
    now = datetime.now(UTC)
    ledger.append(rows("abc111", "story", start=now - timedelta(days=30)))
    ledger.append(rows("abc222", "story", start=now - timedelta(hours=2), n=6))
    ledger.append(rows("def333", "avatar", start=now - timedelta(hours=1), n=2))
    app = typer.Typer()
    add_ledger_commands(app)
    return app


def invoke(app: typer.Typer, *args: str) -> str:
    result = CliRunner().invoke(app, list(args), catch_exceptions=False, env={"COLUMNS": "220"})
    assert result.exit_code == 0, result.output
    return result.stdout


def test_table_lists_every_row_with_the_useful_columns(cli: typer.Typer) -> None:
    out = invoke(cli, "ledger")
    assert "11 ledger rows" in out
    for heading in ("run", "step", "status", "cost $", "queue s", "error"):
        assert heading in out
    assert "abc111" in out and "def333" in out and "boom" in out


def test_filters_narrow_the_rows(cli: typer.Typer) -> None:
    assert "6 ledger rows" in invoke(cli, "ledger", "--run", "abc2")
    assert "2 ledger rows" in invoke(cli, "ledger", "--pipeline", "avatar")
    assert "8 ledger rows" in invoke(cli, "ledger", "--since", "1d")
    failed = invoke(cli, "ledger", "--status", "failed")
    assert "3 ledger rows" in failed and "completed" not in failed
    assert "no ledger rows match" in invoke(cli, "ledger", "--since", "2099-01-01")


def test_csv_and_json_go_to_stdout(cli: typer.Typer) -> None:
    csv = invoke(cli, "ledger", "--format", "csv", "--pipeline", "avatar")
    lines = csv.strip().splitlines()
    assert lines[0].split(",")[:3] == ["run_id", "flow_run_id", "pipeline"] and len(lines) == 3
    data = json.loads(invoke(cli, "ledger", "--format", "json", "--run", "def333"))
    assert [row["step_id"] for row in data] == ["step_0", "step_1"]
    assert data[0]["started_at"].endswith("Z") or "+00:00" in data[0]["started_at"]


def test_parquet_needs_an_output_file_and_round_trips(cli: typer.Typer, tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match="needs a file"):
        CliRunner().invoke(cli, ["ledger", "--format", "parquet"], catch_exceptions=False)
    target = tmp_path / "story.parquet"
    invoke(cli, "ledger", "--format", "parquet", "--pipeline", "story", "--output", str(target))
    exported = pd.read_parquet(target)
    assert len(exported) == 9 and set(exported["pipeline"]) == {"story"}


def test_an_unknown_run_lists_the_recent_ones(cli: typer.Typer) -> None:
    save_manifest(
        RunManifest(
            run_id="def333",
            pipeline="avatar",
            status="completed",
            started_at=datetime.now(UTC),
            order=[],
            dependencies={},
            kinds={},
        )
    )
    with pytest.raises(LedgerError) as caught:
        CliRunner().invoke(cli, ["ledger", "--run", "zzz"], catch_exceptions=False)
    assert "no recorded run with id 'zzz'" in caught.value.message
    assert "def333" in caught.value.hint


def test_bad_status_and_since_are_explained(cli: typer.Typer) -> None:
    with pytest.raises(LedgerError, match="unknown status"):
        CliRunner().invoke(cli, ["ledger", "--status", "ok"], catch_exceptions=False)
    with pytest.raises(LedgerError, match="cannot read 'yesterday-ish' as a date"):
        CliRunner().invoke(cli, ["ledger", "--since", "yesterday-ish"], catch_exceptions=False)


def test_summary_table_per_run_and_per_pipeline(cli: typer.Typer) -> None:
    out = invoke(cli, "ledger", "summary")
    assert "per run" in out and "per pipeline" in out
    for heading in ("steps", "cached", "failed", "estimated $", "billed $", "p50", "p95"):
        assert heading in out
    assert "abc222" in out and "avatar" in out


def test_summary_json_and_csv(cli: typer.Typer) -> None:
    data = json.loads(invoke(cli, "ledger", "summary", "--format", "json"))
    story = next(p for p in data["pipelines"] if p["pipeline"] == "story")
    assert (story["runs"], story["steps"], story["failed"]) == (2, 9, 3)
    assert story["spend_usd"] == pytest.approx(3 * 0.225)
    by_run = {r["run_id"]: r for r in data["runs"]}
    assert by_run["abc222"]["cached_share"] == pytest.approx(2 / 6)
    csv = invoke(cli, "ledger", "summary", "--format", "csv", "--by", "pipeline").strip().splitlines()
    assert csv[0].startswith("pipeline,runs") and len(csv) == 3
    recent = json.loads(invoke(cli, "ledger", "summary", "--format", "json", "--since", "1d", "--by", "run"))
    assert set(recent) == {"runs"} and {r["run_id"] for r in recent["runs"]} == {"abc222", "def333"}


def test_report_command_regenerates_from_manifest_and_ledger(cli: typer.Typer, tmp_path: Path) -> None:
    save_manifest(
        RunManifest(
            run_id="abc222",
            pipeline="story",
            status="failed",
            started_at=datetime.now(UTC),
            order=[f"step_{i}" for i in range(6)],
            dependencies={f"step_{i}": [f"step_{i - 1}"] if i else [] for i in range(6)},
            kinds={f"step_{i}": "endpoint" for i in range(6)},
            failures={"step_2": "boom"},
        )
    )
    out = invoke(cli, "report", "abc2")
    default = tmp_path / "home" / "runs" / "abc222" / "report.html"
    assert default.as_uri() in out.replace("\n", "")
    page = default.read_text()
    assert page.count('class="node"') == 6 and "boom" in page
    custom = tmp_path / "elsewhere" / "r.html"
    invoke(cli, "report", "abc222", "--out", str(custom))
    assert custom.is_file()
    with pytest.raises(LedgerError, match="no recorded run"):
        CliRunner().invoke(cli, ["report", "nope"], catch_exceptions=False)
