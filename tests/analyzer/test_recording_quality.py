"""Recording quality is judged before the patient is (issue 15): clipping and friends."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from analyzer import quality
from analyzer.pipeline import analyse_file
from analyzer.schemas import AnalyzeParams
from tests.analyzer.conftest import FIXTURES

CASES = FIXTURES / "cases"
SCORES = ("overall_score", "fluency_score", "rhythm_score", "pronunciation_accuracy")


def analyse(path: Path, **params: Any) -> dict[str, Any]:
    return analyse_file(path, "wav", AnalyzeParams(**params), "test", 600.0)


def codes(result: dict[str, Any]) -> list[str]:
    return [w["code"] for w in result["detailed_analysis"]["warnings"]]


@pytest.fixture(scope="module")
def pair() -> tuple[dict[str, Any], dict[str, Any]]:
    clean = analyse(CASES / "clean_10s_reference.wav", language="en")
    clipped = analyse(CASES / "clipped_10s.wav", language="en")
    return clean, clipped


def test_clipped_recording_gets_a_clipped_warning_with_advice(
    pair: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    clean, clipped = pair
    assert "clipped" in codes(clipped) and "clipped" not in codes(clean)
    warning = next(w for w in clipped["detailed_analysis"]["warnings"] if w["code"] == "clipped")
    assert "microphone" in warning["message_en"] and "麥克風" in warning["message_zh_tw"]
    assert warning["value"] > 0.3  # 36 % of samples at full scale (34 % in runs of 3+)
    assert "microphone" in clipped["suggestions"]


def test_no_score_of_the_clipped_recording_drops_unnamed(
    pair: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    clean, clipped = pair
    named = set()
    for warning in clipped["detailed_analysis"]["warnings"]:
        named.update(warning.get("unreliable_scores", []))
    for score in SCORES:
        if clean[score] is None:
            continue
        if clipped[score] is None or clipped[score] < clean[score] - 5:
            assert score in named or score == "overall_score", score
    # The timing scores are null with the clipping as the reason, not a lower number.
    for score in ("fluency_score", "rhythm_score"):
        assert clipped[score] is None
        reason = clipped["detailed_analysis"]["scores"][score]["reason"]
        assert reason.startswith("clipped")
    assert clipped["overall_score"] is None


def test_clipping_survives_lossy_encoding() -> None:
    # MP3 rings around a clipped plateau: runs of full-scale samples break up (0.8 % of the
    # samples in runs of 3+ against 34 % in the WAV), but 8 % of the samples still reach it.
    clipped = analyse_file(CASES / "clipped_10s.mp3", "mp3", AnalyzeParams(language="en"), "t", 600)
    clean = analyse_file(
        CASES / "clean_10s_reference.mp3", "mp3", AnalyzeParams(language="en"), "t", 600
    )
    assert "clipped" in codes(clipped) and "clipped" not in codes(clean)
    assert clipped["fluency_score"] is None and clipped["rhythm_score"] is None
    assert clean["fluency_score"] is not None and clean["rhythm_score"] is not None


def test_clipping_below_the_unreliable_share_warns_but_keeps_scores(tmp_path: Path) -> None:
    samples, rate = sf.read(CASES / "clean_10s_reference.wav", dtype="float64")
    path = tmp_path / "mild.wav"
    sf.write(path, np.clip(samples * 10 ** (6 / 20), -1.0, 32767 / 32768), rate, "PCM_16")
    result = analyse(path, language="en")
    warning = next(w for w in result["detailed_analysis"]["warnings"] if w["code"] == "clipped")
    assert quality.CLIP_WARN_FRACTION <= warning["value"] < quality.CLIP_UNRELIABLE_FRACTION
    assert warning["unreliable_scores"] == []
    assert result["fluency_score"] is not None and result["rhythm_score"] is not None


def test_speech_peaking_at_full_scale_is_not_clipping() -> None:
    samples, _ = sf.read(FIXTURES / "speech_normal.wav", dtype="float32")
    normalised = samples / np.abs(samples).max()  # peaks touch full scale, nothing is cut
    assert quality.sample_stats(normalised[:, np.newaxis], 16000).clipped_fraction == 0.0
    cut = np.clip(normalised * 4, -1.0, 1.0)
    stats = quality.sample_stats(cut[:, np.newaxis], 16000)
    assert stats.clipped_fraction > quality.CLIP_UNRELIABLE_FRACTION and stats.clip_runs > 10


def test_quiet_recording_gets_low_level(tmp_path: Path) -> None:
    samples, rate = sf.read(FIXTURES / "speech_normal.wav", dtype="float64")
    path = tmp_path / "quiet.wav"
    sf.write(path, samples * 10 ** (-35 / 20), rate, subtype="FLOAT")
    result = analyse(path, language="en")
    assert "low_level" in codes(result)
    assert result["fluency_score"] is not None  # a quiet but clean recording is still scored


def test_dc_offset_is_reported_and_removed(tmp_path: Path) -> None:
    samples, rate = sf.read(FIXTURES / "speech_normal.wav", dtype="float64")
    path = tmp_path / "dc.wav"
    sf.write(path, samples * 0.5 + 0.1, rate, subtype="PCM_16")
    result = analyse(path, language="en")
    reference = analyse(FIXTURES / "speech_normal.wav", language="en")
    assert "dc_offset" in codes(result) and "dc_offset" not in codes(reference)
    got = result["detailed_analysis"]["measures"]["syllable_count"]["value"]
    assert abs(got - reference["detailed_analysis"]["measures"]["syllable_count"]["value"]) <= 1


def test_low_sample_rate_is_reported(tmp_path: Path) -> None:
    import parselmouth

    samples, rate = sf.read(FIXTURES / "speech_normal.wav", dtype="float64")
    low = parselmouth.Sound(samples, rate).resample(8000).values[0]
    path = tmp_path / "8k.wav"
    sf.write(path, low, 8000, subtype="PCM_16")
    result = analyse(path, language="en")
    assert "low_sample_rate" in codes(result)
    assert "low_sample_rate" not in codes(analyse(FIXTURES / "speech_normal.wav"))


def test_very_noisy_recording_nulls_timing_scores(tmp_path: Path) -> None:
    clean, rate = sf.read(FIXTURES / "speech_normal.wav", dtype="float64")
    noise = np.random.default_rng(5).normal(0.0, 0.2, len(clean))
    path = tmp_path / "noisy.wav"
    mixed = clean + noise
    sf.write(path, mixed / np.abs(mixed).max() * 0.9, rate, subtype="PCM_16")
    result = analyse(path, language="en")
    warning = next(w for w in result["detailed_analysis"]["warnings"] if w["code"] == "low_snr")
    assert warning["value"] < quality.UNRELIABLE_SNR_DB
    assert result["fluency_score"] is None and "fluency_score" in warning["unreliable_scores"]
