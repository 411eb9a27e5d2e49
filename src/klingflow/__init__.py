"""klingflow: declarative Kling video pipelines on fal.ai, run as Prefect flows.

The public API, imported lazily so that ``import klingflow`` stays cheap and importing the core
never imports Prefect (or fal_client, whose hosts must be set before it is imported)::

    from klingflow import run_pipeline, load_pipeline, plan_pipeline

    result = run_pipeline("deployments/pipelines/avatar.yaml", inputs={"line": "Hello!"})
    result.final        # {"presenter": PosixPath(".../presenter.mp4")}
    result.ledger       # one typed pandas row per step execution

    batch = run_batch("deployments/pipelines/story.yaml", "products.csv", key_column="sku")
    batch.table         # one row per row of the sheet: status, output, cost, flow run
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "PipelineFailed",
    "PipelineSpec",
    "RunHooks",
    "RunOptions",
    "RunResult",
    "arun_pipeline",
    "check",
    "run_batch",
    "load_pipeline",
    "parse_pipeline",
    "plan_pipeline",
    "run_pipeline",
]

_LOCATIONS = {
    "PipelineFailed": "klingflow.errors",
    "arun_pipeline": "klingflow.flows.pipeline",
    "run_pipeline": "klingflow.flows.pipeline",
    "run_batch": "klingflow.flows.batch",
    "PipelineSpec": "klingflow.spec",
    "check": "klingflow.spec",
    "load_pipeline": "klingflow.spec",
    "parse_pipeline": "klingflow.spec",
    "RunHooks": "klingflow.engine",
    "RunOptions": "klingflow.engine",
    "plan_pipeline": "klingflow.engine",
    "RunResult": "klingflow.engine",
}


def __getattr__(name: str) -> Any:
    if name in _LOCATIONS:
        return getattr(importlib.import_module(_LOCATIONS[name]), name)
    raise AttributeError(f"module 'klingflow' has no attribute {name!r}")
