"""Rows of the tables, their medians and spread, and bench/RESULTS.md.

A row is one measure of one scenario: ours and (when there is one) the baseline, one value per
round. The table shows each side's median, the ratio ours/baseline of each back-to-back
pair (median, and min–max as the spread), the goal and whether the median meets it. In a
quick run the sizes are not the issue's, so "met" is shown in parentheses: an indication,
never a verdict.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from bench.harness import BENCH, ROOT

RESULTS_MD = BENCH / "RESULTS.md"
RESULTS_JSON = BENCH / "results" / "latest.json"

Sense = Literal["<=", ">="]


@dataclass(frozen=True)
class Goal:
    """`on`: the ratio (ours/baseline) or ours' own value must be `sense` `target`."""

    on: Literal["ratio", "value"]
    sense: Sense
    target: float
    text: str = ""

    def met(self, value: float) -> bool:
        if math.isnan(value):
            return False
        return value <= self.target if self.sense == "<=" else value >= self.target

    def describe(self, unit: str) -> str:
        if self.text:
            return self.text
        suffix = "×" if self.on == "ratio" else (f" {unit}" if unit else "")
        return f"{self.sense} {self.target:g}{suffix}"


@dataclass
class Row:
    scenario: str
    metric: str
    ours: list[float]
    baseline: list[float] | None = None
    baseline_name: str = ""
    unit: str = ""
    goal: Goal | None = None
    note: str = ""

    def ours_median(self) -> float:
        return _median(self.ours)

    def baseline_median(self) -> float | None:
        return _median(self.baseline) if self.baseline else None

    def ratios(self) -> list[float]:
        if not self.baseline:
            return []
        return [_ratio(o, b) for o, b in zip(self.ours, self.baseline, strict=False)]

    def ratio_median(self) -> float | None:
        ratios = self.ratios()
        return _median(ratios) if ratios else None

    def judged(self) -> float | None:
        if self.goal is None:
            return None
        return self.ratio_median() if self.goal.on == "ratio" else self.ours_median()

    def met(self) -> bool | None:
        value = self.judged()
        if self.goal is None or value is None:
            return None
        return self.goal.met(value)


@dataclass
class Section:
    """One scenario's rows and notes, with the run that measured them."""

    name: str
    title: str
    rows: list[Row]
    notes: list[str] = field(default_factory=list)
    run: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def _median(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return statistics.median(finite) if finite else float("nan")


def _ratio(ours: float, baseline: float) -> float:
    if baseline == 0 or math.isnan(baseline) or math.isnan(ours):
        return float("nan")
    return ours / baseline


def _number(value: float | None, unit: str = "") -> str:
    if value is None:
        return "–"
    if math.isnan(value):
        return "n/a"
    if math.isinf(value):
        return "∞"
    magnitude = abs(value)
    if value.is_integer() and magnitude < 1e9:
        text = f"{int(value):,}"
    elif magnitude >= 1000:
        text = f"{value:,.0f}"
    elif magnitude >= 100:
        text = f"{value:.0f}"
    elif magnitude >= 10:
        text = f"{value:.1f}"
    elif magnitude >= 1 or magnitude == 0:
        text = f"{value:.2f}"
    else:
        text = f"{value:.3g}"
    return f"{text} {unit}".rstrip()


def _ratio_text(row: Row) -> str:
    ratios = [r for r in row.ratios() if not math.isnan(r)]
    if not ratios:
        return "–"
    median = _median(ratios)
    text = f"{_ratio_number(median)}×"
    if len(ratios) > 1:
        text += f" ({_ratio_number(min(ratios))}–{_ratio_number(max(ratios))})"
    return text


def _ratio_number(value: float) -> str:
    return f"{value:.3f}" if abs(value) < 0.1 else f"{value:.2f}"


def _spread(values: Sequence[float], unit: str) -> str:
    finite = [v for v in values if not math.isnan(v)]
    text = _number(_median(values), unit)
    if len(finite) > 1 and min(finite) != max(finite):
        text += f" ({_number(min(finite))}–{_number(max(finite))})"
    return text


def render_section(section: Section, *, quick: bool) -> str:
    lines = [
        "| case | measure | ours | baseline | ratio | goal | met |",
        "|---|---|---|---|---|---|---|",
    ]
    previous = ""
    for row in section.rows:
        case = row.scenario if row.scenario != previous else ""
        previous = row.scenario
        baseline = "–"
        if row.baseline:
            baseline = _spread(row.baseline, row.unit)
            if row.baseline_name:
                baseline += f" ({row.baseline_name})"
        met = row.met()
        verdict = "" if met is None else ("yes" if met else "**no**")
        if quick and met is not None:
            verdict = f"({'yes' if met else 'no'})"
        goal = row.goal.describe(row.unit) if row.goal else ""
        metric = row.metric + (f" — {row.note}" if row.note else "")
        ours = _spread(row.ours, row.unit)
        lines.append(
            f"| {case} | {metric} | {ours} | {baseline} | {_ratio_text(row)} | {goal} | {verdict} |"
        )
    text = "\n".join(lines)
    if section.notes:
        text += "\n\n" + "\n".join(f"- {note}" for note in section.notes)
    return text


# -- the run's description ---------------------------------------------------------------------
def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30),
    }


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def git_revision() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "app", "worker"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" + uncommitted changes in app/ or worker/" if dirty else "")


def run_info(command: str, *, quick: bool, load_before: str) -> dict[str, Any]:
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command,
        "quick": quick,
        "revision": git_revision(),
        "load_before": load_before,
        "load_after": load_average(),
        "machine": machine(),
    }


def describe_run(run: dict[str, Any]) -> str:
    m = run["machine"]
    kind = "QUICK run (small sizes; not the issue's measurement)" if run["quick"] else "full run"
    return (
        f"{kind}: `{run['command']}` on {run['date']}, code at {run['revision']}; "
        f"{m['nproc']} cores ({m['cpu']}), {m['memory_gib']} GiB, Linux {m['kernel']}, "
        f"Python {m['python']}; load average (1/5/15 min) {run['load_before']} before, "
        f"{run['load_after']} after"
    )


# -- bench/RESULTS.md ----------------------------------------------------------------------------
def write_results(sections: list[Section], order: Sequence[str]) -> None:
    """Merge these sections into bench/results/latest.json (a scenario not run now keeps its
    last measurement, with its own run line) and render bench/RESULTS.md from it."""
    stored: dict[str, Any] = {}
    if RESULTS_JSON.exists():
        stored = json.loads(RESULTS_JSON.read_text()).get("sections", {})
    for section in sections:
        stored[section.name] = {
            "title": section.title,
            "rows": [asdict(row) for row in section.rows],
            "notes": section.notes,
            "run": section.run,
            "seconds": section.seconds,
        }
    RESULTS_JSON.parent.mkdir(exist_ok=True)
    RESULTS_JSON.write_text(json.dumps({"sections": stored}, indent=1, allow_nan=True) + "\n")
    parts = [
        "# Benchmark results",
        "",
        "Written by `uv run python -m bench --write` (see README.md here for what each "
        "scenario measures and how). Ratios are ours / baseline per round, median and "
        "(min–max) over the rounds; values are medians (min–max). In a quick run the "
        "verdicts are in parentheses: its sizes are not the issue's. Where a goal is not met, "
        "PROFILES.md here shows where the time goes (py-spy, `--profile`).",
    ]
    quick = sorted(name for name, entry in stored.items() if entry["run"].get("quick"))
    if quick:
        parts += [
            "",
            f"**Quick-run tables** ({', '.join(quick)}): small sizes and one round, not the "
            "issue's measurement; the full one is `uv run python -m bench --write` on a quiet "
            "machine.",
        ]
    for name in [*order, *sorted(set(stored) - set(order))]:
        if name not in stored:
            continue
        entry = stored[name]
        rows = [_row_from(row) for row in entry["rows"]]
        section = Section(name, entry["title"], rows, entry["notes"], entry["run"])
        parts += [
            "",
            f"## {entry['title']} (`--only {name}`)",
            "",
            describe_run(entry["run"]) + f"; the scenario took {entry['seconds']:.0f} s.",
            "",
            render_section(section, quick=bool(entry["run"].get("quick"))),
        ]
    RESULTS_MD.write_text("\n".join(parts) + "\n")


def _row_from(data: dict[str, Any]) -> Row:
    goal = Goal(**data["goal"]) if data.get("goal") else None
    return Row(**(data | {"goal": goal}))
