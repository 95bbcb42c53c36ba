"""Mandarin tones against a target text (placeholder)."""

from __future__ import annotations

from analyzer.acoustics import VoiceAnalysis
from analyzer.pronunciation import Pronunciation
from analyzer.syllables import Timing


def assess_mandarin(
    text: str, timing: Timing, voice: VoiceAnalysis, language: str
) -> Pronunciation:
    return Pronunciation(None, "tone assessment is not available yet; no value is invented")
