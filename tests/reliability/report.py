"""The figures of the process-level scenarios (reliability R1–R9, security S1–S8) and
tests/reliability/REPORT.md rendered from them.

A scenario test is marked `@pytest.mark.scenario("R1")` and calls `record_figure("R1", ...)`
with what it measured: the figure is printed and appended as one JSON line to the figures
file (`VOCALBORN_FIGURES`, default `var/reliability/figures.jsonl`). This module is also a
pytest plugin (tests/conftest.py loads it): for every marked test it appends the test's
outcome, and at the end of a session that ran any, the session's scenario wall time.

    python -m tests.reliability.report [--figures PATH] [--output PATH]

renders every scenario id, the last figure and outcome of each (or "not run"), its date and
the scale its durations were run at.

The file's lines, for whoever writes them without this module (one JSON object a line):
    {"kind": "figure", "scenario": "S3", "part": "", "text": "...", "scale": "...",
     "description": "...", "numbers": {...}, "date": "2026-11-29T21:00:00+00:00"}
    {"kind": "outcome", "scenario": "S3", "test": "<nodeid>", "outcome": "passed", ...}
    {"kind": "run", "scenarios": [...], "tests": 9, "scenario_seconds": 300.0, ...}
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIGURES_ENV = "VOCALBORN_FIGURES"
DEFAULT_FIGURES = ROOT / "var" / "reliability" / "figures.jsonl"
REPORT = Path(__file__).resolve().parent / "REPORT.md"
MARKER = "scenario"

# Every scenario of issue 11, in the words. S1–S8 are the security scenarios; a figure
# may carry its own description, which then replaces the one here.
SCENARIOS: dict[str, str] = {
    "R1": "SIGKILL every worker with 100 tasks in flight, start new ones: 100/100 success, "
    "0 duplicate results, AI calls ≤ 2 per in-flight task; recovery time",
    "R2": "SIGTERM (a deploy) with tasks running: they finish within the grace or are handed "
    "back without spending a retry; none ends as failure",
    "R3": "Redis killed and restarted empty with 500 tasks queued and 20 running: all 520 "
    "complete, 0 duplicates, the workers never exit; the time until the queue is rebuilt "
    "(the reconciler re-enqueues from PostgreSQL, the outbox)",
    "R4": "PostgreSQL crash-restart (immediate shutdown, then start) under load: the API "
    "answers 503 with the error shape (never 500) during the outage, no task is stuck in "
    "processing afterwards, the workers never exit",
    "R5": "the API killed between commit and enqueue (a fault hook): the orphaned tasks are "
    "enqueued by the reconciler and complete",
    "R6": "AI service answering 503 for 60 s, or refusing connections for 30 s: nothing lost; "
    "the circuit opens within 5 failures; at most one probe per cool-down; all complete after "
    "recovery",
    "R7": "a poison recording kills the analyzer's pool process every time: the other tasks "
    "succeed without spending a retry, the analyzer heals each time, the poison task ends as "
    "failure after its retry budget with a readable message",
    "R8": "5,000 tasks through 2 workers with a 1 s AI: 5,000 success, 0 duplicates, 0 lost",
    "R9": "vocalborn up: each child killed in turn is restarted and a task submitted afterwards "
    "completes; Ctrl-C during a long analysis leaves no process (by PID and process group)",
    "L1": "priority lanes (issue 14): user A submits 200 tasks, then user B one: B's task "
    "starts within 3 task-durations of B's submit with 2 workers; a batch lane with 100 "
    "waiting tasks keeps completing tasks while interactive work keeps arriving",
    "S1": "schemathesis over the OpenAPI document with a user token and an admin token: "
    "0 server errors, 0 responses that violate the schema",
    "S2": "user B on user A's task, result, events, stream token, cancel, session and record: "
    "404, byte-identical to an unknown id",
    "S3": "every admin route, from the OpenAPI document: anonymous 401, user 403",
    "S4": "JWT matrix (alg none, HS256 signed with an RS public key, wrong key, expired, future "
    "nbf, wrong aud, wrong iss, missing exp, missing sub, malformed): 401 for each",
    "S5": "uploads: over the limit with and without Content-Length, wrong magic bytes, "
    "path-like and non-ASCII file names, a part without a filename, an empty part, two audio "
    "parts: the right 4xx (or a server-generated key); nothing written",
    "S6": "limits: per-user submit rate and open streams: 429 with Retry-After",
    "S7": "a tampered job payload written straight into Redis (pickle bytes, a wrong task id, "
    "garbage): rejected and logged; no code executed, no task touched",
    "S8": "refuses to start in production with a missing or weak JWT secret; the Dockerfile's "
    "final user is not root; a secret scan of the repository finds nothing",
}


def figures_path() -> Path:
    """Where figures are appended: `VOCALBORN_FIGURES` or var/reliability/figures.jsonl."""
    return Path(os.environ.get(FIGURES_ENV) or DEFAULT_FIGURES)


def _append(entry: dict[str, Any]) -> None:
    path = figures_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as out:  # one short write per line: O_APPEND
        out.write(json.dumps(entry, ensure_ascii=False) + "\n")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def record_figure(
    scenario_id: str,
    text: str,
    *,
    scale: str = "",
    part: str = "",
    description: str = "",
    **numbers: float | int | str,
) -> None:
    """Print a scenario's figure and append it to the figures file.

    `text`: the figure in words ("100/100 success, recovery 4.2 s"); `scale`: how its
    durations were shrunk ("lease 3 s instead of 30 s"); `part`: which variant of the
    scenario this is, when it has several ("503", "refused"), each reported; `description`:
    replaces the scenario's description in SCENARIOS (the security scenarios); `numbers`:
    the measured values, kept in the file for whoever wants them."""
    label = f"{scenario_id} {part}".strip()
    print(f"\n[{label}] {text}" + (f" (scale: {scale})" if scale else ""))
    _append(
        {
            "kind": "figure",
            "scenario": scenario_id,
            "part": part,
            "text": text,
            "scale": scale,
            "description": description,
            "numbers": numbers,
            "date": _now(),
        }
    )


def current_test() -> str:
    """The running test's name and parameters (`test_matrix[HS256]`), from pytest's
    PYTEST_CURRENT_TEST; "" outside a test. A part for `record_figure` when a scenario has
    one figure per test."""
    current = os.environ.get("PYTEST_CURRENT_TEST", "")
    return current.split("::")[-1].rsplit(" (", 1)[0]


# -- the pytest plugin ---------------------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_RUN] = _Run()


@dataclass
class _Run:
    started: float = field(default_factory=time.monotonic)
    seconds: float = 0.0
    ran: list[str] = field(default_factory=list)


_RUN = pytest.StashKey[_Run]()


def _scenario_of(item: pytest.Item) -> str | None:
    marker = item.get_closest_marker(MARKER)
    return str(marker.args[0]) if marker and marker.args else None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report: pytest.TestReport = yield
    scenario = _scenario_of(item)
    if scenario is None:
        return report
    run = item.config.stash[_RUN]
    run.seconds += report.duration
    # The call's outcome, and a setup's or teardown's failure (a process that would not
    # start or stop fails the scenario too).
    if report.when == "call" or report.failed:
        _append(
            {
                "kind": "outcome",
                "scenario": scenario,
                "test": item.nodeid,
                "outcome": report.outcome,
                "seconds": round(report.duration, 1),
                "date": _now(),
            }
        )
    if report.when == "call":
        run.ran.append(scenario)
    return report


def pytest_sessionfinish(session: pytest.Session) -> None:
    run = session.config.stash.get(_RUN, None)
    if run is None or not run.ran:
        return
    _append(
        {
            "kind": "run",
            "scenarios": sorted(set(run.ran), key=_order),
            "tests": len(run.ran),
            "scenario_seconds": round(run.seconds, 1),
            "wall_seconds": round(time.monotonic() - run.started, 1),
            "date": _now(),
        }
    )


# -- the report ------------------------------------------------------------------------------


def _order(scenario: str) -> tuple[int, int]:
    return ("RS".find(scenario[0]), int(scenario[1:]) if scenario[1:].isdigit() else 99)


def read_entries(path: Path) -> list[dict[str, Any]]:
    """The figures file's entries in order (a line that does not parse is skipped)."""
    if not path.exists():
        return []
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return entries


def render(entries: list[dict[str, Any]], note: str = "") -> str:
    """REPORT.md: one row per scenario id (every one of SCENARIOS, and any other recorded),
    per recorded part: its last figure, the last outcome of its tests, the date, the scale.
    `note`: a paragraph under the introduction (the machine, the command)."""
    figures: dict[tuple[str, str], dict[str, Any]] = {}
    outcomes: dict[str, dict[str, str]] = {}
    runs = [entry for entry in entries if entry.get("kind") == "run"]
    for entry in entries:
        if entry.get("kind") == "figure":
            figures[(entry["scenario"], entry.get("part", ""))] = entry
        elif entry.get("kind") == "outcome":
            outcomes.setdefault(entry["scenario"], {})[entry["test"]] = entry["outcome"]
    ids = sorted(set(SCENARIOS) | {scenario for scenario, _ in figures}, key=_order)
    lines = [
        "# Reliability and security scenarios: the last run",
        "",
        "Process-level scenarios (issue 11): real processes (the API under uvicorn, workers "
        "as deployed (`python -m worker`), the fake AI service or the analyzer, PostgreSQL, "
        "Redis), faults injected, processes stopped by PID. Generated by `uv run python -m "
        "tests.reliability.report` from the figures the scenarios recorded (the figures file, "
        "`var/reliability/figures.jsonl` unless `VOCALBORN_FIGURES` names another); run them "
        "with `uv run pytest -m scenario -s` (README, *Run the tests*). Durations are shrunk "
        "through settings: each row's scale says how.",
        "",
    ]
    if note:
        lines += [note, ""]
    if runs:
        last = runs[-1]
        lines += [
            f"Last run: {last['date']}: {last['tests']} scenario tests "
            f"({', '.join(last['scenarios'])}), {last['scenario_seconds']:g} s in the "
            f"scenarios, {last['wall_seconds']:g} s of pytest's session.",
            "",
        ]
    lines += [
        "| Scenario | What | Figure | Outcome | Run | Scale |",
        "|---|---|---|---|---|---|",
    ]
    for scenario in ids:
        parts = sorted(part for s, part in figures if s == scenario)
        verdicts = set(outcomes.get(scenario, {}).values())
        outcome = (
            "failed" if "failed" in verdicts else ", ".join(sorted(verdicts)) if verdicts else "—"
        )
        if not parts:
            what = _cell(SCENARIOS.get(scenario, ""))
            lines.append(f"| {scenario} | {what} | not run | {outcome} | — | — |")
            continue
        for index, part in enumerate(parts):
            entry = figures[(scenario, part)]
            # The description once per scenario (its other parts' rows leave it blank).
            described = entry.get("description") or SCENARIOS.get(scenario, "")
            what = _cell(described) if index == 0 else ""
            label = f"{scenario} ({part})" if part else scenario
            lines.append(
                f"| {label} | {what} | {_cell(entry['text'])} | {outcome} | "
                f"{entry['date'][:10]} | {_cell(entry.get('scale') or '—')} |"
            )
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Render tests/reliability/REPORT.md")
    parser.add_argument("--figures", type=Path, default=None, help="the figures file")
    parser.add_argument("--output", type=Path, default=REPORT, help="where to write it")
    parser.add_argument("--note", default="", help="a paragraph: the machine, the command")
    args = parser.parse_args(argv)
    path = args.figures or figures_path()
    args.output.write_text(render(read_entries(path), args.note), encoding="utf-8")
    print(f"{args.output} written from {path}")


if __name__ == "__main__":
    main()
