"""``klingflow gc`` on a real home: real runs on the emulator, files aged by hand, leftovers by hand.

The home holds, side by side: a pipeline run 40 days ago and never again (old: its journal entry
and clip go), one run 40 days ago and re-run from the cache yesterday (its rows keep its old
entry), a recent pipeline, an old entry someone is fetching right now (a live claim), a paid
request that was never collected (kept whatever its age, and resumed afterwards without a new
submit), a newer klingflow's entry this version cannot read, orphaned store objects, temporary
files of killed writers and of running ones, and stale and live claim files.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest

from conftest import KLINGFLOW, EmulatorAdmin
from klingflow import ledger
from klingflow.cache import FileClaims, Journal, OutputRecord, RedisClaims, Store, new_owner
from klingflow.engine import Collected, RetryPolicy, RunOptions, RunResult, arun, collect_garbage
from klingflow.engine.housekeeping import KINDS
from klingflow.spec import parse_pipeline
from test_claims import redis_url  # noqa: F401  (a real redis-server on loopback, for the module)

DAY = 86400.0
T2V = "fal-ai/kling-video/v1/standard/text-to-video"


def one_step(name: str, uses: str, **arguments: str) -> dict:
    return {"name": name, "steps": [{"id": "only", "uses": uses, "with": arguments}]}


OLD = one_step("old", "text-to-video", prompt="gc: an old shot nobody asks for again")
WARM = one_step("warm", "tts", text="gc: an old line, re-run from the cache yesterday")
FETCHING = one_step("fetching", "tts", text="gc: an old line someone is fetching right now")
PAID = one_step("paid", "text-to-video", prompt="gc: paid for, never collected")
RECENT = {
    "name": "recent",
    "steps": [
        {"id": "shot", "uses": "text-to-video", "with": {"prompt": "gc: a recent shot"}},
        {"id": "still", "uses": "last_frame", "with": {"video": "${steps.shot.video}"}},
    ],
}


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh klingflow home with file claims (the session's runs never see it)."""
    monkeypatch.setenv("KLINGFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("KLINGFLOW_CLAIMS", raising=False)
    return tmp_path / "home"


async def run(data: dict, emulator: EmulatorAdmin) -> RunResult:
    """One real run into the home's own store, journal and ledger."""
    options = RunOptions(backend="fal", key=emulator.key, retry=RetryPolicy(retries=4, base_delay=0.05))
    result = await arun(parse_pipeline(data), None, options)
    assert result.status == "completed", [r.error for r in result.records]
    return result


def age(path: Path, days: float) -> Path:
    """Set ``path``'s modification time ``days`` back (how gc sees a file's age)."""
    moment = time.time() - days * DAY
    os.utime(path, (moment, moment))
    return path


def journal_file(home: Path, key: str) -> Path:
    return home / "journal" / key[:2] / f"{key}.json"


def age_run(home: Path, result: RunResult, days: float) -> None:
    """Make a run look ``days`` old: its ledger rows' times, its journal entries, its stored files."""
    rows = ledger.load(run=result.run_id)
    for column in ("submitted_at", "started_at", "finished_at"):
        rows[column] = rows[column] - pd.Timedelta(days=days)
    ledger.append(rows)
    for record in result.records:
        age(journal_file(home, record.cache_key), days)
        age(Path(record.output_path), days)


def orphan(home: Path, content: bytes, days: float) -> Path:
    """A store object no entry and no row references, written ``days`` ago."""
    source = home.parent / f"orphan-{hashlib.sha256(content).hexdigest()}.bin"
    source.write_bytes(content)
    return age(Store(home / "store").put_file(source).path, days)


def temp(path: Path, hours: float, content: bytes = b"partial") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return age(path, hours / 24)


def dead_pid() -> int:
    """The id of a process that has just ended."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def files(home: Path) -> dict[Path, tuple[int, int]]:
    """Every file and folder under the home, with its size and modification time."""
    return {p: (p.lstat().st_size, p.lstat().st_mtime_ns) for p in home.rglob("*")}


@dataclass
class Home:
    """What was made, and what gc must remove and keep."""

    removed: set[Path] = field(default_factory=set)
    kept: set[Path] = field(default_factory=set)
    paid_key: str = ""
    paid_request: str = ""
    runs: dict[str, RunResult] = field(default_factory=dict)


async def build(home: Path, emulator: EmulatorAdmin) -> Home:
    """The home described in the module docstring."""
    made = Home()
    journal, claims = Journal(home / "journal"), FileClaims(home / "claims")
    for name, data in (("old", OLD), ("warm", WARM), ("fetching", FETCHING), ("paid", PAID)):
        made.runs[name] = await run(data, emulator)
        age_run(home, made.runs[name], 40)
    (old,) = made.runs["old"].records
    made.removed |= {journal_file(home, old.cache_key), Path(old.output_path)}
    (warm,) = (await run(WARM, emulator)).records
    assert warm.status == "cached"
    made.kept |= {journal_file(home, warm.cache_key), Path(warm.output_path)}
    (fetching,) = made.runs["fetching"].records
    assert claims.acquire(fetching.cache_key, new_owner(), ttl=600)
    made.kept |= {journal_file(home, fetching.cache_key), Path(fetching.output_path)}

    # a request paid for whose result never reached the store: the run died before downloading it
    (paid,) = made.runs["paid"].records
    entry = journal.get(paid.cache_key)
    assert entry is not None and entry.request_id
    journal.record_submitted(
        paid.cache_key,
        endpoint=entry.endpoint,
        backend=entry.backend,
        request_id=entry.request_id,
        payload_digest=entry.payload_digest,
        submitted_at=entry.submitted_at,
    )
    Path(paid.output_path).unlink()
    made.paid_key, made.paid_request = paid.cache_key, entry.request_id
    interrupted = journal.record_interrupted("ab" * 32, endpoint=T2V, backend="fal", payload_digest="cd" * 32)
    made.kept |= {age(journal_file(home, paid.cache_key), 90), age(journal_file(home, interrupted.key), 90)}

    made.runs["recent"] = await run(RECENT, emulator)
    for record in made.runs["recent"].records:
        made.kept |= {journal_file(home, record.cache_key), Path(record.output_path)}

    # a newer klingflow's entry (a status this version does not know) and the object it names
    named = orphan(home, b"named by an entry of a newer klingflow", 90)
    newer = journal_file(home, "ef" * 32)
    newer.parent.mkdir(parents=True, exist_ok=True)
    newer.write_text(
        json.dumps({"key": "ef" * 32, "status": "cancelled", "outputs": {"video": {"sha256": named.stem}}})
    )
    made.kept |= {age(newer, 90), named}

    made.removed |= {orphan(home, b"orphaned last week", 7), orphan(home, b"orphaned long ago", 60)}
    made.kept.add(orphan(home, b"stored a moment ago, journaled in a moment", 0))

    tmp = home / "store" / "tmp"
    made.removed |= {
        temp(tmp / "tmpkilleddownload", hours=3),
        temp(home / "journal" / "ab" / f".{'ab' * 32}.json.1-2-deadbeef.tmp", hours=2),
        temp(home / "claims" / ".k.claim.1-2-deadbeef.tmp", hours=2),
        temp(home / "ledger" / ".run-x.parquet.1-2-deadbeef.tmp", hours=2),
        temp(home / "runs" / ".run-4242-1764000000000000000.log", hours=2),  # a killed run's log
    }
    made.kept.add(temp(home / "runs" / ".run-4343-1764000000000000000.log", hours=0))  # a run logging now
    scratch = tmp / "tmpkilledscratch"
    temp(scratch / "final_cut.mp4", hours=5)
    made.removed.add(age(scratch, 5 / 24))
    running = tmp / "tmprunningscratch"
    temp(running / "final_cut.mp4", hours=0)  # ffmpeg is writing it now
    made.kept |= {temp(tmp / "tmprunningdownload", hours=0), age(running, 1)}

    assert claims.acquire("live", new_owner(), ttl=600)
    assert claims.acquire("expired", new_owner(), ttl=-1)
    assert claims.acquire("dead", f"{socket.gethostname()}:{dead_pid()}:0", ttl=600)
    (home / "claims" / "being-written.claim").touch()  # acquire() between its open and its write
    in_use = {"live", "being-written", fetching.cache_key}
    for path in (home / "claims").glob("*.*"):
        if path.suffix in (".claim", ".lock"):
            (made.kept if path.stem in in_use else made.removed).add(path)
    generations = {r.cache_key for r in made.runs["recent"].records if r.kind != "operation"}
    assert generations and {p.stem for p in made.removed if p.suffix == ".lock"} >= generations, (
        "every generation leaves its lock file"
    )
    return made


def kind_of(home: Path, path: Path) -> str:
    if path.parent.name == "tmp" or path.name.endswith(".tmp") or path.name.startswith(".run-"):
        return "temp files"
    if path.is_relative_to(home / "claims"):
        return "claim files"
    return "journal entries" if path.is_relative_to(home / "journal") else "store objects"


def expected_amounts(home: Path, paths: set[Path]) -> dict[str, tuple[int, int]]:
    """Per kind, how many of ``paths`` and their bytes (a folder counts once, with its files' bytes)."""
    amounts = {kind: [0, 0] for kind in KINDS}
    for path in paths:
        inner = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        amounts[kind_of(home, path)][0] += 1
        amounts[kind_of(home, path)][1] += sum(p.stat().st_size for p in inner)
    return {kind: (count, size) for kind, (count, size) in amounts.items()}


def amounts(result: Collected) -> dict[str, tuple[int, int]]:
    return {kind: (freed.count, freed.bytes) for kind, freed in result.freed.items()}


async def test_gc_removes_exactly_the_orphaned_and_old_and_keeps_what_runs_need(
    home: Path, emulator: EmulatorAdmin
) -> None:
    made = await build(home, emulator)
    before = files(home)
    expected = expected_amounts(home, made.removed)

    result = collect_garbage("30d")

    assert set(result.removed) == made.removed
    assert amounts(result) == expected
    assert result.open_requests == 2, "the paid request and the interrupted submit"
    after = files(home)
    gone = {p for p in before if p not in after}
    assert gone == made.removed | {p for p in before if any(p.is_relative_to(d) for d in made.removed)}
    assert all(path in after for path in made.kept)
    kept_entry = Journal(home / "journal").get(made.paid_key)
    assert kept_entry is not None and kept_entry.status == "submitted"
    assert kept_entry.request_id == made.paid_request

    # the recent pipeline and the one re-run yesterday are fully cached; the paid request is collected
    emulator.reset()
    recent, warm = await run(RECENT, emulator), await run(WARM, emulator)
    assert [r.status for r in [*recent.records, *warm.records]] == ["cached"] * 3
    (paid,) = (await run(PAID, emulator)).records
    assert paid.request_id == made.paid_request
    assert emulator.stats()["total_submits"] == 0, "nothing submitted: the cache and the paid request held"
    again = collect_garbage("30d")
    assert again.removed == [home / "claims" / f"{paid.cache_key}.lock"], "only the collecting run's lock"
    assert again.open_requests == 1, "the interrupted submit is still kept"


async def test_dry_run_removes_nothing_and_counts_the_same(home: Path, emulator: EmulatorAdmin) -> None:
    made = await build(home, emulator)
    before = files(home)

    dry = collect_garbage("30d", dry_run=True)

    assert files(home) == before, "a dry run removes (and touches) nothing"
    assert set(dry.removed) == made.removed
    real = collect_garbage("30d")
    assert amounts(real) == amounts(dry) and set(real.removed) == set(dry.removed)
    assert real.total.count > 0 and not any(path.exists() for path in made.removed)


async def test_a_shorter_period_keeps_only_what_it_uses(home: Path, emulator: EmulatorAdmin) -> None:
    result = await run(RECENT, emulator)
    for record in result.records:
        age(journal_file(home, record.cache_key), 2)
    ledger_rows = ledger.load(run=result.run_id)
    for column in ("submitted_at", "started_at", "finished_at"):
        ledger_rows[column] = ledger_rows[column] - pd.Timedelta(days=2)
    ledger.append(ledger_rows)

    assert collect_garbage("3d", dry_run=True).freed["journal entries"].count == 0
    assert collect_garbage("12h", dry_run=True).freed["journal entries"].count == 2
    future = collect_garbage("2999-01-01")
    assert future.cutoff.timestamp() < time.time() - timedelta(minutes=59).total_seconds()
    assert future.freed["journal entries"].count == 2, "a date ahead still keeps the last hour"
    assert future.freed["store objects"].count == 0, "stored within the hour: a run may be journaling them"


def table_amounts(output: str) -> dict[str, tuple[int, int]]:
    """Per kind (and in total), the count and bytes ``klingflow gc`` printed in its table."""
    found = {}
    for line in output.splitlines():
        cells = [cell.strip() for cell in re.split(r"[│|]", line)]
        if len(cells) == 6 and cells[1] in (*KINDS, "total"):
            found[cells[1]] = (int(cells[2]), int(cells[4].replace(",", "")))
    return found


async def test_the_command_prints_what_it_frees(home: Path, emulator: EmulatorAdmin) -> None:
    old = await run(OLD, emulator)
    age_run(home, old, 40)
    removed = {
        journal_file(home, old.records[0].cache_key),
        Path(old.records[0].output_path),
        orphan(home, b"an orphan", 3),
        temp(home / "store" / "tmp" / "tmpkilled", hours=2, content=b"x" * 1000),
        *(home / "claims").glob("*.lock"),
    }
    expected = expected_amounts(home, removed)
    expected["total"] = (sum(c for c, _ in expected.values()), sum(b for _, b in expected.values()))
    env = {**os.environ, "KLINGFLOW_HOME": str(home), "COLUMNS": "120"}

    def gc(*flags: str) -> str:
        done = subprocess.run(
            [*KLINGFLOW, "gc", *flags], env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    dry = gc("--dry-run", "--older-than", "30d")
    assert "would free" in dry and table_amounts(dry) == expected, dry
    assert all(path.exists() for path in removed)
    real = gc()
    assert "freed" in real and "would" not in real and table_amounts(real) == expected, real
    assert not any(path.exists() for path in removed)
    assert table_amounts(gc())["total"] == (0, 0)

    wrong = subprocess.run(
        [*KLINGFLOW, "gc", "--older-than", "soon"], env=env, capture_output=True, text=True
    )
    assert wrong.returncode == 1 and "--older-than" in wrong.stderr and "30m, 24h, 7d" in wrong.stderr
    assert "Traceback" not in wrong.stderr


def blocked_on(path: Path) -> bool:
    """Whether some process waits for a flock on ``path``'s file (``/proc/locks`` lists it with ``->``)."""
    inode = path.stat().st_ino
    return any("->" in line and f":{inode} " in line for line in Path("/proc/locks").read_text().splitlines())


def test_a_lock_file_removed_under_its_lock_is_not_trusted_by_the_process_that_waited(home: Path) -> None:
    """gc removes a stale claim's lock file while holding that lock. A process that was waiting for it
    must open the path again, or it would hold a lock on a removed file while a newcomer holds the new one."""
    claims = FileClaims(home / "claims")
    assert claims.acquire("k", "host:1:a", ttl=-1)  # expired: free to take over, and for gc to remove
    lock = home / "claims" / "k.lock"
    take_over = (
        "from pathlib import Path; from klingflow.cache import FileClaims; "
        f"print(FileClaims(Path({str(home / 'claims')!r})).acquire('k', 'host:2:b', ttl=600))"
    )
    with open(lock, "a") as removed:
        fcntl.flock(removed, fcntl.LOCK_EX)  # gc's discard("k") holds the lock ...
        waiter = subprocess.Popen([sys.executable, "-c", take_over], stdout=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while not blocked_on(lock):
            assert waiter.poll() is None and time.monotonic() < deadline, "the take-over never waited"
            time.sleep(0.05)
        (home / "claims" / "k.claim").unlink()  # ... removes the claim and its lock file ...
        lock.unlink()
        newcomer = open(lock, "a")  # ... and another process arrives and locks the new file
        fcntl.flock(newcomer, fcntl.LOCK_EX)
    with newcomer:  # gc is done; a waiter that trusted the removed file would take the claim now
        time.sleep(1)
        assert not (home / "claims" / "k.claim").exists(), "the waiter took the claim without the lock"
        (home / "claims" / "k.claim").write_text(
            '{"owner": "host:3:c", "expires_at": %f}' % (time.time() + 600)
        )
    assert waiter.communicate(timeout=60)[0].strip() == "False", "the newcomer's claim is live"
    assert claims.holder("k") == "host:3:c"
    assert not claims.discard("k"), "a live claim is never removed"
    assert claims.holder("k") == "host:3:c"


def test_with_redis_claims_a_key_held_in_redis_keeps_its_entry(
    home: Path,
    redis_url: str,  # noqa: F811  (the fixture imported above)
) -> None:
    """Redis keys expire by themselves (nothing of Redis is removed); Redis says which keys are held."""
    journal, store = Journal(home / "journal"), Store(home / "store")
    entries = {}
    for name in ("held", "free"):
        stored = age(orphan(home, f"the {name} clip".encode(), 0), 40)
        key = hashlib.sha256(f"{name} {time.time_ns()}".encode()).hexdigest()
        output = OutputRecord(sha256=stored.stem, suffix=stored.suffix, bytes=stored.stat().st_size)
        journal.record_done(key, endpoint=T2V, backend="fal", request_id=None, outputs={"video": output})
        entries[name] = (age(journal_file(home, key), 40), stored)
    held_key = entries["held"][0].stem
    assert RedisClaims(redis_url).acquire(held_key, new_owner(), ttl=600)
    assert FileClaims(home / "claims").acquire("left-by-a-file-run", "host:1:a", ttl=-1)
    assert store.find(entries["held"][1].stem) is not None

    result = collect_garbage("30d", claims=redis_url)

    assert set(result.removed) == {*entries["free"], home / "claims" / "left-by-a-file-run.claim"}
    assert all(path.exists() for path in entries["held"])
    assert RedisClaims(redis_url).holder(held_key) is not None, "the Redis claim itself is untouched"
