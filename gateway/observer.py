"""Observer: the safety check and the drift profile of each finished exchange, off the hot path.

`observe` runs after the answer has been sent (from Runtime.record): the built-in safety
rules and the drift profile are O(text) over bounded samples. An external classifier gets
the texts through a bounded queue and a few worker tasks with a timeout each; what it
finds is counted (the completion event has left by then). A background task recomputes
the drift gauges every `drift.interval_s` and follows the baseline file.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import os
import time
from collections import deque
from pathlib import Path
from typing import Any

from feedback.drift import FEATURE_NAMES, DriftMonitor, Key, observe
from feedback.safety import Findings, SafetyClassifier, SafetyRules, Source, merge, prompt_text
from gateway.config import ClassifierConfig, TelemetryConfig
from gateway.exchange import Exchange
from gateway.metrics import Metrics

log = logging.getLogger(__name__)

BASELINE_FILE = "drift-baseline.json"


class Observer:
    """Safety findings and drift windows for one gateway process."""

    def __init__(self, config: TelemetryConfig, metrics: Metrics) -> None:
        self.config = config
        self.metrics = metrics
        safety = config.safety
        self.rules = (
            SafetyRules(safety.keywords, max_chars=safety.max_chars) if safety.enabled else None
        )
        drift = config.drift
        self.drift = (
            DriftMonitor(drift.window, drift.max_profiles, drift.min_samples)
            if drift.enabled
            else None
        )
        self.baseline_path = drift.baseline_path or (
            config.multiprocess_dir / BASELINE_FILE if config.multiprocess_dir else None
        )
        self._baseline_mtime = 0.0
        self._exported: set[Key] = set()
        self._classifier: SafetyClassifier | None = None
        self._queue: deque[tuple[str, str, Source, str]] = deque()
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    def observe(self, ex: Exchange) -> Findings:
        """Check and profile one exchange; returns the findings for its completion event."""
        prompt = prompt_text(ex.request)
        answer = ex.text
        findings: Findings = {}
        if self.rules is not None:
            for source, text in (("prompt", prompt), ("answer", answer)):
                found = self.rules.check(text)
                if found:
                    self._count(ex.flag, ex.variant, source, found)
                    merge(findings, found)
        if self.drift is not None and ex.status == "ok":
            self.drift.add(
                ex.flag,
                ex.variant,
                observe(
                    prompt=prompt,
                    answer=answer,
                    prompt_tokens=ex.prompt_tokens,
                    completion_tokens=ex.completion_tokens,
                    finish_reason=ex.finish_reason,
                    tool_calls=bool(ex.tool_calls),
                ),
            )
        if self._classifier is not None:
            self._enqueue(ex.flag, ex.variant, "prompt", prompt)
            self._enqueue(ex.flag, ex.variant, "answer", answer)
        return findings

    def _count(self, flag: str, variant: str, source: str, found: Findings) -> None:
        counter = self.metrics.safety_findings
        for category, count in found.items():
            counter.labels(flag, variant, category, source).inc(count)

    # Drift gauges and the baseline.

    def refresh(self, now: float | None = None) -> None:
        """Recompute the drift gauges (and pick up a baseline another worker froze)."""
        if self.drift is None:
            return
        self._follow_baseline()
        m = self.metrics
        scores = self.drift.scores()
        for key, samples in self.drift.samples().items():
            m.drift_samples.labels(*key).set(samples)
        for key, by_feature in scores.items():
            for feature, value in by_feature.items():
                m.drift_psi.labels(*key, feature).set(value)
            m.drift_baseline_time.labels(*key).set(self.drift.frozen_at.get(key, 0.0))
        for key in self._exported - set(scores):
            # Too few samples now, or the window was evicted: no value rather than a stale one.
            for feature in FEATURE_NAMES:
                with contextlib.suppress(KeyError):
                    m.drift_psi.remove(*key, feature)
            with contextlib.suppress(KeyError):
                m.drift_baseline_time.remove(*key)
        self._exported = set(scores)

    def freeze(self, flag: str | None = None, now: float | None = None) -> list[Key]:
        """Make the current windows the baseline; write the baseline file when there is one."""
        if self.drift is None:
            return []
        keys = self.drift.freeze(now if now is not None else time.time(), flag)
        if self.baseline_path is not None:
            _write_json(self.baseline_path, self.drift.baseline_json())
            self._baseline_mtime = self.baseline_path.stat().st_mtime
        self.refresh()
        return keys

    def load_baseline(self, data: dict[str, Any]) -> int:
        """Replace the baselines (e.g. from a file written by `loopgate drift freeze --out`)."""
        if self.drift is None:
            return 0
        count = self.drift.load_baseline(data)
        if self.baseline_path is not None:
            _write_json(self.baseline_path, self.drift.baseline_json())
            self._baseline_mtime = self.baseline_path.stat().st_mtime
        self.refresh()
        return count

    def _follow_baseline(self) -> None:
        path = self.baseline_path
        if path is None or self.drift is None:
            return
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            return
        if mtime == self._baseline_mtime:
            return
        try:
            self.drift.load_baseline(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError) as exc:
            log.warning("drift: cannot read baseline %s: %s", path, exc)
        self._baseline_mtime = mtime

    # Background tasks.

    def start(self) -> None:
        """Start the drift refresher and the classifier workers (inside a running loop)."""
        self._follow_baseline()
        if self.drift is not None:
            self._spawn(self._refresher(), "loopgate-drift-refresh")
        classifier = self.config.safety.classifier
        # What the safety series can be labelled with, so they exist at 0 from the start.
        categories = list(self.rules.categories) if self.rules is not None else []
        if classifier is not None:
            categories += [*classifier.categories, "other"]
        self.metrics.safety_categories = tuple(dict.fromkeys(categories))
        self.metrics.label_known()
        if classifier is not None:
            self._classifier = _load_classifier(classifier)
            for index in range(classifier.concurrency):
                self._spawn(self._classify_worker(classifier), f"loopgate-classifier-{index}")

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        """Stop the background tasks and close the classifier."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._classifier is not None:
            await self._classifier.aclose()

    async def _refresher(self) -> None:
        while True:
            await asyncio.sleep(self.config.drift.interval_s)
            try:
                self.refresh()
            except Exception:  # the edge: a bad baseline must not stop the refresher
                log.exception("drift: refresh failed")

    def _enqueue(self, flag: str, variant: str, source: Source, text: str) -> None:
        classifier = self.config.safety.classifier
        if not text or classifier is None:
            return
        if len(self._queue) >= classifier.queue_size:
            self.metrics.safety_classifier.labels("dropped").inc()
            return
        self._queue.append((flag, variant, source, text[: self.config.safety.max_chars]))
        self._wake.set()

    async def _classify_worker(self, config: ClassifierConfig) -> None:
        assert self._classifier is not None
        allowed = set(config.categories)
        calls = self.metrics.safety_classifier
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            flag, variant, source, text = self._queue.popleft()
            try:
                async with asyncio.timeout(config.timeout_s):
                    found = await self._classifier.classify(text, source)
            except TimeoutError:
                calls.labels("timeout").inc()
                continue
            except Exception as exc:  # the edge: a classifier failure costs one text only
                calls.labels("error").inc()
                log.warning("safety classifier failed: %s", exc.__class__.__name__)
                continue
            calls.labels("ok").inc()
            bounded: Findings = {}
            for category, count in found.items():
                if count > 0:
                    label = category if category in allowed else "other"
                    bounded[label] = bounded.get(label, 0) + int(count)
            if bounded:
                self._count(flag, variant, source, bounded)


def _load_classifier(config: ClassifierConfig) -> SafetyClassifier:
    module, _, attribute = config.factory.partition(":")
    factory = getattr(importlib.import_module(module), attribute)
    classifier: SafetyClassifier = factory(config)
    return classifier


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Write atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)
