"""Our port onto arq: the API and the reconciler enqueue through here, so arq stays replaceable.

Jobs are serialised as JSON (never pickle). One queue, `ai_analysis`; the job id is
`{task_id}:{attempt}`, so each attempt is a distinct arq job and the database fences them.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import json
import math
import time
import uuid
import weakref
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple, cast

from arq.connections import ArqRedis
from arq.constants import (
    abort_jobs_ss,
    in_progress_key_prefix,
    job_key_prefix,
    result_key_prefix,
    retry_key_prefix,
)
from arq.jobs import serialize_job
from arq.utils import timestamp_ms, to_unix_ms
from redis.asyncio import Redis

from app.analysis.lanes import (
    ADVANCE,
    BATCH_EVERY_KEY,
    BATCH_KEY,
    FAIR_EPOCH_MS,
    FAIR_LUA,
    FINISH_KEY,
    FLOW_KEY_PREFIX,
    PROMOTE,
    SINCE_BATCH_KEY,
    UNOWNED,
    V_KEY,
    WALL_FLOOR_MS,
    Flow,
    Lane,
    LaneWeights,
)

QUEUE_NAME = "ai_analysis"
ANALYZE_FUNCTION = "analyze_recording"
WORKER_KEY_PREFIX = "vocalborn:worker:"  # a heartbeat key per live worker (worker/cron.py)


def serialize(obj: Any) -> bytes:
    """arq's job serialiser: JSON, never pickle."""
    return json.dumps(obj, default=repr, separators=(",", ":")).encode()


def deserialize(data: bytes) -> Any:
    """arq's job deserialiser (see `serialize`)."""
    return json.loads(data)


def job_id_for(task_id: uuid.UUID | str, attempt: int) -> str:
    """The arq job id of one attempt at a task."""
    return f"{task_id}:{attempt}"


@functools.lru_cache(maxsize=4096)
def is_attempt_job(job_id: str) -> bool:
    """Whether `job_id` names an attempt at a task (`job_id_for`'s shape), not a cron job.
    Cached: a worker asks again for each job it holds at every poll."""
    named, colon, attempt = job_id.rpartition(":")
    if not colon or not attempt.isdecimal():
        return False
    try:
        uuid.UUID(named)
    except ValueError:
        return False
    return True


def task_of_job(job_id: str, task_id: object) -> uuid.UUID | None:
    """The task a job may act on: `task_id` (its argument, a string) when it is a task id
    and the same task its job id names (`{task_id}:{attempt}`, as `job_id_for` makes them;
    compared as UUIDs, so the spelling of the id does not matter); None for anything our
    enqueue never writes (a tampered or corrupted job)."""
    named, colon, attempt = job_id.rpartition(":")
    if not colon or not attempt.isdecimal() or not isinstance(task_id, str):
        return None
    try:
        task = uuid.UUID(task_id)
        return task if uuid.UUID(named) == task else None
    except ValueError:
        return None


# KEYS: job key, in-progress key, result key, queue, flow key, V key, finish key, batch key.
# ARGV: job id, serialised job, job key TTL (ms), due score (ms; 0: now), flow ("<cost>
# <lane> <user>").
# arq's enqueue_job in one atomic round trip instead of its WATCH, EXISTS, MULTI/EXEC: the same
# job key and queue entry, refused (-1) when the job key, the in-progress key or a kept result
# exists; else the job's rank in the queue (0-based). A job due now is scored with its flow's
# fair start tag (app/analysis/lanes.py); a deferred one with its due time, until a worker's
# poll promotes it. The flow key lives as long as the job key.
_ENQUEUE = (
    FAIR_LUA
    + """
if redis.call('EXISTS', KEYS[1], KEYS[2], KEYS[3]) > 0 then return -1 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('SET', KEYS[5], ARGV[5], 'PX', ARGV[3])
if tonumber(ARGV[4]) == 0 then
    queue_fair(KEYS[4], KEYS[6], KEYS[7], KEYS[8], ARGV[1], ARGV[5])
else
    redis.call('ZADD', KEYS[4], ARGV[4], ARGV[1])
end
return redis.call('ZRANK', KEYS[4], ARGV[1])
"""
)


async def _enqueue(
    pool: ArqRedis,
    task_id: uuid.UUID | str,
    attempt: int,
    defer_until: datetime | None,
    flow: Flow,
) -> int | None:
    """Enqueue the job as arq's enqueue_job would, scored by its fair tag (due now) or its due
    time; its 0-based rank in the queue, or None when refused (arq holds it, or keeps its
    result)."""
    job_id = job_id_for(task_id, attempt)
    now = timestamp_ms()
    due = to_unix_ms(defer_until) if defer_until is not None else 0
    ttl = max(due - now, 0) + pool.expires_extra_ms  # arq's default expiry
    payload = serialize_job(ANALYZE_FUNCTION, (str(task_id),), {}, None, now, serializer=serialize)
    keys = [job_key_prefix + job_id, in_progress_key_prefix + job_id, result_key_prefix + job_id]
    keys += [QUEUE_NAME, FLOW_KEY_PREFIX + job_id, V_KEY, FINISH_KEY, BATCH_KEY]
    args = [job_id, payload.decode(), str(max(ttl, 1)), str(due), flow.encode()]
    rank = await _run_script(pool, _ENQUEUE, keys, args)
    return None if int(rank) < 0 else int(rank)


async def enqueue_analysis(
    pool: ArqRedis,
    task_id: uuid.UUID | str,
    attempt: int,
    defer_until: datetime | None = None,
    flow: Flow = UNOWNED,
) -> bool:
    """Enqueue the analysis job of `flow` (its lane and user: `LaneWeights.flow`), due at
    `defer_until` (default: now, at its fair place), in one round trip; False when refused: a
    job with this id exists, is running or has a kept result (arq's dedup)."""
    return await _enqueue(pool, task_id, attempt, defer_until, flow) is not None


async def enqueue_with_position(
    pool: ArqRedis, task_id: uuid.UUID | str, attempt: int, flow: Flow = UNOWNED
) -> tuple[bool, int | None]:
    """Enqueue the analysis job of `flow` due now and say where it waits: (enqueued, 1-based
    position among jobs waiting to start, as `queue_position` counts it). When refused, the
    position of the job arq already holds (None when it is not waiting). One round trip, plus
    the snapshot's scan at most once a second per process: the position reckons the batch
    lane's reserved starts (`start_order`) as of that snapshot."""
    rank = await _enqueue(pool, task_id, attempt, None, flow)
    job_id = job_id_for(task_id, attempt)
    if rank is None:
        return False, await queue_position(pool, job_id)
    head = await _snapshot(pool)
    return True, head.position_of_new(job_id, rank, flow.lane is Lane.BATCH)


# KEYS: queue, in-progress key, flow key, V key, finish key, batch key. ARGV: job id, flow.
# The job's flow becomes ARGV[2]; a job waiting at a fair tag is re-scored with that flow's
# next tag.
# -1 when the job is not waiting (not queued, or running); else its rank.
_MOVE_FLOW = (
    FAIR_LUA
    + f"""
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score == false or redis.call('EXISTS', KEYS[2]) == 1 then return -1 end
redis.call('SET', KEYS[3], ARGV[2], 'KEEPTTL')
score = tonumber(score)
if score >= {FAIR_EPOCH_MS} and score < {WALL_FLOOR_MS} then
    queue_fair(KEYS[1], KEYS[4], KEYS[5], KEYS[6], ARGV[1], ARGV[2])
end
return redis.call('ZRANK', KEYS[1], ARGV[1])
"""
)


async def move_to_flow(pool: Redis, job_id: str, flow: Flow) -> bool:
    """Put a waiting job in `flow` (an admin's lane change): a job due now is re-scored at
    that flow's next fair tag, a deferred one takes it when it comes due. False when the job
    is not waiting (not in the queue, or running): nothing to move."""
    keys = [QUEUE_NAME, in_progress_key_prefix + job_id, FLOW_KEY_PREFIX + job_id, V_KEY]
    keys += [FINISH_KEY, BATCH_KEY]
    rank = await _run_script(pool, _MOVE_FLOW, keys, [job_id, flow.encode()])
    return int(rank) >= 0


PROMOTE_BATCH = 1000  # due wall-clock jobs promoted per poll at most


async def promote_due(pool: Redis, weights: LaneWeights) -> tuple[int, int]:
    """Give every job whose wall-clock time has come (a deferred retry, a cron job) its place
    in the fair order, and the batch lane its reserved start when `weights.batch_every`
    interactive jobs started since the last batch one (app/analysis/lanes.py). (How many
    jobs were promoted, how many batch jobs were moved to the head.) One round trip; a
    worker's poll runs it before reading the queue."""
    keys = [QUEUE_NAME, V_KEY, FINISH_KEY, BATCH_KEY, SINCE_BATCH_KEY, BATCH_EVERY_KEY]
    args = [str(timestamp_ms()), str(PROMOTE_BATCH), FLOW_KEY_PREFIX, in_progress_key_prefix]
    moved, reserved = await _run_script(pool, PROMOTE, keys, [*args, str(weights.batch_every)])
    return int(moved), int(reserved)


# KEYS: queue, V key, since-batch key, batch key. ARGV: in-progress key prefix, flow key
# prefix, now (ms), most jobs to start, most attempts to start (-1: no bound), this pick's
# token, then per job its id, its in-progress key's life (ms) and 1 if it is an attempt (else
# 0). A job is started when no worker holds it (no in-progress key) and it is in the queue
# and due, as arq's own claim checks under WATCH; its in-progress key is set (to the token)
# and the fair order's clock moves on. The jobs are tried in order until the most are
# started. A job whose key holds the token was started by this same pick, run again by the
# client's retry after its answer was lost: it is answered as started again, not left held
# by nobody until its key expires.
_PICK = (
    ADVANCE
    + """
local picked = {}
local most = 2 * tonumber(ARGV[4])
local attempts = tonumber(ARGV[5])
local function take(id, score, attempt)
    picked[#picked + 1] = id
    picked[#picked + 1] = score
    if attempt then attempts = attempts - 1 end
end
for i = 7, #ARGV, 3 do
    if #picked >= most then break end
    local id = ARGV[i]
    local attempt = ARGV[i + 2] == '1'
    local holder = redis.call('GET', ARGV[1] .. id)
    if holder == ARGV[6] then  -- started by this very pick, sent again: its answer was lost
        take(id, redis.call('ZSCORE', KEYS[1], id) or ARGV[3], attempt)
    elseif not holder and not (attempt and attempts == 0) then
        local score = redis.call('ZSCORE', KEYS[1], id)
        if score and tonumber(score) <= tonumber(ARGV[3]) then
            redis.call('PSETEX', ARGV[1] .. id, ARGV[i + 1], ARGV[6])
            advance(KEYS[2], KEYS[3], ARGV[2] .. id, KEYS[4], score, id)
            take(id, score, attempt)
        end
    end
end
return picked
"""
)


class PickedJob(NamedTuple):
    """A job a pick offers to start: its id, its in-progress key's life (ms) once started,
    and whether it is an attempt at a task (`is_attempt_job`) rather than a cron job."""

    job_id: str
    life_ms: int
    attempt: bool


async def pick(
    pool: Redis,
    jobs: Sequence[PickedJob],
    now_ms: int,
    most: int,
    most_attempts: int | None = None,
    token: str | None = None,
) -> dict[str, float]:
    """Start at most `most` of the `jobs` (in the order a worker read them from the queue),
    of them at most `most_attempts` attempts at tasks (None: no bound), in one script: the
    first that no worker holds and that are due at `now_ms`.
    Returns the started ones, job id -> queue score. arq's claim sends WATCH, EXISTS, ZSCORE
    and a MULTI per job (four round trips); this is one per poll. A running job stays in the
    queue, at its head in the fair order: the whole read is offered, and only the jobs started
    count, or a worker would spend its room on the jobs another one runs. Raises redis'
    errors."""
    bound = -1 if most_attempts is None else max(most_attempts, 0)
    token = token or uuid.uuid4().hex  # given by tests only: a pick sent again
    args = [in_progress_key_prefix, FLOW_KEY_PREFIX, str(now_ms), str(most), str(bound), token]
    for job in jobs:
        args += [job.job_id, str(job.life_ms), "1" if job.attempt else "0"]
    keys = [QUEUE_NAME, V_KEY, SINCE_BATCH_KEY, BATCH_KEY]
    flat = await _run_script(pool, _PICK, keys, args)
    return {flat[i].decode(): float(flat[i + 1]) for i in range(0, len(flat), 2)}


# KEYS: in-progress key, result key, retry key, job key, abort set, queue. ARGV: job id, the
# in-progress key's life from now (ms; '' deletes it), '1' when the job is done, the result
# ('' none), the result's life (ms; '' for ever), the queue score's increment ('' none).
# arq's finish_job, the same commands in one atomic step (arq: a MULTI pipeline).
FINISH_JOB = """
if ARGV[2] == '' then redis.call('DEL', KEYS[1]) else redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if ARGV[3] == '1' then
    if ARGV[4] ~= '' then
        if ARGV[5] == '' then redis.call('SET', KEYS[2], ARGV[4])
        else redis.call('SET', KEYS[2], ARGV[4], 'PX', ARGV[5]) end
    end
    redis.call('DEL', KEYS[3], KEYS[4])
    redis.call('ZREM', KEYS[5], ARGV[1])
    redis.call('ZREM', KEYS[6], ARGV[1])
elseif ARGV[6] ~= '' then
    redis.call('ZINCRBY', KEYS[6], ARGV[6], ARGV[1])
end
return 1
"""


def finish_job_call(
    queue_name: str,
    job_id: str,
    *,
    finish: bool,
    result: bytes | None,
    result_life_ms: int | None,
    increment: int | None,
    keep_in_progress_ms: int | None,
) -> tuple[list[str], list[str | bytes]]:
    """FINISH_JOB's keys and arguments for arq's `Worker.finish_job` of `job_id` in
    `queue_name`: done (`finish`: its result kept for `result_life_ms`, None for ever; no
    result when `result` is empty or None) or put back (its score raised by `increment`); its
    in-progress key deleted, or kept for `keep_in_progress_ms`."""
    keys = [in_progress_key_prefix + job_id, result_key_prefix + job_id]
    keys += [retry_key_prefix + job_id, job_key_prefix + job_id, abort_jobs_ss, queue_name]
    args: list[str | bytes] = [
        job_id,
        _or_empty(keep_in_progress_ms),
        "1" if finish else "",
        result or b"",
        _or_empty(result_life_ms),
        _or_empty(increment or None),
    ]
    return keys, args


def _or_empty(value: int | None) -> str:
    return "" if value is None else str(value)


# Whether arq holds a job: its in-progress marker exists (running, or claimed by a worker that
# died and not yet expired), or its job key exists and it is in the queue (waiting, or running
# on a live worker). Scripts below build these keys from ARGV: arq's keys are not in one
# cluster slot anyway (its own MULTI spans the queue and the job keys).
_HELD_LUA = """
local function held(id)
    if redis.call('EXISTS', ARGV[2] .. id) == 1 then return true end
    return redis.call('EXISTS', ARGV[1] .. id) == 1 and redis.call('ZSCORE', KEYS[1], id) ~= false
end
"""


async def _run_script(pool: Redis, script: str, keys: Sequence[str], args: Sequence[str]) -> Any:
    """EVAL: the script text travels with each call (a few hundred bytes), so there is never a
    NOSCRIPT round trip; Redis caches the compiled script."""
    return await cast(Awaitable[Any], pool.eval(script, len(keys), *keys, *args))


# KEYS: queue, abort set. ARGV: job key prefix, in-progress key prefix, job id, now (ms).
_ABORT_IF_HELD = (
    _HELD_LUA
    + """
if not held(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3])
redis.call('ZADD', KEYS[1], 'XX', 1, ARGV[3])
return 1
"""
)


async def abort(pool: Redis, job_id: str) -> bool:
    """Ask arq to abort the job: a running one is cancelled, a queued one never starts.

    Only a job arq holds gets an abort entry (checked and added atomically): arq removes an
    entry when it starts or finishes that job, so an entry for a job it does not hold would stay
    in its abort set for ever, read by every worker at every poll. False: arq does not hold the
    job, nothing to abort (the claim refuses a cancelled task anyway)."""
    added = await _run_script(
        pool,
        _ABORT_IF_HELD,
        [QUEUE_NAME, abort_jobs_ss],
        [job_key_prefix, in_progress_key_prefix, job_id, str(timestamp_ms())],
    )
    return bool(added)


# KEYS: queue, abort set. ARGV: job key prefix, in-progress key prefix, offset, count.
# Removes the entries, among `count` from `offset`, of jobs arq no longer holds. Returns
# {entries looked at, entries removed}.
_SWEEP_ABORTS = (
    _HELD_LUA
    + """
local first = tonumber(ARGV[3])
local ids = redis.call('ZRANGE', KEYS[2], first, first + tonumber(ARGV[4]) - 1)
local removed = 0
for _, id in ipairs(ids) do
    if not held(id) then
        redis.call('ZREM', KEYS[2], id)
        removed = removed + 1
    end
end
return {#ids, removed}
"""
)

SWEEP_BATCH = 1000


async def sweep_aborts(pool: Redis) -> int:
    """Remove abort entries whose job arq no longer holds; the number removed.

    One round trip while the abort set holds fewer than SWEEP_BATCH entries (it should hold
    only the aborts of jobs not yet seen by a worker)."""
    offset = removed = 0
    while True:
        looked, gone = await _run_script(
            pool,
            _SWEEP_ABORTS,
            [QUEUE_NAME, abort_jobs_ss],
            [job_key_prefix, in_progress_key_prefix, str(offset), str(SWEEP_BATCH)],
        )
        removed += int(gone)
        if int(looked) < SWEEP_BATCH:
            return removed
        offset += int(looked) - int(gone)


# KEYS: queue. ARGV: job key prefix, in-progress key prefix, then the job ids.
_MISSING = (
    _HELD_LUA
    + """
local missing = {}
for i = 3, #ARGV do
    if not held(ARGV[i]) then missing[#missing + 1] = ARGV[i] end
end
return missing
"""
)


MISSING_BATCH = 1000  # job ids per script call: Redis serves other clients between calls


async def missing_jobs(pool: Redis, job_ids: Sequence[str]) -> list[str]:
    """The job ids among `job_ids` that arq does not hold (neither queued nor running): one
    round trip whatever their number (a pipeline of one script call per MISSING_BATCH ids)."""
    if not job_ids:
        return []
    async with pool.pipeline(transaction=False) as pipe:
        for start in range(0, len(job_ids), MISSING_BATCH):
            batch = job_ids[start : start + MISSING_BATCH]
            pipe.eval(_MISSING, 1, QUEUE_NAME, job_key_prefix, in_progress_key_prefix, *batch)
        replies = await pipe.execute()
    return [job_id.decode() for missing in replies for job_id in missing]


# KEYS: queue, V key, finish key, batch key. ARGV: job key prefix, in-progress key prefix,
# result key prefix, flow key prefix, job key TTL (ms), then triples of job id, serialised
# job and flow.
# arq's enqueue_job, for many jobs at once and with our row as the source of truth: a job arq
# holds is left alone; one it does not hold is written and queued at its flow's fair tag, even
# over a stale job key (not in the queue: no worker would ever run it) or a kept result (arq's
# dedup would refuse).
_ENQUEUE_MISSING = (
    _HELD_LUA
    + FAIR_LUA
    + """
local enqueued = {}
for i = 6, #ARGV, 3 do
    local id = ARGV[i]
    if not held(id) then
        redis.call('DEL', ARGV[3] .. id)
        redis.call('SET', ARGV[1] .. id, ARGV[i + 1], 'PX', ARGV[5])
        redis.call('SET', ARGV[4] .. id, ARGV[i + 2], 'PX', ARGV[5])
        queue_fair(KEYS[1], KEYS[2], KEYS[3], KEYS[4], id, ARGV[i + 2])
        enqueued[#enqueued + 1] = id
    end
end
return enqueued
"""
)


async def enqueue_missing(
    pool: ArqRedis, jobs: Sequence[tuple[uuid.UUID | str, int, Flow]]
) -> list[str]:
    """Enqueue the analysis jobs of these (task id, attempt, flow) triples that arq does not
    hold, due now at their fair places (in the order given), in one round trip; the job ids
    enqueued. The check and the writes are one atomic script, so a job queued or started
    meanwhile is never written over."""
    if not jobs:
        return []
    now = timestamp_ms()
    args: list[str] = []
    for task_id, attempt, flow in jobs:
        payload = serialize_job(
            ANALYZE_FUNCTION, (str(task_id),), {}, None, now, serializer=serialize
        )
        args += [job_id_for(task_id, attempt), payload.decode(), flow.encode()]
    prefixes = [job_key_prefix, in_progress_key_prefix, result_key_prefix, FLOW_KEY_PREFIX]
    ttl = str(pool.expires_extra_ms)
    enqueued = await _run_script(
        pool,
        _ENQUEUE_MISSING,
        [QUEUE_NAME, V_KEY, FINISH_KEY, BATCH_KEY],
        [*prefixes, ttl, *args],
    )
    return [job_id.decode() for job_id in enqueued]


async def extend_in_progress(pool: Redis, ttl_ms: Mapping[str, int]) -> None:
    """Cut or extend arq's in-progress marker of each job id in `ttl_ms` to its time to live
    (milliseconds), in one pipelined round trip, so that a dead worker's jobs are retried
    after it. Raises what Redis raised."""
    async with pool.pipeline(transaction=False) as pipe:
        for job_id, ttl in ttl_ms.items():
            pipe.pexpire(in_progress_key_prefix + job_id, ttl)
        await pipe.execute()


async def queue_position(pool: Redis, job_id: str) -> int | None:
    """1-based position among jobs waiting to start (how many start before it, plus one);
    None when the job is not waiting.

    arq takes jobs in score, then member order (what ZRANK counts), and keeps running jobs in
    the queue too; the batch lane's reserved starts move a batch job ahead now and then. The
    process's snapshot of the queue's head (`QueueSnapshot`, at most SNAPSHOT_SECONDS old)
    holds each job's place in that start order (`start_order`): no round trip of its own for
    a job in the snapshot; one for a job beyond it or enqueued since (its ZRANK, in-progress
    marker and flow), placed by `Head.position_of_new`.
    """
    snapshot = await _snapshot(pool)
    rank = snapshot.ranks.get(job_id)
    if rank is None:
        async with pool.pipeline(transaction=False) as pipe:
            pipe.zrank(QUEUE_NAME, job_id)
            pipe.exists(in_progress_key_prefix + job_id)
            pipe.get(FLOW_KEY_PREFIX + job_id)
            found, running, encoded = await pipe.execute()
        if found is None or running:
            return None
        is_batch = (encoded or b"").split(b" ")[1:2] == [Lane.BATCH.value.encode()]
        return snapshot.position_of_new(job_id, int(found), is_batch)
    if rank < 0:  # running at the snapshot's time
        return None
    return max(rank - snapshot.running, 0) + 1


SNAPSHOT_SIZE = 2000  # job ids of the queue's head in a snapshot
_RUNNING_SCAN = 500  # of those, how many are checked for running (they sit at the head)
SNAPSHOT_SECONDS = 1.0

# KEYS: queue, since-batch key, batch-every key. ARGV: in-progress key prefix, how many ids,
# how many of them to check for running, flow key prefix. Returns the count of interactive
# starts since the last batch one, the batch_every the workers use (0: unknown), then the
# queue's first ids, each prefixed "-" if running (only the first ARGV[3] are checked), "b"
# if a batch job, "." otherwise.
_HEAD = """
local ids = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[2]) - 1)
local scan = math.min(#ids, tonumber(ARGV[3]))
local out = {redis.call('GET', KEYS[2]) or '0', redis.call('GET', KEYS[3]) or '0'}
for i = 1, #ids do
    local flag = '.'
    if i <= scan and redis.call('EXISTS', ARGV[1] .. ids[i]) == 1 then
        flag = '-'
    else
        local encoded = redis.call('GET', ARGV[4] .. ids[i])
        if encoded and string.match(encoded, '^%d+ (%S+) ') == 'batch' then flag = 'b' end
    end
    out[#out + 1] = flag .. ids[i]
end
return out
"""


@dataclass(frozen=True, slots=True)
class Head:
    """The queue's head at one moment: `ranks` maps the first SNAPSHOT_SIZE job ids to their
    0-based rank in start order (-1: running; `start_order`); `running`, how many of them
    run (arq keeps running jobs in the queue, at its head since they were due first)."""

    ranks: dict[str, int]
    running: int
    # What `start_order` reckoned from: the waiting jobs in queue order (id, is batch), the
    # interactive starts since the last batch one, the workers' batch_every (0: unknown).
    waiting: tuple[tuple[str, bool], ...] = ()
    since: int = 0
    every: int = 0
    has_batch: bool = False  # a batch job waits in the snapshot (else no start is reserved)

    def position_of_new(self, job_id: str, rank: int, is_batch: bool) -> int:
        """The 1-based start position of a job just enqueued at `rank` (0-based, in the queue
        now), which this snapshot does not hold: inserted at its place in the snapshot's
        queue order, with the reserved batch starts reckoned (`start_order`); past the
        snapshot, or with no reservation known, its rank less the running jobs."""
        index = max(rank - self.running, 0)
        if not self.every or index > len(self.waiting) or not self.has_batch:
            return index + 1
        waiting = [*self.waiting[:index], (job_id, is_batch), *self.waiting[index:]]
        return len(start_order(waiting, self.since, self.every, until=job_id))


_EMPTY = Head({}, 0)


class QueueSnapshot:
    """The queue's head (`Head`), taken at most once per SNAPSHOT_SECONDS with one script;
    callers that arrive while a snapshot is being taken share it (single flight: no stampede
    when it expires under load). Queue positions and the running-jobs count are estimates
    that old at most."""

    __slots__ = ("head", "pending", "taken_at")

    def __init__(self) -> None:
        self.head = _EMPTY
        self.taken_at = -math.inf
        self.pending: asyncio.Future[Head] | None = None

    async def get(self, pool: Redis) -> Head:
        if time.monotonic() - self.taken_at < SNAPSHOT_SECONDS:
            return self.head
        if self.pending is None or self.pending.get_loop() is not asyncio.get_running_loop():
            self.pending = asyncio.ensure_future(self._take(pool))
        # shield: a caller cancelled (its client gone) never cancels the others' snapshot
        return await asyncio.shield(self.pending)

    async def _take(self, pool: Redis) -> Head:
        try:
            since, every, *entries = await _run_script(
                pool,
                _HEAD,
                [QUEUE_NAME, SINCE_BATCH_KEY, BATCH_EVERY_KEY],
                [in_progress_key_prefix, str(SNAPSHOT_SIZE), str(_RUNNING_SCAN), FLOW_KEY_PREFIX],
            )
            ranks: dict[str, int] = {}
            waiting: list[tuple[str, bool]] = []
            for raw in entries:
                entry = raw.decode() if isinstance(raw, bytes) else str(raw)
                if entry.startswith("-"):
                    ranks[entry[1:]] = -1
                else:
                    waiting.append((entry[1:], entry.startswith("b")))
            running = len(ranks)
            order = start_order(waiting, int(since), int(every))
            ranks |= {job_id: running + n for n, job_id in enumerate(order)}
            has_batch = any(is_batch for _, is_batch in waiting)
            head = Head(ranks, running, tuple(waiting), int(since), int(every), has_batch)
            self.head, self.taken_at = head, time.monotonic()
            return self.head
        finally:
            self.pending = None


def start_order(
    waiting: Sequence[tuple[str, bool]], since: int, every: int, until: str | None = None
) -> list[str]:
    """The order in which the waiting jobs (job id, is batch; in queue order) start: queue
    order, but once `every` interactive jobs have started since the last batch one (`since`
    already), the next batch job goes first (the batch lane's reserved share,
    app/analysis/lanes.py; `every` 0: no reservation known). With `until`, the order up to
    that job only."""
    batch = collections.deque(job_id for job_id, is_batch in waiting if is_batch)
    taken: set[str] = set()
    order: list[str] = []
    queued = iter(waiting)
    while len(order) < len(waiting):
        if every and since >= every and batch:
            job_id, is_batch = batch.popleft(), True
        else:
            job_id, is_batch = next(queued)
            if job_id in taken:
                continue
            if is_batch:
                batch.popleft()  # the first batch job in queue order: this one
        taken.add(job_id)
        order.append(job_id)
        if job_id == until:
            break
        since = 0 if is_batch else since + 1
    return order


_snapshots: weakref.WeakKeyDictionary[Redis, QueueSnapshot] = weakref.WeakKeyDictionary()


async def _snapshot(pool: Redis) -> Head:
    """The process's snapshot of the queue's head for `pool` (at most SNAPSHOT_SECONDS old)."""
    snapshot = _snapshots.get(pool)
    if snapshot is None:
        snapshot = _snapshots[pool] = QueueSnapshot()
    return await snapshot.get(pool)


async def _running_jobs(pool: Redis) -> int:
    """Jobs running now (an estimate at most SNAPSHOT_SECONDS old)."""
    return (await _snapshot(pool)).running


async def queued_count(pool: ArqRedis) -> int:
    """Jobs in arq's queue (waiting, deferred or running)."""
    return int(await pool.zcard(QUEUE_NAME))
