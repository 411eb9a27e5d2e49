"""Approval gates: a person looks at a step's inputs and its price before the step is paid for.

A step with ``approve:`` (or named by ``--approve STEP``) waits, once everything it reads is done,
for one decision, whatever its foreach items: approve (optionally with another prompt), or reject.
What decides, in this order:

1. ``--yes`` (``RunOptions.yes``): approved unattended, by ``--yes``;
2. ``auto_under_usd``: approved by ``auto`` when the step and every step after it that reads it are
   estimated to cost less (a price klingflow does not know is never "less");
3. the layer above's asker (:attr:`RunHooks.approve`): the CLI's prompt on a terminal, a paused
   Prefect flow run with a typed form elsewhere; without one, a prompt when this process has a
   terminal, else a rejection that says why (there is nobody to ask);
4. when the asker has not answered within ``timeout`` seconds: ``on_timeout`` (reject by default),
   by ``timeout``; an asker that fails (the Prefect server refused the pause) is a rejection too,
   by ``nobody``, with the error as its note: a question nobody could see approves nothing.

A rejected step and the steps after it that read it end ``skipped``, saying why; nothing is
submitted for them, and the run itself is not a failure. Their rows (and the approved step's)
carry who decided, when, and the note, in the ledger's ``approval*`` columns.

The terminal prompt reads its line through the event loop (``add_reader``), so the run's other
branches keep going while a person thinks, and a stop (Ctrl-C) or the timeout ends the wait.
"""

from __future__ import annotations

import asyncio
import getpass
import logging
import sys
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Literal

from pydantic import BaseModel

from klingflow.errors import ConfigError
from klingflow.spec import ApprovalSpec, PipelineSpec

logger = logging.getLogger(__name__)

__all__ = [
    "ApprovalDecision",
    "ApprovalRequest",
    "Asker",
    "ask_on_terminal",
    "decide",
    "has_terminal",
    "with_approvals",
]


@dataclass(frozen=True)
class ApprovalRequest:
    """What a person needs to decide on one step: what it reads, what it sends, what it costs."""

    pipeline: str
    step_id: str
    uses: str
    spec: ApprovalSpec
    prompts: tuple[str, ...] = ()
    """The prompt each execution would send (one per foreach item), as resolved now."""
    inputs: tuple[tuple[str, Path], ...] = ()
    """The files made before it that it reads: (argument, path), e.g. ("image_url", keyframe.png)."""
    step_cost_usd: float | None = 0.0
    """Its estimated price (None: unknown)."""
    cost_from_here_usd: float | None = 0.0
    """It and every step after it that reads it, estimated (None: a price is unknown)."""
    executions: int = 1
    run_id: str | None = None
    batch_id: str | None = None
    row_key: str | None = None
    row_name: str | None = None
    after: tuple[str, ...] = field(default=())
    """The steps after it that would be skipped with it."""

    def lines(self) -> list[str]:
        """The request as plain lines: a terminal prints them, a Prefect artifact shows them."""
        where = f" (row {self.row_name})" if self.row_name else ""
        lines = [f"step '{self.step_id}' ({self.uses}) of {self.pipeline}{where} waits for approval"]
        for name, path in self.inputs:
            lines.append(f"  input {name}: {path}")
        for index, prompt in enumerate(self.prompts):
            label = f"  prompt [{index}]" if len(self.prompts) > 1 else "  prompt"
            lines.append(f"{label}: {prompt}")
        lines.append(f"  cost of this step: {usd(self.step_cost_usd)} ({self.executions} execution(s))")
        if self.after:
            lines.append(
                f"  with the steps after it ({', '.join(self.after)}): {usd(self.cost_from_here_usd)}"
            )
        return lines


def usd(value: float | None) -> str:
    """A price as the plan shows it; an unknown one says so."""
    return "unknown" if value is None else f"${value:.3f}"


class ApprovalDecision(BaseModel):
    """One decision on an approval gate, as the ledger records it."""

    approved: bool
    by: str
    """Who decided: a user name, or ``--yes``, ``auto``, ``timeout``, ``nobody``."""
    at: datetime
    note: str | None = None
    prompt: str | None = None
    """A prompt to send instead of the pipeline's (approved only)."""

    @property
    def word(self) -> Literal["approved", "rejected"]:
        """The ledger's ``approval`` value."""
        return "approved" if self.approved else "rejected"

    def reason(self, step_id: str) -> str:
        """Why a rejected step was skipped, for its row's ``error``."""
        note = f": {self.note}" if self.note else ""
        return f"skipped: step '{step_id}' was rejected by {self.by} at {self.at:%Y-%m-%d %H:%M:%S}Z{note}"


Asker = Callable[[ApprovalRequest], Awaitable[ApprovalDecision]]
"""Asks a person (a terminal prompt, a paused Prefect flow run) and returns their decision."""


def now() -> datetime:
    """When a decision was made (UTC, to the second: what a person reads back)."""
    return datetime.now(UTC).replace(microsecond=0)


def has_terminal() -> bool:
    """Whether this process can ask a person: its stdin and stderr are both a terminal."""
    return sys.stdin.isatty() and sys.stderr.isatty()


async def decide(request: ApprovalRequest, *, unattended: bool, ask: Asker | None) -> ApprovalDecision:
    """The decision on one gate (see the module docstring for the order)."""
    spec = request.spec
    if unattended:
        return ApprovalDecision(approved=True, by="--yes", at=now(), note="approved unattended")
    cost = request.cost_from_here_usd
    if spec.auto_under_usd is not None and cost is not None and cost < spec.auto_under_usd:
        note = f"estimated {usd(cost)}, under {usd(spec.auto_under_usd)}"
        return ApprovalDecision(approved=True, by="auto", at=now(), note=note)
    if ask is None and has_terminal():
        ask = ask_on_terminal
    if ask is None:
        return ApprovalDecision(
            approved=False,
            by="nobody",
            at=now(),
            note="no terminal and no Prefect flow run to ask; --yes approves unattended",
        )
    try:
        return await asyncio.wait_for(ask(request), spec.timeout)
    except TimeoutError:
        note = f"no decision within {spec.timeout:g} s"
        return ApprovalDecision(approved=spec.on_timeout == "approve", by="timeout", at=now(), note=note)
    except Exception as exc:  # a question that could not be asked is not an approval
        logger.warning("could not ask about step %s", request.step_id, exc_info=True)
        note = f"could not ask: {type(exc).__name__}: {exc}"
        return ApprovalDecision(approved=False, by="nobody", at=now(), note=note)


async def read_line(stream: IO[str]) -> str:
    """One line from a terminal, awaited on the event loop (cancellable; "" at end of input)."""
    loop = asyncio.get_running_loop()
    descriptor = stream.fileno()
    line: asyncio.Future[str] = loop.create_future()

    def ready() -> None:
        loop.remove_reader(descriptor)
        if not line.done():
            line.set_result(stream.readline())

    loop.add_reader(descriptor, ready)
    try:
        return await line
    finally:
        loop.remove_reader(descriptor)


_TERMINAL: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()
"""One question on the terminal at a time, per event loop (a batch's rows ask in turn)."""


async def ask_on_terminal(
    request: ApprovalRequest, *, stdin: IO[str] | None = None, out: IO[str] | None = None
) -> ApprovalDecision:
    """Ask on the terminal: approve, reject (with an optional note) or edit the prompt and approve.

    A batch's rows ask one after the other; the wait for the terminal counts in a gate's timeout.
    """
    lock = _TERMINAL.setdefault(asyncio.get_running_loop(), asyncio.Lock())
    async with lock:
        return await _ask(request, stdin or sys.stdin, out or sys.stderr)


async def _ask(request: ApprovalRequest, stdin: IO[str], out: IO[str]) -> ApprovalDecision:

    async def ask(question: str) -> str | None:
        out.write(question)
        out.flush()
        answer = await read_line(stdin)
        return None if answer == "" else answer.strip()

    out.write("\n".join(request.lines()) + "\n")
    who = f"{getpass.getuser()} (terminal)"
    while True:
        answer = await ask("approve, reject, or edit the prompt and approve? [a/r/e] ")
        if answer is None:
            return ApprovalDecision(approved=False, by=who, at=now(), note="the terminal closed")
        choice = answer.lower()
        if choice in ("a", "approve", "y", "yes"):
            return ApprovalDecision(approved=True, by=who, at=now())
        if choice in ("r", "reject", "n", "no"):
            note = await ask("note (optional): ")
            return ApprovalDecision(approved=False, by=who, at=now(), note=note or None)
        if choice in ("e", "edit"):
            prompt = await ask("new prompt: ")
            if prompt:
                return ApprovalDecision(approved=True, by=who, at=now(), prompt=prompt, note="prompt edited")
        out.write("please answer a (approve), r (reject) or e (edit the prompt)\n")


def with_approvals(spec: PipelineSpec, steps: Sequence[str] | None) -> PipelineSpec:
    """The spec with ``approve: true`` on each step ``--approve`` names (a step's own settings stay).

    An unknown step is a :class:`~klingflow.errors.ConfigError` naming it, before anything is paid.
    """
    if not steps:
        return spec
    known = {step.id for step in spec.steps}
    unknown = sorted(set(steps) - known)
    if unknown:
        raise ConfigError(
            f"--approve names no step of '{spec.name}': {', '.join(unknown)}",
            context=str(spec.source or spec.name),
            hint=f"its steps are: {', '.join(step.id for step in spec.steps)}",
        )
    wanted = set(steps)
    changed = [
        step.model_copy(update={"approve": ApprovalSpec()})
        if step.id in wanted and step.approve is None
        else step
        for step in spec.steps
    ]
    return spec.model_copy(update={"steps": changed})
