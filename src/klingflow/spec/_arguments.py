"""What a step calls and with which arguments: shared by :func:`check` and the engine.

The engine must merge ``defaults`` and ``with`` and find local files exactly as validation did,
otherwise a pipeline could pass ``klingflow validate`` and then run with other arguments. So both use
these functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from klingflow.endpoints import ALIASES, ENDPOINTS, EndpointInfo, get_endpoint, is_url
from klingflow.errors import SpecError
from klingflow.spec._models import PipelineSpec, StepSpec
from klingflow.spec._operations import OPERATIONS, OperationInfo
from klingflow.spec._problems import DocPath

__all__ = [
    "MEDIA_KINDS",
    "MEDIA_SUFFIXES",
    "Target",
    "ValueKind",
    "is_url",
    "local_path",
    "many_outputs",
    "merged_arguments",
    "merged_with_origin",
    "output_kinds",
    "placeholder",
    "step_endpoint",
    "target_of",
    "target_names",
]

ValueKind = Literal["video", "image", "audio", "subtitles", "number", "text"]
"""What a step output is: a media file of a kind, a number (``duration``) or a text (``voice_id``)."""

MEDIA_KINDS: frozenset[str] = frozenset({"video", "image", "audio", "subtitles"})
Target = EndpointInfo | OperationInfo

MEDIA_SUFFIXES: dict[str, str] = {"video": "mp4", "image": "png", "audio": "mp3", "subtitles": "srt"}
"""The file suffix a stand-in for each kind of media output carries."""


def target_of(uses: str) -> Target | None:
    """The endpoint (by alias or fal id, looked up in the registry now) or media operation ``uses``
    names, or None."""
    if uses in OPERATIONS:
        return OPERATIONS[uses]
    if uses in ALIASES or uses in ENDPOINTS:
        try:
            return get_endpoint(uses)
        except SpecError:
            return None
    return None


def target_names() -> list[str]:
    """Every name ``uses`` accepts, short ones first (aliases before fal ids), for suggestions."""
    return sorted([*ALIASES, *ENDPOINTS, *OPERATIONS], key=lambda name: (name.count("/"), name))


def _step(spec: PipelineSpec, step: StepSpec | str) -> StepSpec:
    return spec.step(step) if isinstance(step, str) else step


def step_endpoint(spec: PipelineSpec, step: StepSpec | str) -> EndpointInfo | None:
    """The Kling endpoint ``step`` (a step or its id) calls, or None for a media operation."""
    target = target_of(_step(spec, step).uses)
    return target if isinstance(target, EndpointInfo) else None


def _default_keys(uses: str) -> list[str]:
    target = target_of(uses)
    if isinstance(target, EndpointInfo):
        return [target.alias, target.id]
    return [uses]


def merged_with_origin(
    spec: PipelineSpec, step: StepSpec, index: int
) -> tuple[dict[str, Any], dict[str, DocPath]]:
    """:func:`merged_arguments` plus, per top-level field, where in the file it was written."""
    merged: dict[str, Any] = {}
    origin: dict[str, DocPath] = {}
    for key in _default_keys(step.uses):
        for name, value in spec.defaults.get(key, {}).items():
            merged[name], origin[name] = value, ("defaults", key, name)
    for name, value in step.with_.items():
        merged[name], origin[name] = value, ("steps", index, "with", name)
    return merged, origin


def merged_arguments(spec: PipelineSpec, step: StepSpec | str) -> dict[str, Any]:
    """The step's arguments: ``defaults`` for its endpoint (alias, then fal id) under its ``with``.

    The merge is shallow, and the step wins: a step that sets ``advanced_camera_control`` replaces
    the default's whole object instead of mixing two camera moves. References are left in place.
    """
    step = _step(spec, step)
    index = next((i for i, candidate in enumerate(spec.steps) if candidate is step), -1)
    return merged_with_origin(spec, step, index)[0]


def output_kinds(target: Target) -> dict[str, ValueKind]:
    """Each output a step of ``target`` gives, by name: its files (``video``, ``audio``, ``images``
    and the first of them as ``image``), its other values (``voice_id``), and for a video or audio
    output its ``duration``."""
    kinds: dict[str, ValueKind] = dict(target.produces)
    if isinstance(target, EndpointInfo):
        for name in target.many:
            kinds.setdefault(name.removesuffix("s"), target.produces[name])
        kinds.update(
            {name: ("number" if kind == "number" else "text") for name, kind in target.values.items()}
        )
    if any(kind in ("video", "audio") for kind in target.produces.values()):
        kinds["duration"] = "number"
    return kinds


def many_outputs(target: Target) -> frozenset[str]:
    """The outputs of ``target`` that hold a list (``images``), not one value."""
    return target.many if isinstance(target, EndpointInfo) else frozenset()


def placeholder(kind: ValueKind | None) -> Any:
    """A stand-in value of ``kind`` used to validate arguments before any output exists."""
    if kind == "number":
        return 5.0
    if kind == "text":
        return "placeholder"
    if kind in MEDIA_SUFFIXES:
        return f"https://klingflow.invalid/ref.{MEDIA_SUFFIXES[kind]}"
    return "placeholder"


def local_path(spec: PipelineSpec, value: str) -> Path | None:
    """The file a media value names, relative to the pipeline file's folder; None for a URL.

    Relative to the file rather than the working directory, so a pipeline runs the same from anywhere.
    A pipeline built in Python without a source uses the working directory.
    """
    if is_url(value):
        return None
    path = Path(value).expanduser()
    if path.is_absolute():
        return path
    return (spec.source.parent if spec.source else Path.cwd()) / path
