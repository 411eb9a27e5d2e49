"""Endpoint schemas and prices refreshed from fal's platform API, through the real emulator over HTTPS.

The emulator answers ``GET /v1/models?expand=openapi-3.0`` and ``/v1/models/pricing`` from the
registry; ``POST /_emulator/models`` makes it answer what fal would after a change (a narrower enum,
a new price, an endpoint klingflow never vendored). Counting what went over the wire is done from
outside, by the tests' own proxy (``faultproxy.py``), in ``klingflow`` processes behind it.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from conftest import KLINGFLOW, EmulatorAdmin
from faultproxy import PHASES, FaultProxy
from klingflow.backends import resolve_backend
from klingflow.backends.fal import FalBackend
from klingflow.backends.platform import refresh_endpoints
from klingflow.cache import Store
from klingflow.cli import app
from klingflow.endpoints import (
    PriceRule,
    drop_refreshed,
    forget_endpoint,
    get_endpoint,
    json_schemas,
    openapi_document,
    price_from_fal,
    record_of,
    schema_sha256,
    snapshot_ids,
)
from klingflow.engine import RunOptions, plan_pipeline
from klingflow.errors import SpecError
from klingflow.spec import check, load_pipeline

V26 = "fal-ai/kling-video/v2.6/pro/text-to-video"
V3_T2V = "fal-ai/kling-video/v3/pro/text-to-video"
NEW = "fal-ai/kling-video/v3.5/pro/text-to-video"
"""An id klingflow has not vendored (the emulator is taught it per test)."""


def set_changes(emulator: EmulatorAdmin, changes: dict[str, Any]) -> None:
    """Make the emulator's platform API answer these changes (``{}``: none)."""
    with httpx.Client(verify=emulator.ssl, headers={"Authorization": f"Key {emulator.key}"}) as client:
        client.post(f"{emulator.base}/_emulator/models", json=changes, timeout=30).raise_for_status()


@pytest.fixture
def refreshed() -> Iterator[list[str]]:
    """Ids a test refreshes into the session home: their refreshed copies are dropped afterwards."""
    ids: list[str] = []
    yield ids
    for endpoint_id in ids:
        drop_refreshed(endpoint_id)
        forget_endpoint(endpoint_id)


@pytest.fixture
def backend(emulator: EmulatorAdmin, tmp_path: Path) -> FalBackend:
    return FalBackend(resolve_backend("fal", key=emulator.key), Store(tmp_path / "store"))


def test_every_vendored_schema_round_trips_through_fals_document_shape() -> None:
    """A refresh of an unchanged endpoint reports it unchanged: same schemas, same sha256."""
    compared = 0
    for endpoint_id in snapshot_ids():
        record = record_of(endpoint_id)
        assert record is not None
        if record.input is None or record.output is None:
            continue
        document = openapi_document(endpoint_id, record.input, record.output)
        assert json_schemas(endpoint_id, document) == (record.input, record.output), endpoint_id
        assert schema_sha256(record.input, record.output) == record.sha256, endpoint_id
        compared += 1
    assert compared == 75


def test_a_fal_document_becomes_a_self_contained_schema_without_fals_prose() -> None:
    file = {"type": "object", "title": "File", "properties": {"url": {"type": "string", "description": "x"}}}
    document = {
        "components": {
            "schemas": {
                "QueueStatus": {"type": "object"},
                "Unused": {"type": "object"},
                "Shot": {"type": "object", "properties": {"prompt": {"type": "string", "examples": ["a"]}}},
                "In": {
                    "type": "object",
                    "description": "fal's words",
                    "properties": {
                        "title": {"type": "string", "title": "Title"},  # a field named title stays
                        "shots": {"type": "array", "items": {"$ref": "#/components/schemas/Shot"}},
                    },
                },
                "Out": {"type": "object", "properties": {"video": {"$ref": "#/components/schemas/File"}}},
                "File": file,
            }
        },
        "paths": {
            "/o/app": {
                "post": {
                    "requestBody": {
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/In"}}}
                    }
                }
            },
            "/o/app/requests/{request_id}": {
                "get": {
                    "responses": {
                        "200": {
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Out"}}}
                        }
                    }
                }
            },
        },
    }

    given, made = json_schemas("o/app", document)

    assert given == {
        "type": "object",
        "properties": {
            "title": {"type": "string"},
            "shots": {"type": "array", "items": {"$ref": "#/$defs/Shot"}},
        },
        "$defs": {"Shot": {"type": "object", "properties": {"prompt": {"type": "string"}}}},
    }
    assert made["$defs"] == {"File": {"type": "object", "properties": {"url": {"type": "string"}}}}
    with pytest.raises(ValueError, match="no result schema"):
        json_schemas("o/app", {**document, "paths": {"/o/app": document["paths"]["/o/app"]}})


def test_fals_unit_price_replaces_the_base_rate_and_keeps_the_variants() -> None:
    known = get_endpoint(V26).price
    assert known is not None and known.variants

    moved = price_from_fal(known, 0.1, "seconds", fetched="now")
    assert moved is not None
    assert (moved.unit, moved.usd, moved.variants) == ("second", 0.1, known.variants)
    assert price_from_fal(known, None, None, fetched="now") == known  # fal states no price: keep ours
    assert price_from_fal(None, 0.3, "video", fetched="now") == PriceRule(
        unit="request", usd=0.3, source=moved.source["base_rate"] | {"unit": "video"}
    )
    assert price_from_fal(None, 0.3, "1M tokens", fetched="now") is None  # not a unit klingflow counts
    per_request = price_from_fal(known, 0.5, "request", fetched="now")  # fal now bills another unit
    assert per_request is not None and (per_request.unit, per_request.variants) == ("request", ())


def test_a_refresh_with_a_changed_enum_and_price_changes_validation_and_the_plan(
    emulator: EmulatorAdmin, backend: FalBackend, options: RunOptions, tmp_path: Path, refreshed: list[str]
) -> None:
    pipeline = tmp_path / "v26.yaml"
    pipeline.write_text(
        f"name: v26\nsteps:\n  - id: clip\n    uses: {V26}\n"
        "    with: {prompt: a fox, duration: 10, generate_audio: false}\n"
    )
    square_file = tmp_path / "square.yaml"
    square_file.write_text(pipeline.read_text().replace("generate_audio: false", "aspect_ratio: '1:1'"))
    square = load_pipeline(square_file)
    before = plan_pipeline(pipeline, {}, options)
    check(square)  # 1:1 is one of the snapshot's ratios
    set_changes(
        emulator,
        {V26: {"unit_price": 0.1, "input": {"properties": {"aspect_ratio": {"enum": ["16:9", "9:16"]}}}}},
    )

    refreshed.append(V26)
    (found,) = asyncio.run(refresh_endpoints(backend, [V26]))

    assert found.changed and found.previous is not None and found.previous.origin == "snapshot"
    assert found.record is not None and found.record.source["backend"] == "emulator"
    assert get_endpoint(V26).record.origin == "refreshed"
    assert before.steps[0].estimated_cost_usd == pytest.approx(0.7)  # 10 s at the snapshot's $0.07/s
    assert plan_pipeline(pipeline, {}, options).steps[0].estimated_cost_usd == pytest.approx(1.0)
    with pytest.raises(SpecError, match="aspect_ratio") as refused:
        check(square)
    assert "1:1" in str(refused.value)
    assert emulator.stats()["platform_requests"] == 2  # one models call, one pricing call


def test_the_emulator_answers_fals_find_and_list_modes(emulator: EmulatorAdmin) -> None:
    with httpx.Client(verify=emulator.ssl, base_url=emulator.base, timeout=30) as client:
        found = client.get(
            "/v1/models",
            params=[("endpoint_id", V3_T2V), ("endpoint_id", "fal-ai/nope"), ("expand", "openapi-3.0")],
        ).json()  # no key: fal's models API does not need one
        listed = client.get("/v1/models", params={"limit": 70}).json()
        too_many = client.get("/v1/models", params=[("endpoint_id", f"o/{n}") for n in range(51)])

    (model,) = found["models"]
    assert model["metadata"]["display_name"] == "Kling Video v3 Text to Video [Pro]"
    assert f"/{V3_T2V}/requests/{{request_id}}" in model["openapi"]["paths"]
    assert len(listed["models"]) == 70 and listed["has_more"] and "openapi" not in listed["models"][0]
    assert too_many.status_code == 422


def run_cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*KLINGFLOW, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def new_pipeline(tmp_path: Path) -> Path:
    pipeline = tmp_path / "new.yaml"
    pipeline.write_text(f"name: new\nsteps:\n  - id: clip\n    uses: {NEW}\n    with: {{prompt: a fox}}\n")
    return pipeline


def test_offline_never_touches_the_network(fault_proxy: FaultProxy, tmp_path: Path) -> None:
    pipeline = new_pipeline(tmp_path)
    env = fault_proxy.environment() | {"KLINGFLOW_HOME": str(tmp_path / "home")}

    validated = run_cli("validate", "--offline", str(pipeline), env=env, cwd=tmp_path)
    planned = run_cli("plan", str(pipeline), env=env | {"KLINGFLOW_OFFLINE": "1"}, cwd=tmp_path)

    for done in (validated, planned):
        assert done.returncode == 1, done.stdout + done.stderr
        assert f"{pipeline}:4 step 'clip' field 'uses'" in done.stderr, done.stderr
        assert f"endpoint {NEW!r} is neither vendored nor refreshed" in done.stderr
        assert "scripts/vendor_endpoints.py" in done.stderr and f"endpoints refresh {NEW}" in done.stderr
    assert all(fault_proxy.counts[phase]["seen"] == 0 for phase in PHASES), fault_proxy.counts


def test_an_id_klingflow_has_not_vendored_is_fetched_once_then_read_from_the_home(
    emulator: EmulatorAdmin, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    template = get_endpoint(V3_T2V).record
    set_changes(
        emulator,
        {NEW: {"input": template.input, "output": template.output, "unit_price": 0.2, "unit": "second"}},
    )
    pipeline = new_pipeline(tmp_path)
    home = tmp_path / "home"
    env = fault_proxy.environment() | {"KLINGFLOW_HOME": str(home)}

    first = run_cli("plan", str(pipeline), env=env, cwd=tmp_path)
    fetched = fault_proxy.counts["platform"]["seen"]
    second = run_cli("plan", str(pipeline), env=env, cwd=tmp_path)

    assert first.returncode == 0 == second.returncode, first.stdout + first.stderr + second.stderr
    assert "$1.000" in first.stdout and "$1.000" in second.stdout  # 5 s at fal's $0.2/s
    assert fetched == 2, fault_proxy.exchanges  # one models call, one pricing call
    assert fault_proxy.counts["platform"]["seen"] == 2, "the second plan read the home's copy"
    stored = json.loads((home / "endpoints" / (NEW.replace("/", "__") + ".json")).read_text())
    assert (stored["origin"], stored["family"], stored["mode"], stored["tier"]) == (
        "refreshed",
        "v3.5",
        "text-to-video",
        "pro",
    )


def test_refresh_says_what_changed_and_an_old_copy_is_stale_in_show_and_plan(
    emulator: EmulatorAdmin, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    env = fault_proxy.environment() | {"KLINGFLOW_HOME": str(home)}
    set_changes(emulator, {V26: {"unit_price": 0.1, "input": {"properties": {"cfg_scale": {"maximum": 2}}}}})

    nothing = run_cli("endpoints", "refresh", env=env, cwd=tmp_path)
    every = run_cli("endpoints", "refresh", "--all", env=env, cwd=tmp_path)
    copy = home / "endpoints" / (V26.replace("/", "__") + ".json")
    stored = json.loads(copy.read_text())
    copy.write_text(json.dumps(stored | {"fetched_at": time.time() - 8 * 86400}))
    shown = run_cli("endpoints", "show", V26, env=env, cwd=tmp_path)
    pipeline = tmp_path / "v26.yaml"
    pipeline.write_text(f"name: v26\nsteps:\n  - id: clip\n    uses: {V26}\n    with: {{prompt: a fox}}\n")
    planned = run_cli("plan", str(pipeline), env=env, cwd=tmp_path)

    assert nothing.returncode == 0 and "nothing to refresh" in nothing.stdout
    assert every.returncode == 1, every.stderr  # the three ids without a schema cannot be refreshed
    lines = {line.split(": ", 1)[0]: line for line in every.stdout.splitlines()}
    snapshot_sha = get_endpoint(V26).sha256 or ""
    assert f"schema changed (sha256 {snapshot_sha[:12]} -> {stored['sha256'][:12]})" in lines[V26]
    assert "price $0.1/s; $0.14/s with generate_audio=true (was $0.07/s;" in lines[V26]
    assert "schema unchanged" in lines[V3_T2V]
    assert "not refreshed: fal has no OpenAPI document" in lines["fal-ai/kling-video/v3/pro/elements"]
    assert "75 of 78 refreshed from emulator" in every.stdout and "1 with a changed schema" in every.stdout
    assert "(stale: run `klingflow endpoints refresh`) from emulator, 8.0 days old" in shown.stdout, (
        shown.stdout
    )
    assert "cfg_scale: number; optional; default 0.5; >= 0; <= 2" in shown.stdout
    assert planned.returncode == 0, planned.stderr
    assert "stale: " in planned.stderr and f"{V26} (8 days)" in planned.stderr


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app, list(args), catch_exceptions=False, env={"COLUMNS": "200"})


def test_list_filters_by_family_mode_and_price() -> None:
    listed = invoke("endpoints", "list", "--family", "v3", "--mode", "image-to-video", "--priced")
    unpriced = invoke("endpoints", "list", "--mode", "motion-control")
    typo = invoke("endpoints", "list", "--family", "v33")

    rows = [line.split("\t") for line in listed.stdout.splitlines()]
    assert rows[0] == ["id", "family", "mode", "tier", "price", "schema"]
    assert [row[0] for row in rows[1:]] == [
        "fal-ai/kling-video/v3/4k/image-to-video",
        "fal-ai/kling-video/v3/pro/image-to-video",
        "fal-ai/kling-video/v3/standard/image-to-video",
    ]
    assert rows[2][3:] == [
        "pro",
        "$0.112/s; $0.196/s with generate_audio=true, elements[].voice_id set;"
        " $0.168/s with generate_audio=true",
        "snapshot 2026-05-12",
    ]
    assert {row[4] for row in (line.split("\t") for line in unpriced.stdout.splitlines()[1:])} == {"unknown"}
    assert typo.exit_code == 2 and "did you mean 'v3'?" in typo.stderr


def test_show_prints_fields_limits_media_outputs_and_where_the_schema_is_from() -> None:
    v3 = invoke("endpoints", "show", "fal-ai/kling-video/v3/pro/image-to-video").stdout
    effects = invoke("endpoints", "show", "effects").stdout
    unknown = invoke("endpoints", "show", "fal-ai/kling-video/v3/pro/image-to-vide")

    assert (
        "schema: snapshot (schema 2026-05-12, fal-ai/fal-js), sha256 "
        + (get_endpoint("fal-ai/kling-video/v3/pro/image-to-video").sha256 or "?")
        in v3
    )
    assert "  start_image_url: image (a URL, or a local file klingflow uploads); required; " in v3
    assert "max_file_size 10 MB; min_aspect_ratio 0.4; min_height 300" in v3
    assert '  multi_prompt[].duration: string; optional; default "5"; one of 1, 2, 3' in v3
    assert "  elements.video_url: video (max_duration 10.05; max_file_size 200 MB" in v3
    assert "outputs:\n  video: video file\n" in v3 and "cross-field rules: prompt-or-multi-prompt" in v3
    assert "(short name effects)" in effects and "price: $0.045/s" in effects
    assert (
        "one of hug, kiss, heart_gesture, squish, expansion, fuzzyfuzzy, bloombloom, dizzydizzy, ... ("
        in effects
    )
    assert unknown.exit_code == 2
    assert "did you mean 'fal-ai/kling-video/v3/pro/image-to-video'?" in unknown.stderr
    assert os.environ.get("KLINGFLOW_OFFLINE") is None
