"""Every replica scraped (issue 16, item 1): two real worker processes, each on its own
metrics port, and the API's internal metrics port, scraped over HTTP after tasks have run and
parsed with prometheus_client's parser. In production the public API port has no /metrics and,
unless switched on, no /docs or /openapi.json."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.embedded import free_port
from app.main import create_app
from app.settings import Settings
from app.users.models import Role
from tests.analysis.conftest import submit, upload_recording, wait_for
from tests.conftest import ApiUser, MakeUser
from tests.fake_ai import FakeAI, ok
from tests.reliability.worker_process import WorkerProcess, worker_env
from tests.servers import UvicornThread

TASKS = 6
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(exposition: str) -> Samples:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    }


def total(samples: Samples, name: str, **labels: str) -> float:
    return sum(
        value
        for (sample, sample_labels), value in samples.items()
        if sample == name and set(labels.items()) <= set(sample_labels)
    )


async def scrape(port: int) -> Samples:
    async with httpx.AsyncClient() as http:
        response = await http.get(f"http://127.0.0.1:{port}/metrics")
    response.raise_for_status()
    return parse(response.text)


@pytest.fixture
def fake_ai() -> Iterator[FakeAI]:
    server = FakeAI().start()
    server.reset(ok(latency=0.3))  # long enough that both workers take some
    yield server
    server.stop()


@pytest.fixture
def production(settings: Settings) -> Settings:
    """The test servers in production mode (the test JWT secret is 48 random bytes)."""
    return settings.model_copy(
        update={"environment": "production", "api_metrics_port": free_port()}
    )


@pytest.fixture
async def api(production: Settings, clean: None) -> AsyncIterator[UvicornThread]:
    server = UvicornThread(create_app(production)).start()
    yield server
    server.stop()


async def test_two_workers_and_the_api_scraped_on_their_own_ports(
    api: UvicornThread,
    production: Settings,
    make_user: MakeUser,
    fake_ai: FakeAI,
    tmp_path: Path,
) -> None:
    user: ApiUser = await make_user(role=Role.USER)
    ports = {f"worker-{n}-{uuid.uuid4().hex[:6]}": free_port() for n in (1, 2)}
    workers = [
        await WorkerProcess.start(
            worker_env(
                production,
                WORKER_NAME=name,
                WORKER_METRICS_PORT=str(port),
                AI_SERVICE_URL=fake_ai.url,
            ),
            tmp_path,
        )
        for name, port in ports.items()
    ]
    try:
        before = await scrape(production.api_metrics_port)
        async with httpx.AsyncClient(base_url=api.url, timeout=10) as client:
            task_ids = []
            for _ in range(TASKS):
                _, record, _ = await upload_recording(client, user)
                task_ids.append((await submit(client, user, record))["task_id"])

            async def all_succeeded() -> bool:
                for task_id in task_ids:
                    status = await client.get(
                        f"/api/v1/tasks/analysis/{task_id}/status", headers=user.headers
                    )
                    if status.json()["status"] != "success":
                        return False
                return True

            await wait_for(all_succeeded, within=60)

            async def counted() -> list[Samples] | None:
                try:
                    scraped = [await scrape(port) for port in ports.values()]
                except httpx.ConnectError:  # a worker still starting (the other took all)
                    return None
                done = sum(
                    total(s, "vocalborn_tasks_finished_total", status="success") for s in scraped
                )
                return scraped if done == TASKS else None

            per_worker = await wait_for(counted, within=20)

            # The public port: no metrics (a 404 in the one error shape), no docs.
            for path in ("/metrics", "/metrics/", "/docs", "/openapi.json"):
                response = await client.get(path)
                assert response.status_code == 404, (path, response.status_code)
    finally:
        for worker in workers:
            await worker.kill()

    # Each worker's own series: its heartbeat under its own name, nothing left in flight,
    # one AI call per task it finished.
    for (name, _), samples in zip(ports.items(), per_worker, strict=True):
        heartbeats = {
            dict(labels)["worker"]
            for (sample, labels) in samples
            if sample == "vocalborn_worker_heartbeat_timestamp_seconds"
        }
        assert heartbeats == {name}
        assert total(samples, "vocalborn_tasks_in_flight") == 0
        finished = total(samples, "vocalborn_tasks_finished_total", status="success")
        assert total(samples, "vocalborn_ai_request_seconds_count") == finished
        assert total(samples, "vocalborn_task_processing_seconds_count") == finished
    assert (
        sum(total(s, "vocalborn_tasks_finished_total", status="success") for s in per_worker)
        == TASKS
    )

    after = await scrape(production.api_metrics_port)
    submitted = total(after, "vocalborn_tasks_submitted_total") - total(
        before, "vocalborn_tasks_submitted_total"
    )
    assert submitted == TASKS


async def test_docs_switch(settings: Settings) -> None:
    cases = [
        ({"environment": "production"}, 404),
        ({"environment": "production", "docs_enabled": True}, 200),
        ({"environment": "development"}, 200),
        ({"environment": "development", "docs_enabled": False}, 404),
    ]
    for update, expected in cases:
        app = create_app(settings.model_copy(update=update))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            for path in ("/docs", "/openapi.json"):
                assert (await http.get(path)).status_code == expected, (update, path)


async def test_oldest_waiting_task_age_on_the_internal_port(
    api: UvicornThread, production: Settings, make_user: MakeUser, engine: AsyncEngine
) -> None:
    user = await make_user()
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as client:
        tasks = []
        for _ in range(3):
            _, record, _ = await upload_recording(client, user)
            tasks.append((await submit(client, user, record))["task_id"])
    waiting, retry_later, retry_due = tasks
    async with engine.begin() as connection:
        await connection.execute(
            text("UPDATE ai_analysis_tasks SET created_at = now() - interval '100 s'"
                 " WHERE task_id = :t"),
            {"t": waiting},
        )  # fmt: skip
        await connection.execute(
            text("UPDATE ai_analysis_tasks SET status = 'retry', created_at = now() - interval"
                 " '1 hour', next_attempt_at = now() + interval '1 hour' WHERE task_id = :t"),
            {"t": retry_later},
        )  # fmt: skip
        await connection.execute(
            text("UPDATE ai_analysis_tasks SET status = 'retry', created_at = now() - interval"
                 " '1 hour', next_attempt_at = now() - interval '50 s' WHERE task_id = :t"),
            {"t": retry_due},
        )  # fmt: skip
    samples = await scrape(production.api_metrics_port)
    age = samples[("vocalborn_oldest_waiting_task_age_seconds", ())]
    assert 100 <= age < 130  # the pending task; not the retry due in an hour, nor its age

    async with engine.begin() as connection:
        await connection.execute(text("UPDATE ai_analysis_tasks SET status = 'cancelled'"))
    samples = await scrape(production.api_metrics_port)
    assert samples[("vocalborn_oldest_waiting_task_age_seconds", ())] == 0
