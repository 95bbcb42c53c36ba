"""Priority lanes, fair between users: start-time fair queuing in arq's one queue.

A waiting job's score in arq's queue (a ZSET; arq starts the lowest due scores first) is its
*start tag*: FAIR_EPOCH_MS plus a virtual time in points, so every tagged job is always due
(2000-01-01 is long past) and the queue's order is the fair order; a job's queue position is
its rank, as before. A flow is one user's jobs in one lane; a job of a flow gets, atomically in
the enqueue script,

    S = max(V, F[flow]),   F[flow] = S + cost(lane),   cost(lane) = POINTS / weight(lane)

where V, the virtual time, is the largest start tag of a job a worker has started (advanced in
the worker's claim, `worker/healing.py`). A user's 200 waiting jobs hold tags V, V + c, ...,
V + 199c; another user's first job gets V and waits only for the jobs already started. With
weights 9 (interactive) and 1 (batch), a backlogged interactive flow is served nine times as
often as a backlogged batch flow, and every batch flow keeps its share: it never starves.

Scores from FAIR_EPOCH_MS up to WALL_FLOOR_MS are tags; arq's own wall-clock scores (a retry
deferred to a time, a cron job) are above. A worker's poll first *promotes* every wall-clock
job that has come due: a task job gets a fair tag in its flow (read from its flow key, written
at enqueue), any other job (arq's cron jobs: the reconciler, the cleanup) goes to the head,
scored SYSTEM_SCORE. See docs/architecture.md, "The scheduling rule".
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.settings import Settings

FAIR_EPOCH_MS = 946_684_800_000  # 2000-01-01T00:00Z: tag 0 (never 0 itself: arq skips it)
WALL_FLOOR_MS = 1_577_836_800_000  # 2020-01-01T00:00Z: scores from here on are wall-clock
SYSTEM_SCORE = FAIR_EPOCH_MS - 1  # a promoted job that has no flow (a cron job): first
RESERVED_SCORE = FAIR_EPOCH_MS - 0.5  # a batch job given the batch lane's reserved start
POINTS = 1000  # virtual time a job of weight 1 costs
V_KEY = "vocalborn:fair:v"  # V, in points
FINISH_KEY = "vocalborn:fair:finish"  # ZSET: flow -> F[flow], in points (F <= V pruned)
FLOW_KEY_PREFIX = "vocalborn:fair:job:"  # per waiting job id: "<cost> <lane> <user>"
BATCH_KEY = "vocalborn:fair:batch"  # ZSET: batch job id -> its score (started ones lazily gone)
SINCE_BATCH_KEY = "vocalborn:fair:since_batch"  # interactive starts since the last batch one
BATCH_EVERY_KEY = "vocalborn:fair:batch_every"  # the workers' LaneWeights.batch_every


class Lane(enum.StrEnum):
    """INTERACTIVE: one recording submitted by a user who waits for it. BATCH: session
    submits, admin retries, re-analyses of a record already analysed."""

    INTERACTIVE = "interactive"
    BATCH = "batch"


@dataclass(frozen=True, slots=True)
class Flow:
    """One user's jobs in one lane; `cost`: the virtual time (points) each job takes."""

    lane: Lane
    user: str
    cost: int

    def encode(self) -> str:
        """The job's flow key value: "<cost> <lane> <user>" (read back by the promote script)."""
        return f"{self.cost} {self.lane.value} {self.user}"


@dataclass(frozen=True, slots=True)
class LaneWeights:
    """Each lane's weight (settings LANE_WEIGHT_INTERACTIVE, LANE_WEIGHT_BATCH): a backlogged
    flow of the lane gets starts in proportion to it."""

    interactive: int = 9
    batch: int = 1

    @classmethod
    def of(cls, settings: Settings) -> LaneWeights:
        return cls(settings.lane_weight_interactive, settings.lane_weight_batch)

    @property
    def batch_every(self) -> int:
        """Interactive starts after which a waiting batch job is owed the next start."""
        return max(round(self.interactive / self.batch), 1)

    def flow(self, lane: Lane | str, user: uuid.UUID | str) -> Flow:
        """The flow of `user`'s jobs in `lane`."""
        lane = Lane(lane)
        weight = self.interactive if lane is Lane.INTERACTIVE else self.batch
        return Flow(lane, str(user), max(round(POINTS / weight), 1))


DEFAULT_WEIGHTS = LaneWeights()
# A job enqueued with no owner known (tests and benchmarks that enqueue directly): one flow.
UNOWNED = DEFAULT_WEIGHTS.flow(Lane.BATCH, "-")

# The fair tag, in Lua: `fair_score(v key, finish key, flow, cost)` is the job's score (the
# flow's next start tag, FAIR_EPOCH_MS + S) and moves the flow's finish tag on. Flows whose
# finish tag is below V are forgotten (max(V, F) is V for them anyway).
FAIR_LUA = f"""
local function fair_score(vkey, fkey, flow, cost)
    local v = tonumber(redis.call('GET', vkey) or '0')
    local f = tonumber(redis.call('ZSCORE', fkey, flow) or '0')
    local s = math.max(v, f)
    redis.call('ZADD', fkey, s + tonumber(cost), flow)
    redis.call('ZREMRANGEBYSCORE', fkey, '-inf', '(' .. v)
    return {FAIR_EPOCH_MS} + s
end
local function flow_of(encoded)
    local cost, lane, user = string.match(encoded, '^(%d+) (%S+) (.*)$')
    return lane .. ':' .. user, cost, lane
end
-- Queue job `id` of flow `encoded` at its fair tag; a batch job is indexed by its score too.
local function queue_fair(qkey, vkey, fkey, bkey, id, encoded)
    local flow, cost, lane = flow_of(encoded)
    local score = fair_score(vkey, fkey, flow, cost)
    redis.call('ZADD', qkey, score, id)
    if lane == 'batch' then
        redis.call('ZADD', bkey, score, id)
    else
        redis.call('ZREM', bkey, id)
    end
    return score
end
"""

# KEYS: queue, V key, finish key, batch key, since-batch key, batch-every key. ARGV: now (ms),
# how many at most, flow key prefix, in-progress key prefix, batch_every. Promotes the due
# wall-clock jobs that are not running (see the module's doc), then, for every `batch_every`
# interactive jobs started since the last batch one, moves the first waiting batch job to
# RESERVED_SCORE (its reserved start). batch_every is kept for the queue positions'
# reckoning (app/analysis/queue.py, `start_order`). Returns {promoted, reserved}.
PROMOTE = (
    FAIR_LUA
    + f"""
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], {WALL_FLOOR_MS}, ARGV[1], 'LIMIT', 0, ARGV[2])
local moved = 0
for _, id in ipairs(ids) do
    if redis.call('EXISTS', ARGV[4] .. id) == 0 then
        local encoded = redis.call('GET', ARGV[3] .. id)
        if encoded then
            queue_fair(KEYS[1], KEYS[2], KEYS[3], KEYS[4], id, encoded)
        else
            redis.call('ZADD', KEYS[1], 'XX', {SYSTEM_SCORE}, id)
        end
        moved = moved + 1
    end
end
redis.call('SET', KEYS[6], ARGV[5])
local every = tonumber(ARGV[5])
local since = tonumber(redis.call('GET', KEYS[5]) or '0')
local reserved = 0
local looked = 0
while since >= every and looked < 1000 do  -- the index's head may hold started jobs
    local head = redis.call('ZRANGE', KEYS[4], 0, 0)
    if #head == 0 then
        since = 0  -- no batch job waits: nothing is owed
        break
    end
    local id = head[1]
    redis.call('ZREM', KEYS[4], id)
    looked = looked + 1
    local score = tonumber(redis.call('ZSCORE', KEYS[1], id) or '-1')
    if score >= {FAIR_EPOCH_MS} and score < {WALL_FLOOR_MS}
            and redis.call('EXISTS', ARGV[4] .. id) == 0 then
        redis.call('ZADD', KEYS[1], 'XX', {RESERVED_SCORE!r}, id)
        since = since - every
        reserved = reserved + 1
    end
end
redis.call('SET', KEYS[5], since)
return {{moved, reserved}}
"""
)

# A Lua function for a script that starts jobs (app/analysis/queue.py's pick): the start of the
# job `id` whose score is `score` moves V to its tag if that is larger; a batch job's start
# resets the count of interactive starts since the last batch one (and takes it out of the
# batch index), an interactive job's adds one (a job without a flow, a cron job, counts for
# neither); the flow key goes (a retry is a new job id with its own).
ADVANCE = f"""
local function advance(v_key, since_key, flow_key, batch_key, score, id)
    local s = tonumber(score) - {FAIR_EPOCH_MS}
    local v = tonumber(redis.call('GET', v_key) or '0')
    if s >= 0 and s < {WALL_FLOOR_MS - FAIR_EPOCH_MS} and s > v then
        redis.call('SET', v_key, s)
    end
    local encoded = redis.call('GET', flow_key)
    if encoded then
        if string.match(encoded, '^%d+ (%S+) ') == 'batch' then
            redis.call('SET', since_key, 0)
            redis.call('ZREM', batch_key, id)
        else
            redis.call('INCR', since_key)
        end
        redis.call('DEL', flow_key)  -- only a waiting job needs its flow
    end
end
"""
