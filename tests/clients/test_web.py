"""The web page in a real browser (Debian's chromium, driven by Playwright for Python; nothing
downloads a browser) against `vocalborn up`: open the printed link, upload a recording, submit,
watch the progress pass through named steps, see the chart, the timeline and the history, and
check the page with axe-core (vendored) for serious or critical violations."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.embedded import free_port, stop_child
from tests.clients.conftest import ROOT, SAMPLE, VOCALBORN

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
AXE = Path(__file__).resolve().parent / "vendor" / "axe-4.14.1.min.js"
SCREENSHOT = Path(os.environ.get("VOCALBORN_SCREENSHOT_DIR", ROOT / "var" / "screenshots"))
LINK = re.compile(r"^Web page \(token valid \d+ min\): (?P<url>http://\S+/#token=\S+)$")
STARTUP_SECONDS = 120.0
MS = 1000  # Playwright's timeouts are in milliseconds


def _chromium_or_skip() -> str:
    if Path(CHROMIUM).exists():
        return CHROMIUM
    if os.environ.get("CI"):  # .ci/run installs it: a missing browser there is a failure
        pytest.fail(f"no chromium at {CHROMIUM} in CI")
    pytest.skip(f"no chromium installed ({CHROMIUM}): apt-get install chromium")


@dataclass
class Up:
    """`vocalborn up` running, its output drained by a thread."""

    process: subprocess.Popen[str]
    lines: list[str]

    def link(self) -> str:
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if match := LINK.match(line):
                    return match["url"]
            if self.process.poll() is not None:
                break
            time.sleep(0.1)  # polling the drained output for the banner
        raise AssertionError("no web link printed:\n" + "\n".join(self.lines[-40:]))


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    if os.environ.get("TEST_DATABASE_URL") or os.environ.get("TEST_REDIS_URL"):
        pytest.skip("runs vocalborn up with its embedded servers")
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    # long enough to watch the progress move through the steps (README: ANALYZER_MIN_SECONDS)
    env |= {"PYTHONUNBUFFERED": "1", "ANALYZER_MIN_SECONDS": "8"}
    process = subprocess.Popen(
        [
            str(VOCALBORN),
            "up",
            "--port",
            str(free_port()),
            "--data-dir",
            str(tmp_path_factory.mktemp("up")),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []

    def drain() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line.rstrip("\n"))

    threading.Thread(target=drain, daemon=True).start()
    try:
        yield Up(process, lines)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)  # Ctrl-C: it stops its children by PID
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                stop_child(process, signal.SIGKILL)  # type: ignore[arg-type]


def serious_violations(page: Any) -> list[dict[str, Any]]:
    # evaluated over the DevTools protocol: the page's own Content-Security-Policy stays on
    page.evaluate(AXE.read_text())
    report = page.evaluate("async () => await axe.run(document, {resultTypes: ['violations']})")
    return [
        {"id": v["id"], "impact": v["impact"], "nodes": [n["target"] for n in v["nodes"]]}
        for v in report["violations"]
        if v["impact"] in ("serious", "critical")
    ]


def test_web_page_whole_flow_in_chromium(up: Up) -> None:
    executable = _chromium_or_skip()
    from playwright.sync_api import expect, sync_playwright

    link = up.link()
    api_url, token = link.split("/#token=")
    # the page itself: the one error shape for a missing file under /web/
    missing = httpx.get(f"{api_url}/web/missing.js")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            requests: list[str] = []
            page.on("request", lambda request: requests.append(request.url))
            errors: list[str] = []  # script errors and refusals by the page's CSP
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(link)
            expect(page.locator("#app")).to_be_visible(timeout=30 * MS)
            # the token left the address bar at once and was never sent in a URL
            assert "token" not in page.url
            assert not any(token in url for url in requests), requests
            expect(page.locator("html")).to_have_attribute("lang", "zh-TW")

            page.locator("#session-title").fill("瀏覽器測試")
            page.get_by_role("button", name="建立課程").click()
            expect(page.locator("#session-select option:checked")).to_contain_text("瀏覽器測試")
            page.locator("#file-input").set_input_files(str(SAMPLE))
            page.get_by_role("button", name="上傳並分析").click()

            progress = page.locator("#progress-section")
            expect(progress).to_have_attribute("data-status", "processing", timeout=60 * MS)
            first = int(page.locator("#progress-bar").get_attribute("aria-valuenow") or 0)
            # while processing, the bar moves on and passes through at least two named steps
            page.wait_for_function(
                """first => document.querySelectorAll('#steps-seen li').length >= 2
                   && Number(document.querySelector('#progress-bar').ariaValueNow) > first
                   && document.querySelector('#progress-section').dataset.status
                      === 'processing'""",
                arg=first,
                timeout=60 * MS,
            )
            expect(page.locator("#progress-step")).not_to_be_empty()
            expect(progress).to_have_attribute("data-status", "success", timeout=90 * MS)
            expect(page.locator("#result-section")).to_be_visible(timeout=30 * MS)

            # the history is reloaded after the result is shown: its row once it has come
            finished = page.locator("#history-table tbody tr[data-task]")
            expect(finished).to_have_count(1, timeout=30 * MS)
            task_id = finished.get_attribute("data-task")
            result = httpx.get(
                f"{api_url}/api/v1/tasks/analysis/{task_id}/result",
                headers={"Authorization": f"Bearer {token}"},
            ).json()
            # the chart: four scores; a null one drawn as not measured with its reason, not 0
            bars = page.locator("#score-chart li")
            expect(bars).to_have_count(4)
            for key in ("overall_score", "pronunciation_accuracy", "fluency_score", "rhythm_score"):
                item = page.locator(f"#score-chart li[data-score='{key}']")
                if result[key] is None:
                    expect(item).to_have_class(re.compile("not-measured"))
                    expect(item).to_contain_text("未測量")
                    expect(item.locator(".value-bar")).to_have_count(0)
                else:
                    expect(item.locator(".value")).to_have_text(f"{result[key]:.1f}")
            expect(page.locator("#suggestions")).to_have_text(result["suggestions"])
            # the timeline: speech, every pause and every syllable nucleus of detailed_analysis
            detailed = result["detailed_analysis"]
            timeline = page.locator("#timeline svg")
            expect(timeline).to_be_visible()
            assert timeline.locator("rect.speech").count() >= 1
            expect(timeline.locator("rect.pause")).to_have_count(len(detailed["pauses"]))
            expect(timeline.locator("circle.nucleus")).to_have_count(
                len(detailed["syllable_nuclei_times"])
            )
            # the history: this analysis with its scores
            expect(page.locator(f"#history-table tr[data-task='{task_id}']")).to_have_count(1)

            assert serious_violations(page) == []
            SCREENSHOT.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOT / "web_result_zh-TW.png"), full_page=True)

            # English labels, still accessible; keyboard: the language picker by Tab and keys
            page.locator("#ui-lang").select_option("en")
            expect(page.locator("html")).to_have_attribute("lang", "en")
            expect(page.locator("#result-heading")).to_have_text("4. Result")
            if result["pronunciation_accuracy"] is None:
                expect(page.locator("[data-score='pronunciation_accuracy']")).to_contain_text(
                    "not measured"
                )
            assert serious_violations(page) == []
            page.screenshot(path=str(SCREENSHOT / "web_result_en.png"), full_page=True)
            assert errors == []
        finally:
            browser.close()


def test_web_page_records_the_microphone_as_wav_and_cancels(up: Up) -> None:
    executable = _chromium_or_skip()
    from playwright.sync_api import expect, sync_playwright

    link = up.link()
    api_url, token = link.split("/#token=")
    fake_microphone = [
        "--use-fake-ui-for-media-stream",  # allow the microphone without asking
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={SAMPLE}",  # the microphone says the sample
    ]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable, args=["--no-sandbox", *fake_microphone]
        )
        try:
            page = browser.new_page()
            page.goto(link)
            expect(page.locator("#app")).to_be_visible(timeout=30 * MS)
            page.locator("#ui-lang").select_option("en")
            page.locator("#session-title").fill("microphone")
            page.get_by_role("button", name="Create session").click()
            expect(page.locator("#session-select option:checked")).to_contain_text("microphone")

            record = page.locator("#record-button")
            expect(record).to_have_accessible_name("Start recording")
            record.focus()
            page.keyboard.press("Enter")  # by keyboard
            expect(record).to_have_attribute("aria-pressed", "true")
            # the page counts the seconds recorded: stop after three
            page.wait_for_function(
                """() => /Recording… ([3-9]|\\d\\d)/.test(
                    document.querySelector('#record-status').textContent)""",
                timeout=30 * MS,
            )
            page.get_by_role("button", name="Stop recording").click()
            expect(page.locator("#record-status")).to_contain_text("(WAV)", timeout=30 * MS)
            page.get_by_role("button", name="Upload and analyse").click()

            progress = page.locator("#progress-section")
            expect(progress).to_have_attribute("data-status", "processing", timeout=60 * MS)
            page.get_by_role("button", name="Cancel analysis").click()
            expect(progress).to_have_attribute("data-status", "cancelled", timeout=60 * MS)
            expect(page.locator("#progress-message")).to_have_text("The analysis was cancelled")
            expect(page.locator("#result-section")).to_be_hidden()

            session_id = page.locator("#session-select").input_value()
            session = httpx.get(
                f"{api_url}/api/v1/practice/sessions/{session_id}",
                headers={"Authorization": f"Bearer {token}"},
            ).json()
            [recording] = session["records"]
            # the API sniffed a WAV (the page encoded it; the browser itself records WebM)
            assert recording["audio_content_type"] == "audio/wav", recording
            assert recording["audio_duration_seconds"] >= 3, recording
        finally:
            browser.close()
