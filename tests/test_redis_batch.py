"""Batched EVALs of one script (app/redis_batch.py) against real Redis: concurrent calls share a
connection and a round trip, each caller gets its own answer or its own error, order is kept."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Connection, Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from app.embedded import free_port
from app.redis_batch import ScriptBatch
from app.settings import Settings

# Appends ARGV[1] to the list KEYS[1] and answers the list's length; ARGV[1] "boom" is a script
# error.
_APPEND = """
if ARGV[1] == 'boom' then return redis.error_reply('boom') end
return redis.call('RPUSH', KEYS[1], ARGV[1])
"""


@pytest.fixture
async def batch(
    settings: Settings, redis: Redis, counting: type[Connection]
) -> AsyncIterator[ScriptBatch]:
    """Batched calls of _APPEND on a client of their own (connected)."""
    client = Redis.from_url(settings.redis_url, connection_class=counting)
    await client.ping()
    yield ScriptBatch(client, _APPEND)
    await client.aclose()


@pytest.fixture
def key() -> str:
    return f"test:batch:{uuid.uuid4().hex}"


async def test_concurrent_calls_share_a_round_trip_and_keep_their_order(
    batch: ScriptBatch, key: str, redis: Redis, counting: type[Connection]
) -> None:
    before = counting.sent
    answers = await asyncio.gather(*(batch([key], [str(i)]) for i in range(50)))
    sent = counting.sent - before
    # Each caller has its own answer: the list's length after its own append, in call order.
    assert answers == list(range(1, 51))
    assert await redis.lrange(key, 0, -1) == [str(i).encode() for i in range(50)]
    # One round trip each would be fifty (a second connection's handshake would be two more).
    assert sent <= 4, sent


async def test_a_script_error_goes_to_its_caller_only(batch: ScriptBatch, key: str) -> None:
    answers = await asyncio.gather(
        batch([key], ["a"]), batch([key], ["boom"]), batch([key], ["b"]), return_exceptions=True
    )
    assert answers[0] == 1 and answers[2] == 2
    assert isinstance(answers[1], ResponseError) and "boom" in str(answers[1])


async def test_a_connection_error_goes_to_every_caller_and_the_next_call_tries_again() -> None:
    """The calls queued behind a call that found Redis unreachable get its error at once:
    they would wait out the client's retries once more."""
    client = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    try:
        batch = ScriptBatch(client, _APPEND)
        answers = await asyncio.gather(
            *(batch(["k"], [str(i)]) for i in range(3)), return_exceptions=True
        )
        assert isinstance(answers[0], RedisConnectionError), answers
        assert all(answer is answers[0] for answer in answers), answers  # never sent
        with pytest.raises(RedisConnectionError):  # a new batch, not a flusher left behind
            await batch(["k"], ["again"])
    finally:
        await client.aclose()


async def test_a_cancelled_caller_leaves_the_others_their_answers(
    batch: ScriptBatch, key: str, redis: Redis
) -> None:
    calls = [asyncio.ensure_future(batch([key], [str(i)])) for i in range(5)]
    await asyncio.sleep(0)  # one turn of the loop: each call has run to its wait
    calls[2].cancel()
    done = await asyncio.gather(*calls, return_exceptions=True)
    assert isinstance(done[2], asyncio.CancelledError)
    assert [done[i] for i in (0, 1, 3, 4)] == [1, 2, 4, 5]  # the cancelled call was sent
    assert await redis.llen(key) == 5
