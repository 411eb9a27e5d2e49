"""The durable ledger: round trips with dtypes, filters, summaries, old files, concurrency, crashes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from klingflow import ledger
from klingflow.ledger import COLUMNS, LEDGER_SCHEMA_VERSION, LedgerError


def rows(run_id: str, pipeline: str = "story", *, start: datetime | None = None, n: int = 3) -> pd.DataFrame:
    """``n`` ledger rows of one run: completed, cached, failed in turn, one second apart."""
    start = start or datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
    statuses = ["completed", "cached", "failed"]
    return ledger.to_frame(
        {
            "run_id": run_id,
            "pipeline": pipeline,
            "step_id": f"step_{i}",
            "item_index": i if i % 2 else None,
            "kind": "endpoint",
            "endpoint": "fal-ai/kling-video/v1/standard/text-to-video",
            "status": statuses[i % 3],
            "attempts": 1,
            "started_at": start + timedelta(seconds=i),
            "finished_at": start + timedelta(seconds=i + 5),
            "queue_seconds": float(i),
            "run_seconds": 2.0 * i,
            "estimated_cost_usd": 0.225 if statuses[i % 3] == "completed" else 0.0,
            "prompt": f"shot {i}",
            "has_audio": bool(i % 2),
            "width": 1280,
            "error": "boom" if statuses[i % 3] == "failed" else None,
        }
        for i in range(n)
    )


def test_append_then_load_round_trips_values_and_dtypes(tmp_path: Path) -> None:
    frame = rows("run-a")
    path = ledger.append(frame, root=tmp_path)
    assert path == tmp_path / "run-run-a.parquet"
    loaded = ledger.load(root=tmp_path)
    assert list(loaded.columns) == list(COLUMNS)
    assert {name: str(dtype) for name, dtype in loaded.dtypes.items()} == COLUMNS
    pd.testing.assert_frame_equal(loaded, frame)
    metadata = pq.read_schema(path).metadata
    assert metadata[b"klingflow.ledger.schema_version"] == str(LEDGER_SCHEMA_VERSION).encode()


def test_empty_dataset_and_no_match_give_typed_empty_frames(tmp_path: Path) -> None:
    for frame in (ledger.load(root=tmp_path / "missing"), ledger.load(root=tmp_path, pipeline="x")):
        assert frame.empty and {n: str(d) for n, d in frame.dtypes.items()} == COLUMNS


def test_rewriting_a_run_replaces_its_rows(tmp_path: Path) -> None:
    ledger.append(rows("run-a", n=3), root=tmp_path)
    ledger.append(rows("run-a", n=2), root=tmp_path)
    assert len(ledger.load(root=tmp_path)) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["run-run-a.parquet"], "no temp file is left behind"


def test_filters_by_run_prefix_pipeline_status_and_since(tmp_path: Path) -> None:
    old = datetime(2025, 1, 1, tzinfo=UTC)
    ledger.append(rows("aaa111", "story", start=old), root=tmp_path)
    ledger.append(rows("aaa222", "avatar", start=old + timedelta(days=10)), root=tmp_path)
    ledger.append(rows("bbb333", "story", start=datetime.now(UTC) - timedelta(hours=1)), root=tmp_path)
    assert set(ledger.load(run="aaa", root=tmp_path)["run_id"]) == {"aaa111", "aaa222"}
    assert set(ledger.load(run="bbb333", root=tmp_path)["run_id"]) == {"bbb333"}
    assert set(ledger.load(pipeline="story", root=tmp_path)["run_id"]) == {"aaa111", "bbb333"}
    failed = ledger.load(status="failed", root=tmp_path)
    assert len(failed) == 3 and set(failed["status"]) == {"failed"}
    assert set(ledger.load(since="24h", root=tmp_path)["run_id"]) == {"bbb333"}
    assert set(ledger.load(since="2025-01-05", root=tmp_path)["run_id"]) == {"aaa222", "bbb333"}
    assert list(ledger.load(root=tmp_path)["run_id"].unique()) == ["aaa111", "aaa222", "bbb333"]


def test_bad_filters_are_errors_with_hints(tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match="one of completed, cached, joined, failed, skipped"):
        ledger.load(status="done", root=tmp_path)
    with pytest.raises(LedgerError) as caught:
        ledger.load(since="last tuesday", root=tmp_path)
    assert "7d" in caught.value.hint


def test_parse_since_forms() -> None:
    assert ledger.parse_since("2025-02-03") == datetime(2025, 2, 3, tzinfo=UTC)
    assert ledger.parse_since("2025-02-03T10:00:00+02:00") == datetime(2025, 2, 3, 8, tzinfo=UTC)
    week = datetime.now(UTC) - ledger.parse_since("7d")
    assert timedelta(days=7) - timedelta(seconds=5) < week < timedelta(days=7) + timedelta(seconds=5)
    assert ledger.parse_since(datetime(2025, 1, 1)).tzinfo is UTC


def test_append_refuses_frames_that_are_not_one_run(tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match="exactly one run"):
        ledger.append(pd.concat([rows("a"), rows("b")]), root=tmp_path)
    with pytest.raises(LedgerError, match="file name"):
        ledger.append(rows("../escape"), root=tmp_path)


def test_an_unwritable_ledger_raises_naming_the_path(tmp_path: Path) -> None:
    blocker = tmp_path / "ledger"
    blocker.write_text("a file where the folder should be")
    with pytest.raises(LedgerError) as caught:
        ledger.append(rows("run-a"), root=blocker)
    assert str(blocker / "run-run-a.parquet") in caught.value.context


def test_older_schema_files_load_with_missing_columns_as_na(tmp_path: Path) -> None:
    old = pd.DataFrame(
        {
            "run_id": ["old-run"],
            "pipeline": ["story"],
            "step_id": ["opening"],
            "status": ["completed"],
            "started_at": [pd.Timestamp("2024-06-01T10:00:00Z")],
            "estimated_cost_usd": [0.225],
        }
    )
    table = pa.Table.from_pandas(old, preserve_index=False)
    table = table.replace_schema_metadata({b"klingflow.ledger.schema_version": b"0"})
    pq.write_table(table, tmp_path / "run-old-run.parquet")
    ledger.append(rows("new-run"), root=tmp_path)
    loaded = ledger.load(root=tmp_path)
    assert {n: str(d) for n, d in loaded.dtypes.items()} == COLUMNS
    first = loaded.iloc[0]
    assert first["run_id"] == "old-run" and first["estimated_cost_usd"] == 0.225
    assert pd.isna(first["queue_seconds"]) and pd.isna(first["has_audio"]) and pd.isna(first["attempts"])
    assert len(loaded) == 4


def test_a_damaged_file_is_named_in_the_error(tmp_path: Path) -> None:
    (tmp_path / "run-broken.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(LedgerError) as caught:
        ledger.load(root=tmp_path)
    assert "run-broken.parquet" in caught.value.context


def test_summary_per_run_and_per_pipeline(tmp_path: Path) -> None:
    ledger.append(rows("r1", "story", n=3), root=tmp_path)
    ledger.append(rows("r2", "story", n=6, start=datetime(2025, 3, 2, tzinfo=UTC)), root=tmp_path)
    ledger.append(rows("r3", "avatar", n=1), root=tmp_path)
    per_run, per_pipeline = ledger.summary(ledger.load(root=tmp_path))
    assert list(per_run["run_id"]) == ["r2", "r1", "r3"] or per_run["started_at"].is_monotonic_decreasing
    r1 = per_run.set_index("run_id").loc["r1"]
    assert (r1["steps"], r1["completed"], r1["cached"], r1["failed"]) == (3, 1, 1, 1)
    assert r1["spend_usd"] == pytest.approx(0.225) and r1["cached_share"] == pytest.approx(1 / 3)
    assert r1["queue_p50"] == pytest.approx(1.0) and r1["queue_p95"] == pytest.approx(1.9)
    assert r1["run_p95"] == pytest.approx(3.8)
    story = per_pipeline.set_index("pipeline").loc["story"]
    assert (story["runs"], story["steps"], story["failed"]) == (2, 9, 3)
    assert story["spend_usd"] == pytest.approx(3 * 0.225)
    empty_runs, empty_pipelines = ledger.summary(ledger.load(root=tmp_path, pipeline="none"))
    assert empty_runs.empty and empty_pipelines.empty


def test_export_formats(tmp_path: Path) -> None:
    frame = rows("r1")
    assert ledger.export(frame, "csv").splitlines()[0].startswith("run_id,flow_run_id,pipeline")
    assert '"step_id":"step_0"' in ledger.export(frame, "json").replace(" ", "")
    ledger.export(frame, "parquet", tmp_path / "out.parquet")
    pd.testing.assert_frame_equal(ledger.load(root=tmp_path, run="nothing"), frame.iloc[0:0])
    assert len(pd.read_parquet(tmp_path / "out.parquet")) == 3
    with pytest.raises(LedgerError, match="needs a file"):
        ledger.export(frame, "parquet")


WRITER = """
import sys
from pathlib import Path
from tests.test_ledger import rows
from klingflow import ledger
root, prefix, count = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
for index in range(count):
    ledger.append(rows(f"{prefix}-{index}", n=4), root=root)
"""


def test_two_processes_appending_at_once_lose_no_rows(tmp_path: Path) -> None:
    runs = 25
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tmp_path), prefix, str(runs)], cwd=Path(__file__).parents[1]
        )
        for prefix in ("left", "right")
    ]
    for writer in writers:
        assert writer.wait(timeout=120) == 0
    loaded = ledger.load(root=tmp_path)
    assert len(loaded) == 2 * runs * 4
    assert loaded["run_id"].nunique() == 2 * runs
    assert not list(tmp_path.glob(".*")), "no temp file is left behind"


KILLED_WRITER = """
import sys
from pathlib import Path
from tests.test_ledger import rows
from klingflow import ledger
root = Path(sys.argv[1])
big = rows("victim", n=60_000)
(root / "ready").write_text("go")
while True:
    ledger.append(big, root=root)
"""


def test_a_writer_killed_mid_write_leaves_a_loadable_dataset(tmp_path: Path) -> None:
    ledger.append(rows("survivor"), root=tmp_path)
    writer = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(tmp_path)], cwd=Path(__file__).parents[1]
    )
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".run-victim*.tmp")):  # wait until a write is under way
        assert writer.poll() is None and time.monotonic() < deadline, "writer never started writing"
        time.sleep(0.005)
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait(timeout=30)
    loaded = ledger.load(root=tmp_path)
    assert set(loaded["run_id"]) <= {"survivor", "victim"} and "survivor" in set(loaded["run_id"])
    assert loaded["run_id"].eq("victim").sum() in (0, 60_000), "a run is there whole or not at all"
    for path in tmp_path.glob("run-*.parquet"):
        pq.read_table(path)  # every visible file is complete
    leftovers = list(tmp_path.glob(".*.tmp"))
    for leftover in leftovers:  # an old leftover is swept by the next append
        os.utime(leftover, (time.time() - 7200, time.time() - 7200))
    ledger.append(rows("after"), root=tmp_path)
    assert not list(tmp_path.glob(".*.tmp"))


def test_the_record_and_report_modules_never_import_prefect() -> None:
    code = (
        "import sys\n"
        "import klingflow.ledger, klingflow.engine.recording, klingflow.report, klingflow.cli.ledger\n"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'prefect'], 'prefect imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
