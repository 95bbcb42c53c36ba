"""`vocalborn up`: the whole system on one machine, no Docker, no pre-installed servers.

Starts PostgreSQL and Redis from their wheels (unless DATABASE_URL / REDIS_URL are set),
migrates, creates a demo user, then runs the analyzer, one worker and the API as child
processes until Ctrl-C, when it stops them all, children first, by PID.
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
from pathlib import Path
from types import FrameType

from app import migrate
from app.auth import issue_access_token
from app.cli import create_user
from app.client.links import LINK_TOKEN_TTL_SECONDS, client_lines
from app.embedded import EmbeddedPostgres, EmbeddedRedis, ensure_database, free_port, stop_child
from app.settings import Settings
from app.users.models import Role

DEMO_EMAIL = "demo@vocalborn.local"
DEMO_TOKEN_TTL = 24 * 3600
READY_TIMEOUT_SECONDS = 60.0


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


class System:
    def __init__(self, port: int, data: Path) -> None:
        self.port = port
        self.data = data
        self.servers: list[EmbeddedPostgres | EmbeddedRedis] = []
        self.children: list[subprocess.Popen[bytes]] = []
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
        # Match the worker to the local analyzer (ANALYZER_WORKERS analyses at a time): more
        # jobs would only be told to come back later.
        analyses = self.env.setdefault("ANALYZER_WORKERS", "2")
        self.env.setdefault("AI_SERVICE_CONCURRENCY", analyses)
        self.env.setdefault("WORKER_MAX_JOBS", str(2 * int(analyses)))

    def prepare(self) -> tuple[str, str]:
        """The demo user's token, and a short-lived one for the web page's link."""
        os.environ.update(self.env)
        settings = Settings()
        migrate.upgrade(settings.database_url)
        user = asyncio.run(create_user(settings, DEMO_EMAIL, Role.USER))
        token = issue_access_token(settings, user.user_id, Role.USER, DEMO_TOKEN_TTL)
        link = issue_access_token(settings, user.user_id, Role.USER, LINK_TOKEN_TTL_SECONDS)
        return token, link

    def spawn(self, *command: str) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            [sys.executable, "-m", *command], env=self.env, start_new_session=True
        )
        self.children.append(process)
        return process

    def start_children(self) -> None:
        ai_port = self.env["AI_SERVICE_URL"].rsplit(":", 1)[-1].strip("/")
        uvicorn = ("uvicorn", "--host", "127.0.0.1", "--log-level", "warning")
        analyzer = self.spawn(*uvicorn, "--port", ai_port, "analyzer.main:app")
        _wait_http(f"{self.env['AI_SERVICE_URL']}/healthz", analyzer)
        self.spawn("worker")
        api = self.spawn(*uvicorn, "--port", str(self.port), "--factory", "app.main:create_app")
        _wait_http(f"http://127.0.0.1:{self.port}/healthz", api)

    def stop(self) -> None:
        for child in reversed(self.children):  # API, worker, analyzer
            stop_child(child, signal.SIGTERM)
        for server in reversed(self.servers):
            server.stop()

    def wait(self) -> None:
        """Until Ctrl-C / SIGTERM, or until a child dies."""
        stop = threading.Event()

        def on_signal(signum: int, frame: FrameType | None) -> None:
            stop.set()

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        while not stop.wait(0.5):
            for child in self.children:
                if child.poll() is not None:
                    print(f"vocalborn: {child.args!r} exited with {child.returncode}; stopping")
                    return


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


def run(port: int, data_dir: str) -> int:
    data = Path(data_dir).resolve()
    data.mkdir(parents=True, exist_ok=True)
    system = System(port, data)
    try:
        system.start_servers()
        token, link_token = system.prepare()
        system.start_children()
        print(_banner(port, token, link_token, system), flush=True)
        system.wait()
    finally:
        print("vocalborn: stopping", flush=True)
        system.stop()
    print("vocalborn: stopped", flush=True)
    return 0
