"""Read a pipeline file with pyyaml and remember the line of every key and list item.

pyyaml's plain ``safe_load`` throws positions away. Here the document is composed into nodes first
(each node keeps ``start_mark``), built into Python data by the same safe constructor, and the node tree
is walked once to map every document path (``("steps", 2, "with", "prompt")``) to its 1-based line.
Duplicate keys, which pyyaml silently resolves by keeping the last one, are reported instead: two
``prompt:`` keys in one step are a mistake, never an intent.

The file is read within the limits of :mod:`klingflow.spec._limits`: at most ``MAX_FILE_BYTES`` are
read, and :class:`_BoundedLoader` counts values and depth as pyyaml composes them, an alias counting
as everything its anchor holds. pyyaml has no such limits, and composing is where they can still be
cheap: an alias is one node there, while building, the line map and every later check walk it in
full (a "billion laughs" file of 20 lines stands for 9^9 values), and composing recurses once per
level of nesting. So a hostile file is refused after at most ``MAX_NODES`` values, before anything
is expanded. :func:`read_value` reads a ``--set`` value the same way.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from yaml.events import AliasEvent, Event
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from klingflow.errors import SpecError
from klingflow.spec._limits import DEPTH_HINT, MAX_DEPTH, MAX_FILE_BYTES, MAX_NODES, NODES_HINT, size
from klingflow.spec._problems import DocPath, Problem, format_path, raise_problems

__all__ = ["LimitExceeded", "read_value", "read_yaml"]

_MERGE_TAG = "tag:yaml.org,2002:merge"


class LimitExceeded(ValueError):
    """A document over a limit of :mod:`klingflow.spec._limits`; ``line`` (1-based) is where it went over.

    A ``ValueError``, so that a ``--set`` value over a limit is reported as any unreadable value is.
    """

    def __init__(self, message: str, hint: str, line: int | None) -> None:
        super().__init__(message)
        self.hint = hint
        self.line = line


def _line(event: Event) -> int | None:
    """The 1-based line of ``event``: pyyaml's parser marks every event, its stubs allow a hand-made one."""
    return event.start_mark.line + 1 if event.start_mark is not None else None


class _BoundedLoader(yaml.SafeLoader):
    """pyyaml's safe loader, refusing a document over ``MAX_NODES`` values or ``MAX_DEPTH`` levels.

    Both are counted with every alias expanded: each composed node remembers how many values and
    levels it holds, and an alias adds those of its anchor, so the count is exact without walking
    anything twice.
    """

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self._values = 0
        self._depth = 0
        self._deepest = 0
        self._extent: dict[Node, tuple[int, int]] = {}

    def _grow(self, values: int, reach: int, event: Event, alias: str | None) -> None:
        self._values += values
        self._deepest = max(self._deepest, reach)
        if self._values > MAX_NODES:
            message = (
                f"the alias *{alias} takes this YAML past {MAX_NODES:,} values (an alias repeats"
                " everything its anchor holds)"
                if alias is not None
                else f"this YAML passes {MAX_NODES:,} values here"
            )
            raise LimitExceeded(f"{message}; a pipeline has a few hundred", NODES_HINT, _line(event))
        if reach > MAX_DEPTH:
            message = (
                f"the alias *{alias} nests this YAML" if alias is not None else "this YAML is nested"
            ) + f" more than {MAX_DEPTH} levels deep; a pipeline nests about 8"
            raise LimitExceeded(message, DEPTH_HINT, _line(event))

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        event = self.peek_event()
        if isinstance(event, AliasEvent):
            node = super().compose_node(parent, index)
            # pyyaml composes a node for every event it is asked to (its stubs' None is get_single_node's).
            assert node is not None
            # An alias of an anchor still being composed (a value inside itself) counts once.
            values, levels = self._extent.get(node, (1, 1))
            self._grow(values, self._depth + levels, event, event.anchor)
            return node
        start, outer = self._values, self._deepest
        self._depth += 1
        self._deepest = self._depth  # from here on, how deep this node's own values go
        self._grow(1, self._depth, event, None)
        node = super().compose_node(parent, index)
        assert node is not None
        self._extent[node] = (self._values - start, self._deepest - self._depth + 1)
        self._depth -= 1
        self._deepest = max(outer, self._deepest)
        return node


def _record(
    node: Node,
    path: DocPath,
    lines: dict[DocPath, int],
    duplicates: list[tuple[DocPath, int]],
    ancestors: frozenset[int],
) -> None:
    """Note the line of every key and item below ``node``, and every key written twice in a mapping
    (as its path and the line of the second one)."""
    if id(node) in ancestors:
        return
    inner = ancestors | {id(node)}
    if isinstance(node, MappingNode):
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode) or key_node.tag == _MERGE_TAG:
                continue
            key_path = (*path, key_node.value)
            line = key_node.start_mark.line + 1
            if key_path in lines:
                duplicates.append((key_path, line))
                continue
            lines[key_path] = line
            _record(value_node, key_path, lines, duplicates, inner)
    elif isinstance(node, SequenceNode):
        for index, item in enumerate(node.value):
            lines[(*path, index)] = item.start_mark.line + 1
            _record(item, (*path, index), lines, duplicates, inner)


def _step_ids(root: Node) -> dict[int, str]:
    """The ``id`` written for each step (by index), read from the nodes before any other checking."""
    ids: dict[int, str] = {}
    if not isinstance(root, MappingNode):
        return ids
    for key, value in root.value:
        if isinstance(key, ScalarNode) and key.value == "steps" and isinstance(value, SequenceNode):
            for index, step in enumerate(value.value):
                if isinstance(step, MappingNode):
                    for step_key, step_value in step.value:
                        if isinstance(step_key, ScalarNode) and step_key.value == "id":
                            if isinstance(step_value, ScalarNode):
                                ids.setdefault(index, step_value.value)
    return ids


def _duplicate_problems(
    duplicates: list[tuple[DocPath, int]], lines: dict[DocPath, int], root: Node
) -> list[Problem]:
    """One problem per repeated key; inside a step it names the step and the field, as checks do."""
    ids = _step_ids(root)
    problems = []
    for path, line in duplicates:
        step, field, order = None, format_path(path), -1
        if len(path) >= 3 and path[0] == "steps" and isinstance(path[1], int):
            order = path[1]
            step = ids.get(order, f"#{order + 1}")
            field = format_path(path[3:] if path[2] == "with" and len(path) > 3 else path[2:])
        message = f"duplicate key (also on line {lines[path]}); YAML would silently keep only the last one"
        problems.append(Problem(message, line=line, step=step, field=field, order=order))
    return problems


def _syntax_error(exc: yaml.YAMLError, text: str, shown: str) -> SpecError:
    mark = getattr(exc, "problem_mark", None)
    line = mark.line + 1 if mark is not None else None
    what = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    message = f"not valid YAML: {context + ': ' if context else ''}{what}"
    opened = getattr(exc, "context_mark", None)
    if opened is not None and context and "end of stream" in what:
        # Something opened (a quote, a bracket) is never closed: the file's end is not where to look.
        thing = context.removeprefix("while scanning ").removeprefix("while parsing ")
        thing = thing.replace("quoted scalar", "quoted string")
        message = f"not valid YAML: {thing} starts here and is never closed (the file ends on line {line})"
        line, mark = opened.line + 1, opened
    source_lines = text.splitlines()
    offending = source_lines[mark.line] if mark is not None and mark.line < len(source_lines) else ""
    # A bare ${...} inside a flow mapping or list is YAML's most common trap here: '{' ends the value.
    hint = (
        'inside { } or [ ], quote a reference: {video: "${steps.opening.video}"}' if "${" in offending else ""
    )
    return SpecError("invalid pipeline", problems=[Problem(message, line=line, hint=hint).text(shown)])


def _read_text(path: Path, shown: str) -> str:
    """The file's text, read only up to ``MAX_FILE_BYTES`` (a FIFO or /dev/zero has no size to ask)."""
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_FILE_BYTES + 1)
            if len(raw) > MAX_FILE_BYTES:
                total = os.fstat(file.fileno()).st_size
                line = raw.count(b"\n", 0, MAX_FILE_BYTES) + 1
                whole = f" (it is {size(total)})" if total > MAX_FILE_BYTES else ""
                message = (
                    f"the file is longer than a pipeline file may be, {size(MAX_FILE_BYTES)}{whole};"
                    " it passes that size on this line"
                )
                hint = "a pipeline is a few KB of steps; is this the right file?"
                raise SpecError("invalid pipeline", problems=[Problem(message, line, hint=hint).text(shown)])
        return raw.decode("utf-8")
    except FileNotFoundError as exc:
        raise SpecError(f"{shown}: pipeline file not found") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{shown}: cannot read the pipeline file: {exc}") from exc


def read_value(text: str) -> Any:
    """``yaml.safe_load(text)`` within the limits; over one raises :class:`LimitExceeded`."""
    loader = _BoundedLoader(text)
    try:
        node = loader.get_single_node()
        return None if node is None else loader.construct_document(node)
    finally:
        loader.dispose()


def read_yaml(path: Path, shown: str) -> tuple[Any, dict[DocPath, int]]:
    """Parse ``path`` and return its data and the line of every key and list item in it.

    ``shown`` is how the file is named in errors. A missing file, bad YAML, a duplicate key or a file
    over a limit of :mod:`klingflow.spec._limits` raises ``SpecError``; the structure is not checked
    here.
    """
    text = _read_text(path, shown)
    loader = _BoundedLoader(text)
    lines: dict[DocPath, int] = {}
    duplicates: list[tuple[DocPath, int]] = []
    try:
        node = loader.get_single_node()
        if node is None:
            return None, lines
        lines[()] = node.start_mark.line + 1  # where the document starts, for "not a mapping"
        # Walk the nodes before constructing: construction flattens YAML merge keys (<<) into the
        # mappings, after which an overridden merged key would look like a duplicate.
        _record(node, (), lines, duplicates, frozenset())
        raise_problems(_duplicate_problems(duplicates, lines, node), shown)
        data = loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise _syntax_error(exc, text, shown) from exc
    except LimitExceeded as exc:
        problem = Problem(str(exc), line=exc.line, hint=exc.hint)
        raise SpecError("invalid pipeline", problems=[problem.text(shown)]) from exc
    finally:
        loader.dispose()
    return data, lines
