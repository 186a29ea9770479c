"""vLLM's own Prometheus metrics for one simulator, rendered as text exposition."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Bucket bounds as vLLM's V1 engine declares them.
TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
ITL_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)  # fmt: skip
E2E_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0,
    40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip


def _number(value: float) -> str:
    if value == float("inf"):
        return "+Inf"
    return repr(float(value))


class Histogram:
    """A cumulative-bucket histogram; not thread-safe, the simulator is one event loop."""

    def __init__(self, name: str, doc: str, buckets: Iterable[float]) -> None:
        self.name, self.doc = name, doc
        self.bounds = tuple(buckets)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Count one value (le semantics: a value equal to a bound falls in that bucket)."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def render(self, labels: str) -> list[str]:
        """Exposition lines for this histogram."""
        lines = [f"# HELP {self.name} {self.doc}", f"# TYPE {self.name} histogram"]
        total = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += count
            lines.append(f'{self.name}_bucket{{{labels},le="{_number(bound)}"}} {total}.0')
        lines.append(f"{self.name}_count{{{labels}}} {total}.0")
        lines.append(f"{self.name}_sum{{{labels}}} {_number(self.sum)}")
        return lines


class SimMetrics:
    """Counters and histograms a simulated vLLM engine keeps; gauges are read at scrape time."""

    def __init__(self, model_name: str) -> None:
        escaped = model_name.replace("\\", "\\\\").replace('"', '\\"')
        # vLLM V1 labels every series by model_name and engine index.
        self.labels = f'model_name="{escaped}",engine="0"'
        self.reset()

    def reset(self) -> None:
        """Start every counter and histogram from zero again."""
        self.ttft = Histogram(
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            TTFT_BUCKETS,
        )
        self.itl = Histogram(
            "vllm:inter_token_latency_seconds",
            "Histogram of inter-token latency in seconds.",
            ITL_BUCKETS,
        )
        self.e2e = Histogram(
            "vllm:e2e_request_latency_seconds",
            "Histogram of e2e request latency in seconds.",
            E2E_BUCKETS,
        )
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.success: dict[str, int] = {"stop": 0, "length": 0, "abort": 0}

    def finished(self, reason: str) -> None:
        """Count a request that ended with finish reason `reason`."""
        self.success[reason] = self.success.get(reason, 0) + 1

    def render(self, running: int, waiting: int, kv_usage: float) -> str:
        """The /metrics page, with the load gauges as given."""
        labels = self.labels
        lines = [
            "# HELP vllm:num_requests_running Number of requests in model execution batches.",
            "# TYPE vllm:num_requests_running gauge",
            f"vllm:num_requests_running{{{labels}}} {float(running)}",
            "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.",
            "# TYPE vllm:num_requests_waiting gauge",
            f"vllm:num_requests_waiting{{{labels}}} {float(waiting)}",
            "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.",
            "# TYPE vllm:kv_cache_usage_perc gauge",
            f"vllm:kv_cache_usage_perc{{{labels}}} {_number(kv_usage)}",
            "# HELP vllm:prompt_tokens_total Number of prefill tokens processed.",
            "# TYPE vllm:prompt_tokens_total counter",
            f"vllm:prompt_tokens_total{{{labels}}} {float(self.prompt_tokens)}",
            "# HELP vllm:generation_tokens_total Number of generation tokens processed.",
            "# TYPE vllm:generation_tokens_total counter",
            f"vllm:generation_tokens_total{{{labels}}} {float(self.generation_tokens)}",
            "# HELP vllm:request_success_total Count of successfully processed requests.",
            "# TYPE vllm:request_success_total counter",
        ]
        for reason, count in self.success.items():
            lines.append(
                f'vllm:request_success_total{{finished_reason="{reason}",{labels}}} {float(count)}'
            )
        for histogram in (self.ttft, self.itl, self.e2e):
            lines.extend(histogram.render(labels))
        return "\n".join(lines) + "\n"
