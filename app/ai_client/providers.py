"""The AI providers a worker may call, in order of preference, and the Redis keys that every
process shares about each: its concurrency slots (worker/slots.py) and its circuit breaker
(worker/breaker.py). The API reads them for the admin stats (`provider_states`); only
workers write them.

A provider is configured by AI_PROVIDERS (a JSON list, see `AIProvider`); without it there is
one, DEFAULT_PROVIDER, built from AI_SERVICE_URL, AI_SERVICE_API_KEY and AI_MAX_CONCURRENCY.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import cast

from pydantic import BaseModel, ConfigDict, Field
from redis.asyncio import Redis

DEFAULT_PROVIDER = "default"
BREAKER_PREFIX = "vocalborn:breaker:ai"
SLOTS_PREFIX = "vocalborn:ai_slots"


class AIProvider(BaseModel):
    """One AI service. `name`: a short slug, stored with each result it produces and used in
    the Redis keys and metric labels; `url`: its base URL (POST {url}/v1/analyze); `key`: its
    bearer key (None: none sent); `max_concurrency`: the calls every worker together may have
    in flight at it (None: AI_MAX_CONCURRENCY; 0: no cap); `model`: the model version asked
    for (the `model_version` query parameter, unless the task names one) and stored with the
    result; `degraded`: a fallback whose results are marked degraded (the reference
    analyzer, acoustic measures only), with the reason the better providers were passed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")
    url: str = Field(min_length=1)
    key: str | None = None
    max_concurrency: int | None = Field(default=None, ge=0)
    model: str | None = Field(default=None, max_length=50)
    degraded: bool = False


def breaker_prefix(name: str) -> str:
    """The prefix of provider `name`'s circuit-breaker keys. The default provider keeps the
    keys of the single breaker that came before providers (`vocalborn:breaker:ai:*`)."""
    return BREAKER_PREFIX if name == DEFAULT_PROVIDER else f"{BREAKER_PREFIX}:{name}"


@dataclass(frozen=True, slots=True)
class Keys:
    """One provider's breaker keys."""

    failures: str
    failed_ever: str
    open: str
    probe: str

    @classmethod
    def of(cls, name: str) -> Keys:
        """Provider `name`'s keys (under `breaker_prefix(name)`)."""
        prefix = breaker_prefix(name)
        return cls(
            f"{prefix}:failures", f"{prefix}:failed_ever", f"{prefix}:open", f"{prefix}:probe"
        )


def slots_key(name: str) -> str:
    """The sorted set of provider `name`'s slots: holder → when its lease ends (Unix ms)."""
    return f"{SLOTS_PREFIX}:{name}"


class ProviderState(BaseModel):
    """One provider as the admin stats show it: `cap` (None: uncapped), slots `in_use` (live
    holders; None when uncapped, nothing is counted then), `breaker` (closed, open or
    half_open: past its cool-down, a probe may go), `open_for_seconds` while open."""

    name: str
    model: str | None
    degraded: bool
    cap: int | None
    in_use: int | None
    breaker: str
    failures: int
    open_for_seconds: float | None


async def provider_states(
    redis: Redis, providers: Sequence[AIProvider], default_cap: int, threshold: int
) -> list[ProviderState]:
    """Each provider's cap, slots in use and breaker state (`threshold`: the failures that
    open a breaker), read from Redis in one pipeline. Raises on a Redis error."""
    now_ms = int(time.time() * 1000)
    pipe = redis.pipeline(transaction=False)
    for provider in providers:
        keys = Keys.of(provider.name)
        pipe.zcount(slots_key(provider.name), now_ms, "+inf")
        pipe.pttl(keys.open)
        pipe.get(keys.failures)
    answers = await cast(Awaitable[list[object]], pipe.execute())
    states = []
    for index, provider in enumerate(providers):
        in_use, open_ms, failures = answers[3 * index : 3 * index + 3]
        cap = cap_of(provider, default_cap)
        open_ms = int(cast(int, open_ms))
        counted = int(cast(bytes, failures)) if failures else 0
        breaker = "open" if open_ms > 0 else "half_open" if counted >= threshold else "closed"
        states.append(
            ProviderState(
                name=provider.name,
                model=provider.model,
                degraded=provider.degraded,
                cap=cap,
                in_use=int(cast(int, in_use)) if cap is not None else None,
                breaker=breaker,
                failures=counted,
                open_for_seconds=open_ms / 1000 if open_ms > 0 else None,
            )
        )
    return states


def cap_of(provider: AIProvider, default_cap: int) -> int | None:
    """The provider's concurrency cap: its own, else AI_MAX_CONCURRENCY; None when 0 (no
    cap)."""
    cap = provider.max_concurrency if provider.max_concurrency is not None else default_cap
    return cap or None
