from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal, Self

from pydantic import BaseModel, Field, model_validator

from app.analysis.lanes import Lane
from app.text import CleanText


class AnalysisParameters(BaseModel):
    analysis_type: Literal["full", "quick", "fluency", "rhythm", "pronunciation"] = "full"
    include_suggestions: bool = True
    model_version: CleanText | None = Field(default=None, max_length=50)
    language: str = Field(
        default="zh-TW", max_length=20, pattern=r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$"
    )
    target_text: CleanText | None = Field(default=None, max_length=2000)


class SubmitRequest(BaseModel):
    practice_record_id: uuid.UUID | None = None
    practice_session_id: uuid.UUID | None = None
    parameters: AnalysisParameters = Field(default_factory=AnalysisParameters)
    fresh: bool = Field(
        default=False,
        description=(
            "Analyse again even when an earlier successful analysis of yours has the same"
            " recording (by content), parameters and model: by default such a submit finishes"
            " at once with a copy of that result (`reused_from_task_id`)."
        ),
    )

    @model_validator(mode="after")
    def _exactly_one_target(self) -> Self:
        if (self.practice_record_id is None) == (self.practice_session_id is None):
            raise ValueError("give exactly one of practice_record_id and practice_session_id")
        return self


class SubmittedTask(BaseModel):
    task_id: uuid.UUID
    practice_record_id: uuid.UUID
    job_id: str | None
    status: str
    queue_position: int | None
    estimated_completion_time: datetime | None
    # Set when the task finished at once with a copy of that task's result (the result cache).
    reused_from_task_id: uuid.UUID | None = None
    lane: Lane


class SessionSubmitted(BaseModel):
    practice_session_id: uuid.UUID
    tasks: list[SubmittedTask]


class CurrentStep(BaseModel):
    code: str
    label: str
    index: int


class TaskStatusOut(BaseModel):
    task_id: uuid.UUID
    practice_record_id: uuid.UUID
    practice_session_id: uuid.UUID | None
    status: str
    progress: int
    current_step: CurrentStep
    total_steps: int
    started_at: datetime | None
    completed_at: datetime | None
    estimated_remaining_time: str | None
    worker_name: str | None
    retry_count: int
    queue_position: int | None
    # The priority lane it waits in: interactive (one recording, its user waits) or batch.
    lane: Lane
    error_code: str | None
    error_message: str | None
    cancel_requested: bool
    updated_at: datetime


class SessionStatusOut(BaseModel):
    practice_session_id: uuid.UUID
    tasks: list[TaskStatusOut]


class AnalysisResultOut(BaseModel):
    task_id: uuid.UUID
    result_id: uuid.UUID
    overall_score: float | None
    pronunciation_accuracy: float | None
    fluency_score: float | None
    rhythm_score: float | None
    detailed_analysis: dict[str, Any]
    sentence_analyses: list[Any] | None
    suggestions: str | None
    improvement_areas: list[Any] | None
    analysis_model_version: str | None
    processing_time_seconds: float | None
    # A copy of the result of this earlier task of the user's, whose analysis ran (the result
    # cache: same recording, parameters and model); None for an analysis of its own.
    reused_from_task_id: uuid.UUID | None = None
    completed_at: datetime | None
    # Which AI provider produced it (AI_PROVIDERS' name; None for results stored before
    # providers), the model asked of it (None: the provider names none), and whether it is a
    # degraded result (a fallback provider's, e.g. acoustic measures only) and why.
    provider: str | None = None
    provider_model: str | None = None
    degraded: bool = False
    degraded_reason: str | None = None


class LaneChange(BaseModel):
    """An admin's move of a task to another priority lane."""

    lane: Lane
