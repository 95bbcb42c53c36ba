"""Recording quality, measured before anything is scored.

Each defect becomes a warning with a person-readable message in zh-TW and English; a defect
that makes a score unreliable nulls that score with the warning as its reason (a lower number
would read as the patient speaking worse). Thresholds and their sources are in THRESHOLDS
(also served by GET /v1/info) and docs/analysis.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

# A sample is "at full scale" at or above this magnitude (float scale, 1.0 = full scale):
# -0.09 dBFS, i.e. within 1 % of the largest value a 16-bit or float file can hold.
FULL_SCALE = 0.99
# Only runs of at least this many consecutive full-scale samples count as clipping: a single
# sample at full scale is a peak, a plateau is clipping. Audacity's Analyze > Find Clipping
# uses 3 consecutive samples as its default start threshold.
CLIP_RUN = 3
# Share of samples in clipped runs that earns the `clipped` warning (audible distortion).
CLIP_WARN_FRACTION = 0.001
# Share above which timing and pronunciation scores are null: clipping flattens the intensity
# peaks and dips that syllable nuclei are found from (de Jong & Wempe 2009 need a 2 dB dip).
# Measured on the committed clean 10 s fixture with rising gain (docs/analysis.md): scores move
# by more than 5 points from about 1 % of samples clipped.
CLIP_UNRELIABLE_FRACTION = 0.01
# Active speech level (energy mean of 20 ms frames within 25 dB of the loudest) below this is
# `low_level`: 20 dB under the -26 dBov nominal level of ITU-T P.56 / G.191 test material.
LOW_LEVEL_DBFS = -46.0
# |mean| of the samples above this share of full scale is `dc_offset` (the analysis removes it).
DC_OFFSET = 0.01
# Source rates below this are `low_sample_rate`: the measures run at 16 kHz and the voice
# measures (HNR, CPPS up to 5 kHz) need the band the source lacks.
MIN_SAMPLE_RATE = 16_000
# SNR (dB, measures.snr_db) below LOW_SNR_DB warns (existing `low_snr`); below this, the
# silence threshold of the syllable detector (25 dB under the loudest frames) lies inside the
# noise, so pauses and nuclei cannot be told apart and timing scores are null.
UNRELIABLE_SNR_DB = 10.0

FRAME_SECONDS = 0.02
LEVEL_WINDOW_DB = 25.0
TIMING_SCORES = ("fluency_score", "rhythm_score", "pronunciation_accuracy")

THRESHOLDS: dict[str, dict[str, Any]] = {
    "clipped": {
        "full_scale": FULL_SCALE,
        "min_run_samples": CLIP_RUN,
        "min_run_samples_lossy": 1,
        "warn_fraction": CLIP_WARN_FRACTION,
        "unreliable_fraction": CLIP_UNRELIABLE_FRACTION,
        "source": "Audacity Find Clipping (run of 3 samples); unreliable share measured on the "
        "committed fixtures (docs/analysis.md)",
    },
    "low_level": {
        "active_level_dbfs_below": LOW_LEVEL_DBFS,
        "source": "ITU-T P.56 active speech level; -26 dBov nominal level of ITU-T G.191",
    },
    "dc_offset": {"abs_mean_above": DC_OFFSET, "source": "reference-service choice"},
    "low_sample_rate": {
        "below_hz": MIN_SAMPLE_RATE,
        "source": "analysis rate 16 kHz; CPPS fits up to 5 kHz (Maryn & Weenink 2015)",
    },
    "low_snr": {
        "warn_below_db": 15.0,
        "unreliable_below_db": UNRELIABLE_SNR_DB,
        "source": "silence threshold 25 dB below the 0.99 quantile (de Jong & Wempe 2009)",
    },
}


@dataclass(frozen=True)
class SampleStats:
    """Level facts of the decoded source samples (before resampling; float, 1.0 = full scale).

    clipped_fraction: share of samples in runs of >= CLIP_RUN samples with |x| >= FULL_SCALE
    (any such sample for lossy codecs; per channel, then the worst channel);
    longest_clip_run: in samples; active_level_dbfs: energy mean of 20 ms frames within 25 dB
    of the loudest frame, dB re full scale.
    """

    peak: float
    clipped_fraction: float
    clip_runs: int
    longest_clip_run: int
    dc_offset: float
    active_level_dbfs: float | None
    sample_rate: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "peak": round(self.peak, 4),
            "clipped_fraction": round(self.clipped_fraction, 5),
            "clip_runs": self.clip_runs,
            "longest_clip_run_ms": round(1000.0 * self.longest_clip_run / self.sample_rate, 2),
            "dc_offset": round(self.dc_offset, 5),
            "active_level_dbfs": None
            if self.active_level_dbfs is None
            else round(self.active_level_dbfs, 2),
            "sample_rate": self.sample_rate,
        }


def _clip_runs(channel: npt.NDArray[np.float32], min_run: int) -> tuple[int, int, int]:
    """(samples in runs of >= min_run full-scale samples, number of runs, longest run)."""
    at_full = np.abs(channel) >= FULL_SCALE
    if not at_full.any():
        return 0, 0, 0
    padded = np.concatenate([[False], at_full, [False]])
    edges = np.flatnonzero(np.diff(padded.astype(np.int8)))
    lengths = edges[1::2] - edges[::2]
    runs = lengths[lengths >= min_run]
    return int(runs.sum()), len(runs), int(runs.max()) if len(runs) else 0


def _active_level(mono: npt.NDArray[np.float32], rate: int) -> float | None:
    frame = max(1, int(FRAME_SECONDS * rate))
    n = len(mono) // frame
    if n == 0:
        return None
    power = np.mean(mono[: n * frame].astype(np.float64).reshape(n, frame) ** 2, axis=1)
    if not np.any(power > 0):
        return None
    db = 10 * np.log10(np.maximum(power, 1e-20))
    active = power[db >= db.max() - LEVEL_WINDOW_DB]
    return float(10 * np.log10(np.mean(active)))


def sample_stats(data: npt.NDArray[np.float32], rate: int, lossy: bool = False) -> SampleStats:
    """Measure clipping, DC offset and level of decoded source samples.

    data: (frames, channels) float32 at the source rate, 1.0 = full scale. lossy: decoded
    from a lossy codec (MP3, AAC, Vorbis, Opus), whose reconstruction rings around a clipped
    plateau instead of holding it, so every sample at or beyond full scale counts, not only
    runs (a clean recording normalised to 0 dBFS and encoded has none). Never raises.
    """
    frames = max(1, data.shape[0])
    clipped = runs = longest = 0
    for ch in range(data.shape[1]):
        c, r, lg = _clip_runs(data[:, ch], 1 if lossy else CLIP_RUN)
        if c > clipped:
            clipped, runs = c, r
        longest = max(longest, lg)
    mono = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    return SampleStats(
        peak=float(np.abs(data).max()) if data.size else 0.0,
        clipped_fraction=clipped / frames,
        clip_runs=runs,
        longest_clip_run=longest,
        dc_offset=float(mono.mean()) if len(mono) else 0.0,
        active_level_dbfs=_active_level(mono, rate),
        sample_rate=rate,
    )


@dataclass(frozen=True)
class Finding:
    """One quality warning; `unreliable` lists the scores it nulls."""

    code: str
    message_en: str
    message_zh_tw: str
    value: float | None
    unreliable: tuple[str, ...] = ()

    def warning(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "message": self.message_en,
            "message_en": self.message_en,
            "message_zh_tw": self.message_zh_tw,
            "value": self.value,
            "unreliable_scores": list(self.unreliable),
        }


def assess(stats: SampleStats | None, snr_db: float | None, sustained: bool) -> list[Finding]:
    """Quality findings of one recording, most serious first.

    stats: from sample_stats (None: not measured); snr_db: measures.snr_db; sustained: the
    recording is analysed as a sustained vowel (no timing scores to null).
    """
    out: list[Finding] = []
    if stats is not None:
        share = stats.clipped_fraction
        if share >= CLIP_WARN_FRACTION:
            severe = share >= CLIP_UNRELIABLE_FRACTION
            pct = f"{100 * share:.1f}"
            out.append(Finding(
                "clipped",
                f"The recording is clipped ({pct}% of samples at full scale): the sound was too "
                "loud for the microphone. Move the microphone (phone) a little further from your "
                "mouth or speak a little more softly, and record again."
                + (" Timing and pronunciation scores are not given for this recording."
                   if severe else ""),
                f"錄音有削波失真（{pct}% 的取樣達到最大音量）：聲音對麥克風來說太大了。"
                "請把麥克風（手機）離嘴巴稍微遠一點，或稍微小聲一點，再錄一次。"
                + ("這段錄音不提供節奏、流暢度與發音分數。" if severe else ""),
                round(share, 5),
                TIMING_SCORES if severe and not sustained else (),
            ))  # fmt: skip
        level = stats.active_level_dbfs
        if level is not None and level < LOW_LEVEL_DBFS:
            out.append(Finding(
                "low_level",
                f"The recording is very quiet ({level:.0f} dBFS). Hold the microphone about a "
                "hand's width from your mouth, or turn the recording level up.",
                f"錄音音量很小（{level:.0f} dBFS）。請把麥克風放在離嘴巴約一個手掌的距離，"
                "或調高錄音音量。",
                round(level, 2),
            ))  # fmt: skip
        if abs(stats.dc_offset) > DC_OFFSET:
            out.append(Finding(
                "dc_offset",
                f"The signal has a DC offset ({stats.dc_offset:+.3f} of full scale), often a "
                "microphone or adapter fault; it was removed before analysis.",
                f"訊號有直流偏移（{stats.dc_offset:+.3f}），常見於麥克風或轉接頭的問題；"
                "分析前已先移除。",
                round(stats.dc_offset, 5),
            ))  # fmt: skip
        if stats.sample_rate < MIN_SAMPLE_RATE:
            out.append(Finding(
                "low_sample_rate",
                f"The recording was made at {stats.sample_rate} Hz; at least 16000 Hz is "
                "needed for the voice-quality measures (HNR, CPPS), which may be unreliable. "
                "Choose a higher quality setting in the recording app.",
                f"錄音取樣率為 {stats.sample_rate} Hz；聲音品質指標（HNR、CPPS）需要至少 "
                "16000 Hz，數值可能不可靠。請在錄音 App 中選擇較高的音質。",
                float(stats.sample_rate),
            ))  # fmt: skip
    if not sustained and snr_db is not None and snr_db < 15.0:
        severe = snr_db < UNRELIABLE_SNR_DB
        out.append(Finding(
            "low_snr",
            f"Background noise is high (estimated SNR {snr_db:.1f} dB); measures may be "
            "unreliable. Record in a quiet room next time."
            + (" Timing and pronunciation scores are not given for this recording."
               if severe else ""),
            f"背景噪音偏高（估計訊噪比 {snr_db:.1f} dB），數值可能不可靠。下次請在安靜的地方錄音。"
            + ("這段錄音不提供節奏、流暢度與發音分數。" if severe else ""),
            round(snr_db, 2),
            TIMING_SCORES if severe else (),
        ))  # fmt: skip
    return out


def unreliable_reasons(findings: list[Finding]) -> dict[str, str]:
    """Score name -> the reason it is null, from the findings that make it unreliable."""
    reasons: dict[str, str] = {}
    for finding in findings:
        for name in finding.unreliable:
            reasons.setdefault(name, f"{finding.code}: {finding.message_en}")
    return reasons
