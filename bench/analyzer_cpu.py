"""CPU seconds of the reference analysis pipeline per 10 s of 16 kHz speech.

Run: uv run python bench/analyzer_cpu.py
Three recordings of about 30 s, each concatenated from committed fixtures: English speech
without a target text, the same with its target text (English pronunciation on: pocketsphinx
alignment and phone loop), and Mandarin speech with its target text (tones on). Each is run
once to warm up (imports, Praat and pocketsphinx start-up), then the process CPU time of the
analysis itself is measured; the best of RUNS is reported.
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
EN_TEXT = (
    "Today I want to read a short story to my little sister. "
    "We will sit by the window and watch the rain."
)
EN = [(f"speech_{n}.wav", EN_TEXT) for n in ("normal", "fast", "slow_pauses")]
ZH = [
    ("pronunciation/zh1_correct.wav", "今天天氣很好，我們一起去公園散步。"),
    ("pronunciation/zh2_correct.wav", "老師說明天不要遲到。"),
    ("pronunciation/zh3_correct.wav", "我想買一本書給媽媽。"),
]
GOAL = 1.0
RUNS = 3


def concatenated(
    parts: list[tuple[str, str]], target_seconds: float = 30.0
) -> tuple[np.ndarray, int, str]:
    """Samples, rate and target text of the parts repeated to at least target_seconds."""
    audio = [sf.read(FIXTURES / name, dtype="float32") for name, _ in parts]
    rate = audio[0][1]
    chunks, texts = [], []
    i = 0
    while sum(len(c) for c in chunks) < target_seconds * rate:
        chunks.append(audio[i % len(parts)][0])
        texts.append(parts[i % len(parts)][1])
        i += 1
    return np.concatenate(chunks), rate, " ".join(texts)


def measure(label: str, parts: list[tuple[str, str]], language: str, with_text: bool) -> None:
    samples, rate, text = concatenated(parts)
    seconds = len(samples) / rate
    params = AnalyzeParams(language=language, target_text=text if with_text else None)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.wav"
        sf.write(path, samples, rate, subtype="PCM_16")
        analyse_file(path, "wav", params, "bench", 600.0)  # warm-up
        costs = []
        for _ in range(RUNS):
            start = time.process_time()
            result = analyse_file(path, "wav", params, "bench", 600.0)
            costs.append(time.process_time() - start)
    per_10s = min(costs) / seconds * 10.0
    verdict = "OK" if per_10s <= GOAL else "OVER GOAL"
    print(f"{label}: {seconds:.1f} s of audio, pronunciation_accuracy "
          f"{result['pronunciation_accuracy']}")  # fmt: skip
    print(f"  CPU per run (s): {', '.join(f'{c:.3f}' for c in costs)}")
    print(f"  CPU seconds per 10 s of speech: {per_10s:.3f} (goal <= {GOAL:.1f}) {verdict}")


def main() -> None:
    measure("English, no target text", EN, "en", with_text=False)
    measure("Mandarin, target text (tones)", ZH, "zh-TW", with_text=True)
    measure("English, target text (GOP)", EN, "en", with_text=True)


if __name__ == "__main__":
    main()
