"""The scenarios, in the order a run takes them; `--only NAME` picks some."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from bench.context import Context
from bench.report import Section
from bench.scenarios import api, dispatch, iobound, memory, recovery, sse


@dataclass(frozen=True)
class Scenario:
    name: str
    summary: str
    run: Callable[[Context], Awaitable[Section]]


SCENARIOS = [
    Scenario("submit", "(a) submit, 8 and 64 clients, vs a trivial endpoint", api.run_submit),
    Scenario("status", "(b) status of a pending task, 8 and 64 clients", api.run_status),
    Scenario("dispatch", "(c)+(e) 2,000 tasks, AI at once: vs bare arq and Celery", dispatch.run),
    Scenario(
        "iobound", "(d)+(e) 1,000 tasks, AI 10 s, max_jobs 500: vs ideal, Celery", iobound.run
    ),
    Scenario("memory", "(f) 10 recordings of 50 MB at once: worker RSS growth", memory.run),
    Scenario("recovery", "(g) SIGKILL of a worker holding 100 tasks", recovery.run),
    Scenario("sse", "(h) live-progress fan-out (bench/sse_fanout.py)", sse.run),
]
GROUPS = {"api": ["submit", "status"], "celery": ["dispatch", "iobound"]}
