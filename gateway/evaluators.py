"""Online evaluators: score finished answers with a reward model or a judge, off the request path.

record() hands each finished exchange to offer(), which only filters and appends to a bounded
queue (no I/O, no await). Worker tasks per evaluator call its pool with a timeout and emit an
`evaluation` event and the score metric. Everything that goes wrong (queue full, over the
per-minute budget, pool down, slow, a verdict not in the asked shape) is dropped and counted;
no request ever waits on, or fails because of, an evaluator.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Counter, Histogram

from feedback.schema import EvaluationBody, EvaluationEvent, Event, FeedbackBody
from gateway.config import EvaluatorConfig
from gateway.errors import GatewayError, UpstreamTimeout
from gateway.exchange import Exchange
from gateway.httpclient import ClientError
from gateway.rubric import (
    BadVerdict,
    conversation,
    judge_request,
    parse_reward,
    parse_verdict,
    reward_request,
    sampled,
    version,
)
from gateway.tracing import Tracing
from gateway.upstream import Upstreams

log = logging.getLogger("loopgate.evaluators")

SCORE_BUCKETS = (-4.0, -2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0)
# Why a score was not recorded: a bounded label set.
DROP_REASONS = ("queue_full", "budget", "shutdown")
FAIL_REASONS = ("timeout", "unavailable", "bad_status", "bad_verdict", "error")


class EvaluatorMetrics:
    """loopgate_evaluation_score and loopgate_evaluations_total on the app's registry."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.score = Histogram(
            "loopgate_evaluation_score",
            "Scores of answers by online evaluators (a judge's 1-5, a reward model's raw reward).",
            ["flag", "variant", "evaluator"],
            buckets=SCORE_BUCKETS,
            registry=registry,
        )
        self.outcomes = Counter(
            "loopgate_evaluations",
            "Answers picked for scoring, by outcome (done, dropped, failed) and reason.",
            ["evaluator", "outcome", "reason"],
            registry=registry,
        )
        self._registry = registry

    def label_known(self, names: list[str]) -> None:
        """Create every outcome series at 0, so rates exist before the first failure."""
        for name in names:
            self.outcomes.labels(name, "done", "")
            for reason in DROP_REASONS:
                self.outcomes.labels(name, "dropped", reason)
            for reason in FAIL_REASONS:
                self.outcomes.labels(name, "failed", reason)

    def unregister(self) -> None:
        """Free the names (the app may start again on the same registry, as tests do)."""
        if self._registry is not None:
            self._registry.unregister(self.score)
            self._registry.unregister(self.outcomes)


@dataclass(frozen=True, slots=True)
class Job:
    """One answer to score, copied out of the exchange (which the request path may reuse)."""

    response_id: str
    flag: str
    flag_version: int
    variant: str
    app: str
    request: dict[str, Any]
    answer: str
    trace_id: str


class Budget:
    """A token bucket of `per_minute` calls (pure; time passed in)."""

    def __init__(self, per_minute: int, now: float) -> None:
        self.rate = per_minute / 60.0
        self.capacity = float(per_minute)
        self.tokens = float(per_minute)
        self.at = now

    def take(self, now: float) -> bool:
        """Spend one call if one is left."""
        self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class _Scorer:
    """One evaluator's queue, budget and workers."""

    def __init__(self, name: str, config: EvaluatorConfig, model: str, now: float) -> None:
        self.name = name
        self.config = config
        self.model = model
        self.version = version(config, model)
        self.queue: deque[Job] = deque()
        self.wake = asyncio.Event()
        self.budget = Budget(config.per_minute, now)
        self.busy = 0
        self.warned: dict[str, float] = {}

    def wants(self, ex: Exchange) -> bool:
        c = self.config
        return (
            "primary" in c.roles  # shadows are not recorded yet: every answer is a primary
            and (not c.flags or ex.flag in c.flags)
            and (not c.variants or ex.variant in c.variants)
            and sampled(self.name, ex.response_id, c.sample_rate)
        )


class Evaluators:
    """All evaluators of one gateway process."""

    def __init__(
        self,
        configs: Mapping[str, EvaluatorConfig],
        upstreams: Upstreams,
        emit: Callable[[Event], None] | None,
        metrics: EvaluatorMetrics,
        instance: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.upstreams = upstreams
        self.emit = emit
        self.metrics = metrics
        self.instance = instance
        self.clock = clock
        now = clock()
        self.scorers = [
            _Scorer(name, cfg, cfg.model or upstreams.pools[cfg.pool].config.served_model, now)
            for name, cfg in configs.items()
        ]
        self._tasks: set[asyncio.Task[None]] = set()
        # Set once tracing is open: each score becomes a gen_ai.evaluation.result event.
        self.tracing: Tracing | None = None
        metrics.label_known([s.name for s in self.scorers])

    def start(self) -> None:
        """Start each evaluator's workers (inside a running loop)."""
        for scorer in self.scorers:
            for i in range(scorer.config.concurrency):
                name = f"evaluator-{scorer.name}-{i}"
                task = asyncio.create_task(self._worker(scorer), name=name)
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    # A RequestObserver (gateway.recorder): only the finished answer matters here.
    reads_chunks = False  # not called per streamed chunk

    def started(self, ex: Exchange) -> None:
        """Not scored before it is finished."""

    def routed(self, ex: Exchange) -> None:
        """Not scored before it is finished."""

    def first_byte(self, ex: Exchange) -> None:
        """Not scored before it is finished."""

    def chunk(self, ex: Exchange, data: bytes) -> None:
        """Not scored before it is finished."""

    def feedback_received(self, body: FeedbackBody) -> None:
        """Human judgements are read from the events, not here."""

    def finished(self, ex: Exchange) -> None:
        """The request is over: offer the answer to the evaluators."""
        self.offer(ex)

    def offer(self, ex: Exchange) -> None:
        """Queue a finished answer for the evaluators that want it; never waits, never raises."""
        if ex.status != "ok" or ex.consent == "none" or not ex.response_id or not ex.text_parts:
            return
        job: Job | None = None
        for scorer in self.scorers:
            if not scorer.wants(ex):
                continue
            if len(scorer.queue) >= scorer.config.queue_size:
                self._count(scorer, "dropped", "queue_full")
                continue
            if job is None:
                job = Job(
                    ex.response_id, ex.flag, ex.flag_version, ex.variant, ex.app_id,
                    ex.request, ex.text, ex.trace_id,
                )  # fmt: skip
            scorer.queue.append(job)
            scorer.wake.set()

    def pending(self) -> int:
        """Answers queued or being scored."""
        return sum(len(s.queue) + s.busy for s in self.scorers)

    async def aclose(self) -> None:
        """Let pending scores finish within each evaluator's timeout; count the rest dropped."""
        grace = max((s.config.timeout_s for s in self.scorers), default=0.0)
        deadline = self.clock() + grace
        while self.pending() and self.clock() < deadline:  # noqa: ASYNC110 - a drain poll
            await asyncio.sleep(0.02)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for scorer in self.scorers:
            # Workers cancelled mid-call counted theirs; what never left the queue is counted here.
            for _ in range(len(scorer.queue)):
                self._count(scorer, "dropped", "shutdown")
            scorer.queue.clear()

    def _warn(self, scorer: _Scorer, reason: str, message: str) -> None:
        # A dead pool fails every call: one line a minute per reason, the counter has the rest.
        now = self.clock()
        if now - scorer.warned.get(reason, -math.inf) >= 60.0:
            scorer.warned[reason] = now
            log.warning("evaluator %s: %s (more counted in loopgate_evaluations_total)",
                        scorer.name, message)  # fmt: skip

    def _count(self, scorer: _Scorer, outcome: str, reason: str) -> None:
        self.metrics.outcomes.labels(scorer.name, outcome, reason).inc()

    async def _worker(self, scorer: _Scorer) -> None:
        while True:
            if not scorer.queue:
                scorer.wake.clear()
                await scorer.wake.wait()
                continue
            job = scorer.queue.popleft()
            if not scorer.budget.take(self.clock()):
                self._count(scorer, "dropped", "budget")
                continue
            scorer.busy += 1
            try:
                await self._score(scorer, job)
            except asyncio.CancelledError:
                self._count(scorer, "dropped", "shutdown")
                raise
            except Exception:  # the edge: one answer's score is lost, never the worker
                log.exception("evaluator %s: scoring %s failed", scorer.name, job.response_id)
                self._count(scorer, "failed", "error")
            finally:
                scorer.busy -= 1

    async def _score(self, scorer: _Scorer, job: Job) -> None:
        config = scorer.config
        prompt = conversation(job.request, config.max_chars)
        started = time.perf_counter()
        try:
            async with asyncio.timeout(config.timeout_s):
                if config.kind == "judge":
                    payload = judge_request(config, scorer.model, prompt, job.answer)
                    score, reason = parse_verdict(
                        await self._post(config.pool, "/v1/chat/completions", payload)
                    )
                else:
                    payload = reward_request(scorer.model, prompt, job.answer, config.max_chars)
                    doc = await self._post(config.pool, "/pooling", payload)
                    score, reason = parse_reward(doc), ""
        except TimeoutError:
            self._count(scorer, "failed", "timeout")
            return
        except _BadStatus as exc:
            self._warn(scorer, "bad_status", f"pool {config.pool} answered {exc}")
            self._count(scorer, "failed", "bad_status")
            return
        except BadVerdict as exc:
            self._warn(scorer, "bad_verdict", str(exc))
            self._count(scorer, "failed", "bad_verdict")
            return
        except UpstreamTimeout:
            self._count(scorer, "failed", "timeout")
            return
        except (GatewayError, ClientError, OSError, ValueError) as exc:
            # No endpoint reachable, a broken connection, a body that is not JSON.
            self._count(scorer, "failed", "unavailable")
            self._warn(scorer, "unavailable", f"pool {config.pool}: {exc}")
            return
        latency_ms = (time.perf_counter() - started) * 1000.0
        self.metrics.score.labels(job.flag, job.variant, scorer.name).observe(score)
        self._count(scorer, "done", "")
        if self.emit is not None:
            body = EvaluationBody(
                response_id=job.response_id,
                flag=job.flag or None,
                flag_version=job.flag_version or None,
                variant=job.variant or None,
                app=job.app,
                evaluator=scorer.name,
                evaluator_kind=config.kind,
                version=scorer.version,
                score=score,
                reason=reason or None,
                latency_ms=latency_ms,
            )
            event = EvaluationEvent.create(
                body, gateway=self.instance, now=time.time(), trace_id=job.trace_id or None
            )
            self.emit(event)
        if self.tracing is not None:
            self.tracing.record_feedback(
                job.response_id, "", value=score, flag=job.flag or None,
                variant=job.variant or None, category=reason or None, name=scorer.name,
            )  # fmt: skip

    async def _post(self, pool_name: str, path: str, payload: dict[str, Any]) -> Any:
        pool = self.upstreams.pools[pool_name]
        headers = {"Content-Type": "application/json"}
        if pool.config.api_key is not None:
            headers["Authorization"] = f"Bearer {pool.config.api_key.get_secret_value()}"
        call = await self.upstreams.send(pool, path, orjson.dumps(payload), headers)
        try:
            raw = await call.response.read()
        except BaseException:
            call.abort()
            raise
        call.release()
        if call.response.status != 200:
            raise _BadStatus(f"HTTP {call.response.status}")
        return orjson.loads(raw)


class _BadStatus(Exception):
    """The evaluator's pool answered, but not 200."""


@contextlib.asynccontextmanager
async def open_evaluators(
    configs: Mapping[str, EvaluatorConfig],
    upstreams: Upstreams,
    emit: Callable[[Event], None] | None,
    registry: CollectorRegistry | None,
    instance: str,
) -> AsyncIterator[Evaluators]:
    """Evaluators for the app's lifespan: started, then drained and stopped at the end."""
    metrics = EvaluatorMetrics(registry)
    evaluators = Evaluators(configs, upstreams, emit, metrics, instance)
    evaluators.start()
    try:
        yield evaluators
    finally:
        await evaluators.aclose()
        metrics.unregister()
