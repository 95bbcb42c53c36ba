# One image for the API, the worker and the reference analyzer; compose.yaml picks the command.
FROM python:3.11-slim

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
CMD ["uvicorn", "app.main:create_app", "--factory", "--host", "0.0.0.0", "--port", "8000"]
