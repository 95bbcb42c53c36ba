"""Derived timing measures, task detection, sentence stretches and measure documentation."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from analyzer import syllables as syl
from analyzer.acoustics import VoiceAnalysis

SNR_CAP_DB = 60.0
LOW_SNR_DB = 15.0
SUSTAINED_MIN_SECONDS = 1.0
VOICE_MEASURES = ("jitter_local_percent", "shimmer_local_percent", "hnr_db", "cpps_db")
MDVP_NOTE = (
    "MDVP-style norms (e.g. jitter local 1.04 %, shimmer local 3.81 %) apply to sustained "
    "vowels only; jitter and shimmer of connected speech are inflated by intonation and "
    "consonant transitions and must not be compared with those norms."
)

# name -> (unit, definition, source)
MEASURE_INFO: dict[str, tuple[str, str, str]] = {
    "duration_seconds": ("s", "duration of the decoded recording", "-"),
    "phonation_time_seconds": ("s", "total duration of sounding stretches", "de Jong & Wempe 2009"),
    "syllable_count": ("syllables", "intensity peaks >= 2 dB above the dips on both sides, "
                       "above the silence threshold (0.99 quantile - 25 dB), voiced",
                       "de Jong & Wempe 2009 (two-sided dip variant)"),
    "speech_rate": ("syllables/s", "syllables / total duration", "de Jong & Wempe 2009"),
    "articulation_rate": ("syllables/s", "syllables / phonation time", "de Jong & Wempe 2009"),
    "pause_count": ("pauses", "silent stretches >= 250 ms between speech", "Goldman-Eisler 1968"),
    "pause_total_seconds": ("s", "summed duration of pauses", "Goldman-Eisler 1968"),
    "mean_pause_seconds": ("s", "mean pause duration", "Goldman-Eisler 1968"),
    "pause_ratio": ("fraction", "pause time / (speech onset to offset)", "Kormos & Denes 2004"),
    "mean_length_of_run": ("syllables", "syllables per run between pauses", "Kormos & Denes 2004"),
    "isi_npvi": ("index", "nPVI of successive inter-syllable intervals within runs",
                 "Grabe & Low 2002"),
    "isi_varco": ("percent", "100 x SD / mean of inter-syllable intervals within runs",
                  "Dellwo 2006"),
    "run_rate_cv": ("percent", "CV of articulation rate across runs of >= 3 syllables", "-"),
    "snr_db": ("dB", "sounding-frame level minus 5th-percentile frame level (capped at 60)", "-"),
    "intensity_mean_db": ("dB", "energy-mean intensity, uncalibrated (Praat dB re 2e-5)", "Praat"),
    "pitch_floor_hz": ("Hz", "second-pass floor = 0.75 x Q1 of a 50-800 Hz first pass",
                       "De Looze & Hirst 2008"),
    "pitch_ceiling_hz": ("Hz", "second-pass ceiling = 1.5 x Q3 of the first pass",
                         "De Looze & Hirst 2008"),
    "f0_mean_hz": ("Hz", "mean F0 of voiced frames", "Praat (Boersma 1993)"),
    "f0_median_hz": ("Hz", "median F0 of voiced frames", "Praat (Boersma 1993)"),
    "f0_sd_semitones": ("st", "SD of F0 in semitones", "Praat"),
    "f0_range_semitones": ("st", "5th to 95th percentile F0 range in semitones", "Praat"),
    "f0_min_hz": ("Hz", "lowest voiced F0", "Praat"),
    "f0_max_hz": ("Hz", "highest voiced F0", "Praat"),
    "jitter_local_percent": ("%", "mean absolute period difference / mean period",
                             "Praat; MDVP threshold 1.04 %"),
    "shimmer_local_percent": ("%", "mean absolute peak-amplitude difference / mean amplitude",
                              "Praat; MDVP threshold 3.81 %"),
    "hnr_db": ("dB", "mean harmonics-to-noise ratio (cross-correlation)", "Boersma 1993"),
    "cpps_db": ("dB", "smoothed cepstral peak prominence, Praat defaults but a "
                "0.01 s frame step",
                "Hillenbrand et al. 1994; Maryn & Weenink 2015"),
}  # fmt: skip


def _rate_cv(timing: syl.Timing) -> float | None:
    rates = []
    for start, end in timing.sounding:
        n = syl.count_in(timing.nuclei, (start, end))
        if n >= 3:
            rates.append(n / (end - start))
    if len(rates) < 2:
        return None
    return 100.0 * float(np.std(rates, ddof=1) / np.mean(rates))


def timing_measures(timing: syl.Timing) -> dict[str, float | None]:
    """Rate, pause and rhythm measures; None where they are undefined."""
    n = len(timing.nuclei)
    phonation = sum(e - s for s, e in timing.sounding)
    pause_total = sum(e - s for s, e in timing.pauses)
    span = timing.sounding[-1][1] - timing.sounding[0][0] if timing.sounding else 0.0
    intervals = syl.inter_syllable_intervals(timing)
    snr = None
    if timing.speech_level_db is not None:
        snr = min(SNR_CAP_DB, timing.speech_level_db - timing.noise_level_db)
    return {
        "duration_seconds": timing.duration,
        "phonation_time_seconds": phonation,
        "syllable_count": float(n),
        "speech_rate": n / timing.duration if n else None,
        "articulation_rate": n / phonation if n and phonation > 0 else None,
        "pause_count": float(len(timing.pauses)),
        "pause_total_seconds": pause_total,
        "mean_pause_seconds": pause_total / len(timing.pauses) if timing.pauses else None,
        "pause_ratio": pause_total / span if n and span > 0 else None,
        "mean_length_of_run": n / len(timing.sounding) if n else None,
        "isi_npvi": syl.npvi(intervals),
        "isi_varco": syl.varco(intervals),
        "run_rate_cv": _rate_cv(timing),
        "snr_db": snr,
    }


def looks_sustained(timing: syl.Timing, voice: VoiceAnalysis) -> bool:
    """One long voiced stretch, no pauses: a sustained vowel rather than connected speech."""
    if timing.pauses or not voice.voiced_stretches or len(timing.sounding) != 1:
        return False
    phonation = timing.sounding[0][1] - timing.sounding[0][0]
    longest = max(e - s for s, e in voice.voiced_stretches)
    voiced = sum(e - s for s, e in voice.voiced_stretches)
    return longest >= SUSTAINED_MIN_SECONDS and voiced >= 0.8 * phonation


def _mean_f0(voice: VoiceAnalysis, start: float, end: float) -> float | None:
    values = [v for t, v in zip(voice.pitch_times, voice.pitch_values, strict=True)
              if start <= t <= end and v > 0]  # fmt: skip
    return round(float(np.mean(values)), 2) if values else None


def sentence_analyses(timing: syl.Timing, voice: VoiceAnalysis) -> list[dict[str, Any]]:
    """Stretches of speech between pauses >= 0.5 s."""
    out = []
    for index, (start, end) in enumerate(syl.sentences(timing)):
        n = syl.count_in(timing.nuclei, (start, end))
        inner = [p for p in timing.pauses if start <= p[0] and p[1] <= end]
        out.append(
            {"index": index, "start": round(start, 3), "end": round(end, 3),
             "duration": round(end - start, 3), "syllables": n,
             "speech_rate": round(n / (end - start), 2) if end > start else None,
             "pause_count": len(inner), "mean_f0_hz": _mean_f0(voice, start, end)}
        )  # fmt: skip
    return out


def describe(name: str, value: float | None, sustained: bool) -> dict[str, Any]:
    """One measure with its unit (and, for voice measures, whether norms apply)."""
    unit = MEASURE_INFO[name][0] if name in MEASURE_INFO else ""
    rounded = None if value is None or not math.isfinite(value) else round(value, 4)
    entry: dict[str, Any] = {"value": rounded, "unit": unit}
    if name in VOICE_MEASURES:
        entry["valid_for_norms"] = sustained
        if not sustained:
            entry["note"] = "connected speech: not comparable with sustained-vowel norms"
    return entry
