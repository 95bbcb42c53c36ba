"""(f) Memory: 10 recordings of 50 MB analysed concurrently by one worker process.

Each measurement starts a fresh `python -m worker` (WORKER_MAX_JOBS=10, so all
10 run at once), waits until it polls, takes its RSS, releases the 10 tasks (the fake AI reads
every body to its end, then answers after 2 s) and samples RSS every 50 ms until all are done:
growth = peak − RSS before. The baseline is the same with 10 recordings of 64 kB: what running
10 analyses costs whatever their size, so the difference is what the recordings' size costs
(streamed, it should be nearly nothing).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from bench.context import Context
from bench.procstat import rss_bytes
from bench.report import Goal, Row, Section
from bench.scenarios.batches import RECORDING_BYTES, Batch, run_ours, seed

NAME = "memory"
TITLE = "(f) Memory: 10 recordings of 50 MB (quick: 20 MB) analysed at once by one worker"
CONCURRENT = 10
LATENCY = 2.0
SETTLE_SECONDS = 0.5


@dataclass(frozen=True)
class Sizes:
    recording: int
    rounds: int


FULL = Sizes(recording=50_000_000, rounds=3)
QUICK = Sizes(recording=20_000_000, rounds=1)


async def measure(ctx: Context, size: int, label: str) -> tuple[float, Batch]:
    """RSS growth (MB) of a fresh worker analysing CONCURRENT recordings of `size` bytes."""
    tasks = await seed(ctx, CONCURRENT, size=size)
    worker = await ctx.stack.start_worker(f"memory-{label}", WORKER_MAX_JOBS=str(CONCURRENT))
    try:
        await asyncio.sleep(SETTLE_SECONDS)
        before = rss_bytes(worker.pid)
        batch = await run_ours(ctx, worker, tasks, latency=LATENCY, within=120.0)
    finally:
        ctx.processes.stop(worker)
    return (batch.peak_rss - before) / 1e6, batch


async def run(ctx: Context) -> Section:
    sizes = QUICK if ctx.quick else FULL
    rounds = ctx.rounds(sizes.rounds)
    big: list[float] = []
    small: list[float] = []
    batches: list[Batch] = []
    body_bytes: list[float] = []
    for round_ in range(1, rounds + 1):
        for side in ("small", "big") if round_ % 2 else ("big", "small"):
            ctx.log(f"{NAME}: {side} recordings, round {round_}/{rounds}")
            if side == "big":
                growth, batch = await measure(ctx, sizes.recording, "big")
                big.append(growth)
                batches.append(batch)
                body_bytes.append((await ctx.stack.ai.stats())["body_bytes"] / 1e6)
            else:
                growth, _ = await measure(ctx, RECORDING_BYTES, "small")
                small.append(growth)
    mb = sizes.recording / 1e6
    scenario = f"{CONCURRENT} × {mb:g} MB"
    rows = [
        Row(
            scenario,
            "worker RSS growth",
            big,
            small,
            f"{CONCURRENT} × 64 kB",
            "MB",
            Goal("value", "<=", 32.0),
        ),
        Row(
            scenario,
            "recording bytes received by the AI service",
            body_bytes,
            [CONCURRENT * mb] * len(body_bytes),
            "expected",
            "MB",
        ),
        Row(
            scenario,
            "tasks not ending in success",
            [float(b.not_succeeded) for b in batches],
            None,
            unit="",
            goal=Goal("value", "<=", 0, "0"),
        ),
        Row(scenario, "AI calls in flight at most", [float(b.max_in_flight) for b in batches]),
    ]
    notes = [
        f"A fresh worker per measurement; RSS sampled every 50 ms from the release until "
        f"all {CONCURRENT} are done; the AI service answers {LATENCY:g} s after reading a body.",
    ]
    return Section(NAME, TITLE, rows, notes)
