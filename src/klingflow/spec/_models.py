"""The pipeline's shape as pydantic models, and reading it from YAML or from Python data.

These models check structure only (keys, types, step id format). Whether references resolve, steps
exist and arguments suit their endpoint is :func:`klingflow.spec.check`'s job, because those checks need
the whole pipeline and the run's inputs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from klingflow.spec._problems import (
    DocPath,
    Problem,
    did_you_mean,
    format_path,
    spec_error,
    validation_problems,
)
from klingflow.spec._yaml import LimitExceeded, read_value, read_yaml

__all__ = [
    "ApprovalSpec",
    "InputSpec",
    "InputType",
    "PipelineSpec",
    "StepSpec",
    "load_pipeline",
    "parse_pipeline",
    "resolve_inputs",
    "typed_input",
]

InputType = Literal["string", "integer", "number", "boolean", "list"]
_STEP_ID = re.compile(r"[a-z][a-z0-9_]*")
_InputName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]


def _is_type(kind: InputType, value: Any) -> bool:
    if kind == "string":
        return isinstance(value, str)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "list":
        return isinstance(value, list)
    allowed = int if kind == "integer" else int | float
    return isinstance(value, allowed) and not isinstance(value, bool)


def typed_input(kind: InputType, value: Any, enum: Sequence[Any] | None = None) -> Any:
    """Check ``value`` against an input's type and enum, reading a string as YAML for non-strings.

    The YAML reading is what lets ``--set count=3``, ``--set loud=true`` and ``--set shots='[a, b]'``
    arrive as an int, a bool and a list. Raises ``ValueError`` with a readable message.
    """
    if kind != "string" and isinstance(value, str):
        try:
            value = read_value(value)  # yaml.safe_load within the limits (LimitExceeded is a ValueError)
        except yaml.YAMLError as exc:
            raise ValueError(f"cannot read {value!r} as {kind}") from exc
        if kind == "number" and isinstance(value, str):
            value = _float_or_text(value)  # YAML 1.1 reads 1e3 as text; Python reads it as 1000.0
    if not _is_type(kind, value):
        example = {"list": " (write a YAML list, e.g. '[a, b]')"}.get(kind, "")
        raise ValueError(f"expected {kind}, got {value!r}{example}")
    if kind == "number":
        value = float(value)
    _check_enum(value, enum)
    return value


def _float_or_text(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


def _check_enum(value: Any, enum: Sequence[Any] | None) -> None:
    if enum is not None and value not in enum:
        close = did_you_mean(value, map(str, enum)) if isinstance(value, str) else ""
        raise ValueError(f"{value!r} is not one of {list(enum)}{close}")


class InputSpec(BaseModel):
    """One pipeline input: a value a run can set (``--set name=value``) without editing the file."""

    model_config = ConfigDict(extra="forbid")

    type: InputType = "string"
    default: Any = None
    description: str = ""
    enum: list[Any] | None = None

    @property
    def required(self) -> bool:
        """An input without a default must be given for every run.

        A plain property, not a field: it is never written, so a dumped spec parses back unchanged.
        """
        return self.default is None

    @model_validator(mode="after")
    def _default_and_enum_fit_type(self) -> InputSpec:
        for value in self.enum or []:
            if not _is_type(self.type, value):
                raise ValueError(f"enum value {value!r} is not a {self.type}")
        if self.default is not None:
            if not _is_type(self.type, self.default):
                raise ValueError(f"default {self.default!r} is not a {self.type}")
            _check_enum(self.default, self.enum)
        return self


class ApprovalSpec(BaseModel):
    """``approve:`` on a step: a person decides before the step is paid for.

    ``approve: true`` takes every default. ``timeout`` is how long the run waits for the decision,
    ``on_timeout`` what it then does (rejecting is the default: no decision must never spend
    money), and ``auto_under_usd`` approves without asking when the step and everything after it
    are estimated to cost less than that.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    timeout: float = Field(3600.0, gt=0, description="Seconds to wait for a decision.")
    on_timeout: Literal["reject", "approve"] = "reject"
    auto_under_usd: float | None = Field(
        None, ge=0, description="Approve without asking when the step and its dependants cost less."
    )


class StepSpec(BaseModel):
    """One step: an endpoint or media operation (``uses``) with its arguments (``with``).

    ``foreach`` names a list; the step then runs once per element (``${item}``) and its outputs are
    lists. ``retries`` and ``timeout`` override the engine's defaults; ``cache: false`` never reuses a
    result, ``refresh: true`` regenerates once and stores the new result. ``on_ambiguous_submit``
    overrides the run's policy for a submit fal may have accepted (reconcile, fail or resubmit).
    ``approve`` stops the run before the step until a person approves it (:class:`ApprovalSpec`).
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    id: str = Field(description="snake_case name other steps use in ${steps.ID.OUTPUT}.")
    uses: str = Field(min_length=1, description="An endpoint alias or id, or a media operation.")
    with_: dict[str, Any] = Field(default_factory=dict, alias="with")
    foreach: str | None = None
    retries: int | None = Field(None, ge=0)
    timeout: float | None = Field(None, gt=0, description="Seconds before the step is given up.")
    cache: bool = True
    refresh: bool = False
    on_ambiguous_submit: Literal["reconcile", "fail", "resubmit"] | None = None
    approve: ApprovalSpec | None = None

    @field_validator("approve", mode="before")
    @classmethod
    def _approve_flag(cls, value: Any) -> Any:
        if value is True:
            return {}
        return None if value is False else value

    @field_validator("id")
    @classmethod
    def _snake_case(cls, value: str) -> str:
        if _STEP_ID.fullmatch(value):
            return value
        fixed = re.sub(r"[^a-z0-9]+", "_", value.lower()).strip("_")
        fixed = fixed if _STEP_ID.fullmatch(fixed) else f"step_{fixed}"
        raise ValueError(
            f"step id {value!r} is not snake_case (lower-case letters, digits and _, starting with a"
            f" letter); try {fixed!r}"
        )

    @field_validator("foreach", mode="before")
    @classmethod
    def _foreach_is_a_reference(cls, value: Any) -> Any:
        if value is None or isinstance(value, str):
            return value
        if isinstance(value, list):
            raise ValueError(
                "foreach takes a reference to a list, e.g. ${inputs.shots}, not a list written in place;"
                " declare the list as an input (type: list, with a default) and loop over that"
            )
        raise ValueError(f"foreach takes a reference to a list, e.g. ${{inputs.shots}}, not {value!r}")

    @field_validator("with_", mode="before")
    @classmethod
    def _empty_with(cls, value: Any) -> Any:
        return {} if value is None else value


class PipelineSpec(BaseModel):
    """A whole pipeline as written: inputs, per-endpoint defaults and steps.

    Built by :func:`load_pipeline` (which also remembers the file and the line of every key) or by
    :func:`parse_pipeline` / the constructor for pipelines written in Python.

    Example::

        spec = PipelineSpec(name="one", steps=[StepSpec(id="shot", uses="text-to-video",
                                                        with_={"prompt": "a red fox"})])
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    description: str = ""
    inputs: dict[_InputName, InputSpec] = Field(default_factory=dict)
    defaults: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Arguments per endpoint alias, under every step's with."
    )
    steps: list[StepSpec] = Field(min_length=1)
    max_cost_usd: float | None = Field(None, gt=0)

    _source: Path | None = PrivateAttr(None)
    _shown: str = PrivateAttr("")
    _lines: dict[DocPath, int] = PrivateAttr(default_factory=dict)

    @property
    def source(self) -> Path | None:
        """The YAML file this pipeline was read from (absolute); local media paths are relative to it."""
        return self._source

    @property
    def shown(self) -> str:
        """How errors name the file: the path as it was given, or empty for a pipeline built in Python."""
        return self._shown

    def line(self, path: Sequence[str | int]) -> int | None:
        """The line of ``path`` (e.g. ``("steps", 2, "with", "prompt")``) or of its nearest ancestor."""
        path = tuple(path)
        while path:
            if path in self._lines:
                return self._lines[path]
            path = path[:-1]
        return None

    def step(self, step_id: str) -> StepSpec:
        """The step with id ``step_id``; ``KeyError`` if there is none."""
        for step in self.steps:
            if step.id == step_id:
                return step
        raise KeyError(step_id)


def resolve_inputs(spec: PipelineSpec, given: Mapping[str, Any]) -> tuple[dict[str, Any], list[Problem]]:
    """This run's input values: ``given`` (typed by :func:`typed_input`) over the defaults.

    Also returns a problem for each given name the pipeline lacks (a typo in ``--set`` must not be
    ignored), each value of the wrong type, and each required input not given.
    """
    problems: list[Problem] = []
    for name in given:
        if name not in spec.inputs:
            problems.append(
                Problem(
                    f"not an input of this pipeline{did_you_mean(name, spec.inputs)}",
                    spec.line(("inputs", name)),
                    field=f"inputs.{name}",
                    hint="inputs: " + (", ".join(spec.inputs) or "none"),
                )
            )
    resolved: dict[str, Any] = {}
    for name, declared in spec.inputs.items():
        line, field = spec.line(("inputs", name)), f"inputs.{name}"
        if name in given:
            try:
                resolved[name] = typed_input(declared.type, given[name], declared.enum)
            except ValueError as exc:
                hint = exc.hint if isinstance(exc, LimitExceeded) else ""
                problems.append(Problem(f"given value: {exc}", line, field=field, hint=hint))
        elif declared.default is None:
            problems.append(
                Problem(
                    "required input (it has no default) was not given",
                    line,
                    field=field,
                    hint=f"give it with --set {name}=VALUE, or add a default",
                )
            )
        else:
            resolved[name] = typed_input(declared.type, declared.default, declared.enum)
    return resolved, problems


def _build(data: Any, source: Path | None, shown: str, lines: dict[DocPath, int]) -> PipelineSpec:
    if not isinstance(data, Mapping):
        what = "empty" if data is None else f"a {type(data).__name__}"
        problem = Problem(
            f"a pipeline must be a mapping with name and steps, but this file is {what}",
            line=lines.get((), 1),
            hint="a pipeline file has top-level keys name: and steps: (a list of steps with id, uses, with)",
        )
        raise spec_error([problem], shown)
    steps = data.get("steps")

    def locate(loc: DocPath) -> tuple[int | None, str | None, str | None, int]:
        line = next((lines[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in lines), None)
        if len(loc) >= 2 and loc[0] == "steps" and isinstance(loc[1], int) and isinstance(steps, list):
            raw = steps[loc[1]] if loc[1] < len(steps) else None
            step_id = raw.get("id") if isinstance(raw, Mapping) else None
            field = format_path(loc[2:]) or None
            return line, step_id if isinstance(step_id, str) else f"#{loc[1] + 1}", field, loc[1]
        return line, None, format_path(loc) or None, -1

    try:
        spec = PipelineSpec.model_validate(dict(data))
    except ValidationError as exc:
        raise spec_error(validation_problems(exc, PipelineSpec, locate), shown) from exc
    spec._source = source.absolute() if source is not None else None
    spec._shown = shown
    spec._lines = lines
    return spec


def parse_pipeline(data: Mapping[str, Any], *, source: Path | None = None) -> PipelineSpec:
    """Build a :class:`PipelineSpec` from Python data (as YAML would give it); no line numbers.

    ``source``, when given, is the file local media paths are relative to. Structural mistakes raise
    one ``SpecError`` listing all of them.
    """
    return _build(data, source, str(source) if source is not None else "", {})


def load_pipeline(path: str | Path) -> PipelineSpec:
    """Read a pipeline YAML file; every structural mistake is reported at once as ``file:line``.

    Only the file is read: references, endpoints and arguments are checked by :func:`check`.

    Example::

        spec = load_pipeline("deployments/story.yaml")
        validated = check(spec, {"subject": "a fox"})
    """
    source = Path(path)
    data, lines = read_yaml(source, str(path))
    return _build(data, source, str(path), lines)
