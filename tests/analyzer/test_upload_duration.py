"""The upload path's audio_duration_seconds comes from decoded samples too (issue 15)."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.audio_types import AAC, M4A, MP3, WAV, AudioType, decoded_duration, sniff_audio_type
from tests.analyzer.conftest import FIXTURES

CASES = FIXTURES / "cases"


@pytest.mark.parametrize(
    ("path", "audio_type", "seconds"),
    [
        (CASES / "aac_leading_silence_false_truncated.aac", AAC, 9.1),
        (CASES / "adts_8s_silence_24s_speech.aac", AAC, 32.0),
        (CASES / "vbr_mp3_no_xing_4s_silence_24s_speech.mp3", MP3, 28.0),
        (FIXTURES / "speech_normal.m4a", M4A, 6.9),  # m4a had no duration before
        (FIXTURES / "speech_normal.wav", WAV, 6.8),
    ],
)
def test_upload_duration_is_decoded(path: Path, audio_type: AudioType, seconds: float) -> None:
    assert sniff_audio_type(path.read_bytes()[:16]) == audio_type
    duration = decoded_duration(str(path), audio_type)
    assert duration == pytest.approx(seconds, abs=0.1)


def test_undecodable_upload_has_no_duration(tmp_path: Path) -> None:
    path = tmp_path / "junk.aac"
    path.write_bytes(b"\xff\xf1" + bytes(range(256)) * 8)
    assert decoded_duration(str(path), AAC) is None
