"""Acoustic measures and scores, run through the pipeline in-process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from analyzer.pipeline import analyse_file
from analyzer.schemas import AnalyzeParams
from tests.analyzer.conftest import FIXTURES, TRUE_SYLLABLES
from tests.analyzer.vowels import write_vowel


def analyse(path: Path, container: str = "wav", **params: Any) -> dict[str, Any]:
    return analyse_file(path, container, AnalyzeParams(**params), "test", 600.0)


def measure(result: dict[str, Any], name: str) -> Any:
    return result["detailed_analysis"]["measures"][name]["value"]


@pytest.fixture(scope="module")
def speech() -> dict[str, dict[str, Any]]:
    names = ("normal", "fast", "slow_pauses")
    return {n: analyse(FIXTURES / f"speech_{n}.wav", language="en") for n in names}


@pytest.mark.parametrize("name", ["normal", "fast", "slow_pauses"])
def test_syllable_count_within_ten_percent(speech: dict[str, dict[str, Any]], name: str) -> None:
    count = measure(speech[name], "syllable_count")
    assert abs(count - TRUE_SYLLABLES) <= 0.1 * TRUE_SYLLABLES, count
    duration = speech[name]["detailed_analysis"]["duration_seconds"]
    assert measure(speech[name], "speech_rate") == pytest.approx(count / duration, rel=1e-3)


def test_fast_speech_has_higher_rate(speech: dict[str, dict[str, Any]]) -> None:
    assert measure(speech["fast"], "speech_rate") > 1.3 * measure(speech["normal"], "speech_rate")


def test_slow_with_pauses_scores_much_lower_fluency(speech: dict[str, dict[str, Any]]) -> None:
    normal, slow = speech["normal"], speech["slow_pauses"]
    assert normal["fluency_score"] - slow["fluency_score"] >= 25
    assert measure(slow, "pause_count") > measure(normal, "pause_count")
    assert measure(slow, "pause_ratio") > measure(normal, "pause_ratio")
    assert slow["improvement_areas"], "rules should name areas to practise"


def test_result_has_exactly_the_stored_fields(speech: dict[str, dict[str, Any]]) -> None:
    result = speech["normal"]
    assert set(result) == {
        "overall_score", "pronunciation_accuracy", "fluency_score", "rhythm_score",
        "detailed_analysis", "sentence_analyses", "suggestions", "improvement_areas",
        "analysis_model_version", "processing_time_seconds",
    }  # fmt: skip
    for key in ("overall_score", "fluency_score", "rhythm_score"):
        assert 0 <= result[key] <= 100 and round(result[key], 2) == result[key]
    present = [result["fluency_score"], result["rhythm_score"]]
    assert result["overall_score"] == pytest.approx(sum(present) / len(present), abs=0.01)
    for name in ("fluency_score", "rhythm_score"):
        score = result["detailed_analysis"]["scores"][name]
        assert score["basis"] and score["components"]


def test_pronunciation_accuracy_is_null_with_a_reason(speech: dict[str, dict[str, Any]]) -> None:
    result = speech["normal"]
    assert result["pronunciation_accuracy"] is None
    reason = result["detailed_analysis"]["pronunciation_accuracy"]["reason"]
    assert "No target text" in reason


def test_connected_speech_voice_measures_are_not_for_norms(
    speech: dict[str, dict[str, Any]],
) -> None:
    details = speech["normal"]["detailed_analysis"]
    assert details["task_detected"] == "connected_speech"
    jitter = details["measures"]["jitter_local_percent"]
    assert jitter["valid_for_norms"] is False and "norms" in jitter["note"]
    codes = [w["code"] for w in details["warnings"]]
    assert "connected_speech_voice_measures" in codes and "low_snr" not in codes


def test_sentences_are_split_at_long_pauses(speech: dict[str, dict[str, Any]]) -> None:
    sentences = speech["slow_pauses"]["sentence_analyses"]
    assert len(sentences) >= 2
    assert sum(s["syllables"] for s in sentences) == measure(
        speech["slow_pauses"], "syllable_count"
    )
    assert all(s["end"] > s["start"] and s["mean_f0_hz"] for s in sentences)


def test_jittered_vowel_has_higher_jitter(tmp_path: Path) -> None:
    clean = analyse(write_vowel(tmp_path / "clean.wav"))
    shaky = analyse(write_vowel(tmp_path / "jitter.wav", jitter=0.02))
    for result in (clean, shaky):
        details = result["detailed_analysis"]
        assert details["task_detected"] == "sustained_vowel"
        assert details["measures"]["jitter_local_percent"]["valid_for_norms"] is True
        assert result["fluency_score"] is None and result["overall_score"] is None
    assert measure(shaky, "jitter_local_percent") > 2 * measure(clean, "jitter_local_percent")
    assert measure(clean, "jitter_local_percent") < 1.04


def test_noise_lowers_hnr(tmp_path: Path) -> None:
    clean = analyse(write_vowel(tmp_path / "clean.wav"))
    noisy = analyse(write_vowel(tmp_path / "noisy.wav", snr_db=10.0))
    assert measure(noisy, "hnr_db") < measure(clean, "hnr_db") - 5
    assert measure(noisy, "cpps_db") < measure(clean, "cpps_db")


def test_suggestions_follow_language(tmp_path: Path) -> None:
    path = FIXTURES / "speech_slow_pauses.wav"
    zh = analyse(path)
    en = analyse(path, language="en-US")
    none = analyse(path, include_suggestions=False)
    assert any("\u4e00" <= ch <= "\u9fff" for ch in zh["suggestions"])
    assert en["suggestions"].isascii() and "diagnosis" in en["suggestions"]
    assert none["suggestions"] is None and none["improvement_areas"] == []


def test_child_bands_are_more_lenient_on_rate() -> None:
    path = FIXTURES / "speech_slow_pauses.wav"
    adult = analyse(path, speaker_age_group="adult")
    child = analyse(path, speaker_age_group="child")
    assert child["fluency_score"] > adult["fluency_score"]
    assert child["detailed_analysis"]["scores"]["fluency_score"]["bands"] == "child"


def test_noisy_speech_gets_low_snr_warning(tmp_path: Path) -> None:
    clean, rate = sf.read(FIXTURES / "speech_normal.wav", dtype="float64")
    active = np.sqrt(np.mean(clean[np.abs(clean) > 0.01] ** 2))
    noisy = clean + np.random.default_rng(3).normal(0.0, active / 10 ** (5 / 20), len(clean))
    path = tmp_path / "noisy.wav"
    sf.write(path, noisy / np.abs(noisy).max() * 0.9, rate, subtype="PCM_16")
    result = analyse(path)
    codes = [w["code"] for w in result["detailed_analysis"]["warnings"]]
    assert "low_snr" in codes
    assert measure(result, "snr_db") < 15
