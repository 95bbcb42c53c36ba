"""Service settings, read from the environment with the ANALYZER_ prefix."""

from __future__ import annotations

import os

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MODEL_VERSION = "reference-praat-1.1"


def _default_workers() -> int:
    return max(1, min(2, os.cpu_count() or 1))


class Settings(BaseSettings):
    """Runtime configuration (ANALYZER_API_KEY, ANALYZER_MAX_BYTES, ...)."""

    # An empty value (ANALYZER_API_KEY=) means unset, as for the service's own settings.
    model_config = SettingsConfigDict(env_prefix="ANALYZER_", extra="ignore", env_ignore_empty=True)

    api_key: SecretStr | None = None
    max_bytes: int = Field(default=52_428_800, gt=0)
    max_seconds: float = Field(default=600.0, gt=0)
    min_seconds: float = Field(default=0.0, ge=0)
    workers: int = Field(default_factory=_default_workers, ge=1)
    # Analyses admitted beyond the pool's processes; each waits, whole, for a free process.
    # 0 (the default): the analyzer admits only what its pool can run now and answers 503 with
    # Retry-After for the rest, at once, so that a client's deadline never runs while its
    # recording waits here (four analyses admitted on two processes all ran twice as long).
    queue_size: int = Field(default=0, ge=0)
    retry_after_seconds: int = Field(default=5, ge=1)
    model_version: str = DEFAULT_MODEL_VERSION
    # A test hook (the reliability scenarios' poison recording): a recording whose bytes
    # contain this text kills its pool process, as an OOM kill would. Unset in production.
    test_crash_marker: str | None = None

    @property
    def capacity(self) -> int:
        """Analyses admitted at once: one per pool process plus the waiting-queue bound."""
        return self.workers + self.queue_size
