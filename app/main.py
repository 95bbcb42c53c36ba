"""The API application: `uvicorn app.main:create_app --factory`."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from prometheus_client import make_asgi_app, start_http_server

from app import access_log, storage
from app.admin.router import router as admin_router
from app.analysis.cache import cache_key_model
from app.analysis.eta import Estimator
from app.analysis.events import SSE_PATHS, ServeStreamsFirst, sse_events
from app.analysis.events import router as events_router
from app.analysis.hub import Hub
from app.analysis.lanes import LaneWeights
from app.analysis.live import LiveSource, StreamTiming
from app.analysis.progress import Publisher, publish_settings
from app.analysis.router import BODY_MODELS
from app.analysis.router import router as analysis_router
from app.analysis.stream_auth import StreamLimiter
from app.analysis.submit import Submitter
from app.db import close_pg_pool, create_engine, create_pg_pool, create_sessionmaker
from app.errors import install_error_handlers
from app.fault_hooks import exit_after_commit
from app.health import readiness
from app.logs import configure_logging
from app.metrics import OLDEST_WAITING_TASK
from app.openapi_models import document_models
from app.practice.router import router as practice_router
from app.ratelimit import SubmitRateLimit
from app.redis_client import RedisTarget
from app.redis_client import connect as connect_redis
from app.settings import Settings, get_settings
from app.state import AppState
from app.web import install as install_web_page


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    settings.check_serving_security()
    configure_logging(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_engine(settings, keep_connections=True)
        pg = await create_pg_pool(settings)
        redis_target = RedisTarget.of(settings)
        arq = connect_redis(redis_target)
        estimator = Estimator(engine, slots=settings.eta_slots)
        sessions = create_sessionmaker(engine)
        hub = Hub(redis_target, settings.sse_client_queue_size, settings.sse_heartbeat_seconds)
        timing = StreamTiming(settings.sse_max_connection_seconds)
        publisher = Publisher(arq, estimator, publish_settings(settings))
        app.state.vocalborn = AppState(
            settings=settings,
            engine=engine,
            pg=pg,
            sessions=sessions,
            arq=arq,
            estimator=estimator,
            publisher=publisher,
            submitter=Submitter(
                arq,
                estimator,
                publisher,
                cache_key_model(settings),
                exit_after_commit(settings),
                LaneWeights.of(settings),
            ),
            hub=hub,
            live=LiveSource(hub, arq, sessions, estimator, timing),
            limiter=StreamLimiter(settings.max_streams_per_user, settings.sse_heartbeat_seconds),
            submit_limit=SubmitRateLimit(arq.connection_pool, settings.submit_rate_limit),
            storage=storage.from_settings(settings),
        )
        await hub.start()
        # The metrics on an internal port (issue 16), never on the public one in production.
        OLDEST_WAITING_TASK.attach(asyncio.get_running_loop(), pg)
        metrics = (
            start_http_server(settings.api_metrics_port) if settings.api_metrics_port else None
        )
        # Everything built so far lives as long as the process: keep it out of the cyclic
        # garbage collector's way (its full collections otherwise walk all of it).
        gc.freeze()
        try:
            yield
        finally:
            if metrics is not None:
                metrics[0].shutdown()
                metrics[0].server_close()
            OLDEST_WAITING_TASK.detach(pg)
            await hub.stop()
            await arq.aclose(close_connection_pool=True)  # not closed by default: passed in
            await close_pg_pool(pg)
            await engine.dispose()

    docs = settings.serve_docs
    app = FastAPI(
        title="VocalBorn analysis queue",
        version="0.1.0",
        lifespan=lifespan,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )
    install_error_handlers(app)
    # Routes are matched in order: the hottest (status, submit) first.
    app.include_router(analysis_router, prefix="/api/v1")
    app.include_router(practice_router, prefix="/api/v1")
    app.include_router(events_router, prefix="/api/v1")
    for path in SSE_PATHS:
        app.add_route(path, sse_events, methods=["GET"], include_in_schema=False)
    app.add_middleware(ServeStreamsFirst)
    if settings.metrics_on_public_port:  # development and test; else API_METRICS_PORT
        app.mount("/metrics", make_asgi_app())
    access_log.install()
    app.include_router(admin_router, prefix="/api/v1")
    document_models(app, *BODY_MODELS)  # the bodies routes read themselves
    install_web_page(app)  # GET / and /web/*: the web page (issue 13)

    @app.get("/readyz", include_in_schema=False)
    async def readyz(request: Request) -> dict[str, object]:
        state: AppState = request.app.state.vocalborn
        return {"status": "ready", "checks": await readiness(state.pg, state.arq)}

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
