"""Typed Prefect flows for individual pipeline files, so the UI shows a real parameter form.

The generic ``pipeline_flow`` takes a pipeline's inputs as one JSON object. For a deployed pipeline,
:func:`pipeline_flow_for` builds a flow whose ``inputs`` parameter is a pydantic model made from the
pipeline's own ``inputs:`` (types, defaults, descriptions, and ``enum`` as a drop-down), so the
Prefect UI renders a form with defaults filled in, and a bad value is refused before the run starts.

This module deliberately has no ``from __future__ import annotations``: Prefect reads the flow's
signature to build the parameter schema and needs real annotation objects.
"""

from pathlib import Path
from typing import Any, Literal, Optional, Union

from prefect import Flow, flow
from pydantic import BaseModel, ConfigDict, Field, create_model

from klingflow.flows.batch import abatch_body
from klingflow.flows.pipeline import flow_parameter, run_body, with_option_parameters
from klingflow.spec import InputSpec, PipelineSpec, load_pipeline

__all__ = ["batch_flow_for", "inputs_model", "pipeline_flow_for"]

_TYPES: dict[str, Any] = {"string": str, "integer": int, "number": float, "boolean": bool, "list": list[str]}


def _field(spec: InputSpec) -> tuple[Any, Any]:
    annotation = Literal[tuple(spec.enum)] if spec.enum else _TYPES[spec.type]
    default = ... if spec.required else spec.default
    return annotation, Field(default, description=spec.description or None)


def inputs_model(spec: PipelineSpec) -> type[BaseModel]:
    """A pydantic model of a pipeline's inputs (the deployment's parameter form)."""
    title = "".join(part.capitalize() for part in spec.name.replace("-", "_").split("_")) + "Inputs"
    fields = {name: _field(item) for name, item in spec.inputs.items()}
    return create_model(title, __config__=ConfigDict(extra="forbid"), **fields)  # type: ignore[call-overload]


def pipeline_flow_for(path: str | Path) -> Flow[..., Any]:
    """A flow named ``klingflow-<pipeline name>`` that runs ``path`` with typed inputs."""
    pipeline_file = Path(path).resolve()
    spec = load_pipeline(pipeline_file)
    model = inputs_model(spec)
    default = model() if all(not item.required for item in spec.inputs.values()) else ...

    async def run_preset(
        inputs: Any, credentials: str | None = None, defaults: str | None = None, **options: Any
    ) -> Any:
        return await run_body(
            str(pipeline_file), inputs.model_dump(), credentials=credentials, defaults=defaults, **options
        )

    with_option_parameters(
        run_preset,
        flow_parameter("inputs", model, default),
        flow_parameter("credentials", Optional[str]),  # noqa: UP045 (a real object for Prefect's schema)
        flow_parameter("defaults", Optional[str]),  # noqa: UP045
    )
    run_preset.__doc__ = spec.description or f"Run the {spec.name} pipeline."
    return flow(
        name=f"klingflow-{spec.name}",
        description=run_preset.__doc__,
        persist_result=False,
        flow_run_name=spec.name,
        log_prints=False,
    )(run_preset)


def batch_flow_for(path: str | Path) -> Flow[..., Any]:
    """A flow named ``klingflow-<pipeline name>-batch`` that runs ``path`` once per row.

    Its ``rows`` parameter is a path to a table (.csv, .parquet, .jsonl: tonight's sheet, for a
    scheduled deployment; relative to the pipeline's folder) or a list of rows typed by the
    pipeline's inputs (the UI's form shows a list of the single-run flow's fields); each row is a
    child flow run.
    """
    pipeline_file = Path(path).resolve()
    spec = load_pipeline(pipeline_file)
    row = inputs_model(spec)

    async def run_rows(
        rows: Any,
        credentials: str | None = None,
        defaults: str | None = None,
        row_concurrency: int | None = None,
        key_column: str | None = None,
        only_failed: bool = False,
        **options: Any,
    ) -> Any:
        # a relative path is the pipeline folder's, as the pipeline's own media paths are
        table = str(pipeline_file.parent / rows) if isinstance(rows, str) else [r.model_dump() for r in rows]
        return await abatch_body(
            str(pipeline_file),
            table,
            credentials=credentials,
            defaults=defaults,
            row_concurrency=row_concurrency,
            key_column=key_column,
            # a path may hold more columns than inputs (a shared sheet); typed rows cannot
            ignore_extra=isinstance(rows, str),
            only_failed=only_failed,
            **options,
        )

    with_option_parameters(
        run_rows,
        flow_parameter("rows", Union[str, list[row]], ...),  # type: ignore[valid-type]  # noqa: UP007
        flow_parameter("credentials", Optional[str]),  # noqa: UP045
        flow_parameter("defaults", Optional[str]),  # noqa: UP045
        flow_parameter("row_concurrency", Optional[int]),  # noqa: UP045
        flow_parameter("key_column", Optional[str]),  # noqa: UP045
        flow_parameter("only_failed", bool, False),
    )
    run_rows.__doc__ = f"Run the {spec.name} pipeline once per row of a table: each row a child flow run."
    return flow(
        name=f"klingflow-{spec.name}-batch",
        description=run_rows.__doc__,
        persist_result=False,
        flow_run_name=f"{spec.name}-batch",
        log_prints=False,
    )(run_rows)
