"""Approval gates in the engine: who decides, what is skipped, what the ledger keeps.

In-process runs on the real emulator (text-to-video, its last frame, image-to-video from it, a
cut). The decision comes through the engine's public ``RunHooks.approve`` (what the CLI and the
Prefect layer plug in), from ``--yes``, ``auto_under_usd``, a timeout, or nobody (no terminal: the
test process has none). The emulator counts the submits; the terminal and Prefect forms are
tested end to end in ``test_approval_e2e.py``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest

from klingflow import ledger
from klingflow.engine import ApprovalDecision, ApprovalRequest, RunHooks, RunOptions, arun
from klingflow.engine.approval import now
from klingflow.errors import ConfigError
from klingflow.spec import parse_pipeline

T2V = "fal-ai/kling-video/v1/standard/text-to-video"
I2V = "fal-ai/kling-video/v1/standard/image-to-video"


def continuation(approve: Any = True) -> Any:
    """A shot, its last frame, the next shot from that frame (the gate), and the cut of both."""
    steps: list[dict[str, Any]] = [
        {"id": "first_shot", "uses": "text-to-video", "with": {"prompt": "a paper boat on a street"}},
        {"id": "handoff", "uses": "last_frame", "with": {"video": "${steps.first_shot.video}"}},
        {
            "id": "second_shot",
            "uses": "image-to-video",
            "with": {"prompt": "the boat spins in a puddle", "image_url": "${steps.handoff.image}"},
        },
        {
            "id": "final_cut",
            "uses": "concat",
            "with": {"inputs": ["${steps.first_shot.video}", "${steps.second_shot.video}"]},
        },
    ]
    if approve is not None:
        steps[2]["approve"] = approve
    return parse_pipeline({"name": "gated", "steps": steps})


@dataclass
class Person:
    """An asker that answers as told and keeps what it was shown."""

    approved: bool | None
    prompt: str | None = None
    asked: list[ApprovalRequest] = field(default_factory=list)

    async def __call__(self, request: ApprovalRequest) -> ApprovalDecision:
        self.asked.append(request)
        if self.approved is None:
            await asyncio.Event().wait()  # never answers
        return ApprovalDecision(
            approved=bool(self.approved), by="tester", at=now(), note="looked at it", prompt=self.prompt
        )


def rows(result: Any) -> dict[str, dict[str, Any]]:
    return {row["step_id"]: row for row in ledger.to_records(result.ledger)}


async def test_a_rejected_step_and_its_dependants_are_skipped_without_a_submit(
    options: RunOptions, emulator
) -> None:
    person = Person(approved=False)
    result = await arun(continuation(), None, options, hooks=RunHooks(approve=person, log=lambda _: None))
    assert result.status == "completed", "a rejection is a decision, not a failure"
    assert emulator.stats()["submits"] == {T2V: 1}, "nothing was submitted for the rejected step"
    table = rows(result)
    assert [table[s]["status"] for s in ("first_shot", "handoff", "second_shot", "final_cut")] == [
        "completed",
        "completed",
        "skipped",
        "skipped",
    ]
    gate = table["second_shot"]
    assert gate["approval"] == "rejected" and gate["approval_by"] == "tester"
    assert gate["approval_note"] == "looked at it" and gate["approval_at"] is not None
    assert "rejected by tester" in gate["error"]
    assert "rejected step(s) second_shot" in table["final_cut"]["error"]
    (request,) = person.asked
    assert request.prompts == ("the boat spins in a puddle",)
    (name, keyframe), *_ = request.inputs
    assert name == "image_url" and keyframe.suffix == ".png" and keyframe.is_file()
    assert request.step_cost_usd == pytest.approx(0.225) and request.after == ("final_cut",)


async def test_an_approved_step_runs_with_the_prompt_the_person_wrote(options: RunOptions, emulator) -> None:
    person = Person(approved=True, prompt="the boat sails away")
    result = await arun(continuation(), None, options, hooks=RunHooks(approve=person, log=lambda _: None))
    assert result.status == "completed"
    assert emulator.stats()["submits"] == {T2V: 1, I2V: 1}
    gate = rows(result)["second_shot"]
    assert gate["status"] == "completed" and gate["approval"] == "approved"
    assert gate["prompt"] == "the boat sails away", "the edited prompt is the one sent"
    again = await arun(continuation(), None, options, hooks=RunHooks(approve=Person(approved=False)))
    assert rows(again)["second_shot"]["status"] == "skipped", "another prompt is another request"
    person_again = Person(approved=False)
    edited = continuation()
    edited.steps[2].with_["prompt"] = "the boat sails away"
    cached = await arun(edited, None, options, hooks=RunHooks(approve=person_again))
    assert rows(cached)["second_shot"]["status"] == "cached" and person_again.asked == [], (
        "a cached step costs nothing: nobody is asked"
    )
    assert emulator.stats()["submits"] == {T2V: 1, I2V: 1}


async def test_yes_approves_unattended_and_auto_under_usd_approves_a_cheap_step(
    options: RunOptions, emulator
) -> None:
    person = Person(approved=False)
    yes = options.model_copy(update={"yes": True})
    result = await arun(continuation(), None, yes, hooks=RunHooks(approve=person, log=lambda _: None))
    gate = rows(result)["second_shot"]
    assert gate["status"] == "completed" and gate["approval_by"] == "--yes" and person.asked == []
    cheap = await arun(
        continuation({"auto_under_usd": 1.0}),
        None,
        options.model_copy(update={"refresh": True}),
        hooks=RunHooks(approve=person, log=lambda _: None),
    )
    gate = rows(cheap)["second_shot"]
    assert gate["approval_by"] == "auto" and "under $1.000" in gate["approval_note"] and person.asked == []
    dear = await arun(
        continuation({"auto_under_usd": 0.1}),
        None,
        options.model_copy(update={"refresh": True}),
        hooks=RunHooks(approve=person, log=lambda _: None),
    )
    assert rows(dear)["second_shot"]["approval_by"] == "tester", "$0.225 is not under $0.10: asked"


async def test_the_timeout_decides_as_on_timeout_says(options: RunOptions, emulator) -> None:
    silent = Person(approved=None)
    result = await arun(
        continuation({"timeout": 1}), None, options, hooks=RunHooks(approve=silent, log=lambda _: None)
    )
    gate = rows(result)["second_shot"]
    assert gate["status"] == "skipped" and gate["approval"] == "rejected" and gate["approval_by"] == "timeout"
    assert emulator.stats()["submits"] == {T2V: 1}
    approving = await arun(
        continuation({"timeout": 1, "on_timeout": "approve"}),
        None,
        options,
        hooks=RunHooks(approve=Person(approved=None), log=lambda _: None),
    )
    gate = rows(approving)["second_shot"]
    assert (
        gate["status"] == "completed" and gate["approval"] == "approved" and gate["approval_by"] == "timeout"
    )
    assert emulator.stats()["submits"] == {T2V: 1, I2V: 1}, "the first shot was not paid again"


async def test_without_a_terminal_or_asker_nobody_approves(options: RunOptions, emulator) -> None:
    result = await arun(continuation(), None, options, hooks=RunHooks(log=lambda _: None))
    gate = rows(result)["second_shot"]
    assert gate["status"] == "skipped" and gate["approval_by"] == "nobody"
    assert "--yes" in gate["approval_note"]


async def test_approve_names_steps_on_the_command_line_and_an_unknown_one_is_refused(
    options: RunOptions, emulator
) -> None:
    person = Person(approved=False)
    named = options.model_copy(update={"approve": ["handoff"]})
    result = await arun(continuation(None), None, named, hooks=RunHooks(approve=person, log=lambda _: None))
    assert [r.step_id for r in person.asked] == ["handoff"]
    assert rows(result)["handoff"]["approval"] == "rejected"
    with pytest.raises(ConfigError, match="--approve names no step of 'gated': nope"):
        await arun(continuation(None), None, options.model_copy(update={"approve": ["nope"]}))
    assert emulator.stats()["submits"] == {T2V: 1}
