"""Synthetic sustained vowels (/a/-like harmonic spectrum) with controllable jitter and noise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import soundfile as sf

RATE = 16_000
FORMANTS = ((700.0, 110.0), (1220.0, 120.0), (2600.0, 160.0))


def _envelope(freq: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    gain = sum(1.0 / (1.0 + ((freq - f) / b) ** 2) for f, b in FORMANTS)
    return np.asarray(gain + 0.05, dtype=np.float64) / np.maximum(freq / 100.0, 1.0)


def vowel(
    seconds: float = 2.5,
    f0: float = 120.0,
    jitter: float = 0.0,
    snr_db: float | None = None,
    pad: float = 0.3,
    seed: int = 1,
) -> npt.NDArray[np.float32]:
    """A vowel whose glottal periods vary randomly by `jitter` (relative SD), plus white noise."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    inst = np.empty(n)
    pos = 0
    while pos < n:  # one period at a time, each with its own (jittered) length
        period = (1.0 / f0) * (1.0 + jitter * rng.standard_normal())
        length = max(1, round(period * RATE))
        inst[pos : pos + length] = 1.0 / (length / RATE)
        pos += length
    phase = 2 * np.pi * np.cumsum(inst) / RATE
    harmonics = np.arange(1, int(4000 // f0) + 1)
    amps = _envelope(harmonics * f0)
    voice = (amps[:, None] * np.sin(harmonics[:, None] * phase[None, :])).sum(axis=0)
    ramp = np.minimum(1.0, np.minimum(np.arange(n), np.arange(n)[::-1]) / (0.05 * RATE))
    voice = 0.3 * voice * ramp / np.abs(voice).max()
    if snr_db is not None:
        noise_rms = np.sqrt(np.mean(voice**2)) / 10 ** (snr_db / 20)
        voice = voice + rng.normal(0.0, noise_rms, n)
    silence = np.zeros(int(pad * RATE))
    signal = np.concatenate([silence, voice, silence])
    signal = signal + rng.normal(0.0, 1e-4, len(signal))  # a realistic (tiny) noise floor
    return signal.astype(np.float32)


def write_vowel(path: Path, **kwargs: float) -> Path:
    sf.write(path, vowel(**kwargs), RATE, subtype="PCM_16")  # type: ignore[arg-type]
    return path
