"""Prometheus metrics (namespace `vocalborn`): the API serves them on API_METRICS_PORT (and at
/metrics on its public port in development and test only), each worker on WORKER_METRICS_PORT.
Defined once here; each process exports the ones it moves. monitoring/alerts.yml and the
Grafana dashboard use only these names (tests/ops/test_monitoring.py checks it)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

DURATION_BUCKETS = (0.5, 1, 2.5, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600)

STREAM_CONNECTIONS = Gauge(
    "vocalborn_stream_connections",
    "Open progress streams (SSE and WebSocket) in this process",
    ["transport"],
)
TASKS_SUBMITTED = Counter("vocalborn_tasks_submitted", "Analysis tasks created")
TASKS_FINISHED = Counter(
    "vocalborn_tasks_finished", "Analysis tasks that reached a final status", ["status"]
)
TASK_ERRORS = Counter("vocalborn_task_errors", "Failed attempts by error class", ["error_class"])
TASK_RETRIES = Counter(
    "vocalborn_task_retries", "Retries and deferrals scheduled, by reason", ["reason"]
)
TASK_WAIT = Histogram(
    "vocalborn_task_wait_seconds", "From enqueue to claim", buckets=DURATION_BUCKETS
)
TASK_PROCESSING = Histogram(
    "vocalborn_task_processing_seconds", "From claim to stored result", buckets=DURATION_BUCKETS
)
TASKS_IN_FLIGHT = Gauge("vocalborn_tasks_in_flight", "Attempts running in this worker")
QUEUE_DEPTH = Gauge("vocalborn_queue_depth", "Jobs in the arq queue (waiting or running)")
AI_REQUESTS = Histogram(
    "vocalborn_ai_request_seconds",
    "Calls to the AI service by outcome",
    ["outcome"],
    buckets=DURATION_BUCKETS,
)
CIRCUIT_OPEN = Gauge("vocalborn_ai_circuit_open", "1 while the AI circuit breaker is open")
WORKER_HEARTBEAT = Gauge(
    "vocalborn_worker_heartbeat_timestamp_seconds", "Last heartbeat of this worker", ["worker"]
)
DB_WRITE_RETRIES = Counter(
    "vocalborn_db_write_retries",
    "Retries of a task's outcome write after a transient database error, by write",
    ["write"],
)
AFTER_COMMIT_FAILURES = Counter(
    "vocalborn_after_commit_failures",
    "Effects after an outcome was committed (breaker, publish, re-enqueue) that failed for good;"
    " the committed outcome stands",
    ["effect"],
)
BREAKER_UNREADABLE = Counter(
    "vocalborn_breaker_unreadable",
    "AI calls let through because the circuit breaker's state could not be read",
)
