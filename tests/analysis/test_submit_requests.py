"""The submit's answers to bad requests, recorded from the route as FastAPI solved it (its
body and Idempotency-Key read by FastAPI, its caller a dependency) and held since the route
reads its request itself: the same status, headers and error body, in the same order of
checks (a body that is not JSON, then the caller, then the rate limit, then the header and
the body's fields), and the same OpenAPI operation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.main import create_app
from app.settings import Settings
from tests.conftest import ApiUser

SUBMIT = "/api/v1/tasks/analysis/submit"
NOBODY = "00000000-0000-0000-0000-000000000000"  # no such practice record
JSON = {"Content-Type": "application/json"}
EXPECTED = Path(__file__).with_name("submit_requests.json")

# name -> (authenticated, headers, body bytes or None)
CASES: dict[str, tuple[bool, dict[str, str], bytes | None]] = {
    "anonymous, body not JSON": (False, JSON, b"{"),
    "anonymous, body not UTF-8": (False, JSON, b'{"a": "\xff"}'),
    "anonymous, body invalid": (False, JSON, b"{}"),
    "anonymous, body not declared JSON": (False, {"Content-Type": "text/plain"}, b"{"),
    "anonymous, no body": (False, {}, None),
    "body not JSON": (True, JSON, b'{"practice_record_id": '),
    "body not JSON, key too long": (True, JSON | {"Idempotency-Key": "k" * 201}, b"nope"),
    "body not UTF-8": (True, JSON, b'{"practice_record_id": "\xff"}'),
    "body nested too deep": (True, JSON, b"[" * 100_000 + b"]" * 100_000),
    "empty object": (True, JSON, b"{}"),
    "both targets": (
        True,
        JSON,
        json.dumps({"practice_record_id": NOBODY, "practice_session_id": NOBODY}).encode(),
    ),
    "null": (True, JSON, b"null"),
    "a list": (True, JSON, b"[]"),
    "a string": (True, JSON, b'"x"'),
    "empty body": (True, JSON, b""),
    "no body, no content type": (True, {}, None),
    "JSON as text/plain": (True, {"Content-Type": "text/plain"}, b"{}"),
    "JSON without content type": (True, {}, f'{{"practice_record_id": "{NOBODY}"}}'.encode()),
    "JSON as application/x-www-form-urlencoded": (
        True,
        {"Content-Type": "application/x-www-form-urlencoded"},
        b"practice_record_id=x",
    ),
    "JSON with charset": (
        True,
        {"Content-Type": "application/json; charset=utf-8"},
        b'{"practice_record_id": "x"}',
    ),
    "JSON as +json": (
        True,
        {"Content-Type": "application/vnd.vocalborn+json"},
        f'{{"practice_record_id": "{NOBODY}"}}'.encode(),
    ),
    "JSON as +json, invalid": (
        True,
        {"Content-Type": "application/problem+json"},
        b'{"practice_record_id": 1}',
    ),
    "JSON with a UTF-8 byte order mark": (
        True,
        JSON,
        b"\xef\xbb\xbf" + f'{{"practice_record_id": "{NOBODY}"}}'.encode(),
    ),
    "JSON in UTF-16": (True, JSON, f'{{"practice_record_id": "{NOBODY}"}}'.encode("utf-16")),
    "duplicate key, the last wins": (
        True,
        JSON,
        f'{{"practice_record_id": "x", "practice_record_id": "{NOBODY}"}}'.encode(),
    ),
    "NaN in an unknown field": (
        True,
        JSON,
        f'{{"practice_record_id": "{NOBODY}", "x": NaN}}'.encode(),
    ),
    "control character in target_text": (
        True,
        JSON,
        json.dumps({"practice_record_id": NOBODY, "parameters": {"target_text": "a\x00"}}).encode(),
    ),
    "every parameter wrong": (
        True,
        JSON,
        json.dumps(
            {
                "practice_record_id": "not-a-uuid",
                "parameters": {
                    "analysis_type": "bogus",
                    "include_suggestions": "maybe",
                    "model_version": "m" * 51,
                    "language": "x",
                    "target_text": "t" * 2001,
                },
                "fresh": 2,
            }
        ).encode(),
    ),
    "parameters not an object": (
        True,
        JSON,
        json.dumps({"practice_record_id": NOBODY, "parameters": []}).encode(),
    ),
    "lax values accepted": (
        True,
        JSON,
        json.dumps(
            {
                "practice_record_id": NOBODY.replace("-", ""),
                "parameters": {"include_suggestions": "yes"},
                "fresh": 1,
            }
        ).encode(),
    ),
    "float for a bool": (
        True,
        JSON,
        json.dumps({"practice_record_id": NOBODY, "fresh": 1.0}).encode(),
    ),
    "empty Idempotency-Key": (
        True,
        JSON | {"Idempotency-Key": ""},
        f'{{"practice_record_id": "{NOBODY}"}}'.encode(),
    ),
    "Idempotency-Key too long": (
        True,
        JSON | {"Idempotency-Key": "k" * 201},
        f'{{"practice_record_id": "{NOBODY}"}}'.encode(),
    ),
    "Idempotency-Key of 200": (
        True,
        JSON | {"Idempotency-Key": "k" * 200},
        f'{{"practice_record_id": "{NOBODY}"}}'.encode(),
    ),
    "Idempotency-Key too long, body invalid": (
        True,
        JSON | {"Idempotency-Key": "k" * 201},
        b'{"practice_record_id": "x"}',
    ),
    "Idempotency-Key empty, body missing": (True, {"Idempotency-Key": ""}, None),
    "valid, no such record": (True, JSON, f'{{"practice_record_id": "{NOBODY}"}}'.encode()),
    "valid, no such session": (True, JSON, f'{{"practice_session_id": "{NOBODY}"}}'.encode()),
}

# The headers an answer is compared on (besides its status and body).
HEADERS = ("content-type", "www-authenticate", "retry-after")


async def answer(
    client: httpx.AsyncClient, user: ApiUser, case: tuple[bool, dict[str, str], bytes | None]
) -> dict[str, Any]:
    """One bad request's answer: {"status": int, "headers": {...}, "body": JSON}."""
    authenticated, headers, content = case
    sent = headers | (user.headers if authenticated else {})
    response = await client.post(SUBMIT, headers=sent, content=content)
    return {
        "status": response.status_code,
        "headers": {name: response.headers[name] for name in HEADERS if name in response.headers},
        "body": response.json(),
    }


@pytest.mark.parametrize("name", CASES)
async def test_a_bad_submit_is_answered_as_before(
    client: httpx.AsyncClient, alice: ApiUser, name: str
) -> None:
    expected = json.loads(EXPECTED.read_text())[name]
    assert await answer(client, alice, CASES[name]) == expected


@pytest.fixture
async def limited_app(settings: Settings, clean: None) -> Any:
    """An API whose submit limit is 2 a minute."""
    application = create_app(settings.model_copy(update={"submit_rate_limit": "2/minute"}))
    async with application.router.lifespan_context(application):
        yield application


async def test_checks_keep_their_order_around_the_rate_limit(
    limited_app: FastAPI, alice: ApiUser
) -> None:
    """A body that is not JSON is refused before the caller is known (it spends no quota);
    an anonymous caller before the limit; the limit before the body's fields and the
    Idempotency-Key (an invalid body spends quota)."""
    transport = httpx.ASGITransport(app=limited_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        not_json = (True, JSON, b"{")
        invalid = (True, JSON | {"Idempotency-Key": ""}, b"{}")
        anonymous = (False, JSON, b"{}")
        statuses = [
            (await answer(client, alice, case))["status"]
            for case in (not_json, not_json, not_json, invalid, anonymous, invalid)
        ]
        assert statuses == [422, 422, 422, 422, 401, 422]
        refused = await answer(client, alice, invalid)
        assert refused["status"] == 429 and "retry-after" in refused["headers"]
        assert refused["body"]["error"]["code"] == "too_many_requests"
        assert (await answer(client, alice, not_json))["status"] == 422
        assert (await answer(client, alice, anonymous))["status"] == 401


def test_the_openapi_operation_is_as_before(settings: Settings) -> None:
    """The submit's operation (request body, Idempotency-Key parameter, security, answers)
    and the body's schemas, as FastAPI documented them when it read the request itself."""
    expected = json.loads(EXPECTED.with_name("submit_openapi.json").read_text())
    document = create_app(settings).openapi()
    assert document["paths"][SUBMIT] == {"post": expected["operation"]}
    schemas = document["components"]["schemas"]
    assert {name: schemas.get(name) for name in expected["schemas"]} == expected["schemas"]
    assert "HTTPBearer" in document["components"]["securitySchemes"]
