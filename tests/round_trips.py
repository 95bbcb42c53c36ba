"""Round trips to Redis counted on the client's side: other clients of the same server (the
suite's other fixtures, a worker polling) never count, as they did in the server's
`total_reads_processed`."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Connection


def counting_connection() -> type[Connection]:
    """A redis-py connection class of its own whose `sent` counts what its connections send:
    one per command, one per pipeline (each a round trip), the connection's handshake
    included."""

    class Counting(Connection):
        sent = 0

        async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            type(self).sent += 1
            await super().send_packed_command(command, check_health)

    return Counting
