"""Analysis stages. The stage functions run in worker processes; build_result is cheap."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import parselmouth

from analyzer import measures as ms
from analyzer import scoring
from analyzer.acoustics import VoiceAnalysis, analyse_voice
from analyzer.decoding import DecodedAudio, FloatArray, decode_file
from analyzer.errors import AnalyzerError
from analyzer.schemas import AnalysisResult, AnalyzeParams
from analyzer.suggestions import suggest
from analyzer.syllables import Timing, analyse_timing

NO_ALIGNMENT = (
    "Target-text alignment is not supported in the reference service, so pronunciation "
    "accuracy cannot be measured; no value is invented."
)
PRONUNCIATION = {"value": None, "reason": NO_ALIGNMENT}
MIN_SPEECH_LEVEL_DB = 25.0
FEW_SYLLABLES = 5


@dataclass(frozen=True)
class AudioInfo:
    container: str
    decoder: str
    source_sample_rate: int
    source_channels: int
    source_duration: float
    truncated: bool


def warm_up() -> str:
    """Runs once per worker at start-up so the first request does not pay for imports."""
    return str(parselmouth.PRAAT_VERSION)


def decode_stage(path: str, container: str, max_seconds: float) -> DecodedAudio:
    return decode_file(Path(path), container, max_seconds)


def _sound(samples: FloatArray, rate: int) -> parselmouth.Sound:
    return parselmouth.Sound(samples.astype(np.float64), sampling_frequency=rate)


def features_stage(samples: FloatArray, rate: int) -> VoiceAnalysis:
    return analyse_voice(_sound(samples, rate))


def syllables_stage(samples: FloatArray, rate: int) -> Timing:
    return analyse_timing(_sound(samples, rate))


def info_of(audio: DecodedAudio) -> AudioInfo:
    return AudioInfo(
        audio.container, audio.decoder, audio.source_sample_rate,
        audio.source_channels, audio.source_duration, audio.truncated,
    )  # fmt: skip


def _check_speech(timing: Timing, voice: VoiceAnalysis) -> None:
    loud = timing.speech_level_db is not None and timing.speech_level_db >= MIN_SPEECH_LEVEL_DB
    if not loud or not timing.sounding or (not timing.nuclei and not voice.voiced_stretches):
        raise AnalyzerError(422, "no_speech", "no speech or voicing was detected in the recording")


def _warn(code: str, message: str) -> dict[str, str]:
    return {"code": code, "message": message}


def _warnings(
    info: AudioInfo, values: dict[str, float | None], params: AnalyzeParams, sustained: bool,
    detected: str, model_version: str,
) -> list[dict[str, str]]:  # fmt: skip
    out = []
    if info.truncated:
        out.append(_warn("truncated", "the file ends early; only the decodable part was analysed"))
    snr = values.get("snr_db")
    if not sustained and snr is not None and snr < ms.LOW_SNR_DB:
        out.append(_warn("low_snr", f"estimated SNR {snr:.1f} dB; measures may be unreliable"))
    if params.task == "sustained_vowel" and detected != "sustained_vowel":
        out.append(_warn("task_mismatch", "task is sustained_vowel but the audio has pauses "
                         "or little voicing; voice norms may not apply"))  # fmt: skip
    if not sustained and (values.get("syllable_count") or 0) < FEW_SYLLABLES:
        out.append(_warn("few_syllables", "fewer than 5 syllables; timing scores are unreliable"))
    if not sustained:
        out.append(_warn("connected_speech_voice_measures", ms.MDVP_NOTE))
    if params.target_text:
        out.append(_warn("alignment_unsupported", NO_ALIGNMENT))
    if params.model_version and params.model_version != model_version:
        out.append(_warn("model_version_unavailable", f"served {model_version} instead"))
    return out


def _scores(
    values: dict[str, float | None], params: AnalyzeParams, sustained: bool
) -> dict[str, Any]:
    if sustained:
        reason = "timing scores do not apply to a sustained vowel"
        return {"fluency_score": scoring.not_applicable(reason),
                "rhythm_score": scoring.not_applicable(reason)}  # fmt: skip
    age = params.speaker_age_group
    return {
        "fluency_score": scoring.score(scoring.FLUENCY, values, age, scoring.FLUENCY_BASIS),
        "rhythm_score": scoring.score(scoring.RHYTHM, values, age, scoring.RHYTHM_BASIS),
    }


def _detailed(
    info: AudioInfo, timing: Timing, params: AnalyzeParams, context: dict[str, str]
) -> dict[str, Any]:
    """Recording, request and segmentation facts for detailed_analysis."""
    return {
        "duration_seconds": round(timing.duration, 3),
        **context,
        "language": params.language,
        "speaker_age_group": params.speaker_age_group,
        "analysis_type": params.analysis_type,
        "target_text_provided": bool(params.target_text),
        "audio": {**info.__dict__, "analysis_sample_rate": 16000},
        "pauses": [{"start": round(s, 3), "end": round(e, 3)} for s, e in timing.pauses],
        "syllable_nuclei_times": [round(t, 3) for t in timing.nuclei],
    }


def build_result(
    info: AudioInfo, voice: VoiceAnalysis, timing: Timing, params: AnalyzeParams,
    model_version: str, elapsed: float,
) -> dict[str, Any]:  # fmt: skip
    """Assemble the stored result object from the measures."""
    _check_speech(timing, voice)
    detected = "sustained_vowel" if ms.looks_sustained(timing, voice) else "connected_speech"
    sustained = params.task == "sustained_vowel" or (
        params.task == "auto" and detected == "sustained_vowel"
    )
    values = {**ms.timing_measures(timing), **voice.measures}
    scores = _scores(values, params, sustained)
    fluency, rhythm = scores["fluency_score"]["value"], scores["rhythm_score"]["value"]
    text, areas = suggest(values, params.speaker_age_group, params.language, sustained)
    context = {"task_requested": params.task, "task_detected": detected,
               "analysed_as": "sustained_vowel" if sustained else "connected_speech"}  # fmt: skip
    detailed = {
        **_detailed(info, timing, params, context),
        "measures": {k: ms.describe(k, v, sustained) for k, v in values.items()},
        "voice_norms_note": ms.MDVP_NOTE,
        "scores": {**scores, "pronunciation_accuracy": PRONUNCIATION},
        "pronunciation_accuracy": PRONUNCIATION,
        "warnings": _warnings(info, values, params, sustained, detected, model_version),
    }
    result = AnalysisResult(
        overall_score=scoring.overall(fluency, rhythm),
        pronunciation_accuracy=None,
        fluency_score=fluency,
        rhythm_score=rhythm,
        detailed_analysis=detailed,
        sentence_analyses=[] if sustained else ms.sentence_analyses(timing, voice),
        suggestions=text if params.include_suggestions else None,
        improvement_areas=areas if params.include_suggestions else [],
        analysis_model_version=model_version,
        processing_time_seconds=round(elapsed, 3),
    )
    return result.model_dump(mode="json")


def analyse_file(
    path: Path, container: str, params: AnalyzeParams, model_version: str, max_seconds: float
) -> dict[str, Any]:
    """The whole pipeline in one process (benchmarks, scripts)."""
    started = time.perf_counter()
    audio = decode_stage(str(path), container, max_seconds)
    voice = features_stage(audio.samples, audio.sample_rate)
    timing = syllables_stage(audio.samples, audio.sample_rate)
    elapsed = time.perf_counter() - started
    return build_result(info_of(audio), voice, timing, params, model_version, elapsed)
