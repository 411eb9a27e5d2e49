"""A run report people can look at: one self-contained HTML file per run.

The page holds the final cut at the top, the DAG drawn as an SVG with steps coloured by status,
a card per step execution with its clip playable in place (prompt, settings, cost, timings,
cache status, request id, error) and the ledger table. CSS and script are inline and media are
linked by relative path, so it opens from disk with no server, no CDN and no internet. A small
inline script checks that the browser can decode each clip and marks it ``data-playable``.

Example::

    from klingflow import ledger
    from klingflow.report import write_report
    from klingflow.ledger import load_manifest

    manifest = load_manifest("3f2a")
    write_report(manifest, ledger.load(run=manifest.run_id), Path("report.html"))
"""

from __future__ import annotations

from klingflow.report._dag import STATUS_COLOURS, dag_svg, step_status
from klingflow.report._media import media_element, media_kind, media_url
from klingflow.report._page import render_report, write_report

__all__ = [
    "STATUS_COLOURS",
    "dag_svg",
    "media_element",
    "media_kind",
    "media_url",
    "render_report",
    "step_status",
    "write_report",
]
