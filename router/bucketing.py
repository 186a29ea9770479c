"""Unit id -> point in (0, 1) -> variant: portable, sticky and monotone.

The scheme, which any language can reproduce (docs/routing.md has a worked example; the
golden vectors are in router/cases.json):

    point(salt, unit)  = (uint64_be(sha256(utf8(salt + "\\0" + unit))[0:8]) + 0.5) / 2**64
    score(variant)     = weight / -ln(point(salt + "\\0" + variant.name, unit))
    variant(unit)      = the variant with the highest score (the first listed wins a tie)

This is weighted rendezvous hashing: -ln(point) is an exponential variate, so a variant
wins with probability weight / total, and changing one weight only moves the score of that
variant, which is what makes the split monotone for any number of variants.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

from router.model import Variant


def unit_point(salt: str, unit_id: str) -> float:
    """Same salt and unit, same point in (0, 1), in every process."""
    digest = hashlib.sha256(f"{salt}\0{unit_id}".encode()).digest()
    return (int.from_bytes(digest[:8], "big") + 0.5) / 2**64


def score(salt: str, variant: Variant, unit_id: str) -> float:
    """The variant's rendezvous score for this unit; zero weight scores zero."""
    return -variant.weight / math.log(unit_point(f"{salt}\0{variant.name}", unit_id))


def split(salt: str, variants: Sequence[Variant], unit_id: str) -> Variant:
    """Weighted rendezvous hashing: raising a weight only pulls units in."""
    best, best_score = variants[0], -1.0
    for variant in variants:
        s = score(salt, variant, unit_id)
        # Strictly greater: on a tie the variant listed first keeps the unit, in every language.
        if s > best_score:
            best, best_score = variant, s
    return best
