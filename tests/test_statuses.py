"""Every status the engine can produce renders everywhere a person reads one.

One parametrised test over :class:`klingflow.ledger.Status`: the CLI's run view (plain lines and
the live table), the ledger summary (a column per status) and its table styles, the HTML report
(card, pill, DAG colour) and the Prefect artifacts (table rows and the markdown summary). A status
added to the enum and forgotten by a printer fails here instead of crashing a user's run (the
``joined`` KeyError).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from rich.console import Console

from klingflow import ledger
from klingflow.cli._live import MARKS, LiveView, PlainView
from klingflow.cli.ledger import STATUS_STYLES
from klingflow.ledger import RunManifest, Status, StepRecord
from klingflow.report import STATUS_COLOURS, render_report, step_status


def _record(status: Status) -> StepRecord:
    return StepRecord(
        run_id="run-statuses",
        pipeline="statuses",
        step_id="shot",
        kind="endpoint",
        endpoint="fal-ai/kling-video/v1/standard/text-to-video",
        backend="emulator",
        status=status,
        started_at=datetime.now(UTC),
        error="the cause" if status in (Status.FAILED, Status.SKIPPED) else None,
    )


@pytest.mark.parametrize("status", list(Status))
def test_every_status_renders_in_cli_ledger_report_and_artifacts(status: Status, tmp_path: Path) -> None:
    from klingflow.flows.artifacts import summary_markdown, table_rows

    record = _record(status)

    console = Console(record=True, width=200)
    plain = PlainView(console)
    plain.start(record.step_label)
    plain.finish(record)
    word = MARKS[status].split("]")[1].split("[")[0]
    assert word in console.export_text().splitlines()[-1]
    assert plain.counts() == {status: 1}
    live = LiveView(Console(record=True, width=200))
    live.finish(record)
    live.console.print(live.render())
    assert word in live.console.export_text()

    frame = ledger.to_frame([record.model_dump()])
    runs, pipelines = ledger.summary(frame)
    assert runs.loc[0, str(status)] == 1 and pipelines.loc[0, str(status)] == 1
    assert status in STATUS_STYLES

    manifest = RunManifest(
        run_id="run-statuses",
        pipeline="statuses",
        status=Status.FAILED,
        order=["shot"],
        dependencies={"shot": []},
        kinds={"shot": "endpoint"},
    )
    page = render_report(manifest, frame, tmp_path)
    assert f'class="step {status}"' in page and f'class="pill {status}"' in page
    assert step_status([status]) == status and status in STATUS_COLOURS

    assert table_rows(frame)[0]["status"] == status
    assert f"{status} 1" in summary_markdown(manifest, frame)
