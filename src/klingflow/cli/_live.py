"""What ``klingflow run`` shows while Kling works: a live view on a terminal, plain lines elsewhere.

A Kling generation takes minutes, so the console of a run is a board rather than a log. On a
terminal, :class:`LiveView` redraws (rich's ``Live``) one row per step — a foreach step is one row
with a count per state — with its state (waiting, starting, fal's queue position, running, then
its ledger status), its elapsed time and its cost, under a total line: how many executions are
done, running, queued, cached, failed; what is spent; what the plan still expects to spend; the
time since the run began. Without a terminal (CI, ``| tee``, a file), :class:`PlainView` prints
one whole line per change of state instead, never wrapped, so a log reads top to bottom.

Both are fed by the engine's hooks (:class:`klingflow.engine.RunHooks`: ``on_plan``,
``on_start``, ``on_event``, ``on_finish``); log lines are not theirs (:mod:`klingflow.cli._logs`).
A step that waits for approval asks through :meth:`RunView.ask` (the ``approve`` hook): the live
view stops drawing while the question is on the terminal, and goes on after the answer.
The states and marks are defined here once; a test checks every ledger status has a mark.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from klingflow.ledger import Status, StepRecord, spend_label

if TYPE_CHECKING:
    from klingflow.backends.handles import QueueEvent
    from klingflow.engine import ApprovalDecision, ApprovalRequest, Plan

__all__ = ["MARKS", "LiveView", "PlainView", "RunView", "run_view"]

WAITING, STARTING, QUEUED, RUNNING = "waiting", "starting", "queued", "running"
"""States before a ledger status: upstream unfinished; checking the cache, uploading, submitting;
in fal's queue; fal is generating."""

MARKS: dict[str, str] = {
    WAITING: "[dim]waiting[/]",
    STARTING: "[blue]starting[/]",
    QUEUED: "[magenta]queued[/]",
    RUNNING: "[blue]running[/]",
    Status.COMPLETED: "[green]done[/]",
    Status.CACHED: "[cyan]cached[/]",
    Status.JOINED: "[cyan]joined[/]",
    Status.FAILED: "[red]FAILED[/]",
    Status.SKIPPED: "[yellow]skipped[/]",
    Status.INTERRUPTED: "[yellow]interrupted[/]",
}
"""How the views mark each state and each ledger status (a test checks every :class:`Status`)."""

_ORDER = [RUNNING, QUEUED, STARTING, WAITING, *Status]
"""The order counts are listed in: what is moving first."""

_FINAL = frozenset(Status)


def _plain(state: str) -> str:
    """A mark without its style: ``done``, ``queued``."""
    return Text.from_markup(MARKS[state]).plain


def _clock(seconds: float) -> str:
    whole = int(seconds)
    return f"{whole // 60}:{whole % 60:02d}"


@dataclass
class _Execution:
    """One step execution (a foreach item is one) as the views follow it."""

    label: str
    step_id: str
    estimate: float | None = 0.0
    """None: the endpoint's price is unknown."""
    state: str = WAITING
    position: int | None = None
    started: float | None = None
    ended: float | None = None
    cost: float | None = 0.0
    note: str = ""

    @property
    def finished(self) -> bool:
        return self.state in _FINAL

    def mark(self) -> str:
        """The state's mark, with fal's queue position while queued: ``queued, 2 ahead``."""
        if self.state == QUEUED and self.position is not None:
            return f"{MARKS[QUEUED]}, {self.position} ahead"
        return MARKS[self.state]


class RunView:
    """The run's executions and their states; a subclass shows them (:class:`LiveView`, :class:`PlainView`).

    Its methods are the engine's progress hooks; :meth:`changed` is what a subclass draws.
    """

    def __init__(self, console: Console, clock: Callable[[], float] = time.monotonic) -> None:
        self.console, self.clock = console, clock
        self.began = clock()
        self.executions: dict[str, _Execution] = {}

    # -- the engine's hooks --------------------------------------------------------------------
    def plan(self, plan: Plan, prefix: str = "") -> None:
        """Every execution the run has, in order, with what the plan expects it to cost.

        ``prefix`` names the run's executions apart from other runs' in one view (a batch's rows:
        ``row-name/step``); a step's executions in every row are counted on the step's one line.
        """
        for step in plan.steps:
            label = step.step_id if step.item_index is None else f"{step.step_id}[{step.item_index}]"
            label = prefix + label
            self.executions[label] = _Execution(label, step.step_id, estimate=step.estimated_cost_usd)
        self.changed(None)

    def start(self, label: str) -> None:
        """An execution began (its upstream is done): a cache check, an upload, a submit."""
        execution = self._execution(label)
        execution.state, execution.started = STARTING, self.clock()
        self.changed(execution)

    def event(self, label: str, event: QueueEvent) -> None:
        """fal said where the request stands: a queue position, or running."""
        execution = self._execution(label)
        state = {"IN_QUEUE": QUEUED, "IN_PROGRESS": RUNNING}.get(event.status)
        if state is None or (state, event.queue_position) == (execution.state, execution.position):
            return
        execution.state, execution.position = state, event.queue_position
        self.changed(execution)

    def finish(self, record: StepRecord, prefix: str = "") -> None:
        """An execution ended with its ledger row (``prefix``: as given to :meth:`plan`)."""
        execution = self._execution(prefix + record.step_label)
        execution.state, execution.ended = Status(record.status), self.clock()
        execution.started = execution.started or execution.ended
        execution.cost = record.estimated_cost_usd
        execution.note = record.error.splitlines()[0] if record.error else ""
        self.changed(execution)

    def _execution(self, label: str) -> _Execution:
        if label not in self.executions:  # a run without a plan (a replay) lists what it meets
            self.executions[label] = _Execution(label, label.rpartition("/")[2].split("[", 1)[0])
        return self.executions[label]

    # -- what both views show ------------------------------------------------------------------
    def changed(self, execution: _Execution | None) -> None:
        """An execution changed state (None: the plan arrived)."""

    def counts(self, executions: list[_Execution] | None = None) -> dict[str, int]:
        """How many executions are in each state, in :data:`_ORDER`, leaving out zeros."""
        chosen = list(self.executions.values()) if executions is None else executions
        counted = {state: sum(e.state == state for e in chosen) for state in _ORDER}
        return {state: n for state, n in counted.items() if n}

    def spent(self) -> str:
        """What the finished executions cost, an unknown price counted apart."""
        return spend_label(e.cost for e in self.executions.values() if e.finished)

    def to_spend(self) -> str:
        """What the plan expects the executions not yet finished to cost."""
        return spend_label(e.estimate for e in self.executions.values() if not e.finished)

    def total_line(self) -> str:
        counts = self.counts()
        described = ", ".join(f"{n} {_plain(state)}" for state, n in counts.items()) or "nothing to run"
        return (
            f"{described}; spent {self.spent()}, about {self.to_spend()} to go; "
            f"{_clock(self.clock() - self.began)} elapsed"
        )

    async def ask(self, request: ApprovalRequest) -> ApprovalDecision:
        """Ask on the terminal about a step that waits for approval (the engine's prompt)."""
        from klingflow.engine import ask_on_terminal

        return await ask_on_terminal(request)

    async def pause(self, request: ApprovalRequest) -> ApprovalDecision:
        """Without a terminal: say how to answer, then pause the flow run until someone does."""
        from klingflow.flows.approval import pause_for_approval

        row = f"a row of batch {request.batch_id}, " if request.batch_id else ""
        batch = (
            f"; the batch's rows: klingflow approve --batch {request.batch_id} --all"
            if request.batch_id
            else ""
        )
        self.console.print(
            f"{request.step_id} ({row}run {request.run_id}) waits for approval: "
            f"klingflow approve {request.run_id} [--reject], or Resume in the Prefect UI{batch}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        self.console.file.flush()  # a person (or `| tee`) needs the line now, not when a buffer fills
        return await pause_for_approval(request)

    def __enter__(self) -> RunView:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        return None


class PlainView(RunView):
    """One whole line per change of state: ``12:03:04 opening          queued, 2 ahead``."""

    def changed(self, execution: _Execution | None) -> None:
        if execution is None:
            return
        parts = [time.strftime("%H:%M:%S"), f"{escape(execution.label):<16}", execution.mark()]
        if execution.finished and execution.started is not None and execution.ended is not None:
            parts.append(f"{execution.ended - execution.started:.1f} s")
            if execution.cost != 0:
                parts.append("price unknown" if execution.cost is None else f"${execution.cost:.3f}")
        if execution.note:
            parts.append(escape(execution.note))
        if execution.finished:
            parts.append(f"[dim]({escape(self.total_line())})[/]")
        self.console.print(" ".join(parts), highlight=False, soft_wrap=True)


class LiveView(RunView):
    """rich's Live: a row per step (a foreach step with counts), and the total line, redrawn in place."""

    def __init__(self, console: Console, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(console, clock)
        self._live = Live(console=console, get_renderable=self.render, refresh_per_second=4, transient=False)

    def __enter__(self) -> LiveView:
        self._live.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._live.stop()  # draws the last frame and stops its refresh thread

    def changed(self, execution: _Execution | None) -> None:
        self._live.refresh()

    async def ask(self, request: ApprovalRequest) -> ApprovalDecision:
        """The question below the last frame; the view goes on drawing after the answer."""
        self._live.stop()
        try:
            return await super().ask(request)
        finally:
            self._live.start()

    def render(self) -> Group:
        table = Table(box=None, pad_edge=False, show_header=True, header_style="bold")
        table.add_column("step", overflow="fold")
        table.add_column("state", overflow="fold")
        table.add_column("time", justify="right", no_wrap=True)
        table.add_column("cost", justify="right", no_wrap=True)
        steps: dict[str, list[_Execution]] = {}
        for execution in self.executions.values():
            steps.setdefault(execution.step_id, []).append(execution)
        for step_id, executions in steps.items():
            table.add_row(*self._row(step_id, executions))
        return Group(table, Text(self.total_line(), style="bold"))

    def _row(self, step_id: str, executions: list[_Execution]) -> tuple[str, str, str, str]:
        now = self.clock()
        begun = [e.started for e in executions if e.started is not None]
        if len(executions) == 1 and executions[0].label == step_id:
            only = executions[0]
            state = only.mark()
            if only.note:
                state += f" [dim]{escape(only.note)}[/]"
            name = escape(step_id)
        else:
            counts = self.counts(executions)
            state = ", ".join(f"{n} {MARKS[s]}" for s, n in counts.items())
            queued = [e.position for e in executions if e.state == QUEUED and e.position is not None]
            if queued:
                state += f" (the first {min(queued)} ahead)"
            name = f"{escape(step_id)} ×{len(executions)}"
        elapsed = ""
        if begun:
            ends = [e.ended if e.ended is not None else now for e in executions if e.started is not None]
            elapsed = _clock(max(ends) - min(begun))
        finished = [e.cost for e in executions if e.finished]
        shown = spend_label(finished) if any(cost != 0 for cost in finished) else ""
        return name, state, elapsed, shown


def run_view(console: Console) -> RunView:
    """The live view on a terminal, plain lines anywhere else."""
    return LiveView(console) if console.is_terminal and not console.is_dumb_terminal else PlainView(console)
