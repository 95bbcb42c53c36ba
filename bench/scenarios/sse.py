"""(h) Live-progress fan-out: bench/sse_fanout.py (issue 5), run as it is, as its own process
with its own servers; its JSON results become rows here. The full run is its default (1,000
and 2,000 clients, three rounds, goals at 2,000); the quick run a smoke run of 100 clients.
bench/README.md describes how it measures."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from bench.context import Context
from bench.harness import BENCH, child_env
from bench.report import Goal, Row, Section

NAME = "sse"
TITLE = "(h) Live-progress fan-out vs bare sse-starlette"
QUICK_ARGS = ["--clients", "100", "--rounds", "1", "--warmup", "1", "--measure", "2"]
GOAL_CLIENTS = 2000
RUN_TIMEOUT = 1800.0


async def run(ctx: Context) -> Section:
    # A full run with --write also updates sse_fanout.py's own results; a quick one never does.
    full_write = ctx.write and not ctx.quick
    results = BENCH / "results" / "sse_fanout.json" if full_write else ctx.workdir / "sse.json"
    results.unlink(missing_ok=True)
    argv = [sys.executable, str(BENCH / "sse_fanout.py"), "--results", str(results)]
    if ctx.quick:
        argv += QUICK_ARGS
    elif ctx.rounds_override is not None:
        argv += ["--rounds", str(ctx.rounds_override)]
    ctx.log(f"{NAME}: {' '.join(argv[1:])}")
    child = ctx.processes.start(NAME, argv, child_env({}))
    try:
        code = await asyncio.wait_for(asyncio.to_thread(child.popen.wait), RUN_TIMEOUT)
    finally:
        ctx.processes.stop(child, sig=2)  # SIGINT: it stops its own servers
    if not results.exists():
        raise RuntimeError(f"sse_fanout.py exited {code} without results:\n{child.output()}")
    return Section(NAME, TITLE, rows(json.loads(results.read_text())), notes(child.output()))


def rows(data: dict[str, Any]) -> list[Row]:
    scenarios = data["scenarios"]
    clients = max(s["clients"] for s in scenarios)

    def side(kind: str, key: str) -> list[float]:
        return [
            float(s[key])
            for s in sorted(scenarios, key=lambda s: s["round"])
            if s["kind"] == kind and s["clients"] == clients
        ]

    label = f"{clients:,} clients" + ("" if clients == GOAL_CLIENTS else " (goals: at 2,000)")
    table = [
        Row(
            label,
            "p99 publish→receipt",
            side("ours", "p99_ms"),
            side("bare", "p99_ms"),
            "bare",
            "ms",
            Goal("ratio", "<=", 1.5),
        ),
        Row(
            label,
            "server CPU per delivered event",
            side("ours", "server_cpu_us_per_event"),
            side("bare", "server_cpu_us_per_event"),
            "bare",
            "µs",
            Goal("ratio", "<=", 1.3),  # issue 12 (1.15 before)
        ),
        Row(
            label,
            "server RSS per connection",
            side("ours", "rss_per_connection_kib"),
            side("bare", "rss_per_connection_kib"),
            "bare",
            "KiB",
            Goal("ratio", "<=", 1.1),
        ),
        Row(
            label,
            "lost events",
            side("ours", "lost"),
            side("bare", "lost"),
            "bare",
            "",
            Goal("value", "<=", 0, "0"),
        ),
        Row(
            label,
            "Redis pub/sub connections",
            side("ours", "pubsub_connections"),
            None,
            unit="",
            goal=Goal("value", "<=", 1, "1"),
        ),
        Row(
            label,
            "load generator CPU (share of a core)",
            side("ours", "loadgen_core_fraction"),
            side("bare", "loadgen_core_fraction"),
            "bare",
        ),
    ]
    return table


def notes(output: str) -> list[str]:
    lines = [line for line in output.splitlines() if line.startswith(("SSE fan-out", "Summary"))]
    return [*lines, "Its own full tables: `uv run python bench/sse_fanout.py` (README.md here)."]
