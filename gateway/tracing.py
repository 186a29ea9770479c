"""OpenTelemetry traces: a TracerProvider the app owns, and the spans of one proxied request.

Off by default. `telemetry.tracing.exporter` (or the standard OTEL_TRACES_EXPORTER: otlp,
console, none) turns it on; everything else is the SDK's own OTEL_* configuration
(OTEL_EXPORTER_OTLP_ENDPOINT and _HEADERS, OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES,
OTEL_TRACES_SAMPLER, OTEL_BSP_*). When off, the app holds no Tracing at all and the recorder
(gateway.recorder) is the plain one, which reaches no span code.

Span tree of a request (GenAI semantic conventions, OpenFeature flag attributes):

    chat {model}                   SERVER  the whole request, continues an incoming traceparent
      route {model}                INTERNAL flag evaluation: feature_flag.* attributes
      chat {served model}          CLIENT  the upstream call; its context goes upstream
      emit completion              INTERNAL hand-off of the completion event to the pipeline

A shadow call (gateway.shadow) has the same tree under a root span of its own (INTERNAL,
loopgate.role=shadow) with a link to the primary's server span.

With tracing on, the GenAI metrics gen_ai.client.token.usage and
gen_ai.server.time_to_first_token are recorded too, through a MeterProvider the app owns and
exported like the spans (OTLP or console; OTEL_METRICS_EXPORTER=none turns them off).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from gateway.config import TracingConfig
from gateway.exchange import Exchange

log = logging.getLogger(__name__)

_PROPAGATOR = TraceContextTextMapPropagator()
# gen_ai.provider.name: the upstreams are vLLM servers (or `loopgate sim`, which answers as
# one) behind the OpenAI API; no well-known value covers a self-hosted vLLM.
PROVIDER = "vllm"
TOKEN_USAGE = "gen_ai.client.token.usage"
TIME_TO_FIRST_TOKEN = "gen_ai.server.time_to_first_token"
# The bucket boundaries the GenAI metric conventions advise.
_TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304,
                  16777216, 67108864)  # fmt: skip
_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                 5.0, 7.5, 10.0)  # fmt: skip
_OPERATIONS = {"chat": "chat", "completion": "text_completion"}
# Router reasons -> OpenFeature's well-known evaluation reasons.
_REASONS = {
    "split": "split",
    "static": "static",
    "default": "default",
    "kill_switch": "disabled",
    "disabled": "disabled",
    "fallback": "error",
}


def openfeature_reason(reason: str) -> str:
    """OpenFeature's evaluation reason (lower case) for a router reason; rules are targeting."""
    return _REASONS.get(reason, "targeting_match")


# Request fields copied to gen_ai.request.* attributes when the client sent them.
_REQUEST_PARAMS = {
    "max_tokens": "gen_ai.request.max_tokens",
    "max_completion_tokens": "gen_ai.request.max_tokens",
    "temperature": "gen_ai.request.temperature",
    "top_p": "gen_ai.request.top_p",
    "top_k": "gen_ai.request.top_k",
    "frequency_penalty": "gen_ai.request.frequency_penalty",
    "presence_penalty": "gen_ai.request.presence_penalty",
    "seed": "gen_ai.request.seed",
    "n": "gen_ai.request.choice.count",
}
# Feedback kinds -> a score in [0, 1] where the kind itself is a judgement.
_SCORES = {"thumbs_up": 1.0, "thumbs_down": 0.0, "accept": 1.0, "reject": 0.0}


class Tracing:
    """The app's tracer and a bounded memory of answer spans, for feedback on their trace."""

    def __init__(
        self,
        provider: TracerProvider,
        answer_spans_max: int = 10_000,
        meters: MeterProvider | None = None,
    ) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer("loopgate")
        self._answers: OrderedDict[str, SpanContext] = OrderedDict()
        self._answers_max = answer_spans_max
        self.meters = meters
        self.token_usage: Any = None
        self.ttft: Any = None
        if meters is not None:
            meter = meters.get_meter("loopgate")
            self.token_usage = meter.create_histogram(
                TOKEN_USAGE, unit="{token}", description="Number of input and output tokens used."
            )
            self.ttft = meter.create_histogram(
                TIME_TO_FIRST_TOKEN, unit="s", description="Time to generate the first token."
            )

    def begin(self, kind: str, traceparent: str | None, tracestate: str | None) -> RequestTrace:
        """The server span of a proxied request, continuing the caller's trace if it sent one."""
        parent: Context | None = None
        if traceparent:
            carrier = {"traceparent": traceparent}
            if tracestate:
                carrier["tracestate"] = tracestate
            parent = _PROPAGATOR.extract(carrier)
        operation = _OPERATIONS.get(kind, kind)
        span = self.tracer.start_span(
            operation,
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"gen_ai.operation.name": operation},
        )
        return RequestTrace(self, span, operation)

    def begin_shadow(self, kind: str, model: str, primary: trace.Span | None) -> RequestTrace:
        """The span of a shadow call (gateway.shadow): a trace of its own, linked to the primary's.

        A link rather than a parent: the shadow outlives its primary and is no part of the
        client's request.
        """
        operation = _OPERATIONS.get(kind, kind)
        links = [Link(primary.get_span_context())] if primary is not None else []
        span = self.tracer.start_span(
            f"{operation} {model}",
            context=Context(),
            kind=SpanKind.INTERNAL,
            attributes={
                "gen_ai.operation.name": operation,
                "gen_ai.request.model": model,
                "gen_ai.provider.name": PROVIDER,
                "loopgate.role": "shadow",
            },
            links=links,
        )
        return RequestTrace(self, span, operation)

    def remember(self, response_id: str, context: SpanContext) -> None:
        """Keep an answer's span context for feedback (bounded, least recent dropped)."""
        if self._answers_max <= 0 or not response_id:
            return
        self._answers[response_id] = context
        if len(self._answers) > self._answers_max:
            self._answers.popitem(last=False)

    def record_feedback(
        self,
        response_id: str,
        kind: str,
        *,
        value: float | None = None,
        flag: str | None = None,
        variant: str | None = None,
        category: str | None = None,
        name: str = "user_feedback",
    ) -> str:
        """A `gen_ai.evaluation.result` event on the answer's trace; returns the trace id.

        `name` is the evaluation's (an online evaluator's name; people's feedback is
        user_feedback); an empty `kind` leaves the score without a label.

        The answer's span has ended, so the event goes on a short span of its own: a child of
        the answer's span (and linked to it) when this process served the answer recently;
        else the root of a trace of its own, carrying gen_ai.response.id to join on.
        """
        answer = self._answers.get(response_id)
        parent = trace.set_span_in_context(trace.NonRecordingSpan(answer)) if answer else None
        links = [Link(answer)] if answer is not None else []
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "evaluate",
            "gen_ai.response.id": response_id,
            "gen_ai.evaluation.name": name,
        }
        if flag:
            attributes["feature_flag.key"] = flag
        if variant:
            attributes["feature_flag.result.variant"] = variant
        span = self.tracer.start_span(
            f"evaluate {name}",
            context=parent if parent is not None else Context(),
            kind=SpanKind.INTERNAL,
            attributes=attributes,
            links=links,
        )
        event: dict[str, Any] = {"gen_ai.evaluation.name": name}
        if kind:
            event["gen_ai.evaluation.score.label"] = kind
        event["gen_ai.response.id"] = response_id
        score = _SCORES.get(kind, value)
        if score is not None:
            event["gen_ai.evaluation.score.value"] = float(score)
        if category:
            event["gen_ai.evaluation.explanation"] = category
        span.add_event("gen_ai.evaluation.result", event)
        span.end()
        return format(span.get_span_context().trace_id, "032x")

    def record_metrics(self, operation: str, ex: Exchange, server: dict[str, Any]) -> None:
        """The GenAI metrics of one finished request (when the meter provider is on)."""
        if self.token_usage is None or not ex.served_model:
            return
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": operation,
            "gen_ai.provider.name": PROVIDER,
            "gen_ai.request.model": ex.model,
            "gen_ai.response.model": ex.served_model,
            **server,
        }
        if ex.status == "error":
            attributes["error.type"] = str(ex.http_status)
        for kind, count in (("input", ex.prompt_tokens), ("output", ex.completion_tokens)):
            if count:
                self.token_usage.record(count, {**attributes, "gen_ai.token.type": kind})
        if ex.ttft_s is not None:
            self.ttft.record(ex.ttft_s, attributes)

    def shutdown(self) -> None:
        """Flush and stop the exporters (blocking: call from a thread)."""
        self.provider.shutdown()
        if self.meters is not None:
            self.meters.shutdown()


class RequestTrace:
    """The spans of one request; made only when tracing is on."""

    __slots__ = ("_address", "_route", "_tracing", "_upstream", "operation", "server")

    def __init__(self, tracing: Tracing, server: trace.Span, operation: str) -> None:
        self._tracing = tracing
        self.server = server
        self.operation = operation
        self._route: trace.Span | None = None
        self._upstream: trace.Span | None = None
        self._address: dict[str, Any] = {}

    @property
    def trace_id(self) -> str:
        """The trace id as 32 hex digits (what the completion event carries)."""
        return format(self.server.get_span_context().trace_id, "032x")

    def _child(self, name: str, kind: SpanKind) -> trace.Span:
        return self._tracing.tracer.start_span(
            name, context=trace.set_span_in_context(self.server), kind=kind
        )

    def routing(self, model: str) -> None:
        """Flag evaluation starts."""
        self.server.update_name(f"{self.operation} {model}")
        self.server.set_attributes(
            {"gen_ai.request.model": model, "gen_ai.provider.name": PROVIDER}
        )
        self._route = self._child(f"route {model}", SpanKind.INTERNAL)

    def routed(self, ex: Exchange, request: Mapping[str, Any]) -> None:
        """Flag evaluation done: flag attributes on the routing and server spans."""
        attributes: dict[str, Any] = {
            "feature_flag.key": ex.flag,
            "feature_flag.result.variant": ex.variant,
            # Deprecated name of the same, still read by many backends' flag views.
            "feature_flag.variant": ex.variant,
            "feature_flag.result.reason": openfeature_reason(ex.reason),
            "feature_flag.version": str(ex.flag_version),
            "feature_flag.provider.name": "loopgate",
        }
        for key, name in _REQUEST_PARAMS.items():
            value = request.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                attributes[name] = value
        attributes["gen_ai.request.stream"] = ex.stream
        self.server.set_attributes(attributes)
        if self._route is not None:
            self._route.set_attributes(attributes)
            self._route.end()
            self._route = None

    def upstream(self, served_model: str, pool: str, headers: dict[str, str]) -> None:
        """The upstream call starts: a CLIENT span whose context replaces the traceparent."""
        if self._upstream is not None:  # the previous candidate's pool was down (fallback)
            self._upstream.set_status(Status(StatusCode.ERROR, "pool unavailable"))
            self._upstream.end()
        span = self._child(f"{self.operation} {served_model}", SpanKind.CLIENT)
        span.set_attributes(
            {
                "gen_ai.operation.name": self.operation,
                "gen_ai.provider.name": PROVIDER,
                "gen_ai.request.model": served_model,
                "loopgate.pool": pool,
            }
        )
        self._upstream = span
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
        headers.pop("tracestate", None)
        headers.update(carrier)

    def connected(self, url: str) -> None:
        """The endpoint that answered (after any retry)."""
        host, _, port = url.split("://", 1)[-1].partition("/")[0].rpartition(":")
        if host:
            self._address["server.address"] = host
            if port.isdigit():
                self._address["server.port"] = int(port)
        else:
            self._address["server.address"] = port
        if self._upstream is not None:
            self._upstream.set_attributes(self._address)

    def sink(self) -> trace.Span:
        """The span around the completion event's hand-off; the caller ends it."""
        return self._child("emit completion", SpanKind.INTERNAL)

    def end(self, ex: Exchange) -> None:
        """Close the open spans with what the request came to."""
        attributes: dict[str, Any] = {
            "gen_ai.usage.input_tokens": ex.prompt_tokens,
            "gen_ai.usage.output_tokens": ex.completion_tokens,
            "http.response.status_code": ex.http_status,
            "loopgate.status": ex.status,
        }
        if ex.served_model:
            attributes["gen_ai.response.model"] = ex.served_model
        if ex.response_id:
            attributes["gen_ai.response.id"] = ex.response_id
        if ex.finish_reason:
            attributes["gen_ai.response.finish_reasons"] = [ex.finish_reason]
        if ex.ttft_s is not None:
            attributes["gen_ai.response.time_to_first_chunk"] = ex.ttft_s
        failed = ex.status == "error"
        for span in (self._route, self._upstream):
            if span is not None:
                span.set_attributes(attributes)
                if failed:
                    span.set_status(Status(StatusCode.ERROR, ex.error))
                    span.set_attribute("error.type", str(ex.http_status))
                span.end()
        self._route = self._upstream = None
        self.server.set_attributes(attributes)
        if failed:
            self.server.set_status(Status(StatusCode.ERROR, ex.error))
            self.server.set_attribute("error.type", str(ex.http_status))
        self.server.end()
        if ex.response_id:
            self._tracing.remember(ex.response_id, self.server.get_span_context())
        self._tracing.record_metrics(self.operation, ex, self._address)


def open_tracing(
    config: TracingConfig,
    service: str,
    exporter: SpanExporter | None = None,
    metric_reader: MetricReader | None = None,
) -> Tracing | None:
    """The app's Tracing, or None when tracing is off; tests pass in-memory exporters."""
    if exporter is None and not config.enabled:
        return None
    # Resource.create and TracerProvider read OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
    # and OTEL_TRACES_SAMPLER themselves.
    resource = Resource.create({"service.instance.id": service})
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": "loopgate"}))
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    elif config.exporter == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    else:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError as exc:  # the `otlp` extra is not installed
            raise RuntimeError(
                "OTEL_TRACES_EXPORTER=otlp needs the otlp extra: pip install 'loopgate[otlp]'"
            ) from exc
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    meters = None
    if metric_reader is not None or (exporter is None and config.metrics):
        reader = metric_reader or _metric_reader(config)
        meters = MeterProvider(
            metric_readers=[reader], resource=resource, views=_VIEWS, shutdown_on_exit=False
        )
    log.info(
        "tracing on: exporter %s%s",
        "in-memory" if exporter else config.exporter,
        ", with GenAI metrics" if meters is not None else "",
    )
    return Tracing(provider, config.answer_spans_max, meters)


_VIEWS = [
    View(
        instrument_name=TOKEN_USAGE,
        aggregation=ExplicitBucketHistogramAggregation(_TOKEN_BUCKETS),
    ),
    View(
        instrument_name=TIME_TO_FIRST_TOKEN,
        aggregation=ExplicitBucketHistogramAggregation(_TTFT_BUCKETS),
    ),
]


def _metric_reader(config: TracingConfig) -> MetricReader:
    """Metrics go where the spans go: OTLP (OTEL_EXPORTER_OTLP_* endpoints) or the console."""
    if config.exporter == "console":
        return PeriodicExportingMetricReader(ConsoleMetricExporter())
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

    # OTEL_METRIC_EXPORT_INTERVAL (60 s by default) is read by the reader itself.
    return PeriodicExportingMetricReader(OTLPMetricExporter())
