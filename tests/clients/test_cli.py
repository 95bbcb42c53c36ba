"""`vocalborn analyze / status / result / cancel` as a user runs them: the installed command in
a subprocess, against the API over HTTP, a worker and the reference analyzer."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import re
import signal
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from redis.asyncio import Redis

from app.analysis.progress import session_topic, stream_key
from app.auth import decode_access_token
from tests.analysis.conftest import wait_for
from tests.clients.conftest import SAMPLE, VOCALBORN, LiveSystem, silent_wav

TASK_LINE = re.compile(r"^(?P<name>\S+): task (?P<id>[0-9a-f-]{36})$", re.MULTILINE)
CLI_SECONDS = 120.0


@asynccontextmanager
async def cli(live: LiveSystem, *args: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """The command running, without a terminal; killed by PID if a test leaves it running."""
    process = await asyncio.create_subprocess_exec(
        str(VOCALBORN), *args,
        env=live.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def run(live: LiveSystem, *args: str) -> tuple[int, str, str]:
    async with cli(live, *args) as process:
        out, err = await asyncio.wait_for(process.communicate(), CLI_SECONDS)
        assert process.returncode is not None
        return process.returncode, out.decode(), err.decode()


def task_ids(output: str) -> list[str]:
    return [match["id"] for match in TASK_LINE.finditer(output)]


async def read_until(stream: asyncio.StreamReader, pattern: str, seen: list[str]) -> str:
    """Lines of `stream` until one matches `pattern` (all kept in `seen`)."""
    async with asyncio.timeout(CLI_SECONDS):
        while line := (await stream.readline()).decode():
            seen.append(line)
            if re.search(pattern, line):
                return line
    raise AssertionError(f"no line matched {pattern!r}:\n{''.join(seen)}")


async def api_get(live: LiveSystem, path: str) -> Any:
    async with live.http() as http:
        response = await http.get(path)
        return response.json()


async def test_analyze_success_prints_progress_and_the_scores(live: LiveSystem) -> None:
    code, out, err = await run(live, "analyze", str(SAMPLE), "--language", "en")
    assert code == 0, out + err
    [task_id] = task_ids(out)
    result = await api_get(live, f"/api/v1/tasks/analysis/{task_id}/result")
    # one plain line per change without a terminal: several named steps with their percent
    steps = re.findall(r"^sample\.wav: processing  (\S+)  (\d+)%", out, re.MULTILINE)
    assert len({label for label, _ in steps}) >= 2, out
    assert [int(p) for _, p in steps] == sorted(int(p) for _, p in steps), out
    assert re.search(r"^sample\.wav: success  \S+  100%$", out, re.MULTILINE), out
    # the scores table, with a null score shown as not measured with its reason
    assert "Overall 總分" in out and "Fluency 流暢度" in out and "Rhythm 節奏" in out
    assert f"{result['fluency_score']:.1f}" in out
    if result["pronunciation_accuracy"] is None:
        reason = result["detailed_analysis"]["scores"]["pronunciation_accuracy"]["reason"]
        assert re.search(r"Pronunciation 發音\s+│\s+not measured\s+│", out), out
        assert " ".join(reason.split()[:3]) in " ".join(out.split()), out
    assert "Suggestions 建議:" in out
    assert " ".join(result["suggestions"].split()[:4]) in " ".join(out.split())
    for area in result["improvement_areas"]:
        assert f"- {area}" in out


async def test_analyze_again_reuses_the_result_unless_fresh(live: LiveSystem) -> None:
    """The same recording and parameters a second time: the first result, reused at once
    (no progress); with --fresh, analysed again."""
    code, out, err = await run(live, "analyze", str(SAMPLE))
    assert code == 0, out + err
    [first] = task_ids(out)
    code, out, err = await run(live, "analyze", str(SAMPLE))
    assert code == 0, out + err
    [second] = task_ids(out)
    assert f"sample.wav: the result of task {first} (the same recording" in out, out
    assert not re.search(r"^sample\.wav: processing", out, re.MULTILINE), out
    result = await api_get(live, f"/api/v1/tasks/analysis/{second}/result")
    assert result["reused_from_task_id"] == first
    assert f"{result['fluency_score']:.1f}" in out

    code, out, err = await run(live, "analyze", str(SAMPLE), "--fresh")
    assert code == 0, out + err
    [third] = task_ids(out)
    assert "reused" not in out and re.search(r"^sample\.wav: processing", out, re.MULTILINE)
    assert (await api_get(live, f"/api/v1/tasks/analysis/{third}/result"))[
        "reused_from_task_id"
    ] is None


async def test_analyze_failure_exits_1_with_the_error(live: LiveSystem, tmp_path: Path) -> None:
    silent = tmp_path / "silence.wav"
    silent.write_bytes(silent_wav())
    code, out, err = await run(live, "analyze", str(silent))
    assert code == 1, out + err
    [task_id] = task_ids(out)
    status = await api_get(live, f"/api/v1/tasks/analysis/{task_id}/status")
    assert status["status"] == "failure" and status["error_code"], status
    assert f"silence.wav: failure ({status['error_code']}: " in out, out
    # result of a failed task: none, exit 1; unknown task: bad input, exit 2
    code, out, err = await run(live, "result", task_id)
    assert code == 1 and "failure" in err, out + err
    code, out, err = await run(live, "status", "00000000-0000-0000-0000-000000000000")
    assert code == 2 and "not_found" in err, out + err


async def test_json_output_equals_the_result_documents(live: LiveSystem, tmp_path: Path) -> None:
    second = tmp_path / "second.wav"
    second.write_bytes(SAMPLE.read_bytes())
    code, out, err = await run(live, "analyze", str(SAMPLE), str(second), "--json")
    assert code == 0, out + err
    documents = json.loads(out)  # stdout is the JSON alone; progress went to stderr
    ids = task_ids(err)
    assert len(ids) == 2 and [d["task_id"] for d in documents] == ids
    for task_id, document in zip(ids, documents, strict=True):
        assert document == await api_get(live, f"/api/v1/tasks/analysis/{task_id}/result")
        code, out, err = await run(live, "result", task_id, "--json")
        assert code == 0 and json.loads(out) == document


@pytest.mark.parametrize("ai_url", ["held"], indirect=True)
async def test_interrupt_with_cancel_on_interrupt_cancels(live: LiveSystem) -> None:
    seen: list[str] = []
    async with cli(live, "analyze", str(SAMPLE), "--cancel-on-interrupt") as process:
        assert process.stdout is not None
        await read_until(process.stdout, r"^sample\.wav: processing", seen)
        process.send_signal(signal.SIGINT)  # what Ctrl-C sends
        rest, err = await asyncio.wait_for(process.communicate(), CLI_SECONDS)
    out = "".join(seen) + rest.decode()
    assert process.returncode == 130, out + err.decode()
    [task_id] = task_ids(out)
    assert f"sample.wav: cancel requested ({task_id})" in out
    await wait_for_status(live, task_id, "cancelled")


@pytest.mark.parametrize("ai_url", ["held"], indirect=True)
async def test_interrupt_without_terminal_leaves_tasks_then_cancel_command(
    live: LiveSystem,
) -> None:
    seen: list[str] = []
    async with cli(live, "analyze", str(SAMPLE)) as process:
        assert process.stdout is not None
        await read_until(process.stdout, r"^sample\.wav: processing", seen)
        process.send_signal(signal.SIGINT)
        rest, err = await asyncio.wait_for(process.communicate(), CLI_SECONDS)
    out = "".join(seen) + rest.decode()
    assert process.returncode == 130, out + err.decode()
    [task_id] = task_ids(out)
    assert f"sample.wav: left running, task {task_id}" in out  # no terminal: it did not ask
    status = await api_get(live, f"/api/v1/tasks/analysis/{task_id}/status")
    assert status["status"] == "processing" and not status["cancel_requested"], status

    code, said, told = await run(live, "cancel", task_id)
    assert code == 0, said + told
    await wait_for_status(live, task_id, "cancelled")
    code, said, told = await run(live, "status", task_id)
    assert code == 1 and re.search(r"status\s+cancelled", said), said + told


async def wait_for_status(live: LiveSystem, task_id: str, wanted: str) -> None:
    async def reached() -> bool:
        doc = await api_get(live, f"/api/v1/tasks/analysis/{task_id}/status")
        return bool(doc["status"] == wanted)

    await wait_for(reached, within=30)


def test_bad_usage_exits_2(tmp_path: Path) -> None:
    missing = tmp_path / "missing.wav"
    for args in (["analyze", str(missing)], ["analyze"], ["status"], ["analyze", "--nope"]):
        completed = subprocess.run(
            [str(VOCALBORN), *args], capture_output=True, text=True, timeout=60, check=False
        )
        assert completed.returncode == 2, (args, completed.stdout, completed.stderr)


async def test_a_dropped_stream_resumes_with_last_event_id(live: LiveSystem, redis: Redis) -> None:
    seen: list[str] = []
    async with cli(live, "analyze", str(SAMPLE)) as process:
        assert process.stdout is not None
        await read_until(process.stdout, r"^sample\.wav: processing", seen)
        await live.restart_api()  # the stream drops in the middle of the analysis
        await read_until(process.stdout, r"resuming after event", seen)
        rest, err = await asyncio.wait_for(process.communicate(), CLI_SECONDS)
    out = "".join(seen) + rest.decode()
    assert process.returncode == 0, out + err.decode()
    [resumed] = re.findall(r"resuming after event (\S+)", out)
    [task_id] = task_ids(out)
    status = await api_get(live, f"/api/v1/tasks/analysis/{task_id}/status")
    # the id it resumed after is one of the session stream's, short of its last (the end)
    key = stream_key(session_topic(status["practice_session_id"]))
    ids = [entry_id.decode() for entry_id, _ in await redis.xrange(key)]
    assert resumed in ids[:-1], (resumed, ids)
    assert re.search(r"^sample\.wav: success  \S+  100%$", out, re.MULTILINE), out


@pytest.mark.parametrize("api_overrides", [{"max_streams_per_user": 1}])
async def test_refused_streaming_falls_back_to_polling(live: LiveSystem) -> None:
    async with live.http() as http:
        empty = (await http.post("/api/v1/practice/sessions", json={})).json()
        events = f"/api/v1/tasks/analysis/session/{empty['practice_session_id']}/events"
        async with http.stream("GET", events) as held:  # the user's only stream
            assert held.status_code == 200
            code, out, err = await run(live, "analyze", str(SAMPLE))
    assert code == 0, out + err
    assert "streaming refused (" in out and "HTTP 429)" in out, out
    assert "polling the status instead" in out
    assert re.search(r"^sample\.wav: success  \S+  100%$", out, re.MULTILINE), out


ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")


async def test_interrupt_on_a_terminal_asks_then_cancels(live: LiveSystem) -> None:
    """On a terminal (a pseudo-terminal here) Ctrl-C asks; answering y cancels."""
    master, slave = pty.openpty()
    process = await asyncio.create_subprocess_exec(
        str(VOCALBORN), "analyze", str(SAMPLE),
        env=live.env | {"TERM": "xterm"}, stdin=slave, stdout=slave, stderr=slave,
    )  # fmt: skip
    os.close(slave)
    screen = bytearray()
    loop = asyncio.get_running_loop()

    def drain() -> None:
        try:
            screen.extend(os.read(master, 65536))
        except OSError:  # the command exited: the terminal is gone
            loop.remove_reader(master)

    loop.add_reader(master, drain)

    async def shown(pattern: bytes) -> re.Match[bytes] | None:
        return re.search(pattern, ANSI.sub(b"", bytes(screen)))

    try:
        task_line = await wait_for(lambda: shown(rb"sample\.wav: task ([0-9a-f-]{36})"), 60)
        task_id = task_line[1].decode()
        await wait_for_status(live, task_id, "processing")
        process.send_signal(signal.SIGINT)
        await wait_for(lambda: shown(rb"Cancel the 1 running task\(s\)\?"), 30)
        os.write(master, b"y\n")
        assert await asyncio.wait_for(process.wait(), CLI_SECONDS) == 130
        assert await shown(rb"sample\.wav: cancel requested"), screen.decode(errors="replace")
        await wait_for_status(live, task_id, "cancelled")
    finally:
        loop.remove_reader(master)
        os.close(master)
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_bad_input_exits_2_with_a_clear_message(live: LiveSystem, tmp_path: Path) -> None:
    text = tmp_path / "notes.wav"
    text.write_text("not audio at all")
    code, out, err = await run(live, "analyze", str(text))
    assert code == 2, out + err
    assert f"{text}: " in err and "HTTP 415" in err, err
    unknown = "00000000-0000-0000-0000-000000000000"
    code, out, err = await run(live, "analyze", str(SAMPLE), "--session", unknown)
    assert code == 2 and "not_found" in err, out + err
    for args in (["status", "not-a-task"], ["analyze", str(SAMPLE), "--session", "abc"]):
        code, out, err = await run(live, *args)
        assert code == 2 and "valid UUID" in " ".join(err.split()), (args, out, err)
    code, out, err = await run(live, "status", unknown, "--token", "")
    assert code == 2 and "no token" in err, out + err


async def test_link_prints_a_short_lived_token_for_the_same_user(live: LiveSystem) -> None:
    env = live.env | {"JWT_SECRET": live.settings.jwt_secret or ""}
    completed = await asyncio.to_thread(
        subprocess.run, [str(VOCALBORN), "link"], env=env, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    link = completed.stdout.strip()
    assert link.startswith(f"{live.api_url}/#token=")
    token = link.split("#token=", 1)[1]
    user = decode_access_token(token, live.settings)
    assert user.user_id == live.user.user_id
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 3600
    async with httpx.AsyncClient(base_url=live.api_url) as http:
        listed = await http.get(
            "/api/v1/practice/sessions", headers={"Authorization": f"Bearer {token}"}
        )
        assert listed.status_code == 200
