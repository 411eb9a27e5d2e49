"""The report page: one HTML file with its CSS and script inline, media linked from disk.

Top to bottom: the run's numbers, the final cut, the DAG, failures, a card per step execution
(clip, prompt, settings, cost, timings, cache status, request id, error), the contact sheet and
the ledger table. Every value from the run (prompts are user text, errors are server text) is
escaped; the page refers to no URL outside the local disk, so it opens with no server and no
internet, and a hostile prompt cannot inject markup.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from html import escape
from importlib.resources import files
from pathlib import Path
from typing import Any

import pandas as pd

from klingflow._files import atomic_write
from klingflow.ledger import LEDGER_SCHEMA_VERSION, RunManifest, Status, spend_label, step_label, to_records
from klingflow.report._dag import STATUS_COLOURS, dag_svg, step_status
from klingflow.report._media import media_element, media_kind, media_url

__all__ = ["render_report", "write_report"]

_TABLE = [
    ("step", "step"),
    ("status", "status"),
    ("endpoint", "endpoint"),
    ("estimated_cost_usd", "cost"),
    ("cost_usd", "billed"),
    ("queue_seconds", "queue s"),
    ("run_seconds", "run s"),
    ("attempts", "attempts"),
    ("duration_s", "length s"),
    ("size", "size"),
    ("request_id", "request id"),
    ("error", "error"),
]


def _asset(name: str) -> str:
    return files("klingflow.report").joinpath("_assets", name).read_text(encoding="utf-8")


def _money(value: float | None) -> str:
    return "–" if value is None else f"${value:,.3f}"


def _seconds(value: float | None) -> str:
    return "–" if value is None else f"{value:,.1f} s"


def _short_endpoint(endpoint: str | None) -> str:
    return (endpoint or "").removeprefix("fal-ai/kling-video/")


def _arguments(text: str | None) -> str:
    try:
        return json.dumps(json.loads(text or "{}"), indent=2, ensure_ascii=False)
    except ValueError:
        return text or ""


def _stat(value: str, label: str) -> str:
    return f'<div class="stat"><b>{escape(value)}</b><span>{escape(label)}</span></div>'


def _header(manifest: RunManifest, rows: list[dict[str, Any]]) -> str:
    spend = spend_label(r["estimated_cost_usd"] for r in rows)
    billed = [r["cost_usd"] for r in rows if r.get("cost_usd") is not None]
    cached = sum(r["status"] == Status.CACHED for r in rows)
    failed = sum(r["status"] == Status.FAILED for r in rows)
    queues = sorted(r["queue_seconds"] for r in rows if r["queue_seconds"] is not None)
    took = (
        _seconds((manifest.finished_at - manifest.started_at).total_seconds())
        if manifest.started_at and manifest.finished_at
        else "–"
    )
    started = f"{manifest.started_at:%Y-%m-%d %H:%M:%S} UTC" if manifest.started_at else "unknown time"
    source = f" · file <code>{escape(manifest.pipeline_file)}</code>" if manifest.pipeline_file else ""
    flow = f" · flow run <code>{escape(manifest.flow_run_id)}</code>" if manifest.flow_run_id else ""
    stats = [
        _stat(manifest.status, "status"),
        _stat(str(len(rows)), "step runs"),
        _stat(spend, "estimated spend"),
        _stat(_money(sum(billed)) if billed else "–", "billed by fal"),
        _stat(f"{cached}/{len(rows)}" if rows else "0", "cache hits"),
        _stat(str(failed), "failed"),
        _stat(took, "wall time"),
        _stat(_seconds(queues[len(queues) // 2]) if queues else "–", "median queue"),
    ]
    return (
        f"<header><h1>{escape(manifest.pipeline)}</h1>"
        f'<div class="meta">run <code>{escape(manifest.run_id)}</code>{flow} · {escape(started)}'
        f"{source}</div>"
        f'<div class="stats">{"".join(stats)}</div></header>'
    )


def _final(manifest: RunManifest, folder: Path) -> str:
    """The final outputs, videos first: the first video (the final cut) large, the rest beside it."""
    if not manifest.final:
        return ""
    rank = {"video": 0, "image": 1, "audio": 2}
    finals = sorted(manifest.final.items(), key=lambda item: rank.get(media_kind(item[1]) or "", 3))
    figures = []
    for index, (name, shown) in enumerate(finals):
        source = manifest.final_sources.get(name)
        path = source if source and Path(source).is_file() else shown
        element = media_element(path, folder, label=f"final {name}", badge=f"final-{index}")
        role = "primary" if index == 0 else "secondary"
        caption = f"<figcaption>{escape(name)}: {escape(shown)}</figcaption>"
        figures.append(f'<figure class="{role}">{element}{caption}</figure>')
    return f'<section id="final"><h2>Final cut</h2><div class="final">{"".join(figures)}</div></section>'


def _dag(manifest: RunManifest, rows: list[dict[str, Any]]) -> str:
    by_step: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_step.setdefault(row["step_id"], []).append(row)
    status = {step: step_status([r["status"] for r in by_step.get(step, [])]) for step in manifest.order}
    captions = {}
    for step in manifest.order:
        items = by_step.get(step, [])
        estimates = [r["estimated_cost_usd"] for r in items]
        count = f"×{len(items)} " if len(items) > 1 else ""
        priced = manifest.kinds.get(step) == "endpoint" and any(e != 0 for e in estimates)
        price = f" · {spend_label(estimates)}" if priced else ""
        captions[step] = f"{count}{manifest.uses.get(step, status[step])}{price}"
    legend = "".join(
        f'<span><i style="background:{colour}"></i>{escape(name)}</span>'
        for name, colour in STATUS_COLOURS.items()
        if name != "not run"
    )
    svg = dag_svg(manifest.order, manifest.dependencies, status, captions)
    return (
        f'<section id="pipeline"><h2>Pipeline</h2><div class="panel dag">{svg}'
        f'<div class="legend">{legend}</div></div></section>'
    )


def _failures(manifest: RunManifest) -> str:
    if not manifest.failures:
        return ""
    items = "".join(
        f'<li><b>{escape(step)}</b><pre class="error">{escape(reason)}</pre></li>'
        for step, reason in manifest.failures.items()
    )
    return f'<section id="failures"><h2>What failed</h2><div class="panel"><ul>{items}</ul></div></section>'


_CACHE_FACTS = {
    Status.CACHED: "hit (reused, not paid again)",
    Status.JOINED: "joined a request another run had submitted (not paid again)",
    Status.COMPLETED: "miss (generated)",
}
"""The cache line of a step card; failed and skipped steps have none."""


def _billed(row: dict[str, Any]) -> str | None:
    """What fal billed for a row: its units and their cost, when fal said."""
    if row.get("cost_usd") is None:
        return None
    return f"{_money(row['cost_usd'])} ({row['billable_units']:g} units)"


def _facts(row: dict[str, Any]) -> str:
    size = f"{row['width']}×{row['height']}" if row["width"] and row["height"] else None
    cache = _CACHE_FACTS.get(row["status"])
    facts = [
        ("cost", _money(row["estimated_cost_usd"]) if row["kind"] == "endpoint" else "local operation"),
        ("billed", _billed(row)),
        ("billing", row.get("billing_note")),
        ("queue", _seconds(row["queue_seconds"])),
        ("run", _seconds(row["run_seconds"])),
        ("attempts", row["attempts"]),
        ("cache", cache),
        ("cache key", (row["cache_key"] or "")[:16] or None),
        ("request id", row["request_id"]),
        ("backend", row["backend"]),
        ("length", _seconds(row["duration_s"]) if row["duration_s"] is not None else None),
        ("size", size),
        ("fps", f"{row['fps']:g}" if row["fps"] else None),
        ("audio", {True: "yes", False: "no"}.get(row["has_audio"])),
        ("started", row["started_at"]),
        ("finished", row["finished_at"]),
        ("sha256", (row["sha256"] or "")[:16] or None),
        ("file", row["output_path"]),
    ]
    cells = "".join(f"<dt>{escape(k)}</dt><dd>{escape(str(v))}</dd>" for k, v in facts if v is not None)
    return f"<dl>{cells}</dl>"


def _card(row: dict[str, Any], folder: Path, index: int) -> str:
    label, status = step_label(row), row["status"] or "unknown"
    anchor = f' id="step-{escape(row["step_id"])}"' if not row.get("item_index") else ""
    prompt = f"<blockquote>{escape(row['prompt'])}</blockquote>" if row["prompt"] else ""
    error = f'<pre class="error">{escape(row["error"])}</pre>' if row["error"] else ""
    element = media_element(row["output_path"], folder, label=label, badge=f"clip-{index}")
    return (
        f'<article class="step {escape(status)}"{anchor}>'
        f'<h3>{escape(label)} <span class="pill {escape(status)}">{escape(status)}</span>'
        f"<small>{escape(_short_endpoint(row['endpoint']))}</small></h3>"
        f"{element}{prompt}{error}{_facts(row)}"
        "<details><summary>settings (arguments sent)</summary>"
        f"<pre>{escape(_arguments(row['arguments']))}</pre></details></article>"
    )


def _cell(row: dict[str, Any], name: str) -> str:
    if name == "step":
        value: Any = step_label(row)
    elif name == "size":
        value = f"{row['width']}×{row['height']}" if row["width"] and row["height"] else ""
    elif name == "endpoint":
        value = _short_endpoint(row["endpoint"])
    elif name in ("estimated_cost_usd", "cost_usd"):
        value = _money(row[name]) if row[name] is not None else "–"
    elif name == "error":
        value = (row[name] or "").splitlines()[0][:160] if row[name] else ""
    else:
        value = row[name]
        value = f"{value:,.2f}" if isinstance(value, float) else ("" if value is None else value)
    numeric = name in (
        "estimated_cost_usd",
        "cost_usd",
        "queue_seconds",
        "run_seconds",
        "attempts",
        "duration_s",
    )
    return f"<td{' class=num' if numeric else ''}>{escape(str(value))}</td>"


def _ledger_table(rows: list[dict[str, Any]]) -> str:
    head = "".join(f"<th>{escape(title)}</th>" for _, title in _TABLE)
    body = "".join("<tr>" + "".join(_cell(row, name) for name, _ in _TABLE) + "</tr>" for row in rows)
    return (
        '<section id="ledger"><h2>Ledger</h2><div class="table-wrap"><table class="ledger">'
        f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div></section>"
    )


def render_report(manifest: RunManifest, frame: pd.DataFrame, folder: Path) -> str:
    """The report page as text, for a file in ``folder`` (media links are relative to it)."""
    rows = to_records(frame)
    cards = "".join(_card(row, folder, index) for index, row in enumerate(rows))
    sheet = ""
    if manifest.contact_sheet and Path(manifest.contact_sheet).is_file():
        url = escape(media_url(manifest.contact_sheet, folder))
        sheet = (
            '<section id="contact-sheet"><h2>Contact sheet</h2><div class="panel sheet">'
            f'<img src="{url}" alt="contact sheet of every clip"></div></section>'
        )
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(manifest.pipeline)} · run {escape(manifest.run_id)} · klingflow</title>"
        f"<style>{_asset('report.css')}</style></head><body>"
        f"{_header(manifest, rows)}<main>{_final(manifest, folder)}{_dag(manifest, rows)}"
        f'{_failures(manifest)}<section id="steps"><h2>Steps</h2><div class="steps">{cards}</div></section>'
        f"{sheet}{_ledger_table(rows)}</main>"
        f"<footer>klingflow report · ledger schema {LEDGER_SCHEMA_VERSION} · generated {generated} · "
        f"regenerate with <code>klingflow report {escape(manifest.run_id)}</code></footer>"
        f"<script>{_asset('report.js')}</script></body></html>"
    )


def write_report(manifest: RunManifest, frame: pd.DataFrame, out: Path) -> Path:
    """Write the report to ``out`` atomically (a reader never sees half a page) and return ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(out, render_report(manifest, frame, out.parent), durable=False)
