"""Terminal output of the client: progress fields, the scores table, plain status lines."""

from __future__ import annotations

import re
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from app.client.api import Doc

SCORES = (
    ("overall_score", "Overall 總分"),
    ("pronunciation_accuracy", "Pronunciation 發音"),
    ("fluency_score", "Fluency 流暢度"),
    ("rhythm_score", "Rhythm 節奏"),
)
NOT_MEASURED = "not measured"
ISO_DURATION = re.compile(
    r"^P(?:(?P<d>\d+(?:\.\d+)?)D)?(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<m>\d+(?:\.\d+)?)M)?"
    r"(?:(?P<s>\d+(?:\.\d+)?)S)?)?$"
)


def duration_seconds(value: str | None) -> float | None:
    """An ISO 8601 duration as the API writes it (`PT4S`, `PT1M5S`) in seconds."""
    match = ISO_DURATION.match(value or "")
    if not value or match is None:
        return None
    d, h, m, s = (float(match[k] or 0) for k in ("d", "h", "m", "s"))
    return ((d * 24 + h) * 60 + m) * 60 + s


def eta_text(doc: Doc) -> str:
    seconds = duration_seconds(doc.get("estimated_remaining_time"))
    if seconds is None or doc.get("status") not in ("pending", "processing", "retry"):
        return ""
    minutes, secs = divmod(round(seconds), 60)
    return f"ETA {minutes}m{secs:02d}s" if minutes else f"ETA {secs}s"


def step_text(doc: Doc) -> str:
    step = doc.get("current_step") or {}
    label = str(step.get("label", ""))
    if doc.get("status") == "pending" and doc.get("queue_position"):
        return f"{label} (queue position {doc['queue_position']})"
    return label


def status_line(name: str, doc: Doc) -> str:
    """One plain line per change, for logs and terminals without live display."""
    parts = [f"{name}: {doc['status']}", step_text(doc), f"{doc.get('progress', 0)}%"]
    eta = eta_text(doc)
    if eta:
        parts.append(eta)
    if doc.get("error_code"):
        parts.append(f"error {doc['error_code']}: {doc.get('error_message') or ''}".rstrip())
    return "  ".join(p for p in parts if p)


def score_reason(result: Doc, name: str) -> str:
    """Why a score is null, from `detailed_analysis` (analyzer/README.md)."""
    detailed: dict[str, Any] = result.get("detailed_analysis") or {}
    for source in (detailed.get("scores") or {}, detailed):
        entry = source.get(name) if isinstance(source, dict) else None
        if isinstance(entry, dict) and entry.get("reason"):
            return str(entry["reason"])
    if name == "overall_score":
        return "none of the scores it averages could be measured"
    return "no reason given"


def result_view(name: str, result: Doc) -> RenderableType:
    table = Table(title=f"{name}: scores (0-100)", title_justify="left")
    table.add_column("score")
    table.add_column("value", justify="right")
    table.add_column("note")
    for key, label in SCORES:
        value = result.get(key)
        if value is None:
            table.add_row(label, NOT_MEASURED, score_reason(result, key))
        else:
            table.add_row(label, f"{float(value):.1f}", "")
    parts: list[RenderableType] = [table]
    if result.get("suggestions"):
        parts.append(Text.assemble(("Suggestions 建議: ", "bold"), str(result["suggestions"])))
    areas = result.get("improvement_areas") or []
    if areas:
        parts.append(Text("Improvement areas 改進重點:", style="bold"))
        parts.extend(Text(f"  - {_area(area)}") for area in areas)
    return Group(*parts)


def _area(area: Any) -> str:
    if isinstance(area, dict):
        return ", ".join(str(v) for v in area.values())
    return str(area)


def status_view(doc: Doc) -> RenderableType:
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    doc = {"error_code": None} | doc
    rows = [
        ("task", doc.get("task_id")),
        ("status", doc.get("status")),
        ("step", step_text(doc)),
        ("progress", f"{doc.get('progress', 0)}%"),
        ("remaining", eta_text(doc)),
        ("retries", doc.get("retry_count")),
        (
            "error",
            f"{doc['error_code']}: {doc.get('error_message')}" if doc.get("error_code") else "",
        ),
        ("updated", doc.get("updated_at")),
    ]
    for key, value in rows:
        if value not in (None, ""):
            table.add_row(key, str(value))
    return table
