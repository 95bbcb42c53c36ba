"""Mandarin tones against a target text.

1. The text becomes syllables with citation tones (pypinyin), then third-tone sandhi and the
   sandhi of 一 and 不 are applied across each phrase (between punctuation): pypinyin's own
   tone_sandhi works only inside the words of its dictionary (很好 stays hen3 hao3 there).
2. The expected syllables are aligned to the detected syllable nuclei (analyzer.syllables,
   de Jong & Wempe 2009) by dynamic programming (Needleman & Wunsch 1970) that allows
   missing and extra syllables; the cost of a match is the distance between their relative
   positions in the speech plus how unlikely the expected tone is for that contour.
3. Each nucleus' F0 contour (Praat pitch, 10 ms) is normalised to the speaker: semitones
   around the speaker's median F0, divided by the speaker's F0 spread (Rose 1987's z-score
   normalisation on a semitone scale), fitted with a quadratic and read at its start, middle
   and end, and classified by the nearest tone template. Templates are Chao's tone letters
   (T1 55, T2 35, T3 21(4), T4 51; Chao 1968) mapped linearly onto the normalised scale.
   Neutral-tone syllables (pypinyin's 5) are aligned but not scored.

pronunciation_accuracy = 100 x (0.7 x tone accuracy + 0.3 x completeness), completeness =
max(0, 1 - (missing + extra) / expected syllables). Limits: tones only (not initials or
finals); no prosodic-word segmentation, so a 3-3-3 chain gets 2-2-3; Latin letters and digits
in the text are skipped; the templates describe citation-like read speech.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from analyzer.acoustics import VoiceAnalysis
from analyzer.pronunciation import Pronunciation
from analyzer.suggestions import Tip
from analyzer.syllables import Timing

HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")
NUMERALS = set("零一二三四五六七八九十百千萬万億亿兩两")
# Chao tone letters (1 low .. 5 high) at the start, middle and end of the syllable.
CHAO: dict[int, tuple[float, float, float]] = {
    1: (5, 5, 5),
    2: (3, 4, 5),
    3: (2, 1, 1),  # the half third: 21 before another syllable (Chao 1968)
    4: (5, 3, 1),
}
FULL_THIRD = (2, 1, 4)  # 214, only before a pause or at the end (Chao 1968)
# Normalised units per Chao step (5 -> +0.8, 1 -> -0.8): the middle of the range 0.35-0.45
# that gave the same results on the committed fixtures (docs/analysis.md).
CHAO_SCALE = 0.4
SOFTMAX_SD = 0.5  # spread of the template likelihoods (normalised units)
# Weight of the mean level against the shape (level drifts over a sentence); 0.5-0.7 gave the
# same results on the committed fixtures, 0.3 misread one syllable.
LEVEL_WEIGHT = 0.5
MIN_VOICED_FRAMES = 4
# The contour read for a syllable: from 50 ms before its nucleus (the intensity peak) to 200 ms
# after it (at most half-way to the neighbouring nuclei). The onset is mostly left out: the
# previous tone carries over into it (Xu 1997), and the tone's target is approached through
# the rhyme. On the committed fixtures accuracy is the same for 30-50 ms before and 180-220 ms
# after; 100 ms before let the carry-over turn level tones after a low tone into rises.
WINDOW_BEFORE = 0.05
WINDOW_AFTER = 0.20
GAP_COST = 1.0  # alignment: one missing or extra syllable
BAND_SLACK = 40  # alignment: syllables of drift allowed beyond the difference in counts
POSITION_WEIGHT = 1.0  # alignment: per syllable-slot of position difference
TONE_WEIGHT = 1.0  # alignment: 1 - P(expected tone)
WEIGHT_TONES = 0.7
WEIGHT_COMPLETENESS = 0.3
TONE_NAMES_ZH = {1: "第一聲", 2: "第二聲", 3: "第三聲", 4: "第四聲", 5: "輕聲"}
TONE_NAMES_EN = {1: "tone 1", 2: "tone 2", 3: "tone 3", 4: "tone 4", 5: "neutral tone"}
SOURCES = [
    "pypinyin (mozillazg/python-pinyin): characters to pinyin with citation tones",
    "Chao, Y. R. (1968). A Grammar of Spoken Chinese. University of California Press (tone "
    "letters; third-tone sandhi, 一/不 sandhi)",
    "Rose, P. (1987). Considerations in the normalisation of the fundamental frequency of "
    "linguistic tone. Speech Communication, 6(4), 343-352",
    "Needleman, S. B., & Wunsch, C. D. (1970). A general method applicable to the search for "
    "similarities in the amino acid sequence of two proteins. J. Mol. Biol., 48(3), 443-453",
    "Xu, Y. (1997). Contextual tonal variations in Mandarin. Journal of Phonetics, 25(1), "
    "61-83 (carry-over into the next syllable's onset)",
    "de Jong, N. H., & Wempe, T. (2009). Praat script to detect syllable nuclei (the nuclei)",
]
METHOD = (
    "Mandarin tones: target text to toned syllables (pypinyin + sandhi), aligned to the "
    "detected syllable nuclei by dynamic programming allowing missing and extra syllables; "
    "each nucleus' F0 contour, in semitones around the speaker's median divided by the "
    "speaker's F0 spread, is classified by the nearest Chao tone template."
)
COMBINATION = (
    f"100 x ({WEIGHT_TONES} x tone_accuracy + {WEIGHT_COMPLETENESS} x completeness); "
    "tone_accuracy = correct / scored syllables (neutral tones not scored), completeness = "
    "max(0, 1 - (missing + extra) / expected syllables)"
)
LIMITS = (
    "Tones only, not initials or finals; templates describe read, citation-like speech and "
    "are checked on synthetic speech (eSpeak NG), not on clinical recordings; a syllable the "
    "nucleus detector merges with its neighbour counts as missing."
)


@dataclass
class Syllable:
    """One expected syllable: its character, pinyin without tone, citation and target tone."""

    char: str
    pinyin: str
    citation_tone: int
    tone: int
    phrase: int


def _split_tone(item: str) -> tuple[str, int]:
    if item and item[-1].isdigit():
        return item[:-1], int(item[-1])
    return item, 5


def _sandhi(phrase: list[Syllable]) -> None:
    """Third-tone, 一 and 不 sandhi inside one phrase (in place), on citation tones."""
    for i, syl in enumerate(phrase):
        nxt = phrase[i + 1] if i + 1 < len(phrase) else None
        prev = phrase[i - 1] if i > 0 else None
        if syl.char == "一":
            counting = (prev is not None and (prev.char in NUMERALS or prev.char == "第")) or (
                nxt is not None and nxt.char in NUMERALS
            )
            if nxt is not None and not counting and nxt.citation_tone != 5:
                syl.tone = 2 if nxt.citation_tone == 4 else 4
        elif syl.char == "不":
            if nxt is not None:
                syl.tone = 2 if nxt.citation_tone == 4 else 4
        elif syl.citation_tone == 3 and nxt is not None and nxt.citation_tone == 3:
            syl.tone = 2


def syllables_of(text: str) -> list[Syllable]:
    """Expected syllables of a Chinese text (traditional or simplified), sandhi applied.

    Characters outside the CJK ideograph blocks (punctuation, Latin, digits) are skipped and
    separate phrases. Returns [] when the text has no Chinese characters.
    """
    from pypinyin import Style, lazy_pinyin

    out: list[Syllable] = []
    for phrase_index, match in enumerate(HAN.finditer(text)):
        run = match.group()
        items = lazy_pinyin(run, style=Style.TONE3, neutral_tone_with_five=True)
        phrase = []
        for char, item in zip(run, items, strict=False):
            base, tone = _split_tone(item)
            phrase.append(Syllable(char, base, tone, tone, phrase_index))
        _sandhi(phrase)
        out.extend(phrase)
    return out


@dataclass
class Contour:
    """A nucleus' normalised F0 contour: start, middle, end (normalised units) or None."""

    time: float
    points: tuple[float, float, float] | None
    probabilities: dict[int, float]


def _scaled(shape: tuple[float, float, float]) -> npt.NDArray[np.float64]:
    return np.array([(v - 3) * CHAO_SCALE for v in shape])


def _distance(points: npt.NDArray[np.float64], template: npt.NDArray[np.float64]) -> float:
    """Squared distance of shapes (each minus its mean) plus LEVEL_WEIGHT x that of levels."""
    shape = (points - points.mean()) - (template - template.mean())
    return float(np.mean(shape**2)) + LEVEL_WEIGHT * float(points.mean() - template.mean()) ** 2


def _probabilities(points: npt.NDArray[np.float64], before_pause: bool) -> dict[int, float]:
    """P(tone | contour) from the distance to each template (a softmax of -d^2/2sd^2).

    Before a pause the third tone may also be the full 214 (a fall-rise).
    """
    logits = {}
    for tone, shape in CHAO.items():
        d2 = _distance(points, _scaled(shape))
        if tone == 3 and before_pause:
            d2 = min(d2, _distance(points, _scaled(FULL_THIRD)))
        logits[tone] = -d2 / (2 * SOFTMAX_SD**2)
    top = max(logits.values())
    weights = {t: math.exp(v - top) for t, v in logits.items()}
    total = sum(weights.values())
    return {t: w / total for t, w in weights.items()}


def _before_pause(t: float, timing: Timing) -> bool:
    """The nucleus is the last one of its sounding stretch."""
    for start, end in timing.sounding:
        if start <= t <= end:
            return not any(t < u <= end for u in timing.nuclei)
    return True


def contours(timing: Timing, voice: VoiceAnalysis) -> list[Contour]:
    """The normalised F0 contour around each syllable nucleus (see the module docstring)."""
    times = np.asarray(voice.pitch_times, dtype=np.float64)
    f0 = np.asarray(voice.pitch_values, dtype=np.float64)
    voiced = f0 > 0
    nuclei = timing.nuclei
    if np.count_nonzero(voiced) < MIN_VOICED_FRAMES:
        return [Contour(t, None, {}) for t in nuclei]
    semitones = np.zeros_like(f0)
    semitones[voiced] = 12.0 * np.log2(f0[voiced] / np.median(f0[voiced]))
    p10, p90 = np.quantile(semitones[voiced], [0.1, 0.9])
    spread = max(float(p90 - p10) / 2.563, 0.5)  # an SD robust to octave errors; floor 0.5 st
    out = []
    for i, t in enumerate(nuclei):
        before = (t - nuclei[i - 1]) / 2 if i > 0 else WINDOW_BEFORE
        after = (nuclei[i + 1] - t) / 2 if i + 1 < len(nuclei) else WINDOW_AFTER
        lo, hi = t - min(before, WINDOW_BEFORE), t + min(after, WINDOW_AFTER)
        mask = voiced & (times >= lo) & (times <= hi)
        if np.count_nonzero(mask) < MIN_VOICED_FRAMES:
            out.append(Contour(t, None, {}))
            continue
        x = (times[mask] - times[mask][0]) / max(float(np.ptp(times[mask])), 1e-6)
        z = semitones[mask] / spread
        coef = np.polyfit(x, z, 2)
        points = np.polyval(coef, np.array([0.0, 0.5, 1.0]))
        probs = _probabilities(points, _before_pause(t, timing))
        out.append(Contour(t, (float(points[0]), float(points[1]), float(points[2])), probs))
    return out


def _speech_positions(timing: Timing) -> list[float]:
    """Each nucleus' position in the speech, 0..1, with the pauses taken out."""
    spans = timing.sounding or [(0.0, timing.duration)]
    total = sum(e - s for s, e in spans) or 1.0
    out = []
    for t in timing.nuclei:
        before = sum(min(e, t) - s for s, e in spans if s < t)
        out.append(min(1.0, max(0.0, before / total)))
    return out


def align(expected: list[Syllable], found: list[Contour], positions: list[float]) -> list[tuple[
    int | None, int | None
]]:  # fmt: skip
    """Needleman-Wunsch alignment: pairs (expected index | None, nucleus index | None).

    Cells further than |n - m| + BAND_SLACK from the diagonal are not considered (a band keeps a
    long recording linear; the first row and column stay open for gaps at either end).
    """
    n, m = len(expected), len(found)
    cost = [[math.inf] * (m + 1) for _ in range(n + 1)]
    move = [[0] * (m + 1) for _ in range(n + 1)]  # 0 match, 1 missing, 2 extra
    cost[0] = [i * GAP_COST for i in range(m + 1)]
    move[0] = [2] * (m + 1)
    for k in range(n + 1):
        cost[k][0], move[k][0] = k * GAP_COST, 1
    band = abs(n - m) + BAND_SLACK  # cells either side of the diagonal: linear in length
    for k in range(1, n + 1):
        want = (k - 0.5) / n
        syl = expected[k - 1]
        centre = k * m / n
        for i in range(max(1, int(centre - band)), min(m, int(centre + band) + 1) + 1):
            contour = found[i - 1]
            p_tone = 0.5 if syl.tone == 5 or not contour.probabilities else (
                contour.probabilities.get(syl.tone, 0.0))  # fmt: skip
            match = POSITION_WEIGHT * abs(want - positions[i - 1]) * n + TONE_WEIGHT * (
                1.0 - p_tone
            )
            diagonal = cost[k - 1][i - 1] + match
            missing = cost[k - 1][i] + GAP_COST
            extra = cost[k][i - 1] + GAP_COST
            if diagonal <= missing and diagonal <= extra:
                cost[k][i], move[k][i] = diagonal, 0
            elif missing <= extra:
                cost[k][i], move[k][i] = missing, 1
            else:
                cost[k][i], move[k][i] = extra, 2
    pairs: list[tuple[int | None, int | None]] = []
    k, i = n, m
    while k > 0 or i > 0:
        step = move[k][i]
        if step == 0:
            pairs.append((k - 1, i - 1))
            k, i = k - 1, i - 1
        elif step == 1:
            pairs.append((k - 1, None))
            k -= 1
        else:
            pairs.append((None, i - 1))
            i -= 1
    return pairs[::-1]


def _row(syl: Syllable | None, contour: Contour | None, index: int) -> dict[str, Any]:
    realised = None
    confidence = None
    if contour is not None and contour.probabilities:
        realised = max(contour.probabilities, key=lambda t: contour.probabilities[t])
        confidence = round(contour.probabilities[realised], 3)
    status = "matched" if syl and contour else ("missing" if syl else "extra")
    scored = syl is not None and contour is not None and syl.tone != 5
    return {
        "type": "syllable",
        "index": index,
        "text": syl.char if syl else None,
        "pinyin": f"{syl.pinyin}{syl.tone}" if syl else None,
        "citation_tone": syl.citation_tone if syl else None,
        "expected_tone": syl.tone if syl else None,
        "realised_tone": realised,
        "confidence": confidence,
        "time": round(contour.time, 3) if contour else None,
        "contour": [round(v, 3) for v in contour.points] if contour and contour.points else None,
        "status": status,
        "scored": scored,
        "correct": (realised == syl.tone) if scored and syl else None,
    }


def assess_mandarin(
    text: str, timing: Timing, voice: VoiceAnalysis, language: str
) -> Pronunciation:
    """Tone accuracy and completeness of a Mandarin reading of `text` (see module docstring).

    Returns value 0..100 (2 decimals) or None with the reason (no Chinese characters in the
    text, no syllable nuclei, no toned syllable that could be measured).
    """
    expected = syllables_of(text)
    if not expected:
        return Pronunciation(None, "the target text has no Chinese characters to align")
    if not timing.nuclei:
        return Pronunciation(None, "no syllable nuclei were detected to align the text to")
    found = contours(timing, voice)
    pairs = align(expected, found, _speech_positions(timing))
    rows = [
        _row(expected[k] if k is not None else None, found[i] if i is not None else None, n)
        for n, (k, i) in enumerate(pairs)
    ]
    scored = [r for r in rows if r["scored"]]
    missing = [r for r in rows if r["status"] == "missing"]
    extra = [r for r in rows if r["status"] == "extra"]
    if not scored:
        return Pronunciation(None, "no toned syllable could be measured", sentence_analyses=rows)
    correct = sum(1 for r in scored if r["correct"])
    tone_accuracy = correct / len(scored)
    completeness = max(0.0, 1.0 - (len(missing) + len(extra)) / len(expected))
    value = round(100.0 * (WEIGHT_TONES * tone_accuracy + WEIGHT_COMPLETENESS * completeness), 2)
    details = {
        "method": METHOD,
        "language": "cmn",
        "tone_accuracy": round(tone_accuracy, 4),
        "completeness": round(completeness, 4),
        "syllables_expected": len(expected),
        "syllables_scored": len(scored),
        "syllables_correct": correct,
        "syllables_missing": len(missing),
        "syllables_extra": len(extra),
        "missing": [{"text": r["text"], "pinyin": r["pinyin"]} for r in missing],
        "combination": COMBINATION,
        "sources": SOURCES,
        "limits": LIMITS,
    }
    wrong = [r for r in scored if not r["correct"]]
    tips = _tips(wrong, missing)
    english = language.lower().startswith("en")
    areas = [t.area_en if english else t.area_zh for t in tips]
    return Pronunciation(value, None, details, rows, list(dict.fromkeys(areas)), tips=tips)


def _tips(wrong: list[dict[str, Any]], missing: list[dict[str, Any]]) -> list[Tip]:
    tips = []
    if wrong:
        shown = wrong[:5]
        zh = "、".join(f"「{r['text']}」({TONE_NAMES_ZH[r['expected_tone']]})" for r in shown)
        en = ", ".join(f"{r['text']} {r['pinyin']} ({TONE_NAMES_EN[r['expected_tone']]})"
                       for r in shown)  # fmt: skip
        tips.append(Tip(
            "聲調", "tones",
            f"有些字的音高走向和目標聲調不太一樣，例如 {zh}；"
            "可以跟著示範錄音慢慢唸，注意每個字的聲調。",
            f"The pitch movement of some syllables differed from the target tone, e.g. {en}; "
            "read along slowly with a model recording, paying attention to each tone.",
        ))  # fmt: skip
    if missing:
        zh = "、".join(f"「{r['text']}」" for r in missing[:5])
        en = ", ".join(f"{r['text']} ({r['pinyin']})" for r in missing[:5])
        tips.append(Tip(
            "完整度", "completeness",
            f"有些字好像沒有唸到，例如 {zh}；可以先慢慢把整句唸完整。",
            f"Some syllables seemed to be left out, e.g. {en}; first read the whole sentence "
            "slowly and completely.",
        ))  # fmt: skip
    return tips
