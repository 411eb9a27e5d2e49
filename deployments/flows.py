"""Typed flows for the example pipelines: the entrypoints named in prefect.yaml.

Each flow's ``inputs`` parameter is generated from its pipeline's ``inputs:``, so the Prefect UI
shows a form (enums as drop-downs, defaults filled in).
"""

from pathlib import Path

from klingflow.flows.presets import pipeline_flow_for

PIPELINES = Path(__file__).resolve().parent / "pipelines"

story = pipeline_flow_for(PIPELINES / "story.yaml")
avatar = pipeline_flow_for(PIPELINES / "avatar.yaml")
continuation = pipeline_flow_for(PIPELINES / "continue.yaml")
story_v26 = pipeline_flow_for(PIPELINES / "story-v26.yaml")
character = pipeline_flow_for(PIPELINES / "character.yaml")
