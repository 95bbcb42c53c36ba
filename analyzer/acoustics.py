"""Praat measures through parselmouth: pitch (two-pass), jitter, shimmer, HNR, CPPS, intensity."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import parselmouth
from parselmouth.praat import call

FIRST_PASS_FLOOR = 50.0
FIRST_PASS_CEILING = 800.0
MIN_VOICED_FRAMES = 10
PITCH_STEP = 0.01
# Cepstrogram frame step (s). Praat's default is 0.002; 0.01 costs a fifth of it (the robust
# trend fit runs per frame: CPPS was about 0.4 s of CPU per 10 s of speech at 0.005) and reads
# 0.1-0.25 dB lower than the default on the committed fixtures (docs/analysis.md section 4).
CEPSTRUM_STEP = 0.01


@dataclass
class VoiceAnalysis:
    """Pitch track and voice-quality measures of one recording."""

    measures: dict[str, float | None]
    pitch_times: list[float] = field(default_factory=list)
    pitch_values: list[float] = field(default_factory=list)
    voiced_stretches: list[tuple[float, float]] = field(default_factory=list)


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def pitch_range(sound: parselmouth.Sound) -> tuple[float, float] | None:
    """Two-pass range (De Looze & Hirst 2008): 0.75 x Q1, 1.5 x Q3 of a 50-800 Hz pass."""
    first = sound.to_pitch_ac(
        time_step=PITCH_STEP, pitch_floor=FIRST_PASS_FLOOR, pitch_ceiling=FIRST_PASS_CEILING
    )
    f0 = first.selected_array["frequency"]
    voiced = f0[f0 > 0]
    if len(voiced) < MIN_VOICED_FRAMES:
        return None
    q1, q3 = np.quantile(voiced, [0.25, 0.75])
    floor = max(FIRST_PASS_FLOOR, 0.75 * float(q1))
    ceiling = min(FIRST_PASS_CEILING, 1.5 * float(q3))
    return floor, max(ceiling, floor * 2.0)


def _stretches(
    times: npt.NDArray[np.float64], voiced: npt.NDArray[np.bool_]
) -> list[tuple[float, float]]:
    """Contiguous voiced runs of the pitch track as (start, end) seconds."""
    out: list[tuple[float, float]] = []
    padded = np.concatenate([[False], voiced, [False]])
    edges = np.flatnonzero(np.diff(padded.astype(np.int8)))
    half = PITCH_STEP / 2
    for start, stop in zip(edges[::2], edges[1::2], strict=True):
        out.append((float(times[start] - half), float(times[stop - 1] + half)))
    return out


def _pitch_measures(f0: npt.NDArray[np.float64]) -> dict[str, float | None]:
    voiced = f0[f0 > 0]
    semitones = 12.0 * np.log2(voiced / np.median(voiced))
    p5, p95 = np.quantile(semitones, [0.05, 0.95])
    return {
        "f0_mean_hz": float(voiced.mean()),
        "f0_median_hz": float(np.median(voiced)),
        "f0_sd_semitones": float(semitones.std(ddof=1)) if len(voiced) > 1 else None,
        "f0_range_semitones": float(p95 - p5),
        "f0_min_hz": float(voiced.min()),
        "f0_max_hz": float(voiced.max()),
    }


def _perturbation(sound: parselmouth.Sound, pitch: parselmouth.Pitch) -> dict[str, float | None]:
    points = call([sound, pitch], "To PointProcess (cc)")
    jitter = _finite(call(points, "Get jitter (local)", 0, 0, 0.0001, 0.02, 1.3))
    shimmer = _finite(call([sound, points], "Get shimmer (local)", 0, 0, 0.0001, 0.02, 1.3, 1.6))
    return {
        "jitter_local_percent": None if jitter is None else 100.0 * jitter,
        "shimmer_local_percent": None if shimmer is None else 100.0 * shimmer,
    }


def hnr_db(sound: parselmouth.Sound, floor: float) -> float | None:
    """Mean harmonics-to-noise ratio over voiced frames (Praat cross-correlation method)."""
    harmonicity = sound.to_harmonicity_cc(
        time_step=0.01, minimum_pitch=floor, silence_threshold=0.1, periods_per_window=1.0
    )
    values = harmonicity.values[0]
    voiced = values[values > -199.0]
    return float(voiced.mean()) if len(voiced) else None


def cpps_db(sound: parselmouth.Sound) -> float | None:
    """Smoothed cepstral peak prominence (Maryn & Weenink 2015), in dB; None if undefined.

    Praat's default settings except the frame step (CEPSTRUM_STEP, 0.01 s instead of 0.002 s):
    pitch floor 60 Hz, up to 5 kHz, pre-emphasis from 50 Hz; averaged over 0.02 s and 0.0005 s
    of quefrency, peak searched between 60 and 330 Hz, straight trend line fitted robustly.
    """
    cepstrogram = call(sound, "To PowerCepstrogram", 60.0, CEPSTRUM_STEP, 5000.0, 50.0)
    value = call(
        cepstrogram, "Get CPPS", "no", 0.02, 0.0005, 60.0, 330.0, 0.05,
        "Parabolic", 0.001, 0.0, "Straight", "Robust",
    )  # fmt: skip
    return _finite(value)


def intensity_mean_db(sound: parselmouth.Sound) -> float | None:
    intensity = sound.to_intensity(minimum_pitch=100.0, subtract_mean=True)
    return _finite(call(intensity, "Get mean", 0, 0, "energy"))


def analyse_voice(sound: parselmouth.Sound) -> VoiceAnalysis:
    """All pitch and voice-quality measures; None where Praat cannot measure them."""
    measures: dict[str, float | None] = {"intensity_mean_db": intensity_mean_db(sound)}
    bounds = pitch_range(sound)
    if bounds is None:
        return VoiceAnalysis(measures=measures)
    floor, ceiling = bounds
    pitch = sound.to_pitch_ac(time_step=PITCH_STEP, pitch_floor=floor, pitch_ceiling=ceiling)
    f0 = pitch.selected_array["frequency"]
    times = pitch.xs()
    if np.count_nonzero(f0 > 0) < MIN_VOICED_FRAMES:
        return VoiceAnalysis(measures=measures)
    measures.update(pitch_floor_hz=floor, pitch_ceiling_hz=ceiling)
    measures.update(_pitch_measures(f0))
    measures.update(_perturbation(sound, pitch))
    measures["hnr_db"] = hnr_db(sound, floor)
    measures["cpps_db"] = cpps_db(sound)
    return VoiceAnalysis(
        measures=measures,
        pitch_times=[float(t) for t in times],
        pitch_values=[float(v) for v in f0],
        voiced_stretches=_stretches(times, f0 > 0),
    )
