"""Audio bytes for tests, made on the fly (a sine tone; the analyzer has real speech)."""

from __future__ import annotations

import io
import math
import os
import struct
import wave

import av
import numpy as np


def make_wav(
    seconds: float = 1.0, rate: int = 16_000, frequency: float = 220.0, unique: bool = False
) -> bytes:
    """A sine tone; the same arguments give the same bytes, unless `unique`: then its first 8
    samples (half a millisecond) are random, so that no two calls give the same bytes (another
    recording for the result cache, which matches recordings by content)."""
    frames = int(seconds * rate)
    samples = (int(12_000 * math.sin(2 * math.pi * frequency * n / rate)) for n in range(frames))
    pcm = b"".join(struct.pack("<h", s) for s in samples)
    if unique:
        pcm = os.urandom(min(16, len(pcm))) + pcm[16:]
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm)
    return buffer.getvalue()


def make_mp3(seconds: float = 1.0, rate: int = 16_000, frequency: float = 220.0) -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp3") as container:
        stream = container.add_stream("mp3", rate=rate)
        t = np.arange(int(seconds * rate)) / rate
        pcm = (0.3 * np.sin(2 * np.pi * frequency * t)).astype(np.float32).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(pcm, format="fltp", layout="mono")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue()
