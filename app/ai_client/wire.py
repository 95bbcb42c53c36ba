"""The AI service's wire format (architecture §6): NDJSON progress lines, then one result line."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Score = Annotated[float, Field(ge=0, le=100)]


class AIResult(BaseModel):
    """What we store; a value outside these bounds is a malformed answer, not a result."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    overall_score: Score | None
    pronunciation_accuracy: Score | None = None
    fluency_score: Score | None = None
    rhythm_score: Score | None = None
    detailed_analysis: dict[str, Any]
    sentence_analyses: list[Any] | None = None
    suggestions: str | None = None
    improvement_areas: list[str] | None = None
    analysis_model_version: str | None = Field(default=None, max_length=50)
    processing_time_seconds: float | None = Field(default=None, ge=0, le=9_999_999)


class ProgressLine(BaseModel):
    event: Literal["progress"]
    progress: float = Field(ge=0, le=100)
    step: str | None = None
    message: str | None = None


class ResultLine(BaseModel):
    event: Literal["result"]
    result: AIResult


class ErrorDetail(BaseModel):
    code: str = "error"
    message: str = ""
    status: int = 500


class ErrorLine(BaseModel):
    event: Literal["error"]
    error: ErrorDetail


class Line(BaseModel):
    line: Annotated[ProgressLine | ResultLine | ErrorLine, Field(discriminator="event")]
