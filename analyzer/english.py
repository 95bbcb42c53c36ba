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
   WORD_OK. pronunciation_accuracy = 100 x acceptable words / words of the text in the
   dictionary (a word the alignment left out counts as not acceptable). Words below WORD_OK
   are listed, lowest first, then the left-out ones, in improvement_areas.

Limits: the wheel's model is trained on adult American English read speech; synthetic,
accented or children's speech scores lower overall; a word left out or replaced is forced onto
whatever audio is there, so its neighbours' scores can drop too; words missing from the
dictionary are skipped (listed in `not_in_dictionary`).
"""

from __future__ import annotations

import os
import re
from typing import Any

import numpy as np
import numpy.typing as npt

from analyzer.pronunciation import Pronunciation
from analyzer.suggestions import Tip
from analyzer.syllables import Timing

FRAME_SECONDS = 0.01  # pocketsphinx's default frame rate: 100 frames/s
SCORE_SHIFT = 1024  # pocketsphinx keeps senone scores shifted right by 10 bits (SENSCR_SHIFT)
# A word is acceptable when the mean GOP of its phones is at least this (nats per frame). Set on
# the committed synthetic fixtures (docs/analysis.md): words read as written scored -5.8 to
# +2.5 (median -1.7); substituted words -13.0 to -3.8 (median -8.6); the unchanged words of
# the substituted readings -9.6 to +3.0 (median -4.9: a misaligned neighbour pays too). Witt
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


# (beam, fsgusefiller) of each alignment try: pocketsphinx's defaults, then the fallback.
ALIGN_TRIES = ((1e-48, True), (ALIGN_BEAM, False))
LOOP = "phone_loop"

_DECODER: Any = None


def _decoder() -> Any:
    """One pocketsphinx decoder per worker process, with the phone loop as a second search.

    Loading the acoustic model and dictionary takes about 0.1 s and 10 MB, so it is done once;
    the alignment searches are made per request from its config. pocketsphinx's default n-gram
    model is not loaded (lm=None): neither search uses it, and it cost 0.2 s and 60 MB more.
    """
    global _DECODER
    if _DECODER is None:
        import pocketsphinx

        model = pocketsphinx.get_model_path()
        decoder = pocketsphinx.Decoder(samprate=16000, loglevel="FATAL", lm=None, compallsen=True)
        decoder.add_allphone_file(LOOP, os.path.join(model, "en-us", "en-us-phone.lm.bin"))
        _DECODER = decoder
    return _DECODER


def words_of(text: str) -> list[str]:
    """Lower-case words of the target text (letters and inner apostrophes)."""
    return WORD.findall(text.lower())


def _pcm(samples: npt.NDArray[np.float32]) -> bytes:
    return (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2").tobytes()


def _loop_scores(loop: Any, raw: bytes) -> npt.NDArray[np.float64]:
    """Per-frame log-likelihood (pocketsphinx log units) of the best phone-loop path."""
    loop.activate_search(LOOP)
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


def _align(align: Any, raw: bytes, words: list[str], beam: float, fillers: bool) -> Any:
    align.config["beam"] = beam
    align.config["fsgusefiller"] = fillers
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
    decoder = _decoder()
    words = words_of(text)
    known = [w for w in words if decoder.lookup_word(w) is not None]
    unknown = sorted({w for w in words if w not in known})
    if not known:
        return Pronunciation(None, "no word of the target text is in the pronunciation dictionary")
    raw = _pcm(samples)
    alignment = None
    for beam, fillers in ALIGN_TRIES:
        try:
            alignment = _align(decoder, raw, known, beam, fillers)
            break
        except RuntimeError:
            continue
    if alignment is None:
        return Pronunciation(
            None,
            "the recording could not be aligned to the target text (it may be a different "
            "text, or too noisy); no value is invented",
        )
    words_found = [
        (w.name, w.start, w.duration, [(p.name, p.start, p.duration, p.score) for p in w])
        for w in alignment
    ]
    loop = _loop_scores(decoder, raw)
    logmath = decoder.get_logmath()
    rows: list[dict[str, Any]] = []
    for name, word_start, word_frames, phone_list in words_found:
        if name.startswith("<") or name.startswith("["):
            continue
        phones = []
        for phone_name, start, frames, score in phone_list:
            end = start + frames
            den = float(loop[start : min(end, len(loop))].sum())
            gop = logmath.log_to_ln(score - den) * SCORE_SHIFT / max(frames, 1)
            phones.append({
                "phone": phone_name,
                "start": round(start * FRAME_SECONDS, 3),
                "end": round(end * FRAME_SECONDS, 3),
                "gop": round(gop, 3),
            })  # fmt: skip
        if not phones:
            continue
        mean = float(np.mean([p["gop"] for p in phones]))
        rows.append({
            "type": "word",
            "index": len(rows),
            "text": name.split("(")[0],
            "start": round(word_start * FRAME_SECONDS, 3),
            "end": round((word_start + word_frames) * FRAME_SECONDS, 3),
            "gop_mean": round(mean, 3),
            "gop_min": round(min(p["gop"] for p in phones), 3),
            "acceptable": mean >= WORD_OK,
            "phones": phones,
        })  # fmt: skip
    if not rows:
        return Pronunciation(None, "no word of the target text could be aligned")
    unaligned = _unaligned(known, [r["text"] for r in rows])
    good = sum(1 for r in rows if r["acceptable"])
    value = round(100.0 * good / (len(rows) + len(unaligned)), 2)
    low = sorted((r for r in rows if not r["acceptable"]), key=lambda r: r["gop_mean"])
    low_words = list(dict.fromkeys([r["text"] for r in low] + unaligned))
    details = {
        "method": METHOD,
        "language": "en",
        "words_expected": len(words),
        "words_aligned": len(rows),
        "words_acceptable": good,
        "words_not_aligned": unaligned,
        "word_threshold_nats_per_frame": WORD_OK,
        "lowest_words": [r["text"] for r in sorted(rows, key=lambda r: r["gop_mean"])][:5],
        "not_in_dictionary": unknown,
        "combination": COMBINATION,
        "sources": SOURCES,
        "limits": LIMITS,
    }
    tips = [_tip(low_words)] if low_words else []
    return Pronunciation(value, None, details, rows, low_words, tips=tips)


def _unaligned(expected: list[str], aligned: list[str]) -> list[str]:
    """Words of the text the alignment left out (it can end early on a different reading)."""
    out, j = [], 0
    for word in expected:
        if j < len(aligned) and aligned[j] == word:
            j += 1
        else:
            out.append(word)
    return out


def _tip(words: list[str]) -> Tip:
    shown = ", ".join(words[:5])
    return Tip(
        "發音",
        "pronunciation",
        f"有些字的發音和目標不太一樣，例如 {shown}；可以先聽示範，再一個字一個字慢慢練習。",
        f"Some words sounded different from the target, e.g. {shown}; listen to a model "
        "recording, then practise them slowly one at a time.",
    )
