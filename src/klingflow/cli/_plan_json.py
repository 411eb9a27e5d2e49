"""``klingflow plan --format json``: the plan as data for programs (one definition for runs and batches)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from klingflow.engine import Plan

__all__ = ["plan_json"]


def plan_json(plan: Plan) -> dict[str, Any]:
    """The plan as JSON-ready data: every planned step's fields (status, reason, detail, cost,
    seconds, cache key, endpoint) and the totals."""
    return {
        "pipeline": plan.pipeline,
        "total_cost_usd": plan.total_cost_usd,
        "unknown_cost_steps": [s.step_id for s in plan.unknown_cost],
        "generations": {status: plan.count(status) for status in ("run", "cached", "recoverable")},
        "operations": plan.operations,
        "steps": [step.model_dump(mode="json") for step in plan.steps],
    }
