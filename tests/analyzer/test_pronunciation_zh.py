"""Mandarin pronunciation against a target text: tones and completeness (issue 15).

Fixtures: fixtures/pronunciation/ (espeak-ng cmn-latn-pinyin; make_pronunciation.py).
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from analyzer.mandarin import Contour, Syllable, align, syllables_of
from analyzer.pipeline import analyse_file
from analyzer.schemas import AnalyzeParams
from tests.analyzer.conftest import FIXTURES
from tests.analyzer.fixtures.pronunciation.make_pronunciation import TARGETS

HERE = FIXTURES / "pronunciation"
SENTENCES = ("zh1", "zh2", "zh3")


def analyse(name: str, language: str = "zh-TW") -> dict[str, Any]:
    params = AnalyzeParams(language=language, target_text=TARGETS[name.split("_")[0]])
    return analyse_file(HERE / f"{name}.wav", "wav", params, "test", 600.0)


@pytest.fixture(scope="module")
def results() -> dict[str, dict[str, Any]]:
    names = [f"{s}_{kind}" for s in SENTENCES for kind in ("correct", "changed")]
    return {n: analyse(n) for n in [*names, "zh1_missing"]}


def pron(result: dict[str, Any]) -> dict[str, Any]:
    details: dict[str, Any] = result["detailed_analysis"]["pronunciation_accuracy"]
    return details


def tones(text: str) -> str:
    return " ".join(f"{s.pinyin}{s.tone}" for s in syllables_of(text))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("你好", "ni2 hao3"),
        ("很好", "hen2 hao3"),  # across words: pypinyin's own sandhi leaves hen3 hao3
        ("我想買", "wo2 xiang2 mai3"),
        ("一本書", "yi4 ben3 shu1"),
        ("一個", "yi2 ge4"),
        ("第一", "di4 yi1"),
        ("十一", "shi2 yi1"),
        ("不對", "bu2 dui4"),
        ("不好", "bu4 hao3"),
        ("今天天氣很好，我們", "jin1 tian1 tian1 qi4 hen2 hao3 wo3 men5"),
        ("好，好", "hao3 hao3"),  # no sandhi across punctuation
    ],
)
def test_target_text_to_toned_syllables(text: str, expected: str) -> None:
    assert tones(text) == expected


def test_simplified_and_traditional_agree() -> None:
    assert tones("老师说明天不要迟到") == tones("老師說明天不要遲到")


@pytest.mark.parametrize("sentence", SENTENCES)
def test_correct_tones_are_recognised(results: dict[str, dict[str, Any]], sentence: str) -> None:
    details = pron(results[f"{sentence}_correct"])
    assert details["tone_accuracy"] >= 0.85, details
    assert details["syllables_missing"] == 0 and details["syllables_extra"] == 0


@pytest.mark.parametrize("sentence", SENTENCES)
def test_changed_tones_are_caught(results: dict[str, dict[str, Any]], sentence: str) -> None:
    assert pron(results[f"{sentence}_changed"])["tone_accuracy"] <= 0.5


@pytest.mark.parametrize("sentence", SENTENCES)
def test_accuracy_separates_correct_from_changed(
    results: dict[str, dict[str, Any]], sentence: str
) -> None:
    correct = results[f"{sentence}_correct"]["pronunciation_accuracy"]
    changed = results[f"{sentence}_changed"]["pronunciation_accuracy"]
    assert correct - changed >= 25, (correct, changed)


def test_left_out_syllable_is_missing(results: dict[str, dict[str, Any]]) -> None:
    details = pron(results["zh1_missing"])
    assert details["syllables_missing"] == 1 and details["syllables_extra"] == 0
    assert details["missing"] == [{"text": "氣", "pinyin": "qi4"}]
    assert details["tone_accuracy"] >= 0.85  # the rest still aligned to the right syllables
    assert (
        results["zh1_missing"]["pronunciation_accuracy"]
        < results["zh1_correct"]["pronunciation_accuracy"]
    )
    rows = [r for r in results["zh1_missing"]["sentence_analyses"] if r.get("type") == "syllable"]
    assert [r["text"] for r in rows if r["status"] == "missing"] == ["氣"]


def test_per_syllable_detail(results: dict[str, dict[str, Any]]) -> None:
    result = results["zh1_changed"]
    rows = [r for r in result["sentence_analyses"] if r.get("type") == "syllable"]
    assert [r["text"] for r in rows] == list("今天天氣很好我們一起去公園散步")
    for row in rows:
        assert row["expected_tone"] in (1, 2, 3, 4, 5)
        assert row["realised_tone"] in (1, 2, 3, 4) and 0 < row["confidence"] <= 1
    first = rows[0]
    assert first["expected_tone"] == 1 and first["realised_tone"] != 1  # jin3 was spoken
    assert "聲調" in result["improvement_areas"]
    assert "聲調" in result["suggestions"] and "診斷" in result["suggestions"]


def test_english_speech_with_a_chinese_text_is_still_scored_not_crashing() -> None:
    result = analyse_file(
        FIXTURES / "speech_normal.wav", "wav",
        AnalyzeParams(language="zh-CN", target_text="今天天氣很好"), "test", 600.0,
    )  # fmt: skip
    value = result["pronunciation_accuracy"]
    assert value is None or 0 <= value <= 100


def test_text_without_chinese_characters_has_a_reason() -> None:
    result = analyse_file(
        HERE / "zh1_correct.wav", "wav", AnalyzeParams(language="zh-TW", target_text="abc"),
        "test", 600.0,
    )  # fmt: skip
    assert result["pronunciation_accuracy"] is None
    assert "no Chinese characters" in pron(result)["reason"]


async def test_service_scores_tones_over_http(api: httpx.AsyncClient) -> None:
    response = await api.post(
        "/v1/analyze",
        content=(HERE / "zh2_correct.wav").read_bytes(),
        headers={"content-type": "audio/wav"},
        params={"language": "zh-TW", "target_text": TARGETS["zh2"]},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["pronunciation_accuracy"] is not None and body["pronunciation_accuracy"] >= 85
    assert body["overall_score"] is not None


async def test_info_documents_pronunciation_and_quality(api: httpx.AsyncClient) -> None:
    info = (await api.get("/v1/info")).json()
    pron = info["scores"]["pronunciation_accuracy"]
    for language in ("mandarin", "english"):
        entry = pron[language]
        assert entry["method"] and entry["combination"] and entry["limits"] and entry["sources"]
    assert any("Witt" in s for s in pron["english"]["sources"])
    assert any("pypinyin" in s for s in pron["mandarin"]["sources"])
    clipped = info["recording_quality"]["thresholds"]["clipped"]
    assert clipped["min_run_samples"] == 3 and clipped["source"]
    assert "decoded sample count" in info["durations"]


def _contour(t: float, tone: int) -> Contour:
    probabilities = {k: (0.85 if k == tone else 0.05) for k in (1, 2, 3, 4)}
    return Contour(t, (0.0, 0.0, 0.0), probabilities)


@pytest.mark.parametrize("length", [12, 1500])
@pytest.mark.parametrize("change", ["missing", "extra"])
def test_alignment_finds_a_missing_or_an_extra_syllable(length: int, change: str) -> None:
    tones = [1 + (i * 7) % 4 for i in range(length)]
    expected = [Syllable("字", "zi", t, t, 0) for t in tones]
    where = length // 3
    spoken = list(tones)
    if change == "missing":
        del spoken[where]  # left out of the reading
    else:
        spoken.insert(where, 1 + (tones[where] + 1) % 4)  # an extra syllable
    found = [_contour(0.25 * i, t) for i, t in enumerate(spoken)]
    positions = [(i + 0.5) / len(found) for i in range(len(found))]
    pairs = align(expected, found, positions)
    missing = [k for k, i in pairs if i is None]
    extra = [i for k, i in pairs if k is None]
    assert (missing, extra) == (([where], []) if change == "missing" else ([], [where]))
