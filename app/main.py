"""The API application: `uvicorn app.main:create_app --factory`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.admin.router import router as admin_router
from app.analysis import queue
from app.analysis.eta import Estimator
from app.analysis.router import router as analysis_router
from app.db import create_engine, create_sessionmaker
from app.errors import install_error_handlers
from app.practice.router import router as practice_router
from app.settings import Settings, get_settings
from app.state import AppState
from app.storage import LocalStorage


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    settings.check_serving_security()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_engine(settings)
        arq = queue.connect(settings.redis_url)
        app.state.vocalborn = AppState(
            settings=settings,
            engine=engine,
            sessions=create_sessionmaker(engine),
            arq=arq,
            estimator=Estimator(engine, slots=settings.worker_max_jobs),
            storage=LocalStorage(settings.storage_dir),
        )
        try:
            yield
        finally:
            await arq.aclose()
            await engine.dispose()

    app = FastAPI(title="VocalBorn analysis queue", version="0.1.0", lifespan=lifespan)
    install_error_handlers(app)
    app.include_router(practice_router, prefix="/api/v1")
    app.include_router(analysis_router, prefix="/api/v1")
    app.include_router(admin_router, prefix="/api/v1")

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
