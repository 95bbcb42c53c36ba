"""English phones against a target text: goodness of pronunciation (after Witt & Young 2000).

1. The target text is aligned to the recording with pocketsphinx (CMU Sphinx), using only the
   US English acoustic model and dictionary that the `pocketsphinx` wheel ships (nothing is
   downloaded): a word-level pass, then a phone-level pass (`set_alignment`).
2. The same recording is decoded with a free phone loop (pocketsphinx allphone search with the
   wheel's phone language model, en-us-phone.lm.bin).
3. GOP of a phone = (log-likelihood of its frames under the forced alignment - log-likelihood
   of the same frames under the phone loop) / its number of frames, in nats per frame. Both
   decoders score every senone in every frame (compallsen), so both are normalised by the same
   best senone per frame and the difference is a log-likelihood ratio. A phone-loop segment
   that straddles a phone boundary is shared out by frames.
4. A word's score is the mean GOP of its phones; a word is acceptable when it is at least
   WORD_OK. pronunciation_accuracy = 100 x acceptable words / aligned words. Words below
   WORD_OK are listed, lowest first, in improvement_areas.

Limits: the wheel's model is trained on adult American English read speech; synthetic,
accented or children's speech scores lower overall; a word left out or replaced is forced onto
whatever audio is there, so its neighbours' scores can drop too; words missing from the
dictionary are skipped (listed in `not_in_dictionary`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from analyzer.pronunciation import Pronunciation
from analyzer.suggestions import Tip
from analyzer.syllables import Timing

FRAME_SECONDS = 0.01  # pocketsphinx's default frame rate: 100 frames/s
SCORE_SHIFT = 1024  # pocketsphinx keeps senone scores shifted right by 10 bits (SENSCR_SHIFT)
# A word is acceptable when the mean GOP of its phones is at least this (nats per frame). Set on
# the committed synthetic fixtures (docs/analysis.md): words read as written scored -6.0 to
# +2.1 (median -2.7); substituted words -13.0 to -3.8 (median -8.6); the unchanged words of
# the substituted readings -9.7 to +3.0 (median -4.9: a misaligned neighbour pays too). Witt
# & Young (2000) set per-phone thresholds from rated data, which this service does not have.
WORD_OK = -4.0
# Alignment is tried with pocketsphinx's defaults first (optional silences between words, so
# pauses are absorbed); when that fails (a reading with substituted words often does), again
# with a wider beam than the default 1e-48 and no optional fillers.
ALIGN_BEAM = 1e-60
WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")
SOURCES = [
    "Witt, S. M., & Young, S. J. (2000). Phone-level pronunciation scoring and assessment for "
    "interactive language learning. Speech Communication, 30(2-3), 95-108",
    "Huggins-Daines, D., et al. (2006). PocketSphinx: a free, real-time continuous speech "
    "recognition system for hand-held devices. ICASSP 2006 (the decoder; US English model and "
    "CMUdict from the pocketsphinx wheel)",
]
METHOD = (
    "English phones: forced alignment of the target text with pocketsphinx's bundled US English "
    "model, a free phone loop over the same audio, and per phone the log-likelihood ratio "
    "between the two per frame (goodness of pronunciation, Witt & Young 2000); a word is "
    f"acceptable when the mean of its phones is >= {WORD_OK} nats/frame."
)
COMBINATION = f"100 x words whose mean phone GOP is >= {WORD_OK} nats/frame / words aligned"
LIMITS = (
    "The bundled model is adult American English read speech; synthetic, accented and "
    "children's speech score lower; a left-out or replaced word pulls its neighbours down; "
    "words outside the bundled dictionary are skipped; the threshold was set on synthetic "
    "speech, not on rated patient recordings."
)


@dataclass
class _Decoders:
    align: list[Any]  # tried in turn until one aligns the text
    loop: Any


_DECODERS: _Decoders | None = None


def _decoders() -> _Decoders:
    """The two pocketsphinx decoders, made once per worker process (loading takes ~0.3 s)."""
    global _DECODERS
    if _DECODERS is None:
        import pocketsphinx

        model = pocketsphinx.get_model_path()
        common = {"samprate": 16000, "loglevel": "FATAL", "compallsen": True}
        align = [
            pocketsphinx.Decoder(**common),  # optional silences between words: pauses
            pocketsphinx.Decoder(beam=ALIGN_BEAM, fsgusefiller=False, **common),
        ]
        loop = pocketsphinx.Decoder(
            allphone=os.path.join(model, "en-us", "en-us-phone.lm.bin"), **common
        )
        _DECODERS = _Decoders(align, loop)
    return _DECODERS


def words_of(text: str) -> list[str]:
    """Lower-case words of the target text (letters and inner apostrophes)."""
    return WORD.findall(text.lower())


def _pcm(samples: npt.NDArray[np.float32]) -> bytes:
    return (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2").tobytes()


def _loop_scores(loop: Any, raw: bytes) -> npt.NDArray[np.float64]:
    """Per-frame log-likelihood (pocketsphinx log units) of the best phone-loop path."""
    loop.start_utt()
    loop.process_raw(raw, full_utt=True)
    loop.end_utt()
    logmath = loop.get_logmath()
    segments = [(s.start_frame, s.end_frame + 1, logmath.log(s.ascore)) for s in loop.seg()]
    frames = max((end for _, end, _ in segments), default=0)
    out = np.zeros(frames + 1, dtype=np.float64)
    for start, end, score in segments:
        out[start:end] = score / max(end - start, 1)
    return out


def _align(align: Any, raw: bytes, words: list[str]) -> Any:
    align.set_align_text(" ".join(words))
    align.start_utt()
    align.process_raw(raw, full_utt=True)
    align.end_utt()
    align.set_alignment()
    align.start_utt()
    align.process_raw(raw, full_utt=True)
    align.end_utt()
    return align.get_alignment()


def assess_english(
    samples: npt.NDArray[np.float32], rate: int, text: str, timing: Timing
) -> Pronunciation:
    """GOP per phone and word of an English reading of `text` (see the module docstring).

    samples: mono float32 at 16 kHz. Returns value 0..100 or None with the reason (no words,
    none in the dictionary, the recording could not be aligned to the text).
    """
    if rate != 16000:
        return Pronunciation(None, "English alignment needs 16 kHz audio")
    decoders = _decoders()
    words = words_of(text)
    known = [w for w in words if decoders.align[0].lookup_word(w) is not None]
    unknown = sorted({w for w in words if w not in known})
    if not known:
        return Pronunciation(None, "no word of the target text is in the pronunciation dictionary")
    raw = _pcm(samples)
    alignment = None
    for decoder in decoders.align:
        try:
            alignment = _align(decoder, raw, known)
            break
        except RuntimeError:
            continue
    if alignment is None:
        return Pronunciation(
            None,
            "the recording could not be aligned to the target text (it may be a different "
            "text, or too noisy); no value is invented",
        )
    loop = _loop_scores(decoders.loop, raw)
    logmath = decoders.loop.get_logmath()
    rows: list[dict[str, Any]] = []
    for word in alignment:
        if word.name.startswith("<") or word.name.startswith("["):
            continue
        phones = []
        for phone in word:
            end = phone.start + phone.duration
            den = float(loop[phone.start : min(end, len(loop))].sum())
            gop = logmath.log_to_ln(phone.score - den) * SCORE_SHIFT / max(phone.duration, 1)
            phones.append({
                "phone": phone.name,
                "start": round(phone.start * FRAME_SECONDS, 3),
                "end": round(end * FRAME_SECONDS, 3),
                "gop": round(gop, 3),
            })  # fmt: skip
        if not phones:
            continue
        mean = float(np.mean([p["gop"] for p in phones]))
        rows.append({
            "type": "word",
            "index": len(rows),
            "text": word.name.split("(")[0],
            "start": round(word.start * FRAME_SECONDS, 3),
            "end": round((word.start + word.duration) * FRAME_SECONDS, 3),
            "gop_mean": round(mean, 3),
            "gop_min": round(min(p["gop"] for p in phones), 3),
            "acceptable": mean >= WORD_OK,
            "phones": phones,
        })  # fmt: skip
    if not rows:
        return Pronunciation(None, "no word of the target text could be aligned")
    good = sum(1 for r in rows if r["acceptable"])
    value = round(100.0 * good / len(rows), 2)
    low = sorted((r for r in rows if not r["acceptable"]), key=lambda r: r["gop_mean"])
    low_words = list(dict.fromkeys(r["text"] for r in low))
    details = {
        "method": METHOD,
        "language": "en",
        "words_expected": len(words),
        "words_aligned": len(rows),
        "words_acceptable": good,
        "word_threshold_nats_per_frame": WORD_OK,
        "lowest_words": [r["text"] for r in sorted(rows, key=lambda r: r["gop_mean"])][:5],
        "not_in_dictionary": unknown,
        "combination": COMBINATION,
        "sources": SOURCES,
        "limits": LIMITS,
    }
    tips = [_tip(low_words)] if low_words else []
    return Pronunciation(value, None, details, rows, low_words, tips=tips)


def _tip(words: list[str]) -> Tip:
    shown = ", ".join(words[:5])
    return Tip(
        "發音",
        "pronunciation",
        f"有些字的發音和目標不太一樣，例如 {shown}；可以先聽示範，再一個字一個字慢慢練習。",
        f"Some words sounded different from the target, e.g. {shown}; listen to a model "
        "recording, then practise them slowly one at a time.",
    )
