"""Per-worker liveness: each worker writes a heartbeat key every few seconds
(`vocalborn:worker:<name>`, a JSON document, TTL about three periods: worker/cron.py); a worker
whose key has expired is dead. Read by `vocalborn workers` / `vocalborn worker-check` (the
containers' health check) and by the admin stats.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from dataclasses import asdict, dataclass
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version

from redis.asyncio import Redis

from app.analysis.queue import WORKER_KEY_PREFIX

log = logging.getLogger(__name__)

TTL_PERIODS = 3  # a heartbeat key lives this many periods: two beats may be missed


@lru_cache(maxsize=1)
def app_version() -> str:
    """The installed package's version (read once: every heartbeat carries it)."""
    try:
        return version("vocalborn-analysis")
    except PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown"


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """One worker's last beat. `at`: Unix time (s) of the beat; `every`: its period (s)."""

    worker: str
    host: str
    pid: int
    jobs_in_flight: int
    version: str
    started_at: float
    at: float
    every: float

    @classmethod
    def now(cls, worker: str, started_at: float, jobs_in_flight: int, every: float) -> Heartbeat:
        """This process's beat at this moment."""
        return cls(
            worker=worker,
            host=socket.gethostname(),
            pid=os.getpid(),
            jobs_in_flight=jobs_in_flight,
            version=app_version(),
            started_at=started_at,
            at=time.time(),
            every=every,
        )

    @property
    def ttl_seconds(self) -> float:
        return TTL_PERIODS * self.every


# The heartbeats' index: each worker's name, scored with its key's expiry (Unix ms), so that
# readers find the live keys without a SCAN of the whole keyspace. The keys decide liveness.
INDEX_KEY = "vocalborn:workers"


def heartbeat_key(worker: str) -> str:
    """The Redis key of `worker`'s heartbeat (WORKER_KEY_PREFIX + its name)."""
    return WORKER_KEY_PREFIX + worker


async def write(redis: Redis, beat: Heartbeat) -> int:
    """Write the beat's key, to expire after TTL_PERIODS periods, and index it; the number of
    workers whose beat has not expired (this one included). One round trip; raises what Redis
    raised."""
    document = json.dumps(asdict(beat), separators=(",", ":"))
    ttl_ms = max(int(beat.ttl_seconds * 1000), 1)
    now_ms = int(time.time() * 1000)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.set(heartbeat_key(beat.worker), document, px=ttl_ms)
        pipe.zadd(INDEX_KEY, {beat.worker: now_ms + ttl_ms})
        pipe.zremrangebyscore(INDEX_KEY, "-inf", now_ms)
        pipe.zcard(INDEX_KEY)
        *_, live = await pipe.execute()
    return int(live)


async def live_workers(redis: Redis) -> list[Heartbeat]:
    """The workers whose heartbeat key has not expired, by name: the index, then one MGET of
    the keys. A key that is not a heartbeat document (an older worker's) counts as live, with
    what it says."""
    now_ms = int(time.time() * 1000)
    names = sorted(_text(name) for name in await redis.zrangebyscore(INDEX_KEY, now_ms, "+inf"))
    if not names:
        return []
    values = await redis.mget([heartbeat_key(name) for name in names])
    return [_parse(name, value) for name, value in zip(names, values, strict=True) if value]


async def live_worker(redis: Redis, name: str) -> Heartbeat | None:
    """`name`'s heartbeat, or None when it has none (dead, or never started)."""
    value = await redis.get(heartbeat_key(name))
    return None if value is None else _parse(name, value)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _parse(name: str, value: bytes | str) -> Heartbeat:
    try:
        document = json.loads(value)
        return Heartbeat(
            worker=name,
            host=str(document["host"]),
            pid=int(document["pid"]),
            jobs_in_flight=int(document["jobs_in_flight"]),
            version=str(document["version"]),
            started_at=float(document["started_at"]),
            at=float(document["at"]),
            every=float(document["every"]),
        )
    except (ValueError, KeyError, TypeError):
        log.debug("heartbeat of %s is not a heartbeat document", name)
        return Heartbeat(name, "?", 0, 0, "?", 0.0, 0.0, 0.0)


async def check(redis: Redis, name: str | None) -> tuple[bool, str]:
    """Whether worker `name` (None: a worker on this host) has a live heartbeat, and a line
    saying so. Raises what Redis raised (unreachable: unknown, not dead)."""
    if name is not None:
        beat = await live_worker(redis, name)
        if beat is None:
            return False, f"worker {name}: no live heartbeat"
        return True, f"worker {name}: alive ({_described(beat)})"
    host = socket.gethostname()
    here = [beat for beat in await live_workers(redis) if beat.host == host]
    if not here:
        return False, f"no worker on {host} has a live heartbeat"
    return True, "; ".join(f"worker {beat.worker}: alive ({_described(beat)})" for beat in here)


def _described(beat: Heartbeat) -> str:
    age = max(time.time() - beat.at, 0.0)
    return f"host {beat.host}, pid {beat.pid}, {beat.jobs_in_flight} job(s), beat {age:.1f} s ago"
