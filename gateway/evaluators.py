"""Online evaluators: score finished answers with a reward model or a judge, off the request path.

record() hands each finished exchange to offer(), which only filters and appends to a bounded
queue (no I/O, no await). Worker tasks per evaluator call its pool with a timeout and emit an
`evaluation` event and the score metric. Everything that goes wrong (queue full, over the
per-minute budget, pool down, slow, a verdict not in the asked shape) is dropped and counted;
no request ever waits on, or fails because of, an evaluator.

A judge with `pairs: true` also compares shadow pairs: each half waits in a bounded PairBook
until the other has finished, then the pair is queued like an answer and judged twice, once
in each order, into one `preference` handed to `record_preference` (the recorder's feedback
path, so experiment counters count it like a person's).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from prometheus_client import CollectorRegistry, Counter, Histogram

from feedback.schema import EvaluationBody, EvaluationEvent, Event, FeedbackBody
from gateway.config import EvaluatorConfig
from gateway.errors import GatewayError, UpstreamTimeout
from gateway.evaluator_pairs import PairBook
from gateway.exchange import Exchange
from gateway.httpclient import ClientError
from gateway.rubric import (
    BadVerdict,
    PairWinner,
    as_pair,
    conversation,
    judge_request,
    pair_request,
    pair_version,
    parse_pair_verdict,
    parse_reward,
    parse_verdict,
    reward_request,
    sampled,
    swapped_winner,
    version,
)
from gateway.tracing import Tracing
from gateway.upstream import Upstreams
from rollout.counters import ExperimentCounters

log = logging.getLogger("loopgate.evaluators")
_T = TypeVar("_T")

SCORE_BUCKETS = (-4.0, -2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0)
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0)
# Why a score was not recorded: a bounded label set.
DROP_REASONS = ("queue_full", "budget", "shutdown")
# Why a pair was not judged, beyond those: its other half never came, or room was needed.
PAIR_DROP_REASONS = ("pair_expired", "pair_overflow")
FAIL_REASONS = ("timeout", "unavailable", "bad_status", "bad_verdict", "error")
# The `evaluator` label of a judge's pair series: its name with this suffix.
PAIRS_SUFFIX = ":pairs"


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
        self.latency = Histogram(
            "loopgate_evaluation_duration_seconds",
            "Time an evaluator took per score, or per pair judgement (its two calls).",
            ["evaluator"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self._registry = registry

    def label_known(self, names: Sequence[str], pair_names: Sequence[str] = ()) -> None:
        """Create every outcome series at 0, so rates exist before the first failure."""
        for name in [*names, *pair_names]:
            self.outcomes.labels(name, "done", "")
            for reason in DROP_REASONS:
                self.outcomes.labels(name, "dropped", reason)
            for reason in FAIL_REASONS:
                self.outcomes.labels(name, "failed", reason)
        for name in pair_names:
            for reason in PAIR_DROP_REASONS:
                self.outcomes.labels(name, "dropped", reason)

    def unregister(self) -> None:
        """Free the names (the app may start again on the same registry, as tests do)."""
        if self._registry is not None:
            self._registry.unregister(self.score)
            self._registry.unregister(self.outcomes)
            self._registry.unregister(self.latency)


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
    role: str = "primary"
    unit_hash: str = ""
    started_at: float = 0.0
    # Assigned by the flag's weighted split and shown to the user: an exposure, so its score
    # is counted for the experiment (QA, forced and shadow answers are not).
    split: bool = False

    @classmethod
    def of(cls, ex: Exchange) -> Job:
        """The parts of a finished exchange an evaluator reads."""
        return cls(
            ex.response_id, ex.flag, ex.flag_version, ex.variant, ex.app_id, ex.request,
            ex.text, ex.trace_id, ex.role, ex.unit_hash, ex.started_at,
            ex.reason == "split" and ex.role == "primary" and bool(ex.flag),
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class PairJob:
    """A shadow pair to compare: the primary (answer a) and its shadow (answer b)."""

    primary: Job
    shadow: Job


class Budget:
    """A token bucket of `per_minute` calls (pure; time passed in)."""

    def __init__(self, per_minute: int, now: float) -> None:
        self.rate = per_minute / 60.0
        self.capacity = float(per_minute)
        self.tokens = float(per_minute)
        self.at = now

    def take(self, now: float, calls: int = 1) -> bool:
        """Spend `calls` calls if that many are left (a pair costs two), else none."""
        self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < calls:
            return False
        self.tokens -= calls
        return True


class _Scorer:
    """One evaluator's queue, budget and workers."""

    def __init__(self, name: str, config: EvaluatorConfig, model: str, now: float) -> None:
        self.name = name
        self.config = config
        self.model = model
        self.version = version(config, model)
        self.queue: deque[Job | PairJob] = deque()
        self.wake = asyncio.Event()
        self.budget = Budget(config.per_minute, now)
        self.busy = 0
        self.warned: dict[str, float] = {}
        # Pairs: the halves waiting for their other half, and the label of the pair series.
        self.book: PairBook[Job] | None = (
            PairBook(config.pair_wait_s, config.max_waiting) if config.pairs else None
        )
        self.pair_label = name + PAIRS_SUFFIX
        self.pair_version = pair_version(config, model)

    def wants(self, ex: Exchange) -> bool:
        c = self.config
        return (
            ex.role in c.roles
            and (not c.flags or ex.flag in c.flags)
            and (not c.variants or ex.variant in c.variants)
            and sampled(self.name, ex.response_id, c.sample_rate)
        )

    def wants_pair(self, ex: Exchange, key: str) -> bool:
        """A half of a pair this judge compares: its flag, and a sample of primary ids."""
        c = self.config
        return (not c.flags or ex.flag in c.flags) and sampled(self.name, key, c.sample_rate)

    def wants_variants(self, pair: PairJob) -> bool:
        """Either half's variant is one of `variants` (empty: every pair)."""
        variants = self.config.variants
        return not variants or pair.primary.variant in variants or pair.shadow.variant in variants


# A counted score, remembered until the answer's first thumbs: (flag, flag version, variant,
# evaluator, evaluator version, score).
ScoredAnswer = tuple[str, int, str, str, str, float]
LABEL_KINDS = {"thumbs_up": True, "thumbs_down": False}


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
        record_preference: Callable[[FeedbackBody], object] | None = None,
        counters: ExperimentCounters | None = None,
        max_remembered: int = 100_000,
    ) -> None:
        self.upstreams = upstreams
        self.emit = emit
        # Where a pair's verdict goes: the recorder's feedback path (set by the app once the
        # recorder exists, as it observes these evaluators); None: judged, counted, not kept.
        self.record_preference = record_preference
        self.metrics = metrics
        self.instance = instance
        self.clock = clock
        # Experiment counters (set by the app when experiments are on): each score of an
        # exposure is counted per (flag, version, variant, evaluator version).
        self.counters = counters
        # Scored exposures by response id, until their first thumbs (or until pushed out,
        # oldest first, past max_remembered: thumbs on those are then not joined to a score).
        self.remembered: OrderedDict[str, list[ScoredAnswer]] = OrderedDict()
        self.max_remembered = max_remembered
        self.forgotten = 0
        now = clock()
        self.scorers = [
            _Scorer(name, cfg, cfg.model or upstreams.pools[cfg.pool].config.served_model, now)
            for name, cfg in configs.items()
        ]
        self._tasks: set[asyncio.Task[None]] = set()
        # Set once tracing is open: each score becomes a gen_ai.evaluation.result event.
        self.tracing: Tracing | None = None
        self.pair_scorers = [s for s in self.scorers if s.book is not None]
        metrics.label_known(
            [s.name for s in self.scorers], [s.pair_label for s in self.pair_scorers]
        )

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
        """The first thumbs on a scored exposure: count its label beside its scores."""
        thumbs_up = LABEL_KINDS.get(body.kind)
        if thumbs_up is None or self.counters is None:
            return
        # Popped: one label per answer (a second click, or a reviewer's later label, is not
        # counted again), so the labelled moments stay a sample of answers, not of clicks.
        scored = self.remembered.pop(body.response_id, None)
        for flag, flag_version, variant, evaluator, evaluator_version, score in scored or ():
            self.counters.count_labelled_score(
                flag, flag_version, variant, evaluator, evaluator_version, score, thumbs_up
            )

    def _remember(self, job: Job, scorer: _Scorer, score: float) -> None:
        """Count the score of an exposure, and keep it for the answer's thumbs (bounded)."""
        if self.counters is None or not job.split:
            return
        self.counters.count_score(
            job.flag, job.flag_version, job.variant, scorer.name, scorer.version, score
        )
        entry = (job.flag, job.flag_version, job.variant, scorer.name, scorer.version, score)
        scored = self.remembered.get(job.response_id)
        if scored is not None:
            scored.append(entry)
            return
        self.remembered[job.response_id] = [entry]
        while len(self.remembered) > self.max_remembered:
            self.remembered.popitem(last=False)
            self.forgotten += 1

    def finished(self, ex: Exchange) -> None:
        """The request is over: offer the answer to the evaluators, and a pair's half."""
        self.offer(ex)
        if self.pair_scorers:
            self.offer_half(ex)

    def offer(self, ex: Exchange) -> None:
        """Queue a finished answer for the evaluators that want it; never waits, never raises."""
        if ex.status != "ok" or ex.consent == "none" or not ex.response_id or not ex.text_parts:
            return
        job: Job | None = None
        for scorer in self.scorers:
            if not scorer.wants(ex):
                continue
            if len(scorer.queue) >= scorer.config.queue_size:
                self._count(scorer.name, "dropped", "queue_full")
                continue
            if job is None:
                job = Job.of(ex)
            scorer.queue.append(job)
            scorer.wake.set()

    def offer_half(self, ex: Exchange) -> None:
        """A half of a shadow pair finished: pair it with the other, or let it wait (no I/O)."""
        if ex.role == "shadow" and ex.pair_of:
            key = ex.pair_of
        elif ex.role == "primary" and ex.shadowed and ex.response_id:
            key = ex.response_id
        else:
            return
        judgeable = (
            ex.status == "ok"
            and ex.consent != "none"
            and bool(ex.response_id)
            and bool(ex.text_parts)
        )
        job = Job.of(ex) if judgeable else None
        now = self.clock()
        for scorer in self.pair_scorers:
            if scorer.book is None or not scorer.wants_pair(ex, key):
                continue
            arrival = scorer.book.arrive(key, ex.role, job, now)
            for _ in range(arrival.expired):
                self._count(scorer.pair_label, "dropped", "pair_expired")
            for _ in range(arrival.overflowed):
                self._count(scorer.pair_label, "dropped", "pair_overflow")
            if arrival.pair is None:
                continue
            pair = PairJob(*arrival.pair)
            if not scorer.wants_variants(pair):
                continue
            if len(scorer.queue) >= scorer.config.queue_size:
                self._count(scorer.pair_label, "dropped", "queue_full")
                continue
            scorer.queue.append(pair)
            scorer.wake.set()

    def pending(self) -> int:
        """Answers queued or being scored."""
        return sum(len(s.queue) + s.busy for s in self.scorers)

    async def aclose(self) -> None:
        """Let pending scores finish within each evaluator's timeout; count the rest dropped."""
        # A pair is two calls in a row, each with its own timeout.
        grace = max((s.config.timeout_s * (2 if s.book else 1) for s in self.scorers), default=0.0)
        deadline = self.clock() + grace
        while self.pending() and self.clock() < deadline:  # noqa: ASYNC110 - a drain poll
            await asyncio.sleep(0.02)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for scorer in self.scorers:
            # Workers cancelled mid-call counted theirs; what never left the queue is counted here.
            for item in scorer.queue:
                self._count(self._label(scorer, item), "dropped", "shutdown")
            scorer.queue.clear()
            # Halves still waiting for their other half will not see it now.
            if scorer.book is not None:
                for _ in range(scorer.book.drain()):
                    self._count(scorer.pair_label, "dropped", "shutdown")

    def _warn(self, scorer: _Scorer, reason: str, message: str) -> None:
        # A dead pool fails every call: one line a minute per reason, the counter has the rest.
        now = self.clock()
        if now - scorer.warned.get(reason, -math.inf) >= 60.0:
            scorer.warned[reason] = now
            log.warning("evaluator %s: %s (more counted in loopgate_evaluations_total)",
                        scorer.name, message)  # fmt: skip

    def _count(self, label: str, outcome: str, reason: str) -> None:
        self.metrics.outcomes.labels(label, outcome, reason).inc()

    @staticmethod
    def _label(scorer: _Scorer, item: Job | PairJob) -> str:
        return scorer.pair_label if isinstance(item, PairJob) else scorer.name

    async def _worker(self, scorer: _Scorer) -> None:
        while True:
            if not scorer.queue:
                scorer.wake.clear()
                await scorer.wake.wait()
                continue
            item = scorer.queue.popleft()
            label = self._label(scorer, item)
            if not scorer.budget.take(self.clock(), 2 if isinstance(item, PairJob) else 1):
                self._count(label, "dropped", "budget")
                continue
            scorer.busy += 1
            try:
                if isinstance(item, PairJob):
                    await self._judge_pair(scorer, item)
                else:
                    await self._score(scorer, item)
            except asyncio.CancelledError:
                self._count(label, "dropped", "shutdown")
                raise
            except Exception:  # the edge: one answer's score is lost, never the worker
                key = item.primary.response_id if isinstance(item, PairJob) else item.response_id
                log.exception("evaluator %s: scoring %s failed", label, key)
                self._count(label, "failed", "error")
            finally:
                scorer.busy -= 1

    async def _call(
        self, scorer: _Scorer, label: str, path: str, payload: dict[str, Any],
        parse: Callable[[Any], _T],
    ) -> _T | None:  # fmt: skip
        """One call to the evaluator's pool under its timeout, parsed; None: failed, counted."""
        config = scorer.config
        try:
            async with asyncio.timeout(config.timeout_s):
                return parse(await self._post(config.pool, path, payload))
        except TimeoutError:
            self._count(label, "failed", "timeout")
        except _BadStatus as exc:
            self._warn(scorer, "bad_status", f"pool {config.pool} answered {exc}")
            self._count(label, "failed", "bad_status")
        except BadVerdict as exc:
            self._warn(scorer, "bad_verdict", str(exc))
            self._count(label, "failed", "bad_verdict")
        except UpstreamTimeout:
            self._count(label, "failed", "timeout")
        except (GatewayError, ClientError, OSError, ValueError) as exc:
            # No endpoint reachable, a broken connection, a body that is not JSON.
            self._count(label, "failed", "unavailable")
            self._warn(scorer, "unavailable", f"pool {config.pool}: {exc}")
        return None

    async def _score(self, scorer: _Scorer, job: Job) -> None:
        config = scorer.config
        prompt = conversation(job.request, config.max_chars)
        started = time.perf_counter()
        if config.kind == "judge":
            payload = judge_request(config, scorer.model, prompt, job.answer)
            verdict = await self._call(
                scorer, scorer.name, "/v1/chat/completions", payload, parse_verdict
            )
        else:
            payload = reward_request(scorer.model, prompt, job.answer, config.max_chars)
            verdict = await self._call(scorer, scorer.name, "/pooling", payload, _reward_verdict)
        if verdict is None:
            return
        score, reason = verdict
        elapsed = time.perf_counter() - started
        self.metrics.latency.labels(scorer.name).observe(elapsed)
        self.metrics.score.labels(job.flag, job.variant, scorer.name).observe(score)
        self._count(scorer.name, "done", "")
        self._remember(job, scorer, score)
        if self.emit is not None:
            body = EvaluationBody(
                response_id=job.response_id,
                flag=job.flag or None,
                flag_version=job.flag_version or None,
                variant=job.variant or None,
                app=job.app,
                role="shadow" if job.role == "shadow" else "primary",
                evaluator=scorer.name,
                evaluator_kind=config.kind,
                version=scorer.version,
                score=score,
                reason=reason or None,
                latency_ms=elapsed * 1000.0,
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

    async def _judge_pair(self, scorer: _Scorer, pair: PairJob) -> None:
        """Two calls, the primary shown first and then the shadow: one preference from both."""
        config, label = scorer.config, scorer.pair_label
        primary, shadow = pair.primary, pair.shadow
        # The shadow was sent the primary's body (model rewritten): one conversation for both.
        prompt = conversation(primary.request, config.max_chars)
        started = time.perf_counter()
        verdicts: list[tuple[PairWinner, str]] = []
        for first, second in ((primary, shadow), (shadow, primary)):
            payload = pair_request(config, scorer.model, prompt, first.answer, second.answer)
            verdict = await self._call(
                scorer, label, "/v1/chat/completions", payload, parse_pair_verdict
            )
            if verdict is None:
                return  # one order alone would carry the judge's position bias
            verdicts.append(verdict)
        elapsed = time.perf_counter() - started
        (said_first, reason_first), (said_second, reason_second) = verdicts
        winner = swapped_winner(said_first, said_second)
        self.metrics.latency.labels(label).observe(elapsed)
        self._count(label, "done", "")
        if self.record_preference is None:
            return
        body = FeedbackBody(
            response_id=primary.response_id,
            flag=primary.flag or None,
            flag_version=primary.flag_version or None,
            variant=primary.variant or None,
            app=primary.app,
            unit_hash=primary.unit_hash or None,
            response_time=int(primary.started_at) or None,
            kind="preference",
            source="judge",
            reviewer=scorer.name,
            other_response_id=shadow.response_id,
            other_variant=shadow.variant or None,
            winner=winner,
            time_spent_ms=round(elapsed * 1000.0),
            # Each order's verdict in a/b terms: how often they differ is the judge's
            # position bias (or indecision) on this traffic.
            metadata={
                "judge_version": scorer.pair_version,
                "primary_first": as_pair(said_first, primary_first=True),
                "shadow_first": as_pair(said_second, primary_first=False),
            },
            comment=f"primary first: {reason_first}\nshadow first: {reason_second}"[:10_000],
        )
        self.record_preference(body)

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


def _reward_verdict(doc: Any) -> tuple[float, str]:
    return parse_reward(doc), ""


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
