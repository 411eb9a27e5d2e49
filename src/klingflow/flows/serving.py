"""``klingflow serve``: the deployments of ``deployments/prefect.yaml`` (or of given pipeline files),
served from one process with Prefect's ``serve`` for local use.

prefect.yaml stays the one place where deployments are declared: ``prefect deploy`` reads it for
work pools and workers on other machines, and this module reads the same entries (name,
entrypoint, description, tags, cron schedules, concurrency limit, parameters) to serve them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from prefect.deployments.runner import RunnerDeployment
from prefect.types.entrypoint import EntrypointType

from klingflow.errors import ConfigError
from klingflow.flows.pipeline import pipeline_flow
from klingflow.spec import load_pipeline

__all__ = ["file_deployments", "project_deployments"]


def project_deployments(prefect_yaml: Path) -> list[RunnerDeployment]:
    """RunnerDeployments for every entry of a prefect.yaml (entrypoints relative to its project)."""
    try:
        document: dict[str, Any] = yaml.safe_load(prefect_yaml.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read {prefect_yaml}: {exc}", context=str(prefect_yaml)) from exc
    project = prefect_yaml.resolve().parent.parent
    deployments = []
    for entry in document.get("deployments", []):
        file_part, _, attribute = str(entry["entrypoint"]).partition(":")
        crons = [s["cron"] for s in entry.get("schedules") or [] if "cron" in s]
        deployments.append(
            RunnerDeployment.from_entrypoint(
                entrypoint=f"{project / file_part}:{attribute}",
                name=entry["name"],
                description=entry.get("description"),
                tags=entry.get("tags"),
                cron=crons or None,
                concurrency_limit=entry.get("concurrency_limit"),
                parameters=entry.get("parameters"),
            )
        )
    return deployments


def file_deployments(files: list[Path]) -> list[RunnerDeployment]:
    """One on-demand deployment per pipeline file, running the generic klingflow flow on it."""
    deployments = []
    for path in files:
        spec = load_pipeline(path)  # a broken pipeline is refused now, not at its first run
        deployment = pipeline_flow.to_deployment(
            name=spec.name,
            description=spec.description or f"Run the {spec.name} pipeline ({path}).",
            tags=["klingflow", spec.name],
            parameters={"pipeline": str(Path(path).resolve())},
            entrypoint_type=EntrypointType.MODULE_PATH,
        )
        # Inside an event loop to_deployment returns its async twin's coroutine; the CLI calls this
        # outside one, where it returns the deployment itself.
        assert isinstance(deployment, RunnerDeployment)
        # Prefect names the entrypoint after the decorated function (``_pipeline_flow``, which is
        # not a flow: its run would crash loading it); the flow is the module's ``pipeline_flow``.
        deployment.entrypoint = f"{pipeline_flow.fn.__module__}.pipeline_flow"
        deployments.append(deployment)
    return deployments
