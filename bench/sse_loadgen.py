"""SSE load generator for bench/sse_fanout.py, run as its own process.

    python bench/sse_loadgen.py --port P --paths paths.json --warmup 3 --measure 15

Opens one raw HTTP/1.1 connection per path in `paths.json` (a JSON list; asyncio protocols on
uvloop when available, no HTTP library), parses SSE frames with fixed byte searches only (no
JSON parsing): the publish time from `"updated_at":"…"` and the per-task sequence number from
`"worker_name":"seq-<n>"`. Latency = receipt wall-clock time − publish time.

Protocol on stdout (one JSON object a line): {"phase": "connected", …} once every connection
has its response headers, {"phase": "window_start"} and {"phase": "window_end"} around the
measurement window, then {"phase": "result", …}; before those, {"phase": "half"} once half
the connections are open (then a pause, for the orchestrator to sample memory).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from array import array
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

SEQ_MARK = b'"worker_name":"seq-'
TS_MARK = b'"updated_at":"'
FRAME_END = b"\r\n\r\n"
CONNECT_TIMEOUT_SECONDS = 120.0


class Stats:
    def __init__(self) -> None:
        self.measuring = False
        self.latencies = array("d")
        self.delivered = 0
        self.lost = 0
        self.out_of_order = 0
        self.warmup_events = 0
        self.recent_max = 0.0  # the largest latency since the last look (warm-up settling)
        self.window_start = 0.0
        self.per_second_max: list[float] = []
        self.midnights: dict[bytes, float] = {}

    def midnight(self, date: bytes) -> float:
        value = self.midnights.get(date)
        if value is None:
            value = datetime.fromisoformat(date.decode()).replace(tzinfo=UTC).timestamp()
            self.midnights[date] = value
        return value


class Client(asyncio.Protocol):
    def __init__(self, stats: Stats, request: bytes, opened: asyncio.Future[int]) -> None:
        self.stats = stats
        self.request = request
        self.opened = opened
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.headers_done = False
        self.last_seq = -1
        self.window_events = 0
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        self.transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.opened.done():
            self.opened.set_result(0)

    def data_received(self, data: bytes) -> None:
        now = time.time()
        buf = self.buffer + data if self.buffer else data
        start = 0
        if not self.headers_done:
            end = buf.find(FRAME_END)
            if end < 0:
                self.buffer = buf
                return
            status = int(buf[9:12]) if buf.startswith(b"HTTP/1.1 ") else 0
            self.headers_done = True
            if not self.opened.done():
                self.opened.set_result(status)
            if status != 200:
                assert self.transport is not None
                self.transport.close()
                return
            start = end + 4
        stats = self.stats
        while True:
            end = buf.find(FRAME_END, start)
            if end < 0:
                break
            i = buf.find(SEQ_MARK, start, end)
            if i >= 0:
                i += len(SEQ_MARK)
                seq = int(buf[i : buf.index(b'"', i)])
                j = buf.find(TS_MARK, start, end) + len(TS_MARK)
                seconds = (
                    stats.midnight(buf[j : j + 10])
                    + int(buf[j + 11 : j + 13]) * 3600
                    + int(buf[j + 14 : j + 16]) * 60
                    + int(buf[j + 17 : j + 19])
                )
                if buf[j + 19] == 46:  # "." then microseconds
                    seconds += int(buf[j + 20 : j + 26]) * 1e-6
                latency = now - seconds
                if latency > stats.recent_max:
                    stats.recent_max = latency
                if stats.measuring:
                    stats.latencies.append(latency)
                    second = int(now - stats.window_start)
                    if second < len(stats.per_second_max):
                        if latency > stats.per_second_max[second]:
                            stats.per_second_max[second] = latency
                    stats.delivered += 1
                    self.window_events += 1
                    if self.last_seq >= 0:
                        if seq > self.last_seq + 1:
                            stats.lost += seq - self.last_seq - 1
                        elif seq <= self.last_seq:
                            stats.out_of_order += 1
                else:
                    stats.warmup_events += 1
                self.last_seq = max(self.last_seq, seq)
            start = end + 4
        self.buffer = buf[start:]


def emit(record: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def percentile(ordered: list[float], fraction: float) -> float:
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


async def run(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    paths: list[str] = json.loads(Path(args.paths).read_text())  # noqa: ASYNC240
    stats = Stats()
    clients: list[Client] = []
    gate = asyncio.Semaphore(args.concurrency)
    host = f"{args.host}:{args.port}"

    async def open_one(path: str) -> int:
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n"
            "Cache-Control: no-cache\r\n\r\n"
        ).encode()
        async with gate:
            opened: asyncio.Future[int] = loop.create_future()
            client = Client(stats, request, opened)
            try:
                await loop.create_connection(lambda: client, args.host, args.port)
                async with asyncio.timeout(30):
                    status = await opened
            except (OSError, TimeoutError):
                status = 0
            clients.append(client)
            return status

    started = time.monotonic()
    half = len(paths) // 2
    async with asyncio.timeout(CONNECT_TIMEOUT_SECONDS):
        statuses = await asyncio.gather(*(open_one(path) for path in paths[:half]))
    emit({"phase": "half", "ok": sum(1 for status in statuses if status == 200)})
    await asyncio.sleep(args.half_pause)  # the orchestrator samples the server's RSS
    async with asyncio.timeout(CONNECT_TIMEOUT_SECONDS):
        statuses += await asyncio.gather(*(open_one(path) for path in paths[half:]))
    connect_seconds = time.monotonic() - started - args.half_pause
    ok = sum(1 for status in statuses if status == 200)
    emit(
        {
            "phase": "connected",
            "ok": ok,
            "failed": len(paths) - ok,
            "statuses": sorted({str(s) for s in statuses}),
            "seconds": round(connect_seconds, 2),
        }
    )
    # Warm up: at least `warmup` seconds, then until a half second passes with no event later
    # than `settle_ms` (a backlog from the connection burst has drained), at most `max_warmup`.
    settle_started = time.monotonic()
    await asyncio.sleep(args.warmup)
    while time.monotonic() - settle_started < args.max_warmup:
        stats.recent_max = 0.0
        await asyncio.sleep(0.5)
        if stats.recent_max * 1000 <= args.settle_ms:
            break
    warmup_seconds = time.monotonic() - settle_started

    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.monotonic()
    stats.per_second_max = [0.0] * (int(args.measure) + 2)
    stats.window_start = time.time()
    stats.measuring = True
    emit({"phase": "window_start"})
    await asyncio.sleep(args.measure)
    stats.measuring = False
    window = time.monotonic() - t0
    usage1 = resource.getrusage(resource.RUSAGE_SELF)
    emit({"phase": "window_end"})

    cpu = (usage1.ru_utime - usage0.ru_utime) + (usage1.ru_stime - usage0.ru_stime)
    ordered = sorted(stats.latencies)
    live = [client for client in clients if client.headers_done and not client.closed]
    per_client = sorted(client.window_events for client in live)
    for client in clients:
        if client.transport is not None:
            client.transport.close()
    emit(
        {
            "phase": "result",
            "clients": len(paths),
            "connected": ok,
            "open_at_end": len(live),
            "connect_seconds": round(connect_seconds, 2),
            "warmup_seconds": warmup_seconds,
            "window_seconds": window,
            "delivered": stats.delivered,
            "lost": stats.lost,
            "out_of_order": stats.out_of_order,
            "warmup_events": stats.warmup_events,
            "p50_ms": percentile(ordered, 0.50) * 1000,
            "p90_ms": percentile(ordered, 0.90) * 1000,
            "p99_ms": percentile(ordered, 0.99) * 1000,
            "max_ms": (ordered[-1] * 1000) if ordered else float("nan"),
            "mean_ms": (sum(ordered) / len(ordered) * 1000) if ordered else float("nan"),
            "per_second_max_ms": [round(x * 1000, 1) for x in stats.per_second_max],
            "min_events_per_client": per_client[0] if per_client else 0,
            "max_events_per_client": per_client[-1] if per_client else 0,
            "loadgen_cpu_seconds": cpu,
            "loadgen_core_fraction": cpu / window,
        }
    )
    await asyncio.sleep(0.2)  # let the closes go out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--paths", required=True, help="JSON list of request paths")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--measure", type=float, default=15.0)
    parser.add_argument("--max-warmup", type=float, default=40.0)
    parser.add_argument("--settle-ms", type=float, default=250.0)
    parser.add_argument("--half-pause", type=float, default=1.5)
    parser.add_argument("--concurrency", type=int, default=100, help="connects in flight")
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    runner: Callable[..., Any]
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    runner(run(args))


if __name__ == "__main__":
    main()
