"""`vocalborn up`: the whole system on one machine, no Docker, no pre-installed servers.

Starts PostgreSQL and Redis from their wheels (unless DATABASE_URL / REDIS_URL are set),
migrates, creates a demo user, then runs the analyzer, one worker and the API as child
processes, and supervises them: a child that exits is started again after a backoff (1 s,
doubling up to 30 s), with a line saying so; one that exits CRASH_LIMIT times within
CRASH_WINDOW_SECONDS stops everything. Ctrl-C (or SIGTERM) stops the whole tree: each child
is the leader of its own process group, and the group (the analyzer's pool processes too)
gets SIGTERM, then SIGKILL after a bounded grace; then Redis and PostgreSQL, by PID.

The supervision is these few lines rather than supervisord or circus: they are daemons with
their own configuration and control socket, and `up` is one foreground command that must
also own the embedded servers and stop everything on Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from app import migrate
from app.auth import issue_access_token
from app.cli import create_user
from app.client.links import LINK_TOKEN_TTL_SECONDS, client_lines
from app.embedded import EmbeddedPostgres, EmbeddedRedis, ensure_database, free_port, stop_group
from app.settings import Settings
from app.users.models import Role

DEMO_EMAIL = "demo@vocalborn.local"
DEMO_TOKEN_TTL = 24 * 3600
READY_TIMEOUT_SECONDS = 60.0
# Restarts of a child that exited: after RESTART_FIRST_SECONDS, doubling with each exit
# within CRASH_WINDOW_SECONDS, at most RESTART_MAX_SECONDS; the CRASH_LIMIT-th exit within
# that window stops everything.
RESTART_FIRST_SECONDS = 1.0
RESTART_MAX_SECONDS = 30.0
CRASH_WINDOW_SECONDS = 120.0
CRASH_LIMIT = 5
SUPERVISE_TICK_SECONDS = 0.2
HTTP_SHUTDOWN_SECONDS = 5


def _jwt_secret(data: Path) -> str:
    """Kept in the data directory so tokens stay valid across restarts of `up`."""
    path = data / "jwt_secret"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(48))
        path.chmod(0o600)
    return path.read_text().strip()


def _wait_http(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {READY_TIMEOUT_SECONDS} s")


@dataclass
class Child:
    """A supervised child: `python -m <command>`, leader of its own process group."""

    name: str
    command: tuple[str, ...]
    env: dict[str, str]
    process: subprocess.Popen[bytes] = field(init=False)
    exits: deque[float] = field(default_factory=deque)  # time.monotonic() of recent exits
    restart_at: float | None = None

    def __post_init__(self) -> None:
        self.start()

    def start(self) -> None:
        """Start the child (again): `python -m <command>` in a session of its own."""
        # Its own session and process group: a Ctrl-C in the terminal reaches the launcher
        # only, and the group is how its own children are found and stopped.
        self.process = subprocess.Popen(
            [sys.executable, "-m", *self.command], env=self.env, start_new_session=True
        )

    def exited(self, now: float) -> float | None:
        """Record an exit at `now`; the backoff before the restart, or None when it has
        exited CRASH_LIMIT times within CRASH_WINDOW_SECONDS."""
        self.exits.append(now)
        while self.exits and self.exits[0] < now - CRASH_WINDOW_SECONDS:
            self.exits.popleft()
        if len(self.exits) >= CRASH_LIMIT:
            return None
        return min(RESTART_MAX_SECONDS, RESTART_FIRST_SECONDS * 2.0 ** (len(self.exits) - 1))


class System:
    def __init__(self, port: int, data: Path) -> None:
        self.port = port
        self.data = data
        self.servers: list[EmbeddedPostgres | EmbeddedRedis] = []
        self.children: list[Child] = []
        # An empty value means unset (as in Settings): DATABASE_URL= starts the embedded one.
        self.env = {name: value for name, value in os.environ.items() if value}

    def start_servers(self) -> None:
        if "DATABASE_URL" not in self.env:
            postgres = EmbeddedPostgres(self.data / "postgres").start()
            self.servers.append(postgres)
            self.env["DATABASE_URL"] = asyncio.run(ensure_database(postgres.url, "vocalborn"))
        if "REDIS_URL" not in self.env:
            redis = EmbeddedRedis(self.data / "redis").start()
            self.servers.append(redis)
            self.env["REDIS_URL"] = redis.url
        self.env.setdefault("ENVIRONMENT", "development")
        self.env.setdefault("JWT_SECRET", _jwt_secret(self.data))
        self.env.setdefault("STORAGE_DIR", str(self.data / "storage"))
        self.env.setdefault("AI_SERVICE_URL", f"http://127.0.0.1:{free_port()}")
        # Match the worker and the AI cap to the local analyzer, which admits ANALYZER_WORKERS
        # analyses at a time: more calls would only be told to come back later (503 with
        # Retry-After).
        analyses = self.env.setdefault("ANALYZER_WORKERS", "2")
        self.env.setdefault("AI_SERVICE_CONCURRENCY", analyses)
        self.env.setdefault("WORKER_MAX_JOBS", analyses)
        self.env.setdefault("AI_MAX_CONCURRENCY", analyses)

    def prepare(self) -> tuple[str, str]:
        """The demo user's token, and a short-lived one for the web page's link."""
        os.environ.update(self.env)
        settings = Settings()
        migrate.upgrade(settings.database_url)
        user = asyncio.run(create_user(settings, DEMO_EMAIL, Role.USER))
        token = issue_access_token(settings, user.user_id, Role.USER, DEMO_TOKEN_TTL)
        link = issue_access_token(settings, user.user_id, Role.USER, LINK_TOKEN_TTL_SECONDS)
        return token, link

    def spawn(self, name: str, *command: str) -> subprocess.Popen[bytes]:
        child = Child(name, command, self.env)
        self.children.append(child)
        return child.process

    def start_children(self) -> None:
        ai_port = self.env["AI_SERVICE_URL"].rsplit(":", 1)[-1].strip("/")
        uvicorn = (
            "uvicorn", "--host", "127.0.0.1", "--log-level", "warning",
            # A request still running this long after SIGTERM is cancelled: a long analysis
            # must not hold the stop until the grace runs out and the group is SIGKILLed.
            "--timeout-graceful-shutdown", str(HTTP_SHUTDOWN_SECONDS),
        )  # fmt: skip
        analyzer = self.spawn("analyzer", *uvicorn, "--port", ai_port, "analyzer.main:app")
        _wait_http(f"{self.env['AI_SERVICE_URL']}/healthz", analyzer)
        self.spawn("worker", "worker")
        api = self.spawn(
            "api", *uvicorn, "--port", str(self.port), "--factory", "app.main:create_app"
        )
        _wait_http(f"http://127.0.0.1:{self.port}/healthz", api)

    def stop(self) -> None:
        for child in reversed(self.children):  # API, worker, analyzer
            stop_group(child.process, signal.SIGTERM)
        for server in reversed(self.servers):
            server.stop()

    def supervise(self, now: float) -> bool:
        """One round: restart each child that exited, once its backoff has passed; False
        when one has exited too often (everything must stop)."""
        for child in self.children:
            if child.process.poll() is None:
                continue
            if child.restart_at is None:
                code = child.process.returncode
                backoff = child.exited(now)
                if backoff is None:
                    print(
                        f"vocalborn: the {child.name} exited with {code}, {CRASH_LIMIT} times"
                        f" within {CRASH_WINDOW_SECONDS:.0f} s; stopping everything",
                        flush=True,
                    )
                    return False
                # Whatever it left in its group (the analyzer's pool processes) goes too.
                stop_group(child.process, signal.SIGKILL)
                print(
                    f"vocalborn: the {child.name} (pid {child.process.pid}) exited with"
                    f" {code}; restarting it in {backoff:.0f} s",
                    flush=True,
                )
                child.restart_at = now + backoff
            elif now >= child.restart_at:
                child.restart_at = None
                child.start()
                print(
                    f"vocalborn: the {child.name} restarted (pid {child.process.pid})", flush=True
                )
        return True

    def wait(self) -> bool:
        """Until Ctrl-C / SIGTERM (True), or until a child exits too often (False); children
        that exit are restarted meanwhile."""
        stop = threading.Event()

        def on_signal(signum: int, frame: FrameType | None) -> None:
            stop.set()

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        while not stop.wait(SUPERVISE_TICK_SECONDS):
            if not self.supervise(time.monotonic()):
                return False
        return True


def _banner(port: int, token: str, link_token: str, system: System) -> str:
    api = f"http://127.0.0.1:{port}"
    return f"""
VocalBorn is up.
  API:        {api}   (docs: {api}/docs)
  AI service: {system.env["AI_SERVICE_URL"]}
  Database:   {system.env["DATABASE_URL"]}
  Redis:      {system.env["REDIS_URL"]}
  Demo user:  {DEMO_EMAIL}
export TOKEN={token}
{client_lines(api, token, link_token)}Press Ctrl-C to stop everything.
""".lstrip()


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run(port: int, data_dir: str) -> int:
    """The whole system until Ctrl-C or SIGTERM (0), or until a child exits too often (1);
    everything started is stopped on every path, a signal during start-up included."""
    data = Path(data_dir).resolve()
    data.mkdir(parents=True, exist_ok=True)
    system = System(port, data)
    # Until wait() takes them over: a SIGTERM while the servers and children start (up to a
    # minute each) would otherwise end the launcher without its `finally`, leaving them all.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    code = 0
    try:
        system.start_servers()
        token, link_token = system.prepare()
        system.start_children()
        print(_banner(port, token, link_token, system), flush=True)
        if not system.wait():
            code = 1
    except KeyboardInterrupt:
        pass
    finally:
        # A second Ctrl-C must not cut the stop short (it is bounded by the children's grace).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("vocalborn: stopping", flush=True)
        system.stop()
    print("vocalborn: stopped", flush=True)
    return code
