"""S1: schemathesis over the OpenAPI document, with a user's token and an admin's: no server
error, no response outside the document (status code, content type, headers, body schema).

Bounded and deterministic: MAX_EXAMPLES cases per operation and token, derandomized (the same
cases every run). Each operation with ids in its path is also fed the ids of real rows the
user owns, so that the 2xx answers are checked against their schema, not only the 404s.
Not covered, and why: the SSE streams (`…/events`, outside the document: they never end) and
the WebSocket (not HTTP); both have their own tests in tests/events/."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field

import httpx
import hypothesis
import pytest
import schemathesis
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.analysis.conftest import submit, upload_recording
from tests.conftest import ApiUser
from tests.events.conftest import StartApi
from tests.security.conftest import figure

pytestmark = pytest.mark.scenario("S1")

MAX_EXAMPLES = 50
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
# Not negative_data_rejection: it wants undeclared query parameters refused, and the API
# ignores them, as most HTTP APIs do. Negative cases are still sent: for server errors and
# for their answers' shape.
# Operations left out, each with its reason (none so far).
EXCLUDED: dict[tuple[str, str], str] = {}


@dataclass
class Tally:
    """What the runs sent and got: answers by status class, failures as text."""

    statuses: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)

    @property
    def sent(self) -> int:
        return sum(n for name, n in self.statuses.items() if name.endswith("xx"))


def _run(
    schema: schemathesis.BaseSchema, base_url: str, token: str, known: dict[str, str], tally: Tally
) -> None:
    """Every operation's cases with this token."""
    for result in schema.get_all_operations():
        operation = result.ok()
        if (operation.method.upper(), operation.path) not in EXCLUDED:
            _run_operation(operation, base_url, token, known, tally)


def _run_operation(
    operation: schemathesis.APIOperation,
    base_url: str,
    token: str,
    known: dict[str, str],
    tally: Tally,
) -> None:
    """MAX_EXAMPLES cases of one operation, positive and negative, some with real ids."""
    strategies = [
        operation.as_strategy(generation_mode=mode)
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)
    ]
    names = {parameter.name for parameter in operation.path_parameters}
    ids = {name: known[name] for name in names if name in known}
    if ids:
        strategies.append(operation.as_strategy(path_parameters=ids))
    headers = {"Authorization": f"Bearer {token}"}

    @hypothesis.settings(
        max_examples=MAX_EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(hypothesis.HealthCheck),
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
    )
    @hypothesis.given(case=st.one_of(strategies))
    def cases(case: schemathesis.Case) -> None:
        response = case.call(base_url=base_url, headers=headers, timeout=30)
        tally.statuses[f"{response.status_code // 100}xx"] += 1
        if response.status_code == 429:
            tally.statuses["429"] += 1
        try:
            case.validate_response(response, checks=CHECKS, headers=headers)
        except (AssertionError, BaseExceptionGroup) as exc:  # schemathesis' failures
            failure = f"{operation.method.upper()} {operation.path}: {exc}"
            tally.failures.append(failure[:2000])  # a generated body can be megabytes

    cases()


async def test_s1_schemathesis_finds_no_server_error_and_no_schema_violation(
    start_live_api: StartApi, alice: ApiUser, admin: ApiUser
) -> None:
    # A submit limit the run goes past, so that 429 answers are checked against the document too.
    server = start_live_api(submit_rate_limit="20/minute")
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        session_id, record_id, _ = await upload_recording(http, alice)
        task_id = str((await submit(http, alice, record_id))["task_id"])
    known = {"task_id": task_id, "session_id": session_id, "record_id": record_id}
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    tally = Tally()
    for who in (alice, admin):
        await asyncio.to_thread(_run, schema, server.url, who.token, known, tally)
    answers = ", ".join(f"{name} {count}" for name, count in sorted(tally.statuses.items()))
    operations = len(list(schema.get_all_operations()))
    figure(
        "S1",
        f"{tally.sent} requests over {operations} operations ({answers}), "
        f"{len(tally.failures)} failures",
    )
    assert tally.statuses["2xx"] and tally.statuses["4xx"] and tally.statuses["429"]
    assert not tally.failures, "\n\n".join(tally.failures[:20])


@pytest.mark.parametrize(
    "query",
    [
        "outcome=a%00b",  # NUL: PostgreSQL refuses it in text
        "action=%00",
        "target=x%00",
        f"before_id={2**63}",  # beyond bigint
        "since=0001-01-01T00:00:00%2B10:00",  # overflows once converted to UTC
        "until=9999-12-31T23:59:59-10:00",
    ],
)
async def test_s1_findings_audit_filters_are_validated_before_postgres(
    client: httpx.AsyncClient, admin: ApiUser, query: str
) -> None:
    """What schemathesis found (500s from asyncpg), pinned: a 422 in the one error shape."""
    response = await client.get(f"/api/v1/admin/audit?{query}", headers=admin.headers)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "validation_error"
