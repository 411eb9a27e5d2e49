"""The declarative pipeline: read it, check all of it before anything is paid for, and derive its DAG.

A pipeline is short YAML (or the same data built in Python)::

    name: story
    inputs:
      subject: {type: string, default: "a lighthouse keeper"}
      shots: {type: list, default: ["dawn over the sea", "a storm rolls in"]}
    defaults:
      text-to-video: {negative_prompt: "blur, distort, and low quality"}
    steps:
      - id: opening
        uses: text-to-video
        with: {prompt: "Wide shot of ${inputs.subject}", duration: 5}
      - id: shots
        uses: text-to-video
        foreach: ${inputs.shots}
        with: {prompt: "${inputs.subject}: ${item}"}
      - id: final_cut
        uses: concat
        with: {inputs: ["${steps.opening.video}", "${steps.shots.video}"]}

``uses`` names a Kling endpoint (``text-to-video``, ``image-to-video``, ``effects``, ``ai-avatar``,
``tts``, or a fal id) or a media operation (:data:`OPERATIONS`: ``concat``, ``last_frame``,
``mux_audio``, ``captions``, ``contact_sheet``). ``defaults`` gives arguments per endpoint under
every step's ``with``.

References. ``${inputs.NAME}``, ``${steps.ID.OUTPUT}`` (``video``, ``image``, ``audio``, a captions
step's ``subtitles`` and ``webvtt`` and, for video or audio, ``duration``) and ``${item}`` (inside a
``foreach`` step). A string that is exactly one reference is replaced by the value itself;
references inside longer text are interpolated, which media cannot be. A foreach step's outputs are
lists, spliced into lists where they appear. The DAG comes from these references alone. Inside
``{ }`` or ``[ ]`` YAML needs references quoted: ``{video: "${steps.opening.video}"}``.

Local media paths are relative to the pipeline file's folder; http(s) and ``data:`` URLs are fine too.
:func:`check` looks at each local file's first bytes: a ``.png`` that is an HTML page, an ``.mp3`` that is
a PDF or an image given as audio is refused, and images for Kling endpoints must meet Kling's limits
(JPEG or PNG, at most 10 MB, sides of at least 300 pixels, aspect ratio between 1:2.5 and 2.5:1).

Example::

    from klingflow.spec import check, load_pipeline

    validated = check(load_pipeline("story.yaml"), {"subject": "a fox"})
    for step_id in validated.order:
        ...
"""

from __future__ import annotations

from klingflow.spec._arguments import (
    MEDIA_SUFFIXES,
    ValueKind,
    is_url,
    local_path,
    many_outputs,
    merged_arguments,
    output_kinds,
    step_endpoint,
    target_of,
)
from klingflow.spec._check import check
from klingflow.spec._fetch import fetch_unknown_endpoints, looks_like_fal_id
from klingflow.spec._graph import ValidatedPipeline
from klingflow.spec._models import (
    ApprovalSpec,
    InputSpec,
    InputType,
    PipelineSpec,
    StepSpec,
    load_pipeline,
    parse_pipeline,
    typed_input,
)
from klingflow.spec._operations import (
    OPERATIONS,
    CaptionsSpec,
    ConcatSpec,
    ContactSheetSpec,
    LastFrameSpec,
    MuxAudioSpec,
    OperationInfo,
    TargetSpec,
    TransitionSpec,
)
from klingflow.spec._problems import did_you_mean
from klingflow.spec._references import NO_ITEM, Reference, find_references, parse_reference, resolve

__all__ = [
    "ApprovalSpec",
    "MEDIA_SUFFIXES",
    "NO_ITEM",
    "OPERATIONS",
    "CaptionsSpec",
    "ConcatSpec",
    "ContactSheetSpec",
    "InputSpec",
    "InputType",
    "LastFrameSpec",
    "MuxAudioSpec",
    "OperationInfo",
    "PipelineSpec",
    "Reference",
    "StepSpec",
    "TargetSpec",
    "TransitionSpec",
    "ValidatedPipeline",
    "ValueKind",
    "check",
    "did_you_mean",
    "fetch_unknown_endpoints",
    "find_references",
    "is_url",
    "load_pipeline",
    "local_path",
    "looks_like_fal_id",
    "many_outputs",
    "merged_arguments",
    "output_kinds",
    "parse_pipeline",
    "parse_reference",
    "resolve",
    "step_endpoint",
    "target_of",
    "typed_input",
]
