"""`vocalborn up` as a newcomer runs it: embedded servers, a real analysis, a clean Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from app.embedded import free_port, stop_child

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


def _analyse(api: str, token: str) -> dict[str, object]:
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=api, headers=headers, timeout=30) as http:
        session = http.post("/api/v1/practice/sessions", json={"title": "demo"}).json()
        with SAMPLE.open("rb") as audio:
            record = http.post(
                f"/api/v1/practice/sessions/{session['practice_session_id']}/records",
                files={"audio": ("sample.wav", audio, "audio/wav")},
            ).json()
        task = http.post(
            "/api/v1/tasks/analysis/submit",
            json={"practice_record_id": record["practice_record_id"]},
        ).json()
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
        assert result["analysis_model_version"] == "reference-praat-1.0"
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
