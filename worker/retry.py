"""The retry policy by error class (architecture §4, the seed's budgets): exponential backoff with
full jitter, Retry-After honoured. Budgets and delays live here and in settings, not in arq:
the retry itself is persisted in PostgreSQL, so it survives any worker."""

from __future__ import annotations

import random
from dataclasses import dataclass

import aiohttp
from sqlalchemy.exc import DBAPIError, OperationalError

from app.ai_client.errors import (
    AnalysisError,
    AnalysisTimeout,
    ErrorClass,
    InvalidInput,
    NetworkError,
    ResourceError,
)
from app.causes import causes
from app.settings import Settings
from app.storage import StorageUnavailable

RETRY_BUDGETS = {
    ErrorClass.NETWORK: 5,
    ErrorClass.TIMEOUT: 2,
    ErrorClass.AI_SERVICE: 3,
    ErrorClass.RESOURCE: 3,
    ErrorClass.VALIDATION: 0,
    ErrorClass.CRASH_LOOP: 0,
}
# Failures that say the AI service is unhealthy (and so feed the circuit breaker).
SERVICE_FAILURES = frozenset({ErrorClass.NETWORK, ErrorClass.TIMEOUT, ErrorClass.AI_SERVICE})
# Failures that move an AI call on to the next provider (worker/attempt.py): the service's,
# but not a timeout (the call's deadline is spent) nor a validation error (the recording).
FAILOVER_CLASSES = frozenset({ErrorClass.NETWORK, ErrorClass.AI_SERVICE})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    settings: Settings

    def base_delay(self, error_class: ErrorClass) -> float:
        return {
            ErrorClass.NETWORK: self.settings.retry_base_network_seconds,
            ErrorClass.TIMEOUT: self.settings.retry_base_timeout_seconds,
            ErrorClass.AI_SERVICE: self.settings.retry_base_ai_service_seconds,
            ErrorClass.RESOURCE: self.settings.retry_base_resource_seconds,
        }.get(error_class, 0.0)

    def should_retry(self, error_class: ErrorClass, retries_so_far: int) -> bool:
        return retries_so_far < RETRY_BUDGETS[error_class]

    def delay(
        self, error_class: ErrorClass, retries_so_far: int, retry_after: float | None = None
    ) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2^n)], never before Retry-After."""
        ceiling = min(
            self.settings.retry_max_delay_seconds,
            self.base_delay(error_class) * 2**retries_so_far,
        )
        delay = random.uniform(0, ceiling)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.settings.retry_max_delay_seconds))
        return delay


def classify(exc: BaseException) -> AnalysisError:
    """Map any exception of an attempt onto an error class, by type only."""
    for cause in causes(exc):
        if isinstance(cause, AnalysisError):
            return cause
        # TimeoutError is an OSError: test it first (aiohttp's timeouts are TimeoutErrors).
        if isinstance(cause, TimeoutError):
            return AnalysisTimeout(f"Timed out: {cause!r}")
        if isinstance(cause, FileNotFoundError):
            return InvalidInput("The recording is missing from storage")
        if isinstance(cause, aiohttp.ClientError):  # some are OSErrors: test them first
            return NetworkError(f"Network error: {cause!r}")
        if isinstance(cause, StorageUnavailable | OperationalError | DBAPIError | OSError):
            return ResourceError(f"Storage or database unavailable: {cause!r}")
    return AnalysisError(f"Unexpected error: {exc!r}")
