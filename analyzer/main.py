"""The reference analysis service: `uvicorn analyzer.main:app`."""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from analyzer import measures, quality, scoring
from analyzer.errors import AnalyzerError, install_error_handlers
from analyzer.schemas import AnalyzeParams
from analyzer.service import AnalyzerService
from analyzer.settings import Settings
from analyzer.upload import check_headers, discard, spool

NDJSON = "application/x-ndjson"


def _service(request: Request) -> AnalyzerService:
    service = getattr(request.app.state, "service", None)
    if not isinstance(service, AnalyzerService):
        raise AnalyzerError(503, "busy", "the analyzer is starting or stopping")
    return service


def require_key(request: Request) -> None:
    """Bearer API key check, active only when ANALYZER_API_KEY is set."""
    key = _service(request).settings.api_key
    if key is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    expected = key.get_secret_value().encode()
    if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), expected):
        raise AnalyzerError(401, "unauthorized", "a valid Bearer API key is required")


def _line(event: dict[str, Any]) -> bytes:
    return (json.dumps(event, ensure_ascii=False) + "\n").encode()


async def _ndjson(
    service: AnalyzerService, path: Path, container: str, params: AnalyzeParams
) -> AsyncIterator[bytes]:
    try:
        async with aclosing(service.run(path, container, params)) as events:
            async for event in events:
                yield _line(event)
    except AnalyzerError as exc:
        yield _line({"event": "error", "error": exc.stream_body()})
    except Exception as exc:
        message = f"{type(exc).__name__}: {exc}"[:300]
        error = {"code": "internal_error", "message": message, "status": 500}
        yield _line({"event": "error", "error": error})
    finally:
        discard(path)
        service.release()


async def _single(
    service: AnalyzerService, path: Path, container: str, params: AnalyzeParams
) -> dict[str, Any]:
    try:
        async with aclosing(service.run(path, container, params)) as events:
            async for event in events:
                if event["event"] == "result":
                    result: dict[str, Any] = event["result"]
                    return result
        raise AnalyzerError(500, "internal_error", "the analysis produced no result")
    finally:
        discard(path)
        service.release()


async def analyze(
    request: Request, params: Annotated[AnalyzeParams, Query()]
) -> Response:  # fmt: skip
    service = _service(request)
    cfg = service.settings
    check_headers(request, cfg.max_bytes)
    # Admission before a byte of the body is read: a full analyzer answers at once.
    if not service.try_acquire():
        retry = {"Retry-After": str(cfg.retry_after_seconds)}
        raise AnalyzerError(503, "busy", "all analysis slots are busy; retry later", retry)
    try:
        path, container = await spool(request, cfg.max_bytes)
    except BaseException:
        service.release()
        raise
    if NDJSON in request.headers.get("accept", ""):
        return StreamingResponse(_ndjson(service, path, container, params), media_type=NDJSON)
    return JSONResponse(await _single(service, path, container, params))


def _versions() -> dict[str, str]:
    import av
    import numpy
    import parselmouth
    import soundfile

    libavcodec = ".".join(str(p) for p in av.library_versions.get("libavcodec", ()))
    return {
        "praat": str(parselmouth.PRAAT_VERSION),
        "parselmouth": str(parselmouth.__version__),
        "libsndfile": str(soundfile.__libsndfile_version__),
        "pyav": str(av.__version__),
        "ffmpeg_libavcodec": libavcodec,
        "numpy": str(numpy.__version__),
    }


async def healthz(request: Request) -> dict[str, Any]:
    service = _service(request)
    cfg = service.settings
    return {
        "status": "ok",
        "model_version": cfg.model_version,
        "versions": _versions(),
        "limits": {
            "max_bytes": cfg.max_bytes,
            "max_seconds": cfg.max_seconds,
            "min_seconds": cfg.min_seconds,
            "workers": cfg.workers,
            "queue_size": cfg.queue_size,
        },
        "active_analyses": service.active,
        "admission": {
            "admitted": service.active,
            "running": service.running,
            "capacity": cfg.capacity,
            "pool_processes": cfg.workers,
        },
        "analyses": asdict(service.counts),
        "auth_required": cfg.api_key is not None,
        "pool": {"state": service.pool_state(), "rebuilds": service.rebuilds},
    }


async def readyz(request: Request) -> dict[str, Any]:
    """Readiness: 200 while the process pool can take analyses; 503 (the one error shape,
    code `not_ready`) while it starts, is broken or is being rebuilt after one of its
    processes died. A broken pool found here is replaced at once."""
    service = _service(request)
    service.heal()
    state = service.pool_state()
    if state != "ok":
        raise AnalyzerError(503, "not_ready", f"the analysis pool is {state}")
    return {"status": "ready", "pool": {"state": state, "rebuilds": service.rebuilds}}


async def info(request: Request) -> dict[str, Any]:
    return {
        "model_version": _service(request).settings.model_version,
        "measures": {
            name: {"unit": unit, "definition": definition, "source": source}
            for name, (unit, definition, source) in measures.MEASURE_INFO.items()
        },
        "voice_norms_note": measures.MDVP_NOTE,
        "scores": scoring.describe(),
        "recording_quality": {
            "basis": "measured on the decoded source samples before anything is scored; each "
            "finding is a warning with a message in zh-TW and English, and one that makes a "
            "score unreliable nulls that score with the finding as its reason",
            "thresholds": quality.THRESHOLDS,
        },
        "durations": "every duration, the length limit and the truncated flag come from the "
        "decoded sample count; a container's own duration is reported as audio."
        "container_duration with kind 'exact' (index, header frame count) or 'estimate' "
        "(FFmpeg's bitrate extrapolation: ADTS AAC, MP3 without a Xing/Info header)",
        "sources": scoring.SOURCES,
        "progress_steps": ["decoding", "feature_extraction", "syllable_detection", "scoring",
                           "suggestions"],
    }  # fmt: skip


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; settings are read (and the pool started) only in the lifespan."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service = AnalyzerService(settings or Settings())
        service.start()
        app.state.service = service
        try:
            yield
        finally:
            app.state.service = None
            service.stop()

    app = FastAPI(title="VocalBorn reference analyzer", lifespan=lifespan)
    install_error_handlers(app)
    keyed = [Depends(require_key)]
    app.add_api_route("/healthz", healthz, methods=["GET"])
    app.add_api_route("/readyz", readyz, methods=["GET"])
    app.add_api_route("/v1/info", info, methods=["GET"], dependencies=keyed)
    app.add_api_route("/v1/analyze", analyze, methods=["POST"], dependencies=keyed)
    return app


app = create_app()
