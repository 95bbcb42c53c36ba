"""Error classes of an analysis attempt (architecture §4), decided by exception type and HTTP
status, never by message text."""

from __future__ import annotations

import enum


class ErrorClass(enum.StrEnum):
    NETWORK = "network"
    TIMEOUT = "timeout"
    AI_SERVICE = "ai_service"
    RESOURCE = "resource"
    VALIDATION = "validation"
    CRASH_LOOP = "crash_loop"


class AnalysisError(Exception):
    error_class: ErrorClass = ErrorClass.AI_SERVICE

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class NetworkError(AnalysisError):
    error_class = ErrorClass.NETWORK


class ServiceBusy(NetworkError):
    """503 with Retry-After: the service is healthy but saturated (backpressure). The task
    waits as told, without spending its retry budget or tripping the circuit breaker."""


class AnalysisTimeout(AnalysisError):
    error_class = ErrorClass.TIMEOUT


class AIServiceError(AnalysisError):
    error_class = ErrorClass.AI_SERVICE


class ResourceError(AnalysisError):
    error_class = ErrorClass.RESOURCE


class InvalidInput(AnalysisError):
    error_class = ErrorClass.VALIDATION


NETWORK_STATUSES = frozenset({502, 503, 504})
VALIDATION_STATUSES = frozenset({400, 413, 415, 422})


def error_for_status(status: int, message: str, retry_after: float | None) -> AnalysisError:
    if status == 503 and retry_after is not None:
        return ServiceBusy(message, retry_after=retry_after)
    if status in NETWORK_STATUSES:
        return NetworkError(message, retry_after=retry_after)
    if status in VALIDATION_STATUSES:
        return InvalidInput(message)
    return AIServiceError(message, retry_after=retry_after)
