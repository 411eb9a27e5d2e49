"""Typed flows for the example pipelines: the entrypoints named in prefect.yaml.

Each flow's ``inputs`` parameter is generated from its pipeline's ``inputs:``, so the Prefect UI
shows a form (enums as drop-downs, defaults filled in). Each ``*_batch`` flow runs its pipeline once
per row of a table (a path, or a list of rows with the same fields), each row a child flow run.
"""

from pathlib import Path

from klingflow.flows.presets import batch_flow_for, pipeline_flow_for

PIPELINES = Path(__file__).resolve().parent / "pipelines"

story = pipeline_flow_for(PIPELINES / "story.yaml")
avatar = pipeline_flow_for(PIPELINES / "avatar.yaml")
continuation = pipeline_flow_for(PIPELINES / "continue.yaml")
story_v26 = pipeline_flow_for(PIPELINES / "story-v26.yaml")
character = pipeline_flow_for(PIPELINES / "character.yaml")

story_batch = batch_flow_for(PIPELINES / "story.yaml")
avatar_batch = batch_flow_for(PIPELINES / "avatar.yaml")
