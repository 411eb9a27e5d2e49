"""Faults the emulator injects on demand, so tests can prove that klingflow recovers.

A fault is chosen when a request arrives (queue submit or direct run), either from a script
("the next N requests get these faults, in order") or by rate ("each request has a 10 % chance of
a 503"); rates use a seeded RNG so a run is repeatable. Each kind acts at one stage:

=============================  =====================================================================
kind                           effect
=============================  =====================================================================
``429``                        answered 429 Too Many Requests with ``Retry-After``
``500`` ``502`` ``503``        answered 5xx by the app: JSON ``detail`` *with* ``x-fal-request-id``,
                               so fal_client does not retry it and passes it on
``ingress-502`` ``-503``       answered 5xx by the ingress: nginx HTML *without* ``x-fal-request-id``,
``ingress-504``                which fal_client retries by itself (up to 10 attempts)
``drop``                       connection dropped mid-response *before* the request was accepted
``lost``                       request accepted (queued, billed, in the history), then the answer is
                               dropped: the client cannot tell it from ``drop``
``stuck``                      request accepted but never leaves the queue (until cancelled/timed out)
``error``                      runs, ends COMPLETED with ``error_type`` ``runner_server_error``; its
                               result answers 500 with ``X-Fal-Error-Type``
``startup_timeout``            ends COMPLETED with that ``error_type``; result 504
``runner_scheduling_failure``  ends COMPLETED with that ``error_type``; result 503
``runner_disconnected``        runs, then ends COMPLETED with that ``error_type``; result 503
``result_404``                 request completes, but its output file answers 404
``truncated``                  request completes, but its output file is served cut in half (once)
``slow_file``                  request completes, but its output file is served after a pause of
                               ``SLOW_FILE_SECONDS`` (once)
``stream_cut``                 request runs as usual, but its first status stream is cut after its
                               first event (once): a client must reconnect or poll
=============================  =====================================================================

The kinds down to ``lost`` act on the HTTP answer; those down to ``drop`` also act on uploads
when targeted with ``@upload`` (see below). The others act on a request after it was accepted.

CLI form (``--faults``): ``KIND[:RATE][,KIND[:RATE]...]`` for rates, e.g. ``503:0.2,drop:0.05``;
``script=KIND+KIND+ok`` scripts the next requests (``ok`` = no fault). A script entry may name an
endpoint, ``KIND@ALIAS`` (e.g. ``error@tts``): it then waits for the next request to that endpoint,
so a test with concurrent steps knows which step gets the fault. ``KIND@upload`` waits for the
next upload instead (fal_client's ``POST /files/upload``, the PUT of the storage fallback, or a
multipart part): uploads take only entries targeted at them, never untargeted ones or rates.
"""

from __future__ import annotations

import random
import threading
from collections import deque
from typing import Literal, get_args

from pydantic import BaseModel, Field, field_validator

__all__ = [
    "FAULT_KINDS",
    "INFRA_ERRORS",
    "SLOW_FILE_SECONDS",
    "SUBMIT_FAULTS",
    "UPLOAD_TARGET",
    "FaultKind",
    "FaultPlan",
    "Faults",
    "parse_faults",
]

FaultKind = Literal[
    "429",
    "500",
    "502",
    "503",
    "ingress-502",
    "ingress-503",
    "ingress-504",
    "drop",
    "lost",
    "stuck",
    "error",
    "startup_timeout",
    "runner_scheduling_failure",
    "runner_disconnected",
    "result_404",
    "truncated",
    "slow_file",
    "stream_cut",
]
FAULT_KINDS: tuple[str, ...] = get_args(FaultKind)
SUBMIT_FAULTS = frozenset({"429", "500", "502", "503", "ingress-502", "ingress-503", "ingress-504", "drop"})
"""Faults that answer the HTTP request themselves: the request is never accepted."""
SLOW_FILE_SECONDS = 2.0
"""How long the ``slow_file`` fault holds back a request's output file."""
UPLOAD_TARGET = "upload"
"""The ``@`` target that makes a scripted fault wait for the next upload."""
INFRA_ERRORS: dict[str, tuple[int, str]] = {
    "error": (500, "runner_server_error"),
    "startup_timeout": (504, "startup_timeout"),
    "runner_scheduling_failure": (503, "runner_scheduling_failure"),
    "runner_disconnected": (503, "runner_disconnected"),
}
"""Faults that end an accepted request COMPLETED with an error: kind -> (result status, error_type)."""


class FaultPlan(BaseModel):
    """What to inject: a script for the next requests and/or a rate per kind."""

    script: list[str] = Field(default_factory=list)
    rates: dict[FaultKind, float] = Field(default_factory=dict)
    retry_after: float = Field(default=1.0, ge=0, description="Retry-After seconds sent with 429.")
    seed: int = 0

    @field_validator("script")
    @classmethod
    def _script_kinds_are_known(cls, script: list[str]) -> list[str]:
        for entry in script:
            kind = entry.partition("@")[0]
            if kind not in (*FAULT_KINDS, "ok"):
                raise ValueError(f"unknown fault kind {kind!r}; known: {', '.join(FAULT_KINDS)}")
        return script

    @field_validator("rates")
    @classmethod
    def _rates_are_probabilities(cls, rates: dict[str, float]) -> dict[str, float]:
        for kind, rate in rates.items():
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"rate for {kind!r} must be between 0 and 1, got {rate}")
        if sum(rates.values()) > 1.0:
            raise ValueError("fault rates add up to more than 1")
        return rates


def parse_faults(text: str) -> FaultPlan:
    """Parse the ``--faults`` CLI form into a FaultPlan (raises ValueError naming the bad part)."""
    script: list[str] = []
    rates: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        if part.startswith("script="):
            script.extend(part.removeprefix("script=").split("+"))
            continue
        kind, _, rate = part.partition(":")
        try:
            rates[kind] = float(rate) if rate else 1.0
        except ValueError:
            raise ValueError(f"bad fault rate in {part!r}: expected KIND:RATE like 503:0.2") from None
    for kind in [*(entry.partition("@")[0] for entry in script), *rates]:
        if kind not in (*FAULT_KINDS, "ok"):
            raise ValueError(f"unknown fault kind {kind!r}; known: {', '.join(FAULT_KINDS)}")
    return FaultPlan.model_validate({"script": script, "rates": rates})


class Faults:
    """Thread-safe fault chooser, with counts of what it injected."""

    def __init__(self, plan: FaultPlan | None = None) -> None:
        self._lock = threading.Lock()
        self.injected: dict[str, int] = {}
        self.configure(plan or FaultPlan())

    def configure(self, plan: FaultPlan) -> None:
        """Replace the current plan (the counts of what was injected are kept)."""
        with self._lock:
            self.plan = plan
            self._script: deque[str] = deque(plan.script)
            self._random = random.Random(plan.seed)

    def choose(self, endpoint_id: str = "", alias: str = "") -> str | None:
        """Pick the fault for the next request to this endpoint, or None; counts what it picks."""
        with self._lock:
            fault: str | None = None
            scripted = next(
                (e for e in self._script if e.partition("@")[2] in ("", endpoint_id, alias)), None
            )
            if scripted is not None:
                self._script.remove(scripted)
                kind = scripted.partition("@")[0]
                fault = None if kind == "ok" else kind
            elif self.plan.rates:
                draw, edge = self._random.random(), 0.0
                for kind, rate in self.plan.rates.items():
                    edge += rate
                    if draw < edge:
                        fault = kind
                        break
            return self._count(fault)

    def choose_for_upload(self) -> str | None:
        """The fault for the next upload: only script entries targeted ``@upload`` apply, and only the
        kinds that answer the HTTP exchange (429, 5xx, ingress 5xx, drop); others are used up unused."""
        with self._lock:
            scripted = next((e for e in self._script if e.partition("@")[2] == UPLOAD_TARGET), None)
            if scripted is None:
                return None
            self._script.remove(scripted)
            kind = scripted.partition("@")[0]
            return self._count(kind if kind in SUBMIT_FAULTS else None)

    def _count(self, fault: str | None) -> str | None:
        if fault:
            self.injected[fault] = self.injected.get(fault, 0) + 1
        return fault
