"""Experiment counters per flag, flag version and variant: batched in memory, flushed to a backend.

The request path only adds to an in-process batch (a few dict increments); a named background
task flushes the batch every ~1 s to the backend (rollout/stores/counters.py: memory, the
embedded default, or Redis, shared by every replica). What a backend reads back
(ExperimentCounts: tallies per version and variant) is plain values for the statistics.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

log = logging.getLogger("loopgate.experiments")

# Latency histogram: geometric buckets, four per doubling from 5 ms (bucket i covers
# [5 ms * 2^((i-1)/4), 5 ms * 2^(i/4))), so a p95 read from it is within ~9% of the truth.
HIST_BASE_S = 0.005
HIST_PER_DOUBLING = 4
HIST_BUCKETS = 64  # the last one holds everything above ~2 minutes

# Field names of a tally hash (Redis) or dict (memory).
EXPOSURES, COMPLETIONS, ERRORS, SAFETY = "exposures", "completions", "errors", "safety"
RATING_N, RATING_SUM, RATING_SQ = "rating_n", "rating_sum", "rating_sq"
LATENCY, TTFT, FEEDBACK = "lat:", "ttft:", "fb:"
# Judged pairs: in the tally of the variant whose name sorts first, `pref:<other>:<outcome>`
# counts outcomes from that variant's point of view (win, loss, tie, both_bad).
PREFERENCE = "pref:"
PREFERENCE_OUTCOMES = ("win", "loss", "tie", "both_bad")
_OUTCOME_OF_A = {"a": "win", "b": "loss", "tie": "tie", "both_bad": "both_bad"}
_MIRROR = {"win": "loss", "loss": "win", "tie": "tie", "both_bad": "both_bad"}
# Evaluator scores, per evaluator and its version (`model@hash`): `score:<stat>:<evaluator>:
# <version>` with stat n (count), sum, sq (sum of squares). The same answers' scores where a
# person gave thumbs: `lscore:<stat>:...` with n (labelled), y (thumbs up), yf (score of the
# thumbs-up ones), f and ff (sum and sum of squares of their scores). An evaluator's name has
# no ':' (a config key); its version may, so it is the last part.
SCORE, LABELLED = "score:", "lscore:"
SCORE_STATS = ("n", "sum", "sq")
LABELLED_STATS = ("n", "y", "yf", "f", "ff")
# Sums of ratings are fractional; Redis refuses HINCRBY on a field once it holds a float.
FLOAT_FIELDS = frozenset({RATING_SUM, RATING_SQ})


def is_float_field(name: str) -> bool:
    """Whether a backend must add to this field as a float (HINCRBYFLOAT in Redis)."""
    return name in FLOAT_FIELDS or name.startswith((SCORE, LABELLED))


def score_field(prefix: str, stat: str, evaluator: str, version: str) -> str:
    """`score:n:rm:model@abc` and the like."""
    return f"{prefix}{stat}:{evaluator}:{version}"


def parse_score_field(name: str) -> tuple[str, str, str, str] | None:
    """(prefix, stat, evaluator, version) of a score field; None for any other field."""
    for prefix in (SCORE, LABELLED):
        if name.startswith(prefix):
            parts = name[len(prefix) :].split(":", 2)
            if len(parts) == 3:
                return prefix, parts[0], parts[1], parts[2]
    return None


TallyKey = tuple[str, int, str]  # (flag, flag version, variant)


def bucket_upper(index: int) -> float:
    """Upper edge of bucket `index` in seconds."""
    return float(HIST_BASE_S * 2.0 ** (index / HIST_PER_DOUBLING))


# Precomputed so the request path does a bisect and no float math or string formatting.
_EDGES = [bucket_upper(i) for i in range(HIST_BUCKETS - 1)]
_LAT_FIELDS = [LATENCY + str(i) for i in range(HIST_BUCKETS)]
_TTFT_FIELDS = [TTFT + str(i) for i in range(HIST_BUCKETS)]


def bucket_of(seconds: float) -> int:
    """The histogram bucket a duration falls in (bucket i holds (edge i-1, edge i])."""
    return bisect.bisect_left(_EDGES, seconds)


def quantile(histogram: Mapping[int, float], q: float) -> float | None:
    """The q-quantile from bucket counts, interpolated geometrically inside its bucket."""
    total = sum(histogram.values())
    if total <= 0:
        return None
    rank = q * total
    seen = 0.0
    for index in sorted(histogram):
        count = histogram[index]
        if count <= 0:
            continue
        if seen + count >= rank:
            upper = bucket_upper(index)
            lower = bucket_upper(index - 1) if index > 0 else 0.0
            within = (rank - seen) / count
            if lower <= 0.0:
                return upper * within
            return float(lower * (upper / lower) ** within)
        seen += count
    return bucket_upper(max(histogram))


@dataclass(frozen=True)
class VersionMeta:
    """The weights a flag version split traffic by, and when it was first seen."""

    version: int
    weights: dict[str, float]
    killed: bool
    seen_at: float

    def to_json(self) -> str:
        """Stored form."""
        return json.dumps({"weights": self.weights, "killed": self.killed, "seen_at": self.seen_at})

    @classmethod
    def from_json(cls, version: int, text: str | bytes) -> VersionMeta:
        """Parse the stored form."""
        doc = json.loads(text)
        return cls(
            version=version,
            weights={str(k): float(v) for k, v in doc["weights"].items()},
            killed=bool(doc.get("killed", False)),
            seen_at=float(doc["seen_at"]),
        )


@dataclass
class Tally:
    """Everything counted for one (flag, version, variant): a flat field -> number map."""

    fields: dict[str, float] = field(default_factory=dict)
    units: int | None = None

    def get(self, name: str) -> float:
        """One field, 0 when never counted."""
        return self.fields.get(name, 0.0)

    def histogram(self, prefix: str) -> dict[int, float]:
        """Bucket counts of `lat:` or `ttft:`."""
        return {
            int(name[len(prefix) :]): count
            for name, count in self.fields.items()
            if name.startswith(prefix)
        }

    def feedback(self, kind: str) -> int:
        """Feedback events of one kind."""
        return int(self.get(FEEDBACK + kind))

    def add(self, other: Tally) -> None:
        """Add `other`'s fields into this one (units summed: an upper bound on distinct)."""
        for name, value in other.fields.items():
            self.fields[name] = self.fields.get(name, 0.0) + value
        if other.units is not None:
            self.units = (self.units or 0) + other.units


@dataclass(frozen=True)
class ExperimentCounts:
    """What the backend holds for one flag: version metadata and tallies per (version, variant)."""

    flag: str
    versions: list[VersionMeta]
    tallies: dict[tuple[int, str], Tally]


@dataclass
class Batch:
    """Increments gathered since the last flush."""

    fields: dict[TallyKey, dict[str, float]] = field(default_factory=dict)
    units: dict[TallyKey, set[str]] = field(default_factory=dict)
    versions: dict[tuple[str, int], VersionMeta] = field(default_factory=dict)

    def empty(self) -> bool:
        """True when there is nothing to flush."""
        return not (self.fields or self.units or self.versions)


class CounterBackend(Protocol):
    """Where flushed counts live and are read from."""

    async def apply(self, batch: Batch) -> None:
        """Add a batch."""
        ...

    async def read(self, flag: str) -> ExperimentCounts:
        """Everything counted for a flag."""
        ...

    async def flags(self) -> list[str]:
        """Flags with any counts."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


FlagLookup = Callable[[str], tuple[int, dict[str, float], bool] | None]


class ExperimentCounters:
    """The request path's side: add to a batch in memory; a background task flushes it."""

    def __init__(
        self,
        backend: CounterBackend,
        lookup: FlagLookup | None = None,
        *,
        max_pending_keys: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.backend = backend
        self._lookup = lookup
        self._batch = Batch()
        self._known: set[tuple[str, int]] = set()
        self._max_pending = max_pending_keys
        self._clock = clock
        self.dropped = 0
        self.flush_errors = 0

    def _tally(self, key: TallyKey) -> dict[str, float] | None:
        fields = self._batch.fields.get(key)
        if fields is None:
            if len(self._batch.fields) >= self._max_pending:
                # A backend down for long must not grow memory without bound (FIELD.md 1).
                self.dropped += 1
                return None
            fields = self._batch.fields[key] = {}
        return fields

    def _note_version(self, flag: str, version: int) -> None:
        if (flag, version) in self._known or self._lookup is None:
            return
        found = self._lookup(flag)
        if found is None or found[0] != version:
            return  # the flag moved on already; another replica (or the controller) records it
        self._known.add((flag, version))
        if len(self._known) > 4096:
            self._known.clear()
        _, weights, killed = found
        self._batch.versions[(flag, version)] = VersionMeta(version, weights, killed, self._clock())

    def register_version(
        self, flag: str, version: int, weights: Mapping[str, float], killed: bool, now: float
    ) -> None:
        """Record a flag version's weights now (the controller calls this right after a write)."""
        self._known.add((flag, version))
        self._batch.versions[(flag, version)] = VersionMeta(version, dict(weights), killed, now)

    def count_exchange(
        self,
        flag: str,
        version: int,
        variant: str,
        unit_hash: str,
        status: str,
        latency_s: float,
        ttft_s: float | None,
        safety_findings: int = 0,
    ) -> None:
        """One request assigned by the weighted split, at its end; a few dict increments."""
        self._note_version(flag, version)
        key = (flag, version, variant)
        fields = self._tally(key)
        if fields is None:
            return
        fields[EXPOSURES] = fields.get(EXPOSURES, 0.0) + 1
        if status == "ok":
            fields[COMPLETIONS] = fields.get(COMPLETIONS, 0.0) + 1
            name = _LAT_FIELDS[bucket_of(latency_s)]
            fields[name] = fields.get(name, 0.0) + 1
        elif status == "error":
            fields[ERRORS] = fields.get(ERRORS, 0.0) + 1
        if ttft_s is not None:
            name = _TTFT_FIELDS[bucket_of(ttft_s)]
            fields[name] = fields.get(name, 0.0) + 1
        if safety_findings:
            fields[SAFETY] = fields.get(SAFETY, 0.0) + safety_findings
        if unit_hash:
            units = self._batch.units.get(key)
            if units is None:
                units = self._batch.units[key] = set()
            units.add(unit_hash)

    def count_feedback(
        self, flag: str, version: int, variant: str, kind: str, value: float | None
    ) -> None:
        """One piece of feedback on an answer of (flag, version, variant)."""
        fields = self._tally((flag, version, variant))
        if fields is None:
            return
        name = FEEDBACK + kind
        fields[name] = fields.get(name, 0.0) + 1
        if kind == "report":
            fields[SAFETY] = fields.get(SAFETY, 0.0) + 1
        if kind == "rating" and value is not None:
            fields[RATING_N] = fields.get(RATING_N, 0.0) + 1
            fields[RATING_SUM] = fields.get(RATING_SUM, 0.0) + value
            fields[RATING_SQ] = fields.get(RATING_SQ, 0.0) + value * value

    def count_preference(
        self, flag: str, version: int, variant_a: str, variant_b: str, winner: str
    ) -> None:
        """One judged pair: answer A of variant_a against answer B of variant_b, and the winner.

        Stored once per pair, in the tally of the variant whose name sorts first, so the same
        pair judged as (A, B) or as (B, A) lands in the same fields.
        """
        outcome = _OUTCOME_OF_A.get(winner)
        if outcome is None or variant_a == variant_b:
            return  # two answers of one variant say nothing about which variant is better
        self._note_version(flag, version)
        if variant_b < variant_a:
            variant_a, variant_b, outcome = variant_b, variant_a, _MIRROR[outcome]
        fields = self._tally((flag, version, variant_a))
        if fields is None:
            return
        name = f"{PREFERENCE}{variant_b}:{outcome}"
        fields[name] = fields.get(name, 0.0) + 1

    def count_score(
        self, flag: str, version: int, variant: str, evaluator: str, evaluator_version: str,
        score: float,
    ) -> None:  # fmt: skip
        """One evaluator score of an answer of the weighted split: count, sum, sum of squares."""
        self._note_version(flag, version)
        fields = self._tally((flag, version, variant))
        if fields is None:
            return
        for stat, value in zip(SCORE_STATS, (1.0, score, score * score), strict=True):
            name = score_field(SCORE, stat, evaluator, evaluator_version)
            fields[name] = fields.get(name, 0.0) + value

    def count_labelled_score(
        self, flag: str, version: int, variant: str, evaluator: str, evaluator_version: str,
        score: float, thumbs_up: bool,
    ) -> None:  # fmt: skip
        """A scored answer that a person gave thumbs: the moments PPI and agreement read."""
        fields = self._tally((flag, version, variant))
        if fields is None:
            return
        y = 1.0 if thumbs_up else 0.0
        values = (1.0, y, y * score, score, score * score)
        for stat, value in zip(LABELLED_STATS, values, strict=True):
            name = score_field(LABELLED, stat, evaluator, evaluator_version)
            fields[name] = fields.get(name, 0.0) + value

    async def flush(self) -> None:
        """Hand the batch to the backend; on failure keep it for the next try (bounded)."""
        if self._batch.empty():
            return
        batch, self._batch = self._batch, Batch()
        try:
            await self.backend.apply(batch)
        except Exception:  # the edge: Redis away must not kill the flusher
            self.flush_errors += 1
            log.warning("experiment counters: flush failed; keeping the batch", exc_info=True)
            self._merge_back(batch)

    def _merge_back(self, batch: Batch) -> None:
        current = self._batch
        for key, fields in batch.fields.items():
            target = self._tally(key)
            if target is None:
                continue
            for name, value in fields.items():
                target[name] = target.get(name, 0.0) + value
        for key, units in batch.units.items():
            if key in current.fields:
                current.units.setdefault(key, set()).update(units)
        for vkey, meta in batch.versions.items():
            current.versions.setdefault(vkey, meta)

    async def read(self, flag: str) -> ExperimentCounts:
        """Flush what is pending, then read the backend's numbers."""
        await self.flush()
        return await self.backend.read(flag)

    async def run(self, interval: float) -> None:
        """Flush every `interval` seconds until cancelled (a named task in the lifespan)."""
        while True:
            await asyncio.sleep(interval)
            await self.flush()


def preference_pairs(counts: ExperimentCounts) -> list[tuple[str, str]]:
    """Every pair of variants with a judged pair, each once (names in sorted order)."""
    found: set[tuple[str, str]] = set()
    for (_, variant), tally in counts.tallies.items():
        for name in tally.fields:
            if name.startswith(PREFERENCE):
                other = name[len(PREFERENCE) :].rsplit(":", 1)[0]
                found.add((variant, other))
    return sorted(found)


def preferences(
    counts: ExperimentCounts, candidate: str, baseline: str, min_version: int = 0
) -> dict[str, int]:
    """Judged pairs of candidate against baseline over the flag's versions (>= min_version),
    from the candidate's point of view: {win, loss, tie, both_bad}."""
    first, second = sorted((candidate, baseline))
    out = dict.fromkeys(PREFERENCE_OUTCOMES, 0)
    for (version, variant), tally in counts.tallies.items():
        if variant != first or version < min_version:
            continue
        for outcome in PREFERENCE_OUTCOMES:
            out[outcome] += int(tally.get(f"{PREFERENCE}{second}:{outcome}"))
    if first != candidate:
        out = {outcome: out[_MIRROR[outcome]] for outcome in PREFERENCE_OUTCOMES}
    return out


@contextlib.asynccontextmanager
async def running_counters(
    counters: ExperimentCounters, interval: float
) -> AsyncIterator[ExperimentCounters]:
    """Run the flusher while the block runs; flush once more and close at the end."""
    task = asyncio.create_task(counters.run(interval), name="experiment-counters-flush")
    try:
        yield counters
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        with contextlib.suppress(Exception):
            await counters.flush()
        await counters.backend.aclose()
