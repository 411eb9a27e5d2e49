"""Read a pipeline file with pyyaml and remember the line of every key and list item.

pyyaml's plain ``safe_load`` throws positions away. Here the document is composed into nodes first
(each node keeps ``start_mark``), built into Python data by the same safe constructor, and the node tree
is walked once to map every document path (``("steps", 2, "with", "prompt")``) to its 1-based line.
Duplicate keys, which pyyaml silently resolves by keeping the last one, are reported instead: two
``prompt:`` keys in one step are a mistake, never an intent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from klingflow.errors import SpecError
from klingflow.spec._problems import DocPath, Problem, format_path, raise_problems

__all__ = ["read_yaml"]

_MERGE_TAG = "tag:yaml.org,2002:merge"


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


def read_yaml(path: Path, shown: str) -> tuple[Any, dict[DocPath, int]]:
    """Parse ``path`` and return its data and the line of every key and list item in it.

    ``shown`` is how the file is named in errors. A missing file, bad YAML or a duplicate key raises
    ``SpecError``; the structure is not checked here.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise SpecError(f"{shown}: pipeline file not found") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{shown}: cannot read the pipeline file: {exc}") from exc
    loader = yaml.SafeLoader(text)
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
    finally:
        loader.dispose()
    return data, lines
