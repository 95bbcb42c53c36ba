"""`vocalborn up` as a newcomer runs it: embedded servers, a real analysis, a clean Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import wave
from collections import deque
from pathlib import Path

import httpx
import psutil
import pytest

from app.embedded import free_port, group_alive, stop_child
from app.launcher import (
    CRASH_LIMIT,
    CRASH_WINDOW_SECONDS,
    RESTART_FIRST_SECONDS,
    Child,
)
from tests.reliability.report import record_figure

SAMPLE = Path(__file__).resolve().parent.parent / "examples" / "sample.wav"
STARTUP_SECONDS = 120.0


class Output:
    """Drains the launcher's output (its children write there too) and keeps the lines."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._drain, args=(process,), daemon=True)
        self._thread.start()

    def _drain(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for_line(self, process: subprocess.Popen[str], start: str, within: float) -> str:
        """The first line starting with `start`; fails if the launcher exits first."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if line.startswith(start):
                    return line
            assert process.poll() is None, "\n".join(self.lines[-40:])
            time.sleep(0.05)
        raise AssertionError(f"no line {start!r}:\n" + "\n".join(self.lines[-40:]))

    def wait_for_token(self, process: subprocess.Popen[str]) -> str:
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if line.startswith("export TOKEN="):
                    return line.removeprefix("export TOKEN=")
            if process.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError("no token printed:\n" + "\n".join(self.lines[-40:]))


def _all_processes(launcher: int, data_dir: Path) -> set[int]:
    pids = {p.pid for p in psutil.Process(launcher).children(recursive=True)}
    for child in list(pids):
        try:
            pids |= {p.pid for p in psutil.Process(child).children(recursive=True)}
        except psutil.NoSuchProcess:
            pass
    postmaster = data_dir / "postgres" / "postmaster.pid"
    pids.add(int(postmaster.read_text().split()[0]))
    return pids


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.add(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


def _submit(http: httpx.Client, recording: Path = SAMPLE) -> str:
    """A new recording (sample.wav unless given), submitted: its task id."""
    session = http.post("/api/v1/practice/sessions", json={"title": "demo"}).json()
    with recording.open("rb") as audio:
        record = http.post(
            f"/api/v1/practice/sessions/{session['practice_session_id']}/records",
            files={"audio": ("sample.wav", audio, "audio/wav")},
        ).json()
    # fresh: each call uploads the same recording again, and must reach the analyzer (a copy of
    # the first result from the result cache would say nothing of a restarted one).
    task = http.post(
        "/api/v1/tasks/analysis/submit",
        json={"practice_record_id": record["practice_record_id"], "fresh": True},
    ).json()
    return str(task["task_id"])


def _analyse(api: str, token: str) -> dict[str, object]:
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=api, headers=headers, timeout=30) as http:
        task = {"task_id": _submit(http)}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status = http.get(f"/api/v1/tasks/analysis/{task['task_id']}/status").json()
            if status["status"] in ("success", "failure", "cancelled"):
                break
            time.sleep(0.2)
        assert status["status"] == "success", status
        result: dict[str, object] = http.get(
            f"/api/v1/tasks/analysis/{task['task_id']}/result"
        ).json()
        return result


def test_vocalborn_up_runs_the_whole_system(tmp_path: Path) -> None:
    if os.environ.get("TEST_DATABASE_URL") or os.environ.get("TEST_REDIS_URL"):
        pytest.skip("exercises the embedded servers")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    vocalborn = Path(sys.executable).parent / "vocalborn"
    process = subprocess.Popen(
        [str(vocalborn), "up", "--port", str(port), "--data-dir", str(tmp_path)],
        env=env | {"PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    output = Output(process)
    try:
        token = output.wait_for_token(process)
        pids = _all_processes(process.pid, tmp_path)
        assert len(pids) >= 5  # analyzer, worker, API, Redis, PostgreSQL
        result = _analyse(f"http://127.0.0.1:{port}", token)
        assert result["analysis_model_version"] == "reference-praat-1.1"
        assert isinstance(result["fluency_score"], float)

        process.send_signal(signal.SIGINT)  # what Ctrl-C sends
        assert process.wait(timeout=60) == 0
        deadline = time.monotonic() + 10
        while _alive(pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _alive(pids) == set(), "\n".join(output.lines[-20:])
        assert "vocalborn: stopped" in output.lines
    finally:
        if process.poll() is None:
            stop_child(process)  # type: ignore[arg-type]


def _up(tmp_path: Path, port: int, **env: str) -> subprocess.Popen[str]:
    """`vocalborn up` on `port` with its data in `tmp_path`, in its own session."""
    if os.environ.get("TEST_DATABASE_URL") or os.environ.get("TEST_REDIS_URL"):
        pytest.skip("exercises the embedded servers")
    base = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    vocalborn = Path(sys.executable).parent / "vocalborn"
    return subprocess.Popen(
        [str(vocalborn), "up", "--port", str(port), "--data-dir", str(tmp_path)],
        env=base | {"PYTHONUNBUFFERED": "1"} | env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


CHILDREN = {"analyzer": "analyzer.main:app", "worker": "worker", "api": "app.main:create_app"}


def _child(launcher: int, name: str) -> psutil.Process:
    """The launcher's child `name` (by its command line)."""
    for child in psutil.Process(launcher).children():
        argv = child.cmdline()
        if "-m" in argv and CHILDREN[name] in argv[argv.index("-m") + 1 :]:
            return child
    raise AssertionError(f"no {name} child of {launcher}")


@pytest.mark.scenario("R9")
def test_up_restarts_each_child_that_dies(tmp_path: Path) -> None:
    port = free_port()
    api = f"http://127.0.0.1:{port}"
    process = _up(tmp_path, port)
    output = Output(process)
    restarts: dict[str, float] = {}  # kill to the success of a task submitted afterwards
    back: dict[str, float] = {}  # kill to the restart
    try:
        token = output.wait_for_token(process)
        ai = output.wait_for_line(process, "  AI service: ", 5).split(": ", 1)[1].strip()
        with httpx.Client(base_url=api, headers={"Authorization": f"Bearer {token}"}) as http:
            for name in ("worker", "analyzer", "api"):
                child = _child(process.pid, name)
                pool = [p.pid for p in child.children()]  # the analyzer's pool processes
                killed_at = time.monotonic()
                child.kill()  # SIGKILL by PID: a crash, an OOM kill
                line = output.wait_for_line(process, f"vocalborn: the {name} restarted", 30)
                back[name] = time.monotonic() - killed_at
                restarted = _child(process.pid, name)
                assert restarted.pid != child.pid and f"pid {restarted.pid}" in line
                assert not group_alive(child.pid)  # its pool processes went with it
                assert _alive(set(pool)) == set()
                assert f"vocalborn: the {name} (pid {child.pid}) exited with -9" in "\n".join(
                    output.lines
                )
                # A task submitted once the restarted child answers completes.
                for url in (f"{api}/healthz", f"{ai}/readyz"):
                    deadline = time.monotonic() + 60
                    while True:
                        try:
                            if http.get(url, timeout=2).status_code == 200:
                                break
                        except httpx.TransportError:
                            pass
                        assert time.monotonic() < deadline, "\n".join(output.lines[-40:])
                        time.sleep(0.1)
                result = _analyse(api, token)
                assert isinstance(result["fluency_score"], float)
                restarts[name] = time.monotonic() - killed_at
        assert process.poll() is None  # nothing stopped the launcher
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            process.wait(timeout=90)
    record_figure(
        "R9",
        "each child SIGKILLed in turn was restarted and a task submitted afterwards succeeded;"
        " (kill to restart / to that task's success): "
        + ", ".join(f"{name} {back[name]:.1f} s / {restarts[name]:.1f} s" for name in restarts),
        part="restart",
        **{f"{name}_restart_seconds": round(seconds, 2) for name, seconds in back.items()},
        **{f"{name}_task_seconds": round(seconds, 2) for name, seconds in restarts.items()},
    )


def _long_recording(path: Path, seconds: float) -> Path:
    """sample.wav repeated to about `seconds` (16 kHz mono: 32 kB a second)."""
    with wave.open(str(SAMPLE)) as source:
        params, frames = source.getparams(), source.readframes(source.getnframes())
        repeats = int(seconds * source.getframerate() // source.getnframes())
    with wave.open(str(path), "wb") as target:
        target.setparams(params)
        target.writeframes(frames * repeats)
    return path


@pytest.mark.scenario("R9")
def test_ctrl_c_during_a_long_analysis_leaves_no_process(tmp_path: Path) -> None:
    port = free_port()
    api = f"http://127.0.0.1:{port}"
    # Measuring pitch and voice quality of ten minutes of speech keeps a pool process busy
    # for about 40 s: far longer than the launcher's grace.
    recording = _long_recording(tmp_path / "long.wav", 590)
    process = _up(tmp_path / "data", port)
    output = Output(process)
    try:
        token = output.wait_for_token(process)
        with httpx.Client(base_url=api, headers={"Authorization": f"Bearer {token}"}) as http:
            task_id = _submit(http, recording)
            deadline = time.monotonic() + 60
            while True:  # decoded: a pool process is measuring
                status = http.get(f"/api/v1/tasks/analysis/{task_id}/status").json()
                if status["current_step"]["code"] == "feature_extraction":
                    break
                assert time.monotonic() < deadline, status
                time.sleep(0.2)
        pids = _all_processes(process.pid, tmp_path / "data")
        groups = {p.pid for p in psutil.Process(process.pid).children()}  # their own groups
        analyzer = _child(process.pid, "analyzer")
        assert len(analyzer.children()) >= 2, "the analyzer's pool processes"  # and a tracker

        interrupted = time.monotonic()
        process.send_signal(signal.SIGINT)  # what Ctrl-C sends
        assert process.wait(timeout=60) == 0
        stopped_in = time.monotonic() - interrupted
        assert _alive(pids) == set(), "\n".join(output.lines[-20:])  # by PID
        assert {g for g in groups if group_alive(g)} == set()  # by process group
        assert "vocalborn: stopped" in output.lines
    finally:
        if process.poll() is None:
            stop_child(process)  # type: ignore[arg-type]
    record_figure(
        "R9",
        f"Ctrl-C during a 10-minute recording's analysis: the launcher stopped in"
        f" {stopped_in:.1f} s,"
        f" 0 of {len(pids)} processes left (by PID and process group)",
        part="ctrl-c",
        stopped_seconds=round(stopped_in, 2),
        processes=len(pids),
    )


def test_restart_backoff_doubles_and_too_many_exits_stop_everything() -> None:
    child = Child.__new__(Child)  # its restart bookkeeping only: no process started
    child.exits = deque()
    backoffs = [child.exited(float(t)) for t in range(CRASH_LIMIT - 1)]
    assert backoffs == [RESTART_FIRST_SECONDS * 2**n for n in range(CRASH_LIMIT - 1)]
    assert child.exited(float(CRASH_LIMIT)) is None  # the CRASH_LIMIT-th exit in the window
    # Exits older than the window are forgotten: a child that crashes now and then is
    # restarted for ever.
    later = CRASH_LIMIT + CRASH_WINDOW_SECONDS + 1
    assert child.exited(later) == RESTART_FIRST_SECONDS
