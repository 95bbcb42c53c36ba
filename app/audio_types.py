"""Audio type detection by magic bytes (never by file name or the client's Content-Type)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO

SNIFF_BYTES = 16


@dataclass(frozen=True, slots=True)
class AudioType:
    format: str  # one of SUPPORTED_AUDIO_FORMATS' names
    content_type: str
    extension: str


WAV = AudioType("wav", "audio/wav", "wav")
MP3 = AudioType("mp3", "audio/mpeg", "mp3")
M4A = AudioType("m4a", "audio/mp4", "m4a")
AAC = AudioType("aac", "audio/aac", "aac")
FLAC = AudioType("flac", "audio/flac", "flac")
OGG = AudioType("ogg", "audio/ogg", "ogg")


def sniff_audio_type(head: bytes) -> AudioType | None:
    """Identify an audio container from its first bytes; None when it is not audio we know."""
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return WAV
    if head[:3] == b"ID3":
        return MP3
    if head[4:8] == b"ftyp":
        return M4A
    if head[:4] == b"fLaC":
        return FLAC
    if head[:4] == b"OggS":
        return OGG
    if len(head) >= 2 and head[0] == 0xFF:
        layer_bits = (head[1] >> 1) & 0b11
        if head[1] & 0xF6 == 0xF0:  # ADTS: sync 0xFFF, layer 00
            return AAC
        if head[1] & 0xE0 == 0xE0 and layer_bits != 0:  # MPEG audio frame sync
            return MP3
    return None


def decoded_duration(path: str | BinaryIO, audio_type: AudioType) -> float | None:
    """Seconds of audio in a stored file (a path or a seekable binary reader), from its decoded
    sample count; None if undecodable.

    WAV and FLAC headers carry an exact frame count (libsndfile reads it). Other containers
    are decoded with PyAV and their samples counted: FFmpeg's duration for ADTS AAC and for
    MP3 without a Xing/Info header is extrapolated from the first frames' bitrate, and
    leading silence makes it many times too long (issue 15). Blocking: run it in a thread.
    """
    if audio_type.format in ("wav", "flac"):
        import soundfile

        try:
            info = soundfile.info(path)
        except Exception:
            return None
        return float(info.frames) / info.samplerate if info.samplerate else None
    import av

    samples = rate = 0
    try:
        with av.open(path, mode="r") as box:
            if not box.streams.audio:
                return None
            stream = box.streams.audio[0]
            for frame in box.decode(stream):
                samples += frame.samples
                rate = frame.sample_rate or rate
    except (av.error.FFmpegError, OSError):
        pass  # a file cut short: what was decoded before the error still counts
    return samples / rate if samples and rate else None
