"""The result cache by content: a submit whose analysis was already made finishes at once.

Key: the user, the recording's SHA-256 (`practice_records.audio_sha256`, computed while it
uploaded), the analysis parameters (`task_params`, JSON equality) and what produced the
result (`cache_model`, written with each result). A hit is the user's newest successful task
with that key; the new task is inserted as `success` with a copy of its result, marked with
`reused_from_task_id` (the task whose analysis ran: a copy of a copy names the original), in
the submit's own statement: no job, no AI call. Never across users; never from a failed or
cancelled task; never for a record uploaded before hashes were stored; never when the
request asks for a fresh analysis. Two identical submits in flight at once are both
analysed: only a finished success is a source.
"""

from __future__ import annotations

from collections.abc import Sequence

from app.ai_client.providers import AIProvider
from app.analysis.status import Row
from app.metrics import RESULT_CACHE
from app.settings import Settings

# The result's columns a copy takes as they are (`task_id` and `reused_from_task_id` are its
# own).
COPIED_COLUMNS = (
    "overall_score", "pronunciation_accuracy", "fluency_score", "rhythm_score",
    "detailed_analysis", "sentence_analyses", "suggestions", "improvement_areas",
    "analysis_model_version", "processing_time_seconds", "cache_model",
    "provider", "provider_model", "degraded", "degraded_reason",
)  # fmt: skip


def provider_key(provider: AIProvider, settings: Settings) -> str:
    """What a provider produces, as the cache keys it: `url#model` (the provider's model,
    else AI_MODEL_VERSION), or the URL alone when neither names one. The worker stores it
    with each result of that provider (not with a degraded one's: never reused)."""
    model = provider.model or settings.ai_model_version
    return f"{provider.url}#{model}" if model else provider.url


def cache_key_model(settings: Settings) -> str:
    """The key a submit looks results up under: the preferred provider's (the first of
    AI_PROVIDERS, or AI_SERVICE_URL's), so that a result is reused only when the provider
    that would analyse the recording now made it; change AI_MODEL_VERSION (or the
    provider's model) with the model, and no result of the old one is reused."""
    return provider_key(settings.providers[0], settings)


def source_cte(target: str = "target") -> str:
    """The body of a `source` CTE: per row of `target` (`practice_record_id`,
    `audio_sha256`), the result to reuse, if any, with `source_task_id` and COPIED_COLUMNS.
    Parameters: `:user_id`, `:params` (the task_params JSON), `:cache_model`, `:fresh`."""
    columns = ", ".join(f"res.{column}" for column in COPIED_COLUMNS)
    return f"""
        SELECT tg.practice_record_id, hit.*
        FROM {target} tg CROSS JOIN LATERAL (
            SELECT coalesce(res.reused_from_task_id, t.task_id) AS source_task_id, {columns}
            FROM practice_records pr
            JOIN ai_analysis_tasks t ON t.practice_record_id = pr.practice_record_id
            JOIN ai_analysis_results res ON res.task_id = t.task_id
            WHERE pr.audio_sha256 = tg.audio_sha256
              AND t.user_id = :user_id AND t.status = 'success'
              AND t.task_params = CAST(:params AS jsonb)
              AND res.cache_model = CAST(:cache_model AS text)
            ORDER BY t.completed_at DESC, t.task_id
            LIMIT 1
        ) AS hit
        WHERE NOT CAST(:fresh AS boolean)
    """


def copy_cte(created: str = "created", source: str = "source") -> str:
    """The body of a CTE that stores, for each task of `created` inserted as a hit, the copy
    of its `source` result."""
    columns = ", ".join(COPIED_COLUMNS)
    copied = ", ".join(f"s.{column}" for column in COPIED_COLUMNS)
    return f"""
        INSERT INTO ai_analysis_results (task_id, reused_from_task_id, {columns})
        SELECT c.task_id, s.source_task_id, {copied}
        FROM {created} c JOIN {source} s ON s.practice_record_id = c.practice_record_id
        WHERE c.status = 'success'
    """


def count_lookups(rows: Sequence[Row], fresh: bool) -> None:
    """Count the new tasks of a submit (each with `reused_from_task_id`) in the hits and
    misses metric; `fresh` submits are counted apart, never as misses."""
    for row in rows:
        if row["reused_from_task_id"] is not None:
            RESULT_CACHE.labels("hit").inc()
        else:
            RESULT_CACHE.labels("fresh" if fresh else "miss").inc()
