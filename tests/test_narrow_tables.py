"""`klingflow ledger`, `ledger summary` and `plan` in 100- and 80-column terminals: real processes
reading the ledger of a real run on a served emulator (one failed step with fal's error message,
a step id longer than the terminal, a long pipeline name).

Every header must come out whole on the header line, and no cell may end in an ellipsis: columns
that do not fit go (empty ones, then the optional ones), and what still does not fit wraps.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import KLINGFLOW, serve_emulator

pytestmark = pytest.mark.slow

LONG_STEP = "an_establishing_shot_of_the_lighthouse_keeper_walking_along_the_rocky_shore_at_dawn"
PIPELINE = f"""name: the_lighthouse_keepers_long_night
inputs:
  shots: {{type: list, default: [a fox in the snow, a hare on the hill]}}
steps:
  - id: {LONG_STEP}
    uses: text-to-video
    with: {{prompt: "the keeper walks along the shore"}}
  - id: animals
    uses: text-to-video
    foreach: ${{inputs.shots}}
    with: {{prompt: "${{item}}"}}
  - id: narration
    uses: tts
    retries: 0
    with: {{text: "The storm came at dusk."}}
"""
LEDGER_HEADERS = {"run", "pipeline", "step", "status", "endpoint", "cost $", "billed $", "queue s", "run s"}
LEDGER_HEADERS |= {"started", "error"}
SUMMARY_HEADERS = {"run", "pipeline", "started", "runs", "last run", "steps", "cached", "joined", "failed"}
SUMMARY_HEADERS |= {"skipped", "interrupted", "estimated $", "billed $", "queue s", "run s"}


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, session_prefect: dict[str, str]) -> Iterator[tuple[dict[str, str], Path]]:
    """A client home whose ledger holds one run: narration failed (a scripted emulator error)."""
    root = tmp_path_factory.mktemp("narrow")
    with serve_emulator(root / "emulator-home", "--latency", "0.2", "--faults", "script=error@tts") as env:
        env.update(session_prefect, KLINGFLOW_HOME=str(root / "client-home"))
        pipeline = root / "long.yaml"
        pipeline.write_text(PIPELINE)
        done = subprocess.run(
            [*KLINGFLOW, "run", str(pipeline)], env=env, cwd=root, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 1 and "narration" in done.stdout + done.stderr, done.stdout + done.stderr
        yield env, pipeline


def show(env: dict[str, str], columns: int, *args: str) -> str:
    done = subprocess.run(
        [*KLINGFLOW, *args], env={**env, "COLUMNS": str(columns)}, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert all(len(line) <= columns for line in done.stdout.splitlines()), done.stdout
    assert "…" not in done.stdout, done.stdout
    return done.stdout


class Printed:
    """One printed ledger table: its header line and body lines (what follows its ─── rule)."""

    def __init__(self, header: str, body: list[str]) -> None:
        self.header, self.body = header, body
        self.headings = [part for part in re.split(r"\s{2,}", header.strip()) if part]

    def column(self, heading: str) -> str:
        """A left-aligned column's text, its wrapped lines joined: from its heading to the next one."""
        start = self.header.index(heading)
        following = self.headings[self.headings.index(heading) + 1 :]
        end = self.header.index(following[0], start) if following else None
        return "".join(line[start:end].strip() for line in self.body)

    def value(self, heading: str) -> str:
        """A right-aligned column's value in the first row: the word that ends where its heading ends."""
        end = self.header.index(heading) + len(heading)
        return self.body[0][:end].split()[-1]


def printed_tables(out: str) -> list[Printed]:
    lines = out.splitlines()
    tables = []
    for index, line in enumerate(lines):
        if index and re.fullmatch(r"─+", line.strip()):
            body = []
            for row in lines[index + 1 :]:
                if not row.strip():
                    break
                body.append(row)
            tables.append(Printed(lines[index - 1], body))
    return tables


@pytest.mark.parametrize("columns", [100, 80])
def test_ledger_rows_keep_every_header_and_value_whole(recorded, columns: int) -> None:
    env, _ = recorded
    out = show(env, columns, "ledger")
    (table,) = printed_tables(out)
    assert set(table.headings) <= LEDGER_HEADERS, out
    assert {"run", "step", "status", "cost $", "started", "error"} <= set(table.headings), out
    assert LONG_STEP in table.column("step"), out
    assert "Emulated" in table.column("error"), out
    assert re.search(r"\d\d-\d\d \d\d:\d\d", table.column("started")) or columns < 100, out


@pytest.mark.parametrize("columns", [100, 80])
def test_summary_keeps_every_header_and_value_whole(recorded, columns: int) -> None:
    env, _ = recorded
    out = show(env, columns, "ledger", "summary")
    per_run, per_pipeline = printed_tables(out)
    for table in (per_run, per_pipeline):
        assert set(table.headings) <= SUMMARY_HEADERS, out
        assert {"steps", "cached", "failed", "estimated $", "billed $", "run s"} <= set(table.headings), out
        assert (table.value("steps"), table.value("cached"), table.value("failed")) == ("4", "0%", "1"), out
        assert re.fullmatch(r"\d+\.\d / \d+\.\d", table.body[0].rsplit("  ", 1)[-1].strip()), out
    assert {"run", "started"} <= set(per_run.headings), out
    assert "pipeline" in per_pipeline.headings and "last run" in per_pipeline.headings, out
    assert per_pipeline.column("pipeline") == "the_lighthouse_keepers_long_night", out
    if columns == 100:
        assert "queue s" in per_run.headings and "queue s" in per_pipeline.headings, out


@pytest.mark.parametrize("columns", [100, 80])
def test_plan_keeps_every_header_and_step_id_whole(recorded, columns: int) -> None:
    env, pipeline = recorded
    out = show(env, columns, "plan", str(pipeline))
    rows = [line.split("│")[1:-1] for line in out.splitlines() if line.lstrip().startswith("│")]
    header = next(line for line in out.splitlines() if "┃" in line)
    assert [part.strip() for part in header.split("┃")[1:-1]] == [
        "step",
        "uses",
        "status",
        "est. cost",
        "seconds",
        "why",
    ], out
    steps = "".join(cells[0].strip() for cells in rows)
    assert f"{LONG_STEP}animals[0]animals[1]narration" == steps, out
    assert "to spend:" in out
