"""Durations come from decoded samples, never from a container's bitrate estimate (issue 15).

The files are in fixtures/cases/ (made by make_cases.sh, or received from outside; README.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from analyzer.decoding import decode_file
from analyzer.pipeline import analyse_file
from analyzer.schemas import AnalyzeParams
from tests.analyzer.conftest import FIXTURES

CASES = FIXTURES / "cases"

# file, container, true length (s) of what was encoded, FFmpeg's estimate is at least
LONG_ESTIMATES = [
    ("aac_leading_silence_false_truncated.aac", "aac", 9.1, 40.0),
    ("adts_8s_silence_24s_speech.aac", "aac", 32.0, 600.0),
    ("vbr_mp3_no_xing_4s_silence_24s_speech.mp3", "mp3", 28.0, 150.0),
]


def analyse(path: Path, container: str, max_seconds: float = 600.0) -> dict[str, Any]:
    return analyse_file(path, container, AnalyzeParams(language="en"), "test", max_seconds)


@pytest.mark.parametrize(("name", "container", "seconds", "estimate"), LONG_ESTIMATES)
def test_duration_is_decoded_not_estimated(
    name: str, container: str, seconds: float, estimate: float
) -> None:
    result = analyse(CASES / name, container)
    details = result["detailed_analysis"]
    audio = details["audio"]
    codes = [w["code"] for w in details["warnings"]]
    assert "truncated" not in codes and audio["truncated"] is False
    assert details["duration_seconds"] == pytest.approx(seconds, abs=0.1)
    assert audio["source_duration"] == pytest.approx(seconds, abs=0.1)
    assert audio["duration_from"] == "decoded_samples"
    # The container's figure is reported, and only as an estimate.
    assert audio["container_duration"]["kind"] == "estimate"
    assert audio["container_duration"]["seconds"] > estimate
    assert result["fluency_score"] is not None


def test_32_s_adts_file_is_within_the_600_s_limit() -> None:
    # FFmpeg estimates 930 s for this 32 s file: it was refused as too long before.
    audio = decode_file(CASES / "adts_8s_silence_24s_speech.aac", "aac", 600.0)
    assert audio.duration == pytest.approx(32.0, abs=0.1)


def test_the_limit_counts_decoded_samples() -> None:
    from analyzer.errors import AnalyzerError

    with pytest.raises(AnalyzerError) as caught:
        decode_file(CASES / "adts_8s_silence_24s_speech.aac", "aac", 20.0)
    assert caught.value.code == "too_long"
    assert "20.0 s long" in caught.value.message  # stopped at the limit, not 930 s


def test_exact_container_durations_still_flag_a_cut_file(tmp_path: Path) -> None:
    # speech_normal.mp3 has a Xing header: its frame count is an exact length.
    data = (FIXTURES / "speech_normal.mp3").read_bytes()
    path = tmp_path / "cut.mp3"
    path.write_bytes(data[: len(data) // 2])
    audio = decode_file(path, "mp3", 600.0)
    assert audio.container_duration is not None and audio.container_duration.kind == "exact"
    assert audio.truncated
