"""The named steps of an analysis, with stable codes and the zh-TW labels shown to patients."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Step:
    code: str
    label: str  # zh-TW
    index: int  # 1..TOTAL_STEPS for the working steps, 0 otherwise


QUEUED = Step("queued", "排隊等候中", 0)
UPLOADING = Step("uploading", "上傳音訊", 1)
PREPROCESSING = Step("preprocessing", "音訊前處理", 2)
FEATURE_EXTRACTION = Step("feature_extraction", "語音特徵提取", 3)
SCORING = Step("scoring", "評分計算", 4)
SUGGESTIONS = Step("generating_suggestions", "生成建議", 5)
WAITING_RETRY = Step("waiting_retry", "等待重試", 0)
# Claimed, waiting for a free slot of the AI service (its global concurrency cap).
WAITING_AI = Step("waiting_for_ai", "等待 AI 服務", 0)
COMPLETED = Step("completed", "分析完成", 5)
FAILED = Step("failed", "分析失敗", 0)
CANCELLED = Step("cancelled", "已取消", 0)

TOTAL_STEPS = 5
STEPS = {
    step.code: step
    for step in (
        QUEUED,
        UPLOADING,
        PREPROCESSING,
        FEATURE_EXTRACTION,
        SCORING,
        SUGGESTIONS,
        WAITING_RETRY,
        WAITING_AI,
        COMPLETED,
        FAILED,
        CANCELLED,
    )
}

# The AI service's progress steps (architecture §6) mapped onto ours.
AI_STEP_MAP = {
    "decoding": PREPROCESSING,
    "feature_extraction": FEATURE_EXTRACTION,
    "syllable_detection": FEATURE_EXTRACTION,
    "scoring": SCORING,
    "suggestions": SUGGESTIONS,
}

# Our progress while the AI works: its 0..100 maps onto this span; 100 only on success.
AI_PROGRESS_FLOOR = 10
AI_PROGRESS_CEILING = 95


def step_for(code: str | None) -> Step:
    return STEPS.get(code or "", QUEUED)


def overall_progress(ai_progress: float) -> int:
    clamped = min(max(ai_progress, 0.0), 100.0)
    span = AI_PROGRESS_CEILING - AI_PROGRESS_FLOOR
    return AI_PROGRESS_FLOOR + int(clamped * span / 100)


def ai_step(code: str | None, fallback: Step) -> Step:
    return AI_STEP_MAP.get(code or "", fallback)
