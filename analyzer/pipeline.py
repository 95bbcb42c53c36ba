"""Analysis stages. The stage functions run in worker processes; build_result is cheap."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import parselmouth

from analyzer import measures as ms
from analyzer import quality, scoring
from analyzer.acoustics import VoiceAnalysis, analyse_voice
from analyzer.decoding import ContainerDuration, DecodedAudio, FloatArray, decode_file
from analyzer.errors import AnalyzerError
from analyzer.pronunciation import Pronunciation, assess_pronunciation, not_requested
from analyzer.schemas import AnalysisResult, AnalyzeParams
from analyzer.suggestions import suggest
from analyzer.syllables import Timing, analyse_timing

MIN_SPEECH_LEVEL_DB = 25.0
FEW_SYLLABLES = 5


@dataclass(frozen=True)
class AudioInfo:
    """Facts about the source; source_duration is decoded samples / rate (seconds)."""

    container: str
    decoder: str
    source_sample_rate: int
    source_channels: int
    source_duration: float
    truncated: bool
    container_duration: ContainerDuration | None = None
    stats: quality.SampleStats | None = None

    def as_dict(self) -> dict[str, Any]:
        declared = self.container_duration
        return {
            "container": self.container,
            "decoder": self.decoder,
            "source_sample_rate": self.source_sample_rate,
            "source_channels": self.source_channels,
            "source_duration": round(self.source_duration, 3),
            "duration_from": "decoded_samples",
            "truncated": self.truncated,
            # The container's own figure, exact (an index, a frame count) or a bitrate
            # estimate; reported only as such, never used for a limit or a flag.
            "container_duration": None if declared is None
            else {"seconds": round(declared.seconds, 3), "kind": declared.kind},
            "levels": None if self.stats is None else self.stats.as_dict(),
            "analysis_sample_rate": 16000,
        }  # fmt: skip


def warm_up() -> str:
    """Runs once per worker at start-up so the first request does not pay for imports."""
    return str(parselmouth.PRAAT_VERSION)


def decode_stage(path: str, container: str, max_seconds: float) -> DecodedAudio:
    """decode_file on a spooled upload (runs in a worker process)."""
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
        audio.container_duration, audio.stats,
    )  # fmt: skip


def _check_speech(timing: Timing, voice: VoiceAnalysis) -> None:
    loud = timing.speech_level_db is not None and timing.speech_level_db >= MIN_SPEECH_LEVEL_DB
    if not loud or not timing.sounding or (not timing.nuclei and not voice.voiced_stretches):
        raise AnalyzerError(422, "no_speech", "no speech or voicing was detected in the recording")


def _warn(code: str, message: str) -> dict[str, str]:
    return {"code": code, "message": message}


def _warnings(
    info: AudioInfo, values: dict[str, float | None], params: AnalyzeParams, sustained: bool,
    detected: str, model_version: str, findings: list[quality.Finding],
    pron: Pronunciation,
) -> list[dict[str, Any]]:  # fmt: skip
    out: list[dict[str, Any]] = [f.warning() for f in findings]
    if info.truncated:
        out.append(_warn("truncated", "the file ends early; only the decodable part was analysed"))
    if params.task == "sustained_vowel" and detected != "sustained_vowel":
        out.append(_warn("task_mismatch", "task is sustained_vowel but the audio has pauses "
                         "or little voicing; voice norms may not apply"))  # fmt: skip
    if not sustained and (values.get("syllable_count") or 0) < FEW_SYLLABLES:
        out.append(_warn("few_syllables", "fewer than 5 syllables; timing scores are unreliable"))
    if not sustained:
        out.append(_warn("connected_speech_voice_measures", ms.MDVP_NOTE))
    out.extend(pron.warnings)
    if params.model_version and params.model_version != model_version:
        out.append(_warn("model_version_unavailable", f"served {model_version} instead"))
    return out


def _scores(
    values: dict[str, float | None], params: AnalyzeParams, sustained: bool,
    unreliable: dict[str, str],
) -> dict[str, Any]:  # fmt: skip
    if sustained:
        reason = "timing scores do not apply to a sustained vowel"
        return {"fluency_score": scoring.not_applicable(reason),
                "rhythm_score": scoring.not_applicable(reason)}  # fmt: skip
    age = params.speaker_age_group
    out = {
        "fluency_score": scoring.score(scoring.FLUENCY, values, age, scoring.FLUENCY_BASIS),
        "rhythm_score": scoring.score(scoring.RHYTHM, values, age, scoring.RHYTHM_BASIS),
    }
    for name in out:
        if name in unreliable:  # a defect of the recording, not of the speaker: no number
            out[name] = scoring.not_applicable(unreliable[name])
    return out


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
        "audio": info.as_dict(),
        "pauses": [{"start": round(s, 3), "end": round(e, 3)} for s, e in timing.pauses],
        "syllable_nuclei_times": [round(t, 3) for t in timing.nuclei],
    }


def pronunciation_stage(
    samples: FloatArray, rate: int, params: AnalyzeParams, timing: Timing, voice: VoiceAnalysis
) -> Pronunciation:
    """Pronunciation against params.target_text (runs in a worker process); see pronunciation."""
    return assess_pronunciation(samples, rate, params, timing, voice)


def build_result(
    info: AudioInfo, voice: VoiceAnalysis, timing: Timing, params: AnalyzeParams,
    model_version: str, elapsed: float, pron: Pronunciation | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Assemble the stored result object from the measures (scores 0..100 or null + reason)."""
    _check_speech(timing, voice)
    detected = "sustained_vowel" if ms.looks_sustained(timing, voice) else "connected_speech"
    sustained = params.task == "sustained_vowel" or (
        params.task == "auto" and detected == "sustained_vowel"
    )
    values = {**ms.timing_measures(timing), **voice.measures}
    findings = quality.assess(info.stats, values.get("snr_db"), sustained)
    unreliable = quality.unreliable_reasons(findings)
    if pron is None:
        pron = not_requested(params)
    pron_entry = pron.entry()
    if pron.value is not None and "pronunciation_accuracy" in unreliable:
        pron_entry = {**pron_entry, "value": None,
                      "reason": unreliable["pronunciation_accuracy"]}  # fmt: skip
    scores = _scores(values, params, sustained, unreliable)
    fluency, rhythm = scores["fluency_score"]["value"], scores["rhythm_score"]["value"]
    defects = [f for f in findings if f.unreliable]
    measured = pron_entry["value"] is not None
    text, areas = suggest(values, params.speaker_age_group, params.language, sustained,
                          [f.code for f in findings], bool(defects),
                          pron.tips if measured else [])  # fmt: skip
    if measured:
        areas = list(dict.fromkeys([*areas, *pron.improvement_areas]))
    context = {"task_requested": params.task, "task_detected": detected,
               "analysed_as": "sustained_vowel" if sustained else "connected_speech"}  # fmt: skip
    detailed = {
        **_detailed(info, timing, params, context),
        "measures": {k: ms.describe(k, v, sustained) for k, v in values.items()},
        "voice_norms_note": ms.MDVP_NOTE,
        "scores": {**scores, "pronunciation_accuracy": pron_entry},
        "pronunciation_accuracy": pron_entry,
        "recording_quality": [f.warning() for f in findings],
        "warnings": _warnings(
            info, values, params, sustained, detected, model_version, findings, pron
        ),
    }
    timing_rows = [] if sustained else ms.sentence_analyses(timing, voice)
    result = AnalysisResult(
        overall_score=scoring.overall(fluency, rhythm, pron_entry["value"]),
        pronunciation_accuracy=pron_entry["value"],
        fluency_score=fluency,
        rhythm_score=rhythm,
        detailed_analysis=detailed,
        sentence_analyses=timing_rows + pron.sentence_analyses,
        suggestions=text if params.include_suggestions else None,
        improvement_areas=areas if params.include_suggestions else [],
        analysis_model_version=model_version,
        processing_time_seconds=round(elapsed, 3),
    )  # fmt: skip
    return result.model_dump(mode="json")


def analyse_file(
    path: Path, container: str, params: AnalyzeParams, model_version: str, max_seconds: float
) -> dict[str, Any]:
    """The whole pipeline in one process (benchmarks, scripts, tests)."""
    started = time.perf_counter()
    audio = decode_stage(str(path), container, max_seconds)
    voice = features_stage(audio.samples, audio.sample_rate)
    timing = syllables_stage(audio.samples, audio.sample_rate)
    pron = pronunciation_stage(audio.samples, audio.sample_rate, params, timing, voice)
    elapsed = time.perf_counter() - started
    return build_result(info_of(audio), voice, timing, params, model_version, elapsed, pron)
