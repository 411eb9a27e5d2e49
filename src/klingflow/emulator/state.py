"""What every route of the emulator shares: key, options, queue, faults, files and counters."""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from klingflow.emulator.faults import FaultPlan, Faults
from klingflow.emulator.jobs import JobRunner
from klingflow.emulator.options import EmulatorOptions
from klingflow.emulator.queue import EmulatedRequest, RequestQueue
from klingflow.emulator.webhooks import WebhookSender

__all__ = ["EmulatorState", "StoredUpload"]


@dataclass
class StoredUpload:
    """One uploaded file: where it lives and how long it may (``ttl`` None: the server default)."""

    path: Path
    created_at: float
    ttl: float | None


class EmulatorState:
    """Everything the routes share: key, queue, faults, options, counters and where files live."""

    def __init__(
        self,
        *,
        key: str,
        data_dir: Path,
        run_ports: set[int],
        workers: int,
        latency: float,
        faults: FaultPlan,
        fetch_remote: bool,
        options: EmulatorOptions | None = None,
        files_base: str | None = None,
    ) -> None:
        self.key = key
        self.data_dir = data_dir
        self.run_ports = run_ports
        self.startup_options = options or EmulatorOptions()
        self.options = self.startup_options.model_copy()
        self.files_base = files_base
        self.jobs = JobRunner(data_dir, fetch_remote=fetch_remote, options=lambda: self.options)
        self.queue = RequestQueue(render=self.jobs, workers=workers, latency=latency)
        self.faults = Faults(faults)
        self.webhooks = WebhookSender(lambda: self.options)
        self.uploads: dict[str, StoredUpload] = {}
        self.cdn_tokens: set[str] = set()
        self.submits: Counter[str] = Counter()
        self.runs: Counter[str] = Counter()
        self.counts: Counter[str] = Counter()
        self.model_changes: dict[str, dict[str, Any]] = {}
        """Schema and price changes the platform API answers (``POST /_emulator/models``; tests)."""

    def stats(self) -> dict[str, Any]:
        """Counters tests read to prove what the emulator received."""
        return {
            "submits": dict(self.submits),
            "runs": dict(self.runs),
            "total_submits": sum(self.submits.values()) + sum(self.runs.values()),
            "cancels": self.counts["cancels"],
            "status_polls": self.counts["status_polls"],
            "status_streams": self.counts["status_streams"],
            "status_streams_cut": self.counts["status_streams_cut"],
            "uploads": self.counts["uploads"],
            "storage_tokens": self.counts["storage_tokens"],
            "upload_initiates": self.counts["upload_initiates"],
            "upload_parts": self.counts["upload_parts"],
            "platform_requests": self.counts["platform_requests"],
            "webhooks": dict(self.webhooks.counts),
            "faults_injected": dict(self.faults.injected),
            "open": self.queue.open_count(),
            "max_open": self.queue.max_open,
            "completed": sum(1 for r in self.queue.requests.values() if r.status == "COMPLETED"),
            "prerendered_stock_renders": self.jobs.prerendered.renders,
        }

    def reset(self) -> None:
        """Zero the counters, put back the options the server started with and drop the model changes
        (requests and files stay)."""
        self.model_changes.clear()
        self.submits.clear()
        self.runs.clear()
        self.counts.clear()
        self.webhooks.counts.clear()
        self.faults.injected.clear()
        self.queue.max_open = self.queue.open_count()
        self.options = self.startup_options.model_copy()

    def result_expired(self, request: EmulatedRequest) -> bool:
        """True once fal would have dropped the result: 1 h after completion, 6 min if >= 10 KB."""
        if request.status != "COMPLETED" or request.completed_at is None:
            return False
        size = len(json.dumps(request.result if request.result is not None else {"detail": request.error}))
        options = self.options
        keep = (
            options.large_result_retention if size >= options.large_result_bytes else options.result_retention
        )
        return time.time() > request.completed_at + keep

    def file_expired(self, relative: PurePosixPath) -> bool:
        """True once a file under /files has outlived its lifecycle (request header or server default)."""
        parts = relative.parts
        now = time.time()
        if len(parts) > 1 and parts[0] == "uploads" and parts[1] in self.uploads:
            upload = self.uploads[parts[1]]
            ttl = upload.ttl or self.options.media_expiry
            return ttl is not None and now > upload.created_at + ttl
        owner = self.queue.requests.get(parts[0]) if parts else None
        if owner is None or owner.completed_at is None:
            return False
        ttl = owner.media_ttl or self.options.media_expiry
        return ttl is not None and now > owner.completed_at + ttl
