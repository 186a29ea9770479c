"""Drift: rolling profiles of prompts and answers per flag/variant against a frozen baseline.

A profile is, per feature, a count per bucket over the last `window` answers. Each feature
is compared with the baseline by the population stability index,

    PSI = sum_i (a_i - e_i) * ln(a_i / e_i),   a_i = (n_i + 0.5) / (N + 0.5 * B),
                                               e_i = (m_i + 0.5) / (M + 0.5 * B),

where n_i (N) are the recent counts (total), m_i (M) the baseline's, and B the number of
buckets: additive smoothing by half a count keeps empty buckets finite. Rule of thumb:
below 0.1 stable, 0.1 to 0.25 moderate shift, above 0.25 a significant shift.

Pure apart from DriftMonitor, which holds the windows (bounded: `window` answers per
profile, `max_profiles` profiles, least recently fed evicted first).
"""

from __future__ import annotations

import itertools
import math
import re
from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

SMOOTHING = 0.5

# Length buckets in tokens: powers of two, so one bucket is "about this long".
LENGTH_EDGES = (8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
LENGTH_BUCKETS = tuple(
    [f"<{LENGTH_EDGES[0]}"]
    + [f"{lo}-{hi}" for lo, hi in itertools.pairwise(LENGTH_EDGES)]
    + [f">={LENGTH_EDGES[-1]}"]
)
SCRIPTS = ("none", "latin", "cyrillic", "greek", "arabic", "hebrew", "devanagari", "cjk", "other")
FINISH_REASONS = ("stop", "length", "tool_calls", "content_filter", "other", "none")
BINARY = ("no", "yes")

# Feature -> its bucket names. Order fixes the tuple layout of an observation.
FEATURES: dict[str, tuple[str, ...]] = {
    "prompt_length": LENGTH_BUCKETS,
    "prompt_script": SCRIPTS,
    "answer_length": LENGTH_BUCKETS,
    "answer_script": SCRIPTS,
    "refusal": BINARY,
    "finish_reason": FINISH_REASONS,
    "tool_calls": BINARY,
}
FEATURE_NAMES = tuple(FEATURES)

# Unicode ranges per script; counted on a bounded sample of the text.
_SCRIPT_PATTERNS = {
    "latin": re.compile(r"[A-Za-z\u00c0-\u024f]"),
    "cyrillic": re.compile(r"[\u0400-\u052f]"),
    "greek": re.compile(r"[\u0370-\u03ff]"),
    "arabic": re.compile(r"[\u0600-\u06ff\u0750-\u077f]"),
    "hebrew": re.compile(r"[\u0590-\u05ff]"),
    "devanagari": re.compile(r"[\u0900-\u097f]"),
    "cjk": re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]"),
}
_ASCII_LETTER = re.compile(r"[A-Za-z]")
_SCRIPT_SAMPLE = 256
_REFUSAL = re.compile(
    r"\b(?:i(?:'m| am) sorry,? but|i can(?:not|'t|\u2019t) (?:help|assist|provide|comply|do that)"
    r"|i(?:'m| am) (?:not able|unable) to (?:help|assist|provide|comply)"
    r"|i won(?:'t|\u2019t) be able to|as an ai(?: language model)?,? i)",
    re.IGNORECASE,
)
_REFUSAL_SAMPLE = 400


def length_bucket(tokens: int) -> int:
    """Bucket index of a token count."""
    for index, edge in enumerate(LENGTH_EDGES):
        if tokens < edge:
            return index
    return len(LENGTH_EDGES)


def script_bucket(text: str) -> int:
    """Bucket index of the dominant script among the letters of the text's start."""
    if not text:
        return 0
    sample = text[:_SCRIPT_SAMPLE]
    if sample.isascii():  # the common case: one C-speed check
        return 1 if _ASCII_LETTER.search(sample) else SCRIPTS.index("other")
    best, best_count = "other", 0
    for name, pattern in _SCRIPT_PATTERNS.items():
        count = len(pattern.findall(sample))
        if count > best_count:
            best, best_count = name, count
    return SCRIPTS.index(best)


def finish_bucket(reason: str | None) -> int:
    """Bucket index of a finish reason."""
    if reason is None:
        return FINISH_REASONS.index("none")
    try:
        return FINISH_REASONS.index(reason)
    except ValueError:
        return FINISH_REASONS.index("other")


def is_refusal(text: str) -> bool:
    """True when the answer opens with refusal phrasing."""
    return bool(text) and _REFUSAL.search(text, 0, _REFUSAL_SAMPLE) is not None


def estimate_tokens(text: str) -> int:
    """About four characters a token: for when the upstream reported no usage."""
    return (len(text) + 3) // 4


@dataclass(frozen=True, slots=True)
class Observation:
    """One answer's bucket per feature, in FEATURE_NAMES order."""

    buckets: tuple[int, ...]


def observe(
    *,
    prompt: str,
    answer: str,
    prompt_tokens: int,
    completion_tokens: int,
    finish_reason: str | None,
    tool_calls: bool,
) -> Observation:
    """Profile one exchange; O(text) on bounded samples of prompt and answer."""
    return Observation(
        (
            length_bucket(prompt_tokens or estimate_tokens(prompt)),
            script_bucket(prompt),
            length_bucket(completion_tokens or estimate_tokens(answer)),
            script_bucket(answer),
            1 if is_refusal(answer) else 0,
            finish_bucket(finish_reason),
            1 if tool_calls else 0,
        )
    )


def psi(recent: Sequence[int], baseline: Sequence[int], smoothing: float = SMOOTHING) -> float:
    """Population stability index of recent counts against baseline counts (smoothed)."""
    if len(recent) != len(baseline):
        raise ValueError("recent and baseline need the same buckets")
    buckets = len(recent)
    n = sum(recent) + smoothing * buckets
    m = sum(baseline) + smoothing * buckets
    total = 0.0
    for r, b in zip(recent, baseline, strict=True):
        a = (r + smoothing) / n
        e = (b + smoothing) / m
        total += (a - e) * math.log(a / e)
    return total


@dataclass
class Profile:
    """Counts per feature per bucket over a window of observations."""

    counts: list[list[int]]
    total: int = 0

    @classmethod
    def empty(cls) -> Profile:
        """No observations yet."""
        return cls([[0] * len(b) for b in FEATURES.values()])

    def add(self, obs: Observation, sign: int = 1) -> None:
        """Count an observation in (sign 1) or out (sign -1)."""
        for feature, bucket in enumerate(obs.buckets):
            self.counts[feature][bucket] += sign
        self.total += sign

    def copy(self) -> Profile:
        """An independent copy (a baseline must not move with the window)."""
        return Profile([list(c) for c in self.counts], self.total)

    def to_json(self) -> dict[str, Any]:
        """Plain data for a baseline file or the admin API."""
        return {
            "total": self.total,
            "features": {
                name: dict(zip(FEATURES[name], self.counts[i], strict=True))
                for i, name in enumerate(FEATURE_NAMES)
            },
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Profile:
        """Read what to_json wrote; unknown features and buckets are ignored."""
        profile = cls.empty()
        features = data.get("features", {})
        for i, name in enumerate(FEATURE_NAMES):
            by_bucket = features.get(name, {})
            for j, bucket in enumerate(FEATURES[name]):
                profile.counts[i][j] = int(by_bucket.get(bucket, 0))
        profile.total = int(data.get("total", 0))
        return profile


def compare(recent: Profile, baseline: Profile) -> dict[str, float]:
    """PSI per feature."""
    return {name: psi(recent.counts[i], baseline.counts[i]) for i, name in enumerate(FEATURE_NAMES)}


Key = tuple[str, str]  # (flag, variant)


class _Window:
    __slots__ = ("items", "profile")

    def __init__(self, size: int) -> None:
        self.items: deque[Observation] = deque(maxlen=size)
        self.profile = Profile.empty()


class DriftMonitor:
    """Rolling windows per flag/variant and their frozen baselines; memory is bounded."""

    def __init__(self, window: int = 2000, max_profiles: int = 256, min_samples: int = 200):
        self.window = window
        self.max_profiles = max_profiles
        self.min_samples = min_samples
        self._windows: OrderedDict[Key, _Window] = OrderedDict()
        self.baselines: dict[Key, Profile] = {}
        self.frozen_at: dict[Key, float] = {}

    def add(self, flag: str, variant: str, obs: Observation) -> None:
        """Count one exchange into its flag/variant's window."""
        key = (flag, variant)
        win = self._windows.get(key)
        if win is None:
            if len(self._windows) >= self.max_profiles:
                self._windows.popitem(last=False)
            win = self._windows[key] = _Window(self.window)
        else:
            self._windows.move_to_end(key)
        if len(win.items) == self.window:
            win.profile.add(win.items[0], -1)
        win.items.append(obs)
        win.profile.add(obs)

    def keys(self) -> list[Key]:
        """Flag/variant pairs with a window."""
        return list(self._windows)

    def recent(self, flag: str, variant: str) -> Profile | None:
        """The window's profile now (a copy), or None."""
        win = self._windows.get((flag, variant))
        return win.profile.copy() if win is not None else None

    def freeze(self, now: float, flag: str | None = None) -> list[Key]:
        """Make the current windows (of one flag, or all) the baselines; returns the keys."""
        frozen = []
        for key, win in self._windows.items():
            if flag is not None and key[0] != flag:
                continue
            self.baselines[key] = win.profile.copy()
            self.frozen_at[key] = now
            frozen.append(key)
        return frozen

    def scores(self) -> dict[Key, dict[str, float]]:
        """PSI per feature for every pair with enough samples in both window and baseline."""
        out: dict[Key, dict[str, float]] = {}
        for key, win in self._windows.items():
            base = self.baselines.get(key)
            if base is None or base.total < self.min_samples:
                continue
            if win.profile.total < self.min_samples:
                continue  # too few answers to tell drift from noise: no value at all
            out[key] = compare(win.profile, base)
        return out

    def samples(self) -> dict[Key, int]:
        """Answers in each window."""
        return {key: win.profile.total for key, win in self._windows.items()}

    def baseline_json(self) -> dict[str, Any]:
        """The baselines as plain data (a file, or the admin API)."""
        return {
            "version": 1,
            "profiles": [
                {
                    "flag": key[0],
                    "variant": key[1],
                    "frozen_at": self.frozen_at.get(key, 0.0),
                    **profile.to_json(),
                }
                for key, profile in sorted(self.baselines.items())
            ],
        }

    def load_baseline(self, data: Mapping[str, Any]) -> int:
        """Replace the baselines with what baseline_json wrote; returns how many."""
        baselines: dict[Key, Profile] = {}
        frozen: dict[Key, float] = {}
        for item in data.get("profiles", []):
            key = (str(item["flag"]), str(item["variant"]))
            baselines[key] = Profile.from_json(item)
            frozen[key] = float(item.get("frozen_at", 0.0))
        self.baselines, self.frozen_at = baselines, frozen
        return len(baselines)
