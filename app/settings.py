"""Configuration, read from the environment (names follow the seed's `.env`)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal, get_args

from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# The development secret `.env.example` ships with is public: weak by definition.
ENV_EXAMPLE_JWT_SECRET = "development-only-secret-from-env-example-not-for-production"
WEAK_SECRETS = frozenset(
    {
        "secret",
        "changeme",
        "change-me",
        "password",
        "jwt-secret",
        "your_jwt_secret",
        "dev",
        "test",
        ENV_EXAMPLE_JWT_SECRET,
    }
)
MIN_SECRET_BYTES = 32
LENIENT_ENVIRONMENTS = frozenset({"development", "test"})


def asyncpg_url(url: str) -> str:
    """`postgresql://…` (as servers and pgserver print it) → SQLAlchemy's asyncpg dialect."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    return url


class InsecureConfiguration(RuntimeError):
    """The settings are not safe to serve requests with."""


class Settings(BaseSettings):
    # env_ignore_empty: `NAME=` (as .env.example has it for every optional setting), in the
    # environment or in .env, means unset: the default applies. Read as "" it would switch on
    # the JWT audience and issuer checks and refuse every token.
    model_config = SettingsConfigDict(
        env_file=".env", env_ignore_empty=True, extra="ignore", frozen=True
    )

    environment: Literal["development", "test", "staging", "production"] = "production"
    database_url: str = "postgresql+asyncpg://localhost/vocalborn"
    database_pool_size: int = 20
    redis_url: str = "redis://localhost:6379/0"
    storage_dir: Path = Path("var/storage")

    jwt_secret: str | None = None
    jwt_public_key: str | None = None
    jwt_private_key: str | None = None
    jwt_algorithm: str = "HS256"
    jwt_audience: str | None = None
    jwt_issuer: str | None = None

    ai_service_url: str = "http://127.0.0.1:8001"
    ai_service_api_key: str | None = None

    max_audio_file_size: int = 52_428_800
    supported_audio_formats: Annotated[tuple[str, ...], NoDecode] = ("mp3", "wav", "m4a", "aac")

    # Operations (issue 16). The API's Prometheus metrics on this internal port of their own
    # (0: none); the public port serves /metrics only in development and test.
    api_metrics_port: int = Field(0, ge=0, le=65535)
    # /docs, /redoc and /openapi.json: None means on except in production.
    docs_enabled: bool | None = None

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_format: Literal["json", "text"] = "text"

    # Task lifecycle; every duration is a setting so that tests can shrink time.
    lease_seconds: float = Field(30.0, gt=0)
    job_timeout_seconds: float = Field(300.0, gt=0)
    ai_deadline_seconds: float = Field(240.0, gt=0)
    ai_connect_timeout_seconds: float = Field(5.0, gt=0)
    # An idle connection to the AI service is reused for this long at most: below the
    # service's own idle timeout (uvicorn's 5 s), so that no call goes out on a connection the
    # service is closing at that moment (a ReadError, a retry spent: R8 showed it under load).
    ai_keepalive_seconds: float = Field(2.0, gt=0)
    reconcile_interval_seconds: int = Field(30, ge=1)
    reconcile_pending_grace_seconds: float = Field(5.0, ge=0)
    crash_loop_limit: int = Field(3, ge=1)
    retry_base_network_seconds: float = 30.0
    retry_base_timeout_seconds: float = 60.0
    retry_base_ai_service_seconds: float = 30.0
    retry_base_resource_seconds: float = 30.0
    retry_max_delay_seconds: float = 600.0
    # Waits that spend no retry budget (AI service busy, circuit open) before they count as
    # network errors: a service that is "busy" forever still fails the task in the end.
    max_deferrals: int = Field(20, ge=0)
    breaker_failure_threshold: int = Field(5, ge=1)
    breaker_cooldown_seconds: float = Field(30.0, gt=0)
    worker_max_jobs: int = Field(50, ge=1)
    worker_poll_delay_seconds: float = Field(0.2, gt=0)
    worker_name: str | None = None
    worker_shutdown_grace_seconds: float = Field(10.0, ge=0)
    # Prometheus metrics of a worker on this port (0: not served).
    worker_metrics_port: int = Field(0, ge=0, le=65535)
    # How many analyses the AI service runs at once: the ETA's parallelism.
    ai_service_concurrency: int = Field(4, ge=1)
    cleanup_retention_days: int = Field(7, ge=1)
    # A fault hook of the reliability scenarios (tests/reliability, R5): the API process exits
    # at once after a submit's commit, before its enqueue. Refused outside ENVIRONMENT=test.
    fault_exit_after_commit: bool = False

    # Live progress (SSE / WebSocket).
    event_stream_maxlen: int = Field(200, ge=10)
    event_stream_ttl_seconds: int = Field(3600, ge=1)
    sse_heartbeat_seconds: float = Field(15.0, gt=0)
    sse_max_connection_seconds: float = Field(3600.0, gt=0)
    sse_client_queue_size: int = Field(16, ge=1)
    stream_token_ttl_seconds: int = Field(60, ge=1)
    stream_token_secret: str | None = None
    max_streams_per_user: int = Field(20, ge=1)

    @field_validator("*", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object, info: ValidationInfo) -> object:
        """The same for values given in code (`Settings(jwt_issuer="")`): an optional
        setting given as "" is None, never a check against the empty string."""
        field = cls.model_fields[info.field_name or ""]
        if value == "" and type(None) in get_args(field.annotation):
            return None
        return value

    @field_validator("supported_audio_formats", mode="before")
    @classmethod
    def _split_formats(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip().lower() for part in value.split(",") if part.strip())
        return value

    @field_validator("reconcile_interval_seconds")
    @classmethod
    def _divides_the_clock(cls, value: int) -> int:
        if (value < 60 and 60 % value) or (value >= 60 and (value % 60 or 3600 % value)):
            raise ValueError("must divide a minute (1..30 s) or an hour (whole minutes)")
        return value

    @field_validator("fault_exit_after_commit")
    @classmethod
    def _faults_in_tests_only(cls, value: bool, info: ValidationInfo) -> bool:
        if value and info.data.get("environment") != "test":
            raise ValueError("a fault hook; only with ENVIRONMENT=test")
        return value

    @field_validator("database_url")
    @classmethod
    def _asyncpg_driver(cls, value: str) -> str:
        return asyncpg_url(value)

    @property
    def serve_docs(self) -> bool:
        return (
            self.docs_enabled
            if self.docs_enabled is not None
            else (self.environment != "production")
        )

    @property
    def metrics_on_public_port(self) -> bool:
        return self.environment in LENIENT_ENVIRONMENTS

    @property
    def jwt_verification_key(self) -> str | None:
        if self.jwt_algorithm.startswith("HS"):
            return self.jwt_secret
        return self.jwt_public_key

    @property
    def jwt_signing_key(self) -> str | None:
        if self.jwt_algorithm.startswith("HS"):
            return self.jwt_secret
        return self.jwt_private_key

    def check_serving_security(self) -> None:
        """Refuse to serve outside development with a missing or weak JWT key."""
        key = self.jwt_verification_key
        if key is None:
            raise InsecureConfiguration(
                f"JWT_{'SECRET' if self.jwt_algorithm.startswith('HS') else 'PUBLIC_KEY'} "
                f"is not set (JWT_ALGORITHM={self.jwt_algorithm})"
            )
        if self.environment in LENIENT_ENVIRONMENTS or not self.jwt_algorithm.startswith("HS"):
            return
        if key.lower() in WEAK_SECRETS or len(key.encode()) < MIN_SECRET_BYTES:
            raise InsecureConfiguration(
                f"JWT_SECRET is weak: use at least {MIN_SECRET_BYTES} random bytes "
                "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(48))'`)"
            )


@lru_cache
def get_settings() -> Settings:
    return Settings()
