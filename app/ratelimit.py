"""The per-user submit rate limit (SUBMIT_RATE_LIMIT), shared by every API replica through
Redis: the `limits` library's moving window (exact: the window is the last N seconds, not a
calendar minute), on the queue's Redis connection pool.

Fails open: with Redis unreachable or not answering a submit is let through, logged and
counted (`vocalborn_submit_limit_unchecked`), as the submit itself goes on without Redis (its
row is the outbox, the reconciler enqueues it later). The wait is bounded by the pool's own
timeouts (`redis_client.connect`: 2 s to connect, 5 s for an answer), no cancel of a command in
flight."""

from __future__ import annotations

import logging
import time
import uuid

from limits import RateLimitItem, parse
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter
from redis.asyncio import ConnectionPool
from redis.exceptions import RedisError

from app.errors import TooManyRequests
from app.metrics import SUBMIT_LIMIT_UNCHECKED

log = logging.getLogger(__name__)

KEY_PREFIX = "vocalborn:ratelimit"
SUBMIT_NAMESPACE = "submit"


def parse_rate(rate: str) -> RateLimitItem:
    """`"60/minute"`, `"10/second"`, `"1000 per hour"` (the `limits` notation); ValueError
    for anything else."""
    return parse(rate)


class SubmitRateLimit:
    """Submits per user per window; `check` counts one and raises TooManyRequests past the limit."""

    def __init__(self, pool: ConnectionPool, rate: str) -> None:
        self.rate = rate
        self._item = parse_rate(rate)
        storage = RedisStorage(
            "async+redis://",  # the connection comes from `pool`, not from this URI
            implementation="redispy",
            key_prefix=KEY_PREFIX,
            connection_pool=pool,  # type: ignore[arg-type]  # limits types options as scalars
        )
        self._limiter = MovingWindowRateLimiter(storage)

    async def check(self, user_id: uuid.UUID) -> None:
        """One submit by `user_id`: one Redis round trip when allowed, two when refused
        (the second reads when the oldest submit in the window leaves it). Raises TooManyRequests
        past the limit; never raises a Redis error: a Redis that refuses, drops or does not
        answer within the pool's socket timeout lets the submit through (logged, counted)."""
        key = str(user_id)
        try:
            allowed = await self._limiter.hit(self._item, SUBMIT_NAMESPACE, key)
        except RedisError as exc:
            SUBMIT_LIMIT_UNCHECKED.inc()
            log.warning("submit rate limit not checked, submit let through: Redis %r", exc)
            return
        if allowed:
            return
        try:
            stats = await self._limiter.get_window_stats(self._item, SUBMIT_NAMESPACE, key)
            retry_after = stats.reset_time - time.time()
        except RedisError as exc:  # refused all the same; the whole window is an upper bound
            log.warning("submit rate limit: window unreadable (%r), Retry-After a window", exc)
            retry_after = self._item.get_expiry()
        raise TooManyRequests(
            "too_many_requests", f"At most {self.rate} submits per user", retry_after
        )
