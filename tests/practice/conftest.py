"""Each storage backend, as the storage contract and the upload tests run them: the local
filesystem and S3 (a real SeaweedFS), with a look at what each holds afterwards."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import obstore
import pytest

from app.main import create_app
from app.settings import Settings
from app.storage import Storage, from_settings
from tests.conftest import s3_settings
from tests.seaweed import EmbeddedSeaweed

SETTLE_SECONDS = 10.0


@dataclass
class Backend:
    name: str
    settings: Settings
    storage: Storage
    # Everything the backend holds: files (partial ones too) or objects and unfinished
    # multipart uploads.
    leftovers: Callable[[], list[str]]

    async def settles_to(self, expected: list[str], within: float = SETTLE_SECONDS) -> list[str]:
        """What the backend holds once it is `expected`, or at the deadline. SeaweedFS may
        list an aborted multipart upload for a moment after the abort has answered (seen:
        under a second, never for good), so what is left is judged once it settles."""
        deadline = time.monotonic() + within
        while True:
            held = await asyncio.to_thread(self.leftovers)
            if held == expected or time.monotonic() > deadline:
                return held
            await asyncio.sleep(0.05)


def _local(settings: Settings) -> Backend:
    root = Path(settings.storage_dir)

    def leftovers() -> list[str]:
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir())

    return Backend("local", settings, from_settings(settings), leftovers)


def _s3(settings: Settings, seaweed: EmbeddedSeaweed) -> Backend:
    settings = s3_settings(settings, seaweed)
    store = seaweed.store(settings.s3_key_prefix)

    def leftovers() -> list[str]:
        objects = [meta["path"] for meta in obstore.list(store).collect()]
        return sorted(objects) + seaweed.pending_uploads()

    return Backend("s3", settings, from_settings(settings), leftovers)


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest, settings: Settings, clean: None) -> Backend:
    """Empty storage of each kind (the database and Redis emptied too)."""
    if request.param == "local":
        return _local(settings)
    return _s3(settings, request.getfixturevalue("seaweed"))


@pytest.fixture
def s3_backend(settings: Settings, seaweed: EmbeddedSeaweed, clean: None) -> Backend:
    """Empty S3 storage alone, for what only S3 has (a key prefix, an endpoint)."""
    return _s3(settings, seaweed)


@pytest.fixture
async def backend_client(backend: Backend) -> AsyncIterator[httpx.AsyncClient]:
    """The API on `backend`'s settings."""
    application = create_app(backend.settings)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            yield http
