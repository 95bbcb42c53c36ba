"""Request parameters and the result object (its top-level fields are a stored contract)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Task = Literal["auto", "reading", "spontaneous", "sustained_vowel"]
AgeGroup = Literal["adult", "child"]
MAX_TARGET_TEXT = 2000


class AnalyzeParams(BaseModel):
    """Query parameters of POST /v1/analyze (picklable, sent to the worker)."""

    model_config = ConfigDict(frozen=True)

    language: str = Field(default="zh-TW", max_length=35)
    target_text: str | None = Field(default=None, max_length=MAX_TARGET_TEXT)
    task: Task = "auto"
    speaker_age_group: AgeGroup = "adult"
    analysis_type: str | None = Field(default=None, max_length=100)
    include_suggestions: bool = True
    model_version: str | None = Field(default=None, max_length=100)


class AnalysisResult(BaseModel):
    """Exactly the fields the platform stores."""

    model_config = ConfigDict(extra="forbid")

    overall_score: float | None = Field(default=None, ge=0, le=100)
    pronunciation_accuracy: float | None = Field(default=None, ge=0, le=100)
    fluency_score: float | None = Field(default=None, ge=0, le=100)
    rhythm_score: float | None = Field(default=None, ge=0, le=100)
    detailed_analysis: dict[str, Any]
    sentence_analyses: list[dict[str, Any]]
    suggestions: str | None
    improvement_areas: list[str]
    analysis_model_version: str
    processing_time_seconds: float
