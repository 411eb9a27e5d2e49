"""The engine: from a checked pipeline to ledger rows, without Prefect.

* :mod:`~klingflow.engine.options`: :class:`RunOptions` and the one resolution of them;
* :mod:`~klingflow.engine.hooks`: :class:`RunHooks`, how the CLI and Prefect take part in a run;
* :mod:`~klingflow.engine.context`: what the steps of one run share (cache, backend, cap);
* :mod:`~klingflow.engine.generation`: one fal request: claim, submit or resume, poll, download;
* :mod:`~klingflow.engine.operation`: one local media operation, cached the same way;
* :mod:`~klingflow.engine.runner`: the DAG scheduler;
* :mod:`~klingflow.engine.approval`: approval gates: who decides before a step is paid for;
* :mod:`~klingflow.engine.interrupts`: Ctrl-C / SIGTERM: stop submitting, keep what was paid;
* :mod:`~klingflow.engine.plan`: the plan as data, and the budget check;
* :mod:`~klingflow.engine.recording`: ledger rows, manifest, contact sheet and report of a run
  (and a recorded run read back, and linked to the flow run that shows it afterwards);
* :mod:`~klingflow.engine.recover`: paid requests no cache entry holds, fetched while fal keeps them;
* :mod:`~klingflow.engine.verify`: every stored output hashed; bad ones fetched again from fal;
* :mod:`~klingflow.engine.housekeeping`: ``klingflow gc``, what no kept run and no open request needs;
* :mod:`~klingflow.engine.run`: check → plan → budget → execute → export → record (``run_checked``:
  the last three, on a context a batch shares between its rows).
"""

from klingflow.engine.approval import (
    ApprovalDecision,
    ApprovalRequest,
    Asker,
    ask_on_terminal,
    has_terminal,
    with_approvals,
)
from klingflow.engine.context import Logger
from klingflow.engine.hooks import RunHooks, StepCall, StepInfo
from klingflow.engine.housekeeping import Collected, collect_garbage
from klingflow.engine.interrupts import STOP, OpenRequest, StopRequest, stop_on_signals
from klingflow.engine.options import (
    BUILT_IN,
    FLOW_OPTIONS,
    RetryPolicy,
    RunOptions,
    ambiguous_submit_policy,
    resolve_options,
)
from klingflow.engine.plan import Plan, PlannedStep, check_budget, fully_cached, make_plan
from klingflow.engine.recording import FLOW_RUN_PARAMETERS, link_flow_run, recorded_run
from klingflow.engine.recover import Recovered, recover
from klingflow.engine.run import (
    arun,
    context_for,
    export_outputs,
    plan_pipeline,
    prepare,
    run_checked,
    with_block_arguments,
)
from klingflow.engine.runner import RunResult, execute, upstream_labels
from klingflow.engine.verify import Verified, verify_store

__all__ = [
    "ApprovalDecision",
    "ApprovalRequest",
    "Asker",
    "ask_on_terminal",
    "has_terminal",
    "with_approvals",
    "BUILT_IN",
    "FLOW_OPTIONS",
    "Collected",
    "FLOW_RUN_PARAMETERS",
    "Logger",
    "OpenRequest",
    "STOP",
    "StopRequest",
    "Plan",
    "PlannedStep",
    "RetryPolicy",
    "RunHooks",
    "RunOptions",
    "Recovered",
    "RunResult",
    "StepCall",
    "StepInfo",
    "ambiguous_submit_policy",
    "arun",
    "check_budget",
    "collect_garbage",
    "context_for",
    "execute",
    "export_outputs",
    "fully_cached",
    "link_flow_run",
    "make_plan",
    "plan_pipeline",
    "prepare",
    "recorded_run",
    "recover",
    "resolve_options",
    "run_checked",
    "stop_on_signals",
    "Verified",
    "upstream_labels",
    "verify_store",
    "with_block_arguments",
]
