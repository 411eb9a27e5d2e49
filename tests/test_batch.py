"""`klingflow run PIPELINE --batch rows.csv`: one pipeline over every row of a table.

Real processes against a served emulator (its submits counted there, not by klingflow), a real
Prefect server (child flow runs read back through Prefect's client), and the sheets a user writes:
a 50-row sheet with one row fal refuses, bad sheets refused before any spend, JSON lines on stdin,
a DataFrame from Python.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

import pandas as pd
import pytest

from conftest import KLINGFLOW, emulator_stats, serve_emulator
from klingflow.batch import check_rows, read_sheet
from klingflow.emulator.responses import FLAGGED_WORD
from klingflow.errors import ConfigError, SpecError
from klingflow.ledger import load
from klingflow.spec import load_pipeline

pytestmark = pytest.mark.slow

T2V = "fal-ai/kling-video/v1/standard/text-to-video"
PIPELINE = """name: products
inputs:
  product: {type: string}
  take: {type: integer, default: 1}
  seconds: {type: string, default: "5"}
steps:
  - id: clip
    uses: text-to-video
    with:
      prompt: "Take ${inputs.take}: a turntable shot of ${inputs.product}"
      duration: ${inputs.seconds}
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory, session_prefect: dict[str, str]) -> Iterator[dict[str, str]]:
    """A served emulator (fast, 8 workers) in its own home; runs report to the session's Prefect server."""
    home = tmp_path_factory.mktemp("batch-home")
    with serve_emulator(home, "--latency", "0.2", "--workers", "8") as env:
        env.update(session_prefect)
        yield env


def klingflow(env: dict[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*KLINGFLOW, *args], env=env, capture_output=True, text=True, timeout=600, input=stdin
    )


def pipeline(folder: Path) -> Path:
    path = folder / "products.yaml"
    path.write_text(PIPELINE)
    return path


def newest_table(out: Path) -> pd.DataFrame:
    return pd.read_parquet(sorted(out.glob("batch-*.parquet"))[-1])


def submits(env: dict[str, str]) -> int:
    return int(emulator_stats(env)["submits"].get(T2V, 0))


async def _flow_runs(env: dict[str, str], ids: list[str]) -> tuple[list, object]:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"]}):
        async with get_client() as client:
            children = [await client.read_flow_run(UUID(i)) for i in ids]
            assert all(child.parent_task_run_id for child in children), "every row is a child flow run"
            # Prefect links a child flow run to its parent through a task run in the parent
            links = [await client.read_task_run(child.parent_task_run_id) for child in children]
            (parent_id,) = {link.flow_run_id for link in links}  # one parent for every row
            return children, await client.read_flow_run(parent_id)


def test_fifty_rows_one_refused_at_fal_then_rerun_and_only_failed(served, tmp_path) -> None:
    spec = pipeline(tmp_path)
    refused = 23
    products = [f"product {n} in blue" for n in range(1, 51)]
    products[refused - 1] = f"a {FLAGGED_WORD} product"
    pd.DataFrame({"sku": [f"SKU-{n:03d}" for n in range(1, 51)], "product": products}).to_csv(
        tmp_path / "rows.csv", index=False
    )
    out = tmp_path / "out"
    args = ["run", str(spec), "--batch", str(tmp_path / "rows.csv"), "--key-column", "sku", "--ignore-extra"]
    args += ["--out", str(out), "--concurrency", "8", "--row-concurrency", "10"]
    before = submits(served)

    began = time.monotonic()
    first = klingflow(served, *args)
    print(f"first batch: {time.monotonic() - began:.1f} s")
    assert first.returncode == 1, first.stdout + first.stderr
    assert "49 of 50 rows completed" in first.stdout
    assert f"row {refused} (SKU-{refused:03d}) failed at step clip" in first.stdout
    assert "Traceback" not in first.stderr
    assert submits(served) - before == 50, "one submit per row, counted by the emulator"

    table = newest_table(out)
    assert len(table) == 50 and table["row"].tolist() == list(range(1, 51))
    assert (table["status"] == "completed").sum() == 49
    bad = table[table["status"] == "failed"].iloc[0]
    assert bad["row"] == refused and bad["failed_step"] == "clip" and "flagged" in bad["error"]
    assert (out / f"batch-{table['batch_id'][0]}.csv").is_file()
    done = table[table["status"] == "completed"]
    for row in done.itertuples():
        assert Path(row.output_path) == out / row.name / "clip.mp4" and Path(row.output_path).is_file()
    assert done["sku"].tolist() == done["name"].tolist(), "the extra column is carried to the table"

    # the ledger agrees with the table, row by row
    ledger = load(root=Path(served["KLINGFLOW_HOME"]) / "ledger")
    rows = ledger[ledger["batch_id"] == table["batch_id"][0]]
    assert len(rows) == 50
    for row in table.itertuples():
        (step,) = rows[rows["row_key"] == row.key].itertuples()
        assert step.status == row.status and step.run_id == row.run_id
        assert json.loads(row.request_ids) == [step.request_id]
        if row.status == "completed":
            assert step.sha256 == row.output_sha256
        else:
            assert pd.isna(step.sha256) and pd.isna(row.output_sha256)

    # one flow run per row, children of one parent, which ended Failed because one row failed
    children, parent = asyncio.run(_flow_runs(served, table["flow_run_id"].tolist()))
    states = {child.name: child.state.type.value for child in children}
    assert states[f"products-SKU-{refused:03d}"] == "FAILED"
    assert sum(state == "COMPLETED" for state in states.values()) == 49
    assert parent.state.type.value == "FAILED" and parent.name == "products-batch"

    # again: 49 cache hits, one new attempt at the refused row
    before = submits(served)
    again = klingflow(served, *args)
    assert again.returncode == 1 and "(49 entirely from the cache)" in again.stdout
    assert submits(served) - before == 1
    table = newest_table(out)
    assert table.loc[table["status"] == "completed", "cache_hits"].tolist() == [1] * 49

    # only the failed row
    before = submits(served)
    only = klingflow(served, *args, "--only-failed")
    assert only.returncode == 1 and "0 of 1 rows completed" in only.stdout, only.stdout + only.stderr
    assert submits(served) - before == 1
    assert newest_table(out)["row"].tolist() == [refused]


BAD_SHEETS = {
    "missing_column": ("take\n1\n", "no column 'product', and input 'product' has no default"),
    "wrong_type": (
        "product,take\n" + "".join(f"thing {n},{n}\n" for n in range(1, 12)) + "thing 12,twelve\n",
        "row 12 column 'take': expected integer, got 'twelve'",
    ),
    "unknown_column": ("product,colour\nmug,red\n", "column 'colour' is not an input of pipeline 'products'"),
    "empty": ("", "the file is empty"),
    "broken_quote": ('product,take\n"mug,1\nbowl,2\n', "not a readable CSV table"),
    "header_only": ("product,take\n", "the table has no rows"),
    # a value of the right type that the endpoint refuses: the row, then the step and field it reaches
    "refused_where_it_lands": (
        "product,seconds\nmug,5\nbowl,7\n",
        "rows.csv row 2: ",
        "products.yaml:11 step 'clip' field 'duration': '7' is not a known duration",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_SHEETS))
def test_bad_sheet_is_refused_before_anything_is_paid(case: str, tmp_path) -> None:
    text, *expected = BAD_SHEETS[case]
    (tmp_path / "rows.csv").write_text(text)
    spec = load_pipeline(pipeline(tmp_path))
    with pytest.raises((SpecError, ConfigError)) as refused:
        check_rows(spec, read_sheet(tmp_path / "rows.csv"))
    assert all(part in str(refused.value) for part in expected), str(refused.value)
    assert str(tmp_path / "rows.csv") in str(refused.value), "the message names the table"


def test_bad_sheet_from_the_command_line_submits_nothing(served, tmp_path) -> None:
    (tmp_path / "rows.csv").write_text("product,take\nmug,1\nbowl,two\ncup,x\n")
    before = submits(served)
    done = klingflow(served, "run", str(pipeline(tmp_path)), "--batch", str(tmp_path / "rows.csv"))
    assert done.returncode == 1
    assert "row 2 column 'take'" in done.stderr and "row 3 column 'take'" in done.stderr
    assert "Traceback" not in done.stderr
    assert submits(served) == before


def test_a_row_whose_flow_run_the_prefect_server_refuses_fails_alone(served, tmp_path) -> None:
    """A Prefect server that cannot create one row's flow run (as a busy SQLite server answers 503
    "database is locked" to a large batch) costs that row, not the batch: the table is written
    with the row failed and unpaid, and the other rows complete."""
    tag = uuid.uuid4().hex[:8]
    names = [f"ok-1-{tag}", f"refused-{tag}", f"ok-3-{tag}"]
    pd.DataFrame({"sku": names, "product": [f"a {tag} lamp", f"a {tag} chair", f"a {tag} desk"]}).to_csv(
        tmp_path / "rows.csv", index=False
    )
    # the session's real server, made to refuse that one flow run: its database aborts the write
    # that names it (Prefect creates a flow run, then gives it its flow_run_name)
    database = sqlite3.connect(Path(served["PREFECT_HOME"]) / "prefect.db", timeout=60)
    trigger = f"refuse_{tag}"
    database.execute(
        f"CREATE TRIGGER {trigger} BEFORE UPDATE OF name ON flow_run "
        f"WHEN NEW.name = 'products-refused-{tag}' BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
    )
    before = submits(served)
    try:
        # Prefect's client retries a 503 five times over about a minute; twice here (about 6 s)
        env = {**served, "PREFECT_CLIENT_MAX_RETRIES": "2"}
        args = ["run", str(pipeline(tmp_path)), "--batch", str(tmp_path / "rows.csv"), "--key-column", "sku"]
        done = klingflow(env, *args, "--ignore-extra", "--out", str(tmp_path / "out"))
    finally:
        database.execute(f"DROP TRIGGER {trigger}")
        database.close()
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    table = newest_table(tmp_path / "out")
    assert table["name"].tolist() == names
    assert table["status"].tolist() == ["completed", "failed", "completed"], table["error"].tolist()
    refused = table.iloc[1]
    assert "row 2's flow run could not be created" in refused["error"], refused["error"]
    assert refused["cost_usd"] == 0 and refused["request_ids"] == "[]"
    assert submits(served) == before + 2, "nothing of the refused row reached fal"
    assert f"row 2 ({names[1]}) failed" in done.stdout, done.stdout


def test_plan_shows_each_row_and_the_total_and_max_cost_covers_the_batch(served, tmp_path) -> None:
    spec = pipeline(tmp_path)
    (tmp_path / "rows.csv").write_text("product\nmug\nbowl\ncup\n")
    planned = klingflow(served, "plan", str(spec), "--batch", str(tmp_path / "rows.csv"))
    assert planned.returncode == 0, planned.stderr
    assert "total: $0.675 for 3 generations" in planned.stdout
    before = submits(served)
    refused = klingflow(
        served,
        "run",
        str(spec),
        "--batch",
        str(tmp_path / "rows.csv"),
        "--max-cost",
        "0.5",
        "--out",
        str(tmp_path),
    )
    assert refused.returncode == 1 and "over-budget" in refused.stderr, refused.stderr
    assert submits(served) == before


def test_json_lines_on_stdin_and_list_inputs(served, tmp_path) -> None:
    spec = tmp_path / "shots.yaml"
    spec.write_text(
        "name: shots\ninputs:\n  shots: {type: list}\nsteps:\n  - id: clip\n    uses: text-to-video\n"
        "    foreach: ${inputs.shots}\n    with: {prompt: '${item}'}\n"
    )
    lines = (
        json.dumps({"shots": ["a red kite", "a blue kite"]}) + "\n" + json.dumps({"shots": ["a boat"]}) + "\n"
    )
    before = submits(served)
    done = klingflow(served, "run", str(spec), "--batch", "-", "--out", str(tmp_path / "out"), stdin=lines)
    assert done.returncode == 0, done.stdout + done.stderr
    assert submits(served) - before == 3
    table = newest_table(tmp_path / "out")
    assert table["steps"].tolist() == [2, 1] and table["name"].tolist() == ["1", "2"]


async def _artifacts(flow_run_id: UUID) -> dict[str, object]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    async with get_client() as client:
        found = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
        return {artifact.key: artifact.data for artifact in found if artifact.key}


def test_run_batch_from_python_with_a_dataframe(emulator, options, tmp_path, session_prefect) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from klingflow import run_batch

    frame = pd.DataFrame({"product": ["a mug", f"a {FLAGGED_WORD} bowl"], "take": [1, 2]})
    with temporary_settings(updates={PREFECT_API_URL: session_prefect["PREFECT_API_URL"]}):
        batch = run_batch(pipeline(tmp_path), frame, options=options, out_dir=tmp_path / "out")
        assert batch.table["status"].tolist() == ["completed", "failed"], "a failed row does not raise"
        assert emulator.stats()["submits"] == {T2V: 2}
        assert batch.results[1].ledger["row_key"].tolist() == [batch.table["key"][0]]
        assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.is_dir()) == ["1", "2"]
        assert os.path.isfile(batch.contact_sheet or "")
        children, parent = asyncio.run(_flow_runs(session_prefect, batch.table["flow_run_id"].tolist()))
        artifacts = asyncio.run(_artifacts(parent.id))
        first_row = asyncio.run(_artifacts(uuid.UUID(str(batch.table["flow_run_id"][0]))))
    # a row's one artifact is its summary: the batch's table and sheet stand for its pictures and links
    assert list(first_row) == ["klingflow-products-summary"]
    assert str(batch.table["output_path"][0]) in str(first_row["klingflow-products-summary"])
    table = json.loads(str(artifacts["klingflow-products-batch"]))
    assert [(r["row"], r["status"]) for r in table] == [(1, "completed"), (2, "failed")]
    assert table[0]["output"].startswith("file://") and table[1]["error"]
    assert str(artifacts["klingflow-products-batch-contact-sheet"]).startswith("data:image/jpeg;base64,")


def test_ctrl_c_stops_every_row_and_a_rerun_pays_only_for_what_was_never_sent(tmp_path) -> None:
    with serve_emulator(tmp_path / "home", "--latency", "4", "--workers", "8") as env:
        env["KLINGFLOW_PREFECT"] = "ephemeral"
        spec = pipeline(tmp_path)
        (tmp_path / "rows.csv").write_text("product\n" + "".join(f"item {n}\n" for n in range(1, 7)))
        args = [
            *KLINGFLOW,
            "run",
            str(spec),
            "--batch",
            str(tmp_path / "rows.csv"),
            "--out",
            str(tmp_path / "out"),
        ]
        args += ["--row-concurrency", "2"]
        running = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 120
            while submits(env) < 2:
                assert running.poll() is None and time.monotonic() < deadline, running.communicate()
                time.sleep(0.2)
            running.send_signal(signal.SIGINT)
            stdout, stderr = running.communicate(timeout=120)
        finally:
            if running.poll() is None:
                running.kill()
        assert running.returncode == 130, stdout + stderr
        assert "interrupted by SIGINT" in stderr and "4 rows did not start (rows 3-6)" in stdout
        assert submits(env) == 2, "no request left after the stop"
        table = newest_table(tmp_path / "out")
        assert set(table["status"]) == {"interrupted"}
        assert table["error"].str.contains("still running at fal").sum() == 2

        again = klingflow(env, *args[len(KLINGFLOW) :])
        assert again.returncode == 0, again.stdout + again.stderr
        assert submits(env) == 6, "the two requests fal was running are collected, not sent again"
        assert newest_table(tmp_path / "out")["status"].tolist() == ["completed"] * 6
