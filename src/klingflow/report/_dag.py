"""The run's DAG as an inline SVG picture: steps in columns by depth, coloured by status.

A column per depth (a step sits one column right of the deepest step it reads from), so every
edge points right and the picture reads like the run did. Within a column, steps are ordered by
the mean row of the steps they read from, which keeps most edges short and uncrossed. The SVG
is plain markup (no script, no external font) so it renders in any browser opened from disk.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape

from klingflow.ledger import Status

__all__ = ["STATUS_COLOURS", "dag_svg", "step_status"]

NOT_RUN = "not run"
"""A step with no ledger row (the run stopped before it)."""

STATUS_COLOURS: dict[str, str] = {
    Status.COMPLETED: "#16a34a",
    Status.CACHED: "#0284c7",
    Status.JOINED: "#0d9488",
    Status.FAILED: "#dc2626",
    Status.SKIPPED: "#9ca3af",
    Status.INTERRUPTED: "#d97706",
    NOT_RUN: "#d4d4d8",
}
"""Fill colour of a step node per status (also used by the report's legend and pills)."""

_WIDTH, _HEIGHT = 176, 54
_COLUMN_GAP, _ROW_GAP, _MARGIN = 64, 18, 14


@dataclass(frozen=True)
class _Node:
    step_id: str
    column: int
    row: int

    @property
    def x(self) -> int:
        return _MARGIN + self.column * (_WIDTH + _COLUMN_GAP)

    @property
    def y(self) -> int:
        return _MARGIN + self.row * (_HEIGHT + _ROW_GAP)


def step_status(statuses: Sequence[str]) -> str:
    """One status for a step from its rows (a foreach step has one per item): the worst one wins."""
    if not statuses:
        return NOT_RUN
    if Status.FAILED in statuses:
        return Status.FAILED
    if Status.INTERRUPTED in statuses:
        return Status.INTERRUPTED
    if all(s == Status.SKIPPED for s in statuses):
        return Status.SKIPPED
    if all(s == Status.CACHED for s in statuses):
        return Status.CACHED
    if all(s in (Status.CACHED, Status.JOINED) for s in statuses):
        return Status.JOINED
    return Status.COMPLETED


def _layout(order: Sequence[str], dependencies: Mapping[str, Sequence[str]]) -> dict[str, _Node]:
    depth: dict[str, int] = {}
    for step in order:  # topological: every dependency already has its depth
        depth[step] = 1 + max((depth.get(d, 0) for d in dependencies.get(step, ())), default=-1)
    nodes: dict[str, _Node] = {}
    for column in range(max(depth.values(), default=-1) + 1):
        members = [s for s in order if depth[s] == column]

        def weight(step: str) -> tuple[float, int]:
            rows = [nodes[d].row for d in dependencies.get(step, ()) if d in nodes]
            return (sum(rows) / len(rows) if rows else -1.0, order.index(step))

        for row, step in enumerate(sorted(members, key=weight)):
            nodes[step] = _Node(step, column, row)
    return nodes


def _fitted(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def dag_svg(
    order: Sequence[str],
    dependencies: Mapping[str, Sequence[str]],
    status: Mapping[str, str],
    captions: Mapping[str, str],
) -> str:
    """An ``<svg>`` of the DAG: one linked box per step (to ``#step-<id>``), arrows from dependencies.

    ``status[step]`` picks the colour (see :data:`STATUS_COLOURS`); ``captions[step]`` is the small
    second line (e.g. what the step uses and its cost). Every text is escaped.
    """
    nodes = _layout(order, dependencies)
    columns = 1 + max((n.column for n in nodes.values()), default=0)
    rows = 1 + max((n.row for n in nodes.values()), default=0)
    width = 2 * _MARGIN + columns * _WIDTH + (columns - 1) * _COLUMN_GAP
    height = 2 * _MARGIN + rows * _HEIGHT + (rows - 1) * _ROW_GAP
    parts = [
        f'<svg id="dag" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="pipeline DAG">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#71717a"/></marker></defs>',
    ]
    for step in order:
        target = nodes[step]
        for dependency in dependencies.get(step, ()):
            if dependency not in nodes:
                continue
            source = nodes[dependency]
            x1, y1 = source.x + _WIDTH, source.y + _HEIGHT // 2
            x2, y2 = target.x - 2, target.y + _HEIGHT // 2
            bend = (x2 - x1) / 2
            parts.append(
                f'<path class="edge" d="M{x1},{y1} C{x1 + bend},{y1} {x2 - bend},{y2} {x2},{y2}" '
                'fill="none" stroke="#71717a" stroke-width="1.6" marker-end="url(#arrow)"/>'
            )
    for step in order:
        node, state = nodes[step], status.get(step, "not run")
        colour = STATUS_COLOURS.get(state, STATUS_COLOURS[NOT_RUN])
        text_colour = "#18181b" if state in ("skipped", "not run") else "#ffffff"
        parts.append(
            f'<a href="#step-{escape(step)}"><g class="node" data-step="{escape(step)}" '
            f'data-status="{escape(state)}">'
            f"<title>{escape(step)}: {escape(state)}</title>"
            f'<rect x="{node.x}" y="{node.y}" width="{_WIDTH}" height="{_HEIGHT}" rx="9" '
            f'fill="{colour}" stroke="#18181b" stroke-opacity="0.25"/>'
            f'<text x="{node.x + 12}" y="{node.y + 23}" fill="{text_colour}" font-size="14" '
            f'font-weight="600">{escape(_fitted(step, 20))}</text>'
            f'<text x="{node.x + 12}" y="{node.y + 42}" fill="{text_colour}" font-size="11.5" '
            f'opacity="0.92">{escape(_fitted(captions.get(step, state), 27))}</text></g></a>'
        )
    parts.append("</svg>")
    return "".join(parts)
