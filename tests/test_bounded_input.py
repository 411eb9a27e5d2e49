"""Hostile pipeline files and inputs are refused by a limit, quickly and in little memory (issue 18).

Each case runs the real ``klingflow validate`` (or, for the flow's ``inputs`` parameter, the engine's
own ``plan_pipeline`` that ``pipeline_flow`` goes through) as a child process, and asserts what a user
sees: the exit code every invalid pipeline gets, one message naming ``FILE:LINE`` and the limit, a
hint, no traceback. The child's wall time and peak RSS (``os.wait4`` gives that one child's) are
asserted as generous ceilings: the point is the refusal itself, which before the limits took 18 s
and all the memory there was (a MemoryError traceback) for a 20-line file. The limits' numbers are
in ``klingflow.spec._limits``; the last tests show that real pipelines stay well inside them.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from conftest import KLINGFLOW, REPO
from klingflow.errors import SpecError
from klingflow.spec import check, load_pipeline, parse_pipeline

WALL_SECONDS = 5.0
PEAK_RSS_BYTES = 500 * 2**20
ADDRESS_SPACE = 2 * 2**30
"""Each child may map at most this much, so that a regression fails its test instead of the machine."""

LAUGHS = """\
name: laughs
a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]
steps:
  - id: opening
    uses: text-to-video
    with: {prompt: "a lighthouse at dawn"}
"""

SHOTS = """\
name: shots
inputs:
  shots: {type: list, default: [dawn over the sea]}
steps:
  - id: shots
    uses: text-to-video
    foreach: ${inputs.shots}
    with: {prompt: "The lighthouse: ${item}"}
"""
"""A foreach over a list input (line 3), the shape the list limits are about."""


@dataclass(frozen=True)
class Child:
    """What one child process did: exit code, output, wall seconds and peak resident bytes."""

    returncode: int
    stdout: str
    stderr: str
    seconds: float
    peak_rss: int


def _limit_address_space() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def run_child(*args: str) -> Child:
    """Run ``args`` and measure it alone: ``os.wait4`` reports this child's own peak RSS."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.monotonic()
        process = subprocess.Popen(
            args, stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=REPO, preexec_fn=_limit_address_space
        )
        watchdog = threading.Timer(30, process.kill)  # a hung child fails its test, never the session
        watchdog.start()
        try:
            _, status, usage = os.wait4(process.pid, 0)
        finally:
            watchdog.cancel()
        seconds = time.monotonic() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Child(process.returncode, out.read(), err.read(), seconds, usage.ru_maxrss * 1024)


def validate(file: Path, *sets: str) -> Child:
    return run_child(*KLINGFLOW, "validate", str(file), *(f"--set={value}" for value in sets))


@pytest.fixture(scope="module")
def usual_code() -> int:
    """The exit code ``klingflow validate`` gives any invalid pipeline (its error boundary's)."""
    child = validate(REPO / "tests" / "bad_pipelines" / "unknown_endpoint.yaml")
    assert child.returncode != 0 and "Traceback" not in child.stderr, child.stderr
    return child.returncode


def assert_refused(child: Child, code: int, where: str, *words: str) -> None:
    """Refused like any invalid pipeline, at ``where`` (FILE:LINE), for the limit ``words`` name."""
    shown = (
        f"exit {child.returncode}, {child.seconds:.1f} s, {child.peak_rss / 2**20:.0f} MiB\n{child.stderr}"
    )
    assert child.returncode == code, shown
    assert "Traceback" not in child.stdout + child.stderr, shown
    assert child.stderr.count("error (invalid-spec)") == 1, shown
    assert f"{where}:" in child.stderr or f"{where} " in child.stderr, shown
    for word in words:
        assert word in child.stderr, shown
    assert "hint:" in child.stderr, shown
    assert child.seconds < WALL_SECONDS, shown
    assert child.peak_rss < PEAK_RSS_BYTES, shown


def test_billion_laughs_is_refused_at_the_alias_that_passes_the_limit(
    tmp_path: Path, usual_code: int
) -> None:
    file = tmp_path / "laughs.yaml"
    file.write_text(LAUGHS)
    # *d stands for 9^4 = 6,561 values; the first line of nine of them (e:) passes 20,000.
    assert_refused(validate(file), usual_code, f"{file}:6", "the alias *d", "past 20,000 values")


def test_a_50_mb_file_is_refused_without_being_read(tmp_path: Path, usual_code: int) -> None:
    file = tmp_path / "huge.yaml"
    line = "# " + "padding " * 12 + "\n"  # 99 bytes
    with file.open("w") as out:
        out.write("name: huge\n")
        out.writelines(line for _ in range(50 * 2**20 // len(line)))
    assert file.stat().st_size > 49 * 2**20
    passes_on = 1 + file.read_bytes()[: 2**20].count(b"\n")
    assert_refused(
        validate(file),
        usual_code,
        f"{file}:{passes_on}",
        "longer than a pipeline file may be, 1.0 MiB",
        "50.0 MiB",
    )


@pytest.mark.parametrize(
    "nesting",
    [
        pytest.param("steps: " + "[" * 10_000 + "]" * 10_000 + "\n", id="flow"),
        pytest.param("steps:\n" + "- " * 10_000 + "x\n", id="block"),
    ],
)
def test_nesting_10000_deep_is_refused(tmp_path: Path, usual_code: int, nesting: str) -> None:
    file = tmp_path / "deep.yaml"
    file.write_text("name: deep\n" + nesting)
    line = 2 if nesting.startswith("steps: [") else 3
    assert_refused(validate(file), usual_code, f"{file}:{line}", "nested more than 64 levels deep")


def test_a_100000_item_foreach_written_in_the_step_is_refused(tmp_path: Path, usual_code: int) -> None:
    file = tmp_path / "literal.yaml"
    items = ", ".join(f"s{n}" for n in range(100_000))
    file.write_text(
        f"name: literal\nsteps:\n  - id: shots\n    uses: text-to-video\n    foreach: [{items}]\n"
    )
    assert file.stat().st_size < 2**20  # under the file limit: the value count is what refuses it
    assert_refused(validate(file), usual_code, f"{file}:5", "passes 20,000 values")


def test_a_100000_item_list_input_default_is_refused(tmp_path: Path, usual_code: int) -> None:
    file = tmp_path / "default.yaml"
    items = ", ".join(f"s{n}" for n in range(100_000))
    file.write_text(SHOTS.replace("[dawn over the sea]", f"[{items}]"))
    assert file.stat().st_size < 2**20
    assert_refused(validate(file), usual_code, f"{file}:3", "passes 20,000 values")


def test_a_list_input_one_item_over_the_foreach_limit_names_that_limit(
    tmp_path: Path, usual_code: int
) -> None:
    file = tmp_path / "default.yaml"
    file.write_text(SHOTS.replace("[dawn over the sea]", "[" + ", ".join(["dusk"] * 1_001) + "]"))
    assert_refused(
        validate(file),
        usual_code,
        f"{file}:3",
        "field 'inputs.shots': default: a list of 1,001 items",
        "at most 1,000",
    )


def test_a_huge_set_value_is_refused(tmp_path: Path, usual_code: int) -> None:
    file = tmp_path / "shots.yaml"
    file.write_text(SHOTS)
    # Linux refuses one argument over 128 KiB, so this is as large as a --set value can be.
    child = validate(file, "shots=" + "a" * 120_000)
    assert_refused(child, usual_code, f"{file}:3", "given value: a text of 117 KiB", "at most 64 KiB")


def test_a_100000_item_list_passed_with_set_is_refused(tmp_path: Path, usual_code: int) -> None:
    file = tmp_path / "shots.yaml"
    file.write_text(SHOTS)
    # 100,000 items do not fit in one argument (Linux: E2BIG over 128 KiB); 60,000 do, and the text
    # limit refuses them before any YAML is read.
    too_long = validate(file, "shots=[" + ",".join("a" * 60_000) + "]")
    assert_refused(too_long, usual_code, f"{file}:3", "given value: a text of 117 KiB")
    over_foreach = validate(file, "shots=[" + ",".join(["a"] * 1_500) + "]")
    assert_refused(
        over_foreach, usual_code, f"{file}:3", "given value: a list of 1,500 items", "at most 1,000"
    )


def test_billion_laughs_in_a_set_value_is_refused(tmp_path: Path, usual_code: int) -> None:
    file = tmp_path / "shots.yaml"
    file.write_text(SHOTS)
    anchors = "{" + ", ".join(LAUGHS.splitlines()[1:10]) + "}"
    child = validate(file, f"shots={anchors}")
    assert_refused(
        child, usual_code, f"{file}:3", "given value: the alias *d takes this YAML past 20,000 values"
    )


FLOW_INPUTS = """\
import json, sys
from klingflow import plan_pipeline
from klingflow.errors import KlingflowError
try:
    plan_pipeline(sys.argv[1], inputs=json.load(open(sys.argv[2])))
except KlingflowError as exc:
    print(f"error (invalid-spec)\\n  {exc}", file=sys.stderr)
    sys.exit(1)
"""
"""The flow's ``inputs`` parameter: ``pipeline_flow`` hands it to the engine's ``prepare`` as
``plan_pipeline`` does, as Python data decoded from JSON (as Prefect passes parameters)."""


@pytest.mark.parametrize(
    ("value", "words"),
    [
        pytest.param(["dawn"] * 100_000, ("a list of 100,000 items", "at most 1,000"), id="list"),
        pytest.param([[["x"] * 500] * 500], ("more than 20,000 values in one input",), id="values"),
        pytest.param(["x" * 100_000], ("a text of 98 KiB",), id="text"),
        pytest.param(["x" * 60_000] * 20, ("more than 1.0 MiB of text in one input",), id="total-text"),
    ],
)
def test_flow_parameter_inputs_are_bounded(tmp_path: Path, value: object, words: tuple[str, ...]) -> None:
    file = tmp_path / "shots.yaml"
    file.write_text(SHOTS)
    inputs = tmp_path / "inputs.json"
    inputs.write_text(json.dumps({"shots": value}))
    child = run_child(sys.executable, "-c", FLOW_INPUTS, str(file), str(inputs))
    assert_refused(child, 1, f"{file}:3", "field 'inputs.shots': given value:", *words)


def test_a_pipeline_at_the_foreach_limit_still_validates(tmp_path: Path) -> None:
    """The limits leave room: 1,000 items validate, each one checked as before."""
    file = tmp_path / "thousand.yaml"
    file.write_text(
        SHOTS.replace("[dawn over the sea]", "[" + ", ".join(f"shot {n}" for n in range(1_000)) + "]")
    )
    child = validate(file)
    assert child.returncode == 0, child.stderr
    assert f"ok {file}: 1 steps" in child.stdout


def test_anchors_and_merge_keys_a_person_writes_load_as_plain_yaml_would(tmp_path: Path) -> None:
    file = tmp_path / "anchors.yaml"
    file.write_text(
        """\
name: anchors
steps:
  - id: dawn
    uses: text-to-video
    with: &shot {aspect_ratio: "9:16", duration: "5", negative_prompt: blur, prompt: dawn over the sea}
  - id: dusk
    uses: text-to-video
    with: {<<: *shot, prompt: dusk over the sea, duration: "10"}
"""
    )
    spec = load_pipeline(file)
    assert spec.model_dump() == parse_pipeline(yaml.safe_load(file.read_text()), source=file).model_dump()
    assert spec.step("dusk").with_ == {
        "aspect_ratio": "9:16",
        "duration": "10",
        "negative_prompt": "blur",
        "prompt": "dusk over the sea",
    }
    assert check(spec).order == ["dawn", "dusk"]


PIPELINES = sorted(
    [
        *(REPO / "deployments" / "pipelines").glob("*.yaml"),
        *(REPO / "tests" / "specs").rglob("*.yaml"),
        *(REPO / "tests" / "bad_pipelines").glob("*.yaml"),
    ]
)


@pytest.mark.parametrize("file", PIPELINES, ids=lambda path: str(path.relative_to(REPO)))
def test_every_pipeline_in_the_repository_reads_as_plain_yaml_would(file: Path) -> None:
    """The bounded reader gives the presets and the test pipelines exactly the data yaml.safe_load does
    (their own messages are asserted by test_spec.py and test_bad_pipelines.py)."""
    try:
        plain = yaml.safe_load(file.read_text())
    except yaml.YAMLError:
        plain = None  # the syntax-error example: test_bad_pipelines asserts its message
    try:
        spec = load_pipeline(file)
    except SpecError as exc:  # a bad pipeline: refused for its own mistake, never for a limit
        for limit in ("values", "levels deep", "longer than a pipeline file"):
            assert limit not in str(exc), str(exc)
        return
    assert spec.model_dump() == parse_pipeline(plain, source=file).model_dump()
    if file.parent.name == "pipelines":
        check(spec)  # every preset still checks with its defaults
