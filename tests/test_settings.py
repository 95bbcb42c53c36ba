"""Configuration as people use it: `.env.example` copied to `.env`, empty values, every
setting documented."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from analyzer.settings import Settings as AnalyzerSettings
from app.ai_client.providers import AIProvider
from app.embedded import free_port
from app.launcher import System
from app.settings import InsecureConfiguration, Settings
from tests.analysis.conftest import wait_for
from worker.main import worker_options

ROOT = Path(__file__).resolve().parent.parent
ENV_EXAMPLE = ROOT / ".env.example"
BIN = Path(sys.executable).parent
ASSIGNMENT = re.compile(r"^([A-Z][A-Z0-9_]*)=(.*)$")


def _example_variables() -> dict[str, str]:
    """The variables `.env.example` assigns (comments are not assignments)."""
    variables = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        match = ASSIGNMENT.match(line.strip())
        if match:
            variables[match.group(1)] = match.group(2)
    return variables


def _app_variables() -> set[str]:
    return {name.upper() for name in Settings.model_fields}


def _analyzer_variables() -> set[str]:
    return {f"ANALYZER_{name.upper()}" for name in AnalyzerSettings.model_fields}


@pytest.fixture
def no_settings_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever the shell running the tests exports, each test sees only what it sets."""
    for name in _app_variables():
        monkeypatch.delenv(name, raising=False)


def _subprocess_env(**overrides: str) -> dict[str, str]:
    """This process's environment without any setting in it, plus `overrides`."""
    settings = _app_variables()
    env = {key: value for key, value in os.environ.items() if key.upper() not in settings}
    return env | {"PYTHONUNBUFFERED": "1"} | overrides


def test_every_setting_is_documented_in_env_example() -> None:
    documented = set(_example_variables())
    assert _app_variables() - documented == set(), "settings missing from .env.example"
    assert _analyzer_variables() - documented == set(), "analyzer settings missing"
    unknown = documented - _app_variables() - _analyzer_variables()
    assert unknown == set(), "variables in .env.example that nothing reads"


def test_an_empty_value_means_unset(
    monkeypatch: pytest.MonkeyPatch, no_settings_in_environment: None, tmp_path: Path
) -> None:
    defaults = Settings(_env_file=None)  # type: ignore[call-arg]
    # In the environment: every setting empty at once, and each one is its default.
    for name in _app_variables():
        monkeypatch.setenv(name, "")
    assert Settings(_env_file=None) == defaults  # type: ignore[call-arg]
    # In a .env file: the same.
    for name in _app_variables():
        monkeypatch.delenv(name)
    env_file = tmp_path / ".env"
    env_file.write_text("".join(f"{name}=\n" for name in sorted(_app_variables())))
    assert Settings(_env_file=env_file) == defaults  # type: ignore[call-arg]


def test_an_empty_analyzer_value_means_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same rule for the reference analyzer: ANALYZER_API_KEY= asks for no key."""
    for name in _analyzer_variables():
        monkeypatch.setenv(name, "")
    settings = AnalyzerSettings()
    assert settings.api_key is None
    assert settings == AnalyzerSettings(workers=settings.workers)


def test_the_launcher_takes_an_empty_server_url_as_unset(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`DATABASE_URL= vocalborn up` starts the embedded servers, as with no DATABASE_URL."""
    monkeypatch.setenv("DATABASE_URL", "")
    monkeypatch.setenv("REDIS_URL", "")
    system = System(8000, tmp_path)
    assert "DATABASE_URL" not in system.env and "REDIS_URL" not in system.env


def test_an_optional_setting_given_empty_in_code_is_unset(no_settings_in_environment: None) -> None:
    optional = [
        name
        for name, field in Settings.model_fields.items()
        if field.default is None and not field.is_required()
    ]
    assert {"jwt_audience", "jwt_issuer", "worker_name"} <= set(optional)
    settings = Settings(_env_file=None, **dict.fromkeys(optional, ""))  # type: ignore[call-arg]
    assert {name: getattr(settings, name) for name in optional} == dict.fromkeys(optional)


@pytest.mark.parametrize("rate", ["60/minute", "10 per second", "1000/hour"])
def test_submit_rate_limit_takes_one_rate(rate: str, no_settings_in_environment: None) -> None:
    assert Settings(_env_file=None, submit_rate_limit=rate).submit_rate_limit == rate  # type: ignore[call-arg]


@pytest.mark.parametrize("rate", ["10/second;300/hour", "0/minute", "sixty a minute", "60"])
def test_submit_rate_limit_refuses_anything_but_one_positive_rate(
    rate: str, no_settings_in_environment: None
) -> None:
    with pytest.raises(ValidationError, match="submit_rate_limit"):
        Settings(_env_file=None, submit_rate_limit=rate)  # type: ignore[call-arg]


def test_an_empty_value_in_the_environment_does_not_hide_the_env_file(
    monkeypatch: pytest.MonkeyPatch, no_settings_in_environment: None, tmp_path: Path
) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("JWT_ISSUER=https://auth.example.test\nWORKER_NAME=from-file\n")
    monkeypatch.setenv("JWT_ISSUER", "")
    monkeypatch.setenv("WORKER_NAME", "from-environment")
    settings = Settings(_env_file=env_file)  # type: ignore[call-arg]
    assert settings.jwt_issuer == "https://auth.example.test"
    assert settings.worker_name == "from-environment"  # a real value still wins over the file


def test_env_example_as_is_is_a_working_development_configuration(
    monkeypatch: pytest.MonkeyPatch, no_settings_in_environment: None
) -> None:
    settings = Settings(_env_file=ENV_EXAMPLE)  # type: ignore[call-arg]
    assert settings.environment == "development"
    for optional in (
        "jwt_public_key",
        "jwt_private_key",
        "jwt_audience",
        "jwt_issuer",
        "ai_service_api_key",
        "worker_name",
        "stream_token_secret",
    ):
        assert getattr(settings, optional) is None, optional
    settings.check_serving_security()  # the API starts
    worker_options(settings)  # and so does a worker
    # Its development secret is public: anywhere but development/test it is refused.
    monkeypatch.setenv("ENVIRONMENT", "production")
    with pytest.raises(InsecureConfiguration):
        Settings(_env_file=ENV_EXAMPLE).check_serving_security()  # type: ignore[call-arg]


async def _run(cwd: Path, env: dict[str, str], *args: str) -> str:
    done = await asyncio.to_thread(
        subprocess.run, [str(BIN / "vocalborn"), *args], cwd=cwd, env=env,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, f"vocalborn {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout.strip()


async def test_a_token_from_the_cli_is_accepted_by_the_api_with_env_example_as_is(
    tmp_path: Path, settings: Settings, clean: None
) -> None:
    """What the first line of .env.example tells people to do: copy it to .env, unchanged.
    Only the servers are the test's (the file's localhost defaults are not running here)."""
    shutil.copy(ENV_EXAMPLE, tmp_path / ".env")
    env = _subprocess_env(DATABASE_URL=settings.database_url, REDIS_URL=settings.redis_url)
    email = f"{uuid.uuid4().hex[:12]}@example.test"
    await _run(tmp_path, env, "users", "create", email)
    token = await _run(tmp_path, env, "token", email)

    port = free_port()
    log = tmp_path / "api.log"
    with log.open("wb") as output:
        api = await asyncio.create_subprocess_exec(
            str(BIN / "uvicorn"), "app.main:create_app", "--factory",
            "--host", "127.0.0.1", "--port", str(port),
            cwd=tmp_path, env=env, stdout=output, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:

            async def ready() -> bool:
                assert api.returncode is None, f"the API exited:\n{log.read_text()}"
                try:
                    return (await http.get("/healthz")).status_code == 200
                except httpx.TransportError:
                    return False

            await wait_for(ready, within=60, interval=0.1)
            auth = {"Authorization": f"Bearer {token}"}
            created = await http.post("/api/v1/practice/sessions", json={}, headers=auth)
            assert created.status_code == 201, created.text
            session_id = created.json()["practice_session_id"]
            read = await http.get(f"/api/v1/practice/sessions/{session_id}", headers=auth)
            assert read.status_code == 200, read.text
    finally:
        if api.returncode is None:
            api.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(api.wait(), 15)
            except TimeoutError:
                api.kill()
                await api.wait()


async def test_token_for_an_unknown_user_says_so_and_exits_2(
    tmp_path: Path, settings: Settings, clean: None
) -> None:
    env = _subprocess_env(DATABASE_URL=settings.database_url, REDIS_URL=settings.redis_url)
    env["JWT_SECRET"] = "x" * 64
    done = await asyncio.to_thread(
        subprocess.run, [str(BIN / "vocalborn"), "token", "nobody@example.test"], cwd=tmp_path,
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2 and done.stdout == ""
    assert "no user with email nobody@example.test" in done.stderr


def test_the_s3_backend_needs_a_bucket_and_both_keys_or_neither(
    no_settings_in_environment: None,
) -> None:
    base = {"_env_file": None, "storage_backend": "s3"}
    with pytest.raises(ValueError, match="S3_BUCKET"):
        Settings(**base)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="S3_SECRET_ACCESS_KEY"):
        Settings(**base, s3_bucket="b", s3_access_key_id="AK")  # type: ignore[arg-type]
    ambient = Settings(**base, s3_bucket="b", s3_key_prefix="")  # type: ignore[arg-type]
    assert ambient.s3_access_key_id is None and ambient.s3_key_prefix is None
    assert Settings(_env_file=None).storage_backend == "local"  # type: ignore[call-arg]


@pytest.mark.parametrize("given", ["vocalborn", "vocalborn/", "/vocalborn/"])
def test_the_s3_key_prefix_is_a_folder(given: str, no_settings_in_environment: None) -> None:
    settings = Settings(_env_file=None, s3_key_prefix=given)  # type: ignore[call-arg]
    assert settings.s3_key_prefix == "vocalborn"


@pytest.mark.parametrize("given", ["a//b", "a/../b", "./a"])
def test_an_s3_key_prefix_obstore_would_refuse_is_refused_here(
    given: str, no_settings_in_environment: None
) -> None:
    with pytest.raises(ValueError, match="S3_KEY_PREFIX"):
        Settings(_env_file=None, s3_key_prefix=given)  # type: ignore[call-arg]


def test_queue_etas_reckon_with_the_preferred_providers_cap(
    no_settings_in_environment: None,
) -> None:
    """Every worker together runs no more analyses than the cap: ETAs count that many slots."""

    def slots(**values: object) -> int:
        return Settings(_env_file=None, **values).eta_slots  # type: ignore[call-arg]

    assert slots(ai_service_concurrency=6) == 6  # no cap
    assert slots(ai_service_concurrency=6, ai_max_concurrency=2) == 2
    capped = (AIProvider(name="gpu", url="http://gpu", max_concurrency=3),)
    assert slots(ai_max_concurrency=2, ai_providers=capped) == 3  # its own cap
