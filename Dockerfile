# One image for the API, the worker and the reference analyzer; compose.yaml picks the command.
# Two targets of it: `worker` (the worker's command and health check) and the default, last,
# the API's (also run as migrate and the analyzer with another command).
FROM python:3.11-slim AS app

ENV PYTHONUNBUFFERED=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy

RUN pip install --no-cache-dir uv

WORKDIR /app
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project
COPY app ./app
COPY worker ./worker
COPY analyzer ./analyzer
COPY migrations ./migrations
COPY alembic.ini ./
RUN uv sync --frozen --no-dev

RUN useradd --create-home --uid 10001 vocalborn \
    && mkdir -p /data/storage && chown -R vocalborn:vocalborn /data
USER vocalborn
ENV PATH="/app/.venv/bin:$PATH" \
    STORAGE_DIR=/data/storage

# 8000: the public API. Metrics ports, internal (never published): 9102 for the API
# (API_METRICS_PORT), 9100 for a worker (WORKER_METRICS_PORT).
EXPOSE 8000 9100 9102

# The worker: healthy while its heartbeat key in Redis is live (written every 5 s, kept 15 s;
# `vocalborn worker-check` without a name: a worker on this host, i.e. in this container).
FROM app AS worker
CMD ["python", "-m", "worker"]
HEALTHCHECK --interval=20s --timeout=10s --start-period=30s --retries=3 CMD ["vocalborn", "worker-check"]

FROM app AS api
CMD ["uvicorn", "app.main:create_app", "--factory", "--host", "0.0.0.0", "--port", "8000"]
