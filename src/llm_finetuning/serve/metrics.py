"""Prometheus metrics of one server (its own registry, so several servers in one process stay apart)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    def __init__(self, queue_depth: Callable[[], int], batch_rows: Callable[[], int]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "llmft_requests", "HTTP requests by endpoint and status code.", ["endpoint", "status"], registry=r
        )
        self.prompt_tokens = Counter("llmft_prompt_tokens", "Prompt tokens processed.", ["model"], registry=r)
        self.completion_tokens = Counter(
            "llmft_completion_tokens", "Completion tokens generated.", ["model"], registry=r
        )
        self.latency = Histogram(
            "llmft_request_latency_seconds",
            "Time from request to response end.",
            ["endpoint"],
            buckets=_LATENCY,
            registry=r,
        )
        self.ttft = Histogram(
            "llmft_time_to_first_token_seconds",
            "Time from request to its first generated token.",
            ["model"],
            buckets=_LATENCY,
            registry=r,
        )
        self.cancelled = Counter(
            "llmft_cancelled", "Generations stopped because the client went away or timed out.", registry=r
        )
        Gauge("llmft_queue_depth", "Sequences waiting for a batch.", registry=r).set_function(queue_depth)
        Gauge("llmft_batch_rows", "Sequences in the batch being generated.", registry=r).set_function(batch_rows)

    def render(self) -> bytes:
        return generate_latest(self.registry)
