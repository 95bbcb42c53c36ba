"""Prometheus metrics of the API process (namespace `vocalborn`), served at /metrics."""

from __future__ import annotations

from prometheus_client import Gauge

STREAM_CONNECTIONS = Gauge(
    "vocalborn_stream_connections",
    "Open progress streams (SSE and WebSocket) in this process",
    ["transport"],
)
