"""Why a model gives no prediction: the one type both the decision layer and the OOD checks speak.

Its own module so that ``ood.py`` (which builds refusals) need not import ``decision.py``
(which calls ``ood.py``): the two no longer import each other.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Refusal:
    """Why no answer is given: ``kind`` is "quality" or "ood" (refused: not a usable chest X-ray)
    or "unfamiliar" (referred: a chest X-ray unlike the validated ones); ``reason`` is the
    one line the runner prints, e.g. "not a chest X-ray (score 41.2 > 17.0): no prediction"."""

    kind: str
    reason: str
    score: float | None = None
    threshold: float | None = None
