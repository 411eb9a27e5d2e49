"""The checked pipeline as a DAG: order, dependencies, and two graph searches.

The edges come only from references (``${steps.ID.OUTPUT}``); there is no separate list of edges that
could disagree with them.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from klingflow.endpoints import EndpointInfo, MediaKind
from klingflow.errors import SpecError
from klingflow.spec._arguments import Target, target_of
from klingflow.spec._models import PipelineSpec, StepSpec

__all__ = ["ValidatedPipeline", "find_cycle", "topological_order"]


@dataclass(frozen=True)
class ValidatedPipeline:
    """A pipeline that passed :func:`check`, with the inputs of this run and its DAG.

    ``order`` lists step ids so that each comes after the steps it needs; among steps that could run
    next, the one written first comes first. ``dependencies[step]`` holds the steps it reads from.
    """

    spec: PipelineSpec
    inputs: dict[str, Any]
    order: list[str]
    dependencies: dict[str, set[str]]

    def step(self, step_id: str) -> StepSpec:
        """The step with this id."""
        return self.spec.step(step_id)

    def _target(self, step_id: str) -> Target:
        uses = self.step(step_id).uses
        target = target_of(uses)
        if target is None:
            raise SpecError(f"step {step_id!r} uses unknown {uses!r}", hint="build this with check()")
        return target

    def kind(self, step_id: str) -> Literal["endpoint", "operation"]:
        """Whether the step calls a Kling endpoint (costs money) or runs a local media operation."""
        return "endpoint" if isinstance(self._target(step_id), EndpointInfo) else "operation"

    def produces(self, step_id: str) -> dict[str, MediaKind]:
        """The files the step writes, by output name, with their media kinds."""
        return dict(self._target(step_id).produces)


def find_cycle(start: str, needs: Mapping[str, list[str]]) -> list[str] | None:
    """The shortest path ``start -> ... -> start`` through ``needs`` (without the final start), or None."""
    parent: dict[str, str] = {}
    queue = deque([start])
    while queue:
        current = queue.popleft()
        for following in needs.get(current, []):
            if following == start:
                path = [current]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                return path[::-1]
            if following not in parent:
                parent[following] = current
                queue.append(following)
    return None


def topological_order(position: Mapping[str, int], needs: Mapping[str, set[str]]) -> list[str]:
    """Step ids, each after all it ``needs``; among ready steps the lowest ``position`` (file order) first.

    Steps on a cycle never become ready and are left out; :func:`find_cycle` explains them.
    """
    waiting = {step_id: set(needs.get(step_id, ())) for step_id in position}
    ready = [(index, step_id) for step_id, index in position.items() if not waiting[step_id]]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        _, done = heapq.heappop(ready)
        order.append(done)
        for step_id, pending in waiting.items():
            if done in pending:
                pending.discard(done)
                if not pending:
                    heapq.heappush(ready, (position[step_id], step_id))
    return order
