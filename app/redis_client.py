"""Every Redis connection of the system is made here: the arq pools of the API and the workers,
the publisher, the progress hub, the circuit breaker, the leases, the heartbeats and the CLI.

Two ways to reach Redis, both from settings (`RedisTarget.of(settings)`):

- a plain URL (`REDIS_URL`: `redis://`, `rediss://` for TLS, `unix://`), with an ACL user and
  password in the URL or in `REDIS_USERNAME` / `REDIS_PASSWORD`;
- Redis Sentinel (`REDIS_SENTINELS` = `host:port,…`): the Sentinels name the master of
  `REDIS_SENTINEL_MASTER`, asked with `REDIS_SENTINEL_USERNAME` / `REDIS_SENTINEL_PASSWORD`;
  the master is then reached with REDIS_URL's database, TLS scheme, user and password (its
  host and port are not used). After a failover, each new connection goes to the new master.

redis-py does the protocol (RESP2 or RESP3, parsed by hiredis when installed), TLS, ACL users
and Sentinel; the clients are arq's `ArqRedis` (a `redis.asyncio.Redis`) with our JSON job
serialisers, so any of them can enqueue.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from arq.connections import ArqRedis
from redis.asyncio import ConnectionPool
from redis.asyncio.connection import Connection, parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.analysis.queue import QUEUE_NAME, deserialize, serialize

if TYPE_CHECKING:
    from app.settings import Settings

DEFAULT_SENTINEL_MASTER = "vocalborn"
CONNECT_TIMEOUT_SECONDS = 2.0
SOCKET_TIMEOUT_SECONDS = 5.0
HEALTH_CHECK_SECONDS = 15
SENTINEL_TIMEOUT_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """Where Redis is and how to log in (see the module's docstring). `sentinels` empty:
    the plain URL. Passwords are never shown in `repr`."""

    url: str
    sentinels: tuple[tuple[str, int], ...] = ()
    master: str = DEFAULT_SENTINEL_MASTER
    username: str | None = None
    password: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = None
    protocol: int = 2

    @classmethod
    def of(cls, settings: Settings) -> RedisTarget:
        """The target REDIS_URL, REDIS_SENTINELS and the Redis credentials name."""
        return cls(
            url=settings.redis_url,
            sentinels=settings.redis_sentinel_addresses,
            master=settings.redis_sentinel_master,
            username=settings.redis_username,
            password=settings.redis_password,
            sentinel_username=settings.redis_sentinel_username,
            sentinel_password=settings.redis_sentinel_password,
            protocol=settings.redis_protocol,
        )

    def __repr__(self) -> str:
        where = f"sentinels={self.sentinels!r}, master={self.master!r}" if self.sentinels else ""
        return f"RedisTarget({where or 'url'}, protocol={self.protocol})"


def failover_retry(seconds: float = 15.0) -> Retry:
    """A redis-py retry policy that rides out a failover (or a short outage) of about
    `seconds` of sleeps (redis-py's backoff: 0.2, 0.4, 0.8 s, then 1 s each; every attempt also
    takes up to its connect or socket timeout, so an outage is ridden out somewhat longer). For
    loops that must not die of one failed command (arq's polling), never for a request a
    client waits on."""
    retries = 4 + max(int(seconds - 1.5), 0)  # 0.2 + 0.4 + 0.8 + 1, then 1 s each
    return Retry(ExponentialBackoff(cap=1.0, base=0.1), retries)


def connect(
    target: RedisTarget | str,
    *,
    client_name: str | None = None,
    socket_timeout: float | None = SOCKET_TIMEOUT_SECONDS,
    health_check_interval: int = HEALTH_CHECK_SECONDS,
    retry: Retry | None = None,
    connection_class: type[Connection] | None = None,
) -> ArqRedis:
    """A client (with its own connection pool) for `target` (a URL: a plain target). Connects
    lazily, so a process can start while Redis is down.

    `client_name`: set on every connection (CLIENT SETNAME). `socket_timeout`: seconds a
    command's reply may take (None: no limit, for a pub/sub reader). `health_check_interval`:
    seconds idle after which a connection is PINGed before use (0: never). `retry`: redis-py's
    retry on connection errors and timeouts (default: none, an error is raised at once).
    `connection_class`: a test seam, plain URLs only.
    """
    if isinstance(target, str):
        target = RedisTarget(target)
    options: dict[str, Any] = {
        "socket_connect_timeout": CONNECT_TIMEOUT_SECONDS,
        "socket_timeout": socket_timeout,
        "health_check_interval": health_check_interval,
        "protocol": target.protocol,
    }
    if client_name:
        options["client_name"] = client_name
    if retry is not None:
        options["retry"] = retry
        options["retry_on_error"] = [RedisConnectionError, RedisTimeoutError]
    pool: ConnectionPool
    if target.sentinels:
        if connection_class is not None:
            raise ValueError("connection_class is a seam for plain URLs only")
        pool = _sentinel_pool(target, options)
    else:
        if connection_class is not None:
            options["connection_class"] = connection_class
        credentials = {"username": target.username, "password": target.password}
        options |= {key: value for key, value in credentials.items() if value is not None}
        pool = ConnectionPool.from_url(target.url, **options)  # the URL's own values win
    return ArqRedis(
        connection_pool=pool,
        job_serializer=serialize,
        job_deserializer=deserialize,
        default_queue_name=QUEUE_NAME,
    )


class _SentinelPool(SentinelConnectionPool):
    """redis-py's Sentinel pool, whose full disconnect (the client's `aclose`) also closes
    the connections to the Sentinels."""

    async def disconnect(self, inuse_connections: bool = True) -> None:
        await super().disconnect(inuse_connections)
        if inuse_connections:
            for sentinel in self.sentinel_manager.sentinels:
                await sentinel.aclose()


def _sentinel_pool(target: RedisTarget, options: dict[str, Any]) -> ConnectionPool:
    """The master's pool: its address from the Sentinels, everything else from the URL."""
    from_url = parse_url(target.url)
    master = {
        key: value
        for key, value in from_url.items()
        if key not in ("host", "port", "path", "connection_class")
    }
    master.setdefault("username", target.username)
    master.setdefault("password", target.password)
    sentinel_options = {
        "socket_connect_timeout": CONNECT_TIMEOUT_SECONDS,
        "socket_timeout": SENTINEL_TIMEOUT_SECONDS,
        "username": target.sentinel_username,
        "password": target.sentinel_password,
    }
    sentinel = Sentinel(list(target.sentinels), sentinel_kwargs=sentinel_options)  # type: ignore[no-untyped-call]
    return _SentinelPool(  # type: ignore[no-untyped-call]
        target.master,
        sentinel,
        ssl=target.url.startswith("rediss:"),
        is_master=True,
        **options,
        **master,
    )
