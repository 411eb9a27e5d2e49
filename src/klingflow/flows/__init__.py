"""Prefect flows: one flow runs any pipeline spec; the public run functions call it."""

from klingflow.flows.pipeline import arun_pipeline, pipeline_flow, run_pipeline

__all__ = ["arun_pipeline", "pipeline_flow", "run_pipeline"]
