"""Container sniffing and decoding to 16 kHz mono float32 (soundfile first, PyAV fallback).

Every duration the analyzer reports or enforces is the decoded sample count divided by the
sample rate. A container's own duration is used only where it is exact (a WAV/FLAC header, an
MP4 index, an MP3 Xing/Info/VBRI frame count); for ADTS AAC and for MP3 without such a header,
FFmpeg extrapolates it from the bitrate of the first frames, which leading silence makes many
times too long (issue 15), so it is reported as an estimate and never trusted.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from analyzer.errors import AnalyzerError
from analyzer.quality import SampleStats, sample_stats

TARGET_RATE = 16_000
MIN_DURATION = 0.05
MEDIA_TYPES = {
    "audio/wav": "wav",
    "audio/x-wav": "wav",
    "audio/wave": "wav",
    "audio/vnd.wave": "wav",
    "audio/mpeg": "mp3",
    "audio/mp3": "mp3",
    "audio/mp4": "mp4",
    "audio/x-m4a": "mp4",
    "audio/m4a": "mp4",
    "audio/aac": "aac",
    "audio/x-aac": "aac",
    "audio/flac": "flac",
    "audio/x-flac": "flac",
    "audio/ogg": "ogg",
    "application/ogg": "ogg",
    "application/octet-stream": "sniff",
}
SNIFF_BYTES = 12
LOSSY = frozenset({"mp3", "aac", "mp4", "ogg"})  # decoded by PyAV: lossy codecs

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class ContainerDuration:
    """What the container says about its length: `exact` from an index or frame count, or a
    bitrate `estimate` (reported as such, never used for a limit or the truncation flag)."""

    seconds: float
    kind: str  # "exact" | "estimate"


@dataclass(frozen=True)
class DecodedAudio:
    """Decoded mono samples at TARGET_RATE plus facts about the source.

    source_duration is decoded samples / source rate (seconds); stats were measured on the
    source-rate samples before resampling (clipping survives only there).
    """

    samples: FloatArray
    sample_rate: int
    source_sample_rate: int
    source_channels: int
    source_duration: float
    container: str
    decoder: str
    truncated: bool
    container_duration: ContainerDuration | None = None
    stats: SampleStats | None = None

    @property
    def duration(self) -> float:
        return float(len(self.samples)) / self.sample_rate


def sniff(head: bytes) -> str | None:
    """Identify the audio container from its first bytes; None if it is not audio we know."""
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"fLaC":
        return "flac"
    if head[:4] == b"OggS":
        return "ogg"
    if len(head) >= 8 and head[4:8] == b"ftyp":
        return "mp4"
    if head[:3] == b"ID3":
        return "mp3"
    if len(head) >= 2 and head[0] == 0xFF:
        if head[1] in (0xF0, 0xF1, 0xF8, 0xF9):
            return "aac"
        if head[1] & 0xE0 == 0xE0 and head[1] & 0x06 != 0:
            return "mp3"
    return None


def _wav_truncated(path: Path) -> bool:
    """True when the WAV data chunk declares more bytes than the file holds."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        fh.seek(12)
        while True:
            header = fh.read(8)
            if len(header) < 8:
                return False
            chunk_id, chunk_size = header[:4], struct.unpack("<I", header[4:])[0]
            if chunk_id == b"data":
                return chunk_size not in (0, 0xFFFFFFFF) and fh.tell() + chunk_size > size
            fh.seek(chunk_size + (chunk_size & 1), 1)


def _mp3_has_frame_count(path: Path) -> bool:
    """True when the first MPEG audio frame is a Xing/Info or VBRI header (an exact length)."""
    with path.open("rb") as fh:
        head = fh.read(10)
        offset = 0
        if head[:3] == b"ID3" and len(head) == 10:  # skip an ID3v2 tag (syncsafe size)
            size = (head[6] << 21) | (head[7] << 14) | (head[8] << 7) | head[9]
            offset = 10 + size + (10 if head[5] & 0x10 else 0)
        fh.seek(offset)
        first = fh.read(4096)
    sync = next((i for i in range(len(first) - 1)
                 if first[i] == 0xFF and first[i + 1] & 0xE0 == 0xE0), None)  # fmt: skip
    if sync is None:
        return False
    frame = first[sync : sync + 200]
    return b"Xing" in frame or b"Info" in frame or b"VBRI" in frame


def _container_duration(path: Path, container: str, box: Any) -> ContainerDuration | None:
    if not box.duration:
        return None
    seconds = float(box.duration) / 1e6
    exact = container == "mp4" or (container == "mp3" and _mp3_has_frame_count(path))
    return ContainerDuration(seconds, "exact" if exact else "estimate")


def _too_long(seconds: float, max_seconds: float) -> AnalyzerError:
    return AnalyzerError(
        422, "too_long", f"recording is {seconds:.1f} s long; the limit is {max_seconds:.0f} s"
    )


def _resample(mono: FloatArray, rate: int) -> FloatArray:
    if rate == TARGET_RATE:
        return mono
    import parselmouth

    sound = parselmouth.Sound(mono.astype(np.float64), sampling_frequency=rate)
    resampled = sound.resample(TARGET_RATE, 30)
    return np.asarray(resampled.values[0], dtype=np.float32)


def _decode_soundfile(path: Path, container: str, max_seconds: float) -> DecodedAudio | None:
    import soundfile as sf

    try:
        info = sf.info(str(path))
        if info.frames / max(info.samplerate, 1) > max_seconds:
            raise _too_long(info.frames / info.samplerate, max_seconds)
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError):
        return None
    mono = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    truncated = container == "wav" and _wav_truncated(path)
    mono = np.ascontiguousarray(mono)
    return DecodedAudio(
        samples=_resample(mono, int(rate)),
        sample_rate=TARGET_RATE,
        source_sample_rate=int(rate),
        source_channels=int(data.shape[1]),
        source_duration=len(mono) / float(rate),
        container=container,
        decoder="soundfile",
        truncated=truncated,
        container_duration=ContainerDuration(info.frames / info.samplerate, "exact"),
        stats=sample_stats(data, int(rate), lossy=info.subtype in ("VORBIS", "OPUS")),
    )


def _pyav_samples(box: Any, stream: Any, rate: int, max_seconds: float) -> tuple[FloatArray, bool]:
    """Decode and downmix to mono float32 at the source rate, stopping at the limit.

    Returns (samples, truncated): truncated is True when decoding broke off with an error.
    Raises AnalyzerError too_long as soon as more than max_seconds have been decoded.
    """
    import av

    resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
    chunks: list[FloatArray] = []
    decoded = 0
    truncated = False
    try:
        for frame in box.decode(stream):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1).astype(np.float32))
                decoded += out.samples
            if decoded > max_seconds * rate:
                raise _too_long(decoded / rate, max_seconds)
    except av.error.FFmpegError:
        if not chunks:
            raise
        truncated = True
    for out in resampler.resample(None):
        chunks.append(out.to_ndarray().reshape(-1).astype(np.float32))
    samples = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
    return samples, truncated


def _decode_pyav(path: Path, container: str, max_seconds: float) -> DecodedAudio:
    import av

    try:
        with av.open(str(path)) as box:
            if not box.streams.audio:
                raise AnalyzerError(422, "undecodable_audio", "the file has no audio stream")
            stream = box.streams.audio[0]
            declared = _container_duration(path, container, box)
            if declared is not None and declared.kind == "exact" and declared.seconds > max_seconds:
                raise _too_long(declared.seconds, max_seconds)
            rate = int(stream.codec_context.sample_rate or TARGET_RATE)
            channels = int(stream.codec_context.channels or 1)
            source, truncated = _pyav_samples(box, stream, rate, max_seconds)
    except av.error.FFmpegError as exc:
        raise AnalyzerError(422, "undecodable_audio", f"could not decode audio: {exc}") from exc
    got = len(source) / rate
    if declared is not None and declared.kind == "exact":
        # An exact length that the decoded samples fall well short of: the file was cut.
        truncated = truncated or (declared.seconds > 1.0 and got < 0.9 * declared.seconds)
    return DecodedAudio(
        samples=_resample(source, rate),
        sample_rate=TARGET_RATE,
        source_sample_rate=rate,
        source_channels=channels,
        source_duration=got,
        container=container,
        decoder="pyav",
        truncated=truncated,
        container_duration=declared,
        stats=sample_stats(source[:, np.newaxis], rate, lossy=container in LOSSY),
    )


def decode_file(path: Path, container: str, max_seconds: float) -> DecodedAudio:
    """Decode a spooled upload to 16 kHz mono float32.

    Raises AnalyzerError 422: undecodable_audio, empty_audio (< MIN_DURATION s decoded),
    too_long (more than max_seconds of decoded samples; decoding stops there).
    """
    audio = None
    if container in ("wav", "flac", "ogg"):
        audio = _decode_soundfile(path, container, max_seconds)
    if audio is None:
        audio = _decode_pyav(path, container, max_seconds)
    if audio.duration < MIN_DURATION:
        raise AnalyzerError(422, "empty_audio", "the recording contains no audio samples")
    if audio.duration > max_seconds:
        raise _too_long(audio.duration, max_seconds)
    if not np.all(np.isfinite(audio.samples)):
        raise AnalyzerError(422, "undecodable_audio", "decoded audio contains invalid samples")
    # A DC offset (reported by analyzer.quality) would bias the intensity contour: removed.
    centred = (audio.samples - audio.samples.mean(dtype=np.float64)).astype(np.float32)
    return replace(audio, samples=centred)
