"""The reference analyzer heals when one of its pool processes dies (issue 11): it was a
ProcessPoolExecutor broken for good (every later request 500 'an analysis worker crashed',
/healthz still 'ok'). Now the pool is replaced, the analysis that was running answers a
retryable 503, later ones succeed, and GET /readyz says whether the pool can take work.

A real analyzer process (uvicorn), its pool processes found by PID as its children."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.analyzer.conftest import fixture_bytes
from tests.reliability.analyzer_process import Analyzer, answers, running_analyzer

POISON = "POISON-RECORDING"
NDJSON = {"accept": "application/x-ndjson", "content-type": "audio/wav"}


@pytest.fixture
def analyzer(tmp_path: Path) -> Iterator[Analyzer]:
    # Stages padded to 4 s in all: a pool process can be killed between two of them.
    with running_analyzer(
        tmp_path, ANALYZER_MIN_SECONDS="4", ANALYZER_TEST_CRASH_MARKER=POISON
    ) as server:
        yield server


STAGE_STARTS = {"decoding": 0, "feature_extraction": 20, "syllable_detection": 55}


def padding(event: dict[str, Any]) -> bool:
    start = STAGE_STARTS.get(event["step"])
    return start is not None and event["progress"] > start


def test_a_killed_pool_process_is_replaced_and_later_analyses_succeed(
    analyzer: Analyzer,
) -> None:
    audio = fixture_bytes("speech_fast.wav")
    url = f"{analyzer.url}/v1/analyze"
    killed = None
    events = []
    with httpx.stream("POST", url, content=audio, headers=NDJSON, timeout=120) as response:
        for line in response.iter_lines():
            event = json.loads(line)
            events.append(event)
            # A padding line (a stage's work done, the next not begun), then a stage that
            # runs in the pool: an OOM kill of a pool process between two analysis stages.
            if killed is None and event["event"] == "progress" and padding(event):
                killed = analyzer.pool_pids()[0]
                os.kill(killed, signal.SIGKILL)
    assert killed is not None, events
    last = events[-1]
    # The analysis under way either heals (its next stage runs in the new pool) or says
    # to retry: never a 500.
    assert last["event"] == "result" or last["error"]["status"] == 503, last

    later = analyzer.analyze(audio)
    assert later.status_code == 200, later.text  # was 500 for every later request
    assert later.json()["fluency_score"] is not None
    assert killed not in analyzer.pool_pids()
    ready = analyzer.wait(answers(analyzer, "/readyz", 200))
    assert ready.json()["pool"] == {"state": "ok", "rebuilds": 1}
    assert analyzer.get("/healthz").json()["pool"] == {"state": "ok", "rebuilds": 1}


def test_a_pool_process_dying_under_an_analysis_answers_503_and_readiness_reports_it(
    analyzer: Analyzer,
) -> None:
    audio = fixture_bytes("speech_fast.wav")
    crashed = analyzer.analyze(audio + POISON.encode())
    assert crashed.status_code == 503, crashed.text
    error = crashed.json()["error"]
    assert error["code"] == "worker_crashed" and "send the recording again" in error["message"]
    assert "retry-after" not in crashed.headers  # a retry spends the task's retry budget

    # The pool is being rebuilt (spawning and importing Praat takes far longer than one
    # request on loopback): not ready, in the one error shape; alive all the same.
    not_ready = analyzer.get("/readyz")
    assert not_ready.status_code == 503, not_ready.text
    assert not_ready.json() == {
        "error": {"code": "not_ready", "message": "the analysis pool is rebuilding"}
    }
    assert analyzer.get("/healthz").json()["pool"]["state"] == "rebuilding"

    analyzer.wait(answers(analyzer, "/readyz", 200))
    assert analyzer.analyze(audio).status_code == 200
    assert analyzer.get("/healthz").json()["pool"] == {"state": "ok", "rebuilds": 1}
