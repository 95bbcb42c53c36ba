"""Pronunciation against a target text: the result shape and the dispatch by language.

Mandarin (zh-TW, zh-CN, zh, cmn): tones, analyzer.mandarin. English (en*): phones,
analyzer.english. Anything else, or no target text: null with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from analyzer.acoustics import VoiceAnalysis
from analyzer.schemas import AnalyzeParams
from analyzer.suggestions import Tip
from analyzer.syllables import Timing

NO_TEXT = (
    "No target text was given, so pronunciation accuracy cannot be measured; no value is invented."
)
UNSUPPORTED = (
    "Pronunciation against a target text is supported for Mandarin (zh-TW, zh-CN) and "
    "English only; no value is invented for {language!r}."
)
MANDARIN = ("zh", "zh-tw", "zh-cn", "zh-hant", "zh-hans", "cmn", "zh-hant-tw", "zh-hans-cn")


@dataclass
class Pronunciation:
    """pronunciation_accuracy (0..100 or None with reason) and its detail.

    details: method, totals and sources for detailed_analysis.pronunciation_accuracy;
    sentence_analyses: one row per syllable (Mandarin) or word (English);
    improvement_areas: words or syllables to practise, in the request's language;
    tips: practice suggestions (zh-TW and English) for analyzer.suggestions.
    """

    value: float | None
    reason: str | None
    details: dict[str, Any] = field(default_factory=dict)
    sentence_analyses: list[dict[str, Any]] = field(default_factory=list)
    improvement_areas: list[str] = field(default_factory=list)
    warnings: list[dict[str, Any]] = field(default_factory=list)
    tips: list[Tip] = field(default_factory=list)

    def entry(self) -> dict[str, Any]:
        """The detailed_analysis.pronunciation_accuracy object."""
        return {"value": self.value, "reason": self.reason, **self.details}


def language_of(language: str) -> str | None:
    """'zh' for Mandarin tags, 'en' for English tags, None otherwise."""
    tag = language.strip().lower().replace("_", "-")
    if tag in MANDARIN or tag.startswith(("zh-", "cmn-")):
        return "zh"
    if tag == "en" or tag.startswith("en-"):
        return "en"
    return None


def not_requested(params: AnalyzeParams) -> Pronunciation:
    """The null result when there is no target text or the language is not supported."""
    if not params.target_text or not params.target_text.strip():
        return Pronunciation(None, NO_TEXT)
    return Pronunciation(None, UNSUPPORTED.format(language=params.language))


def assess_pronunciation(
    samples: npt.NDArray[np.float32],
    rate: int,
    params: AnalyzeParams,
    timing: Timing,
    voice: VoiceAnalysis,
) -> Pronunciation:
    """Pronunciation of the recording against params.target_text.

    samples: mono float32 at `rate` Hz (16 kHz); timing and voice: the nuclei and the pitch
    track already measured. Never raises for a bad text: the reason is in the result.
    """
    kind = language_of(params.language)
    if not params.target_text or not params.target_text.strip() or kind is None:
        return not_requested(params)
    if kind == "zh":
        from analyzer.mandarin import assess_mandarin

        return assess_mandarin(params.target_text, timing, voice, params.language)
    from analyzer.english import assess_english

    return assess_english(samples, rate, params.target_text, timing)
