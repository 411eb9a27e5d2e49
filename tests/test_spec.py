"""klingflow.spec: loading, references, the DAG, and one fixture per kind of mistake (tests/specs/)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from klingflow.endpoints import EndpointInfo
from klingflow.errors import SpecError
from klingflow.spec import (
    OPERATIONS,
    InputSpec,
    PipelineSpec,
    Reference,
    StepSpec,
    check,
    find_references,
    load_pipeline,
    local_path,
    merged_arguments,
    parse_pipeline,
    resolve,
    step_endpoint,
)

SPECS = Path(__file__).parent / "specs"
VALID = SPECS / "valid"
INVALID = SPECS / "invalid"


def problems(name: str, inputs: dict[str, Any] | None = None) -> list[str]:
    """Every problem ``check`` reports for ``tests/specs/invalid/NAME.yaml``."""
    with pytest.raises(SpecError) as caught:
        check(load_pipeline(INVALID / f"{name}.yaml"), inputs)
    return caught.value.problems


def load_problems(name: str) -> list[str]:
    """Every problem ``load_pipeline`` reports for ``tests/specs/invalid/NAME.yaml``."""
    with pytest.raises(SpecError) as caught:
        load_pipeline(INVALID / f"{name}.yaml")
    return caught.value.problems


def only(found: list[str]) -> str:
    assert len(found) == 1, found
    return found[0]


def at(name: str, line: int, step: str | None = None, field: str | None = None) -> str:
    """The start every problem text has: ``FILE:LINE step 'ID' field 'F': ``."""
    parts = [f"{INVALID / f'{name}.yaml'}:{line}"]
    parts += [f"step {step!r}"] if step else []
    parts += [f"field {field!r}"] if field else []
    return " ".join(parts) + ": "


# --- valid pipelines -------------------------------------------------------------------------------


def test_story_loads_checks_and_orders_its_steps() -> None:
    spec = load_pipeline(VALID / "story.yaml")
    validated = check(spec)

    assert spec.name == "story" and spec.max_cost_usd == 3.0
    assert spec.source == (VALID / "story.yaml").absolute()
    assert spec.line(("steps", 1, "foreach")) == 16 and spec.line(("steps", 1, "with", "nothing")) == 17
    assert validated.order == ["opening", "shots", "still", "sparkle", "final_cut"]
    assert validated.dependencies == {
        "opening": set(),
        "shots": set(),
        "still": {"opening"},
        "sparkle": {"still"},
        "final_cut": {"opening", "shots", "sparkle"},
    }
    assert validated.kind("opening") == "endpoint" and validated.kind("still") == "operation"
    assert validated.inputs["shots"] == ["dawn over the sea", "a storm rolls in"]


def test_order_follows_references_not_file_order() -> None:
    spec = parse_pipeline(
        {
            "name": "backwards",
            "steps": [
                {"id": "cut", "uses": "concat", "with": {"inputs": ["${steps.shot.video}"]}},
                {"id": "other", "uses": "text-to-video", "with": {"prompt": "b"}},
                {"id": "shot", "uses": "text-to-video", "with": {"prompt": "a"}},
            ],
        }
    )
    assert check(spec).order == ["other", "shot", "cut"]


def test_foreach_outputs_are_lists_spliced_into_concat() -> None:
    spec = load_pipeline(VALID / "story.yaml")
    validated = check(spec)
    outputs = {
        "opening": {"video": Path("opening.mp4")},
        "shots": {"video": [Path("shot0.mp4"), Path("shot1.mp4")]},
        "sparkle": {"video": Path("sparkle.mp4")},
    }
    arguments = resolve(merged_arguments(spec, "final_cut"), inputs=validated.inputs, outputs=outputs)
    assert arguments["inputs"] == [Path(p) for p in ("opening.mp4", "shot0.mp4", "shot1.mp4", "sparkle.mp4")]
    assert arguments["transition"] == {"kind": "crossfade", "duration": 0.5}

    shots = spec.step("shots")
    items = resolve(shots.foreach, inputs=validated.inputs, outputs={})
    assert items == ["dawn over the sea", "a storm rolls in"]
    prompt = resolve(merged_arguments(spec, shots), inputs=validated.inputs, outputs={}, item=items[1])
    assert prompt["prompt"] == "a lighthouse keeper: a storm rolls in"
    assert prompt["aspect_ratio"] == "16:9"  # from defaults, through an input


def test_avatar_chains_tts_audio_into_a_local_image() -> None:
    spec = load_pipeline(VALID / "avatar.yaml")
    validated = check(spec)
    assert validated.order == ["voice", "talk"]
    assert validated.dependencies["talk"] == {"voice"}
    arguments = merged_arguments(spec, "talk")
    assert local_path(spec, arguments["image_url"]) == (VALID / "face.png").absolute()
    assert local_path(spec, "https://example.com/face.png") is None


def test_continue_chains_last_frame_into_image_to_video() -> None:
    validated = check(load_pipeline(VALID / "continue.yaml"))
    assert validated.order == ["first", "still", "onward", "joined"]
    assert validated.dependencies["onward"] == {"still"}
    assert validated.dependencies["joined"] == {"first", "onward"}


def test_defaults_merge_under_with_and_the_step_wins() -> None:
    spec = parse_pipeline(
        {
            "name": "merge",
            "defaults": {"text-to-video": {"duration": 10, "cfg_scale": 0.3}},
            "steps": [{"id": "shot", "uses": "text-to-video", "with": {"prompt": "p", "duration": 5}}],
        }
    )
    assert merged_arguments(spec, "shot") == {"duration": 5, "cfg_scale": 0.3, "prompt": "p"}
    endpoint = step_endpoint(spec, "shot")
    assert isinstance(endpoint, EndpointInfo) and endpoint.alias == "text-to-video"


def test_step_endpoint_is_none_for_an_operation() -> None:
    spec = load_pipeline(VALID / "continue.yaml")
    assert step_endpoint(spec, spec.step("still")) is None


def test_set_strings_are_read_as_the_input_type() -> None:
    spec = parse_pipeline(
        {
            "name": "typed",
            "inputs": {
                "count": {"type": "integer", "default": 1},
                "scale": {"type": "number", "default": 0.5},
                "loud": {"type": "boolean", "default": False},
                "shots": {"type": "list", "default": ["a"]},
                "ratio": {"type": "string", "default": "16:9", "enum": ["16:9", "9:16", "1:1"]},
                "label": {"type": "string", "default": "x"},
            },
            "steps": [{"id": "shot", "uses": "text-to-video", "with": {"prompt": "p"}}],
        }
    )
    given = {"count": "3", "scale": "1e3", "loud": "true", "shots": "[dawn, dusk]", "ratio": "1:1"}
    validated = check(spec, {**given, "label": "42"})
    assert validated.inputs == {
        "count": 3,
        "scale": 1000.0,
        "loud": True,
        "shots": ["dawn", "dusk"],
        "ratio": "1:1",
        "label": "42",
    }
    with pytest.raises(SpecError) as caught:
        check(spec, {"count": "three", "ratio": "16:10", "shots": "dawn"})
    texts = "\n".join(caught.value.problems)
    assert len(caught.value.problems) == 3
    assert "field 'inputs.count': given value: expected integer, got 'three'" in texts
    assert "field 'inputs.ratio': given value: '16:10' is not one of" in texts
    assert "did you mean '16:9'" in texts
    assert "field 'inputs.shots': given value: expected list" in texts


def test_a_given_input_the_pipeline_lacks_is_an_error() -> None:
    with pytest.raises(SpecError) as caught:
        check(load_pipeline(VALID / "story.yaml"), {"subjet": "a fox"})
    # The line is the file's inputs: block, where the missing declaration would go.
    assert only(caught.value.problems).startswith(f"{VALID / 'story.yaml'}:3 field 'inputs.subjet': ")
    assert "did you mean 'subject'?" in caught.value.problems[0]


def test_unused_input_is_not_an_error() -> None:
    spec = parse_pipeline(
        {
            "name": "unused",
            "inputs": {"spare": {"type": "string", "default": "never read"}},
            "steps": [{"id": "shot", "uses": "text-to-video", "with": {"prompt": "p"}}],
        }
    )
    assert check(spec).inputs == {"spare": "never read"}


def test_pipelines_can_be_built_with_python_models() -> None:
    spec = PipelineSpec(
        name="py",
        inputs={"subject": InputSpec(type="string", default="a fox")},
        steps=[
            StepSpec(id="shot", uses="text-to-video", with_={"prompt": "${inputs.subject}"}),
            StepSpec(id="still", uses="last_frame", with_={"video": "${steps.shot.video}"}, retries=2),
        ],
    )
    assert spec.inputs["subject"].required is False and InputSpec(type="list").required is True
    assert spec.source is None and spec.line(("steps", 0)) is None
    assert spec.steps[1].model_dump(by_alias=True)["with"] == {"video": "${steps.shot.video}"}
    validated = check(spec)
    assert validated.order == ["shot", "still"] and validated.dependencies["still"] == {"shot"}


def test_a_dumped_spec_parses_back_unchanged() -> None:
    spec = load_pipeline(VALID / "story.yaml")
    again = parse_pipeline(spec.model_dump(by_alias=True))
    assert again.model_dump() == spec.model_dump() and again.source is None
    assert again.steps[1].foreach == "${inputs.shots}" and again.inputs["subject"].required is False


def test_parse_pipeline_reports_structure_without_line_numbers() -> None:
    with pytest.raises(SpecError) as caught:
        parse_pipeline(
            {
                "name": "bad",
                "steps": [{"id": "shot", "uses": "text-to-video", "retries": -1, "with": {"prompt": "p"}}],
            }
        )
    problem = only(caught.value.problems)
    assert problem.startswith("step 'shot' field 'retries': Input should be greater than or equal to 0")


def test_without_a_source_python_pipelines_name_no_file() -> None:
    spec = parse_pipeline({"name": "p", "steps": [{"id": "shot", "uses": "text-to-vidoe"}]})
    with pytest.raises(SpecError) as caught:
        check(spec)
    assert only(caught.value.problems).startswith("step 'shot' field 'uses': unknown endpoint")


# --- references -----------------------------------------------------------------------------------


def test_find_references_walks_nested_values() -> None:
    value = {"a": ["${inputs.x}", {"b": "take ${steps.one.video} and ${item}"}], "c": 5}
    assert find_references(value) == [
        Reference("input", "x"),
        Reference("step", "one", "video"),
        Reference("item"),
    ]
    assert Reference("step", "one", "video").step_id == "one"
    assert str(Reference("input", "x")) == "${inputs.x}"
    with pytest.raises(SpecError, match="is not a reference"):
        find_references("${step.one.video}")
    with pytest.raises(SpecError, match="unclosed"):
        find_references("${inputs.x")


def test_resolve_typed_interpolated_and_flattened() -> None:
    inputs = {"n": 3, "names": ["a", "b"]}
    outputs = {"one": {"video": Path("one.mp4"), "duration": 5.04}, "many": {"image": [Path("1"), Path("2")]}}
    assert resolve("${inputs.n}", inputs=inputs, outputs=outputs) == 3
    assert resolve("${steps.one.video}", inputs=inputs, outputs=outputs) == Path("one.mp4")
    assert resolve("n=${inputs.n}, d=${steps.one.duration}", inputs=inputs, outputs=outputs) == "n=3, d=5.04"
    assert resolve(["${steps.many.image}", "x", "${inputs.names}"], inputs=inputs, outputs=outputs) == [
        Path("1"),
        Path("2"),
        "x",
        "a",
        "b",
    ]
    assert resolve({"k": ["${item}"]}, inputs={}, outputs={}, item=None) == {"k": [None]}
    with pytest.raises(SpecError, match=r"no value for \$\{steps.gone.video\}"):
        resolve("${steps.gone.video}", inputs=inputs, outputs=outputs)
    with pytest.raises(SpecError, match="outside a step with foreach"):
        resolve("${item}", inputs=inputs, outputs=outputs)


def test_foreach_over_a_foreach_output_knows_its_length() -> None:
    def pipeline(scene: str) -> PipelineSpec:
        shots = {"prompt": "${item}"}
        frames = {"video": "${item}"}
        effect = {"effect_scene": scene, "input_image_urls": ["${steps.frames.image}"]}
        return parse_pipeline(
            {
                "name": "frames",
                "inputs": {"shots": {"type": "list", "default": ["dawn", "dusk"]}},
                "steps": [
                    {"id": "shots", "uses": "text-to-video", "foreach": "${inputs.shots}", "with": shots},
                    {"id": "frames", "uses": "last_frame", "foreach": "${steps.shots.video}", "with": frames},
                    {"id": "fx", "uses": "effects", "with": effect},
                ],
            }
        )

    assert check(pipeline("hug")).order == ["shots", "frames", "fx"]
    with pytest.raises(SpecError) as caught:
        check(pipeline("bloombloom"))
    problem = only(caught.value.problems)
    assert problem.startswith("step 'fx' field 'input_image_urls': ")
    assert "takes 1 image(s) in input_image_urls, got 2" in problem


def test_foreach_items_are_validated_one_by_one() -> None:
    spec = parse_pipeline(
        {
            "name": "durations",
            "inputs": {"durations": {"type": "list", "default": [5, 7]}},
            "steps": [
                {
                    "id": "shots",
                    "uses": "text-to-video",
                    "foreach": "${inputs.durations}",
                    "with": {"prompt": "p", "duration": "${item}"},
                }
            ],
        }
    )
    with pytest.raises(SpecError) as caught:
        check(spec)
    problem = only(caught.value.problems)
    assert problem.startswith("step 'shots' field 'duration': '7' is not a known duration")
    assert check(spec, {"durations": "[5, 10]"}).order == ["shots"]


def test_operations_describe_their_fields() -> None:
    assert set(OPERATIONS) == {"concat", "last_frame", "mux_audio", "captions", "contact_sheet"}
    concat, mux = OPERATIONS["concat"], OPERATIONS["mux_audio"]
    assert concat.consumes == {"inputs": "video"} and mux.consumes == {"video": "video", "audio": "audio"}
    assert mux.produces == {"video": "video"} and OPERATIONS["last_frame"].produces == {"image": "image"}
    captions = OPERATIONS["captions"]
    assert captions.consumes == {"audio": "audio", "video": "video"}
    assert captions.produces == {"video": "video", "subtitles": "subtitles", "webvtt": "subtitles"}
    # a cut has subtitles only when its clips bring captions; a captioned clip always has them
    assert concat.produces == captions.produces and concat.optional == {"subtitles", "webvtt"}
    assert not captions.optional


# --- one fixture per kind of mistake --------------------------------------------------------------


def test_unknown_endpoint_suggests_the_closest() -> None:
    problem = only(problems("unknown_endpoint"))
    assert problem.startswith(at("unknown_endpoint", 4, "opening", "uses"))
    assert "unknown endpoint or operation 'text-to-vidoe'; did you mean 'text-to-video'?" in problem


def test_unknown_field_in_with() -> None:
    problem = only(problems("unknown_field"))
    assert problem.startswith(at("unknown_field", 7, "opening", "negativ_prompt"))
    assert "unknown field; did you mean 'negative_prompt'?" in problem


def test_bad_enum_value_keeps_the_endpoint_suggestion() -> None:
    problem = only(problems("bad_enum"))
    assert problem.startswith(at("bad_enum", 7, "opening", "aspect_ratio"))
    assert "'16:10' is not a known aspect_ratio; did you mean '16:9'?" in problem


def test_value_out_of_range() -> None:
    problem = only(problems("bad_range"))
    assert problem.startswith(at("bad_range", 7, "opening", "cfg_scale"))
    assert "less than or equal to 1 (got 1.5)" in problem


def test_duplicate_step_id() -> None:
    problem = only(problems("duplicate_id"))
    assert problem.startswith(at("duplicate_id", 6, "shot", "id"))
    assert "duplicate step id (first used on line 3)" in problem


def test_cycle_is_shown_as_a_path() -> None:
    problem = only(problems("cycle"))
    assert problem.startswith(at("cycle", 6, "a", "video"))
    assert "dependency cycle: a -> b -> a" in problem


def test_reference_to_a_missing_step() -> None:
    problem = only(problems("missing_step"))
    assert problem.startswith(at("missing_step", 9, "still", "video"))
    assert "no step 'openning'" in problem and "did you mean 'opening'?" in problem


def test_reference_to_a_missing_output() -> None:
    problem = only(problems("missing_output"))
    assert problem.startswith(at("missing_output", 9, "cut", "inputs[0]"))
    assert "step 'tts1' (tts) has no output 'video'" in problem and "it has: audio, duration" in problem


@pytest.mark.parametrize(
    ("uses", "with_", "outputs"),
    [
        ("text-to-video", {"prompt": "p"}, "video, duration"),
        ("tts", {"text": "t"}, "audio, duration"),
        ("last_frame", {"video": "${steps.shot.video}"}, "image"),
        ("concat", {"inputs": ["${steps.shot.video}"]}, "video, subtitles, webvtt, duration"),
        ("contact_sheet", {"inputs": ["${steps.shot.video}"]}, "image"),
    ],
)
def test_each_step_kind_has_the_outputs_a_reference_may_name(uses: str, with_: dict, outputs: str) -> None:
    """A video or audio output also gives its duration; an image does not."""
    steps = [
        {"id": "shot", "uses": "text-to-video", "with": {"prompt": "p"}},
        {"id": "probed", "uses": uses, "with": with_},
        {"id": "after", "uses": "text-to-video", "with": {"prompt": "${steps.probed.nothing}"}},
    ]
    with pytest.raises(SpecError) as caught:
        check(parse_pipeline({"name": "outputs", "steps": steps}))
    assert f"step 'probed' ({uses}) has no output 'nothing'" in only(caught.value.problems)
    assert f"it has: {outputs}" in caught.value.problems[0]
    if "duration" in outputs:  # a number, so it may be interpolated into a prompt
        steps[2]["with"] = {"prompt": "${steps.probed.duration} seconds later"}
        assert check(parse_pipeline({"name": "outputs", "steps": steps})).dependencies["after"] == {"probed"}


def test_media_kind_mismatches() -> None:
    found = problems("kind_mismatch")
    assert len(found) == 3, found
    assert found[0].startswith(at("kind_mismatch", 15, "talk", "image_url"))
    assert "expects an image, but ${steps.voice.audio} is audio" in found[0]
    assert found[1].startswith(at("kind_mismatch", 16, "talk", "audio_url"))
    assert "expects audio, but ${steps.clip.video} is a video" in found[1]
    assert found[2].startswith(at("kind_mismatch", 20, "cut", "inputs[1]"))
    assert "expects a video, but ${steps.still.image} is an image" in found[2]


def test_a_list_into_a_single_media_field() -> None:
    problem = only(problems("list_into_single"))
    assert problem.startswith(at("list_into_single", 12, "still", "video"))
    assert "expects one video, but ${steps.shots.video} is a list of videos" in problem
    assert "add foreach: ${steps.shots.video}" in problem


def test_missing_local_file_is_relative_to_the_pipeline() -> None:
    problem = only(problems("missing_file"))
    assert problem.startswith(at("missing_file", 9, "talk", "image_url"))
    assert f"local file not found: {INVALID / 'faces' / 'nobody.png'}" in problem


def test_unknown_input_reference() -> None:
    problem = only(problems("unknown_input"))
    assert problem.startswith(at("unknown_input", 8, "opening", "prompt"))
    assert "unknown input ${inputs.subjet}; did you mean 'subject'?" in problem


def test_missing_required_input() -> None:
    problem = only(problems("missing_input"))
    assert problem.startswith(at("missing_input", 4, None, "inputs.place"))
    assert "required input (it has no default) was not given" in problem and "--set place=" in problem
    assert check(load_pipeline(INVALID / "missing_input.yaml"), {"place": "a harbour"}).inputs["place"]


def test_item_outside_foreach() -> None:
    problem = only(problems("item_outside_foreach"))
    assert problem.startswith(at("item_outside_foreach", 8, "opening", "prompt"))
    assert "${item} is only defined in a step with foreach" in problem


def test_foreach_on_a_non_list() -> None:
    problem = only(problems("foreach_not_list"))
    assert problem.startswith(at("foreach_not_list", 7, "shots", "foreach"))
    assert "foreach needs a list, but ${inputs.subject} is the string input 'subject'" in problem


def test_step_referring_to_itself() -> None:
    problem = only(problems("self_reference"))
    assert problem.startswith(at("self_reference", 7, "loop", "image_url"))
    assert "step refers to itself (${steps.loop.video})" in problem


def test_media_reference_inside_a_longer_string() -> None:
    problem = only(problems("media_in_string"))
    assert problem.startswith(at("media_in_string", 9, "next", "prompt"))
    assert "media reference ${steps.opening.video} inside a longer string" in problem


def test_operation_missing_a_required_field() -> None:
    problem = only(problems("operation_missing_field"))
    assert problem.startswith(at("operation_missing_field", 8, "scored", "audio"))
    assert "required field is missing (mux_audio needs it)" in problem


def test_operation_bad_choice_suggests() -> None:
    mix = {"video": "${steps.shot.video}", "audio": "${steps.voice.audio}", "mode": "mixx"}
    spec = parse_pipeline(
        {
            "name": "mux",
            "steps": [
                {"id": "shot", "uses": "text-to-video", "with": {"prompt": "p"}},
                {"id": "voice", "uses": "tts", "with": {"text": "hi"}},
                {"id": "mixed", "uses": "mux_audio", "with": mix},
            ],
        }
    )
    with pytest.raises(SpecError) as caught:
        check(spec)
    problem = only(caught.value.problems)
    assert problem.startswith("step 'mixed' field 'mode': 'mixx' is not a known mode; did you mean 'mix'?")


def test_unknown_step_key_and_bad_step_id_at_load() -> None:
    found = load_problems("unknown_step_key")
    assert len(found) == 2, found
    assert found[0].startswith(at("unknown_step_key", 5, "opening", "retry"))
    assert "unknown field; did you mean 'retries'?" in found[0]
    assert found[1].startswith(at("unknown_step_key", 7, "Final-Cut", "id"))
    assert "is not snake_case" in found[1] and "try 'final_cut'" in found[1]


def test_unquoted_reference_in_flow_mapping_gets_a_hint() -> None:
    problem = only(load_problems("unquoted_flow_reference"))
    assert problem.startswith(f"{INVALID / 'unquoted_flow_reference.yaml'}:8: not valid YAML")
    assert 'hint: inside { } or [ ], quote a reference: {video: "${steps.opening.video}"}' in problem


def test_duplicate_yaml_key_is_not_silently_dropped() -> None:
    problem = only(load_problems("duplicate_key"))
    assert problem.startswith(at("duplicate_key", 7, "opening", "prompt"))
    assert "duplicate key (also on line 6)" in problem


def test_missing_pipeline_file() -> None:
    with pytest.raises(SpecError, match="pipeline file not found"):
        load_pipeline(INVALID / "no_such_file.yaml")


def test_several_mistakes_are_reported_at_once_in_line_order() -> None:
    with pytest.raises(SpecError) as caught:
        check(load_pipeline(INVALID / "several_mistakes.yaml"))
    found = caught.value.problems
    assert len(found) == 6, found
    assert str(caught.value).startswith("6 errors:\n")
    expected = [
        (at("several_mistakes", 5, None, "defaults.text-to-vdeo"), "did you mean 'text-to-video'?"),
        (at("several_mistakes", 10, "opening", "prompt"), "unknown input ${inputs.subjct}"),
        (at("several_mistakes", 11, "opening", "duration"), "'7' is not a known duration"),
        (at("several_mistakes", 18, "talk", "image_url"), "expects an image, but ${steps.voice.audio}"),
        (at("several_mistakes", 23, "cut", "inputs[1]"), "no step 'tlak'"),
        (at("several_mistakes", 24, "cut", "transition.duration"), "greater than 0"),
    ]
    for problem, (start, phrase) in zip(found, expected, strict=True):
        assert problem.startswith(start) and phrase in problem, problem
