"""Imports every model so that `Base.metadata` knows all tables (Alembic, tests)."""

from app.admin.audit import AuditEvent
from app.analysis.models import AnalysisResult, AnalysisTask
from app.db import Base
from app.practice.models import PracticeRecord, PracticeSession
from app.users.models import User

__all__ = [
    "AnalysisResult",
    "AnalysisTask",
    "AuditEvent",
    "Base",
    "PracticeRecord",
    "PracticeSession",
    "User",
]
