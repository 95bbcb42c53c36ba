"""CPU seconds of the reference analysis pipeline per 10 s of 16 kHz speech.

Run: uv run python bench/analyzer_cpu.py
Concatenates the committed speech fixtures to ~30 s, runs the whole pipeline once to warm
up (imports, Praat start-up), then measures process CPU time of the analysis itself.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from analyzer.pipeline import analyse_file
from analyzer.schemas import AnalyzeParams

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "analyzer" / "fixtures"
NAMES = ("speech_normal.wav", "speech_fast.wav", "speech_slow_pauses.wav")
GOAL = 1.0
RUNS = 3


def concatenated(target_seconds: float = 30.0) -> tuple[np.ndarray, int]:
    parts = [sf.read(FIXTURES / name, dtype="float32") for name in NAMES]
    rate = parts[0][1]
    samples = np.concatenate([p[0] for p in parts])
    while len(samples) < target_seconds * rate:
        samples = np.concatenate([samples, parts[0][0]])
    return samples, rate


def main() -> None:
    samples, rate = concatenated()
    seconds = len(samples) / rate
    params = AnalyzeParams(language="en")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.wav"
        sf.write(path, samples, rate, subtype="PCM_16")
        analyse_file(FIXTURES / NAMES[1], "wav", params, "bench", 600.0)  # warm-up
        costs = []
        for _ in range(RUNS):
            start = time.process_time()
            result = analyse_file(path, "wav", params, "bench", 600.0)
            costs.append(time.process_time() - start)
    per_10s = min(costs) / seconds * 10.0
    syllables = result["detailed_analysis"]["measures"]["syllable_count"]["value"]
    print(f"audio: {seconds:.1f} s at {rate} Hz, {syllables:.0f} syllables detected")
    print(f"CPU per run (s): {', '.join(f'{c:.3f}' for c in costs)}")
    verdict = "OK" if per_10s <= GOAL else "OVER GOAL"
    print(f"CPU seconds per 10 s of speech: {per_10s:.3f} (goal <= {GOAL:.1f}) {verdict}")


if __name__ == "__main__":
    main()
