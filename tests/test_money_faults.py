"""Issue 12, item 1: "never pay twice, never lose a paid clip" under every fault, phase by phase.

Faults come from the tests' own TLS proxy (:mod:`faultproxy`), not from the emulator: the proxy sits
between an unmodified fal_client and the session emulator and counts the submits the emulator
*accepted* (paid), whatever the client then received.

The fault matrix (6 phases x 15 faults) runs a 4-step pipeline (three text-to-video steps and one
image-to-video step, ``portrait``, whose image is a local file, so fal_client's upload is in play)
with ``concurrency 2``, in a long-lived engine process behind the proxy (``moneyrun.py``: the same
``klingflow.engine.arun`` that ``klingflow run`` drives, with a 0.05 s retry backoff). Every fault
hits the ``portrait`` step, which starts only once an earlier step has finished, so clips exist
before the fault. Each cell checks:

* the fault was really injected (a cell whose fault never fired proves nothing);
* the accepted submits the proxy counted: one per step (3 text-to-video, 1 image-to-video);
* the run's outcome: it succeeds (one-shot faults are transient), except the cancel cells;
* every completed step's clip is in the ledger (on disk) and intact in the store, and every paid
  request id is the one the ledger recorded for its step.

The issue's own rows run end to end as ``klingflow run`` (a Prefect server of the test's own).
"""

from __future__ import annotations

import contextlib
import json
import queue
import shutil
import ssl
import traceback
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import EmulatorAdmin, prefect_server, serve_emulator
from faultproxy import Fault, FaultProxy
from moneyhelpers import (
    EngineProcess,
    accepted_by_endpoint,
    exchange_log,
    klingflow_run,
    ledger_rows,
    lost_outputs,
    run_env,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # the matrix runs in a module fixture

FACE = Path(__file__).parent / "specs" / "valid" / "face.png"
T2V, I2V = "text-to-video", "image-to-video"
STEPS = {"intro": T2V, "scene": T2V, "portrait": I2V, "outro": T2V}
ONE_PER_STEP = Counter(STEPS.values())
SLOW = 8.0  # seconds a SLOW answer is held back: longer than the faulted step's timeout in SLOW cells
SLOW_TIMEOUT = 6.0  # (klingflow times status polling only); the request itself completes well within it

FAULTS = [
    Fault.RATE_LIMIT,  # 429 + Retry-After
    Fault.ERROR_500_BEFORE,
    Fault.ERROR_500_AFTER,
    Fault.INGRESS_502_BEFORE,  # nginx HTML, no x-fal-request-id: fal_client resends by itself
    Fault.INGRESS_502_AFTER,
    Fault.APP_502_BEFORE,  # JSON with x-fal-request-id: reaches klingflow
    Fault.APP_502_AFTER,
    Fault.INGRESS_503_BEFORE,
    Fault.INGRESS_503_AFTER,
    Fault.APP_503_BEFORE,
    Fault.APP_503_AFTER,
    Fault.DROP_BEFORE,
    Fault.DROP_AFTER,  # forwarded, then no answer: for a submit, accepted upstream and the answer lost
    Fault.TRUNCATE,
    Fault.SLOW,
]
PHASES = ["upload", "submit", "status", "result", "download", "cancel"]


def pipeline(folder: Path, name: str, *, portrait: dict[str, Any] | None = None) -> Path:
    """The 4-step pipeline, with prompts unique to ``name`` (no two cells share an input, so fal's
    request history can never tie one cell's request to another's) and ``face.png`` beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(FACE, folder / "face.png")
    extra = "".join(f"\n    {key}: {json.dumps(value)}" for key, value in (portrait or {}).items())
    text = f"""\
name: money
steps:
  - id: intro
    uses: text-to-video
    with: {{prompt: "{name}: a harbour at dawn", duration: 5}}
  - id: scene
    uses: text-to-video
    with: {{prompt: "{name}: gulls over the pier", duration: 5}}
  - id: portrait
    uses: image-to-video
    with: {{prompt: "{name}: the keeper turns to the sea", image_url: face.png, duration: 5}}{extra}
  - id: outro
    uses: text-to-video
    with: {{prompt: "{name}: the harbour at night", duration: 5}}
"""
    path = folder / "money.yaml"
    path.write_text(text)
    return path


def prerendered(emulator: EmulatorAdmin) -> None:
    """Benchmark rendering (~0.05 s a clip): the emulator fixture's reset puts ``full`` back after."""
    httpx.post(
        f"{emulator.base}/_emulator/config",
        json={"render": "prerendered"},
        headers={"Authorization": f"Key {emulator.key}"},
        verify=emulator.ssl,
    ).raise_for_status()


def cancel_upstream(emulator: EmulatorAdmin, proxy: FaultProxy) -> None:
    """Cancel, at the emulator itself, every request the cell left queued (a stuck request)."""
    context = ssl.create_default_context(cafile=str(emulator.server.identity.ca_bundle))
    with httpx.Client(verify=context, headers={"Authorization": f"Key {emulator.key}"}, timeout=10) as client:
        for accepted in proxy.accepted:
            owner = "/".join(accepted.endpoint.split("/")[:2])
            client.put(f"{emulator.base}/{owner}/requests/{accepted.request_id}/cancel")


def money_problems(
    proxy: FaultProxy,
    home: Path,
    reply: dict[str, Any],
    *,
    succeeds: bool = True,
    failed_steps: tuple[str, ...] = (),
) -> list[str]:
    """Everything wrong with one run, money first ([] when it kept the promise)."""
    problems = []
    accepted = accepted_by_endpoint(proxy)
    if accepted != ONE_PER_STEP:
        extra = {k: accepted[k] - ONE_PER_STEP[k] for k in accepted if accepted[k] != ONE_PER_STEP[k]}
        problems.append(
            f"proxy counted {sum(accepted.values())} accepted submits for {len(STEPS)} steps "
            f"({dict(accepted)}; off by {extra})"
        )
    status = reply.get("status")
    wanted = "completed" if succeeds else "failed"
    if status != wanted:
        failed = [
            f"{r['step_id']}: {(r.get('error') or '').splitlines()[0][:200]}"
            for r in reply.get("records", [])
            if r["status"] != "completed"
        ]
        problems.append(f"run {status}, expected {wanted}: {failed or reply.get('error', '')[-1500:]}")
    rows = ledger_rows(home, reply.get("run_id")) if reply.get("run_id") else []
    by_step = {row["step_id"]: row for row in rows}
    for step in STEPS:
        row = by_step.get(step)
        expected = "failed" if step in failed_steps else "completed"
        if row is None:
            problems.append(f"{step}: no ledger row")
        elif row["status"] != expected:
            problems.append(f"{step}: ledger says {row['status']}, expected {expected}: {row.get('error')}")
    problems += lost_outputs(home, rows)
    paid = {a.request_id for a in proxy.accepted if a.phase == "submit"}
    recorded = {row["request_id"] for row in rows if row["status"] == "completed"}
    if rows and not failed_steps and paid - recorded:
        lost = sorted(paid - recorded)
        problems.append(f"paid requests whose clip no completed ledger row keeps (paid, then lost): {lost}")
    return problems


def report(problems: list[str], proxy: FaultProxy, reply: dict[str, Any]) -> str:
    noise = ("Generating:", "Starting ", "Benchmark mode", "Done: output")
    log = "\n".join(f"  {line}" for line in reply.get("log", []) if not any(n in line for n in noise))
    return "\n".join(problems) + f"\nexchanges:\n{exchange_log(proxy)}\nengine log:\n{log[-6000:]}"


# ---- the matrix -----------------------------------------------------------------------------------
#
# 90 cells of a few seconds each, mostly spent waiting (queue latency, polls, backoff, held answers):
# they run in LANES isolated lanes at once (each its own `klingflow emulator serve`, proxy and engine
# process, so counts, fault scripts and stuck requests never mix), in a module fixture; each
# parametrised test then asserts its own cell's result.

LANES = 3


@dataclass
class Cell:
    """One cell's result: whether its fault fired, what broke the promise, and the evidence."""

    fired: bool
    problems: list[str]
    detail: str

    def __repr__(self) -> str:  # pytest shows the fixture's value with each failure: keep it short
        return f"Cell(fired={self.fired}, {len(self.problems)} problems)"


class Results(dict[str, Cell]):
    def __repr__(self) -> str:
        return f"<{len(self)} cells>"


class Lane:
    """An emulator (benchmark rendering, 0.2 s latency), a proxy in front of it, an engine process."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._stack = contextlib.ExitStack()
        try:
            env = self._stack.enter_context(
                serve_emulator(root / "emulator", "--latency", "0.2", "--render-mode", "prerendered",
                               "--workers", "4")
            )  # fmt: skip
            self.admin = self._stack.enter_context(
                httpx.Client(
                    base_url=f"https://{env['FAL_QUEUE_RUN_HOST']}",
                    verify=ssl.create_default_context(cafile=env["SSL_CERT_FILE"]),
                    headers={"Authorization": f"Key {env['FAL_KEY']}"},
                    trust_env=False,
                    timeout=30,
                )
            )
            self.proxy = self._stack.enter_context(
                FaultProxy(
                    env["FAL_QUEUE_RUN_HOST"],
                    run_host=env["FAL_RUN_HOST"],
                    ca_bundle=env["SSL_CERT_FILE"],
                    key=env["FAL_KEY"],
                )
            )
            engine_env = self.proxy.environment()
            engine_env["KLINGFLOW_HOME"] = str(root / "engine-home")
            self.engine = EngineProcess(engine_env, root / "engine.log")
            self._stack.callback(self.engine.close)
        except BaseException:
            self._stack.close()
            raise

    def close(self) -> None:
        self._stack.close()

    def run(self, phase: str, fault: Fault) -> Cell:
        name = f"{phase}-{fault.value}"
        folder = self.root / name
        self.proxy.reset()
        if phase == "cancel":
            # A cancel happens when a step times out: the portrait request never leaves the queue
            # (the emulator's `stuck`), its 1 s timeout fires, klingflow cancels it; the cancel is faulted.
            self.admin.post("/_emulator/faults", json={"script": [f"stuck@{I2V}"]}).raise_for_status()
            spec = pipeline(folder, name, portrait={"timeout": 1})
        else:
            # SLOW: the answer takes longer than the step's timeout; otherwise no timeout (a loaded
            # machine must not turn a cell into a timeout)
            spec = pipeline(folder, name, portrait={"timeout": SLOW_TIMEOUT} if fault is Fault.SLOW else None)
        if phase == "upload":
            # fal_client's upload is a CDN token request, then the file's POST: the fault hits the file
            self.proxy.inject("upload", fault, at=2, delay=SLOW)
        else:
            self.proxy.inject(phase, fault, endpoint=I2V, delay=SLOW, retry_after=1)
        try:
            reply = self.engine.run(spec, folder / "home", concurrency=2)
        finally:
            self.admin.post("/_emulator/faults", json={}).raise_for_status()
            for accepted in self.proxy.accepted:  # nothing stays queued upstream after the cell
                owner = "/".join(accepted.endpoint.split("/")[:2])
                with contextlib.suppress(httpx.HTTPError):
                    self.admin.put(f"/{owner}/requests/{accepted.request_id}/cancel")
        fired = any(e.fault is fault for e in self.proxy.exchanges)
        if phase == "cancel":
            problems = money_problems(self.proxy, folder / "home", reply, succeeds=False,
                                      failed_steps=("portrait",))  # fmt: skip
            if not any(
                e.phase == "cancel" and e.forwarded and e.upstream_status in (200, 202)
                for e in self.proxy.exchanges
            ):
                problems.append("the timed-out request was never cancelled upstream (it stays queued on fal)")
        else:
            problems = money_problems(self.proxy, folder / "home", reply)
        return Cell(fired, problems, report(problems, self.proxy, reply))


@pytest.fixture(scope="module")
def matrix(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Cell]:
    """Run every selected cell of the matrix, LANES at a time; cell id -> result."""
    wanted = [
        (item.callspec.params["phase"], item.callspec.params["fault"])
        for item in request.session.items
        if getattr(item, "originalname", None) == "test_fault_matrix"
    ]
    todo: queue.Queue[tuple[str, Fault]] = queue.Queue()
    for cell in sorted(wanted, key=lambda c: c[1] is not Fault.SLOW):  # the longest first
        todo.put(cell)
    root = tmp_path_factory.mktemp("matrix")
    results = Results()
    with ThreadPoolExecutor(LANES) as pool:
        lanes = list(pool.map(Lane, [root / f"lane{i}" for i in range(min(LANES, len(wanted)))]))
        try:

            def work(lane: Lane) -> None:
                while True:
                    try:
                        phase, fault = todo.get_nowait()
                    except queue.Empty:
                        return
                    try:
                        results[f"{phase}-{fault.value}"] = lane.run(phase, fault)
                    except Exception:
                        results[f"{phase}-{fault.value}"] = Cell(
                            False, ["the cell crashed"], traceback.format_exc()
                        )

            list(pool.map(work, lanes))
        finally:
            list(pool.map(Lane.close, lanes))
    return results


@pytest.mark.parametrize("fault", FAULTS, ids=[f.value for f in FAULTS])
@pytest.mark.parametrize("phase", PHASES)
def test_fault_matrix(phase: str, fault: Fault, matrix: dict[str, Cell]) -> None:
    cell = matrix[f"{phase}-{fault.value}"]
    assert cell.fired, f"the {fault.value} fault never reached a {phase} request\n{cell.detail}"
    assert not cell.problems, cell.detail


# ---- the issue's own rows, end to end through `klingflow run` -------------------------------------


@pytest.fixture
def proxy(fault_proxy: FaultProxy, emulator: EmulatorAdmin) -> Iterator[FaultProxy]:
    """The test's proxy in front of the session emulator, in benchmark rendering."""
    prerendered(emulator)
    yield fault_proxy
    cancel_upstream(emulator, fault_proxy)


@pytest.fixture(scope="module")
def prefect(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    with prefect_server(tmp_path_factory.mktemp("prefect")) as variables:
        yield variables


def cli_run(proxy: FaultProxy, prefect: dict[str, str], spec: Path, tmp_path: Path) -> dict[str, Any]:
    """``klingflow run`` to the end; a reply shaped like the engine process's (status, run_id, log)."""
    home = tmp_path / "home"
    code, output = klingflow_run(spec, run_env(proxy, home, prefect, tmp_path / "prefect"), tmp_path / "out")
    rows = ledger_rows(home)
    return {
        "status": "completed" if code == 0 else f"failed (exit {code})",
        "run_id": rows[0]["run_id"] if rows else None,
        "records": [{**row, "error": row.get("error") or ""} for row in rows],
        "log": output.splitlines(),
        "error": output,
    }


def unfired(proxy: FaultProxy, faults: set[Fault]) -> list[str]:
    missing = faults - {e.fault for e in proxy.exchanges if e.fault}
    return (
        [f"faults that never fired (the run ended before reaching them): {sorted(missing)}"]
        if missing
        else []
    )


def test_submit_answer_cut_mid_body_then_resend_answered_by_nginx_502(
    proxy: FaultProxy, prefect: dict[str, str], tmp_path: Path
) -> None:
    """Each step's submit is accepted and its answer cut mid-body; the resend is accepted again and
    answered with an nginx 502 (no x-fal-request-id). Measured on fal_client 1.0.3 alone: 12 accepted
    for 4 steps, and the caller saw nothing but success. Goal: 4 for 4, reconciled via the history."""
    proxy.inject("submit", Fault.TRUNCATE, times=len(STEPS))
    proxy.inject("submit", Fault.INGRESS_502_AFTER, times=len(STEPS))
    spec = pipeline(tmp_path, "issue-a")

    reply = cli_run(proxy, prefect, spec, tmp_path)

    problems = money_problems(proxy, tmp_path / "home", reply) + unfired(proxy, {Fault.TRUNCATE})
    assert not problems, report(problems, proxy, reply)


def test_submit_accepted_then_500_from_the_gateway(
    proxy: FaultProxy, prefect: dict[str, str], tmp_path: Path
) -> None:
    """Each step's submit is accepted, then the gateway answers 500. Goal: 4 accepted for 4 steps."""
    proxy.inject("submit", Fault.ERROR_500_AFTER, times=len(STEPS))
    spec = pipeline(tmp_path, "issue-b")

    reply = cli_run(proxy, prefect, spec, tmp_path)

    problems = money_problems(proxy, tmp_path / "home", reply) + unfired(proxy, {Fault.ERROR_500_AFTER})
    assert not problems, report(problems, proxy, reply)


def test_poll_fetch_and_download_faults_do_not_spend_the_resubmit_budget(
    proxy: FaultProxy, prefect: dict[str, str], tmp_path: Path
) -> None:
    """One request meets a 503 on a status poll, a 500 on its result fetch and a download cut in
    half, on a step with ``retries: 1``. None of them needs a new (paid) request, so none may spend
    the step's one retry: the run succeeds, 4 accepted for 4 steps."""
    proxy.inject("status", Fault.APP_503_BEFORE, endpoint=I2V)
    proxy.inject("result", Fault.ERROR_500_BEFORE, endpoint=I2V)
    proxy.inject("download", Fault.TRUNCATE, endpoint=I2V)
    spec = pipeline(tmp_path, "issue-budget", portrait={"retries": 1})

    reply = cli_run(proxy, prefect, spec, tmp_path)

    problems = money_problems(proxy, tmp_path / "home", reply)
    problems += unfired(proxy, {Fault.APP_503_BEFORE, Fault.ERROR_500_BEFORE, Fault.TRUNCATE})
    assert not problems, report(problems, proxy, reply)
