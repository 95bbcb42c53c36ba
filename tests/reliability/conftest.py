import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.analysis.conftest import fake_ai, fake_ai_server, start_worker, worker_settings
from tests.sentinel_cluster import SentinelCluster

__all__ = ["fake_ai", "fake_ai_server", "start_worker", "worker_settings"]

ACL_USER = "vocalborn-app"


@pytest.fixture
def sentinel_cluster(tmp_path: Path) -> Iterator[SentinelCluster]:
    """A real Sentinel deployment (one master, one replica, three Sentinels) with a Sentinel
    password and an ACL user on Redis, stopped by PID at teardown."""
    cluster = SentinelCluster(
        tmp_path / "sentinel",
        redis_password=secrets.token_urlsafe(16),
        sentinel_password=secrets.token_urlsafe(16),
        redis_username=ACL_USER,
    ).start()
    try:
        yield cluster
    finally:
        cluster.stop()
