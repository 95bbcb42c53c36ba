"""Configuration, read from the environment (names follow the seed's `.env`)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal, get_args

from limits import parse_many
from pydantic import Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.ai_client.providers import DEFAULT_PROVIDER, AIProvider, cap_of

# The development secret `.env.example` ships with is public: weak by definition.
# (Allowlisted for the secret scan, .secrets.baseline: public on purpose, listed to be refused.)
ENV_EXAMPLE_JWT_SECRET = (
    "development-only-secret-from-env-example-not-for-production"  # pragma: allowlist secret
)
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


def _host_and_port(address: str) -> tuple[str, int]:
    """`host:port` (a Sentinel's address; `[v6]:port` too) → (host, port); ValueError if not."""
    host, separator, port = address.rpartition(":")
    if not separator or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{address!r} is not host:port")
    return host.strip("[]"), int(port)


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
    # Recordings (issue 12): the local filesystem under STORAGE_DIR (the default, and what
    # `vocalborn up` uses), or an S3-compatible object store.
    storage_backend: Literal["local", "s3"] = "local"
    # An ACL user and password for Redis when REDIS_URL carries none (app/redis_client.py).
    redis_username: str | None = None
    redis_password: str | None = None
    # RESP protocol version spoken to Redis (3 needs Redis 6 or later).
    redis_protocol: int = Field(2, ge=2, le=3)
    # Redis Sentinel: `host:port,host:port,…` (empty: REDIS_URL's host). The Sentinels name
    # the master of REDIS_SENTINEL_MASTER; REDIS_URL then gives only the database, the scheme
    # (rediss: TLS) and the credentials.
    redis_sentinels: Annotated[tuple[str, ...], NoDecode] = ()
    redis_sentinel_master: str = "vocalborn"
    redis_sentinel_username: str | None = None
    redis_sentinel_password: str | None = None
    storage_dir: Path = Path("var/storage")
    s3_bucket: str | None = None
    # None: AWS itself (the region's endpoint); else e.g. http://seaweedfs:8333 (http allowed).
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    # Both or neither; neither: the AWS_* environment, web identity or instance metadata.
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = None
    # A folder of the bucket every key is stored under (`vocalborn`: vocalborn/recordings/...).
    s3_key_prefix: str | None = None

    jwt_secret: str | None = None
    jwt_public_key: str | None = None
    jwt_private_key: str | None = None
    jwt_algorithm: str = "HS256"
    jwt_audience: str | None = None
    jwt_issuer: str | None = None

    ai_service_url: str = "http://127.0.0.1:8001"
    ai_service_api_key: str | None = None
    # The model version the AI service serves: part of the result cache's key
    # (app.analysis.cache.cache_key_model). Change it with the model, so that no result of
    # the old one is reused; unset, the URL alone keys it.
    ai_model_version: str | None = Field(None, max_length=100)
    # The AI calls every worker together may have in flight at one provider (a Redis
    # semaphore whose slots are leases, worker/slots.py); 0: no cap. A provider's own
    # max_concurrency replaces it.
    ai_max_concurrency: int = Field(0, ge=0)
    # The AI providers in order of preference, a JSON list of objects {name, url, key,
    # max_concurrency, model, degraded} (app/ai_client/providers.py). Unset: one provider,
    # "default", from AI_SERVICE_URL and AI_SERVICE_API_KEY.
    ai_providers: tuple[AIProvider, ...] = ()
    # A job waiting for an AI slot looks again at least this often (seconds); a slot freed in
    # its own worker wakes it at once.
    ai_slot_poll_seconds: float = Field(1.0, gt=0)
    # The longest a job waits for an AI slot; then its task goes back to the queue (no
    # retry budget spent; 0: one look, then back). arq's timeout of a job is
    # JOB_TIMEOUT_SECONDS plus this.
    ai_slot_wait_seconds: float = Field(300.0, ge=0)
    # A worker picks an attempt only when an AI slot is free, so that what waits for the AI
    # service waits in the queue, in its lane's fair order (true); false: it picks up to
    # WORKER_MAX_JOBS and the attempts wait for a slot inside the worker, in no fair order.
    ai_pick_within_cap: bool = True

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
    # The AI call's deadline follows the recording (worker/deadline.py): a base plus an
    # allowance per second of audio, never more than AI_DEADLINE_SECONDS, which is also the
    # deadline of a recording whose duration is unknown and must be below JOB_TIMEOUT_SECONDS.
    # Defaults: the reference analyzer takes about 0.1 s per second of audio alone on two
    # cores (57 s for 9.5 min); 0.3 s is three times that, for a loaded service, and the 60 s
    # base covers the upload, connecting and a short recording on a slow host. The longest
    # recording the reference analyzer takes (600 s) then gets 60 + 180 = 240 s, the cap.
    ai_deadline_seconds: float = Field(240.0, gt=0)
    ai_deadline_base_seconds: float = Field(60.0, gt=0)
    ai_deadline_per_audio_second: float = Field(0.3, ge=0)
    ai_connect_timeout_seconds: float = Field(5.0, gt=0)
    # An idle connection to the AI service is reused for this long at most: below the
    # service's own idle timeout (uvicorn's 5 s), so that no call goes out on a connection the
    # service is closing at that moment (a ReadError, a retry spent: R8 showed it under load).
    ai_keepalive_seconds: float = Field(2.0, gt=0)
    # The most the worker reads of one answer of the AI service: a JSON result, an error body
    # or one NDJSON line (bytes). A longer result or line is a malformed answer (retried as
    # `ai_service`; an error answer keeps its status and first words), so that one answer can
    # never take the worker's memory, and every task it runs with it.
    ai_max_answer_bytes: int = Field(8 * 1024 * 1024, ge=1024)
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
    # Failures count towards the threshold while each comes within this long of the last.
    breaker_failure_window_seconds: float = Field(60.0, gt=0)
    # How long a worker's clean read of the breaker (closed, no failure counted) lets its calls
    # through without reading it again; a breaker another worker opened is seen within it.
    breaker_read_seconds: float = Field(0.1, ge=0)
    worker_max_jobs: int = Field(50, ge=1)
    worker_poll_delay_seconds: float = Field(0.2, gt=0)
    worker_name: str | None = None
    # Each worker's heartbeat key is written this often and lives three periods.
    worker_heartbeat_seconds: float = Field(5.0, gt=0)
    worker_shutdown_grace_seconds: float = Field(10.0, ge=0)
    # Prometheus metrics of a worker on this port (0: not served).
    worker_metrics_port: int = Field(0, ge=0, le=65535)
    # Priority lanes (app/analysis/lanes.py): a user's waiting jobs in a lane are served in
    # proportion to the lane's weight; batch keeps a share, it never starves.
    lane_weight_interactive: int = Field(9, ge=1, le=1000)
    lane_weight_batch: int = Field(1, ge=1, le=1000)
    # How many analyses the AI service runs at once: the ETA's parallelism when the preferred
    # provider has no concurrency cap (`eta_slots`).
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

    # Abuse limits (issue 11): submits per user, shared by every API replica through Redis.
    submit_rate_limit: str = "60/minute"

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

    @field_validator("submit_rate_limit")
    @classmethod
    def _a_rate(cls, value: str) -> str:
        # The limiter's notation (ValueError when it is not); `limits.parse` would take the
        # first of "10/second;300/hour" and drop the rest in silence, and "0/minute" would
        # refuse every submit.
        rates = parse_many(value)
        if len(rates) != 1 or rates[0].amount < 1:
            raise ValueError("one rate of at least 1, such as 60/minute")
        return value

    @field_validator("redis_sentinels", mode="before")
    @classmethod
    def _split_sentinels(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("redis_sentinels")
    @classmethod
    def _sentinel_addresses(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for address in value:
            _host_and_port(address)
        return value

    @property
    def redis_sentinel_addresses(self) -> tuple[tuple[str, int], ...]:
        """REDIS_SENTINELS as (host, port) pairs."""
        return tuple(_host_and_port(address) for address in self.redis_sentinels)

    @field_validator("reconcile_interval_seconds")
    @classmethod
    def _divides_the_clock(cls, value: int) -> int:
        if (value < 60 and 60 % value) or (value >= 60 and (value % 60 or 3600 % value)):
            raise ValueError("must divide a minute (1..30 s) or an hour (whole minutes)")
        return value

    @field_validator("s3_key_prefix")
    @classmethod
    def _s3_folder(cls, value: str | None) -> str | None:
        """S3_KEY_PREFIX is a folder: `vocalborn`, `vocalborn/` and `/vocalborn/` all give keys
        `vocalborn/recordings/...`; an empty, `.` or `..` segment is refused (obstore would
        refuse it only when the API or a worker starts)."""
        folder = (value or "").strip("/")
        if any(part in ("", ".", "..") for part in folder.split("/")) and folder:
            raise ValueError("S3_KEY_PREFIX: folder names separated by single slashes")
        return folder or None

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

    @model_validator(mode="after")
    def _s3_complete(self) -> Settings:
        if self.storage_backend == "s3" and not self.s3_bucket:
            raise ValueError("STORAGE_BACKEND=s3 needs S3_BUCKET")
        if (self.s3_access_key_id is None) != (self.s3_secret_access_key is None):
            raise ValueError("set both S3_ACCESS_KEY_ID and S3_SECRET_ACCESS_KEY, or neither")
        return self

    @field_validator("ai_providers")
    @classmethod
    def _distinct_providers(cls, value: tuple[AIProvider, ...]) -> tuple[AIProvider, ...]:
        names = [provider.name for provider in value]
        if len(set(names)) != len(names):
            raise ValueError("provider names must be distinct")
        return value

    @property
    def providers(self) -> tuple[AIProvider, ...]:
        """AI_PROVIDERS, else the one provider AI_SERVICE_URL and AI_SERVICE_API_KEY name."""
        if self.ai_providers:
            return self.ai_providers
        default = AIProvider(
            name=DEFAULT_PROVIDER, url=self.ai_service_url, key=self.ai_service_api_key
        )
        return (default,)

    @property
    def eta_slots(self) -> int:
        """Analyses running at once, as queue ETAs reckon them: the preferred provider's
        concurrency cap (its max_concurrency, else AI_MAX_CONCURRENCY) when it has one, since
        every worker together runs no more than that; else AI_SERVICE_CONCURRENCY."""
        return cap_of(self.providers[0], self.ai_max_concurrency) or self.ai_service_concurrency

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

    @property
    def stream_token_key(self) -> str | None:
        """The HMAC key of the browsers' stream tokens (HS256 whatever JWT_ALGORITHM is):
        STREAM_TOKEN_SECRET, else JWT_SECRET; None when neither is set."""
        return self.stream_token_secret or self.jwt_secret

    def check_serving_security(self) -> None:
        """Refuse to serve with a missing JWT key, and outside development and test with a
        weak HMAC secret (InsecureConfiguration): JWT_SECRET with an HS* algorithm, and the
        stream tokens' key (`stream_token_key`: STREAM_TOKEN_SECRET, else JWT_SECRET, whatever
        the algorithm: with RS256 a weak JWT_SECRET would still sign stream tokens)."""
        key = self.jwt_verification_key
        if key is None:
            raise InsecureConfiguration(
                f"JWT_{'SECRET' if self.jwt_algorithm.startswith('HS') else 'PUBLIC_KEY'} "
                f"is not set (JWT_ALGORITHM={self.jwt_algorithm})"
            )
        if self.environment in LENIENT_ENVIRONMENTS:
            return
        stream_key = "STREAM_TOKEN_SECRET" if self.stream_token_secret else "JWT_SECRET"
        secrets = {
            "JWT_SECRET": key if self.jwt_algorithm.startswith("HS") else None,
            f"{stream_key} (it signs the stream tokens)": self.stream_token_key,
        }
        for name, secret in secrets.items():
            if secret is not None and is_weak_secret(secret):
                raise InsecureConfiguration(
                    f"{name} is weak: use at least {MIN_SECRET_BYTES} random bytes "
                    "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(48))'`)"
                )


def is_weak_secret(secret: str) -> bool:
    """Shorter than MIN_SECRET_BYTES, or a known placeholder (WEAK_SECRETS)."""
    return secret.strip().lower() in WEAK_SECRETS or len(secret.encode()) < MIN_SECRET_BYTES


@lru_cache
def get_settings() -> Settings:
    return Settings()
