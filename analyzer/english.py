"""English phones against a target text (placeholder)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from analyzer.pronunciation import Pronunciation
from analyzer.syllables import Timing


def assess_english(
    samples: npt.NDArray[np.float32], rate: int, text: str, timing: Timing
) -> Pronunciation:
    return Pronunciation(None, "phone assessment is not available yet; no value is invented")
