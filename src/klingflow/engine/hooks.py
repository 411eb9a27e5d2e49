"""One hooks object: how the layer above the engine (Prefect, the CLI) takes part in a run.

The engine runs the same way from plain Python, the CLI and a Prefect flow; what differs is what
happens around each step. Instead of loose callables, a run takes one :class:`RunHooks`:

* ``on_run_start()``: once, when the run begins (after the layer above has set itself up: the CLI
  quiets Prefect's console tracebacks here, once Prefect has configured its logging);
* ``run_step(step, call)``: wraps each step execution (the Prefect layer runs it as a task run
  named after the step, with the endpoint and arguments as the task's parameters);
* ``on_steps(pipeline, count)``: once, when the steps are about to start: the pipeline's name and
  how many step executions the run has (each foreach item counts), what a progress bar needs;
* ``on_plan(plan)``: once, before the first step: every step execution with its planned status
  and estimated cost (what a live view lists before anything runs);
* ``on_start(label)`` / ``on_event(label, event)`` / ``on_finish(record)``: progress: a step
  execution began, fal reported on its request (queue position, running), it ended with its
  ledger row (the CLI's live view draws them);
* ``log(message)``: where step messages go when ``run_step`` gives no logger of its own;
* ``approve(request)``: asks a person about a step that waits for approval and returns the
  decision (the CLI: a prompt on its terminal; the Prefect layer: a paused flow run with a form);
  None asks on this process's terminal, if it has one (:mod:`.approval`).

Example::

    hooks = RunHooks(on_finish=lambda record: print(record.step_label, record.status))
    result = asyncio.run(arun("story.yaml", hooks=hooks))
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from klingflow.engine.context import Logger
from klingflow.ledger import StepRecord

if TYPE_CHECKING:
    from klingflow.backends.handles import QueueEvent
    from klingflow.engine.approval import Asker
    from klingflow.engine.plan import Plan

__all__ = ["RunHooks", "StepCall", "StepInfo"]

StepCall = Callable[[Logger], Awaitable[StepRecord]]
"""One step execution, given the logger to report through; returns its ledger row."""


@dataclass(frozen=True)
class StepInfo:
    """What a wrapper may show about the step it runs (a Prefect task run's name and parameters).

    ``upstream`` names the step executions it depends on (their labels, ``beats[0]`` for a foreach
    item), all finished before it starts: a wrapper that keeps its own handle per label can say
    so (the Prefect layer draws them as the task run's upstream task runs).
    """

    label: str
    step_id: str
    uses: str
    arguments: dict[str, Any]
    upstream: tuple[str, ...] = ()


async def _direct(step: StepInfo, call: StepCall, log: Logger) -> StepRecord:
    return await call(log)


def _ignore(*_: Any) -> None:
    return None


@dataclass
class RunHooks:
    """What happens around each step; every hook is optional."""

    on_run_start: Callable[[], None] = _ignore
    run_step: Callable[[StepInfo, StepCall, Logger], Awaitable[StepRecord]] = _direct
    on_steps: Callable[[str, int], None] = _ignore
    on_plan: Callable[[Plan], None] = _ignore
    on_start: Callable[[str], None] = _ignore
    on_event: Callable[[str, QueueEvent], None] = _ignore
    on_finish: Callable[[StepRecord], None] = _ignore
    log: Logger = print
    approve: Asker | None = None
