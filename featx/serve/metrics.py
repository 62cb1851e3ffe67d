"""Prometheus metrics of one server (its own registry, so several apps in one process stay apart)."""

from __future__ import annotations

from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("featx_requests", "HTTP requests by route and status", ["route", "status"],
                                registry=self.registry)
        self.latency = Histogram("featx_request_seconds", "request latency by route", ["route"],
                                 buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.batch_images = Histogram("featx_batch_images", "images per forward pass", buckets=_BATCH_BUCKETS,
                                      registry=self.registry)
        self.queue = Gauge("featx_queue_images", "images waiting for a forward pass", registry=self.registry)
        self.reloads = Counter("featx_reloads", "artifact reloads by outcome", ["outcome"], registry=self.registry)

    def set_queue_source(self, source: Callable[[], int]) -> None:
        self.queue.set_function(source)

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def observe_batch(self, images: int) -> None:
        self.batch_images.observe(images)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
