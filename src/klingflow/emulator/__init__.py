"""A fal-compatible local server: the embedded default backend and every test's backend.

It speaks fal's queue and direct-run protocols over TLS so the unmodified ``fal_client`` talks to
it, validates inputs with klingflow's endpoint models, runs requests through a real queue, renders
deterministic, visibly labelled media with ffmpeg, and injects faults on demand.
"""
