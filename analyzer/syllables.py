"""Syllable nuclei (de Jong & Wempe 2009), speech/pause segmentation and timing measures."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import parselmouth

SILENCE_DB = -25.0  # silence threshold relative to the 0.99 quantile of intensity
MIN_DIP_DB = 2.0  # a nucleus must stand this far above the dips on both sides
MIN_PAUSE = 0.25  # silent stretches of at least this long count as pauses (Goldman-Eisler)
MIN_SOUNDING = 0.1
SENTENCE_PAUSE = 0.5
INTENSITY_FLOOR_HZ = 50.0
NOISE_QUANTILE = 0.05

Interval = tuple[float, float]
FloatArray = npt.NDArray[np.float64]


@dataclass
class Timing:
    """Where the speech is, where the pauses are, and where the syllable nuclei are."""

    duration: float
    threshold_db: float
    sounding: list[Interval]
    pauses: list[Interval]
    nuclei: list[float]
    speech_level_db: float | None
    noise_level_db: float


def _runs(mask: npt.NDArray[np.bool_]) -> list[tuple[int, int]]:
    padded = np.concatenate([[False], mask, [False]])
    edges = np.flatnonzero(np.diff(padded.astype(np.int8)))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True)]


def _sounding_intervals(
    times: FloatArray, loud: npt.NDArray[np.bool_], step: float
) -> list[Interval]:
    """Sounding stretches; silent gaps shorter than MIN_PAUSE are bridged, blips dropped."""
    spans = [(float(times[a] - step / 2), float(times[b - 1] + step / 2)) for a, b in _runs(loud)]
    merged: list[Interval] = []
    for start, end in spans:
        if merged and start - merged[-1][1] < MIN_PAUSE:
            merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return [(s, e) for s, e in merged if e - s >= MIN_SOUNDING]


def _prominent_peaks(values: FloatArray, threshold: float) -> list[int]:
    """Intensity maxima above threshold that rise MIN_DIP_DB above the dips on both sides."""
    inner = values[1:-1]
    peaks = np.flatnonzero((inner > values[:-2]) & (inner >= values[2:])) + 1
    peaks = peaks[values[peaks] > threshold]
    bounds = [0, *peaks.tolist(), len(values) - 1]
    kept = []
    for i, peak in enumerate(peaks.tolist()):
        left = values[bounds[i] : peak + 1].min()
        right = values[peak : bounds[i + 2] + 1].min()
        if values[peak] - max(left, right) > MIN_DIP_DB:
            kept.append(peak)
    return kept


def _voiced_at(sound: parselmouth.Sound, times: list[float]) -> list[bool]:
    """De Jong & Wempe's voicing check with their Praat pitch settings."""
    pitch = sound.to_pitch_ac(0.02, 30.0, 4, False, 0.03, 0.25, 0.01, 0.35, 0.25, 450.0)
    return [np.isfinite(pitch.get_value_at_time(t)) for t in times]


def _inside(t: float, spans: list[Interval]) -> bool:
    return any(start <= t <= end for start, end in spans)


def _levels(values: FloatArray, loud: npt.NDArray[np.bool_]) -> tuple[float | None, float]:
    """Energy-mean level of sounding frames, and the 5th-percentile frame level as noise floor.

    The noise estimate assumes at least 5 % of the frames are not speech (lead-in, pauses);
    on wall-to-wall speech it overestimates the noise, i.e. underestimates the SNR.
    """
    speech = values[loud]
    speech_db = float(10 * np.log10(np.mean(10 ** (speech / 10)))) if len(speech) else None
    return speech_db, float(np.quantile(values, NOISE_QUANTILE))


def analyse_timing(sound: parselmouth.Sound) -> Timing:
    """Segment into speech and pauses and find syllable nuclei."""
    intensity = sound.to_intensity(minimum_pitch=INTENSITY_FLOOR_HZ, subtract_mean=True)
    values = np.asarray(intensity.values[0], dtype=np.float64)
    times = np.asarray(intensity.xs(), dtype=np.float64)
    step = float(intensity.dx)
    threshold = max(float(np.quantile(values, 0.99)) + SILENCE_DB, float(values.min()))
    loud = values > threshold
    sounding = _sounding_intervals(times, loud, step)
    pauses = [(a[1], b[0]) for a, b in itertools.pairwise(sounding)]
    peaks = [float(times[i]) for i in _prominent_peaks(values, threshold)]
    peaks = [t for t in peaks if _inside(t, sounding)]
    nuclei = [t for t, ok in zip(peaks, _voiced_at(sound, peaks), strict=True) if ok]
    speech_db, noise_db = _levels(values, loud)
    return Timing(
        duration=float(sound.duration),
        threshold_db=threshold,
        sounding=sounding,
        pauses=pauses,
        nuclei=nuclei,
        speech_level_db=speech_db,
        noise_level_db=noise_db,
    )


def sentences(timing: Timing) -> list[Interval]:
    """Stretches of speech separated by pauses of at least SENTENCE_PAUSE seconds."""
    out: list[Interval] = []
    for start, end in timing.sounding:
        if out and start - out[-1][1] < SENTENCE_PAUSE:
            out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out


def count_in(nuclei: list[float], span: Interval) -> int:
    return sum(1 for t in nuclei if span[0] <= t <= span[1])


def inter_syllable_intervals(timing: Timing) -> list[list[float]]:
    """Intervals between successive nuclei, per run (never across a pause)."""
    out = []
    for span in timing.sounding:
        inside = [t for t in timing.nuclei if span[0] <= t <= span[1]]
        if len(inside) >= 2:
            out.append(np.diff(inside).tolist())
    return out


def npvi(intervals: list[list[float]]) -> float | None:
    """Normalised pairwise variability index over successive intervals (Grabe & Low 2002)."""
    terms = [abs(a - b) / ((a + b) / 2) for run in intervals for a, b in itertools.pairwise(run)]
    return 100.0 * float(np.mean(terms)) if len(terms) >= 3 else None


def varco(intervals: list[list[float]]) -> float | None:
    """Coefficient of variation of the intervals x 100 (Dellwo 2006)."""
    flat = [d for run in intervals for d in run]
    if len(flat) < 4:
        return None
    return 100.0 * float(np.std(flat, ddof=1) / np.mean(flat))
