"""Check a whole pipeline before anything runs, and derive its DAG from the references.

Every generation costs money, so everything that can be known without running is checked here, and
every problem is collected before one ``SpecError`` is raised: inputs (given, typed, required), step
ids, ``uses``, references (inputs, steps, outputs, ``${item}``), media kinds per field, local files
(they exist, their content is the media the field takes, images meet Kling's limits), foreach lists
(a list, not empty), cycles, and each step's arguments against its endpoint's or operation's pydantic
model. Input values over a limit of :mod:`klingflow.spec._limits` (a ``--set`` or flow parameter too
large, a list input longer than a foreach may run) are refused first, alone.

Arguments are validated with *placeholders*: a reference to a step's image becomes
``https://klingflow.invalid/ref.png``, an input reference its resolved value, a ``duration`` a number.
A foreach step over a known list is validated once per element, so ``${item}`` is checked with the
values the run will use.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from klingflow.endpoints import ALIASES, IMAGE_LIMITS, EndpointInfo, ImageLimits, validate_input
from klingflow.errors import MediaError, SpecError
from klingflow.spec._arguments import (
    MEDIA_KINDS,
    Target,
    ValueKind,
    is_url,
    local_path,
    many_outputs,
    merged_with_origin,
    output_kinds,
    placeholder,
    target_names,
    target_of,
)
from klingflow.spec._graph import ValidatedPipeline, find_cycle, topological_order
from klingflow.spec._limits import given_value_problem, list_problem
from klingflow.spec._media import Content, sniff
from klingflow.spec._models import PipelineSpec, StepSpec, resolve_inputs
from klingflow.spec._operations import OPERATIONS, takes_list
from klingflow.spec._problems import (
    DocPath,
    Problem,
    did_you_mean,
    format_path,
    raise_problems,
    validation_problems,
)
from klingflow.spec._references import Found, Reference, resolve, scan

__all__ = ["check"]

_A = {
    "video": "a video",
    "image": "an image",
    "audio": "audio",
    "subtitles": "subtitles",
    "number": "a number",
    "text": "a text",
}
_MANY = {
    "video": "videos",
    "image": "images",
    "audio": "audio files",
    "subtitles": "subtitle files",
    "number": "numbers",
    "text": "texts",
}


@dataclass(frozen=True)
class _Value:
    """What a reference stands for: a media kind, a number or a plain value (None), and if a list."""

    kind: ValueKind | None
    many: bool
    text: str


class _Fallback(dict[str, Any]):
    """A dict that answers a missing key with a stand-in, so placeholder resolution never stops at a
    reference that is already reported as broken."""

    def __init__(self, values: Mapping[str, Any], default: Any) -> None:
        super().__init__(values)
        self.default = default

    def __missing__(self, key: str) -> Any:
        return self.default


def _leaves(value: Any, path: DocPath = ()) -> Iterator[tuple[DocPath, Any]]:
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield from _leaves(item, (*path, str(key)))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _leaves(item, (*path, index))
    else:
        yield path, value


def _slot(path: DocPath) -> str:
    """``("dynamic_masks", 0, "mask_url")`` -> ``dynamic_masks.mask_url``: the field, list indexes dropped."""
    return ".".join(part for part in path if isinstance(part, str))


class _Checker:
    """One run of :func:`check`: walks the spec once per concern and collects :class:`Problem` s."""

    def __init__(self, spec: PipelineSpec, given: Mapping[str, Any], fetched: Sequence[Problem] = ()) -> None:
        self.spec = spec
        # endpoint ids that could not be fetched: reported with the rest, not instead of it
        self.problems: list[Problem] = list(fetched)
        self._uses_reported = {problem.order for problem in fetched if problem.field == "uses"}
        self.index: dict[str, int] = {}
        self.targets = [target_of(step.uses) for step in spec.steps]
        self.edges: dict[str, dict[str, DocPath]] = {step.id: {} for step in spec.steps}
        self.items: dict[int, tuple[Reference, _Value]] = {}
        self._item_lists: dict[int, list[Any] | None] = {}
        # (step index, field) already reported: validating placeholders there would only repeat it.
        self.flagged: set[tuple[int, str | None]] = set()
        self._contents: dict[Path, Content] = {}
        # Limits first, and alone: every later check would be as large as a value over one.
        self._refuse(given, {name: given_value_problem(value) for name, value in given.items()})
        self.inputs, problems = resolve_inputs(spec, given)
        self._refuse(given, {name: list_problem(value) for name, value in self.inputs.items()})
        self.problems.extend(problems)

    def _refuse(self, given: Mapping[str, Any], over: Mapping[str, tuple[str, str] | None]) -> None:
        """Raise one ``SpecError`` for the inputs over a limit (``over``: name -> (message, hint))."""
        problems = []
        for name, found in over.items():
            if found is not None:
                origin, path = (
                    ("given value", ("inputs", name))
                    if name in given
                    else ("default", ("inputs", name, "default"))
                )
                problems.append(
                    Problem(
                        f"{origin}: {found[0]}", self.spec.line(path), field=f"inputs.{name}", hint=found[1]
                    )
                )
        raise_problems(problems, self.spec.shown)

    def add(self, message: str, path: DocPath, step: int | None = None, hint: str = "") -> None:
        """Record a problem at document ``path``; for a step, the field is the part after ``with``."""
        if step is None:
            field = format_path(path) if path else None
            self.problems.append(Problem(message, self.spec.line(path), field=field, hint=hint))
            return
        # ("steps", i, "with", "prompt") -> prompt; ("steps", i, "foreach") -> foreach;
        # ("defaults", alias, "prompt") -> prompt.
        field = format_path(path[3:] if path[2:3] == ("with",) else path[2:]) or None
        if path[:1] == ("defaults",):
            message += f" (from defaults.{path[1]})"
        line = self.spec.line(path)
        self.problems.append(Problem(message, line, self.spec.steps[step].id, field, hint, step))
        self.flagged.add((step, field))

    def run(self) -> ValidatedPipeline:
        for key in self.spec.defaults:
            if target_of(key) is None:
                self.add(
                    f"unknown endpoint or operation {key!r}{did_you_mean(key, target_names())}",
                    ("defaults", key),
                )
        for i, step in enumerate(self.spec.steps):
            if step.id in self.index:
                first = self.spec.line(("steps", self.index[step.id]))
                self.add(
                    f"duplicate step id (first used{f' on line {first}' if first else ''})",
                    ("steps", i, "id"),
                    i,
                )
            else:
                self.index[step.id] = i
        for i, step in enumerate(self.spec.steps):
            self._check_step(i, step)
        self._check_cycles()
        outputs = self._placeholder_outputs()
        for i, step in enumerate(self.spec.steps):
            target = self.targets[i]
            if target is not None and self.index[step.id] == i:
                self._check_arguments(i, step, target, outputs)
        raise_problems(self.problems, self.spec.shown)
        dependencies = {step_id: set(needs) for step_id, needs in self.edges.items()}
        order = topological_order(self.index, dependencies)
        return ValidatedPipeline(self.spec, self.inputs, order, dependencies)

    def _check_step(self, i: int, step: StepSpec) -> None:
        if self.targets[i] is None and i not in self._uses_reported:
            self.add(
                f"unknown endpoint or operation {step.uses!r}{did_you_mean(step.uses, target_names())}",
                ("steps", i, "uses"),
                i,
                hint=f"short endpoint names: {', '.join(ALIASES)}; or any fal endpoint id"
                f" (`klingflow endpoints list`); operations: {', '.join(OPERATIONS)}",
            )
        if step.foreach is not None:
            self._check_foreach(i, step)
        arguments, origin = merged_with_origin(self.spec, step, i)
        for found in scan(arguments):
            self._check_found(i, found, origin[str(found.path[0])] + found.path[1:])

    def _value(self, i: int, reference: Reference, path: DocPath) -> _Value | None:
        """What ``reference`` in step ``i`` stands for, or None after recording why it is broken."""
        step = self.spec.steps[i]
        if reference.kind == "input":
            name = reference.name or ""
            if name not in self.spec.inputs:
                self.add(f"unknown input {reference}{did_you_mean(name, self.spec.inputs)}", path, i)
                return None
            input_type = self.spec.inputs[name].type
            return _Value(None, input_type == "list", f"the {input_type} input {name!r}")
        if reference.kind == "item":
            if step.foreach is None:
                self.add(
                    "${item} is only defined in a step with foreach",
                    path,
                    i,
                    hint="add foreach: ${inputs.SOME_LIST} to this step",
                )
                return None
            return self.items[i][1] if i in self.items else None
        name, output = reference.name or "", reference.output or ""
        if name == step.id:
            self.add(f"step refers to itself ({reference})", path, i)
            return None
        if name not in self.index:
            self.add(f"no step {name!r} for {reference}{did_you_mean(name, self.index)}", path, i)
            return None
        target = self.targets[self.index[name]]
        if target is None:
            return None
        kinds = output_kinds(target)
        if output not in kinds:
            self.add(
                f"step {name!r} ({self.spec.steps[self.index[name]].uses}) has no output {output!r}"
                f" for {reference}; it has: {', '.join(kinds)}",
                path,
                i,
            )
            return None
        self.edges[step.id].setdefault(name, path)
        kind = kinds[output]
        if self.spec.steps[self.index[name]].foreach is not None:
            return _Value(kind, True, f"a list of {_MANY[kind]} (step {name!r} runs foreach)")
        if output in many_outputs(target):
            return _Value(kind, True, f"a list of {_MANY[kind]} (output {output!r} of step {name!r})")
        return _Value(kind, False, _A[kind])

    def _check_foreach(self, i: int, step: StepSpec) -> None:
        path: DocPath = ("steps", i, "foreach")
        found = list(scan(step.foreach))
        if len(found) != 1 or not found[0].whole or found[0].reference is None:
            error = found[0].error if len(found) == 1 and found[0].error else ""
            self.add(error or "foreach takes one reference to a list, e.g. ${inputs.shots}", path, i)
            return
        reference = found[0].reference
        if reference.kind == "item":
            self.add("foreach cannot loop over ${item}", path, i)
            return
        value = self._value(i, reference, path)
        if value is None:
            return
        if not value.many:
            self.add(
                f"foreach needs a list, but {reference} is {value.text}",
                path,
                i,
                hint="loop over a list input or over the output of another foreach step",
            )
            return
        item = _Value(value.kind, False, _A[value.kind] if value.kind else f"an element of {reference}")
        self.items[i] = (reference, item)
        if reference.kind == "input" and self.inputs.get(reference.name or "") == []:
            # An error, not a warning: an empty loop is almost always a forgotten --set or an unfilled
            # default, and the run would go on to pay for every other step and then hand empty lists
            # to the steps that read this one (a concat of nothing fails only after that spend).
            self.add(
                f"foreach over an empty list: {reference} is [], so this step would run zero times",
                path,
                i,
                hint=f"give the list with --set {reference.name}='[a, b]' or a non-empty default;"
                " remove the step if it is not needed",
            )

    def _check_found(self, i: int, found: Found, path: DocPath) -> None:
        if found.reference is None:
            self.add(found.error, path, i)
            return
        reference = found.reference
        value = self._value(i, reference, path)
        target = self.targets[i]
        if value is None or target is None:
            return
        media = value.kind in MEDIA_KINDS
        if not found.whole:
            if media:
                self.add(
                    f"media reference {reference} inside a longer string; {value.text} can only be a"
                    " whole value",
                    path,
                    i,
                    hint=f'write the value as just "{reference}"',
                )
            return
        model = target.input_model if isinstance(target, EndpointInfo) else target.with_model
        slot = _slot(found.path)
        wanted = target.consumes.get(slot)
        if wanted is not None:
            if value.kind is not None and value.kind != wanted:
                self.add(f"expects {_A[wanted]}, but {reference} is {value.text}", path, i)
            elif value.many and not takes_list(model, slot):
                self.add(
                    f"expects one {wanted}, but {reference} is {value.text}",
                    path,
                    i,
                    hint=f"loop over it: add foreach: {reference} and use ${{item}}",
                )
            elif (
                not value.many and takes_list(model, slot) and not any(isinstance(p, int) for p in found.path)
            ):
                self.add(
                    f"expects a list of {_MANY[wanted]}, but {reference} is {value.text}",
                    path,
                    i,
                    hint=f'put it in a list: ["{reference}"]',
                )
        elif media and str(found.path[0]) in model.model_fields:
            self.add(f"takes no media, but {reference} is {value.text}", path, i)

    def _check_cycles(self) -> None:
        graph = {step_id: list(needs) for step_id, needs in self.edges.items()}
        reported: set[frozenset[str]] = set()
        for start in sorted(graph, key=lambda step_id: self.index.get(step_id, 0)):
            cycle = find_cycle(start, graph)
            if cycle is None or frozenset(cycle) in reported:
                continue
            reported.add(frozenset(cycle))
            i = self.index[start]
            self.add(
                "dependency cycle: " + " -> ".join([*cycle, start]),
                self.edges[start][cycle[1]],
                i,
                hint="each step needs the next one's output; remove one of these references",
            )

    def _item_list(self, i: int) -> list[Any] | None:
        """The elements step ``i`` loops over when known before running (from inputs), else None."""
        if i in self._item_lists:
            return self._item_lists[i]
        self._item_lists[i] = None  # guards against cycles, which are reported elsewhere
        reference, item = self.items.get(i, (None, None))
        result: list[Any] | None = None
        if reference is not None and reference.kind == "input":
            value = self.inputs.get(reference.name or "")
            result = value if isinstance(value, list) else None
        elif reference is not None and item is not None:
            upstream = self._item_list(self.index[reference.name or ""])
            result = None if upstream is None else [placeholder(item.kind)] * len(upstream)
        self._item_lists[i] = result
        return result

    def _placeholder_outputs(self) -> dict[str, Any]:
        outputs: dict[str, Any] = {}
        for step_id, i in self.index.items():
            target = self.targets[i]
            if target is None:
                continue
            items = self._item_list(i) if self.spec.steps[i].foreach else None
            count = 1 if items is None else len(items)
            many = self.spec.steps[i].foreach is not None
            listed = many_outputs(target)
            outputs[step_id] = _Fallback(
                {
                    name: [placeholder(kind)] * count if many or name in listed else placeholder(kind)
                    for name, kind in output_kinds(target).items()
                },
                placeholder(None),
            )
        return _Fallback(outputs, _Fallback({}, placeholder(None)))

    def _check_local_files(
        self, i: int, target: Target, arguments: dict[str, Any], origin: dict[str, DocPath]
    ) -> None:
        folder = self.spec.source.parent if self.spec.source else "the working directory"
        for path, value in _leaves(arguments):
            if _slot(path) not in target.consumes or not isinstance(value, str):
                continue
            found = list(scan(value))
            candidates: list[Any] = [] if found else [value]
            if len(found) == 1 and found[0].whole and found[0].reference is not None:
                reference = found[0].reference
                if reference.kind == "input":
                    given = self.inputs.get(reference.name or "")
                    candidates = given if isinstance(given, list) else [given]
                elif reference.kind == "item" and i in self.items and self.items[i][0].kind == "input":
                    candidates = self._item_list(i) or []
            for candidate in candidates:
                if isinstance(candidate, str) and not is_url(candidate):
                    file = local_path(self.spec, candidate)
                    where = origin[str(path[0])] + path[1:]
                    if file is None:
                        continue
                    if not file.is_file():
                        self.add(
                            f"local file not found: {file}",
                            where,
                            i,
                            hint=f"local paths are relative to the pipeline file's folder ({folder});"
                            " or give an http(s) URL",
                        )
                        continue
                    slot = _slot(path)
                    wanted = target.consumes[slot]
                    self._check_content(i, file, wanted, where)
                    media = target.media.get(slot) if isinstance(target, EndpointInfo) else None
                    if media is not None and wanted in self._contents[file].kinds:
                        image = media.image_limits(target.record.family, slot)  # type: ignore[union-attr]
                        if image is not None:
                            self._check_image(i, file, image, where)
                        elif media.limits:
                            self._check_media_limits(i, file, wanted, media.limits, where)

    def _check_content(self, i: int, file: Path, wanted: str, where: DocPath) -> None:
        """Refuse a local file whose content is not the media its field takes: looked at before
        anything is uploaded."""
        if file not in self._contents:
            try:
                self._contents[file] = sniff(file)
            except OSError as exc:
                self._contents[file] = Content(frozenset(), f"unreadable ({exc.strerror or exc})")
        content = self._contents[file]
        if wanted not in content.kinds:
            self.add(
                f"local file {file} is not {_A[wanted]}: its content is {content.label}",
                where,
                i,
                hint="klingflow looks at what a file holds, not at its name; re-export or re-download it"
                " (a failed download often saves an error page or a JSON error under the media's name)",
            )

    def _check_image(self, i: int, file: Path, limits: ImageLimits, where: DocPath) -> None:
        """Refuse a local image that breaks the limits of the field it is for (Kling v1's documented
        ones, or fal's ``x-fal`` file limits), before it is uploaded."""
        content = self._contents[file]
        who = "Kling" if limits is IMAGE_LIMITS else "this endpoint"
        if limits.formats and content.format is not None and content.format not in limits.formats:
            self.add(
                f"local image {file} is {content.label}; Kling takes {' or '.join(limits.formats)}",
                where,
                i,
                hint="convert it, e.g. ffmpeg -i IN OUT.png",
            )
        size = file.stat().st_size
        if limits.max_bytes is not None and size > limits.max_bytes:
            self.add(
                f"local image {file} is {size / 2**20:.1f} MB; {who} takes at most"
                f" {limits.max_bytes / 2**20:.0f} MB",
                where,
                i,
                hint="save it as JPEG or at a smaller size",
            )
        if content.size is None:
            return
        width, height = content.size
        low = [
            (side, value, least)
            for side, value, least in (
                ("each side", min(width, height), limits.min_side),
                ("width", width, limits.min_width),
                ("height", height, limits.min_height),
            )
            if least is not None and value < least
        ]
        high = [
            (side, value, most)
            for side, value, most in (
                ("width", width, limits.max_width),
                ("height", height, limits.max_height),
            )
            if most is not None and value > most
        ]
        ratio = width / height
        lowest = (
            limits.min_aspect_ratio
            if limits.min_aspect_ratio is not None
            else (1 / limits.max_aspect if limits.max_aspect else None)
        )
        highest = limits.max_aspect_ratio if limits.max_aspect_ratio is not None else limits.max_aspect
        if low:
            side, _, least = low[0]
            self.add(
                f"local image {file} is {width}x{height} pixels; {who} needs at least {least} pixels"
                f" {'on ' + side if side == 'each side' else 'of ' + side}",
                where,
                i,
                hint="use a larger original (upscaling a thumbnail also works, at a loss of detail)",
            )
        elif high:
            side, _, most = high[0]
            self.add(
                f"local image {file} is {width}x{height} pixels; {who} takes at most {most} pixels of {side}",
                where,
                i,
                hint="scale it down, e.g. ffmpeg -i IN -vf scale=-2:1080 OUT.png",
            )
        elif (lowest is not None and ratio < lowest) or (highest is not None and ratio > highest):
            longest = max(width, height) / min(width, height)
            shape = f"{longest:.3g}:1" if width >= height else f"1:{longest:.3g}"
            if limits is IMAGE_LIMITS:
                span = f"between 1:{limits.max_aspect:g} and {limits.max_aspect:g}:1"
            else:
                span = f"a width/height ratio between {lowest:g} and {highest:g}"
            self.add(
                f"local image {file} is {width}x{height} pixels, an aspect ratio of {shape};"
                f" {who} needs {span}",
                where,
                i,
                hint="crop it closer to the video's aspect ratio (16:9, 9:16 or 1:1)",
            )

    def _check_media_limits(
        self, i: int, file: Path, kind: str, limits: dict[str, Any], where: DocPath
    ) -> None:
        """Refuse a local video or audio file over fal's ``x-fal`` limits (size, length, sides, fps)."""
        size = file.stat().st_size
        most = limits.get("max_file_size")
        if isinstance(most, int | float) and size > most:
            self.add(
                f"local {kind} {file} is {size / 2**20:.1f} MB; this endpoint takes at most"
                f" {most / 2**20:.0f} MB",
                where,
                i,
            )
            return
        from klingflow.media import probe  # PyAV costs a tenth of a second to import: only when needed

        try:
            info = probe(file)
        except MediaError as exc:
            self.add(f"local {kind} {file} cannot be read: {exc.message}", where, i)
            return
        for what, value, unit in (
            ("duration", info.duration, " s"),
            ("width", info.width, " pixels"),
            ("height", info.height, " pixels"),
            ("fps", info.fps, " fps"),
        ):
            least, highest = limits.get(f"min_{what}"), limits.get(f"max_{what}")
            if value is None:
                continue
            if least is not None and value < least:
                bound = f"at least {least:g}{unit}"
            elif highest is not None and value > highest:
                bound = f"at most {highest:g}{unit}"
            else:
                continue
            self.add(
                f"local {kind} {file} has a {what} of {value:g}{unit}; this endpoint takes {bound}",
                where,
                i,
            )

    def _check_arguments(self, i: int, step: StepSpec, target: Target, outputs: dict[str, Any]) -> None:
        arguments, origin = merged_with_origin(self.spec, step, i)
        self._check_local_files(i, target, arguments, origin)
        if step.foreach is None:
            elements: list[Any] = ["item"]
        else:
            item = self.items.get(i)
            elements = self._item_list(i) or [placeholder(item[1].kind if item else None)]
        inputs = _Fallback(self.inputs, placeholder(None))

        def locate(loc: DocPath) -> tuple[int | None, str | None, str | None, int]:
            path = origin.get(str(loc[0]), ("steps", i, "with")) + loc[1:] if loc else ("steps", i, "with")
            return self.spec.line(path), step.id, format_path(loc) or None, i

        model = target.input_model if isinstance(target, EndpointInfo) else target.with_model
        for element in elements:
            try:
                resolved = resolve(arguments, inputs=inputs, outputs=outputs, item=element)
            except SpecError:
                return  # a malformed reference, already reported
            try:
                if isinstance(target, EndpointInfo):
                    validate_input(target.id, resolved)
                else:
                    target.with_model.model_validate(resolved)
            except ValidationError as exc:
                problems = validation_problems(exc, model, locate, owner=step.uses)
                self.problems.extend(p for p in problems if (i, p.field) not in self.flagged)


def check(spec: PipelineSpec, inputs: Mapping[str, Any] | None = None) -> ValidatedPipeline:
    """Check ``spec`` completely for a run with ``inputs`` and return its DAG; nothing is run.

    The one thing that may be fetched is the schema of a fal endpoint id klingflow has not vendored,
    once, into the home (:func:`~klingflow.spec.fetch_unknown_endpoints`; never in offline mode).

    ``inputs`` are this run's values (strings from ``--set`` are read as the input's type); missing
    ones take their defaults. Every problem is collected and one ``SpecError`` lists them all, sorted
    by line, each naming ``file:line``, the step and the field. Only local media files are looked at:
    they must exist, hold the media their field takes (judged by content, not name) and meet the
    field's file limits: fal's ``x-fal`` limits from the endpoint's schema, or for the images Kling v1
    animates, Kling's documented ones (``klingflow.endpoints.IMAGE_LIMITS``).

    Example::

        validated = check(load_pipeline("story.yaml"), {"shots": "[dawn, storm]"})
        validated.order   # ['opening', 'shots', 'still', 'sparkle', 'final_cut']
    """
    from klingflow.spec._fetch import fetch_unknown_endpoints

    fetched = fetch_unknown_endpoints(
        spec
    )  # fal ids klingflow has not vendored: fetched once (never offline)
    return _Checker(spec, inputs or {}, fetched).run()
