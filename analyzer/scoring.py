"""Measures -> banded component scores -> fluency and rhythm scores (0-100)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

AgeGroup = Literal["adult", "child"]

SOURCES: dict[str, str] = {
    "dejong2009": "de Jong, N. H., & Wempe, T. (2009). Praat script to detect syllable nuclei and "
    "measure speech rate automatically. Behavior Research Methods, 41(2), 385-390.",
    "goldman_eisler1968": "Goldman-Eisler, F. (1968). Psycholinguistics: Experiments in "
    "spontaneous speech. Academic Press (250 ms pause threshold).",
    "kormos2004": "Kormos, J., & Denes, M. (2004). Exploring measures and perceptions of fluency "
    "in the speech of second language learners. System, 32(2), 145-164.",
    "cucchiarini2002": "Cucchiarini, C., Strik, H., & Boves, L. (2002). Quantitative assessment "
    "of second language learners' fluency: comparisons between read and spontaneous speech. "
    "JASA, 111(6), 2862-2873.",
    "jacewicz2010": "Jacewicz, E., Fox, R. A., & Wei, L. (2010). Between-speaker and "
    "within-speaker variation in speech tempo of American English. JASA, 128(2), 839-850.",
    "flipsen2002": "Flipsen, P. (2002). Longitudinal changes in articulation rate and phonetic "
    "phrase length in children with speech delay. JSLHR, 45(1), 100-110.",
    "grabe2002": "Grabe, E., & Low, E. L. (2002). Durational variability in speech and the "
    "rhythm class hypothesis. Papers in Laboratory Phonology 7, 515-546.",
    "dellwo2006": "Dellwo, V. (2006). Rhythm and speech rate: a variation coefficient for "
    "deltaC. In Language and Language-processing (pp. 231-241). Peter Lang.",
}


@dataclass(frozen=True)
class Band:
    """100 inside [ideal_low, ideal_high], falling linearly to 0 at zero_low / zero_high."""

    ideal_low: float
    ideal_high: float
    zero_low: float
    zero_high: float

    def score(self, value: float) -> float:
        if self.ideal_low <= value <= self.ideal_high:
            return 100.0
        if value < self.ideal_low:
            span = self.ideal_low - self.zero_low
            return max(0.0, 100.0 * (1 - (self.ideal_low - value) / span)) if span > 0 else 0.0
        span = self.zero_high - self.ideal_high
        return max(0.0, 100.0 * (1 - (value - self.ideal_high) / span)) if span > 0 else 0.0


INF = float("inf")


@dataclass(frozen=True)
class Component:
    measure: str
    unit: str
    weight: float
    adult: Band
    child: Band
    definition: str
    sources: tuple[str, ...]


FLUENCY: tuple[Component, ...] = (
    Component(
        "speech_rate", "syllables/s", 0.25,
        Band(3.0, 5.5, 1.0, 8.0), Band(2.0, 4.5, 0.7, 7.0),
        "syllable nuclei per second of total recording duration (de Jong & Wempe 2009)",
        ("dejong2009", "cucchiarini2002", "jacewicz2010", "flipsen2002"),
    ),
    Component(
        "articulation_rate", "syllables/s", 0.15,
        Band(3.5, 6.5, 1.5, 9.0), Band(2.5, 5.5, 1.0, 8.0),
        "syllable nuclei per second of phonation time (pauses excluded)",
        ("dejong2009", "jacewicz2010", "flipsen2002"),
    ),
    Component(
        "pause_ratio", "fraction", 0.30,
        Band(0.0, 0.20, -INF, 0.60), Band(0.0, 0.30, -INF, 0.70),
        "silent pauses >= 250 ms as a fraction of the speech span",
        ("goldman_eisler1968", "kormos2004", "cucchiarini2002"),
    ),
    Component(
        "mean_length_of_run", "syllables", 0.30,
        Band(6.0, INF, 1.5, INF), Band(4.0, INF, 1.0, INF),
        "mean number of syllables between pauses >= 250 ms",
        ("kormos2004", "flipsen2002"),
    ),
)  # fmt: skip

RHYTHM: tuple[Component, ...] = (
    Component(
        "isi_varco", "percent", 0.40,
        Band(25.0, 60.0, 8.0, 100.0), Band(25.0, 70.0, 8.0, 110.0),
        "coefficient of variation of inter-syllable intervals within runs (x100)",
        ("dellwo2006",),
    ),
    Component(
        "isi_npvi", "index", 0.40,
        Band(30.0, 70.0, 10.0, 110.0), Band(30.0, 80.0, 10.0, 120.0),
        "normalised pairwise variability index of successive inter-syllable intervals",
        ("grabe2002",),
    ),
    Component(
        "run_rate_cv", "percent", 0.20,
        Band(0.0, 25.0, -INF, 70.0), Band(0.0, 35.0, -INF, 80.0),
        "coefficient of variation of articulation rate across runs of >= 3 syllables (x100)",
        ("kormos2004",),
    ),
)  # fmt: skip

FLUENCY_BASIS = (
    "Weighted mean of banded timing components from automatic syllable-nucleus detection "
    "(de Jong & Wempe 2009) and silent-pause detection; bands are reference-service defaults "
    "informed by the cited literature, not clinical norms."
)
RHYTHM_BASIS = (
    "Weighted mean of banded timing-regularity components over inter-syllable intervals; "
    "a higher score means syllable timing within the typical range of connected speech, "
    "neither machine-even nor erratic. Not a rhythm-class or prosody assessment."
)


def _band_json(band: Band) -> dict[str, float | None]:
    return {k: (None if abs(v) == INF else v) for k, v in asdict(band).items()}


def score(
    components: tuple[Component, ...], measures: dict[str, float | None], age: AgeGroup, basis: str
) -> dict[str, Any]:
    """Score one family of components; value is None when no component can be measured."""
    parts: list[dict[str, Any]] = []
    total = weight = 0.0
    for comp in components:
        value = measures.get(comp.measure)
        band = comp.adult if age == "adult" else comp.child
        part_score = None if value is None else round(band.score(value), 2)
        if part_score is not None:
            total += part_score * comp.weight
            weight += comp.weight
        parts.append(
            {"measure": comp.measure, "value": value, "unit": comp.unit, "score": part_score,
             "weight": comp.weight, "band": _band_json(band)}
        )  # fmt: skip
    value = round(min(100.0, max(0.0, total / weight)), 2) if weight > 0 else None
    return {
        "value": value,
        "basis": basis,
        "bands": age,
        "weights_used": round(weight, 4),
        "components": parts,
        "reason": None if value is not None else "no component could be measured",
    }


def not_applicable(reason: str) -> dict[str, Any]:
    return {"value": None, "reason": reason, "components": [], "basis": None}


def overall(*scores: float | None) -> float | None:
    present = [s for s in scores if s is not None]
    return round(sum(present) / len(present), 2) if present else None


def describe() -> dict[str, Any]:
    """Definitions, bands, weights and sources of every score, for GET /v1/info."""
    from analyzer import english, mandarin

    def family(components: tuple[Component, ...], basis: str) -> dict[str, Any]:
        return {
            "basis": basis,
            "components": [
                {"measure": c.measure, "unit": c.unit, "weight": c.weight,
                 "definition": c.definition, "bands": {"adult": _band_json(c.adult),
                 "child": _band_json(c.child)}, "sources": [SOURCES[s] for s in c.sources]}
                for c in components
            ],
        }  # fmt: skip

    return {
        "fluency_score": family(FLUENCY, FLUENCY_BASIS),
        "rhythm_score": family(RHYTHM, RHYTHM_BASIS),
        "overall_score": {
            "basis": "mean of the scores that could be computed: fluency, rhythm and, when a "
            "target text was measured, pronunciation accuracy"
        },
        "pronunciation_accuracy": {
            "basis": "measured against target_text for Mandarin (zh-TW, zh-CN: tones) and "
            "English (phones); null with the reason otherwise, and when a recording-quality "
            "defect makes it unreliable (see recording_quality)",
            "mandarin": {"method": mandarin.METHOD, "combination": mandarin.COMBINATION,
                         "sources": mandarin.SOURCES, "limits": mandarin.LIMITS},
            "english": {"method": english.METHOD, "combination": english.COMBINATION,
                        "sources": english.SOURCES, "limits": english.LIMITS},
        },
    }  # fmt: skip
