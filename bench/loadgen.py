"""Closed-loop HTTP load generator, run as its own process by the orchestrator:

    python -m bench.loadgen SPEC.json

Each client is one keep-alive HTTP/1.1 connection (an asyncio protocol on uvloop, no HTTP
library) that sends a request, reads the whole answer and sends the next, so the offered load
is what the server can take with that many clients. A request is a template with `{}`
replaced by the client's next value (a record or task id); a client that runs out of values
stops (counted as exhausted). Answers are parsed with fixed byte searches: status line,
`content-length`, body skipped.

SPEC: {"port": int, "warmup": s, "measure": s, "expect": [202],
       "clients": [{"template": "...{}...", "values": ["..."], "cycle": bool}, ...]}

Protocol on stdout, one JSON object a line: {"phase": "connected"}, {"phase": "window_start"},
{"phase": "window_end"}, then {"phase": "result", ...}: completed requests, req/s, latency
percentiles, errors (unexpected status or broken connection) and this process's own CPU over
the window as a fraction of a core (so a saturated load generator shows).
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
from array import array
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any

HEADER_END = b"\r\n\r\n"
CONTENT_LENGTH = b"\r\ncontent-length:"


class Stats:
    def __init__(self, expect: set[int]) -> None:
        self.expect = expect
        self.measuring = False
        self.latencies = array("d")
        self.statuses: Counter[int] = Counter()
        self.errors = 0
        self.broken = 0
        self.total = 0

    def record(self, status: int, latency: float) -> None:
        self.total += 1
        if not self.measuring:
            return
        self.latencies.append(latency)
        self.statuses[status] += 1
        if status not in self.expect:
            self.errors += 1


class Client(asyncio.Protocol):
    def __init__(self, stats: Stats, template: str, values: list[str], cycle: bool) -> None:
        self.stats = stats
        self.requests = [template.replace("{}", value).encode() for value in values]
        self.cycle = cycle
        self.next = 0
        self.running = True
        self.exhausted = False
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.sent_at = 0.0
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        self.send_next()

    def send_next(self) -> None:
        if not self.running or self.transport is None:
            return
        if self.next >= len(self.requests):
            if not self.cycle:
                self.exhausted = True
                return
            self.next = 0
        request = self.requests[self.next]
        self.next += 1
        self.sent_at = time.perf_counter()
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(HEADER_END)
            if end < 0:
                return
            head = self.buffer[:end].lower()
            at = head.find(CONTENT_LENGTH)
            length = 0
            if at >= 0:
                stop = head.find(b"\r\n", at + 2)
                length = int(head[at + len(CONTENT_LENGTH) : stop if stop > 0 else None])
            total = end + 4 + length
            if len(self.buffer) < total:
                return
            status = int(head[9:12])
            self.buffer = self.buffer[total:]
            self.stats.record(status, time.perf_counter() - self.sent_at)
            self.send_next()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.running:
            self.stats.broken += 1
        if not self.closed.done():
            self.closed.set_result(None)

    def stop(self) -> None:
        self.running = False
        if self.transport is not None:
            self.transport.close()


def _same(client: Client) -> Client:
    return client


def emit(record: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def percentile(sorted_values: list[float], share: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(share * (len(sorted_values) - 1))))
    return sorted_values[index]


def cpu_now() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run(spec: dict[str, Any]) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    stats = Stats(set(spec.get("expect", [200])))
    clients: list[Client] = []
    for entry in spec["clients"]:
        client = Client(stats, entry["template"], entry["values"], entry["cycle"])
        await loop.create_connection(partial(_same, client), "127.0.0.1", spec["port"])
        clients.append(client)
    emit({"phase": "connected", "clients": len(clients)})
    await asyncio.sleep(spec["warmup"])
    stats.measuring = True
    cpu0, t0 = cpu_now(), time.perf_counter()
    emit({"phase": "window_start"})
    await asyncio.sleep(spec["measure"])
    stats.measuring = False
    cpu1, t1 = cpu_now(), time.perf_counter()
    emit({"phase": "window_end"})
    broken_in_window = stats.broken
    for client in clients:
        client.stop()
    await asyncio.wait([c.closed for c in clients], timeout=5)
    window = t1 - t0
    latencies = sorted(stats.latencies)
    completed = len(latencies)
    return {
        "phase": "result",
        "clients": len(clients),
        "window_seconds": window,
        "completed": completed,
        "rps": completed / window,
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p90_ms": percentile(latencies, 0.90) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "max_ms": (latencies[-1] if latencies else float("nan")) * 1000,
        "errors": stats.errors + broken_in_window,
        "unexpected_status": stats.errors,
        "broken_connections": broken_in_window,  # warm-up included
        "statuses": {str(k): v for k, v in sorted(stats.statuses.items())},
        "exhausted_clients": sum(client.exhausted for client in clients),
        "total_requests": stats.total,
        "loadgen_core_fraction": (cpu1 - cpu0) / window,
    }


def main() -> None:
    import uvloop  # uvicorn[standard] brings it

    spec = json.loads(Path(sys.argv[1]).read_text())
    emit(uvloop.run(run(spec)))


if __name__ == "__main__":
    main()
