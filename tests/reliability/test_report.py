"""REPORT.md's generator: every scenario id is listed, run or not; a scenario's last figure
and its tests' last outcomes are shown with the run's date and scale."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability import report


def _row(rendered: str, label: str) -> str:
    [row] = [line for line in rendered.splitlines() if line.startswith(f"| {label} |")]
    return row


def test_every_scenario_is_listed_and_the_missing_ones_say_not_run() -> None:
    rendered = report.render([])
    for scenario in [f"R{n}" for n in range(1, 10)] + [f"S{n}" for n in range(1, 9)]:
        assert "| not run |" in _row(rendered, scenario)


def test_the_last_figure_and_outcome_of_each_part_are_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(report.FIGURES_ENV, str(tmp_path / "figures.jsonl"))
    report.record_figure("R6", "old figure", part="503", scale="1/10")
    report.record_figure("R6", "new | figure", part="503", scale="1/10")
    report.record_figure("R6", "refused figure", part="refused")
    report.record_figure("S3", "tokens refused", description="a stolen token")
    report._append({"kind": "outcome", "scenario": "R6", "test": "a", "outcome": "passed",
                    "seconds": 1.0, "date": "2026-01-01T00:00:00+00:00"})  # fmt: skip
    report._append({"kind": "outcome", "scenario": "R6", "test": "b", "outcome": "failed",
                    "seconds": 1.0, "date": "2026-01-01T00:00:00+00:00"})  # fmt: skip
    rendered = report.render(report.read_entries(report.figures_path()))

    row = _row(rendered, "R6 (503)")
    assert "new \\| figure" in row and "old figure" not in row
    assert "| failed |" in row and "| 1/10 |" in row
    assert "refused figure" in _row(rendered, "R6 (refused)")
    assert "a stolen token" in _row(rendered, "S3") and "tokens refused" in _row(rendered, "S3")
    assert "| not run |" in _row(rendered, "R1")
